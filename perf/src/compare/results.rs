// SPDX-License-Identifier: Apache-2.0
//! Results: one record per run, cells summarised as median and spread, written as JSON and CSV.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::fio::FioMetrics;
use super::iperf::IperfMetrics;
use super::matrix::{Kind, PlannedCell, Tier};
use crate::provenance::Provenance;

/// What one run measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Metrics {
    /// fio.
    Fio(FioMetrics),
    /// iperf3.
    Iperf(IperfMetrics),
    /// Boot: seconds from VMM start to the guest's init.
    Boot {
        /// Boot-to-init, s.
        to_init_s: f64,
    },
}

/// One run of one cell.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    /// Tier name.
    pub tier: String,
    /// Workload name.
    pub workload: String,
    /// Repetition, from 1.
    pub rep: usize,
    /// Raw output file, relative to the results directory.
    pub raw_file: Option<String>,
    /// Metrics, or the reason the run failed.
    pub outcome: Result<Metrics, String>,
    /// What the VMM and backends counted over the run (guest tiers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<super::counters::RunCounters>,
}

impl RunRecord {
    /// Whether this is a run of `cell`.
    pub fn is_of(&self, cell: &PlannedCell) -> bool {
        self.tier == cell.tier.name() && self.workload == cell.workload.name()
    }
}

/// Median and spread of one metric over a cell's successful runs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// Median.
    pub median: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
}

impl Stat {
    /// The statistic of the finite values, if any.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Stat> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Stat {
            median: crate::boot::median(v.clone())?,
            min: v[0],
            max: v[v.len() - 1],
        })
    }
}

/// State of a cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", content = "reason", rename_all = "lowercase")]
pub enum CellStatus {
    /// At least one run succeeded (failed runs are listed in `failures`).
    Ok,
    /// Every run failed; the first reason.
    Failed(String),
    /// The tier is not available here.
    Missing(String),
    /// Not run (interrupted, or the tier's run ended early).
    Skipped(String),
}

/// Metric names, in CSV/report order, with units.
pub const METRICS: [(&str, &str); 10] = [
    ("iops", "IOPS"),
    ("bw_mib_s", "MiB/s"),
    ("clat_p50_us", "µs"),
    ("clat_p99_us", "µs"),
    ("clat_p999_us", "µs"),
    ("gbit_s", "Gbit/s"),
    ("retransmits", "count"),
    ("jitter_ms", "ms"),
    ("lost_percent", "%"),
    ("boot_to_init_s", "s"),
];

impl Metrics {
    /// The value of a metric named in [`METRICS`], if this run has it.
    pub fn get(&self, name: &str) -> Option<f64> {
        match (self, name) {
            (Metrics::Fio(f), "iops") => Some(f.iops),
            (Metrics::Fio(f), "bw_mib_s") => Some(f.bw_mib_s),
            (Metrics::Fio(f), "clat_p50_us") => f.clat_p50_us,
            (Metrics::Fio(f), "clat_p99_us") => f.clat_p99_us,
            (Metrics::Fio(f), "clat_p999_us") => f.clat_p999_us,
            (Metrics::Iperf(i), "gbit_s") => Some(i.gbit_s),
            (Metrics::Iperf(i), "retransmits") => i.retransmits.map(|v| v as f64),
            (Metrics::Iperf(i), "jitter_ms") => i.jitter_ms,
            (Metrics::Iperf(i), "lost_percent") => i.lost_percent,
            (Metrics::Boot { to_init_s }, "boot_to_init_s") => Some(*to_init_s),
            _ => None,
        }
    }
}

/// A cell: all runs of one tier × workload, summarised.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CellSummary {
    /// Tier name.
    pub tier: String,
    /// Workload name.
    pub workload: String,
    /// Workload kind.
    pub kind: Kind,
    /// State.
    pub status: CellStatus,
    /// Runs that succeeded / runs attempted.
    pub runs_ok: usize,
    /// Runs attempted.
    pub runs: usize,
    /// Runs planned (`--repeat`); more than `runs` after an interruption.
    #[serde(default)]
    pub planned: usize,
    /// Metric name → median/min/max over successful runs.
    pub stats: Vec<(String, Stat)>,
    /// Raw files of every run (relative to the results directory).
    pub raw_files: Vec<String>,
    /// Reasons of failed runs (`rep N: reason`).
    pub failures: Vec<String>,
}

impl CellSummary {
    /// Summarises `records` of the cell (tier, workload); `fallback` is the status when there
    /// is no record at all.
    pub fn build(
        tier: &str,
        workload: &str,
        kind: Kind,
        records: &[&RunRecord],
        fallback: CellStatus,
    ) -> CellSummary {
        let ok: Vec<&Metrics> = records
            .iter()
            .filter_map(|r| r.outcome.as_ref().ok())
            .collect();
        let failures: Vec<String> = records
            .iter()
            .filter_map(|r| {
                r.outcome
                    .as_ref()
                    .err()
                    .map(|e| format!("rep {}: {e}", r.rep))
            })
            .collect();
        let status = if !ok.is_empty() {
            CellStatus::Ok
        } else if let Some(r) = records.iter().find_map(|r| r.outcome.as_ref().err()) {
            CellStatus::Failed(r.clone())
        } else {
            fallback
        };
        let mut stats: Vec<(String, Stat)> = METRICS
            .iter()
            .filter_map(|(m, _)| {
                Stat::of(ok.iter().filter_map(|x| x.get(m))).map(|s| (m.to_string(), s))
            })
            .collect();
        let counted: Vec<&super::counters::RunCounters> = records
            .iter()
            .filter(|r| r.outcome.is_ok())
            .filter_map(|r| r.counters.as_ref())
            .collect();
        for (name, get) in super::counters::PER_IO_STATS {
            if let Some(s) = Stat::of(counted.iter().filter_map(|c| get(&c.per_io))) {
                stats.push((name.to_string(), s));
            }
        }
        CellSummary {
            tier: tier.into(),
            workload: workload.into(),
            kind,
            status,
            runs_ok: ok.len(),
            runs: records.len(),
            planned: records.len(),
            stats,
            raw_files: records.iter().filter_map(|r| r.raw_file.clone()).collect(),
            failures,
        }
    }

    /// The statistic of a metric.
    pub fn stat(&self, metric: &str) -> Option<Stat> {
        self.stats
            .iter()
            .find(|(m, _)| m == metric)
            .map(|(_, s)| *s)
    }

    /// Status word for tables.
    pub fn status_word(&self) -> &'static str {
        match self.status {
            CellStatus::Ok if self.runs_ok < self.runs.max(self.planned) => "partial",
            CellStatus::Ok => "ok",
            CellStatus::Failed(_) => "FAILED",
            CellStatus::Missing(_) => "missing",
            CellStatus::Skipped(_) => "skipped",
        }
    }

    /// The reason for a non-ok cell (first failure for partial cells); `interrupted` is the
    /// set's: whether missing runs were cut short by Ctrl-C or by the end of the group's script.
    pub fn reason(&self, interrupted: bool) -> String {
        match &self.status {
            CellStatus::Ok if self.failures.is_empty() && self.runs < self.planned => {
                let why = if interrupted {
                    "interrupted"
                } else {
                    "the group's script ended early"
                };
                format!("{} of {} runs done ({why})", self.runs, self.planned)
            }
            CellStatus::Ok => self.failures.first().cloned().unwrap_or_default(),
            CellStatus::Failed(r) | CellStatus::Missing(r) | CellStatus::Skipped(r) => r.clone(),
        }
    }
}

/// Layout version of `results.json`: 2 added the provenance fields, the run's start, wall
/// clock and host; files without a version are version 1 and still load.
pub const SCHEMA_VERSION: u32 = 2;

/// Everything `results.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResultSet {
    /// Schema version, source commit and command line.
    #[serde(flatten)]
    pub provenance: Provenance,
    /// When the run started, UTC `YYYY-MM-DD HH:MM:SS`.
    #[serde(default)]
    pub started_utc: Option<String>,
    /// When the results were last written, UTC (the end of the run once it has finished).
    #[serde(default)]
    pub finished_utc: Option<String>,
    /// Seconds from the start to `finished_utc`.
    #[serde(default)]
    pub wall_clock_s: Option<u64>,
    /// The host: CPU, kernel, `vmm check --json` here and (lab mode) inside the lab host.
    #[serde(default)]
    pub host: serde_json::Value,
    /// `direct` or `lab`.
    pub mode: String,
    /// Repetitions per cell.
    pub repeat: usize,
    /// Seconds per fio/iperf3 run.
    pub duration_s: u64,
    /// fio file size, MiB.
    pub size_mib: u64,
    /// Tiers that cannot run here, with the reason.
    pub missing_tiers: Vec<(String, String)>,
    /// Cell summaries in matrix order.
    pub cells: Vec<CellSummary>,
    /// Every run.
    pub runs: Vec<RunRecord>,
    /// True if the run was interrupted (Ctrl-C).
    pub interrupted: bool,
    /// Groups run a second time for their incomplete cells after a fault.
    #[serde(default)]
    pub retries: Vec<Retry>,
}

/// A group whose script ended early on a kernel fault or stall, run once more for its
/// incomplete cells (their partial runs are discarded).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    /// The group (`host` or a guest tier).
    pub group: String,
    /// How many of its cells ran again.
    pub cells: usize,
    /// The fault: the first fault line of its console, or the stall.
    pub reason: String,
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `results.csv`: one row per cell; median/min/max for every metric; the raw files.
pub fn csv(set: &ResultSet) -> String {
    let mut out = String::from("tier,workload,kind,status,reason,runs_ok,runs");
    for (m, _) in METRICS {
        let _ = write!(out, ",{m}_median,{m}_min,{m}_max");
    }
    out.push_str(",raw_files\n");
    for c in &set.cells {
        let kind = match c.kind {
            Kind::Block => "block",
            Kind::Net => "net",
            Kind::Boot => "boot",
        };
        let _ = write!(
            out,
            "{},{},{},{},{},{},{}",
            csv_field(&c.tier),
            csv_field(&c.workload),
            kind,
            c.status_word(),
            csv_field(&c.reason(set.interrupted)),
            c.runs_ok,
            c.runs
        );
        for (m, _) in METRICS {
            match c.stat(m) {
                Some(s) => {
                    let _ = write!(out, ",{},{},{}", s.median, s.min, s.max);
                }
                None => out.push_str(",,,"),
            }
        }
        let _ = writeln!(out, ",{}", csv_field(&c.raw_files.join(";")));
    }
    out
}

/// Tier names of a set, in [`Tier::ALL`] order, then unknown names.
pub fn tier_order(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = names.into_iter().collect();
    v.sort_by_key(|n| Tier::from_name(n).map_or(usize::MAX, |t| t as usize));
    v.dedup();
    v
}
