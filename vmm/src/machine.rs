// SPDX-License-Identifier: Apache-2.0
//! Builds a VM from a [`VmConfig`] (memory, kernel, ACPI, devices, vCPUs),
//! runs it, and tears it down: the builder → running VM → exit flow. The
//! devices are the [`DeviceManager`]'s; the machine owns the vCPUs, the
//! event loop (guest exits, signals, console input, API requests) and the
//! order of teardown.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Barrier};

use vm_memory::GuestAddress;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::api::types::{ConfigInfo, DeviceInfo, VmCounters, VmInfo, VmState};
use crate::api::{ApiError, ApiReceiver, ApiReply, ApiRequest, ApiResponse};
use crate::boot::{acpi, loader};
use crate::config::{SerialConfig, VmConfig};
use crate::device_manager::DeviceManager;
use crate::devices::bus::lock;
use crate::devices::serial::PanicNote;
use crate::error::Error;
use crate::layout;
use crate::memory::{self, GuestRam, RamMode};
use crate::vstate::exit::{ExitSignal, GuestExit};
use crate::vstate::vcpu::{self, IoBuses, Vcpu};
use crate::vstate::vcpus::Vcpus;
use crate::vstate::vm::Vm;

/// A VM ready to run.
pub struct Machine {
    vm: Vm,
    ram: GuestRam,
    vcpus: Vec<Vcpu>,
    devices: DeviceManager,
    exit: Arc<ExitSignal>,
    /// SIGTERM/SIGINT, blocked in every thread and read by the event loop.
    signals: OwnedFd,
    stdin_input: bool,
    panic: PanicNote,
    /// The configuration it was built from (reported by `vm.info`).
    cfg: VmConfig,
}

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// The VM stopped for good: the process exits with this outcome.
    Exit(GuestExit),
    /// `vm.reboot`: build the VM again from its configuration and boot it.
    Reboot,
}

/// What the VMM process gives a run beside the VM.
#[derive(Default)]
pub struct RunContext<'a> {
    /// Requests from the API thread, if the VMM serves an API socket.
    pub api: Option<&'a ApiReceiver>,
    /// Which boot of this process this is (1 for the first).
    pub boots: u32,
}

impl Machine {
    /// Creates the VM, loads the kernel and initramfs, writes boot tables and
    /// creates the devices and vCPUs.
    pub fn build(cfg: &VmConfig) -> Result<Self, Error> {
        let passthrough = check_config(cfg)?;
        // Before any thread starts (device threads start here): a thread that has them
        // unblocked would take a SIGTERM meant for the event loop, and die of it.
        let signals = block_termination_signals()?;
        let vm = Vm::new(cfg.cpus)?;
        let mode = RamMode::choose(&cfg.memory, cfg.needs_shared_memory())?;
        let ram = memory::create_guest_ram(&cfg.memory, mode)?;
        vm.register_memory(&ram.mem)?;
        let (entry, platform) = load_guest(cfg, &ram)?;

        let exit = Arc::new(ExitSignal::new().map_err(Error::Io)?);
        let panic = PanicNote::default();
        let mut devices = DeviceManager::new(&vm.fd, &ram, platform.mmio64_start)?;
        devices.add_legacy_devices(&exit, &cfg.serial, &panic)?;
        devices.add_vfio_devices(&ram, &passthrough)?;
        devices.add_disks_and_nics(cfg)?;

        let vcpus = create_vcpus(&vm, &ram, cfg.cpus, entry)?;
        Ok(Self {
            vm,
            ram,
            vcpus,
            devices,
            exit,
            signals,
            stdin_input: cfg.serial == SerialConfig::Stdio,
            panic,
            cfg: cfg.clone(),
        })
    }

    /// The devices (their queues' counters, for `--metrics`).
    pub fn devices(&self) -> &DeviceManager {
        &self.devices
    }

    /// The KVM VM (for devices that register ioeventfds or irqfds).
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    /// Guest memory (for devices that DMA into it).
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// The buses (for devices that map BARs).
    pub fn buses(&self) -> &Arc<IoBuses> {
        self.devices.buses()
    }

    /// Runs the guest until it powers off, resets, crashes, the VMM is
    /// signalled or the API stops or reboots it; always stops every vCPU
    /// thread before returning. The guest runs its first instruction once
    /// every thread has its seccomp filter.
    pub fn run(mut self, ctx: RunContext<'_>) -> Result<RunEnd, Error> {
        vmm_sys_util::signal::register_signal_handler(vcpu::kick_signal(), vcpu::on_kick_signal)
            .map_err(|e| Error::Io(io::Error::from_raw_os_error(e.errno())))?;
        let gate = Arc::new(Barrier::new(self.vcpus.len() + 1));
        let vcpus = Vcpus::start(
            self.vcpus.drain(..).collect(),
            self.devices.buses(),
            &self.exit,
            &self.cfg.vcpu_affinity,
            &gate,
        )?;
        let confined = crate::seccomp::confine_event_loop().map_err(Error::Seccomp);
        if confined.is_err() {
            vcpus.request_stop();
        }
        gate.wait();
        let result = confined.and_then(|()| self.event_loop(&self.signals, &vcpus, &ctx));
        vcpus.stop();
        self.devices.shutdown();
        match result? {
            RunEnd::Exit(why) => {
                tracing::debug!("VM of {} MiB stopped: {why}", self.ram.size >> 20);
                Ok(RunEnd::Exit(self.refine(why)))
            }
            RunEnd::Reboot => {
                tracing::info!("rebooting: the VM is built again from its configuration");
                Ok(RunEnd::Reboot)
            }
        }
    }

    fn refine(&self, why: GuestExit) -> GuestExit {
        let panic = lock(&self.panic).clone();
        match (why, panic) {
            (GuestExit::Reset(_) | GuestExit::TripleFault { .. }, Some(msg)) => {
                GuestExit::Panic(msg)
            }
            (why, _) => why,
        }
    }

    fn event_loop(
        &self,
        signals: &OwnedFd,
        vcpus: &Vcpus,
        ctx: &RunContext<'_>,
    ) -> Result<RunEnd, Error> {
        const EXIT: u64 = 0;
        const SIGNAL: u64 = 1;
        const STDIN: u64 = 2;
        const API: u64 = 3;
        let epoll = Epoll::new().map_err(Error::Io)?;
        let add = |fd: i32, token: u64| {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
        };
        add(self.exit.eventfd().as_raw_fd(), EXIT).map_err(Error::Io)?;
        add(signals.as_raw_fd(), SIGNAL).map_err(Error::Io)?;
        if let Some(api) = ctx.api {
            add(api.eventfd().as_raw_fd(), API).map_err(Error::Io)?;
        }
        let mut state = VmState::Running;
        let mut stdin_open = self.stdin_input && self.devices.serial().is_some();
        if stdin_open && add(libc::STDIN_FILENO, STDIN).is_err() {
            // /dev/null or a regular file cannot be polled: no guest input.
            stdin_open = false;
        }
        let mut events = vec![EpollEvent::default(); 4];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Io(e)),
            };
            for ev in &events[..n] {
                match ev.data() {
                    EXIT => {
                        if let Some(why) = self.exit.reason() {
                            return Ok(RunEnd::Exit(why));
                        }
                    }
                    SIGNAL => return Ok(RunEnd::Exit(GuestExit::Signal(read_signal(signals)))),
                    API => {
                        for msg in ctx.api.map(ApiReceiver::drain).unwrap_or_default() {
                            let (reply, end) =
                                self.handle_api(&msg.request, &mut state, vcpus, ctx.boots);
                            // The client may have given up; the VM goes on either way.
                            let _ = msg.reply.send(reply);
                            if let Some(end) = end {
                                return Ok(end);
                            }
                        }
                    }
                    STDIN if stdin_open => {
                        let mut buf = [0u8; 64];
                        match io::stdin().lock().read(&mut buf) {
                            Ok(0) | Err(_) => {
                                let _ = epoll.ctl(
                                    ControlOperation::Delete,
                                    libc::STDIN_FILENO,
                                    EpollEvent::default(),
                                );
                                stdin_open = false;
                            }
                            Ok(n) => {
                                if let Some(s) = self.devices.serial() {
                                    lock(s).enqueue_input(&buf[..n]);
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The API's requests (`vm.info`, `vm.pause`, ...), run on the event loop.
impl Machine {
    /// Answer `request` in `state` (updated by transitions); a run end if the
    /// request stops or reboots the VM.
    fn handle_api(
        &self,
        request: &ApiRequest,
        state: &mut VmState,
        vcpus: &Vcpus,
        boots: u32,
    ) -> (ApiReply, Option<RunEnd>) {
        if let Err(e) = state.admits(request) {
            return (Err(e), None);
        }
        let done = Ok(ApiResponse::Done);
        match request {
            ApiRequest::Info => (
                Ok(ApiResponse::Info(Box::new(self.info(*state, boots)))),
                None,
            ),
            ApiRequest::Counters => {
                let devices = self.devices.counters();
                (Ok(ApiResponse::Counters(VmCounters { devices })), None)
            }
            ApiRequest::Pause => match self.pause(vcpus) {
                Ok(()) => {
                    *state = VmState::Paused;
                    (done, None)
                }
                Err(e) => (Err(e), None),
            },
            ApiRequest::Resume => {
                if !self.devices.resume() {
                    tracing::warn!("a device thread did not confirm the resume");
                }
                vcpus.resume();
                *state = VmState::Running;
                tracing::info!("VM resumed");
                (done, None)
            }
            ApiRequest::Shutdown { force: true } => (done, Some(RunEnd::Exit(GuestExit::Stopped))),
            ApiRequest::Shutdown { force: false } => match self.devices.power_button() {
                Some(button) => match button.press() {
                    Ok(()) => {
                        tracing::info!("power button pressed");
                        *state = VmState::Shutdown;
                        (done, None)
                    }
                    Err(e) => (Err(ApiError::failed(format!("power button: {e}"))), None),
                },
                None => (Err(ApiError::failed("no power button")), None),
            },
            ApiRequest::Reboot => (done, Some(RunEnd::Reboot)),
        }
    }

    /// Parks the vCPUs, then stops the device threads; undoes both if either fails.
    fn pause(&self, vcpus: &Vcpus) -> Result<(), ApiError> {
        vcpus.pause().map_err(|e| ApiError::failed(e.to_string()))?;
        if !self.devices.pause() {
            self.devices.resume();
            vcpus.resume();
            return Err(ApiError::failed("a device thread did not pause in time"));
        }
        tracing::info!("VM paused");
        Ok(())
    }

    fn info(&self, state: VmState, boots: u32) -> VmInfo {
        let c = &self.cfg;
        let mut devices = self.devices.describe();
        devices.extend(c.devices.iter().map(|d| DeviceInfo {
            name: d.path.file_name().map_or_else(
                || d.path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
            kind: "vfio".into(),
            tier: "passthrough".into(),
            backend: Some(d.path.display().to_string()),
            queues: None,
            driver: None,
            connection: None,
            metrics: None,
        }));
        VmInfo {
            state,
            boots,
            config: ConfigInfo {
                cpus: c.cpus,
                memory_mib: c.memory.size >> 20,
                hugepages: c.memory.hugepages,
                kernel: c.kernel.display().to_string(),
                initramfs: c.initramfs.as_ref().map(|p| p.display().to_string()),
                cmdline: c.cmdline.clone(),
                serial: c.serial.to_string(),
            },
            devices,
        }
    }
}

/// Fails fast on user mistakes, before any KVM or memory resources exist;
/// returns the host devices to pass through.
fn check_config(cfg: &VmConfig) -> Result<Vec<vfio::CheckedDevice>, Error> {
    if cfg.cpus == 0 {
        return Err(Error::Config("--cpus must be at least 1".into()));
    }
    cfg.vcpu_affinity
        .check(usize::from(cfg.cpus), "vCPU")
        .map_err(crate::config::ConfigError::from)?;
    loader::check_readable("kernel", &cfg.kernel)?;
    if let Some(initramfs) = &cfg.initramfs {
        loader::check_readable("initramfs", initramfs)?;
    }
    memory::check_host_capacity(&cfg.memory)?;
    RamMode::choose(&cfg.memory, cfg.needs_shared_memory())?;
    let paths: Vec<_> = cfg.devices.iter().map(|d| d.path.clone()).collect();
    Ok(vfio::check_devices(
        &paths,
        vfio::sysfs::IOMMU_GROUPS.as_ref(),
    )?)
}

/// Loads the kernel, initramfs and command line into `ram` and writes the
/// ACPI tables, reset stub and boot parameters; returns the kernel entry
/// point and the platform the tables describe.
fn load_guest(cfg: &VmConfig, ram: &GuestRam) -> Result<(GuestAddress, acpi::Platform), Error> {
    let kernel = loader::load_kernel(&ram.mem, &cfg.kernel)?;
    let initramfs = match &cfg.initramfs {
        Some(path) => Some(loader::load_initramfs(
            &ram.mem,
            path,
            kernel.result.kernel_end,
            loader::initramfs_max_addr(&kernel),
        )?),
        None => None,
    };
    let cmdline_len = loader::load_cmdline(&ram.mem, &cfg.cmdline)?;
    let platform = acpi::Platform {
        cpus: cfg.cpus,
        mmio64_start: layout::ram_end(ram.size).max(layout::FOUR_GIB),
    };
    let rsdp = acpi::write_tables(&ram.mem, &platform)?;
    loader::write_reset_stub(&ram.mem)?;
    loader::write_boot_params(&ram.mem, &kernel, cmdline_len, initramfs, rsdp, ram.size)?;
    Ok((kernel.entry, platform))
}

/// The vCPUs, each set up to enter the kernel at `entry`.
fn create_vcpus(
    vm: &Vm,
    ram: &GuestRam,
    cpus: u8,
    entry: GuestAddress,
) -> Result<Vec<Vcpu>, Error> {
    let cpuid = vcpu::supported_cpuid(&vm.kvm)?;
    let tsc_deadline = vm.fd.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
    (0..cpus)
        .map(|i| Vcpu::new(&vm.fd, &cpuid, i, cpus, &ram.mem, entry, tsc_deadline))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::from)
}

/// Blocks SIGTERM/SIGINT in this thread (and every thread it starts later) and
/// returns a signalfd that reports them to the event loop.
fn block_termination_signals() -> Result<OwnedFd, Error> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t and the signal numbers are valid.
    let rc = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(Error::Io(io::Error::from_raw_os_error(rc)));
    }
    // SAFETY: `set` is initialised; -1 asks for a new descriptor.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(Error::Io(io::Error::last_os_error()));
    }
    // SAFETY: signalfd returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn read_signal(fd: &OwnedFd) -> i32 {
    // SAFETY: signalfd_siginfo is plain data.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: the buffer is exactly one signalfd_siginfo long and writable.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            size,
        )
    };
    if n as usize == size {
        info.ssi_signo as i32
    } else {
        libc::SIGTERM
    }
}
