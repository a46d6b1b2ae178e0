// SPDX-License-Identifier: Apache-2.0
//! The run's bookkeeping: console events become run records, every record is saved at once
//! (raw output under `raw/`, `results.json` rewritten), and the progress bar moves.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use super::collect::Event;
use super::counters::{CountersLine, RunCounters};
use super::matrix::{Kind, Plan};
use super::results::{Metrics, ResultSet, Retry, RunRecord, SCHEMA_VERSION};
use super::run::{result_set, Options};
use super::script::{self, Settings};
use super::{fio, iperf};
use crate::boot::{self, Mode};
use crate::provenance::{self, Provenance};
use crate::{io_err, Error, Result};

/// The run id under which the lab host's own `vmm check --json` comes back.
const LAB_CHECK_ID: &str = "lab.check.1";

/// Turns a raw output into the run's outcome according to the workload kind.
pub fn outcome(kind: Kind, raw: &[u8]) -> std::result::Result<Metrics, String> {
    match kind {
        Kind::Block => fio::parse(raw).map(Metrics::Fio),
        Kind::Net => iperf::parse(raw).map(Metrics::Iperf),
        Kind::Boot => Err("boot runs have no JSON".into()),
    }
}

/// Everything measured so far, and where it goes.
pub(super) struct Recorder {
    /// The results directory.
    pub dir: PathBuf,
    plan: Plan,
    settings: Settings,
    mode: Mode,
    /// Every run recorded so far.
    pub records: Vec<RunRecord>,
    /// Why a tier's script failed, by tier name.
    pub group_errors: BTreeMap<String, String>,
    boot_lines: Vec<String>,
    /// The counters scraped at the beginning of runs, by run id.
    counters_begin: BTreeMap<String, crate::metrics::CellCounters>,
    /// True once Ctrl-C stopped the run.
    pub interrupted: bool,
    /// Groups run again after a fault.
    pub retries: Vec<Retry>,
    /// The progress bar (hidden without `--progress`).
    pub pb: ProgressBar,
    host: serde_json::Value,
    provenance: Provenance,
    started: i64,
    clock: Instant,
}

fn progress_bar(opts: &Options) -> ProgressBar {
    let total = opts.plan.cells.len() * opts.settings.repeat;
    let pb = if opts.progress {
        ProgressBar::new(total as u64)
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} runs, ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb
}

impl Recorder {
    /// A recorder for `opts`' run, starting now.
    pub fn new(opts: &Options) -> Recorder {
        Recorder {
            dir: opts.out_dir.clone(),
            plan: opts.plan.clone(),
            settings: opts.settings.clone(),
            mode: opts.mode,
            records: Vec::new(),
            group_errors: BTreeMap::new(),
            boot_lines: Vec::new(),
            counters_begin: BTreeMap::new(),
            interrupted: false,
            retries: Vec::new(),
            pb: progress_bar(opts),
            host: opts.host.clone(),
            provenance: Provenance::capture(SCHEMA_VERSION),
            started: provenance::now_secs(),
            clock: Instant::now(),
        }
    }

    fn kind_of(&self, tier: &str, workload: &str) -> Option<Kind> {
        self.plan
            .cells
            .iter()
            .find(|c| c.tier.name() == tier && c.workload.name() == workload)
            .map(|c| c.workload.kind())
    }

    fn write_raw(&self, name: &str, data: &[u8]) -> Option<String> {
        let rel = format!("raw/{name}");
        match std::fs::write(self.dir.join(&rel), data) {
            Ok(()) => Some(rel),
            Err(e) => {
                tracing::warn!("writing {rel}: {e}");
                None
            }
        }
    }

    fn record(&mut self, r: RunRecord) {
        let line = match &r.outcome {
            Ok(_) => format!("{}.{}.{}: ok", r.tier, r.workload, r.rep),
            Err(e) => format!("{}.{}.{}: FAILED: {e}", r.tier, r.workload, r.rep),
        };
        if self.pb.is_hidden() {
            eprintln!("{line}");
        } else {
            self.pb.println(line);
        }
        self.pb.inc(1);
        self.records.push(r);
        if let Err(e) = self.write_results() {
            tracing::warn!("{e}");
        }
    }

    /// Takes in one console event.
    pub fn event(&mut self, ev: Event) {
        match ev {
            Event::Started(id) => self.pb.set_message(id),
            Event::Raw(id, data) if id == LAB_CHECK_ID => self.lab_check(data),
            Event::Raw(id, data) => self.raw_output(&id, data),
            Event::Boot(line) => self.boot_line(line),
            Event::Counters(c) if !c.end => {
                self.counters_begin.insert(c.id, c.totals);
            }
            Event::Counters(c) => self.counters_end(&c),
        }
    }

    /// A run's counters at its end: the difference to its beginning joins its record (which
    /// its output, printed before, created).
    fn counters_end(&mut self, c: &CountersLine) {
        let Some(begin) = self.counters_begin.remove(&c.id) else {
            return;
        };
        let Some((tier, workload, rep)) = script::split_id(&c.id) else {
            return;
        };
        let duration = self.settings.duration_s as f64;
        let Some(r) = self
            .records
            .iter_mut()
            .find(|r| r.tier == tier && r.workload == workload && r.rep == rep)
        else {
            return;
        };
        // Per fio I/O for block runs; per device request (frame) for net runs.
        let ios = match &r.outcome {
            Ok(Metrics::Fio(f)) => Some(f.iops * duration),
            _ => None,
        };
        r.counters = Some(RunCounters::between(&begin, &c.totals, ios));
        if let Err(e) = self.write_results() {
            tracing::warn!("{e}");
        }
    }

    /// The lab host's `vmm check --json` joins the host description.
    fn lab_check(&mut self, data: std::result::Result<Vec<u8>, String>) {
        let Ok(d) = data else { return };
        let v = serde_json::from_slice(&d).unwrap_or(serde_json::Value::Null);
        if let Some(h) = self.host.as_object_mut() {
            h.insert("lab_vmm_check".into(), v);
        }
    }

    /// A fio/iperf3 run's raw output: saved, parsed, recorded.
    fn raw_output(&mut self, id: &str, data: std::result::Result<Vec<u8>, String>) {
        let Some((tier, workload, rep)) = script::split_id(id) else {
            tracing::warn!("unexpected run id {id}");
            return;
        };
        let Some(kind) = self.kind_of(tier, workload) else {
            tracing::warn!("run {id} is not in the plan");
            return;
        };
        let (raw_file, outcome) = match data {
            Ok(d) => (self.write_raw(&format!("{id}.json"), &d), outcome(kind, &d)),
            Err(e) => (None, Err(e)),
        };
        self.record(RunRecord {
            tier: tier.into(),
            workload: workload.into(),
            rep,
            raw_file,
            outcome,
            counters: None,
        });
    }

    /// A `BOOT-INIT`/`BOOT-END` line; a `BOOT-END` completes the boot runs seen so far.
    fn boot_line(&mut self, line: String) {
        let end = line.starts_with("BOOT-END ");
        self.boot_lines.push(line);
        if !end {
            return;
        }
        let text = self.boot_lines.join("\n");
        self.boot_lines.clear();
        for s in boot::parse(&text) {
            let Some((tier, workload, rep)) = script::split_id(&s.vmm) else {
                continue;
            };
            let raw_file = self.write_raw(&format!("{}.txt", s.vmm), text.as_bytes());
            let outcome = if s.status != 0 {
                Err(format!("VMM exited with status {}", s.status))
            } else if !s.to_init_s.is_finite() {
                Err("the guest never reached init".to_string())
            } else {
                Ok(Metrics::Boot {
                    to_init_s: s.to_init_s,
                })
            };
            let (tier, workload) = (tier.to_string(), workload.to_string());
            self.record(RunRecord {
                tier,
                workload,
                rep,
                raw_file,
                outcome,
                counters: None,
            });
        }
    }

    /// The result set so far, with the run's provenance, clock and host.
    pub fn result_set(&self) -> ResultSet {
        let mut set = result_set(
            &self.plan,
            &self.records,
            &self.settings,
            self.mode,
            self.interrupted,
            &self.group_errors,
        );
        let elapsed = self.clock.elapsed().as_secs();
        set.provenance = self.provenance.clone();
        set.started_utc = Some(provenance::utc(self.started));
        set.finished_utc = Some(provenance::utc(self.started + elapsed as i64));
        set.wall_clock_s = Some(elapsed);
        set.host = self.host.clone();
        set.retries = self.retries.clone();
        set
    }

    /// Rewrites `results.json`; returns what it wrote.
    pub fn write_results(&self) -> Result<String> {
        let json = serde_json::to_string_pretty(&self.result_set())
            .map_err(|e| Error::Report(format!("results.json: {e}")))?;
        let path = self.dir.join("results.json");
        std::fs::write(&path, &json).map_err(io_err(format!("write {}", path.display())))?;
        Ok(json)
    }
}
