// SPDX-License-Identifier: Apache-2.0
//! `vmm-perf compare`: the command line of the tier × workload harness.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Parser;
use perf::boot::Mode;
use perf::compare::{self, matrix, script::Settings, Kind, Tier, Workload};
use perf::{Error, Result};

use crate::{parse_mode, sibling_binary};

#[derive(Parser)]
pub struct CompareArgs {
    /// Tiers, comma-separated (default: all). Known: native, native-nvme, vmm, qemu,
    /// vhost-user-blk, vfio-nvme, vhost-user-net, emulated, virtio-in-vmm.
    #[arg(long, value_delimiter = ',')]
    tiers: Vec<String>,
    /// Workloads, comma-separated (default: all built-in). Known: randread-4k-qd1,
    /// randread-4k-qd32, randwrite-4k-qd1, randwrite-4k-qd32, read-128k, write-128k,
    /// randrw-70-30-4k-qd32, tcp-tx, tcp-rx, udp, boot; or a group: block, net.
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Runs per cell (median and min/max are reported). With 2 runs of 2 s the default matrix
    /// (all nine tiers, ~20 guest boots) takes 15-20 minutes in lab mode on a 2-core machine.
    #[arg(long, default_value_t = 2)]
    repeat: usize,
    /// Seconds per fio/iperf3 run.
    #[arg(long, default_value_t = 2)]
    duration: u64,
    /// fio file/region size in MiB.
    #[arg(long, default_value_t = 64)]
    size_mib: u64,
    /// An extra fio job file (repeatable); it may use ${VMM_PERF_FILE}, ${VMM_PERF_SIZE} and
    /// ${VMM_PERF_RUNTIME}.
    #[arg(long)]
    fio_job: Vec<PathBuf>,
    /// An extra iperf3 workload with these client arguments (e.g. "-P 4 -l 64k").
    #[arg(long, allow_hyphen_values = true)]
    iperf_args: Option<String>,
    /// direct or lab (default: direct if `vmm check` exits 0, else lab).
    #[arg(long)]
    mode: Option<String>,
    /// Our `vmm` binary (default: next to this binary).
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// Directory of the backend binaries (default: the vmm binary's directory).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Guest vCPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Guest memory in MiB (I/O guests get at least 1024 for the fio/iperf3 initramfs).
    #[arg(long, default_value_t = 512)]
    memory_mib: u32,
    /// Queues of the vhost-user-blk disk (backend and `--disk ...,queues=N`).
    #[arg(long, default_value_t = 1)]
    queues: u16,
    /// Parent of the results directory (`<out>/<timestamp>/`).
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Print the plan (cells and missing tiers) and exit.
    #[arg(long)]
    dry_run: bool,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

/// Runs the comparison: picks tiers and workloads, probes, plans, runs, prints the summary.
pub fn compare(a: CompareArgs) -> Result<()> {
    let vmm = a.vmm.clone().unwrap_or_else(|| sibling_binary("vmm"));
    let bin_dir = a.bin_dir.clone().unwrap_or_else(|| {
        vmm.parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    });
    let mode = parse_mode(a.mode.as_deref(), &vmm)?;
    let tiers = tiers(&a.tiers)?;
    let mut workloads = builtin_workloads(&a.workloads)?;
    workloads.extend(user_workloads(&a)?);
    if a.repeat == 0 || a.duration == 0 {
        return Err(Error::Usage(
            "--repeat and --duration must be at least 1".into(),
        ));
    }
    let probe = matrix::Probe::run(&vmm, &bin_dir, mode == Mode::Lab);
    let plan = matrix::plan(&tiers, &workloads, |t, k| probe.availability_for(t, k));
    eprintln!(
        "compare: {mode:?} mode, {} cells x {} runs, {} s each",
        plan.cells.len(),
        a.repeat,
        a.duration
    );
    for (t, r) in &plan.missing {
        eprintln!("  tier {:<15} MISSING: {r}", t.name());
    }
    if a.dry_run {
        for c in &plan.cells {
            println!("{:<15} {}", c.tier.name(), c.workload.name());
        }
        return Ok(());
    }
    let stop = stop_on_ctrl_c()?;
    let out_dir = a.out.join(perf::provenance::timestamp());
    let opts = compare::Options {
        mode,
        plan,
        settings: Settings {
            repeat: a.repeat,
            duration_s: a.duration,
            size_mib: a.size_mib,
            cpus: a.cpus,
            memory_mib: a.memory_mib,
            queues: a.queues,
        },
        host: compare::host_info(&vmm, mode),
        vmm,
        bin_dir,
        out_dir: out_dir.clone(),
        progress: !a.no_progress,
    };
    let set = compare::run(&opts, stop.clone())?;
    println!("{}", compare::report::summary_table(&set));
    println!("results: {}/report.md", out_dir.display());
    if stop.load(Ordering::SeqCst) {
        std::process::exit(130);
    }
    Ok(())
}

/// `--tiers`: all when empty.
fn tiers(names: &[String]) -> Result<Vec<Tier>> {
    if names.is_empty() {
        return Ok(Tier::ALL.to_vec());
    }
    names
        .iter()
        .map(|t| Tier::from_name(t).ok_or_else(|| Error::Usage(format!("unknown tier {t:?}"))))
        .collect()
}

/// `--workloads`: built-in workloads by name or group (`block`, `net`); all when empty.
fn builtin_workloads(names: &[String]) -> Result<Vec<Workload>> {
    let builtin = Workload::builtin();
    if names.is_empty() {
        return Ok(builtin);
    }
    let mut v = Vec::new();
    for w in names {
        let picked: Vec<Workload> = builtin
            .iter()
            .filter(|x| match w.as_str() {
                "block" => x.kind() == Kind::Block,
                "net" => x.kind() == Kind::Net,
                name => x.name() == name,
            })
            .cloned()
            .collect();
        if picked.is_empty() {
            return Err(Error::Usage(format!("unknown workload {w:?}")));
        }
        v.extend(picked);
    }
    Ok(v)
}

/// The user's own workloads: `--fio-job` files and `--iperf-args`.
fn user_workloads(a: &CompareArgs) -> Result<Vec<Workload>> {
    let mut v = Vec::new();
    for job in &a.fio_job {
        if !job.is_file() {
            return Err(Error::Usage(format!(
                "--fio-job {}: no such file",
                job.display()
            )));
        }
        v.push(Workload::FioJob {
            name: format!("fio-job-{}", job_name(job)),
            path: job.clone(),
        });
    }
    if let Some(args) = &a.iperf_args {
        if args.contains(['\'', '"', ';', '&', '|', '$', '`', '<', '>']) {
            return Err(Error::Usage(
                "--iperf-args: shell metacharacters are not allowed".into(),
            ));
        }
        v.push(Workload::Iperf {
            name: "iperf-custom".into(),
            args: args.clone(),
        });
    }
    Ok(v)
}

/// A fio job file's stem, lower case, with anything but letters, digits and `-` as `-`.
fn job_name(job: &Path) -> String {
    job.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// The first Ctrl-C sets the returned flag (the run stops, keeping what it measured); the
/// second exits at once.
fn stop_on_ctrl_c() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: stopping, keeping the cells measured so far (Ctrl-C again to quit at once)");
    })
    .map_err(|e| Error::Backend(format!("Ctrl-C handler: {e}")))?;
    Ok(stop)
}
