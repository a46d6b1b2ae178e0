//! `vmm`: boot a Linux guest (`vmm run`) or validate the host (`vmm check`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use backends::seccomp;
use clap::{Args, Parser, Subcommand};

use vmm::config::{DeviceConfig, DiskConfig, MemoryConfig, NetConfig, SerialConfig, VmConfig};
use vmm::machine::Machine;
use vmm::seccomp::VmmThread;

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
        0  the guest powered off\n  \
        1  VMM error (bad arguments, host cannot run the VM)\n  \
        2  the guest reset itself (reboot)\n  \
        3  the guest kernel panicked\n  \
        4  a vCPU triple-faulted or KVM could not run it\n  \
        128+N  stopped by signal N (SIGTERM, SIGINT)")]
    Run(Box<RunArgs>),
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
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// Guest memory: SIZE[,hugepages=on] (e.g. 512M, 2G,hugepages=on).
    #[arg(long, default_value = "512M")]
    memory: MemoryConfig,
    /// Serial console: stdio, file=PATH or off.
    #[arg(long, default_value = "stdio")]
    serial: SerialConfig,
    /// A disk (repeatable): virtio-blk served by a vhost-user backend,
    /// vhost_user=on,socket=PATH[,queues=N][,queue_size=M]; or a file served by
    /// the VMM, path=FILE[,queues=N][,queue_size=M][,readonly=on][,model=virtio|nvme].
    #[arg(long = "disk")]
    disks: Vec<DiskConfig>,
    /// Pass a host PCI device (bound to vfio-pci) through: path=/sys/bus/pci/devices/DDDD:BB:DD.F.
    /// Repeatable.
    #[arg(long = "device")]
    devices: Vec<DeviceConfig>,
    /// A NIC (repeatable): virtio-net served by a vhost-user backend,
    /// vhost_user=on,socket=PATH[,mac=MAC][,queues=N][,queue_size=M] (N queue pairs, at
    /// most 8; N>1 needs a backend serving the control queue),
    /// or a TAP interface, tap=NAME[,mac=MAC][,model=virtio|e1000].
    #[arg(long = "net")]
    nets: Vec<NetConfig>,
    /// Seccomp filters: `on` (a syscall outside a thread's filter kills the VMM), `log` (it
    /// is allowed and logged by the kernel) or `off`.
    #[arg(long, value_name = "on|log|off", default_value = "on")]
    seccomp: String,
    /// Fault injection for tests: the first thread of this kind (`queue`) to start makes a
    /// syscall its filter forbids.
    #[arg(long, value_name = "KIND", hide = true)]
    seccomp_violation: Option<String>,
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
fn confine(args: &RunArgs) -> Result<(), backends::Error> {
    seccomp::set_mode(args.seccomp.parse()?);
    if let Some(kind) = &args.seccomp_violation {
        seccomp::inject_violation(kind);
    }
    seccomp::install_process(VmmThread::Process)
}

fn run(args: RunArgs) -> ExitCode {
    if let Err(e) = confine(&args) {
        eprintln!("vmm: error: {e}");
        return ExitCode::from(1);
    }
    let cfg = VmConfig {
        kernel: args.kernel,
        initramfs: args.initramfs,
        cmdline: args.cmdline,
        cpus: args.cpus,
        memory: args.memory,
        serial: args.serial,
        disks: args.disks,
        devices: args.devices,
        nets: args.nets,
    };
    let outcome = Machine::build(&cfg).and_then(Machine::run);
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
        Cmd::Check { json } => check(json),
    }
}
