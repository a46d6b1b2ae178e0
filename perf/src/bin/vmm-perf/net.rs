// SPDX-License-Identifier: Apache-2.0
//! `vmm-perf backend net`: our vhost-user-net backend, driven by the project's own virtio-net
//! load generator, against raw io_uring on the same TAP, in a fresh network namespace.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use perf::idle::CpuLatencyHold;
use perf::net::frame::FrameKind;
use perf::net::netns::{self, SinkTap};
use perf::net::{self, Direction, NetBench, NetRun, Path};
use perf::provenance::{Provenance, BENCH_SCHEMA_VERSION};
use perf::{Error, Result};

use crate::{sibling_binary, write_json, IdleArgs};

#[derive(Parser)]
pub struct NetArgs {
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
    /// Also run our backend with its io_urings unrestricted (`--uring-restrictions off`), in
    /// the same run, and report restricted/unrestricted.
    #[arg(long)]
    vs_unrestricted: bool,
    /// Also run our backend with --metrics, scraped once a second, right after each plain
    /// run of ours: the cost of counting (reported as ours+metrics/ours).
    #[arg(long)]
    metrics_ab: bool,
    #[command(flatten)]
    idle: IdleArgs,
    /// TAP name inside the benchmark's network namespace.
    #[arg(long, default_value = "vperf0")]
    tap: String,
    /// Results directory (`<out>/net-<timestamp>.json`).
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Measure link mode instead: frames from guest A to guest B through our
    /// `vhost-user-net --link` (own generator on both sides, and testpmd clients) against
    /// DPDK testpmd's two-port net_vhost io-forward switch with the same testpmd clients
    /// (`<out>/net-link-<timestamp>.json`).
    #[arg(long)]
    link: bool,
    /// `dpdk-testpmd` binary for --link (Debian package dpdk-dev); without it only our
    /// switch with our own clients is measured.
    #[arg(long, default_value = "/usr/bin/dpdk-testpmd")]
    testpmd: PathBuf,
}

/// Runs every frame size `repeat` times (ours and raw alternating which goes first), prints
/// every phase and the medians, writes `<out>/net-<timestamp>.json`.
pub fn net(a: NetArgs) -> Result<()> {
    let provenance = Provenance::capture(BENCH_SCHEMA_VERSION);
    if a.link {
        return net_link(a, &provenance);
    }
    if let Some(why) = netns::preflight() {
        return Err(Error::Unavailable(why));
    }
    let kinds = frame_kinds(&a)?;
    let run_dir = std::env::temp_dir().join(format!("vmm-perf-net-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir).map_err(|source| Error::Io {
        context: "run dir".into(),
        source,
    })?;
    let bench = bench(&a, run_dir.clone());
    // This thread (and the backend it starts) moves into a fresh network namespace; it
    // vanishes with the process.
    let _ns = netns::Netns::enter()?;
    let tap = SinkTap::create(&a.tap)?;
    let idle_hold = a.idle.hold()?;
    let wake_ns = net::wake::eventfd_wake_ns(200)?;
    announce(&a, wake_ns);
    let runs = run_all(&a, &bench, &tap, &kinds)?;
    let (medians, ratios) = print_summary(&a, &runs, &kinds);
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
        "metrics_ab": a.metrics_ab,
        "eventfd_wake_ns": wake_ns,
        "cpu_latency_limit_us": idle_hold.as_ref().map(CpuLatencyHold::limit_us),
        "backend": bench.backend_bin,
        "backend_args": bench.backend_args,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": kernel,
        "results": medians,
        "ratios": ratios,
        "runs": runs,
    });
    std::fs::create_dir_all(&a.out).map_err(|source| Error::Io {
        context: format!("create {}", a.out.display()),
        source,
    })?;
    let json = a
        .out
        .join(format!("net-{}.json", perf::provenance::timestamp()));
    write_json(&json, &provenance, report)?;
    let _ = std::fs::remove_dir_all(&run_dir);
    Ok(())
}

/// `--frames`, and the checks of the numeric options.
fn frame_kinds(a: &NetArgs) -> Result<Vec<FrameKind>> {
    let kinds = a
        .frames
        .iter()
        .map(|f| {
            FrameKind::from_name(f)
                .ok_or_else(|| Error::Usage(format!("--frames {f}: expected 64, 1500 or 64k-tso")))
        })
        .collect::<Result<_>>()?;
    if !a.queue_size.is_power_of_two() || a.batch == 0 || a.repeat == 0 || a.duration <= 0.0 {
        return Err(Error::Usage(
            "--queue-size must be a power of two; --batch, --repeat and --duration positive".into(),
        ));
    }
    Ok(kinds)
}

fn bench(a: &NetArgs, run_dir: PathBuf) -> NetBench {
    let mut backend_args = a.backend_arg.clone();
    if let Some(us) = a.poll_us {
        backend_args.extend(["--poll-us".to_string(), us.to_string()]);
    }
    NetBench {
        backend_bin: a
            .backend_bin
            .clone()
            .unwrap_or_else(|| sibling_binary("vhost-user-net")),
        backend_args,
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
        run_dir,
    }
}

/// The set-up on stderr, and the per-phase table's header.
fn announce(a: &NetArgs, wake_ns: f64) {
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
}

fn print_row(r: &NetRun) {
    let (tap, drop) = match r.direction {
        Direction::Tx => (r.tap.rx_packets, r.tap.rx_dropped),
        Direction::Rx => (r.tap.tx_packets, r.tap.tx_dropped),
    };
    println!(
        "{:<8} {:<5} {:<3} {:>9.3} {:>9.2} {:>12} {:>10} {:>10} {:>10.0} {:>10.0} {:>8}",
        r.frame.name(),
        match r.path {
            Path::Ours => "ours",
            Path::OursUnrestricted => "unres",
            Path::OursMetrics => "ours+m",
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
}

/// Every repetition of every frame size, ours and raw (alternating which goes first).
fn run_all(
    a: &NetArgs,
    bench: &NetBench,
    tap: &SinkTap,
    kinds: &[FrameKind],
) -> Result<Vec<NetRun>> {
    let mut runs: Vec<NetRun> = Vec::new();
    for rep in 0..a.repeat {
        println!("-- run {}/{}", rep + 1, a.repeat);
        for &kind in kinds {
            let mut order = vec![Path::Ours, Path::Raw];
            if a.vs_unrestricted {
                order.insert(1, Path::OursUnrestricted);
            }
            if rep % 2 == 1 {
                order.reverse();
            }
            if a.metrics_ab {
                // Right after (or, every other run, before) the plain run of ours.
                let at = order.iter().position(|&p| p == Path::Ours).unwrap_or(0);
                order.insert(at + rep % 2, Path::OursMetrics);
            }
            for path in order {
                let r = match path {
                    Path::Ours | Path::OursUnrestricted | Path::OursMetrics => {
                        bench.run_ours(tap, kind, rep, path)
                    }
                    Path::Raw => bench.run_raw(tap, kind, rep),
                }?;
                for x in &r {
                    print_row(x);
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
    Ok(runs)
}

fn fmt(v: Option<f64>, p: usize) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.p$}"))
}

fn rate(r: Option<&NetRun>) -> String {
    r.map_or("-".to_string(), |r| {
        format!("{:.3} ({:.2})", r.mpps, r.gbps)
    })
}

/// CPU ns/frame of ours and raw in one direction, and raw/ours.
fn cpu_cell(d: Direction, cpu: &dyn Fn(Path, Direction) -> Option<f64>) -> String {
    let (o, r) = (cpu(Path::Ours, d), cpu(Path::Raw, d));
    format!(
        "{} / {} ({})",
        fmt(o, 0),
        fmt(r, 0),
        fmt(o.zip(r).map(|(o, r)| r / o), 2)
    )
}

/// The medians of one frame size: the summary row, the frame-mover row, the median runs and
/// the ratios for the report.
struct FrameSummary {
    row: String,
    device_row: String,
    medians: Vec<NetRun>,
    ratios: serde_json::Value,
}

fn frame_summary(runs: &[NetRun], kind: FrameKind) -> FrameSummary {
    let m = |p, d| net::median(runs, p, d, kind);
    let (otx, rtx) = (m(Path::Ours, Direction::Tx), m(Path::Raw, Direction::Tx));
    let (orx, rrx) = (m(Path::Ours, Direction::Rx), m(Path::Raw, Direction::Rx));
    let (tx_ratio, rx_ratio) = (
        net::paired_ratio(runs, Direction::Tx, kind),
        net::paired_ratio(runs, Direction::Rx, kind),
    );
    let cpu = |p, d| net::median_cpu(runs, p, d, kind, |r| r.cpu_ns_per_frame);
    let device_cpu = |p, d| net::median_cpu(runs, p, d, kind, |r| r.device_cpu_ns_per_frame);
    let metrics = |d| net::paired_ratio_of(runs, Path::OursMetrics, Path::Ours, d, kind);
    FrameSummary {
        row: format!(
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
        ),
        device_row: format!(
            "| {} | {} | {} |",
            kind.name(),
            cpu_cell(Direction::Tx, &device_cpu),
            cpu_cell(Direction::Rx, &device_cpu)
        ),
        medians: [otx, rtx, orx, rrx]
            .into_iter()
            .flatten()
            .cloned()
            .collect(),
        ratios: serde_json::json!({
            "frame": kind, "tx_ours_over_raw": tx_ratio, "rx_ours_over_raw": rx_ratio,
            "tx_cpu_ns_per_frame_ours": cpu(Path::Ours, Direction::Tx),
            "tx_cpu_ns_per_frame_raw": cpu(Path::Raw, Direction::Tx),
            "rx_cpu_ns_per_frame_ours": cpu(Path::Ours, Direction::Rx),
            "rx_cpu_ns_per_frame_raw": cpu(Path::Raw, Direction::Rx),
            "tx_device_cpu_ns_per_frame_ours": device_cpu(Path::Ours, Direction::Tx),
            "rx_device_cpu_ns_per_frame_ours": device_cpu(Path::Ours, Direction::Rx),
            "tx_metrics_over_ours": metrics(Direction::Tx),
            "rx_metrics_over_ours": metrics(Direction::Rx),
        }),
    }
}

/// Prints the medians table and the frame-mover table; returns the median runs and ratios.
fn print_summary(
    a: &NetArgs,
    runs: &[NetRun],
    kinds: &[FrameKind],
) -> (Vec<NetRun>, Vec<serde_json::Value>) {
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
    let summaries: Vec<FrameSummary> = kinds.iter().map(|&k| frame_summary(runs, k)).collect();
    for s in &summaries {
        println!("{}", s.row);
    }
    println!();
    println!(
        "CPU ns/frame of the frame mover alone: the backend process (the generator, which plays the guest's driver, left out) vs the raw thread:"
    );
    println!("| frame | TX backend / raw (raw/backend) | RX backend / raw (raw/backend) |");
    println!("|---|---|---|");
    for s in &summaries {
        println!("{}", s.device_row);
    }
    if a.metrics_ab {
        println!();
        println!(
            "with --metrics (scraped every second) over without, median of the per-run ratios:"
        );
        println!("| frame | TX ours+metrics/ours | RX ours+metrics/ours |");
        println!("|---|---|---|");
        for s in &summaries {
            println!(
                "| {} | {} | {} |",
                s.ratios["frame"].as_str().unwrap_or("-"),
                fmt(s.ratios["tx_metrics_over_ours"].as_f64(), 3),
                fmt(s.ratios["rx_metrics_over_ours"].as_f64(), 3)
            );
        }
    }
    let mut out = summaries.into_iter().map(|s| (s.medians, s.ratios)).fold(
        (Vec::new(), Vec::new()),
        |(mut m, mut r), (sm, sr)| {
            m.extend(sm);
            r.push(sr);
            (m, r)
        },
    );
    if a.vs_unrestricted {
        out.1.extend(print_restriction_cost(runs, kinds));
    }
    out
}

/// Restricted/unrestricted frame rate per frame size (median of the per-run ratios).
fn print_restriction_cost(runs: &[NetRun], kinds: &[FrameKind]) -> Vec<serde_json::Value> {
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    println!();
    println!(
        "io_uring restrictions: restricted/unrestricted frame rate, median of the per-run ratios:"
    );
    println!("| frame | TX | RX |");
    println!("|---|---|---|");
    kinds
        .iter()
        .map(|&kind| {
            let r = |d| net::paired_ratio_of(runs, Path::Ours, Path::OursUnrestricted, d, kind);
            let (tx, rx) = (r(Direction::Tx), r(Direction::Rx));
            println!("| {} | {} | {} |", kind.name(), fmt(tx), fmt(rx));
            serde_json::json!({
                "frame": kind, "tx_restricted_over_unrestricted": tx,
                "rx_restricted_over_unrestricted": rx,
            })
        })
        .collect()
}

/// `backend net --link`: our switch vs DPDK testpmd's, medians of `--repeat` runs.
fn net_link(a: NetArgs, provenance: &Provenance) -> Result<()> {
    use perf::net::link;
    let frames = frame_kinds(&a)?;
    let run_dir = std::env::temp_dir().join(format!("vmm-perf-link-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir).map_err(|source| Error::Io {
        context: "run dir".into(),
        source,
    })?;
    let bench = link_bench(&a, run_dir.clone());
    let (backend_args, testpmd) = (bench.backend_args.clone(), bench.testpmd.clone());
    let idle_hold = a.idle.hold()?;
    let wake_ns = perf::net::wake::eventfd_wake_ns(200)?;
    eprintln!(
        "link benchmark: A -> B, {} s per run, {} repeats; an eventfd wake-up costs {:.1} µs here",
        a.duration,
        a.repeat,
        wake_ns / 1000.0
    );
    let runs = bench.run_matrix(&frames, a.repeat)?;
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
    std::fs::create_dir_all(&a.out).map_err(|source| Error::Io {
        context: format!("create {}", a.out.display()),
        source,
    })?;
    let json = a
        .out
        .join(format!("net-link-{}.json", perf::provenance::timestamp()));
    write_json(&json, provenance, report)?;
    if std::env::var_os("VMM_PERF_KEEP_RUN_DIR").is_some() {
        eprintln!("testpmd logs kept in {}", run_dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    Ok(())
}

/// The link benchmark's settings from `a` (testpmd only if installed).
fn link_bench(a: &NetArgs, run_dir: PathBuf) -> perf::net::link::LinkBench {
    let testpmd = a.testpmd.is_file().then(|| a.testpmd.clone());
    if testpmd.is_none() {
        eprintln!(
            "{} not found (apt-get install dpdk-dev): measuring our switch with our own clients only",
            a.testpmd.display()
        );
    }
    perf::net::link::LinkBench {
        backend_bin: a
            .backend_bin
            .clone()
            .unwrap_or_else(|| sibling_binary("vhost-user-net")),
        backend_args: a.backend_arg.clone(),
        testpmd,
        duration: Duration::from_secs_f64(a.duration),
        queue_size: a.queue_size,
        batch: a.batch,
        event_idx: !a.no_event_idx,
        completion: if a.driver_poll {
            perf::net::driver::Completion::Poll
        } else {
            perf::net::driver::Completion::Interrupts
        },
        run_dir,
    }
}
