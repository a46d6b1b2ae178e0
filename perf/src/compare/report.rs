// SPDX-License-Identifier: Apache-2.0
//! `report.md`: how the run was made, the tiers, a summary matrix (tiers × workloads: medians
//! and ratios to the reference tier), a detail table and charts ([`super::chart`]) per kind of
//! workload, and the failed runs; and the terminal summary. Everything comes from the
//! [`ResultSet`] alone, so `vmm-perf report` renders the same bytes from `results.json`.

use std::fmt::Write as _;
use std::path::Path;

use super::chart::{BarChart, Series};
use super::host::host_sentence;
use super::matrix::{Kind, Tier};
use super::results::{tier_order, CellStatus, CellSummary, ResultSet, Stat};
use crate::{io_err, Result};

/// The headline metric of each kind of workload.
struct Headline {
    kind: Kind,
    metric: &'static str,
    unit: &'static str,
    precision: usize,
    title: &'static str,
}

const BLOCK: Headline = Headline {
    kind: Kind::Block,
    metric: "iops",
    unit: "IOPS",
    precision: 0,
    title: "Block (fio), IOPS",
};
const NET: Headline = Headline {
    kind: Kind::Net,
    metric: "gbit_s",
    unit: "Gbit/s",
    precision: 3,
    title: "Network (iperf3), Gbit/s",
};
const BOOT: Headline = Headline {
    kind: Kind::Boot,
    metric: "boot_to_init_s",
    unit: "s",
    precision: 2,
    title: "Boot to guest init, seconds",
};

fn fmt_stat(s: Option<Stat>, prec: usize) -> String {
    match s {
        Some(s) => format!("{:.p$} [{:.p$}–{:.p$}]", s.median, s.min, s.max, p = prec),
        None => "–".into(),
    }
}

fn fmt_med(s: Option<Stat>, prec: usize) -> String {
    s.map_or("–".into(), |s| format!("{:.p$}", s.median, p = prec))
}

/// A ratio to two significant digits below 1 (0.0067, 0.26), two decimals above.
pub fn fmt_ratio(r: f64) -> String {
    if !(r.is_finite() && r > 0.0) || r >= 1.0 {
        return format!("{r:.2}");
    }
    let decimals = (1 - r.log10().floor() as i32).max(2) as usize;
    format!("{r:.decimals$}")
}

/// The reference cell of `c` (same workload on the reference tier) in `set`.
fn reference<'a>(set: &'a ResultSet, c: &CellSummary) -> Option<&'a CellSummary> {
    let r = Tier::from_name(&c.tier)?.reference(c.kind)?;
    set.cells
        .iter()
        .find(|x| x.tier == r.name() && x.workload == c.workload)
}

/// `c`'s median over its reference's, and the reference tier's name.
fn ratio_of<'a>(set: &'a ResultSet, c: &CellSummary, metric: &str) -> Option<(f64, &'a str)> {
    let r = reference(set, c)?;
    match (c.stat(metric), r.stat(metric)) {
        (Some(a), Some(b)) if b.median > 0.0 => Some((a.median / b.median, r.tier.as_str())),
        _ => None,
    }
}

fn ratio_cell(set: &ResultSet, c: &CellSummary, metric: &str) -> String {
    ratio_of(set, c, metric).map_or("–".into(), |(r, t)| format!("{} (vs {t})", fmt_ratio(r)))
}

fn status_cell(set: &ResultSet, c: &CellSummary) -> String {
    match c.status_word() {
        "ok" => format!("ok {}/{}", c.runs_ok, c.runs.max(c.planned)),
        w => {
            let r = c
                .reason(set.interrupted)
                .replace('|', "\\|")
                .replace('\n', " ");
            format!("**{w}** {}/{}: {r}", c.runs_ok, c.runs.max(c.planned))
        }
    }
}

fn is_missing(c: &CellSummary) -> bool {
    matches!(c.status, CellStatus::Missing(_))
}

/// The cells of `kind` that were run (not missing), in result order.
fn measured(set: &ResultSet, kind: Kind) -> Vec<&CellSummary> {
    set.cells
        .iter()
        .filter(|c| c.kind == kind && !is_missing(c))
        .collect()
}

/// Workload names of `cells`, each once, in first-seen order.
fn workloads(cells: &[&CellSummary]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for c in cells {
        if !v.contains(&c.workload) {
            v.push(c.workload.clone());
        }
    }
    v
}

fn cell<'a>(cells: &[&'a CellSummary], tier: &str, workload: &str) -> Option<&'a CellSummary> {
    cells
        .iter()
        .find(|c| c.tier == tier && c.workload == workload)
        .copied()
}

/// Writes `report.md` and its SVG charts into `dir`.
pub fn write_report(dir: &Path, set: &ResultSet) -> Result<()> {
    let mut md = header(set);
    md.push_str(&tiers_section(set));
    md.push_str(&summary_section(set));
    md.push_str(&block_section(dir, set)?);
    md.push_str(&net_section(dir, set)?);
    md.push_str(&boot_section(dir, set)?);
    md.push_str(&retries_section(set));
    md.push_str(&failed_section(set));
    let path = dir.join("report.md");
    std::fs::write(&path, md).map_err(io_err(format!("write {}", path.display())))
}

/// Title, when and how the run was made, the host, and how to read the numbers.
fn header(set: &ResultSet) -> String {
    let mut md = format!("# I/O comparison: {} mode\n\n", set.mode);
    let when = match (&set.started_utc, &set.finished_utc) {
        (Some(a), Some(b)) => format!("Run {a} – {} UTC", b.get(11..).unwrap_or(b)),
        (Some(a), None) => format!("Run {a} UTC"),
        _ => "Run (time not recorded)".into(),
    };
    let wall = set.wall_clock_s.map_or(String::new(), |s| {
        format!(" ({s} s = {:.1} min wall clock)", s as f64 / 60.0)
    });
    let p = &set.provenance;
    let _ = writeln!(md, "{when}{wall}, source {}.\n", p.source());
    if !p.command_line.is_empty() {
        let _ = writeln!(md, "```sh\n{}\n```\n", p.command());
    }
    let _ = writeln!(md, "{}\n", host_sentence(&set.host));
    let _ = writeln!(
        md,
        "Each cell: {} runs of {} s (fio file/region {} MiB); values are **median [min–max]** over the \
         successful runs. Ratios divide a tier's median by the median of its reference tier measured in \
         the same run: block and network cells against `native` (`vfio-nvme`'s block cells against \
         `native-nvme`, the device it passes through), boot cells against `qemu`.\n",
        set.repeat, set.duration_s, set.size_mib
    );
    md.push_str(
        "Machine-readable: [results.json](results.json) (every run; `vmm-perf report results.json --out DIR` \
         renders this report from it again) and [results.csv](results.csv) (one row per cell). The run also \
         saved each run's raw fio/iperf3 JSON or boot timing lines as `raw/<tier>.<workload>.<rep>.json|txt` \
         and each group's script and console as `script-<group>.sh`, `console-<group>.log`.\n\n",
    );
    if set.mode == "lab" {
        md.push_str(
            "Lab mode: the guests run on nested KVM inside a TCG-emulated lab host on a shared machine, \
             where every guest exit costs hundreds of microseconds. Absolute numbers are not meaningful; \
             compare ratios within this run.\n\n",
        );
    }
    if set.interrupted {
        md.push_str("**Interrupted (Ctrl-C):** cells not yet run are listed as skipped.\n\n");
    }
    md
}

fn tiers_section(set: &ResultSet) -> String {
    let mut md = String::from("## Tiers\n\n| tier | I/O path | status |\n|---|---|---|\n");
    for t in tier_order(set.cells.iter().map(|c| c.tier.clone())) {
        let status = match set.missing_tiers.iter().find(|(n, _)| *n == t) {
            None => "available".to_string(),
            Some((_, r)) if set.cells.iter().any(|c| c.tier == t && !is_missing(c)) => {
                format!("available, **partly missing**: {r}")
            }
            Some((_, r)) => format!("**missing**: {r}"),
        };
        let path = Tier::from_name(&t).map_or("", Tier::path);
        let _ = writeln!(md, "| {t} | {path} | {status} |");
    }
    md
}

/// The headline matrix of each kind: tiers down, workloads across, medians with ratios.
fn summary_section(set: &ResultSet) -> String {
    let mut md = String::from(
        "\n## Summary\n\nMedian per cell; in parentheses the ratio to the reference tier (see above).\n",
    );
    for h in [BLOCK, NET, BOOT] {
        let cells: Vec<&CellSummary> = set.cells.iter().filter(|c| c.kind == h.kind).collect();
        if cells.iter().all(|c| is_missing(c)) {
            continue;
        }
        let ws = workloads(&cells);
        let _ = write!(md, "\n**{}**\n\n| tier |", h.title);
        for w in &ws {
            let _ = write!(md, " {w} |");
        }
        let _ = writeln!(md, "\n|---|{}", "---|".repeat(ws.len()));
        for t in tier_order(cells.iter().map(|c| c.tier.clone())) {
            let _ = write!(md, "| {t} |");
            for w in &ws {
                let text = cell(&cells, &t, w).map_or("–".into(), |c| summary_cell(set, c, &h));
                let _ = write!(md, " {text} |");
            }
            md.push('\n');
        }
        if cells.iter().any(|c| c.status_word() == "partial") {
            md.push_str(
                "\n† fewer successful runs than planned (see the status in the tables below).\n",
            );
        }
    }
    md
}

fn summary_cell(set: &ResultSet, c: &CellSummary, h: &Headline) -> String {
    let Some(s) = c.stat(h.metric) else {
        return match &c.status {
            CellStatus::Missing(_) => "missing".into(),
            CellStatus::Skipped(_) => "skipped".into(),
            _ => "FAILED".into(),
        };
    };
    let mut v = format!("{:.p$}", s.median, p = h.precision);
    if let Some((r, _)) = ratio_of(set, c, h.metric) {
        let _ = write!(v, " ({})", fmt_ratio(r));
    }
    if c.status_word() == "partial" {
        v.push_str(" †");
    }
    v
}

/// "Not measured" for the kind's missing tiers.
fn missing_note(set: &ResultSet, kind: Kind) -> String {
    let tiers = tier_order(
        set.cells
            .iter()
            .filter(|c| c.kind == kind && is_missing(c))
            .map(|c| c.tier.clone()),
    );
    if tiers.is_empty() {
        String::new()
    } else {
        format!(
            "\nNot measured (tier missing, see Tiers): {}.\n",
            tiers.join(", ")
        )
    }
}

fn embed(md: &mut String, alt: &str, file: &str) {
    let _ = writeln!(md, "\n![{alt}]({file})");
}

fn block_section(dir: &Path, set: &ResultSet) -> Result<String> {
    let cells = measured(set, Kind::Block);
    if cells.is_empty() {
        return Ok(String::new());
    }
    let counted = has_counters(&cells);
    let mut md = String::from(
        "\n## Block (fio)\n\nLatency is completion latency (clat) of the direction that moved the most data \
         (read for the 70/30 mix).\n\n",
    );
    md.push_str(&counters_note(counted));
    md.push_str(&table_head(
        &[
            "tier",
            "workload",
            "IOPS",
            "MiB/s",
            "p50 µs",
            "p99 µs",
            "p99.9 µs",
            "IOPS ratio",
        ],
        counted,
    ));
    for c in &cells {
        let mut row = vec![
            c.tier.clone(),
            c.workload.clone(),
            fmt_stat(c.stat("iops"), 0),
            fmt_stat(c.stat("bw_mib_s"), 1),
            fmt_stat(c.stat("clat_p50_us"), 1),
            fmt_stat(c.stat("clat_p99_us"), 1),
            fmt_stat(c.stat("clat_p999_us"), 1),
            ratio_cell(set, c, "iops"),
        ];
        push_counters(&mut row, c, counted);
        row.push(status_cell(set, c));
        let _ = writeln!(md, "| {} |", row.join(" | "));
    }
    md.push_str(&missing_note(set, Kind::Block));
    let charts = [
        (
            "IOPS",
            by_workload(&cells, "iops", "fio IOPS per tier (median)", "IOPS"),
            "iops.svg",
        ),
        (
            "IOPS ratio",
            ratio_by_workload(set, &cells, "iops", "fio IOPS ÷ the reference tier's IOPS"),
            "iops-ratio.svg",
        ),
        (
            "p50 latency",
            by_workload(
                &cells,
                "clat_p50_us",
                "fio p50 completion latency per tier (median)",
                "µs",
            ),
            "latency-p50.svg",
        ),
        (
            "p99 latency",
            by_workload(
                &cells,
                "clat_p99_us",
                "fio p99 completion latency per tier (median)",
                "µs",
            ),
            "latency-p99.svg",
        ),
    ];
    draw_charts(dir, &mut md, charts)?;
    Ok(md)
}

fn net_section(dir: &Path, set: &ResultSet) -> Result<String> {
    let cells = measured(set, Kind::Net);
    if cells.is_empty() {
        return Ok(String::new());
    }
    let counted = has_counters(&cells);
    let mut md = String::from("\n## Network (iperf3)\n\n");
    md.push_str(&counters_note(counted));
    md.push_str(&table_head(
        &[
            "tier",
            "workload",
            "Gbit/s",
            "retransmits",
            "jitter ms",
            "lost %",
            "ratio",
        ],
        counted,
    ));
    for c in &cells {
        let mut row = vec![
            c.tier.clone(),
            c.workload.clone(),
            fmt_stat(c.stat("gbit_s"), 3),
            fmt_med(c.stat("retransmits"), 0),
            fmt_med(c.stat("jitter_ms"), 3),
            fmt_med(c.stat("lost_percent"), 2),
            ratio_cell(set, c, "gbit_s"),
        ];
        push_counters(&mut row, c, counted);
        row.push(status_cell(set, c));
        let _ = writeln!(md, "| {} |", row.join(" | "));
    }
    md.push_str(&missing_note(set, Kind::Net));
    let charts = [
        (
            "Throughput",
            by_workload(
                &cells,
                "gbit_s",
                "iperf3 throughput per tier (median)",
                "Gbit/s",
            ),
            "network.svg",
        ),
        (
            "Throughput ratio",
            ratio_by_workload(set, &cells, "gbit_s", "iperf3 throughput ÷ native's"),
            "network-ratio.svg",
        ),
    ];
    draw_charts(dir, &mut md, charts)?;
    Ok(md)
}

/// Whether any of `cells` has the VMM's and backends' counters ([`super::counters`]).
fn has_counters(cells: &[&CellSummary]) -> bool {
    cells
        .iter()
        .any(|c| c.stat("notifications_per_io").is_some() || c.stat("cpu_us_per_io").is_some())
}

/// What the counter columns mean, when a table has them.
fn counters_note(counted: bool) -> String {
    if !counted {
        return String::new();
    }
    "notif/IO: used-buffer notifications (interrupts) the VMM's or backend's queues sent per \
     I/O (per fio I/O; per virtio request for iperf3); CPU µs/IO: CPU time of the VMM (its vCPUs \
     included) and the backend per I/O; both medians over the runs.\n\n"
        .into()
}

/// A table's header (with the counter columns when `counted`) and its rule.
fn table_head(columns: &[&str], counted: bool) -> String {
    let mut cols: Vec<&str> = columns.to_vec();
    if counted {
        cols.extend(["notif/IO", "CPU µs/IO"]);
    }
    cols.push("status");
    format!("| {} |\n|{}\n", cols.join(" | "), "---|".repeat(cols.len()))
}

/// The counter cells of a row, when the table has them.
fn push_counters(row: &mut Vec<String>, c: &CellSummary, counted: bool) {
    if counted {
        row.push(fmt_med(c.stat("notifications_per_io"), 2));
        row.push(fmt_med(c.stat("cpu_us_per_io"), 1));
    }
}

fn boot_section(dir: &Path, set: &ResultSet) -> Result<String> {
    let cells = measured(set, Kind::Boot);
    if cells.is_empty() {
        return Ok(String::new());
    }
    let mut md = String::from(
        "\n## Boot to guest init\n\n| tier | seconds | ratio | status |\n|---|---|---|---|\n",
    );
    for c in &cells {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            c.tier,
            fmt_stat(c.stat("boot_to_init_s"), 2),
            ratio_cell(set, c, "boot_to_init_s"),
            status_cell(set, c),
        );
    }
    md.push_str(&missing_note(set, Kind::Boot));
    let chart = by_workload(
        &cells,
        "boot_to_init_s",
        "Boot to guest init per tier (median)",
        "s",
    );
    draw_charts(dir, &mut md, [("Boot", chart, "boot.svg")])?;
    Ok(md)
}

/// Renders the charts that have data and embeds each once.
fn draw_charts<const N: usize>(
    dir: &Path,
    md: &mut String,
    charts: [(&str, BarChart, &str); N],
) -> Result<()> {
    for (alt, chart, file) in charts {
        if chart.has_data() {
            chart.render(&dir.join(file))?;
            embed(md, alt, file);
        }
    }
    Ok(())
}

/// A tier's colour: its place in [`Tier::ALL`].
fn tier_color(name: &str) -> usize {
    Tier::from_name(name).map_or(Tier::ALL.len(), |t| t as usize)
}

/// One series per tier of `cells` that has a value: `value` of its cell in each group.
fn series_by_tier(
    cells: &[&CellSummary],
    groups: &[String],
    value: impl Fn(&CellSummary) -> Option<f64>,
) -> Vec<Series> {
    tier_order(cells.iter().map(|c| c.tier.clone()))
        .into_iter()
        .map(|t| Series {
            values: groups
                .iter()
                .map(|w| cell(cells, &t, w).and_then(&value))
                .collect(),
            color: tier_color(&t),
            name: t,
        })
        .filter(|s| s.values.iter().any(Option::is_some))
        .collect()
}

/// Workloads across, one bar per tier: the tiers' medians of `metric`.
fn by_workload(cells: &[&CellSummary], metric: &str, title: &str, unit: &str) -> BarChart {
    let groups = workloads(cells);
    let series = series_by_tier(cells, &groups, |c| c.stat(metric).map(|s| s.median));
    BarChart {
        title: title.into(),
        y_label: unit.into(),
        groups,
        series,
        reference: None,
    }
}

/// Workloads across, one bar per non-reference tier: its median over its reference's.
fn ratio_by_workload(
    set: &ResultSet,
    cells: &[&CellSummary],
    metric: &str,
    title: &str,
) -> BarChart {
    let groups = workloads(cells);
    let series = series_by_tier(cells, &groups, |c| ratio_of(set, c, metric).map(|r| r.0));
    BarChart {
        title: title.into(),
        y_label: "ratio".into(),
        groups,
        series,
        reference: Some((1.0, "= reference".into())),
    }
}

fn retries_section(set: &ResultSet) -> String {
    if set.retries.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\n## Retried groups\n\nA group whose script ended early on a kernel fault or a stall of the lab \
         ran once more for its incomplete cells; their runs from the first attempt were discarded.\n\n",
    );
    for r in &set.retries {
        let _ = writeln!(
            md,
            "- {}: {} cell(s) after `{}` (second attempt: `script-{}-retry.sh`, `console-{}-retry.log`)",
            r.group,
            r.cells,
            r.reason.replace('`', "'"),
            r.group,
            r.group
        );
    }
    md
}

fn failed_section(set: &ResultSet) -> String {
    let failed: Vec<&CellSummary> = set
        .cells
        .iter()
        .filter(|c| !c.failures.is_empty())
        .collect();
    if failed.is_empty() {
        return String::new();
    }
    let mut md = String::from("\n## Failed runs\n\n");
    for c in failed {
        for f in &c.failures {
            let _ = writeln!(
                md,
                "- {} / {}: {}",
                c.tier,
                c.workload,
                f.replace('\n', " ")
            );
        }
    }
    md
}

/// The terminal summary: one line per cell with its main metric.
pub fn summary_table(set: &ResultSet) -> String {
    let mut o = format!(
        "{:<15} {:<22} {:>9} {:>26} {:>12} {:>12}\n",
        "tier", "workload", "status", "median [min-max]", "unit", "p99 µs"
    );
    for c in set.cells.iter().filter(|c| !is_missing(c)) {
        let h = match c.kind {
            Kind::Block => BLOCK,
            Kind::Net => NET,
            Kind::Boot => BOOT,
        };
        let val = match c.stat(h.metric) {
            Some(s) => format!(
                "{:.p$} [{:.p$}-{:.p$}]",
                s.median,
                s.min,
                s.max,
                p = h.precision
            ),
            None => c.reason(set.interrupted).chars().take(60).collect(),
        };
        let _ = writeln!(
            o,
            "{:<15} {:<22} {:>9} {:>26} {:>12} {:>12}",
            c.tier,
            c.workload,
            c.status_word(),
            val,
            h.unit,
            fmt_med(c.stat("clat_p99_us"), 1)
        );
    }
    for (t, r) in &set.missing_tiers {
        let _ = writeln!(o, "{t:<15} MISSING: {r}");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_keep_two_significant_digits() {
        let got: Vec<String> = [0.0067, 0.0701, 0.26, 0.999, 1.0, 3.456]
            .iter()
            .map(|r| fmt_ratio(*r))
            .collect();
        assert_eq!(got, ["0.0067", "0.070", "0.26", "1.00", "1.00", "3.46"]);
    }
}
