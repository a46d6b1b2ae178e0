// SPDX-License-Identifier: Apache-2.0
//! `vmm-perf`: the project's benchmark driver.

mod blk;
mod boot;
mod compare;
mod net;
mod top;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use perf::idle::{CpuLatencyHold, CPU_DMA_LATENCY};
use perf::provenance::{stamped, Provenance};

#[derive(Parser)]
#[command(version, about = "VMM benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Benchmark a vhost-user backend without a VM.
    Backend {
        #[command(subcommand)]
        which: BackendCmd,
    },
    /// Guest boot-to-init time and VMM memory: ours vs QEMU, same run.
    Boot(boot::BootArgs),
    /// Tier × workload comparison (native, vhost-user, VFIO, …): fio, iperf3, boot.
    Compare(compare::CompareArgs),
    /// A live per-queue table (IOPS, MB/s, p50/p99 latency, in flight) of the VMM and
    /// backends from their --metrics endpoints, refreshed every second.
    Top(top::TopArgs),
    /// Render report.md, its charts and results.csv from a `compare` results.json alone (the
    /// same bytes as the run that wrote it).
    Report {
        /// The results.json (or the results directory holding it).
        results: PathBuf,
        /// Where to write the report (default: beside results.json).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BackendCmd {
    /// vhost-user-blk: ours vs qemu-storage-daemon vs raw io_uring (libblkio client).
    Blk(blk::BlkArgs),
    /// vhost-user-net: our backend driven by our own virtio-net load generator vs raw
    /// io_uring on the same TAP (in a fresh network namespace; needs root).
    Net(net::NetArgs),
}

/// How a backend benchmark treats idle CPUs.
#[derive(clap::Args)]
pub struct IdleArgs {
    /// Let idle CPUs enter deep idle states (on a VM: halt, handing the physical CPU back to
    /// the host) instead of holding a 0 µs CPU-latency request (`/dev/cpu_dma_latency`) for
    /// the run, under which idle CPUs poll.
    #[arg(long)]
    allow_deep_idle: bool,
}

impl IdleArgs {
    /// Keep idle CPUs polling until the returned hold is dropped, unless deep idle is allowed;
    /// says which on stderr.
    pub fn hold(&self) -> perf::Result<Option<CpuLatencyHold>> {
        if self.allow_deep_idle {
            eprintln!("idle CPUs: deep idle states allowed (--allow-deep-idle)");
            return Ok(None);
        }
        let hold = CpuLatencyHold::request(0).map_err(|e| {
            perf::Error::Unavailable(format!("{e} (needs root; or pass --allow-deep-idle)"))
        })?;
        eprintln!(
            "idle CPUs: polling, not halting, for the run ({CPU_DMA_LATENCY} held at 0 µs; --allow-deep-idle to measure without)"
        );
        Ok(Some(hold))
    }
}

fn main() {
    init_tracing();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Backend {
            which: BackendCmd::Blk(args),
        } => blk::blk(args),
        Cmd::Backend {
            which: BackendCmd::Net(args),
        } => net::net(args),
        Cmd::Boot(args) => boot::boot(args),
        Cmd::Compare(args) => compare::compare(args),
        Cmd::Top(args) => top::top(args),
        Cmd::Report { results, out } => report(&results, out),
    };
    if let Err(e) = result {
        eprintln!("vmm-perf: {e}");
        std::process::exit(1);
    }
}

/// `vmm-perf report`: by default into the directory of the results.json.
fn report(results: &Path, out: Option<PathBuf>) -> perf::Result<()> {
    let out = out.unwrap_or_else(|| {
        if results.is_dir() {
            results.to_path_buf()
        } else {
            results
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        }
    });
    let set = perf::compare::report_from_json(results, &out)?;
    println!("{}", perf::compare::report::summary_table(&set));
    println!("report: {}", out.join("report.md").display());
    Ok(())
}

/// Logs to stderr (`RUST_LOG`, default warn) and taps the lab console for `compare`.
fn init_tracing() {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{filter, fmt, EnvFilter};
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let tap = filter::Targets::new().with_target("lab::console", tracing::Level::DEBUG);
    let _ = tracing_subscriber::registry()
        .with(fmt::layer().with_writer(std::io::stderr).with_filter(env))
        .with(perf::compare::ConsoleTap.with_filter(tap))
        .try_init();
}

/// `--mode`: direct, lab, or (none) what `vmm check` allows.
fn parse_mode(mode: Option<&str>, vmm: &Path) -> perf::Result<perf::boot::Mode> {
    use perf::boot::{self, Mode};
    match mode {
        None => Ok(boot::detect_mode(vmm)),
        Some("direct") => Ok(Mode::Direct),
        Some("lab") => Ok(Mode::Lab),
        Some(other) => Err(perf::Error::Usage(format!(
            "--mode {other}: expected direct or lab"
        ))),
    }
}

/// A binary next to this one.
fn sibling_binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Writes a result document, stamped with `provenance`, as pretty JSON to `path`.
fn write_json(path: &Path, provenance: &Provenance, doc: serde_json::Value) -> perf::Result<()> {
    let text = serde_json::to_string_pretty(&stamped(provenance, doc))
        .map_err(|e| perf::Error::Report(format!("{}: {e}", path.display())))?;
    std::fs::write(path, text).map_err(|source| perf::Error::Io {
        context: format!("write {}", path.display()),
        source,
    })?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
