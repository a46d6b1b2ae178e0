//! `vmm-perf`: the project's benchmark driver.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use perf::blk::{BlkBench, JobResult, Target};
use perf::idle::{CpuLatencyHold, CPU_DMA_LATENCY};

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
    Boot(BootArgs),
    /// Tier × workload comparison (native, vhost-user, VFIO, …): fio, iperf3, boot.
    Compare(CompareArgs),
    /// Re-render report.md and results.csv of a `compare` results directory.
    Report {
        /// The results directory (`results/<timestamp>`).
        dir: PathBuf,
    },
}

#[derive(Parser)]
struct CompareArgs {
    /// Tiers, comma-separated (default: all). Known: native, native-nvme, vmm, qemu,
    /// vhost-user-blk, vfio-nvme, vhost-user-net, emulated, virtio-in-vmm.
    #[arg(long, value_delimiter = ',')]
    tiers: Vec<String>,
    /// Workloads, comma-separated (default: all built-in). Known: randread-4k-qd1,
    /// randread-4k-qd32, randwrite-4k-qd1, randwrite-4k-qd32, read-128k, write-128k,
    /// randrw-70-30-4k-qd32, tcp-tx, tcp-rx, udp, boot; or a group: block, net.
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Runs per cell (median and min/max are reported). 2 runs of 2 s keep the default matrix
    /// (all nine tiers, ~20 guest boots) within 15 minutes in lab mode on a 2-core machine.
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

#[derive(Parser)]
struct BootArgs {
    /// Boots per VMM.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// vCPUs per guest.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    memory_mib: u32,
    /// Our `vmm` binary (default: next to this binary).
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// direct or lab (default: what `vmm check` allows).
    #[arg(long)]
    mode: Option<String>,
    /// JSON report path.
    #[arg(long, default_value = "perf-boot.json")]
    json: PathBuf,
}

#[derive(Subcommand)]
enum BackendCmd {
    /// vhost-user-blk: ours vs qemu-storage-daemon vs raw io_uring (libblkio client).
    Blk(BlkArgs),
    /// vhost-user-net: our backend driven by our own virtio-net load generator vs raw
    /// io_uring on the same TAP (in a fresh network namespace; needs root).
    Net(NetArgs),
}

#[derive(Parser)]
struct NetArgs {
    /// Seconds per phase (each frame size: ours TX, ours RX, raw TX, raw RX).
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Runs of the whole matrix (ours and raw alternate which goes first); medians reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Frame sizes: 64 (64-byte UDP frame), 1500 (1514-byte frame), 64k-tso (one 65214-byte
    /// TCP frame with TSO, gso_size 1448).
    #[arg(long, value_delimiter = ',', default_value = "64,1500,64k-tso")]
    frames: Vec<String>,
    /// Virtqueue size (power of two).
    #[arg(long, default_value_t = 256)]
    queue_size: u16,
    /// Frames refilled per kick and raw writes per io_uring_enter (raw reads in flight).
    #[arg(long, default_value_t = 32)]
    batch: u16,
    /// Our backend binary (default: `vhost-user-net` next to this binary).
    #[arg(long)]
    backend_bin: Option<PathBuf>,
    /// Passed to the backend as `--poll-us N` (busy-poll window after each batch).
    #[arg(long)]
    poll_us: Option<u64>,
    /// Extra arguments for the backend, e.g. "--no-relay".
    #[arg(long, allow_hyphen_values = true)]
    backend_arg: Vec<String>,
    /// Do not negotiate VIRTIO_RING_F_EVENT_IDX (flag-based notification suppression).
    #[arg(long)]
    no_event_idx: bool,
    /// The generator polls its used rings and asks for no notifications, as a DPDK virtio
    /// PMD in a guest does, instead of sleeping until notified as Linux's virtio-net does:
    /// the cost of notifications drops out, and the generator's CPU time becomes spinning.
    #[arg(long)]
    driver_poll: bool,
    /// Transmit only.
    #[arg(long)]
    no_rx: bool,
    #[command(flatten)]
    idle: IdleArgs,
    /// TAP name inside the benchmark's network namespace.
    #[arg(long, default_value = "vperf0")]
    tap: String,
    /// Measure link mode instead: frames from guest A to guest B through our
    /// `vhost-user-net --link` (own generator on both sides, and testpmd clients) against
    /// DPDK testpmd's two-port net_vhost io-forward switch with the same testpmd clients.
    #[arg(long)]
    link: bool,
    /// `dpdk-testpmd` binary for --link (Debian package dpdk-dev); without it only our
    /// switch with our own clients is measured.
    #[arg(long, default_value = "/usr/bin/dpdk-testpmd")]
    testpmd: PathBuf,

    /// Results directory (`<out>/net-<timestamp>.json`).
    #[arg(long, default_value = "results")]
    out: PathBuf,
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

/// How a backend benchmark treats idle CPUs.
#[derive(clap::Args)]
struct IdleArgs {
    /// Let idle CPUs enter deep idle states (on a VM: halt, handing the physical CPU back to
    /// the host) instead of holding a 0 µs CPU-latency request (`/dev/cpu_dma_latency`) for
    /// the run, under which idle CPUs poll.
    #[arg(long)]
    allow_deep_idle: bool,
}

impl IdleArgs {
    /// Keep idle CPUs polling until the returned hold is dropped, unless deep idle is allowed;
    /// says which on stderr.
    fn hold(&self) -> perf::Result<Option<CpuLatencyHold>> {
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
        } => blk(args),
        Cmd::Backend {
            which: BackendCmd::Net(args),
        } => net(args),
        Cmd::Boot(args) => boot(args),
        Cmd::Compare(args) => compare(args),
        Cmd::Report { dir } => perf::compare::rerender(&dir).map(|set| {
            println!("{}", perf::compare::report::summary_table(&set));
            println!("report: {}/report.md", dir.display());
        }),
    };
    if let Err(e) = result {
        eprintln!("vmm-perf: {e}");
        std::process::exit(1);
    }
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

fn parse_mode(mode: Option<&str>, vmm: &std::path::Path) -> perf::Result<perf::boot::Mode> {
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

fn compare(a: CompareArgs) -> perf::Result<()> {
    use perf::compare::{self, matrix, script::Settings, Tier, Workload};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let vmm = a.vmm.clone().unwrap_or_else(|| sibling_binary("vmm"));
    let bin_dir = a.bin_dir.clone().unwrap_or_else(|| {
        vmm.parent()
            .map_or_else(|| PathBuf::from("."), std::path::Path::to_path_buf)
    });
    let mode = parse_mode(a.mode.as_deref(), &vmm)?;
    let tiers: Vec<Tier> = if a.tiers.is_empty() {
        Tier::ALL.to_vec()
    } else {
        a.tiers
            .iter()
            .map(|t| {
                Tier::from_name(t).ok_or_else(|| perf::Error::Usage(format!("unknown tier {t:?}")))
            })
            .collect::<perf::Result<_>>()?
    };
    let builtin = Workload::builtin();
    let mut workloads: Vec<Workload> = if a.workloads.is_empty() {
        builtin.clone()
    } else {
        let mut v = Vec::new();
        for w in &a.workloads {
            let picked: Vec<Workload> = match w.as_str() {
                "block" => builtin
                    .iter()
                    .filter(|x| x.kind() == compare::Kind::Block)
                    .cloned()
                    .collect(),
                "net" => builtin
                    .iter()
                    .filter(|x| x.kind() == compare::Kind::Net)
                    .cloned()
                    .collect(),
                name => builtin
                    .iter()
                    .filter(|x| x.name() == name)
                    .cloned()
                    .collect(),
            };
            if picked.is_empty() {
                return Err(perf::Error::Usage(format!("unknown workload {w:?}")));
            }
            v.extend(picked);
        }
        v
    };
    for job in &a.fio_job {
        if !job.is_file() {
            return Err(perf::Error::Usage(format!(
                "--fio-job {}: no such file",
                job.display()
            )));
        }
        let stem: String = job
            .file_stem()
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
            .collect();
        workloads.push(Workload::FioJob {
            name: format!("fio-job-{stem}"),
            path: job.clone(),
        });
    }
    if let Some(args) = &a.iperf_args {
        if args.contains(['\'', '"', ';', '&', '|', '$', '`', '<', '>']) {
            return Err(perf::Error::Usage(
                "--iperf-args: shell metacharacters are not allowed".into(),
            ));
        }
        workloads.push(Workload::Iperf {
            name: "iperf-custom".into(),
            args: args.clone(),
        });
    }
    if a.repeat == 0 || a.duration == 0 {
        return Err(perf::Error::Usage(
            "--repeat and --duration must be at least 1".into(),
        ));
    }
    let probe = matrix::Probe::run(&vmm, &bin_dir, mode == perf::boot::Mode::Lab);
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
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\ninterrupted: stopping, keeping the cells measured so far (Ctrl-C again to quit at once)");
        })
        .map_err(|e| perf::Error::Backend(format!("Ctrl-C handler: {e}")))?;
    }
    let out_dir = a.out.join(compare::timestamp());
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

fn sibling_binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

fn boot(a: BootArgs) -> perf::Result<()> {
    use perf::boot::{self, BootBench, Mode};
    let vmm = a.vmm.unwrap_or_else(|| sibling_binary("vmm"));
    let mode = match a.mode.as_deref() {
        None => boot::detect_mode(&vmm),
        Some("direct") => Mode::Direct,
        Some("lab") => Mode::Lab,
        Some(other) => {
            return Err(perf::Error::Backend(format!(
                "--mode {other}: expected direct or lab"
            )))
        }
    };
    eprintln!("boot benchmark: {} boots per VMM, {mode:?} mode", a.repeat);
    let bench = BootBench {
        vmm,
        repeat: a.repeat,
        cpus: a.cpus,
        memory_mib: a.memory_mib,
        mode,
    };
    let (samples, raw) = bench.run()?;
    let pick = |name: &str, f: fn(&boot::BootSample) -> f64| {
        boot::median(samples.iter().filter(|s| s.vmm == name).map(f).collect())
    };
    let failures = samples
        .iter()
        .filter(|s| s.status != 0 || s.to_init_s.is_nan())
        .count();
    println!(
        "{:<6} {:>6} {:>12} {:>12} {:>14} {:>14}",
        "vmm", "boots", "to-init(s)", "total(s)", "rss(MiB)", "overhead(MiB)"
    );
    for name in ["ours", "qemu"] {
        let n = samples.iter().filter(|s| s.vmm == name).count();
        let fmt =
            |v: Option<f64>, scale: f64| v.map_or("-".to_string(), |v| format!("{:.2}", v / scale));
        println!(
            "{:<6} {:>6} {:>12} {:>12} {:>14} {:>14}",
            name,
            n,
            fmt(pick(name, |s| s.to_init_s), 1.0),
            fmt(pick(name, |s| s.total_s), 1.0),
            fmt(pick(name, |s| s.rss_total_kib as f64), 1024.0),
            fmt(
                pick(name, |s| (s.rss_total_kib - s.rss_guest_ram_kib) as f64),
                1024.0
            ),
        );
    }
    let ratio = pick("ours", |s| s.to_init_s)
        .zip(pick("qemu", |s| s.to_init_s))
        .map(|(o, q)| o / q);
    println!(
        "boot-to-init ours/qemu = {} (median; < 1 means ours is faster); failed boots: {failures}",
        ratio.map_or("-".into(), |r| format!("{r:.2}"))
    );
    println!("overhead = resident memory that is not guest RAM (ours: VmRSS minus the memfd guest-RAM mapping; QEMU's anonymous RAM cannot be told apart, so its overhead column includes guest RAM)");
    if mode == Mode::Lab {
        println!("lab mode: nested KVM under TCG, times are relative only");
    }
    let report = serde_json::json!({
        "benchmark": "guest boot-to-init, ours vs QEMU",
        "mode": mode,
        "cpus": a.cpus,
        "memory_mib": a.memory_mib,
        "samples": samples,
        "median_to_init_ratio_ours_over_qemu": ratio,
        "ours_overhead_rss_mib_median": pick("ours", |s| (s.rss_total_kib - s.rss_guest_ram_kib) as f64).map(|k| k / 1024.0),
        "raw_output": raw,
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
    if failures > 0 {
        return Err(perf::Error::Backend(format!(
            "{failures} boots failed (see {})",
            a.json.display()
        )));
    }
    Ok(())
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
        "client_poll": a.client_poll,
        "qsd_iothread": a.qsd_iothread,
        "cpu_latency_limit_us": idle_hold.as_ref().map(CpuLatencyHold::limit_us),
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

fn net(a: NetArgs) -> perf::Result<()> {
    use perf::net::frame::FrameKind;
    use perf::net::{self, netns, Direction, NetBench, NetRun, Path};
    if a.link {
        return net_link(a);
    }
    if let Some(why) = netns::preflight() {
        return Err(perf::Error::Unavailable(why));
    }
    let kinds: Vec<FrameKind> = a
        .frames
        .iter()
        .map(|f| {
            FrameKind::from_name(f).ok_or_else(|| {
                perf::Error::Usage(format!("--frames {f}: expected 64, 1500 or 64k-tso"))
            })
        })
        .collect::<perf::Result<_>>()?;
    if !a.queue_size.is_power_of_two() || a.batch == 0 || a.repeat == 0 || a.duration <= 0.0 {
        return Err(perf::Error::Usage(
            "--queue-size must be a power of two; --batch, --repeat and --duration positive".into(),
        ));
    }
    let mut backend_args = a.backend_arg.clone();
    if let Some(us) = a.poll_us {
        backend_args.extend(["--poll-us".to_string(), us.to_string()]);
    }
    let run_dir = std::env::temp_dir().join(format!("vmm-perf-net-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir).map_err(|source| perf::Error::Io {
        context: "run dir".into(),
        source,
    })?;
    let bench = NetBench {
        backend_bin: a
            .backend_bin
            .clone()
            .unwrap_or_else(|| sibling_binary("vhost-user-net")),
        backend_args: backend_args.clone(),
        duration: Duration::from_secs_f64(a.duration),
        queue_size: a.queue_size,
        batch: a.batch,
        event_idx: !a.no_event_idx,
        completion: if a.driver_poll {
            net::driver::Completion::Poll
        } else {
            net::driver::Completion::Interrupts
        },
        rx: !a.no_rx,
        run_dir: run_dir.clone(),
    };
    // This thread (and the backend it starts) moves into a fresh network namespace; it
    // vanishes with the process.
    let _ns = netns::Netns::enter()?;
    let tap = netns::SinkTap::create(&a.tap)?;
    let idle_hold = a.idle.hold()?;
    let wake_ns = net::wake::eventfd_wake_ns(200)?;
    eprintln!(
        "net benchmark: TAP {} in a fresh network namespace, {} s per phase, queue {}, batch {}, {} repeats, generator {}",
        a.tap,
        a.duration,
        a.queue_size,
        a.batch,
        a.repeat,
        if a.driver_poll { "polling" } else { "sleeping until notified" }
    );
    eprintln!(
        "an eventfd write waking a sleeping thread (each notification and kick) costs {:.1} µs here",
        wake_ns / 1000.0
    );
    println!(
        "{:<8} {:<5} {:<3} {:>9} {:>9} {:>12} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "frame",
        "path",
        "dir",
        "Mpps",
        "Gbit/s",
        "frames",
        "tap",
        "tap drop",
        "cpu ns/f",
        "dev ns/f",
        "notified"
    );
    let row = |r: &NetRun| {
        let (tap, drop) = match r.direction {
            Direction::Tx => (r.tap.rx_packets, r.tap.rx_dropped),
            Direction::Rx => (r.tap.tx_packets, r.tap.tx_dropped),
        };
        println!(
            "{:<8} {:<5} {:<3} {:>9.3} {:>9.2} {:>12} {:>10} {:>10} {:>10.0} {:>10.0} {:>8}",
            r.frame.name(),
            match r.path {
                Path::Ours => "ours",
                Path::Raw => "raw",
            },
            match r.direction {
                Direction::Tx => "tx",
                Direction::Rx => "rx",
            },
            r.mpps,
            r.gbps,
            r.counts.frames,
            tap,
            drop,
            r.cpu_ns_per_frame.unwrap_or(f64::NAN),
            r.device_cpu_ns_per_frame.unwrap_or(f64::NAN),
            r.counts.notifications
        );
    };
    let mut runs: Vec<NetRun> = Vec::new();
    for rep in 0..a.repeat {
        println!("-- run {}/{}", rep + 1, a.repeat);
        for &kind in &kinds {
            let order = if rep % 2 == 0 {
                [Path::Ours, Path::Raw]
            } else {
                [Path::Raw, Path::Ours]
            };
            for path in order {
                let r = match path {
                    Path::Ours => bench.run_ours(&tap, kind, rep),
                    Path::Raw => bench.run_raw(&tap, kind, rep),
                }?;
                for x in &r {
                    row(x);
                    if x.direction == Direction::Tx && x.tap.rx_packets != x.counts.frames {
                        eprintln!(
                            "  warning: generator counted {} frames, the TAP {}",
                            x.counts.frames, x.tap.rx_packets
                        );
                    }
                }
                runs.extend(r);
            }
        }
    }
    println!();
    println!(
        "median of {} runs (Gbit/s = Ethernet frame bytes, no virtio header/FCS; ours/raw = median of the per-run ratios; CPU ns/frame: backend + generator vs raw thread, raw/ours = the rate ratio if both were CPU-bound{}):",
        a.repeat,
        if a.driver_poll {
            "; the generator polls, so ours includes its spinning"
        } else {
            ""
        }
    );
    println!(
        "| frame | ours TX Mpps (Gbit/s) | raw TX Mpps (Gbit/s) | TX ours/raw | TX CPU ns/frame ours / raw (raw/ours) | ours RX Mpps (Gbit/s) | raw RX Mpps (Gbit/s) | RX ours/raw | RX CPU ns/frame ours / raw (raw/ours) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let fmt = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
    let rate = |r: Option<&NetRun>| {
        r.map_or("-".to_string(), |r| {
            format!("{:.3} ({:.2})", r.mpps, r.gbps)
        })
    };
    let mut medians = Vec::new();
    let mut ratios = Vec::new();
    let mut device_rows = Vec::new();
    for &kind in &kinds {
        let m = |p, d| net::median(&runs, p, d, kind);
        let (otx, rtx) = (m(Path::Ours, Direction::Tx), m(Path::Raw, Direction::Tx));
        let (orx, rrx) = (m(Path::Ours, Direction::Rx), m(Path::Raw, Direction::Rx));
        let (tx_ratio, rx_ratio) = (
            net::paired_ratio(&runs, Direction::Tx, kind),
            net::paired_ratio(&runs, Direction::Rx, kind),
        );
        let cpu = |p, d| net::median_cpu(&runs, p, d, kind, |r| r.cpu_ns_per_frame);
        let device_cpu = |p, d| net::median_cpu(&runs, p, d, kind, |r| r.device_cpu_ns_per_frame);
        let cpu_cell = |d, cpu: &dyn Fn(Path, Direction) -> Option<f64>| {
            let (o, r) = (cpu(Path::Ours, d), cpu(Path::Raw, d));
            format!(
                "{} / {} ({})",
                fmt(o, 0),
                fmt(r, 0),
                fmt(o.zip(r).map(|(o, r)| r / o), 2)
            )
        };
        println!(
            "| {} | {} | {} | **{}** | {} | {} | {} | {} | {} |",
            kind.name(),
            rate(otx),
            rate(rtx),
            fmt(tx_ratio, 2),
            cpu_cell(Direction::Tx, &cpu),
            rate(orx),
            rate(rrx),
            fmt(rx_ratio, 2),
            cpu_cell(Direction::Rx, &cpu),
        );
        device_rows.push(format!(
            "| {} | {} | {} |",
            kind.name(),
            cpu_cell(Direction::Tx, &device_cpu),
            cpu_cell(Direction::Rx, &device_cpu)
        ));
        medians.extend([otx, rtx, orx, rrx].into_iter().flatten().cloned());
        ratios.push(serde_json::json!({
            "frame": kind, "tx_ours_over_raw": tx_ratio, "rx_ours_over_raw": rx_ratio,
            "tx_cpu_ns_per_frame_ours": cpu(Path::Ours, Direction::Tx),
            "tx_cpu_ns_per_frame_raw": cpu(Path::Raw, Direction::Tx),
            "rx_cpu_ns_per_frame_ours": cpu(Path::Ours, Direction::Rx),
            "rx_cpu_ns_per_frame_raw": cpu(Path::Raw, Direction::Rx),
            "tx_device_cpu_ns_per_frame_ours": device_cpu(Path::Ours, Direction::Tx),
            "rx_device_cpu_ns_per_frame_ours": device_cpu(Path::Ours, Direction::Rx),
        }));
    }
    println!();
    println!(
        "CPU ns/frame of the frame mover alone: the backend process (the generator, which plays the guest's driver, left out) vs the raw thread:"
    );
    println!("| frame | TX backend / raw (raw/backend) | RX backend / raw (raw/backend) |");
    println!("|---|---|---|");
    for row in &device_rows {
        println!("{row}");
    }
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let report = serde_json::json!({
        "benchmark": "vhost-user-net backend vs raw io_uring on the same TAP, own virtio-net load generator",
        "duration_s": a.duration,
        "repeat": a.repeat,
        "queue_size": a.queue_size,
        "batch": a.batch,
        "event_idx": !a.no_event_idx,
        "driver_poll": a.driver_poll,
        "eventfd_wake_ns": wake_ns,
        "cpu_latency_limit_us": idle_hold.as_ref().map(CpuLatencyHold::limit_us),
        "backend": bench.backend_bin,
        "backend_args": backend_args,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": kernel,
        "results": medians,
        "ratios": ratios,
        "runs": runs,
    });
    std::fs::create_dir_all(&a.out).map_err(|source| perf::Error::Io {
        context: format!("create {}", a.out.display()),
        source,
    })?;
    let json = a
        .out
        .join(format!("net-{}.json", perf::compare::timestamp()));
    std::fs::write(
        &json,
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    )
    .map_err(|source| perf::Error::Io {
        context: format!("write {}", json.display()),
        source,
    })?;
    eprintln!("wrote {}", json.display());
    let _ = std::fs::remove_dir_all(&run_dir);
    Ok(())
}

/// `backend net --link`: our switch vs DPDK testpmd's, medians of `--repeat` runs.
fn net_link(a: NetArgs) -> perf::Result<()> {
    use perf::net::frame::FrameKind;
    use perf::net::link::{self, Clients, LinkBench, Switch};
    let frames: Vec<FrameKind> = a
        .frames
        .iter()
        .map(|f| {
            FrameKind::from_name(f).ok_or_else(|| {
                perf::Error::Usage(format!("--frames {f}: expected 64, 1500 or 64k-tso"))
            })
        })
        .collect::<perf::Result<_>>()?;
    if a.repeat == 0 || a.duration <= 0.0 || !a.queue_size.is_power_of_two() {
        return Err(perf::Error::Usage(
            "--repeat and --duration positive, --queue-size a power of two".into(),
        ));
    }
    let run_dir = std::env::temp_dir().join(format!("vmm-perf-link-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir).map_err(|source| perf::Error::Io {
        context: "run dir".into(),
        source,
    })?;
    let backend_args = a.backend_arg.clone();
    let testpmd = a.testpmd.is_file().then(|| a.testpmd.clone());
    if testpmd.is_none() {
        eprintln!(
            "{} not found (apt-get install dpdk-dev): measuring our switch with our own clients only",
            a.testpmd.display()
        );
    }
    let bench = LinkBench {
        backend_bin: a
            .backend_bin
            .clone()
            .unwrap_or_else(|| sibling_binary("vhost-user-net")),
        backend_args: backend_args.clone(),
        testpmd: testpmd.clone(),
        duration: Duration::from_secs_f64(a.duration),
        queue_size: a.queue_size,
        batch: a.batch,
        event_idx: !a.no_event_idx,
        completion: if a.driver_poll {
            perf::net::driver::Completion::Poll
        } else {
            perf::net::driver::Completion::Interrupts
        },
        run_dir: run_dir.clone(),
    };
    let idle_hold = a.idle.hold()?;
    let wake_ns = perf::net::wake::eventfd_wake_ns(200)?;
    eprintln!(
        "link benchmark: A -> B, {} s per run, {} repeats; an eventfd wake-up costs {:.1} µs here",
        a.duration,
        a.repeat,
        wake_ns / 1000.0
    );
    let mut runs = Vec::new();
    for rep in 0..a.repeat {
        for &frame in &frames {
            let mut cells = vec![(Switch::Ours, Clients::VmmPerf)];
            // testpmd's txonly sends single-segment frames: 64 and 1514 bytes.
            if testpmd.is_some() && frame != FrameKind::Tso {
                cells.extend([
                    (Switch::Ours, Clients::Testpmd),
                    (Switch::Dpdk, Clients::Testpmd),
                ]);
            }
            if rep % 2 == 1 {
                cells.reverse();
            }
            for (switch, clients) in cells {
                let r = bench.run(switch, clients, frame, rep)?;
                println!(
                    "run {rep} {:<8} {:?}/{:?}: {:.3} Mpps received ({:.2} Gbit/s), {:.3} Mpps sent",
                    frame.name(),
                    switch,
                    clients,
                    r.mpps,
                    r.gbps,
                    r.sent as f64 / r.seconds.max(1e-9) / 1e6
                );
                runs.push(r);
            }
        }
    }
    println!();
    println!(
        "median of {} runs, Mpps received by B (Gbit/s of Ethernet frame bytes; sent: Mpps the sender handed over):",
        a.repeat
    );
    print!("{}", link::table(&runs, &frames));
    let report = serde_json::json!({
        "benchmark": "guest A -> guest B through vhost-user-net --link vs DPDK testpmd net_vhost io-forward, same clients",
        "duration_s": a.duration,
        "repeat": a.repeat,
        "queue_size_own_clients": a.queue_size,
        "batch_own_clients": a.batch,
        "event_idx": !a.no_event_idx,
        "driver_poll": a.driver_poll,
        "eventfd_wake_ns": wake_ns,
        "cpu_latency_limit_us": idle_hold.as_ref().map(CpuLatencyHold::limit_us),
        "backend": bench.backend_bin,
        "backend_args": backend_args,
        "testpmd": testpmd,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default(),
        "ratios_ours_over_dpdk": frames.iter().map(|&f| serde_json::json!({"frame": f, "ratio": link::ratio_to_dpdk(&runs, f)})).collect::<Vec<_>>(),
        "runs": runs,
    });
    std::fs::create_dir_all(&a.out).map_err(|source| perf::Error::Io {
        context: format!("create {}", a.out.display()),
        source,
    })?;
    let json = a
        .out
        .join(format!("net-link-{}.json", perf::compare::timestamp()));
    std::fs::write(
        &json,
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    )
    .map_err(|source| perf::Error::Io {
        context: format!("write {}", json.display()),
        source,
    })?;
    eprintln!("wrote {}", json.display());
    if std::env::var_os("VMM_PERF_KEEP_RUN_DIR").is_some() {
        eprintln!("testpmd logs kept in {}", run_dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    Ok(())
}
