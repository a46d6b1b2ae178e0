//! `vmm` command line (minimal: `check` only on this branch).

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "vmm", version, about = "A KVM VMM for I/O performance work")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match Cli::parse().cmd {
        Cmd::Check { json } => {
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
    }
}
