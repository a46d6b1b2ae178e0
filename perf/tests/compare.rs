// SPDX-License-Identifier: Apache-2.0
//! The comparison harness against fio/iperf3 JSON captured from real runs in the lab host
//! (`perf/tests/fixtures/capture.sh`), and report generation from a synthetic result set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use perf::boot::Mode;
use perf::compare::collect::{Collector, Event};
use perf::compare::matrix::{self, Availability, Kind, Probe, Tier, Workload};
use perf::compare::results::{self, CellStatus, Metrics, RunRecord};
use perf::compare::script::Settings;
use perf::compare::{fio, iperf, outcome, report, result_set};

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn fio_randread_from_the_lab() {
    let m = fio::parse(&fixture("fio-randread.json")).expect("ok run");
    assert!((m.iops - 24851.074463).abs() < 1e-3, "{m:?}");
    assert_eq!(m.write_iops, 0.0);
    assert_eq!(m.lat_dir, "read");
    let (p50, p99, p999) = (
        m.clat_p50_us.unwrap(),
        m.clat_p99_us.unwrap(),
        m.clat_p999_us.unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= p999, "{m:?}");
    assert!((p999 - 4177.92).abs() < 1e-6, "p99.9 {p999}");
    assert!(m.bw_mib_s > 90.0 && m.bw_mib_s < 100.0, "{m:?}");
}

#[test]
fn fio_mixed_reports_both_directions_and_read_latency() {
    let m = fio::parse(&fixture("fio-randrw.json")).expect("ok run");
    assert!((m.read_iops - 16526.736632).abs() < 1e-3);
    assert!((m.write_iops - 7071.464268).abs() < 1e-3);
    assert!((m.iops - (m.read_iops + m.write_iops)).abs() < 1e-6);
    assert_eq!(m.lat_dir, "read");
}

#[test]
fn fio_error_is_a_failed_cell_with_the_reason() {
    // fio put its error line ahead of the JSON in the output file, as captured.
    let raw = fixture("fio-nonexistent.json");
    let reason = fio::parse(&raw).expect_err("must fail");
    assert!(reason.contains("error 2"), "{reason}");
    assert!(reason.contains("No such file or directory"), "{reason}");
    assert!(
        reason.contains("filesetup.c"),
        "fio's own message kept: {reason}"
    );
    let out = outcome(Kind::Block, &raw);
    let rec = RunRecord {
        tier: "native".into(),
        workload: "randread-4k-qd1".into(),
        rep: 1,
        raw_file: Some("raw/native.randread-4k-qd1.1.json".into()),
        outcome: out,
        counters: None,
    };
    let cell = results::CellSummary::build(
        "native",
        "randread-4k-qd1",
        Kind::Block,
        &[&rec],
        CellStatus::Skipped("x".into()),
    );
    assert!(
        matches!(&cell.status, CellStatus::Failed(r) if r.contains("No such file")),
        "{cell:?}"
    );
    assert!(cell.stat("iops").is_none(), "a failed run is not a zero");
}

#[test]
fn no_json_is_a_failure_not_a_zero() {
    assert!(fio::parse(b"").unwrap_err().contains("no JSON"));
    assert!(fio::parse(b"fio: unrecognized option '--bogus'\n")
        .unwrap_err()
        .contains("unrecognized option"));
    assert!(iperf::parse(b"iperf3: error - unable to connect")
        .unwrap_err()
        .contains("no JSON"));
    assert!(fio::parse(b"{\"jobs\": [").is_err());
}

#[test]
fn iperf3_tcp_and_udp_from_the_lab() {
    let t = iperf::parse(&fixture("iperf3-tcp.json")).expect("tcp");
    assert!((t.gbit_s - 1.432720172806866).abs() < 1e-9, "{t:?}");
    assert_eq!(t.retransmits, Some(0));
    assert_eq!(t.jitter_ms, None);
    let u = iperf::parse(&fixture("iperf3-udp.json")).expect("udp");
    assert!(u.gbit_s > 0.09 && u.gbit_s < 0.11, "{u:?}");
    assert_eq!(u.lost_packets, Some(15));
    assert!(u.jitter_ms.is_some_and(|j| j > 0.0));
    assert!(u.lost_percent.is_some_and(|l| (l - 1.9659).abs() < 1e-3));
}

#[test]
fn iperf3_connection_refused_is_a_failed_cell() {
    let raw = fixture("iperf3-refused.json");
    let reason = iperf::parse(&raw).expect_err("must fail");
    assert!(reason.contains("Connection refused"), "{reason}");
    assert!(matches!(outcome(Kind::Net, &raw), Err(r) if r.contains("Connection refused")));
}

#[test]
fn raw_json_survives_a_noisy_console() {
    let raw = fixture("iperf3-tcp.json");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
    let mut c = Collector::default();
    let mut events = Vec::new();
    let mut feed = |l: &str| {
        if let Some(e) = c.line(l) {
            events.push(e);
        }
    };
    feed("===CELL-BEGIN native.tcp-tx.2===");
    feed("===JSON-BEGIN native.tcp-tx.2===\r");
    for (i, chunk) in b64.as_bytes().chunks(76).enumerate() {
        feed(std::str::from_utf8(chunk).unwrap());
        if i == 3 {
            feed("[    7.123456] virtio_net virtio1 eth0: renamed");
        }
    }
    feed("===JSON-END native.tcp-tx.2===");
    assert_eq!(events[0], Event::Started("native.tcp-tx.2".into()));
    match &events[1] {
        Event::Raw(id, Ok(data)) => {
            assert_eq!(id, "native.tcp-tx.2");
            assert_eq!(data, &raw);
        }
        e => panic!("{e:?}"),
    }
}

fn avail_fake(t: Tier, _: Kind) -> Availability {
    match t {
        Tier::Native | Tier::Vmm => Availability::Available,
        other => Availability::Missing(format!("{} is not built (fake)", other.name())),
    }
}

#[test]
fn missing_tiers_are_listed_and_the_rest_still_runs() {
    let tiers = [Tier::Native, Tier::VhostUserBlk, Tier::Vmm, Tier::VfioNvme];
    let plan = matrix::plan(&tiers, &Workload::builtin(), avail_fake);
    assert!(plan
        .cells
        .iter()
        .all(|c| matches!(c.tier, Tier::Native | Tier::Vmm)));
    assert_eq!(
        plan.cells.iter().filter(|c| c.tier == Tier::Native).count(),
        10
    );
    assert_eq!(plan.cells.iter().filter(|c| c.tier == Tier::Vmm).count(), 1);
    let missing: Vec<Tier> = plan.missing.iter().map(|(t, _)| *t).collect();
    assert_eq!(missing, vec![Tier::VhostUserBlk, Tier::VfioNvme]);
    // 7 fio + boot on each missing tier, reported not run.
    assert_eq!(plan.missing_cells.len(), 16);

    let set = result_set(&plan, &[], &settings(), Mode::Lab, false, &BTreeMap::new());
    let vub: Vec<_> = set
        .cells
        .iter()
        .filter(|c| c.tier == "vhost-user-blk")
        .collect();
    assert_eq!(vub.len(), 8);
    assert!(vub
        .iter()
        .all(|c| matches!(&c.status, CellStatus::Missing(r) if r.contains("not built (fake)"))));
}

#[test]
fn probe_explains_what_is_missing() {
    let p = Probe {
        vmm_run_help: "Usage: vmm run --kernel <KERNEL> --initramfs <I> --cpus <N> --memory <M>"
            .into(),
        vmm: Some("/x/vmm".into()),
        vhost_user_blk: None,
        vhost_user_net: None,
        qemu: true,
        lab: true,
        net_tap_probe: String::new(),
        generic_kernel: None,
    };
    assert_eq!(p.availability(Tier::Native), Availability::Available);
    assert_eq!(p.availability(Tier::Vmm), Availability::Available);
    let Availability::Missing(r) = p.availability(Tier::VhostUserBlk) else {
        panic!("vhost-user-blk should be missing")
    };
    assert!(
        r.contains("--disk") && r.contains("vhost-user-blk binary"),
        "{r}"
    );
    let with_disk = Probe {
        vmm_run_help: format!("{} --disk <DISK> --device <DEV>", p.vmm_run_help),
        vhost_user_blk: Some("/x/vhost-user-blk".into()),
        ..p.clone()
    };
    assert_eq!(
        with_disk.availability(Tier::VhostUserBlk),
        Availability::Available
    );
    assert_eq!(
        with_disk.availability(Tier::VfioNvme),
        Availability::Available
    );
    assert!(matches!(
        p.availability(Tier::Emulated),
        Availability::Missing(_)
    ));
    // With --disk: the emulated and in-VMM tiers run their disks; their NICs depend on the
    // generic kernel (e1000) and on `vmm run` accepting `--net tap=NAME` (virtio-net).
    let not_built = Probe {
        net_tap_probe: "error: --net tap=x: in-VMM virtio-net is not built yet; use model=e1000"
            .into(),
        ..with_disk.clone()
    };
    for t in [Tier::Emulated, Tier::VirtioInVmm] {
        assert_eq!(
            not_built.availability_for(t, Kind::Block),
            Availability::Available
        );
        assert_eq!(
            not_built.availability_for(t, Kind::Boot),
            Availability::Available
        );
    }
    let Availability::Missing(r) = not_built.availability_for(Tier::Emulated, Kind::Net) else {
        panic!("e1000 needs the generic kernel")
    };
    assert!(r.contains("generic kernel"), "{r}");
    let Availability::Missing(r) = not_built.availability_for(Tier::VirtioInVmm, Kind::Net) else {
        panic!("virtio-net is not built")
    };
    assert!(r.contains("not built yet"), "{r}");
    let built = Probe {
        net_tap_probe: "error: open /nonexistent: No such file or directory".into(),
        generic_kernel: Some(("/g/vmlinuz-6.1".into(), "/g/e1000.ko".into())),
        ..with_disk
    };
    for t in [Tier::Emulated, Tier::VirtioInVmm] {
        assert_eq!(
            built.availability_for(t, Kind::Net),
            Availability::Available
        );
    }

    // The plan runs the available kinds of a partly available tier and lists the rest.
    let plan = matrix::plan(&[Tier::VirtioInVmm], &Workload::builtin(), |t, k| {
        not_built.availability_for(t, k)
    });
    assert_eq!(plan.cells.len(), 8, "7 fio + boot");
    assert_eq!(plan.missing_cells.len(), 3, "3 iperf3");
    assert_eq!(plan.missing.len(), 1);
    assert!(
        plan.missing[0].1.starts_with("net cells: "),
        "{:?}",
        plan.missing
    );
}

fn settings() -> Settings {
    Settings {
        repeat: 3,
        duration_s: 5,
        size_mib: 64,
        cpus: 2,
        memory_mib: 512,
        queues: 1,
    }
}

fn rec(tier: &str, workload: &str, rep: usize, outcome: Result<Metrics, String>) -> RunRecord {
    RunRecord {
        tier: tier.into(),
        workload: workload.into(),
        rep,
        raw_file: Some(format!("raw/{tier}.{workload}.{rep}.json")),
        outcome,
        counters: None,
    }
}

fn fio_m(iops: f64) -> Metrics {
    Metrics::Fio(fio::FioMetrics {
        iops,
        read_iops: iops,
        write_iops: 0.0,
        bw_mib_s: iops * 4.0 / 1024.0,
        lat_dir: "read".into(),
        clat_p50_us: Some(40.0),
        clat_p99_us: Some(90.0),
        clat_p999_us: Some(200.0),
    })
}

/// The CSV of `set`: the header, the median/min/max of a cell, its raw files, a failed and a
/// missing cell; returns it.
fn assert_csv_rows(set: &results::ResultSet) -> String {
    let csv = results::csv(set);
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with(
        "tier,workload,kind,status,reason,runs_ok,runs,iops_median,iops_min,iops_max"
    ));
    let row = lines
        .iter()
        .find(|l| l.starts_with("native,randread-4k-qd1,"))
        .expect("row");
    assert!(row.contains(",ok,,3,3,2000,1000,3000,"), "{row}");
    assert!(row.ends_with(
        "raw/native.randread-4k-qd1.1.json;raw/native.randread-4k-qd1.2.json;raw/native.randread-4k-qd1.3.json"
    ));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("native,tcp-tx,net,FAILED,iperf3: unable to connect")));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("vhost-user-blk,randread-4k-qd1,block,missing,")));

    csv
}

#[test]
fn report_and_csv_from_a_synthetic_result_set() {
    let tiers = [Tier::Native, Tier::Vmm, Tier::VhostUserBlk];
    let workloads: Vec<Workload> = Workload::builtin()
        .into_iter()
        .filter(|w| ["randread-4k-qd1", "tcp-tx", "boot"].contains(&w.name()))
        .collect();
    let plan = matrix::plan(&tiers, &workloads, avail_fake);
    let records = vec![
        rec("native", "randread-4k-qd1", 1, Ok(fio_m(1000.0))),
        rec("native", "randread-4k-qd1", 2, Ok(fio_m(3000.0))),
        rec("native", "randread-4k-qd1", 3, Ok(fio_m(2000.0))),
        rec(
            "native",
            "tcp-tx",
            1,
            Err("iperf3: unable to connect to server: Connection refused".into()),
        ),
        rec("vmm", "boot", 1, Ok(Metrics::Boot { to_init_s: 1.5 })),
    ];
    let set = result_set(
        &plan,
        &records,
        &settings(),
        Mode::Lab,
        false,
        &BTreeMap::new(),
    );
    let rr = set
        .cells
        .iter()
        .find(|c| c.tier == "native" && c.workload == "randread-4k-qd1")
        .unwrap();
    let s = rr.stat("iops").unwrap();
    assert_eq!((s.median, s.min, s.max), (2000.0, 1000.0, 3000.0));

    let csv = assert_csv_rows(&set);

    let mut set = set;
    set.retries.push(results::Retry {
        group: "vhost-user-blk".into(),
        cells: 7,
        reason: "[   46.8] BUG: TASK stack guard page was hit".into(),
    });
    let dir = tempfile::tempdir().unwrap();
    report::write_report(dir.path(), &set).unwrap();
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(
        md.contains("| native | randread-4k-qd1 | 2000 [1000–3000] |"),
        "{md}"
    );
    assert!(md.contains("**FAILED** 0/3: iperf3: unable to connect to server: Connection refused"));
    assert!(md.contains("| vhost-user-blk | guest virtio-blk → our vhost-user-blk backend process → file | **missing**: vhost-user-blk is not built (fake) |"), "{md}");
    assert!(md.contains("| vmm | 1.50 [1.50–1.50] |"), "{md}");
    // The summary matrix: tiers down, workloads across.
    assert!(md.contains("| tier | randread-4k-qd1 |\n|---|---|\n| native | 2000 |\n| vhost-user-blk | missing |\n"), "{md}");
    assert!(md.contains("| native | FAILED |"), "{md}");
    assert!(md.contains("Host: not recorded."), "{md}");
    assert!(md.contains("## Retried groups"), "{md}");
    assert!(
        md.contains(
            "- vhost-user-blk: 7 cell(s) after `[   46.8] BUG: TASK stack guard page was hit`"
        ),
        "{md}"
    );
    assert_embedded_once(
        dir.path(),
        &md,
        &["iops.svg", "latency-p50.svg", "latency-p99.svg", "boot.svg"],
    );
    let table = report::summary_table(&set);
    assert!(table.contains("randread-4k-qd1"));
    assert!(
        table.contains("vhost-user-blk  MISSING: vhost-user-blk is not built (fake)"),
        "{table}"
    );
    assert!(
        md.contains("Not measured (tier missing, see Tiers): vhost-user-blk."),
        "{md}"
    );

    // results.json round-trips, so a report can be re-rendered later (`vmm-perf report`).
    let json = serde_json::to_string(&set).unwrap();
    let back: results::ResultSet = serde_json::from_str(&json).unwrap();
    assert_eq!(results::csv(&back), csv);
}

/// Every chart `md` embeds exists and is embedded once; `expected` are exactly those charts.
fn assert_embedded_once(dir: &Path, md: &str, expected: &[&str]) {
    let mut embedded: Vec<&str> = md
        .split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .filter(|target| target.ends_with(".svg"))
        .collect();
    let n = embedded.len();
    embedded.sort_unstable();
    embedded.dedup();
    assert_eq!(embedded.len(), n, "a chart is embedded twice: {md}");
    let mut want = expected.to_vec();
    want.sort_unstable();
    assert_eq!(embedded, want);
    for svg in expected {
        let text = std::fs::read_to_string(dir.join(svg)).unwrap_or_else(|e| panic!("{svg}: {e}"));
        assert!(text.starts_with("<svg"), "{svg}");
        assert!(text.contains("<rect"), "{svg} has bars");
    }
}

#[test]
fn tiers_a_hundredfold_apart_get_log_and_ratio_charts_each_embedded_once() {
    let workloads: Vec<Workload> = Workload::builtin()
        .into_iter()
        .filter(|w| ["randread-4k-qd1", "randread-4k-qd32", "tcp-tx"].contains(&w.name()))
        .collect();
    let plan = matrix::plan(
        &[Tier::Native, Tier::VhostUserBlk, Tier::VhostUserNet],
        &workloads,
        |_, _| Availability::Available,
    );
    let iperf_m = |gbit_s: f64| {
        Metrics::Iperf(iperf::IperfMetrics {
            gbit_s,
            retransmits: Some(0),
            jitter_ms: None,
            lost_packets: None,
            lost_percent: None,
        })
    };
    let mut records = Vec::new();
    for rep in 1..=3 {
        records.push(rec("native", "randread-4k-qd1", rep, Ok(fio_m(41_000.0))));
        records.push(rec("native", "randread-4k-qd32", rep, Ok(fio_m(35_000.0))));
        records.push(rec(
            "vhost-user-blk",
            "randread-4k-qd1",
            rep,
            Ok(fio_m(274.0)),
        ));
        records.push(rec(
            "vhost-user-blk",
            "randread-4k-qd32",
            rep,
            Ok(fio_m(2522.0)),
        ));
        records.push(rec("native", "tcp-tx", rep, Ok(iperf_m(2.84))));
        records.push(rec("vhost-user-net", "tcp-tx", rep, Ok(iperf_m(0.153))));
    }
    let set = result_set(
        &plan,
        &records,
        &settings(),
        Mode::Lab,
        false,
        &BTreeMap::new(),
    );
    let dir = tempfile::tempdir().unwrap();
    report::write_report(dir.path(), &set).unwrap();
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(
        md.contains("| vhost-user-blk | 274 (0.0067) | 2522 (0.072) |"),
        "{md}"
    );
    assert!(md.contains("| vhost-user-net | 0.153 (0.054) |"), "{md}");
    assert_embedded_once(
        dir.path(),
        &md,
        &[
            "iops.svg",
            "iops-ratio.svg",
            "latency-p50.svg",
            "latency-p99.svg",
            "network.svg",
            "network-ratio.svg",
        ],
    );
    for svg in ["iops.svg", "iops-ratio.svg", "network.svg"] {
        let text = std::fs::read_to_string(dir.path().join(svg)).unwrap();
        assert!(text.contains("(log scale)"), "{svg}");
    }
    let ratio = std::fs::read_to_string(dir.path().join("iops-ratio.svg")).unwrap();
    assert!(
        ratio.contains("\n= reference\n") && !ratio.contains("\nnative\n"),
        "{ratio}"
    );
}

fn have(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `out/results.json` has the provenance fields, and `vmm-perf report` renders the run's
/// report again from it alone (into `again`), byte for byte.
fn assert_provenance_and_round_trip(out: &Path, again: &Path) {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["schema_version"], results::SCHEMA_VERSION);
    assert_eq!(json["host"]["mode"], "direct");
    assert!(json["command_line"]
        .as_array()
        .is_some_and(|a| !a.is_empty()));
    assert!(json["wall_clock_s"].as_u64().is_some());
    // `vmm-perf report` renders the run's report again from results.json alone, byte for byte.
    perf::compare::report_from_json(&out.join("results.json"), again).expect("re-render");
    for f in ["report.md", "results.csv", "iops.svg"] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(again.join(f)).unwrap(),
            "{f}"
        );
    }
}

/// End to end in direct mode on this host, native tier only (no guest, no lab): fio and
/// iperf3 over loopback, a user fio job that fails, and a (fake) missing tier next to them.
#[test]
fn direct_native_run_end_to_end_with_a_missing_tier_and_a_failing_job() {
    if !have("fio") || !have("iperf3") {
        eprintln!("SKIP: fio/iperf3 not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("bad.fio");
    std::fs::write(
        &job,
        "[bad]\nfilename=/proc/vmm-perf-nonexistent\nrw=randread\nbs=4k\nsize=${VMM_PERF_SIZE}\n",
    )
    .unwrap();
    let mut workloads: Vec<Workload> = Workload::builtin()
        .into_iter()
        .filter(|w| ["randread-4k-qd1", "tcp-tx"].contains(&w.name()))
        .collect();
    workloads.push(Workload::FioJob {
        name: "fio-job-bad".into(),
        path: job,
    });
    let plan = matrix::plan(&[Tier::Native, Tier::VhostUserBlk], &workloads, avail_fake);
    let out = dir.path().join("results");
    let opts = perf::compare::Options {
        mode: Mode::Direct,
        plan,
        settings: Settings {
            repeat: 1,
            duration_s: 1,
            size_mib: 8,
            cpus: 1,
            memory_mib: 256,
            queues: 1,
        },
        vmm: "/nonexistent/vmm".into(),
        bin_dir: "/nonexistent".into(),
        out_dir: out.clone(),
        host: serde_json::json!({ "mode": "direct" }),
        progress: false,
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let set = perf::compare::run(&opts, stop).expect("run");
    let cell = |t: &str, w: &str| {
        set.cells
            .iter()
            .find(|c| c.tier == t && c.workload == w)
            .unwrap_or_else(|| panic!("no cell {t}/{w}"))
    };
    let rr = cell("native", "randread-4k-qd1");
    assert_eq!(rr.status, CellStatus::Ok, "{rr:?}");
    assert!(rr.stat("iops").is_some_and(|s| s.median > 0.0));
    assert_eq!(rr.raw_files, ["raw/native.randread-4k-qd1.1.json"]);
    assert!(out.join("raw/native.randread-4k-qd1.1.json").is_file());
    let tcp = cell("native", "tcp-tx");
    assert_eq!(tcp.status, CellStatus::Ok, "{tcp:?}");
    let bad = cell("native", "fio-job-bad");
    assert!(
        matches!(&bad.status, CellStatus::Failed(r) if r.contains("No such file")),
        "{bad:?}"
    );
    assert!(matches!(
        &cell("vhost-user-blk", "randread-4k-qd1").status,
        CellStatus::Missing(_)
    ));
    for f in [
        "results.json",
        "results.csv",
        "report.md",
        "raw/native.tcp-tx.1.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    assert_provenance_and_round_trip(&out, &dir.path().join("again"));
}

#[test]
fn guest_tier_counters_become_per_io_columns() {
    use perf::compare::counters::RunCounters;
    use perf::metrics::CellCounters;
    let tiers = [Tier::Native, Tier::VhostUserBlk];
    let workloads: Vec<Workload> = Workload::builtin()
        .into_iter()
        .filter(|w| w.name() == "randread-4k-qd1")
        .collect();
    let plan = matrix::plan(&tiers, &workloads, |_, _| Availability::Available);
    let begin = CellCounters::default();
    // Runs of 5 s at 1000 and 2000 IOPS: 5000 and 10000 I/Os.
    let counted = |iops: f64, notifications: f64, cpu: f64| {
        let end = CellCounters {
            requests: iops * 5.0,
            notifications,
            kicks: notifications / 2.0,
            submissions: 100.0,
            submitted: 400.0,
            cpu_seconds: cpu,
        };
        Some(RunCounters::between(&begin, &end, Some(iops * 5.0)))
    };
    let mut records = vec![
        rec("native", "randread-4k-qd1", 1, Ok(fio_m(3000.0))),
        rec("vhost-user-blk", "randread-4k-qd1", 1, Ok(fio_m(1000.0))),
        rec("vhost-user-blk", "randread-4k-qd1", 2, Ok(fio_m(2000.0))),
    ];
    records[1].counters = counted(1000.0, 5000.0, 0.5);
    records[2].counters = counted(2000.0, 5000.0, 0.5);
    let set = result_set(
        &plan,
        &records,
        &settings(),
        Mode::Lab,
        false,
        &BTreeMap::new(),
    );
    let c = set
        .cells
        .iter()
        .find(|c| c.tier == "vhost-user-blk")
        .unwrap();
    // Notifications per I/O 1.0 and 0.5, CPU 100 and 50 µs per I/O: medians of two.
    let n = c.stat("notifications_per_io").unwrap();
    assert_eq!((n.min, n.max), (0.5, 1.0));
    assert_eq!(c.stat("uring_batch").unwrap().median, 4.0);
    let cpu = c.stat("cpu_us_per_io").unwrap();
    assert_eq!((cpu.min, cpu.max), (50.0, 100.0));
    let native = set.cells.iter().find(|c| c.tier == "native").unwrap();
    assert!(native.stat("cpu_us_per_io").is_none());

    let dir = tempfile::tempdir().unwrap();
    report::write_report(dir.path(), &set).unwrap();
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(
        md.contains("| IOPS ratio | notif/IO | CPU µs/IO | status |"),
        "{md}"
    );
    let row = md
        .lines()
        .find(|l| l.starts_with("| vhost-user-blk | randread-4k-qd1 |"))
        .unwrap();
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert_eq!(cells.len(), 13, "{row}");
    // The median of two runs is their mean.
    assert_eq!((cells[9], cells[10]), ("0.75", "75.0"), "{row}");
    let json = serde_json::to_string(&set).unwrap();
    let back: results::ResultSet = serde_json::from_str(&json).unwrap();
    assert_eq!(back.runs[1].counters, records[1].counters);
}
