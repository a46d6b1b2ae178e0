//! Builds a VM from a [`VmConfig`] (memory, kernel, ACPI, devices, vCPUs),
//! runs it, and tears it down: the builder → running VM → exit flow.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use backends::net::Tap;
use vm_allocator::{AddressAllocator, AllocPolicy};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::boot::{acpi, loader};
use crate::config::{
    DiskBackend, DiskModel, NetConfig, NicModel, SerialConfig, TapNetConfig, VmConfig,
};
use crate::devices::bus::lock;
use crate::devices::e1000::nic::BAR_SIZE as E1000_BAR_SIZE;
use crate::devices::e1000::pci::E1000PciDevice;
use crate::devices::e1000::tap::RxThread;
use crate::devices::e1000::{NetError, E1000};
use crate::devices::i8042::I8042;
use crate::devices::nvme::{self, pci::BAR_SIZE as NVME_BAR_SIZE, NvmePciDevice};
use crate::devices::power::AcpiPower;
use crate::devices::serial::{ConsoleSink, IrqfdTrigger, PanicNote, SerialDevice};
use crate::devices::vfio::VfioDevices;
use crate::devices::virtio::local::{InVmmBlk, InVmmNet};
use crate::devices::virtio::transport::pci::BAR_SIZE;
use crate::devices::virtio::vhost_user::monitor::HangupMonitor;
use crate::devices::virtio::vhost_user::{VhostUserBlk, VhostUserNet};
use crate::devices::virtio::{VirtioDevice, VirtioError, VirtioPciDevice};
use crate::error::Error;
use crate::layout;
use crate::memory::{self, GuestRam};
use crate::pci::{PciBus, PciConfigIo, PciEcam};
use crate::vstate::exit::{ExitSignal, GuestExit};
use crate::vstate::interrupts::IrqRouting;
use crate::vstate::vcpu::{self, IoBuses, Vcpu};
use crate::vstate::vm::Vm;

/// Queue size of an in-VMM virtio-net queue.
const NET_QUEUE_SIZE: u16 = crate::config::DEFAULT_QUEUE_SIZE;

/// A VM ready to run.
pub struct Machine {
    vm: Vm,
    ram: GuestRam,
    vcpus: Vec<Vcpu>,
    buses: Arc<IoBuses>,
    exit: Arc<ExitSignal>,
    serial: Option<Arc<Mutex<SerialDevice>>>,
    stdin_input: bool,
    panic: PanicNote,
    /// Routing table shared with devices that program MSI/MSI-X.
    pub irq_routing: Arc<IrqRouting>,
    /// PCI bus 0.
    pub pci: Arc<Mutex<PciBus>>,
    /// Virtio PCI devices (disks, then NICs).
    disks: Vec<Arc<Mutex<VirtioPciDevice>>>,
    nvmes: Vec<Arc<Mutex<NvmePciDevice>>>,
    nics: Vec<(Arc<Mutex<E1000PciDevice>>, RxThread)>,
    monitors: Vec<HangupMonitor>,
    vfio: VfioDevices,
}

impl Machine {
    /// Creates the VM, loads the kernel and initramfs, writes boot tables and
    /// creates the devices and vCPUs.
    pub fn build(cfg: &VmConfig) -> Result<Self, Error> {
        if cfg.cpus == 0 {
            return Err(Error::Config("--cpus must be at least 1".into()));
        }
        // Fail fast on user mistakes before any KVM or memory resources exist.
        loader::check_readable("kernel", &cfg.kernel)?;
        if let Some(initramfs) = &cfg.initramfs {
            loader::check_readable("initramfs", initramfs)?;
        }
        memory::check_host_capacity(&cfg.memory)?;
        let paths: Vec<_> = cfg.devices.iter().map(|d| d.path.clone()).collect();
        let passthrough = vfio::check_devices(&paths, vfio::sysfs::IOMMU_GROUPS.as_ref())?;
        let vm = Vm::new(cfg.cpus)?;
        let ram = memory::create_guest_ram(&cfg.memory)?;
        vm.register_memory(&ram.mem)?;

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

        let irq_routing = Arc::new(IrqRouting::new(vm.fd.clone())?);
        let exit = Arc::new(ExitSignal::new().map_err(Error::Io)?);
        let panic = PanicNote::default();
        let buses = Arc::new(IoBuses::default());
        let pci = Arc::new(Mutex::new(PciBus::new()));
        let serial = Self::add_legacy_devices(&buses, &irq_routing, &exit, &pci, cfg, &panic)?;
        let vfio = VfioDevices::attach(
            &vm.fd,
            &ram,
            &buses,
            &irq_routing,
            &pci,
            &passthrough,
            platform.mmio64_start,
        )?;

        // Virtio BARs take the lower half of the 64-bit window; VFIO BARs the upper half.
        let mut mmio64 = AddressAllocator::new(platform.mmio64_start, layout::PCI_MMIO64_SIZE / 2)
            .map_err(|e| Error::Config(format!("64-bit PCI window: {e}")))?;
        let mut disks = Vec::new();
        let mut monitors = Vec::new();
        let mut nvmes = Vec::new();
        let mut backends: Vec<(Box<dyn VirtioDevice>, String)> = Vec::new();
        for (i, disk) in cfg.disks.iter().enumerate() {
            let backend: Box<dyn VirtioDevice> = match &disk.backend {
                DiskBackend::VhostUser { socket } => {
                    Box::new(VhostUserBlk::connect(socket, disk, i)?)
                }
                DiskBackend::File {
                    path,
                    readonly,
                    model: DiskModel::VirtioBlk,
                } => Box::new(InVmmBlk::open(
                    path,
                    *readonly,
                    disk.queues.unwrap_or(1),
                    disk.queue_size,
                    i,
                )?),
                DiskBackend::File {
                    path,
                    readonly,
                    model: DiskModel::Nvme,
                } => {
                    let queues = disk.queues.unwrap_or(u16::from(cfg.cpus));
                    let bar = mmio64
                        .allocate(NVME_BAR_SIZE, NVME_BAR_SIZE, AllocPolicy::FirstMatch)
                        .map_err(|_| VirtioError::NoBarSpace(NVME_BAR_SIZE))?;
                    let dev = nvme::create(
                        path,
                        *readonly,
                        queues,
                        i,
                        vm.fd.clone(),
                        buses.clone(),
                        ram.mem.clone(),
                        bar.start(),
                    )?;
                    let slot = lock(&pci).add(dev.clone())?;
                    tracing::info!(
                        "{} at 00:{slot:02x}.0, BAR {:#x}",
                        lock(&dev).name(),
                        bar.start()
                    );
                    nvmes.push(dev);
                    continue;
                }
            };
            backends.push((backend, format!("blk{i}-mon")));
        }
        for (i, net) in cfg.nets.iter().enumerate() {
            match net {
                NetConfig::VhostUser(net) => backends.push((
                    Box::new(VhostUserNet::connect(net, i)?),
                    format!("vu-net{i}-mon"),
                )),
                NetConfig::Tap(tap) if tap.model == NicModel::Virtio => backends.push((
                    Box::new(InVmmNet::open(tap, NET_QUEUE_SIZE, i)?),
                    format!("net{i}-mon"),
                )),
                NetConfig::Tap(_) => {}
            }
        }
        for (backend, monitor) in backends {
            let bar = mmio64
                .allocate(BAR_SIZE, BAR_SIZE, AllocPolicy::FirstMatch)
                .map_err(|_| VirtioError::NoBarSpace(BAR_SIZE))?;
            let dev = VirtioPciDevice::new(
                backend,
                vm.fd.clone(),
                irq_routing.clone(),
                buses.clone(),
                ram.mem.clone(),
                bar.start(),
            )?;
            let slot = lock(&pci).add(dev.clone())?;
            tracing::info!(
                "{} at 00:{slot:02x}.0, BAR {:#x}",
                lock(&dev).name(),
                bar.start()
            );
            if let Some(m) = HangupMonitor::spawn(&dev, monitor)? {
                monitors.push(m);
            }
            disks.push(dev);
        }

        let mut nics = Vec::new();
        for net in cfg.nets.iter().filter_map(|n| match n {
            NetConfig::Tap(tap) => Some(tap),
            NetConfig::VhostUser(_) => None,
        }) {
            if net.model != NicModel::E1000 {
                continue;
            }
            nics.push(Self::add_e1000(
                net,
                &irq_routing,
                &buses,
                &ram,
                &pci,
                &mut mmio64,
            )?);
        }

        let cpuid = vcpu::supported_cpuid(&vm.kvm)?;
        let tsc_deadline = vm.fd.check_extension(kvm_ioctls::Cap::TscDeadlineTimer);
        let vcpus = (0..cfg.cpus)
            .map(|i| {
                Vcpu::new(
                    &vm.fd,
                    &cpuid,
                    i,
                    cfg.cpus,
                    &ram.mem,
                    kernel.entry,
                    tsc_deadline,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;

        Ok(Self {
            vm,
            ram,
            vcpus,
            buses,
            exit,
            serial,
            stdin_input: cfg.serial == SerialConfig::Stdio,
            panic,
            irq_routing,
            pci,
            disks,
            nvmes,
            nics,
            monitors,
            vfio,
        })
    }

    /// An e1000 on a TAP interface, its INTA bound (irqfd) to the GSI the
    /// `_PRT` gives its slot, and its receive thread.
    #[allow(clippy::too_many_arguments)]
    fn add_e1000(
        net: &TapNetConfig,
        routing: &IrqRouting,
        buses: &Arc<IoBuses>,
        ram: &GuestRam,
        pci: &Arc<Mutex<PciBus>>,
        mmio64: &mut AddressAllocator,
    ) -> Result<(Arc<Mutex<E1000PciDevice>>, RxThread), Error> {
        let tap = Tap::open_plain(&net.tap).map_err(NetError::Tap)?;
        let reader = tap.try_clone().map_err(NetError::Tap)?;
        let bar = mmio64
            .allocate(E1000_BAR_SIZE, E1000_BAR_SIZE, AllocPolicy::FirstMatch)
            .map_err(|_| VirtioError::NoBarSpace(E1000_BAR_SIZE))?;
        let irq = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(Error::Io)?;
        let irq_reg = irq.try_clone().map_err(Error::Io)?;
        let dev = E1000PciDevice::new(
            E1000::new(net.mac),
            Box::new(tap),
            irq,
            buses.clone(),
            ram.mem.clone(),
            bar.start(),
        );
        let slot = lock(pci).add(dev.clone())?;
        let gsi = acpi::pci_intx_gsi(slot, 0);
        routing.register_irqfd(&irq_reg, gsi)?;
        tracing::info!(
            "e1000 tap {} at 00:{slot:02x}.0, BAR {:#x}, INTA on GSI {gsi}",
            net.tap,
            bar.start()
        );
        let rx = RxThread::spawn(reader, dev.clone())?;
        Ok((dev, rx))
    }

    fn add_legacy_devices(
        buses: &IoBuses,
        routing: &IrqRouting,
        exit: &Arc<ExitSignal>,
        pci: &Arc<Mutex<PciBus>>,
        cfg: &VmConfig,
        panic: &PanicNote,
    ) -> Result<Option<Arc<Mutex<SerialDevice>>>, Error> {
        let mut pio = buses.pio.write().unwrap_or_else(|p| p.into_inner());
        let mut mmio = buses.mmio.write().unwrap_or_else(|p| p.into_inner());
        pio.insert(
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
            layout::I8042_PORT.into(),
            5,
        )?;
        pio.insert(
            Arc::new(Mutex::new(AcpiPower::new(exit.clone()))),
            layout::ACPI_SLEEP_CONTROL_PORT.into(),
            AcpiPower::PORTS,
        )?;
        pio.insert(
            Arc::new(Mutex::new(PciConfigIo::new(pci.clone()))),
            layout::PCI_CONFIG_ADDRESS_PORT.into(),
            PciConfigIo::PORTS,
        )?;
        mmio.insert(
            Arc::new(Mutex::new(PciEcam::new(pci.clone()))),
            layout::PCI_ECAM_START,
            layout::PCI_ECAM_SIZE,
        )?;

        let out: Box<dyn Write + Send> = match &cfg.serial {
            SerialConfig::Off => return Ok(None),
            SerialConfig::Stdio => Box::new(io::stdout()),
            SerialConfig::File(path) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| Error::Config(format!("--serial file={}: {e}", path.display())))?,
            ),
        };
        let irq = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(Error::Io)?;
        routing.register_irqfd(&irq, layout::COM1_IRQ)?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            IrqfdTrigger(irq),
            ConsoleSink::new(out, panic.clone()),
        )));
        pio.insert(serial.clone(), layout::COM1_PORT.into(), 8)?;
        Ok(Some(serial))
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
        &self.buses
    }

    /// Runs the guest until it powers off, resets, crashes or the VMM is
    /// signalled; always stops every vCPU thread before returning.
    pub fn run(mut self) -> Result<GuestExit, Error> {
        let signals = block_termination_signals()?;
        vmm_sys_util::signal::register_signal_handler(vcpu::kick_signal(), vcpu::on_kick_signal)
            .map_err(|e| Error::Io(io::Error::from_raw_os_error(e.errno())))?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for v in self.vcpus.drain(..) {
            threads.push(v.spawn(self.buses.clone(), self.exit.clone(), stop.clone())?);
        }
        let result = self.event_loop(&signals);
        stop.store(true, Ordering::Release);
        stop_vcpus(threads);
        // Orderly teardown: stop watching, then stop each backend's rings.
        self.monitors.clear();
        for d in &self.disks {
            lock(d).shutdown();
        }
        for d in &self.nvmes {
            lock(d).shutdown();
        }
        for (d, rx) in self.nics.drain(..) {
            drop(rx);
            lock(&d).shutdown();
        }
        self.vfio.shutdown();
        let why = result?;
        tracing::debug!("VM of {} MiB stopped: {why}", self.ram.size >> 20);
        Ok(self.refine(why))
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

    fn event_loop(&self, signals: &OwnedFd) -> Result<GuestExit, Error> {
        const EXIT: u64 = 0;
        const SIGNAL: u64 = 1;
        const STDIN: u64 = 2;
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
        let mut stdin_open = self.stdin_input && self.serial.is_some();
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
                            return Ok(why);
                        }
                    }
                    SIGNAL => return Ok(GuestExit::Signal(read_signal(signals))),
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
                                if let Some(s) = &self.serial {
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

/// Kicks vCPU threads out of KVM_RUN until each has seen the stop flag.
fn stop_vcpus(threads: Vec<JoinHandle<()>>) {
    for t in threads {
        while !t.is_finished() {
            if let Err(e) = t.kill(vcpu::kick_signal()) {
                tracing::debug!("kick failed: {e}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if t.join().is_err() {
            tracing::error!("a vCPU thread panicked");
        }
    }
}

/// Blocks SIGTERM/SIGINT in this thread (and the vCPU threads it spawns) and
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
