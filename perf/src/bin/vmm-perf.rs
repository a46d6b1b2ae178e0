//! `vmm-perf`: the project's benchmark driver.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use perf::blk::{BlkBench, JobResult, Target};

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
}

#[derive(Subcommand)]
enum BackendCmd {
    /// vhost-user-blk: ours vs qemu-storage-daemon vs raw io_uring (libblkio client).
    Blk(BlkArgs),
}

#[derive(Parser)]
struct BlkArgs {
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
    /// JSON report path.
    #[arg(long, default_value = "perf-blk.json")]
    json: PathBuf,
}

fn main() {
    let cli = Cli::parse();
    let Cmd::Backend {
        which: BackendCmd::Blk(args),
    } = cli.cmd;
    if let Err(e) = blk(args) {
        eprintln!("vmm-perf: {e}");
        std::process::exit(1);
    }
}

fn blk(a: BlkArgs) -> perf::Result<()> {
    let ours_bin = a.ours_bin.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("vhost-user-blk")))
            .unwrap_or_else(|| PathBuf::from("vhost-user-blk"))
    });
    let run_dir = std::env::temp_dir().join(format!("vmm-perf-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir).map_err(|source| perf::Error::Io {
        context: "run dir".into(),
        source,
    })?;
    let bench = BlkBench {
        file: a.file.clone(),
        size: a.size_mib << 20,
        duration: Duration::from_secs_f64(a.duration),
        ours_bin,
        ours_args: a.ours_arg.clone(),
        qsd_bin: a.qsd_bin.clone(),
        run_dir: run_dir.clone(),
    };
    eprintln!(
        "preparing {} ({} MiB, page cached)",
        a.file.display(),
        a.size_mib
    );
    bench.prepare_file()?;
    let mut targets = vec![Target::Ours, Target::Raw];
    if !a.no_qsd {
        targets.insert(1, Target::Qsd);
    }
    let mut runs: Vec<JobResult> = Vec::new();
    println!(
        "{:<14} {:>7} {:>6} {:>12} {:>9} {:>9} {:>7}",
        "target", "iodepth", "queues", "IOPS", "p50(us)", "p99(us)", "errors"
    );
    let row = |r: &JobResult| {
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
    };
    for rep in 0..a.repeat.max(1) {
        if a.repeat > 1 {
            println!("-- run {}/{}", rep + 1, a.repeat);
        }
        for &q in &a.queues {
            for &d in &a.iodepth {
                for &t in &targets {
                    let r = bench.run(t, d, q)?;
                    row(&r);
                    runs.push(r);
                }
            }
        }
    }
    // Median run (by IOPS) of each job.
    let mut results: Vec<JobResult> = Vec::new();
    for &q in &a.queues {
        for &d in &a.iodepth {
            for &t in &targets {
                let mut v: Vec<&JobResult> = runs
                    .iter()
                    .filter(|r| r.target == t && r.iodepth == d && r.queues == q)
                    .collect();
                v.sort_by(|x, y| x.iops.total_cmp(&y.iops));
                if let Some(m) = v.get(v.len() / 2) {
                    results.push((*m).clone());
                }
            }
        }
    }
    if a.repeat > 1 {
        println!("-- median of {} runs", a.repeat);
        results.iter().for_each(row);
    }
    println!();
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
    let report = serde_json::json!({
        "benchmark": "vhost-user-blk 4KiB random read, libblkio client",
        "duration_s": a.duration,
        "file_mib": a.size_mib,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "ours_args": a.ours_arg,
        "repeat": a.repeat,
        "results": results,
        "runs": runs,
        "ratios": ratios,
    });
    std::fs::write(
        &a.json,
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    )
    .map_err(|source| perf::Error::Io {
        context: format!("write {}", a.json.display()),
        source,
    })?;
    eprintln!("wrote {}", a.json.display());
    let _ = std::fs::remove_dir_all(&run_dir);
    Ok(())
}
