//! `vmm-perf backend blk`: vhost-user-blk backends (ours, qemu-storage-daemon) against raw
//! io_uring, with libblkio as the client.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use perf::blk::{BlkBench, JobResult, Target};
use perf::idle::CpuLatencyHold;
use perf::provenance::{Provenance, BENCH_SCHEMA_VERSION};
use perf::Result;

use crate::{sibling_binary, write_json, IdleArgs};

#[derive(Parser)]
pub struct BlkArgs {
    /// Seconds per job.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Test file (created, 1 GiB by default).
    #[arg(long, default_value = "/tmp/vmm-perf-blk.img")]
    file: PathBuf,
    /// Test file size in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// I/O depths to run.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    iodepth: Vec<usize>,
    /// Queue counts to run.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    queues: Vec<usize>,
    /// Our backend binary (default: `vhost-user-blk` next to this binary).
    #[arg(long)]
    ours_bin: Option<PathBuf>,
    /// Extra arguments for our backend, e.g. "--poll-us=50".
    #[arg(long, allow_hyphen_values = true)]
    ours_arg: Vec<String>,
    /// qemu-storage-daemon binary.
    #[arg(long, default_value = "/usr/bin/qemu-storage-daemon")]
    qsd_bin: PathBuf,
    /// Runs of the whole matrix (interleaved); the median run per job is reported.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Skip qemu-storage-daemon.
    #[arg(long)]
    no_qsd: bool,
    /// The vhost-user client polls its queues for completions (libblkio poll queues, as a guest
    /// with virtio-blk `poll_queues` and polled I/O does) instead of sleeping on the call
    /// eventfd; raw io_uring on a page-cached file completes inline either way.
    #[arg(long)]
    client_poll: bool,
    /// Serve qemu-storage-daemon's export from an IOThread (`--object iothread`), whose
    /// event loop busy-polls adaptively (up to 32 µs) before sleeping, instead of from its
    /// main loop, which does not poll.
    #[arg(long)]
    qsd_iothread: bool,
    #[command(flatten)]
    idle: IdleArgs,
    /// JSON report path.
    #[arg(long, default_value = "perf-blk.json")]
    json: PathBuf,
}

/// One job of the matrix: queues, iodepth, target.
type Job = (usize, usize, Target);

/// Runs the matrix `repeat` times, prints every run and the medians, writes the JSON report.
pub fn blk(a: BlkArgs) -> Result<()> {
    let provenance = Provenance::capture(BENCH_SCHEMA_VERSION);
    let run_dir = std::env::temp_dir().join(format!("vmm-perf-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir).map_err(|source| perf::Error::Io {
        context: "run dir".into(),
        source,
    })?;
    let bench = BlkBench {
        file: a.file.clone(),
        size: a.size_mib << 20,
        duration: Duration::from_secs_f64(a.duration),
        ours_bin: a
            .ours_bin
            .clone()
            .unwrap_or_else(|| sibling_binary("vhost-user-blk")),
        ours_args: a.ours_arg.clone(),
        qsd_bin: a.qsd_bin.clone(),
        client_poll: a.client_poll,
        qsd_iothread: a.qsd_iothread,
        run_dir: run_dir.clone(),
    };
    eprintln!(
        "preparing {} ({} MiB, page cached)",
        a.file.display(),
        a.size_mib
    );
    bench.prepare_file()?;
    let idle_hold = a.idle.hold()?;
    if a.client_poll {
        eprintln!("client polls its vhost-user queues for completions (libblkio poll queues)");
    }
    let jobs = jobs(&a);
    let runs = run_matrix(&bench, &jobs, a.repeat)?;
    let results = medians(&runs, &jobs);
    if a.repeat > 1 {
        println!("-- median of {} runs", a.repeat);
        results.iter().for_each(print_row);
    }
    println!();
    let ratios = print_ratios(&a, &results);
    let report = serde_json::json!({
        "benchmark": "vhost-user-blk 4KiB random read, libblkio client",
        "duration_s": a.duration,
        "file_mib": a.size_mib,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "ours_args": a.ours_arg,
        "client_poll": a.client_poll,
        "qsd_iothread": a.qsd_iothread,
        "cpu_latency_limit_us": idle_hold.as_ref().map(CpuLatencyHold::limit_us),
        "repeat": a.repeat,
        "results": results,
        "runs": runs,
        "ratios": ratios,
    });
    write_json(&a.json, &provenance, report)?;
    let _ = std::fs::remove_dir_all(&run_dir);
    Ok(())
}

/// The matrix in run order: per queue count, per iodepth, ours, (qsd,) raw.
fn jobs(a: &BlkArgs) -> Vec<Job> {
    let mut targets = vec![Target::Ours, Target::Raw];
    if !a.no_qsd {
        targets.insert(1, Target::Qsd);
    }
    let mut v = Vec::new();
    for &q in &a.queues {
        for &d in &a.iodepth {
            v.extend(targets.iter().map(|&t| (q, d, t)));
        }
    }
    v
}

fn print_row(r: &JobResult) {
    println!(
        "{:<14} {:>7} {:>6} {:>12.0} {:>9.1} {:>9.1} {:>7}",
        r.target.name(),
        r.iodepth,
        r.queues,
        r.iops,
        r.p50_us,
        r.p99_us,
        r.errors
    )
}

/// Every job, `repeat` times (runs interleaved), each printed as it ends.
fn run_matrix(bench: &BlkBench, jobs: &[Job], repeat: usize) -> Result<Vec<JobResult>> {
    println!(
        "{:<14} {:>7} {:>6} {:>12} {:>9} {:>9} {:>7}",
        "target", "iodepth", "queues", "IOPS", "p50(us)", "p99(us)", "errors"
    );
    let mut runs = Vec::new();
    for rep in 0..repeat.max(1) {
        if repeat > 1 {
            println!("-- run {}/{}", rep + 1, repeat);
        }
        for &(q, d, t) in jobs {
            let r = bench.run(t, d, q)?;
            print_row(&r);
            runs.push(r);
        }
    }
    Ok(runs)
}

/// The median run (by IOPS) of each job.
fn medians(runs: &[JobResult], jobs: &[Job]) -> Vec<JobResult> {
    let mut results = Vec::new();
    for &(q, d, t) in jobs {
        let mut v: Vec<&JobResult> = runs
            .iter()
            .filter(|r| r.target == t && r.iodepth == d && r.queues == q)
            .collect();
        v.sort_by(|x, y| x.iops.total_cmp(&y.iops));
        if let Some(m) = v.get(v.len() / 2) {
            results.push((*m).clone());
        }
    }
    results
}

/// Prints ours/raw and ours/qsd per queue count and iodepth; returns them for the report.
fn print_ratios(a: &BlkArgs, results: &[JobResult]) -> Vec<serde_json::Value> {
    let mut ratios = Vec::new();
    for &q in &a.queues {
        for &d in &a.iodepth {
            let get = |t| {
                results
                    .iter()
                    .find(|r| r.target == t && r.iodepth == d && r.queues == q)
                    .map(|r| r.iops)
            };
            let (ours, raw, qsd) = (get(Target::Ours), get(Target::Raw), get(Target::Qsd));
            let vs_raw = ours.zip(raw).map(|(o, r)| o / r);
            let vs_qsd = ours.zip(qsd).map(|(o, r)| o / r);
            println!(
                "iodepth {d:>2} queues {q}: ours/raw {:>5} ours/qsd {:>5}",
                vs_raw.map_or("-".into(), |v| format!("{v:.2}")),
                vs_qsd.map_or("-".into(), |v| format!("{v:.2}")),
            );
            ratios.push(serde_json::json!({
                "iodepth": d, "queues": q, "ours_over_raw": vs_raw, "ours_over_qsd": vs_qsd,
            }));
        }
    }
    ratios
}
