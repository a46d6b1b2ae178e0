// SPDX-License-Identifier: Apache-2.0
//! Running the plan: one script per tier group, directly or in the lab host
//! ([`super::group`]); a group that faulted gets one more try for its incomplete cells; the
//! records ([`super::recorder`]) become `results.json`, `results.csv` and the report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::group::{run_group, Group, GroupRun};
use super::matrix::{Kind, Plan, PlannedCell, Tier};
use super::recorder::Recorder;
use super::report;
use super::results::{self, CellStatus, CellSummary, ResultSet, Retry, RunRecord, SCHEMA_VERSION};
use super::script::Settings;
use crate::boot::Mode;
use crate::{io_err, Error, Result};

/// What to run and where.
#[derive(Clone, Debug)]
pub struct Options {
    /// Direct or lab.
    pub mode: Mode,
    /// The plan (see [`super::matrix::plan`]).
    pub plan: Plan,
    /// Sizes and counts.
    pub settings: Settings,
    /// Our VMM binary.
    pub vmm: PathBuf,
    /// Directory with the backend binaries.
    pub bin_dir: PathBuf,
    /// The results directory to create (`results/<timestamp>`).
    pub out_dir: PathBuf,
    /// The host description (see [`super::host_info`]), stored in `results.json`.
    pub host: serde_json::Value,
    /// Show a progress bar.
    pub progress: bool,
}

fn groups(plan: &Plan) -> Vec<Group> {
    let mut host = Group {
        name: "host".into(),
        cells: Vec::new(),
        guest_tier: None,
    };
    let mut guests: Vec<Group> = Vec::new();
    for c in &plan.cells {
        if c.tier.is_guest() {
            match guests.iter_mut().find(|g| g.guest_tier == Some(c.tier)) {
                Some(g) => g.cells.push(c.clone()),
                None => guests.push(Group {
                    name: c.tier.name().into(),
                    cells: vec![c.clone()],
                    guest_tier: Some(c.tier),
                }),
            }
        } else {
            host.cells.push(c.clone());
        }
    }
    let mut all = Vec::new();
    if !host.cells.is_empty() {
        all.push(host);
    }
    all.extend(guests);
    all
}

/// The cells of `g` with fewer than `repeat` runs recorded (a run that failed with a reason
/// is recorded).
fn incomplete_cells(g: &Group, records: &[RunRecord], repeat: usize) -> Vec<PlannedCell> {
    g.cells
        .iter()
        .filter(|c| records.iter().filter(|r| r.is_of(c)).count() < repeat)
        .cloned()
        .collect()
}

/// The first kernel-fault or nested-VMM verdict line of a group's console log, if any, from
/// its kernel timestamp on (a kernel message may land inside a line of base64 output).
fn first_fault(console_log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(console_log).ok()?;
    lab::fault_lines(&text, 1)
        .first()
        .map(|l| from_kernel_timestamp(l.trim()).chars().take(160).collect())
}

/// `line` from its first kernel timestamp (`[   46.825441]`) on, or all of it.
fn from_kernel_timestamp(line: &str) -> &str {
    let is_stamp = |rest: &str| {
        let Some(end) = rest.find(']') else {
            return false;
        };
        let inner = rest[1..end].trim_start();
        !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    };
    line.match_indices('[')
        .map(|(i, _)| i)
        .find(|&i| is_stamp(&line[i..]))
        .map_or(line, |i| &line[i..])
}

/// Why a group whose cells are incomplete deserves one more run: a kernel fault or nested-VMM
/// verdict on its console, or a lab run given up because the emulation stopped making progress
/// ([`lab::LabError::is_stall`]); `None` for a plain failure.
fn retry_reason(res: &Result<()>, console_log: &Path) -> Option<String> {
    first_fault(console_log).or_else(|| match res {
        Err(Error::Lab(e)) if e.is_stall() => e.to_string().lines().next().map(String::from),
        _ => None,
    })
}

/// Summarises `records` against `plan`: every planned cell (run or missing) gets a summary;
/// cells without records are missing (tier unavailable), failed (their script failed:
/// `group_errors` by tier name), or skipped (interrupted / not run). The provenance, clock and
/// host fields are left empty for the caller.
pub fn result_set(
    plan: &Plan,
    records: &[RunRecord],
    settings: &Settings,
    mode: Mode,
    interrupted: bool,
    group_errors: &BTreeMap<String, String>,
) -> ResultSet {
    let mut cells = Vec::new();
    for (c, missing) in plan
        .cells
        .iter()
        .map(|c| (c, None))
        .chain(plan.missing_cells.iter().map(|c| {
            let r = plan
                .missing
                .iter()
                .find(|(t, _)| *t == c.tier)
                .map(|(_, r)| r.clone());
            (c, Some(r.unwrap_or_default()))
        }))
    {
        let (t, w) = (c.tier.name(), c.workload.name());
        let recs: Vec<&RunRecord> = records
            .iter()
            .filter(|r| r.tier == t && r.workload == w)
            .collect();
        let fallback = match missing {
            Some(r) => CellStatus::Missing(r),
            None if interrupted => CellStatus::Skipped("interrupted (Ctrl-C)".into()),
            None => match group_errors.get(t) {
                Some(e) => CellStatus::Failed(e.clone()),
                None => CellStatus::Skipped("not run yet".into()),
            },
        };
        let mut cell = CellSummary::build(t, w, c.workload.kind(), &recs, fallback);
        if !matches!(cell.status, CellStatus::Missing(_)) {
            cell.planned = settings.repeat;
        }
        // Runs that never happened because the group's script failed: say why.
        if let (false, Some(e)) = (interrupted, group_errors.get(t)) {
            if cell.status == CellStatus::Ok && cell.runs < cell.planned {
                let missing = if cell.runs + 1 == cell.planned {
                    format!("run {}", cell.planned)
                } else {
                    format!("runs {}-{}", cell.runs + 1, cell.planned)
                };
                cell.failures.push(format!("{missing} not done: {e}"));
            }
        }
        cells.push(cell);
    }
    cells.sort_by_key(|c| {
        (
            kind_rank(c.kind),
            Tier::from_name(&c.tier).map_or(usize::MAX, |t| t as usize),
        )
    });
    ResultSet {
        provenance: Default::default(),
        started_utc: None,
        finished_utc: None,
        wall_clock_s: None,
        host: serde_json::Value::Null,
        mode: match mode {
            Mode::Direct => "direct".into(),
            Mode::Lab => "lab".into(),
        },
        repeat: settings.repeat,
        duration_s: settings.duration_s,
        size_mib: settings.size_mib,
        missing_tiers: plan
            .missing
            .iter()
            .map(|(t, r)| (t.name().to_string(), r.clone()))
            .collect(),
        cells,
        runs: records.to_vec(),
        interrupted,
        retries: Vec::new(),
    }
}

fn kind_rank(k: Kind) -> u8 {
    match k {
        Kind::Block => 0,
        Kind::Net => 1,
        Kind::Boot => 2,
    }
}

/// Runs the plan, writes `results/<ts>/…`, prints the summary; returns the result set.
/// `stop` is set by the Ctrl-C handler: the current script is stopped and the cells measured
/// so far are kept.
pub fn run(opts: &Options, stop: Arc<AtomicBool>) -> Result<ResultSet> {
    let dir = &opts.out_dir;
    std::fs::create_dir_all(dir.join("raw")).map_err(io_err(format!("mkdir {}", dir.display())))?;
    let mut rec = Recorder::new(opts);
    rec.write_results()?;
    let tmp = tempfile::tempdir().map_err(io_err("temp dir"))?;
    let groups = groups(&opts.plan);
    let images = images_for(opts, &groups)?;
    let ctx = GroupRun {
        opts,
        images: images.as_ref(),
        tmp: tmp.path(),
        stop: &stop,
    };
    for g in &groups {
        if stop.load(Ordering::SeqCst) {
            rec.interrupted = true;
            break;
        }
        run_with_retry(&ctx, g, &mut rec);
        if rec.interrupted {
            break;
        }
    }
    rec.pb.finish_and_clear();
    let json = rec.write_results()?;
    // Rendered from the JSON as written, so `vmm-perf report` renders the same bytes.
    let set = parse_results(&json, dir)?;
    render(&set, dir)?;
    Ok(set)
}

/// Images (kernel, initramfs, lab) are needed for the lab and for any guest; a direct run of
/// native cells only needs fio/iperf3 on this host.
fn images_for(opts: &Options, groups: &[Group]) -> Result<Option<lab::Images>> {
    let needed = !groups.is_empty()
        && (opts.mode == Mode::Lab
            || opts
                .plan
                .cells
                .iter()
                .any(|c| c.tier.is_guest() || c.workload.kind() == Kind::Boot));
    if !needed {
        return Ok(None);
    }
    lab::Images::ensure_default()
        .map(Some)
        .map_err(|e| Error::Backend(format!("lab images: {e}")))
}

/// Runs a group; a guest or lab kernel that faults or stalls (the lab's nested virtualization
/// has faults of its own) ends the group's script early: its incomplete cells run once more.
/// What still has no result, or a script that failed, is noted for the cells' summaries.
fn run_with_retry(ctx: &GroupRun, g: &Group, rec: &mut Recorder) {
    let repeat = ctx.opts.settings.repeat;
    let mut res = run_group(ctx, g, rec);
    let mut console_name = g.name.clone();
    note_stop(ctx, rec);
    let incomplete = incomplete_cells(g, &rec.records, repeat);
    let console_log = rec.dir.join(format!("console-{}.log", g.name));
    if !rec.interrupted && !incomplete.is_empty() {
        if let Some(fault) = retry_reason(&res, &console_log) {
            eprintln!(
                "group {}: {} cell(s) incomplete after a fault ({fault}); running them once more",
                g.name,
                incomplete.len()
            );
            rec.retries.push(Retry {
                group: g.name.clone(),
                cells: incomplete.len(),
                reason: fault,
            });
            rec.records
                .retain(|r| !incomplete.iter().any(|c| r.is_of(c)));
            rec.pb.inc_length((incomplete.len() * repeat) as u64);
            let retry = Group {
                name: format!("{}-retry", g.name),
                cells: incomplete,
                guest_tier: g.guest_tier,
            };
            res = run_group(ctx, &retry, rec);
            console_name = retry.name;
            note_stop(ctx, rec);
        }
    }
    note_group_errors(g, &res, &console_name, rec);
}

fn note_stop(ctx: &GroupRun, rec: &mut Recorder) {
    if ctx.stop.load(Ordering::SeqCst) {
        rec.interrupted = true;
    }
}

/// Cells without a single recorded run after a script that succeeded, and every cell of a
/// script that failed, get the reason.
fn note_group_errors(g: &Group, res: &Result<()>, console_name: &str, rec: &mut Recorder) {
    let unreported = incomplete_cells(g, &rec.records, 1);
    if res.is_ok() && !unreported.is_empty() {
        let why = format!(
            "no result for this cell in the console output (see console-{console_name}.log)"
        );
        for c in unreported {
            rec.group_errors
                .insert(c.tier.name().to_string(), why.clone());
        }
    }
    if let Err(e) = res {
        let msg = e.to_string();
        let short: String = msg.lines().next().unwrap_or("").chars().take(200).collect();
        if !rec.interrupted {
            eprintln!("group {}: {short}", g.name);
        }
        for c in &g.cells {
            rec.group_errors
                .insert(c.tier.name().to_string(), short.clone());
        }
    }
}

fn parse_results(json: &str, origin: &Path) -> Result<ResultSet> {
    let set: ResultSet = serde_json::from_str(json)
        .map_err(|e| Error::Report(format!("{}: {e}", origin.display())))?;
    if set.provenance.schema_version > SCHEMA_VERSION {
        return Err(Error::Report(format!(
            "{}: schema version {} is newer than this vmm-perf's {SCHEMA_VERSION}",
            origin.display(),
            set.provenance.schema_version
        )));
    }
    Ok(set)
}

/// Writes `results.csv`, `report.md` and the charts of `set` into `out`.
fn render(set: &ResultSet, out: &Path) -> Result<()> {
    let csv = out.join("results.csv");
    std::fs::write(&csv, results::csv(set)).map_err(io_err(format!("write {}", csv.display())))?;
    report::write_report(out, set)
}

/// Renders `report.md`, its charts and `results.csv` into `out` from a `results.json` (a file,
/// or a results directory holding one) alone: the same bytes as the run that wrote it.
/// Sets of schema version 1 take their host from a `host.json` beside them.
pub fn report_from_json(results: &Path, out: &Path) -> Result<ResultSet> {
    let file = if results.is_dir() {
        results.join("results.json")
    } else {
        results.to_path_buf()
    };
    let json =
        std::fs::read_to_string(&file).map_err(io_err(format!("read {}", file.display())))?;
    let mut set = parse_results(&json, &file)?;
    if set.host.is_null() {
        let legacy = file.with_file_name("host.json");
        if let Ok(text) = std::fs::read_to_string(legacy) {
            set.host = serde_json::from_str(&text).unwrap_or_default();
        }
    }
    std::fs::create_dir_all(out).map_err(io_err(format!("mkdir {}", out.display())))?;
    render(&set, out)?;
    Ok(set)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::matrix::Workload;
    use super::super::results::Metrics;
    use super::*;

    #[test]
    fn host_side_tiers_share_one_group_and_guest_tiers_get_their_own() {
        let plan = super::super::matrix::plan(
            &[Tier::Native, Tier::VhostUserBlk, Tier::Vmm, Tier::VfioNvme],
            &Workload::builtin(),
            |_, _| super::super::Availability::Available,
        );
        let g = groups(&plan);
        let names: Vec<&str> = g.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["host", "vhost-user-blk", "vfio-nvme"]);
        assert_eq!(g[0].cells.len(), 11);
    }

    #[test]
    fn a_faulted_group_retries_exactly_its_incomplete_cells() {
        let plan = super::super::matrix::plan(&[Tier::VfioNvme], &Workload::builtin(), |_, _| {
            super::super::Availability::Available
        });
        let g = &groups(&plan)[0];
        let run = |c: &PlannedCell, rep, outcome: std::result::Result<Metrics, String>| RunRecord {
            tier: c.tier.name().into(),
            workload: c.workload.name().into(),
            rep,
            raw_file: None,
            outcome,
            counters: None,
        };
        // Cell 0 ran twice (once failing with a reason), cell 1 once, the rest never.
        let records = vec![
            run(&g.cells[0], 1, Err("fio error 5".into())),
            run(&g.cells[0], 2, Err("fio error 5".into())),
            run(&g.cells[1], 1, Err("no JSON".into())),
        ];
        let incomplete = incomplete_cells(g, &records, 2);
        assert_eq!(incomplete.len(), g.cells.len() - 1);
        assert!(!incomplete.iter().any(|c| records[0].is_of(c)));
        assert!(incomplete.iter().any(|c| records[2].is_of(c)));
        assert_eq!(incomplete_cells(g, &records, 1).len(), g.cells.len() - 2);

        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console-vfio-nvme.log");
        std::fs::write(&log, "GUEST-BOOT-OK uptime=12\nfio: started\n").unwrap();
        assert_eq!(first_fault(&log), None);
        std::fs::write(
            &log,
            "GUEST-BOOT-OK uptime=12\n[   24.23] traps: PANIC: double fault, error_code: 0x0\n\
             [   24.23] RIP: 0010:entry_SYSCALL_64+0x0/0x29\n\
             vmm: guest kernel panicked: Kernel panic - not syncing: Fatal exception\n",
        )
        .unwrap();
        assert_eq!(
            first_fault(&log).as_deref(),
            Some("[   24.23] RIP: 0010:entry_SYSCALL_64+0x0/0x29")
        );
        assert_eq!(first_fault(&dir.path().join("missing.log")), None);
        std::fs::write(
            &log,
            "MDAwLAogICAgICAgIC[   46.825441] BUG: TASK stack guard page was hit at 0000\n",
        )
        .unwrap();
        assert_eq!(
            first_fault(&log).as_deref(),
            Some("[   46.825441] BUG: TASK stack guard page was hit at 0000")
        );
        assert_eq!(from_kernel_timestamp("no [stamp] here"), "no [stamp] here");
    }

    #[test]
    fn runs_cut_short_by_a_failed_script_are_partial_with_its_reason() {
        let plan = super::super::matrix::plan(&[Tier::VfioNvme], &Workload::builtin(), |_, _| {
            super::super::Availability::Available
        });
        let c = &plan.cells[0];
        let records = vec![RunRecord {
            tier: c.tier.name().into(),
            workload: c.workload.name().into(),
            rep: 1,
            raw_file: None,
            outcome: Ok(Metrics::Boot { to_init_s: 1.0 }),
            counters: None,
        }];
        let settings = Settings {
            repeat: 3,
            duration_s: 2,
            size_mib: 64,
            cpus: 2,
            memory_mib: 512,
            queues: 1,
        };
        let errors =
            BTreeMap::from([("vfio-nvme".to_string(), "lab: silent for 150s".to_string())]);
        let set = result_set(&plan, &records, &settings, Mode::Lab, false, &errors);
        let cell = &set
            .cells
            .iter()
            .find(|x| x.workload == c.workload.name())
            .unwrap();
        assert_eq!(cell.status_word(), "partial");
        assert_eq!(
            cell.reason(false),
            "runs 2-3 not done: lab: silent for 150s"
        );
        // Without the group's error (an older results.json), the count and the likely cause.
        let bare = CellSummary {
            failures: Vec::new(),
            ..(*cell).clone()
        };
        assert_eq!(
            bare.reason(false),
            "1 of 3 runs done (the group's script ended early)"
        );
        assert_eq!(bare.reason(true), "1 of 3 runs done (interrupted)");
        // An interrupted run is not blamed on the script.
        let set = result_set(&plan, &records, &settings, Mode::Lab, true, &errors);
        assert!(set.cells.iter().all(|x| x.failures.is_empty()));
    }

    #[test]
    fn a_stalled_lab_is_a_reason_to_retry_and_a_plain_failure_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console-virtio.log");
        std::fs::write(
            &log,
            "GUEST-BOOT-OK uptime=12
",
        )
        .unwrap();
        let silent = Err(Error::Lab(lab::LabError::Silent {
            after: Duration::from_secs(150),
            tail: "GUEST-BOOT-OK uptime=12".into(),
        }));
        assert_eq!(
            retry_reason(&silent, &log).as_deref(),
            Some("the lab console was silent for 150s; last console lines:")
        );
        let timeout = Err(Error::Lab(lab::LabError::Timeout {
            timeout: Duration::from_secs(300),
            tail: String::new(),
        }));
        assert_eq!(retry_reason(&timeout, &log), None);
        assert_eq!(retry_reason(&Ok(()), &log), None);
        assert_eq!(
            retry_reason(&Err(Error::Backend("refused".into())), &log),
            None
        );
    }
}
