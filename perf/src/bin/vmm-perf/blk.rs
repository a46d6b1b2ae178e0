// SPDX-License-Identifier: Apache-2.0
//! `vmm-perf backend blk`: vhost-user-blk backends (ours, qemu-storage-daemon) against raw
//! io_uring, with libblkio as the client: the job matrix in alternating order, medians,
//! same-run ratios, the block goals, the machine's wake-up cost and what an idle backend
//! costs, printed and written as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use perf::blk::{BlkBench, JobResult, Target};
use perf::idle::CpuLatencyHold;
use perf::provenance::{Provenance, BENCH_SCHEMA_VERSION};
use perf::{Error, Result};

use crate::{sibling_binary, write_json, IdleArgs};

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Arguments of `vmm-perf backend blk`.
#[derive(clap::Args)]
pub struct BlkArgs {
    /// Seconds per job.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Test file (created, 1 GiB by default).
    #[arg(long, default_value = "/tmp/vmm-perf-blk.img")]
    pub file: PathBuf,
    /// Test file size in MiB.
    #[arg(long, default_value_t = 1024)]
    pub size_mib: u64,
    /// I/O depths to run.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    pub iodepth: Vec<usize>,
    /// Queue counts to run.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub queues: Vec<usize>,
    /// Our backend binary (default: `vhost-user-blk` next to this binary).
    #[arg(long)]
    pub ours_bin: Option<PathBuf>,
    /// Extra arguments for our backend, e.g. "--poll-us=50".
    #[arg(long, allow_hyphen_values = true)]
    pub ours_arg: Vec<String>,
    /// Also run our backend as it behaved before adaptive polling and automatic kernel
    /// submission polling ("ours-before"), in the same run.
    #[arg(long)]
    pub before: bool,
    /// Arguments that give our backend that earlier behaviour.
    #[arg(
        long,
        allow_hyphen_values = true,
        default_values_t = ["--poll-max-us=0".to_string(), "--sqpoll-idle-ms=0".to_string()]
    )]
    pub before_arg: Vec<String>,
    /// qemu-storage-daemon binary.
    #[arg(long, default_value = "/usr/bin/qemu-storage-daemon")]
    pub qsd_bin: PathBuf,
    /// Runs of the whole matrix; the order of the targets rotates from run to run, and
    /// each figure is the median of the runs.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Skip qemu-storage-daemon.
    #[arg(long)]
    pub no_qsd: bool,
    /// Also run our backend with its io_urings unrestricted (`--uring-restrictions off`) and
    /// report ours/ours-unrestricted: what the restrictions cost.
    #[arg(long)]
    pub vs_unrestricted: bool,
    /// Also run our backend with --metrics, scraped once a second, and report
    /// ours+metrics/ours: what counting costs.
    #[arg(long)]
    pub metrics_ab: bool,
    /// The vhost-user client polls its queues for completions (libblkio poll queues, as a
    /// guest with virtio-blk `poll_queues` and polled I/O does) instead of sleeping on the
    /// call eventfd; raw io_uring on a page-cached file completes inline either way.
    #[arg(long)]
    pub client_poll: bool,
    /// Serve qemu-storage-daemon's export from an IOThread (`--object iothread`), whose
    /// event loop busy-polls adaptively (up to 32 µs) before sleeping, instead of from its
    /// main loop, which does not poll.
    #[arg(long)]
    pub qsd_iothread: bool,
    /// Placement: the client's queue threads on these CPUs (queue i on entry i mod n),
    /// e.g. 0 or 0,1 [default: anywhere].
    #[arg(long)]
    pub client_cpus: Option<String>,
    /// Placement: the servers on these CPUs (our queue i's thread on entry i mod n,
    /// qemu-storage-daemon's process on all), e.g. 1 [default: anywhere].
    #[arg(long)]
    pub server_cpus: Option<String>,
    /// Seconds an idle backend (connected, after a second of load) is watched for the CPU
    /// it uses; 0 skips it.
    #[arg(long, default_value_t = 10.0)]
    pub idle_s: f64,
    #[command(flatten)]
    pub idle: IdleArgs,
    /// JSON report path.
    #[arg(long, default_value = "perf-blk.json")]
    pub json: PathBuf,
}

/// One measured job of one repetition.
#[derive(Debug, Clone, Serialize)]
struct Run {
    rep: usize,
    #[serde(flatten)]
    job: JobResult,
}

/// A goal: `value` of a ratio at least `target`.
#[derive(Debug, Clone, Serialize)]
struct Goal {
    what: String,
    target: f64,
    median: Option<f64>,
    reps_met: usize,
    reps: usize,
    met: bool,
    /// The most the ratio could reach on this machine (median of the repetitions' bounds),
    /// where [`ceilings`] bounds it.
    ceiling: Option<f64>,
}

/// A CPU list option (`0`, `0,1`, `2-3`).
fn cpus(option: &str, list: Option<&str>) -> Result<Vec<usize>> {
    match list {
        None => Ok(Vec::new()),
        Some(l) => backends::placement::parse_cpu_list(l)
            .ok_or_else(|| Error::Usage(format!("--{option} {l}: expected CPUs like 0,1 or 2-3"))),
    }
}

/// Runs the matrix, prints every run, the medians, ratios and goals, writes the JSON report.
pub fn blk(a: BlkArgs) -> Result<()> {
    let provenance = Provenance::capture(BENCH_SCHEMA_VERSION);
    let ours_bin = a
        .ours_bin
        .clone()
        .unwrap_or_else(|| sibling_binary("vhost-user-blk"));
    let run_dir = std::env::temp_dir().join(format!("vmm-perf-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir).map_err(io_err("run dir"))?;
    let bench = BlkBench {
        file: a.file.clone(),
        size: a.size_mib << 20,
        duration: Duration::from_secs_f64(a.duration),
        ours_bin,
        ours_args: a.ours_arg.clone(),
        before_args: a.before_arg.clone(),
        qsd_bin: a.qsd_bin.clone(),
        client_poll: a.client_poll,
        qsd_iothread: a.qsd_iothread,
        run_dir: run_dir.clone(),
        client_cpus: cpus("client-cpus", a.client_cpus.as_deref())?,
        server_cpus: cpus("server-cpus", a.server_cpus.as_deref())?,
    };
    eprintln!(
        "preparing {} ({} MiB, page cached)",
        a.file.display(),
        a.size_mib
    );
    bench.prepare_file()?;
    let idle_hold = a.idle.hold()?;
    let wake_before = perf::net::wake::eventfd_wake_ns(200)?;
    let trip_before = sleeping_client_round_trip_ns()?;
    eprintln!(
        "cross-CPU wake-up (eventfd write to a thread in poll): {:.1} µs; a sleeping client's \
         round trip: {:.1} µs",
        wake_before / 1000.0,
        trip_before / 1000.0
    );
    let mut targets = vec![Target::Ours];
    if a.before {
        targets.push(Target::OursBefore);
    }
    if a.vs_unrestricted {
        targets.push(Target::OursUnrestricted);
    }
    if a.metrics_ab {
        targets.push(Target::OursMetrics);
    }
    if !a.no_qsd {
        targets.push(Target::Qsd);
    }
    targets.push(Target::Raw);
    let runs = measure(&bench, &a, &targets)?;
    let idle_cpu = idle_cpu(&bench, &targets, a.idle_s)?;
    let wake_after = perf::net::wake::eventfd_wake_ns(200)?;
    let trip_after = sleeping_client_round_trip_ns()?;
    let results = medians(&runs, &a, &targets);
    let ratios = ratios(&runs, &a);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ceilings = ceilings(&runs, &a, (trip_before + trip_after) / 2.0, cpus);
    let goals = goals(&ratios, &ceilings, a.repeat);
    let text = render(
        &results,
        &ratios,
        &ceilings,
        &goals,
        &idle_cpu,
        (wake_before, wake_after),
        (trip_before, trip_after),
    );
    print!("{text}");
    let report = serde_json::json!({
        "benchmark": "vhost-user-blk 4KiB random read, libblkio client",
        "duration_s": a.duration,
        "file_mib": a.size_mib,
        "cpus": cpus,
        "ours_args": a.ours_arg,
        "before_args": a.before.then_some(&a.before_arg),
        "client_poll": a.client_poll,
        "qsd_iothread": a.qsd_iothread,
        "client_cpus": bench.client_cpus,
        "server_cpus": bench.server_cpus,
        "cpu_latency_limit_us": idle_hold.as_ref().map(CpuLatencyHold::limit_us),
        "eventfd_wake_ns": { "before": wake_before, "after": wake_after },
        "sleeping_client_round_trip_ns": { "before": trip_before, "after": trip_after },
        "idle_cpu_percent": idle_cpu,
        "idle_s": a.idle_s,
        "repeat": a.repeat,
        "results": results,
        "ratios": ratios,
        "ceilings": ceilings,
        "goals": goals,
        "runs": runs,
    });
    write_json(&a.json, &provenance, report)?;
    let _ = std::fs::remove_dir_all(&run_dir);
    Ok(())
}

/// The floor of one request of a client that sleeps between requests, beyond the server's
/// work (median of 20 000 exchanges, each with 2 µs of service, about a page-cache read's
/// time, so that the client is asleep when its answer comes, as with a real server).
fn sleeping_client_round_trip_ns() -> Result<f64> {
    perf::net::wake::sleeping_client_round_trip_ns(20_000, Duration::from_micros(2))
}

/// Every job of every repetition; the targets' order rotates with the repetition.
fn measure(bench: &BlkBench, a: &BlkArgs, targets: &[Target]) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    println!(
        "{:<14} {:>7} {:>6} {:>12} {:>9} {:>9} {:>7}",
        "target", "iodepth", "queues", "IOPS", "p50(us)", "p99(us)", "errors"
    );
    for rep in 0..a.repeat.max(1) {
        if a.repeat > 1 {
            println!("-- run {}/{}", rep + 1, a.repeat);
        }
        for &q in &a.queues {
            for &d in &a.iodepth {
                for k in 0..targets.len() {
                    let t = targets[(rep + k) % targets.len()];
                    let job = bench.run(t, d, q)?;
                    println!(
                        "{:<14} {:>7} {:>6} {:>12.0} {:>9.1} {:>9.1} {:>7}",
                        t.name(),
                        d,
                        q,
                        job.iops,
                        job.p50_us,
                        job.p99_us,
                        job.errors
                    );
                    runs.push(Run { rep, job });
                }
            }
        }
    }
    Ok(runs)
}

/// Percent of a CPU each server target uses while idle.
fn idle_cpu(bench: &BlkBench, targets: &[Target], secs: f64) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    if secs <= 0.0 {
        return Ok(out);
    }
    for &t in targets {
        if let Some(pct) = bench.idle_cpu(t, Duration::from_secs_f64(secs))? {
            eprintln!("idle {}: {pct:.2} % of a CPU over {secs} s", t.name());
            out.insert(t.name().to_string(), pct);
        }
    }
    Ok(out)
}

fn median(v: Vec<f64>) -> Option<f64> {
    perf::boot::median(v)
}

/// The median run (by IOPS) of each job.
fn medians(runs: &[Run], a: &BlkArgs, targets: &[Target]) -> Vec<JobResult> {
    let mut out = Vec::new();
    for &q in &a.queues {
        for &d in &a.iodepth {
            for &t in targets {
                let mut v: Vec<&JobResult> = runs
                    .iter()
                    .map(|r| &r.job)
                    .filter(|j| j.target == t && j.iodepth == d && j.queues == q)
                    .collect();
                v.sort_by(|x, y| x.iops.total_cmp(&y.iops));
                if let Some(m) = v.get(v.len() / 2) {
                    out.push((*m).clone());
                }
            }
        }
    }
    out
}

/// A ratio of two figures of the same repetition, per repetition and as their median.
#[derive(Debug, Clone, Serialize)]
struct Ratio {
    name: String,
    iodepth: usize,
    queues: usize,
    per_rep: Vec<f64>,
    median: Option<f64>,
}

impl Ratio {
    /// `f` of each repetition that has it, and their median; `None` if none has it.
    fn per_rep(
        name: String,
        iodepth: usize,
        queues: usize,
        reps: usize,
        f: impl Fn(usize) -> Option<f64>,
    ) -> Option<Ratio> {
        let per_rep: Vec<f64> = (0..reps).filter_map(f).collect();
        (!per_rep.is_empty()).then(|| Ratio {
            name,
            iodepth,
            queues,
            median: median(per_rep.clone()),
            per_rep,
        })
    }
}

/// The job of `target` at `iodepth` and `queues` in repetition `rep`.
fn job(
    runs: &[Run],
    rep: usize,
    target: Target,
    iodepth: usize,
    queues: usize,
) -> Option<&JobResult> {
    runs.iter()
        .find(|r| {
            r.rep == rep
                && r.job.target == target
                && r.job.iodepth == iodepth
                && r.job.queues == queues
        })
        .map(|r| &r.job)
}

/// ours (and ours-before) over raw and over qsd per cell, and two queues over one at each
/// depth.
fn ratios(runs: &[Run], a: &BlkArgs) -> Vec<Ratio> {
    let iops = |rep, t, d, q| job(runs, rep, t, d, q).map(|j| j.iops);
    let reps = a.repeat.max(1);
    let mut out = Vec::new();
    let mut push = |name: String, d: usize, q: usize, f: &dyn Fn(usize) -> Option<f64>| {
        out.extend(Ratio::per_rep(name, d, q, reps, f));
    };
    for &q in &a.queues {
        for &d in &a.iodepth {
            for ours in [Target::Ours, Target::OursBefore] {
                for reference in [Target::Raw, Target::Qsd] {
                    let name = format!("{}/{}", ours.name(), reference.name());
                    push(name, d, q, &|rep| {
                        Some(iops(rep, ours, d, q)? / iops(rep, reference, d, q)?)
                    });
                }
            }
        }
    }
    // What sandboxing and counting cost: the variant of ours over plain ours.
    for &q in &a.queues {
        for &d in &a.iodepth {
            for (num, den) in [
                (Target::Ours, Target::OursUnrestricted),
                (Target::OursMetrics, Target::Ours),
            ] {
                let name = format!("{}/{}", num.name(), den.name());
                push(name, d, q, &|rep| {
                    Some(iops(rep, num, d, q)? / iops(rep, den, d, q)?)
                });
            }
        }
    }
    if a.queues.contains(&1) && a.queues.contains(&2) {
        for &d in &a.iodepth {
            for ours in [Target::Ours, Target::OursBefore] {
                let name = format!("{} 2 queues/1 queue", ours.name());
                push(name, d, 2, &|rep| {
                    Some(iops(rep, ours, d, 2)? / iops(rep, ours, d, 1)?)
                });
            }
        }
    }
    out
}

/// Name prefix of a ceiling: the most a goal's ratio could reach on this machine.
const CEILING: &str = "ceiling: ";

/// Upper bounds, from figures of the same repetition, on two goal ratios that no server
/// could exceed on this machine with this client:
/// - depth 1, ours/qsd: a server that added nothing to raw io_uring's read but the
///   exchange with a client asleep on its call eventfd (`round_trip_ns`, measured without
///   rings; none with `--client-poll`) serves a request in raw's time plus that exchange;
/// - depth 32, two queues over one: the two queues' requests need at least raw io_uring's
///   CPU per request (the page-cache copy and its submission, which a server must do too)
///   plus our client's own CPU per request, and `cpus` CPUs supply at most `cpus` seconds
///   a second; at most 2.
fn ceilings(runs: &[Run], a: &BlkArgs, round_trip_ns: f64, cpus: usize) -> Vec<Ratio> {
    let reps = a.repeat.max(1);
    let trip_s = if a.client_poll {
        0.0
    } else {
        round_trip_ns * 1e-9
    };
    let depth1 = Ratio::per_rep(format!("{CEILING}ours/qsd"), 1, 1, reps, |rep| {
        let qsd = job(runs, rep, Target::Qsd, 1, 1)?.iops;
        let raw = job(runs, rep, Target::Raw, 1, 1)?.iops;
        Some((1.0 / qsd) / (1.0 / raw + trip_s))
    });
    let two_queues = Ratio::per_rep(
        format!("{CEILING}ours 2 queues/1 queue"),
        32,
        2,
        reps,
        |rep| {
            let one = job(runs, rep, Target::Ours, 32, 1)?.iops;
            let raw_cpu = job(runs, rep, Target::Raw, 32, 2)?.client_cpu_us_per_io;
            let client_cpu = job(runs, rep, Target::Ours, 32, 2)?.client_cpu_us_per_io;
            let need = (raw_cpu + client_cpu) * 1e-6 * one;
            (need > 0.0).then(|| (cpus as f64 / need).min(2.0))
        },
    );
    depth1.into_iter().chain(two_queues).collect()
}

/// The block goals (one queue unless said): depth 32 ≥ 0.8× raw and ≥ 2× qsd, depth 1
/// ≥ 3× qsd, two queues at depth 32 ≥ 1.7× one; each met in the median and in at least
/// two thirds of the repetitions.
fn goals(ratios: &[Ratio], ceilings: &[Ratio], reps: usize) -> Vec<Goal> {
    let spec = [
        (
            "ours/raw-io_uring",
            32,
            1,
            0.8,
            "depth 32: ours >= 0.8x raw io_uring",
        ),
        (
            "ours/qsd",
            32,
            1,
            2.0,
            "depth 32: ours >= 2x qemu-storage-daemon",
        ),
        (
            "ours/qsd",
            1,
            1,
            3.0,
            "depth 1: ours >= 3x qemu-storage-daemon",
        ),
        (
            "ours 2 queues/1 queue",
            32,
            2,
            1.7,
            "depth 32: ours on 2 queues >= 1.7x 1 queue",
        ),
    ];
    let need = (2 * reps).div_ceil(3);
    spec.iter()
        .filter_map(|&(name, d, q, target, what)| {
            let r = ratios
                .iter()
                .find(|r| r.name == name && r.iodepth == d && r.queues == q)?;
            let reps_met = r.per_rep.iter().filter(|&&v| v >= target).count();
            let ceiling = ceilings
                .iter()
                .find(|c| c.name == format!("{CEILING}{name}") && c.iodepth == d && c.queues == q)
                .and_then(|c| c.median);
            Some(Goal {
                what: what.to_string(),
                target,
                median: r.median,
                reps_met,
                reps: r.per_rep.len(),
                met: r.median.is_some_and(|m| m >= target) && reps_met >= need,
                ceiling,
            })
        })
        .collect()
}

/// The printed summary: medians with CPU per request, ratios, ceilings, goals, idle CPU,
/// wake-up and round-trip costs.
fn render(
    results: &[JobResult],
    ratios: &[Ratio],
    ceilings: &[Ratio],
    goals: &[Goal],
    idle_cpu: &BTreeMap<String, f64>,
    wake_ns: (f64, f64),
    round_trip_ns: (f64, f64),
) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "\n-- medians; CPU per request in µs (client, server)\n{:<14} {:>7} {:>6} {:>12} {:>9} {:>9} {:>7} {:>7} {:>7}",
        "target", "iodepth", "queues", "IOPS", "p50(us)", "p99(us)", "errors", "client", "server"
    );
    for r in results {
        let _ = writeln!(
            o,
            "{:<14} {:>7} {:>6} {:>12.0} {:>9.1} {:>9.1} {:>7} {:>7.2} {:>7}",
            r.target.name(),
            r.iodepth,
            r.queues,
            r.iops,
            r.p50_us,
            r.p99_us,
            r.errors,
            r.client_cpu_us_per_io,
            r.server_cpu_us_per_io
                .map_or("-".into(), |c| format!("{c:.2}"))
        );
    }
    let _ = writeln!(
        o,
        "\n-- same-run ratios, and ceilings on this machine: median [per repetition]"
    );
    for r in ratios.iter().chain(ceilings) {
        let per: Vec<String> = r.per_rep.iter().map(|v| format!("{v:.2}")).collect();
        let _ = writeln!(
            o,
            "iodepth {:>2} queues {}: {:<30} {:>5} [{}]",
            r.iodepth,
            r.queues,
            r.name,
            r.median.map_or("-".into(), |m| format!("{m:.2}")),
            per.join(" ")
        );
    }
    let _ = writeln!(o, "\n-- goals (median and at least 2 of 3 repetitions)");
    for g in goals {
        let _ = writeln!(
            o,
            "{:<4} {:<46} median {:>5}, {} of {} repetitions{}",
            if g.met { "MET" } else { "NOT" },
            g.what,
            g.median.map_or("-".into(), |m| format!("{m:.2}")),
            g.reps_met,
            g.reps,
            g.ceiling
                .map_or(String::new(), |c| format!("; ceiling here {c:.2}"))
        );
    }
    for (target, pct) in idle_cpu {
        let _ = writeln!(o, "idle {target}: {pct:.2} % of one CPU");
    }
    let _ = writeln!(
        o,
        "cross-CPU wake-up (eventfd write to a thread asleep in poll): {:.1} µs before, {:.1} µs after",
        wake_ns.0 / 1000.0,
        wake_ns.1 / 1000.0
    );
    let _ = writeln!(
        o,
        "a sleeping client's round trip beyond the server's work: {:.1} µs before, {:.1} µs after",
        round_trip_ns.0 / 1000.0,
        round_trip_ns.1 / 1000.0
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job at `iops` whose client spends `client_cpu_us` per request.
    fn result(
        target: Target,
        iodepth: usize,
        queues: usize,
        iops: f64,
        client_cpu_us: f64,
    ) -> JobResult {
        JobResult {
            target,
            iodepth,
            queues,
            iops,
            p50_us: 1.0,
            p99_us: 2.0,
            errors: 0,
            client_cpu_us_per_io: client_cpu_us,
            server_cpu_us_per_io: (target != Target::Raw).then_some(3.0),
        }
    }

    fn args() -> BlkArgs {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            a: BlkArgs,
        }
        Cli::parse_from(["blk"]).a
    }

    #[test]
    fn goals_need_the_median_and_two_of_three_repetitions() {
        let a = args();
        assert_eq!((a.repeat, a.before_arg.len()), (3, 2));
        let mut runs = Vec::new();
        // Depth 32: ours/raw 0.9, 0.7, 0.85; ours/qsd 3 each; 2 queues 1.8, 1.8, 1.6.
        // Depth 1: qsd 40, raw 200 requests a second: 25 ms against 5 ms.
        // CPU per request at depth 32 on 2 queues: raw 1000 µs, our client 250 µs.
        for (rep, ours1, ours2) in [(0, 900.0, 1620.0), (1, 700.0, 1260.0), (2, 850.0, 1360.0)] {
            for (t, d, q, iops, cpu) in [
                (Target::Ours, 32, 1, ours1, 0.0),
                (Target::Raw, 32, 1, 1000.0, 0.0),
                (Target::Qsd, 32, 1, ours1 / 3.0, 0.0),
                (Target::Ours, 32, 2, ours2, 250.0),
                (Target::Raw, 32, 2, 2000.0, 1000.0),
                (Target::Ours, 1, 1, 100.0, 0.0),
                (Target::Qsd, 1, 1, 40.0, 0.0),
                (Target::Raw, 1, 1, 200.0, 0.0),
            ] {
                runs.push(Run {
                    rep,
                    job: result(t, d, q, iops, cpu),
                });
            }
        }
        let r = ratios(&runs, &a);
        // A 5 ms round trip: depth 1 at best 25 / (5 + 5) = 2.5x qsd. Two queues: 1250 µs of
        // CPU per request on 2 CPUs against one queue's 900 (rep 0) requests a second:
        // 2 / 1.125 = 1.78x.
        let c = ceilings(&runs, &a, 5e6, 2);
        let by_name = |n: &str| {
            c.iter()
                .find(|c| c.name == format!("{CEILING}{n}"))
                .unwrap()
        };
        assert!((by_name("ours/qsd").median.unwrap() - 2.5).abs() < 1e-9);
        let two = &by_name("ours 2 queues/1 queue").per_rep;
        assert!((two[0] - 2.0 / 1.125).abs() < 1e-9, "{two:?}");
        assert!((two[1] - 2.0).abs() < 1e-9, "capped at 2: {two:?}");
        let g = goals(&r, &c, 3);
        let by = |w: &str| g.iter().find(|g| g.what.contains(w)).unwrap().clone();
        let raw = by("0.8x raw");
        assert_eq!((raw.reps_met, raw.met), (2, true));
        assert!((raw.median.unwrap() - 0.85).abs() < 1e-9);
        assert!(by("2x qemu").met);
        let d1 = by("3x qemu");
        assert_eq!((d1.reps_met, d1.met), (0, false), "2.5x is not 3x");
        assert!((d1.ceiling.unwrap() - 2.5).abs() < 1e-9);
        assert_eq!(by("0.8x raw").ceiling, None);
        let two = by("2 queues");
        assert_eq!((two.reps_met, two.met), (2, true));
        let text = render(
            &medians(&runs, &a, &[Target::Ours]),
            &r,
            &c,
            &g,
            &BTreeMap::new(),
            (1e3, 2e3),
            (5e6, 5e6),
        );
        assert!(text.contains("NOT  depth 1: ours >= 3x"), "{text}");
        assert!(
            text.contains("0 of 3 repetitions; ceiling here 2.50"),
            "{text}"
        );
        assert!(text.contains("ceiling: ours/qsd"), "{text}");
        assert!(text.contains("1.0 µs before, 2.0 µs after"), "{text}");
    }

    #[test]
    fn cpu_lists_parse_or_fail_with_the_option() {
        assert_eq!(cpus("client-cpus", Some("0,2-3")).unwrap(), [0, 2, 3]);
        assert!(cpus("client-cpus", None).unwrap().is_empty());
        let e = cpus("server-cpus", Some("x")).unwrap_err();
        assert!(e.to_string().contains("--server-cpus x"), "{e}");
    }
}
