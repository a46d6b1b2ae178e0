// SPDX-License-Identifier: Apache-2.0
//! `vmm`: boot a Linux guest (`vmm run`), drive a running one (`vmm remote`)
//! or validate the host (`vmm check`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use backends::seccomp;
use clap::{Args, Parser, Subcommand};

use backends::metrics::{Exporter, MetricsServer};
use vmm::api::client::{self, Command};
use vmm::api::server::ApiServer;
use vmm::api::{control_channel, ApiReceiver};
use vmm::config::{
    CpusConfig, DeviceConfig, DiskConfig, MemoryConfig, NetConfig, SerialConfig, VmConfig,
};
use vmm::machine::{Machine, RunContext, RunEnd};
use vmm::seccomp::VmmThread;
use vmm::vstate::exit::GuestExit;

#[derive(Parser)]
#[command(name = "vmm", version, about = "A KVM VMM for I/O performance work")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot a Linux guest.
    #[command(after_help = "Exit status:\n  \
        0  the guest powered off (or vm.shutdown with force)\n  \
        1  VMM error (bad arguments, host cannot run the VM)\n  \
        2  the guest reset itself (reboot from inside; vm.reboot reboots instead)\n  \
        3  the guest kernel panicked\n  \
        4  a vCPU triple-faulted or KVM could not run it\n  \
        128+N  stopped by signal N (SIGTERM, SIGINT)")]
    Run(Box<RunArgs>),
    /// Drive a VMM started with --api-socket (like ch-remote).
    #[command(after_help = "Exit status:\n  \
        0  done\n  \
        1  the VMM refused the request or could not be reached")]
    Remote(RemoteArgs),
    /// Validate this host (KVM, io_uring, VFIO, hugepages, memfd, TUN).
    #[command(after_help = "Exit status:\n  \
        0  direct mode can boot stock Linux here (hardware-backed KVM, all required caps)\n  \
        1  it cannot (e.g. PVM/software KVM, no /dev/kvm): use lab mode\n  \
        2  usage or internal error")]
    Check {
        /// Print the report as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Kernel image: bzImage or ELF vmlinux.
    #[arg(long)]
    kernel: PathBuf,
    /// Initramfs (cpio, optionally compressed; several archives may be concatenated).
    #[arg(long)]
    initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0 panic=-1")]
    cmdline: String,
    /// vCPUs: a count (e.g. 2), or boot=N[,affinity=[V@[CPUS],...]] to pin vCPU V's
    /// thread to host CPUs (e.g. boot=2,affinity=[0@[2],1@[3]], ranges as 4-7).
    #[arg(long, default_value = "1")]
    cpus: String,
    /// Guest memory: SIZE or size=SIZE, then [,hugepages=on] [,shared=on|off] (e.g. 512M,
    /// size=2G,hugepages=on). Shared (memfd) RAM is chosen when a vhost-user device is
    /// configured, private anonymous RAM otherwise; shared=off with a vhost-user device
    /// is refused.
    #[arg(long, default_value = "512M")]
    memory: MemoryConfig,
    /// Serial console: stdio, file=PATH[,max_size=SIZE] (default 64M: the file is then
    /// truncated, with a marker line, and keeps the newest output) or off.
    #[arg(long, default_value = "stdio")]
    serial: SerialConfig,
    /// A disk (repeatable): virtio-blk served by a vhost-user backend,
    /// vhost_user=on,socket=PATH[,queues=N][,queue_size=M]; or a file served by
    /// the VMM, path=FILE[,queues=N][,queue_size=M][,readonly=on][,model=virtio|nvme].
    /// num_queues=N is the same as queues=N.
    #[arg(long = "disk")]
    disks: Vec<DiskConfig>,
    /// Pass a host PCI device (bound to vfio-pci) through: path=/sys/bus/pci/devices/DDDD:BB:DD.F.
    /// Repeatable.
    #[arg(long = "device")]
    devices: Vec<DeviceConfig>,
    /// A NIC (repeatable): virtio-net served by a vhost-user backend,
    /// vhost_user=on,socket=PATH[,mac=MAC][,queues=N][,queue_size=M] (N queue pairs, at
    /// most 8; N>1 needs a backend serving the control queue; num_queues=N also works),
    /// or a TAP interface, tap=NAME[,mac=MAC][,model=virtio|e1000].
    #[arg(long = "net")]
    nets: Vec<NetConfig>,
    /// Serve the API (HTTP/1.1, JSON) on this Unix socket, created mode 0600; `vmm remote`
    /// is its client.
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Serve the in-VMM queues' metrics (Prometheus text) at GET /metrics on
    /// 127.0.0.1:PORT or unix:PATH.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<minihttp::ListenAddr>,
    /// Seccomp filters: `on` (a syscall outside a thread's filter kills the VMM), `log` (it
    /// is allowed and logged by the kernel) or `off`.
    #[arg(long, value_name = "on|log|off", default_value = "on")]
    seccomp: String,
    /// Fault injection for tests: the first thread of this kind (`queue`) to start makes a
    /// syscall its filter forbids.
    #[arg(long, value_name = "KIND", hide = true)]
    seccomp_violation: Option<String>,
}

#[derive(Args)]
struct RemoteArgs {
    /// The VMM's API socket.
    #[arg(long, value_name = "PATH")]
    api_socket: PathBuf,
    /// Print the JSON the VMM answered instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: RemoteCmd,
}

#[derive(Subcommand, Clone, Copy)]
enum RemoteCmd {
    /// Version, pid and uptime of the VMM.
    Ping,
    /// State, configuration and devices of the VM.
    Info,
    /// Per-device and per-queue counters.
    Counters,
    /// Park the vCPUs; in-VMM device threads take no new requests.
    Pause,
    /// Let the VM run again.
    Resume,
    /// Press the ACPI power button (the VMM exits 0 when the guest powers off).
    Shutdown {
        /// Stop the VM at once instead.
        #[arg(long)]
        force: bool,
    },
    /// Build the VM again from its configuration and boot it.
    Reboot,
}

impl From<RemoteCmd> for Command {
    fn from(c: RemoteCmd) -> Self {
        match c {
            RemoteCmd::Ping => Command::Ping,
            RemoteCmd::Info => Command::Info,
            RemoteCmd::Counters => Command::Counters,
            RemoteCmd::Pause => Command::Pause,
            RemoteCmd::Resume => Command::Resume,
            RemoteCmd::Shutdown { force } => Command::Shutdown { force },
            RemoteCmd::Reboot => Command::Reboot,
        }
    }
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
}

/// Sets the seccomp mode and installs the process-wide filter, before anything else runs.
/// SIGTERM/SIGINT are blocked first, in this thread and so in every thread started later (the
/// API and metrics threads start before the VM): the event loop reads them from a signalfd,
/// and a thread that had them unblocked would take them and die of them.
fn confine(args: &RunArgs) -> Result<(), backends::Error> {
    block_termination_signals();
    seccomp::set_mode(args.seccomp.parse()?);
    if let Some(kind) = &args.seccomp_violation {
        seccomp::inject_violation(kind);
    }
    seccomp::install_process(VmmThread::Process)
}

/// Blocks SIGTERM and SIGINT in the calling thread.
fn block_termination_signals() {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset/sigaddset; pthread_sigmask
    // only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

fn run(args: RunArgs) -> ExitCode {
    if let Err(e) = confine(&args) {
        eprintln!("vmm: error: {e}");
        return ExitCode::from(1);
    }
    let started = Instant::now();
    let cpus = match args.cpus.parse::<CpusConfig>() {
        Ok(cpus) => cpus,
        Err(e) => {
            eprintln!("vmm: error: --cpus {}: {e}", args.cpus);
            return ExitCode::from(1);
        }
    };
    let cfg = VmConfig {
        kernel: args.kernel,
        initramfs: args.initramfs,
        cmdline: args.cmdline,
        cpus: cpus.boot,
        vcpu_affinity: cpus.affinity,
        memory: args.memory,
        serial: args.serial,
        disks: args.disks,
        devices: args.devices,
        nets: args.nets,
    };
    // No execve of this process or its children may ever gain privileges.
    if let Err(e) = backends::privileges::no_new_privs() {
        eprintln!("vmm: error: {e}");
        return ExitCode::from(1);
    }
    let outcome =
        Operated::start(&args.api_socket, &args.metrics, started).and_then(|ops| ops.run_vm(&cfg));
    match outcome {
        Ok(why) => {
            let code = why.exit_code();
            if code == 0 {
                tracing::info!("{why}");
            } else {
                eprintln!("vmm: {why}");
            }
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Err(e) => {
            eprintln!("vmm: error: {e}");
            ExitCode::from(1)
        }
    }
}

/// What operates the VM from outside: the API thread and the metrics endpoint
/// (both kept across reboots).
struct Operated {
    api: Option<(ApiServer, ApiReceiver)>,
    exporter: Arc<Exporter>,
    _metrics: Option<MetricsServer>,
}

impl Operated {
    /// Listen on the API socket and the metrics address, if given; both fail
    /// here, before anything else is set up, on a bad path or a busy port.
    fn start(
        api_socket: &Option<PathBuf>,
        metrics: &Option<minihttp::ListenAddr>,
        started: Instant,
    ) -> vmm::Result<Self> {
        let api = match api_socket {
            Some(path) => {
                let (sender, receiver) = control_channel().map_err(vmm::Error::Io)?;
                Some((ApiServer::start(path, sender, started)?, receiver))
            }
            None => None,
        };
        let exporter = Arc::new(Exporter::default());
        let metrics = match metrics {
            Some(addr) => Some(
                MetricsServer::start(addr, exporter.clone(), VmmThread::Metrics)
                    .map_err(|e| vmm::Error::Metrics(e.to_string()))?,
            ),
            None => None,
        };
        Ok(Self {
            api,
            exporter,
            _metrics: metrics,
        })
    }

    /// Build and run the VM, again after each `vm.reboot`, until it stops.
    fn run_vm(self, cfg: &VmConfig) -> vmm::Result<GuestExit> {
        let mut boots = 0u32;
        loop {
            boots = boots.saturating_add(1);
            let machine = Machine::build(cfg)?;
            self.exporter.set_queues(machine.devices().queue_metrics());
            let ctx = RunContext {
                api: self.api.as_ref().map(|(_, receiver)| receiver),
                boots,
            };
            if let RunEnd::Exit(why) = machine.run(ctx)? {
                return Ok(why);
            }
        }
    }
}

fn remote(args: RemoteArgs) -> ExitCode {
    match client::run(&args.api_socket, args.cmd.into(), args.json) {
        Ok(text) => {
            if !text.is_empty() {
                let _ = writeln!(std::io::stdout().lock(), "{}", text.trim_end());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vmm remote: {e}");
            ExitCode::from(1)
        }
    }
}

fn check(json: bool) -> ExitCode {
    let report = vmm::check::check_host();
    let text = if json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("vmm check: {}", vmm::Error::from(e));
                return ExitCode::from(2);
            }
        }
    } else {
        report.to_string()
    };
    // writeln! instead of println!: a closed pipe must not panic.
    if let Err(e) = writeln!(std::io::stdout().lock(), "{text}") {
        tracing::debug!(error = %e, "stdout closed");
    }
    ExitCode::from(u8::from(!report.direct_boot))
}

fn main() -> ExitCode {
    init_logging();
    match Cli::parse().cmd {
        Cmd::Run(args) => run(*args),
        Cmd::Remote(args) => remote(args),
        Cmd::Check { json } => check(json),
    }
}
