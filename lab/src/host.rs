// SPDX-License-Identifier: Apache-2.0
//! The lab host runner: one TCG QEMU with nested SVM, an Intel IOMMU and optional emulated
//! NVMe / NICs, booting `lab-base.cpio` plus a per-run overlay that holds `/lab/run.sh`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::console::fault_lines;
use crate::cpio::Cpio;
use crate::error::{LabError, Result};
use crate::images::{concat_with_overlay, Images};
use crate::tail_lines;

/// Kernel command line of the lab host (extended by [`LabHost::kernel_args`]).
///
/// `no_timer_check`: under TCG on a loaded machine the IO-APIC timer check can
/// miss its window and panic the lab kernel ("timer doesn't work through
/// Interrupt-remapped IO-APIC"); the timer does work, the check is only slow.
///
/// `kvm_amd.npt=0` (the lab init hands `module.param=` words to insmod): the lab's KVM shadows
/// nested guests' page tables instead of using nested paging, because QEMU 7.2's TCG emulation
/// of SVM nested paging corrupts translations. Measured 2026-12-01, one lab booting our VMM's
/// guests in two parallel loops: with NPT 6 of 21 guests triple-faulted in early boot, the lab
/// kernel panicked ("corrupted stack end detected inside scheduler") and a guest hung; with
/// shadow paging 0 of 16, at the same boot time (~20 s). One guest at a time failed rarely
/// with NPT, but did fail in CI, as did guests at power-off (`KVM_EXIT_FAIL_ENTRY`).
pub const LAB_CMDLINE: &str =
    "console=ttyS0 panic=-1 quiet intel_iommu=on iommu=pt no_timer_check kvm_amd.npt=0";
/// Where [`LabHost::with_guest`] puts the guest kernel inside the lab.
pub const LAB_GUEST_KERNEL: &str = "/lab/vmlinuz";
/// Where [`LabHost::with_guest`] puts the guest initramfs inside the lab.
pub const LAB_GUEST_INITRD: &str = "/lab/guest.cpio";
/// What `/lab/script.sh` does before the run's own script: tune the lab as a VM host would be. Shared
/// (memfd) guest RAM, which vhost-user devices need, gets transparent huge pages where the VMM
/// advises them (Debian's kernel default is `never`; `vmm check` reports it as `shmem-thp`).
pub const HOST_TUNING: &str = "\
echo advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled 2>/dev/null ||
    echo 'lab: cannot enable shmem THP'
";

/// The marker the lab `/init` prints after `/lab/run.sh` returns.
pub const EXIT_MARKER: &str = "LAB-EXIT-STATUS=";
/// The marker the lab `/init` prints once modules are loaded (`uptime=` seconds follow).
pub const BOOT_MARKER: &str = "LAB-BOOT-OK uptime=";
/// Default time the console may stay silent before a run is given up: a nested guest whose
/// vCPUs stopped running (the emulation's fault; seen at its boot and mid-test) prints nothing
/// more, and no test step of ours is quiet for half as long.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(150);
/// How long a nested guest's CPU may be reported stuck before its run is given up. The guest
/// watchdog's first report (~22 s) can be a pause of the emulation that passes; in the case seen
/// (2026-12-02) its second (~50 s) was a CPU spinning on a sibling vCPU that never ran again.
pub const GUEST_STALL: Duration = Duration::from_secs(45);
/// Default time the lab host gets to print [`BOOT_MARKER`]; it boots in ~10 s, and a boot that
/// hangs (the emulation's own faults) would otherwise hold a run until its whole timeout.
pub const BOOT_DEADLINE: Duration = Duration::from_secs(120);

/// `/lab/run.sh`: the test's script (`/lab/script.sh`), then the kernel's seccomp audit lines
/// (a thread of ours called outside its filter: killed with `--seccomp on`, logged with `log`)
/// on the console with [`SECCOMP_MARKER`], where the lab's `quiet` console level hides them.
const RUN_SH: &str = "sh /lab/script.sh\nrc=$?\n\
    dmesg | grep -F 'type=1326' | sed 's/^/LAB-SECCOMP: /'\nexit $rc\n";
/// The prefix of a seccomp audit line copied to the console after the test's script.
pub const SECCOMP_MARKER: &str = "LAB-SECCOMP: ";

/// Grace period for the lab to power off after printing its exit marker.
const POWEROFF_GRACE: Duration = Duration::from_secs(20);

/// Where an emulated lab NIC is connected. Traffic never leaves QEMU processes on this machine:
/// there is deliberately no user-mode (SLIRP) or TAP option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NicBackend {
    /// A QEMU hub inside this lab (`-netdev hubport`); NICs on the same hub see each other.
    Hub(u32),
    /// `-netdev socket,listen=127.0.0.1:PORT` — another lab connects to it.
    SocketListen(u16),
    /// `-netdev socket,connect=127.0.0.1:PORT`.
    SocketConnect(u16),
}

/// An emulated NIC in the lab host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabNic {
    /// QEMU device model. The cloud kernel has `virtio-net-pci` but no e1000/e1000e driver.
    pub model: String,
    /// How it is connected.
    pub backend: NicBackend,
    /// Optional MAC address (`52:54:00:..`).
    pub mac: Option<String>,
}

impl LabNic {
    /// A virtio-net NIC on the given backend.
    pub fn virtio(backend: NicBackend) -> LabNic {
        LabNic {
            model: "virtio-net-pci".into(),
            backend,
            mac: None,
        }
    }
}

#[derive(Debug, Clone)]
enum LabFile {
    Host {
        src: PathBuf,
        dest: PathBuf,
    },
    Binary {
        src: PathBuf,
        dest_dir: PathBuf,
    },
    Bytes {
        dest: PathBuf,
        data: Vec<u8>,
        mode: u32,
    },
}

/// Builder and runner for one lab host boot.
#[derive(Debug, Clone)]
pub struct LabHost {
    images: Images,
    cpus: u32,
    memory_mib: u32,
    nvme: Option<PathBuf>,
    /// QEMU I/O throttling of the NVMe disk (operations per second), if any.
    nvme_iops: Option<u32>,
    nics: Vec<LabNic>,
    files: Vec<LabFile>,
    script: String,
    timeout: Duration,
    boot_deadline: Duration,
    silence_limit: Duration,
    kernel_args: String,
    qemu_args: Vec<String>,
}

/// The outcome of a lab run that reached its exit marker.
#[derive(Debug)]
pub struct LabRun {
    /// Exit status of `/lab/run.sh`.
    pub status: i32,
    /// Everything printed on the lab console (lines, `\r` stripped).
    pub console: String,
    /// Wall time from starting QEMU to its exit.
    pub duration: Duration,
    /// Lab uptime when `/init` had loaded its modules (guest clock, from [`BOOT_MARKER`]).
    pub boot_uptime: Option<Duration>,
    /// Directory holding `console.log`, `qemu-stderr.log`, `initrd.cpio`.
    pub work_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl LabRun {
    /// Path of the console log of this run (deleted with the `LabRun` unless `LAB_KEEP_DIR` is
    /// set in the environment).
    pub fn console_log(&self) -> PathBuf {
        self.work_dir.join("console.log")
    }
}

/// The QEMU binary used: `$LAB_QEMU` or `qemu-system-x86_64` from `PATH`, if it exists.
pub fn qemu_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LAB_QEMU") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
}

impl LabHost {
    /// A lab with 2 CPUs, 2048 MiB, no NVMe, no NIC, an empty script and a 300 s timeout.
    pub fn new(images: &Images) -> LabHost {
        LabHost {
            images: images.clone(),
            cpus: 2,
            memory_mib: 2048,
            nvme: None,
            nvme_iops: None,
            nics: Vec::new(),
            files: Vec::new(),
            script: String::new(),
            timeout: Duration::from_secs(300),
            boot_deadline: BOOT_DEADLINE,
            silence_limit: SILENCE_LIMIT,
            kernel_args: String::new(),
            qemu_args: Vec::new(),
        }
    }

    /// Number of lab CPUs (TCG threads).
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// Lab memory in MiB.
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Adds an emulated NVMe controller (`serial=lab0`) backed by the raw image `backing`.
    pub fn nvme(mut self, backing: impl Into<PathBuf>) -> Self {
        self.nvme = Some(backing.into());
        self
    }

    /// Limits the NVMe disk to `iops` operations per second (QEMU `throttling.iops-total`):
    /// requests then wait in the device, as on a slow disk.
    pub fn nvme_iops(mut self, iops: u32) -> Self {
        self.nvme_iops = Some(iops);
        self
    }

    /// Adds an emulated NIC.
    pub fn nic(mut self, nic: LabNic) -> Self {
        self.nics.push(nic);
        self
    }

    /// Copies the host file `src` to `dest` inside the lab (mode kept).
    pub fn file(mut self, src: impl Into<PathBuf>, dest: impl Into<PathBuf>) -> Self {
        self.files.push(LabFile::Host {
            src: src.into(),
            dest: dest.into(),
        });
        self
    }

    /// Copies the host binary `src` into `dest_dir` inside the lab, with its shared libraries.
    pub fn binary(mut self, src: impl Into<PathBuf>, dest_dir: impl Into<PathBuf>) -> Self {
        self.files.push(LabFile::Binary {
            src: src.into(),
            dest_dir: dest_dir.into(),
        });
        self
    }

    /// Writes `data` to `dest` inside the lab.
    pub fn bytes(mut self, dest: impl Into<PathBuf>, data: impl Into<Vec<u8>>, mode: u32) -> Self {
        self.files.push(LabFile::Bytes {
            dest: dest.into(),
            data: data.into(),
            mode,
        });
        self
    }

    /// Puts the lab kernel at [`LAB_GUEST_KERNEL`] and `initrd` (e.g. from
    /// [`crate::guest_initramfs`]) at [`LAB_GUEST_INITRD`], for a VMM run by the script.
    pub fn with_guest(self, initrd: impl Into<PathBuf>) -> Self {
        let kernel = self.images.kernel.clone();
        self.file(kernel, LAB_GUEST_KERNEL)
            .file(initrd, LAB_GUEST_INITRD)
    }

    /// The shell script run as `/lab/run.sh` (cwd `/lab`); its exit status is the run's status.
    pub fn script(mut self, script: impl Into<String>) -> Self {
        self.script = script.into();
        self
    }

    /// Wall-clock limit for the whole run; QEMU is killed when it expires.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long the lab host may take to print its boot marker (default [`BOOT_DEADLINE`])
    /// before the run ends with [`LabError::BootStalled`].
    pub fn boot_deadline(mut self, deadline: Duration) -> Self {
        self.boot_deadline = deadline;
        self
    }

    /// How long the console may stay silent (default [`SILENCE_LIMIT`]) before the run ends
    /// with [`LabError::Silent`]; a script with a longer quiet step must raise it.
    pub fn silence_limit(mut self, limit: Duration) -> Self {
        self.silence_limit = limit;
        self
    }

    /// Extra lab kernel command-line arguments (e.g. `hugepages=64`).
    pub fn kernel_args(mut self, args: &str) -> Self {
        if !self.kernel_args.is_empty() {
            self.kernel_args.push(' ');
        }
        self.kernel_args.push_str(args);
        self
    }

    /// An extra raw QEMU argument (appended after the generated ones).
    pub fn qemu_arg(mut self, arg: impl Into<String>) -> Self {
        self.qemu_args.push(arg.into());
        self
    }

    fn overlay(&self) -> Result<Cpio> {
        let mut c = Cpio::new();
        let script = format!("{HOST_TUNING}{}", self.script);
        c.add_file("/lab/script.sh", script.into_bytes(), 0o755)?;
        c.add_file("/lab/run.sh", RUN_SH.as_bytes().to_vec(), 0o755)?;
        for f in &self.files {
            match f {
                LabFile::Host { src, dest } => c.add_host_file(dest, src)?,
                LabFile::Binary { src, dest_dir } => c.add_host_binary_with_libs(dest_dir, src)?,
                LabFile::Bytes { dest, data, mode } => c.add_file(dest, data.clone(), *mode)?,
            };
        }
        Ok(c)
    }

    /// The QEMU command line (without the binary) for an initrd at `initrd`.
    fn qemu_command_args(&self, initrd: &Path) -> Vec<String> {
        let mut a: Vec<String> = [
            "-accel",
            "tcg,thread=multi",
            "-machine",
            "q35,kernel-irqchip=split",
            "-cpu",
            "EPYC,+svm",
            "-device",
            "intel-iommu,intremap=on,caching-mode=on,aw-bits=48",
            "-nic",
            "none",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend([
            "-smp".into(),
            self.cpus.to_string(),
            "-m".into(),
            self.memory_mib.to_string(),
        ]);
        if let Some(img) = &self.nvme {
            a.push("-drive".into());
            let throttle = self
                .nvme_iops
                .map(|iops| format!(",throttling.iops-total={iops}"))
                .unwrap_or_default();
            a.push(format!(
                "file={},if=none,id=nv0,format=raw{throttle}",
                img.display().to_string().replace(',', ",,")
            ));
            a.push("-device".into());
            a.push("nvme,serial=lab0,drive=nv0".into());
        }
        for (i, nic) in self.nics.iter().enumerate() {
            let netdev = match nic.backend {
                NicBackend::Hub(hub) => format!("hubport,id=net{i},hubid={hub}"),
                NicBackend::SocketListen(port) => {
                    format!("socket,id=net{i},listen=127.0.0.1:{port}")
                }
                NicBackend::SocketConnect(port) => {
                    format!("socket,id=net{i},connect=127.0.0.1:{port}")
                }
            };
            let mut dev = format!("{},netdev=net{i},romfile=", nic.model);
            if let Some(mac) = &nic.mac {
                dev.push_str(&format!(",mac={mac}"));
            }
            a.extend(["-netdev".into(), netdev, "-device".into(), dev]);
        }
        let mut cmdline = LAB_CMDLINE.to_string();
        if !self.kernel_args.is_empty() {
            cmdline.push(' ');
            cmdline.push_str(&self.kernel_args);
        }
        a.extend([
            "-kernel".into(),
            self.images.kernel.display().to_string(),
            "-initrd".into(),
            initrd.display().to_string(),
            "-append".into(),
            cmdline,
        ]);
        a.extend(self.qemu_args.iter().cloned());
        a
    }

    /// Boots the lab, runs the script and waits for `LAB-EXIT-STATUS=N`.
    ///
    /// QEMU is always killed before this returns (timeout, error or success). The console is
    /// streamed to `console.log` in the run's temporary directory and to `tracing` (debug,
    /// target `lab::console`).
    ///
    /// A lab-host kernel soft lockup naming a nested VMM's own process (`[vmm:…]` or
    /// `[qemu-system-x86…]` never leaving `KVM_RUN`) stops the run at that line with
    /// [`LabError::LabHostStalled`] instead of waiting for the timeout; a nested guest whose
    /// kernel reports a CPU stuck for [`GUEST_STALL`] or longer stops it with
    /// [`LabError::GuestStalled`]. The run is not repeated
    /// here: retrying is the test runner's policy (`.config/nextest.toml`), where it is reported.
    pub fn run(&self) -> Result<LabRun> {
        let qemu = qemu_binary().ok_or(LabError::QemuMissing)?;
        let (work_dir, tmp) = run_dir()?;
        let initrd = work_dir.join("initrd.cpio");
        concat_with_overlay(&[self.images.lab_base.as_path()], &self.overlay()?, &initrd)?;

        let start = Instant::now();
        let mut qemu_proc = self.spawn_qemu(&qemu, &initrd)?;
        let output = Output::capture(&mut qemu_proc, &work_dir)?;
        let (console, status) = self.watch_console(&output.lines, start)?;
        let exit = qemu_proc.finish(Duration::from_secs(5));
        let duration = start.elapsed();
        print_faults(&console);
        let stderr_path = output.join();

        let Some(status) = status else {
            return Err(no_exit_marker(&console, &stderr_path, exit));
        };
        let boot_uptime = console.lines().find_map(|l| {
            let v = l.split(BOOT_MARKER).nth(1)?;
            let secs: f64 = v.split_whitespace().next()?.parse().ok()?;
            Duration::try_from_secs_f64(secs).ok()
        });
        Ok(LabRun {
            status,
            console,
            duration,
            boot_uptime,
            work_dir,
            _tmp: tmp,
        })
    }

    /// Starts QEMU on `initrd`, killed if the spawning thread dies (and on drop).
    fn spawn_qemu(&self, qemu: &Path, initrd: &Path) -> Result<KillOnDrop> {
        let args = self.qemu_command_args(initrd);
        tracing::debug!("lab: {} {}", qemu.display(), args.join(" "));
        let mut cmd = Command::new(qemu);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory; it makes
        // the kernel kill QEMU if the thread that spawned it dies (e.g. the test is killed).
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| LabError::io(format!("starting {}", qemu.display()), e))?;
        Ok(KillOnDrop(child))
    }

    /// Collects console lines until QEMU's output ends or the exit marker's
    /// power-off grace passes; returns the console and the exit status, or the
    /// error of a stall, a silence or the timeout.
    fn watch_console(
        &self,
        lines: &mpsc::Receiver<String>,
        start: Instant,
    ) -> Result<(String, Option<i32>)> {
        let mut console = String::new();
        let mut status = None;
        let mut deadline = start + self.timeout;
        let boot_by = start + self.boot_deadline;
        let mut booted = false;
        let mut silent_by = start + self.silence_limit;
        loop {
            let mut until = deadline.min(silent_by);
            if !booted {
                until = until.min(boot_by);
            }
            let left = until.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    silent_by = Instant::now() + self.silence_limit;
                    booted |= line.contains(BOOT_MARKER);
                    stall_check(&mut console, &line)?;
                    if status.is_none() {
                        status = parse_marker(&line, EXIT_MARKER);
                        if status.is_some() {
                            deadline = deadline.min(Instant::now() + POWEROFF_GRACE);
                        }
                    }
                    console.push_str(&line);
                    console.push('\n');
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if status.is_some() {
                        tracing::warn!("lab did not power off after its exit marker; killing");
                        return Ok((console, status));
                    }
                    print_faults(&console);
                    let tail = tail_lines(&console, 40);
                    let now = Instant::now();
                    if !booted && now >= boot_by && boot_by < deadline {
                        return Err(LabError::BootStalled {
                            after: self.boot_deadline,
                            tail,
                        });
                    }
                    if now >= silent_by && silent_by < deadline {
                        return Err(LabError::Silent {
                            after: self.silence_limit,
                            tail,
                        });
                    }
                    return Err(LabError::Timeout {
                        timeout: self.timeout,
                        tail,
                    });
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok((console, status)),
            }
        }
    }
}

/// The run's directory: a temporary one, kept (and logged) when
/// `LAB_KEEP_DIR` is set.
fn run_dir() -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    let tmp = tempfile::Builder::new()
        .prefix("lab-run-")
        .tempdir()
        .map_err(|e| LabError::io("creating lab temp dir", e))?;
    Ok(if std::env::var_os("LAB_KEEP_DIR").is_some() {
        let p = tmp.keep();
        tracing::info!("keeping lab run directory {}", p.display());
        (p, None)
    } else {
        (tmp.path().to_path_buf(), Some(tmp))
    })
}

/// A lab-host soft lockup in a nested VMM, or a nested guest CPU stuck for
/// [`GUEST_STALL`] or longer, ends the run at `line` (added to `console`).
fn stall_check(console: &mut String, line: &str) -> Result<()> {
    if is_lab_host_stall(line) {
        console.push_str(line);
        print_faults(console);
        return Err(LabError::LabHostStalled {
            tail: tail_lines(console, 40),
        });
    }
    if let Some(stuck) = guest_cpu_stuck(line).filter(|&s| s >= GUEST_STALL) {
        console.push_str(line);
        print_faults(console);
        return Err(LabError::GuestStalled {
            stuck,
            tail: tail_lines(console, 40),
        });
    }
    Ok(())
}

/// QEMU's output: console lines on a channel (and in `console.log`), stderr
/// in `qemu-stderr.log`, each copied by a thread of its own.
struct Output {
    lines: mpsc::Receiver<String>,
    stderr_path: PathBuf,
    threads: [thread::JoinHandle<()>; 2],
}

impl Output {
    fn capture(qemu: &mut KillOnDrop, work_dir: &Path) -> Result<Self> {
        let (tx, lines) = mpsc::channel::<String>();
        let stdout = qemu.0.stdout.take();
        let stderr = qemu.0.stderr.take();
        let console_log = File::create(work_dir.join("console.log"))
            .map_err(|e| LabError::io("creating console.log", e))?;
        let stderr_path = work_dir.join("qemu-stderr.log");
        let stderr_log =
            File::create(&stderr_path).map_err(|e| LabError::io("creating qemu-stderr.log", e))?;
        let out_thread = thread::Builder::new()
            .name("lab-console".into())
            .spawn(move || stream_console(stdout, console_log, tx))
            .map_err(|e| LabError::io("spawning console thread", e))?;
        let err_thread = thread::Builder::new()
            .name("lab-stderr".into())
            .spawn(move || copy_stderr(stderr, stderr_log))
            .map_err(|e| LabError::io("spawning stderr thread", e))?;
        Ok(Self {
            lines,
            stderr_path,
            threads: [out_thread, err_thread],
        })
    }

    /// Waits for both copies to finish (QEMU has exited); returns where
    /// stderr went.
    fn join(self) -> PathBuf {
        for t in self.threads {
            let _ = t.join();
        }
        self.stderr_path
    }
}

/// The error of a run whose script never printed its exit marker, with the
/// console's tail and QEMU's stderr (less TCG's feature warnings).
fn no_exit_marker(console: &str, stderr_path: &Path, exit: Option<ExitStatus>) -> LabError {
    let stderr = std::fs::read_to_string(stderr_path).unwrap_or_default();
    let stderr: String = stderr
        .lines()
        .filter(|l| !l.contains("TCG doesn't support requested feature"))
        .collect::<Vec<_>>()
        .join("\n");
    LabError::NoExitMarker {
        qemu_status: exit.map_or_else(|| "killed".to_string(), |s| s.to_string()),
        tail: format!(
            "{}\n--- qemu stderr ---\n{}",
            tail_lines(console, 40),
            tail_lines(&stderr, 20)
        ),
    }
}

/// Prints the console's [`fault_lines`] to stderr, where a test's output starts: a failing
/// test's console may be cut short where it is shown (a CI summary keeps its head and tail).
fn print_faults(console: &str) {
    let faults = fault_lines(console, 40);
    if !faults.is_empty() {
        eprintln!("lab: kernel faults or VMM verdicts on the console:");
        for l in faults {
            eprintln!("  ! {l}");
        }
    }
}

/// Whether `line` is the lab kernel reporting that a nested VMM's own process is stuck on a
/// CPU (its vCPU thread never leaves `KVM_RUN`).
fn is_lab_host_stall(line: &str) -> bool {
    line.contains("soft lockup - CPU#")
        && (line.contains("[vmm:") || line.contains("[qemu-system-x86"))
}

/// How long a guest task's soft lockup line says its CPU has been stuck; `None` for other
/// lines and for the lab host's own stalls ([`is_lab_host_stall`]).
fn guest_cpu_stuck(line: &str) -> Option<Duration> {
    if !line.contains("soft lockup - CPU#") || is_lab_host_stall(line) {
        return None;
    }
    let rest = &line[line.find(" stuck for ")? + " stuck for ".len()..];
    let secs = rest.split('s').next()?.parse().ok()?;
    Some(Duration::from_secs(secs))
}

/// Parses the integer after `marker` anywhere in `line` (kernel messages may share the line).
pub fn parse_marker(line: &str, marker: &str) -> Option<i32> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let end = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && c == '-')))
        .map_or(rest.len(), |(i, _)| i);
    rest[..end].parse().ok()
}

/// Reads QEMU's serial output line by line into the log, tracing and the channel.
fn stream_console(
    stdout: Option<std::process::ChildStdout>,
    mut log: File,
    tx: mpsc::Sender<String>,
) {
    let Some(stdout) = stdout else { return };
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let _ = log.write_all(&buf);
                let text = String::from_utf8_lossy(&buf);
                let line = text.trim_end_matches(['\n', '\r']).replace('\r', "");
                tracing::debug!(target: "lab::console", "{line}");
                if tx.send(line).is_err() {
                    return;
                }
            }
        }
    }
}

fn copy_stderr(stderr: Option<std::process::ChildStderr>, mut log: File) {
    if let Some(mut s) = stderr {
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let _ = log.write_all(&buf);
    }
}

/// Owns the QEMU child: killed and reaped on drop, whatever path leaves `run`.
struct KillOnDrop(Child);

impl KillOnDrop {
    /// Waits up to `grace` for QEMU to exit by itself, then kills it. `None` if it was killed.
    fn finish(&mut self, grace: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + grace;
        while Instant::now() < until {
            match self.0.try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) => thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        None
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_parsing() {
        assert_eq!(parse_marker("LAB-EXIT-STATUS=7", EXIT_MARKER), Some(7));
        assert_eq!(
            parse_marker("[ 3.1] foo LAB-EXIT-STATUS=130[ 3.2] reboot", EXIT_MARKER),
            Some(130)
        );
        assert_eq!(parse_marker("LAB-EXIT-STATUS=", EXIT_MARKER), None);
        assert_eq!(parse_marker("nothing", EXIT_MARKER), None);
    }

    #[test]
    fn only_a_nested_vmm_process_stall_is_a_lab_host_stall() {
        assert!(is_lab_host_stall(
            "[  188.580621] watchdog: BUG: soft lockup - CPU#0 stuck for 48s! [vmm:138]"
        ));
        assert!(is_lab_host_stall(
            "[ 90.1] watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [qemu-system-x86:201]"
        ));
        // A nested guest's own lockup names a guest task: that is the test's business.
        assert!(!is_lab_host_stall(
            "[ 30.2] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [fio:77]"
        ));
        assert!(!is_lab_host_stall("vmm: starting [vmm:1]"));
    }

    #[test]
    fn a_guest_cpu_stuck_is_read_from_its_watchdog_line() {
        let line =
            "[  216.741519] watchdog: BUG: soft lockup - CPU#1 stuck for 52s! [khugepaged:36]";
        assert_eq!(guest_cpu_stuck(line), Some(Duration::from_secs(52)));
        assert!(guest_cpu_stuck(line).is_some_and(|s| s >= GUEST_STALL));
        let first = "[ 30.2] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [fio:77]";
        assert!(guest_cpu_stuck(first).is_some_and(|s| s < GUEST_STALL));
        // The lab host's own stall is reported as such, not as the guest's.
        let host = "[ 188.5] watchdog: BUG: soft lockup - CPU#0 stuck for 48s! [vmm:138]";
        assert_eq!(guest_cpu_stuck(host), None);
        assert_eq!(guest_cpu_stuck("fio: stuck for 99s"), None);
    }

    #[test]
    fn command_line_has_no_user_networking() {
        let images = Images::in_dir(Path::new("/x"));
        let lab = LabHost::new(&images)
            .nvme("/tmp/a,b.img")
            .nic(LabNic::virtio(NicBackend::Hub(0)))
            .nic(LabNic::virtio(NicBackend::SocketListen(5555)));
        let args = lab.qemu_command_args(Path::new("/x/initrd"));
        let joined = args.join(" ");
        assert!(joined.contains("-nic none"));
        assert!(!joined.contains("user"));
        assert!(joined.contains("file=/tmp/a,,b.img,if=none"));
        assert!(joined.contains("socket,id=net1,listen=127.0.0.1:5555"));
        assert!(joined.contains("aw-bits=48"));
        let throttled = LabHost::new(&images).nvme("/d.img").nvme_iops(400);
        let joined = throttled
            .qemu_command_args(Path::new("/x/initrd"))
            .join(" ");
        assert!(joined.contains("file=/d.img,if=none,id=nv0,format=raw,throttling.iops-total=400"));
    }
}
