//! `report.md` with tables and SVG bar charts, and the terminal summary.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use super::matrix::{Kind, Tier};
use super::results::{tier_order, CellStatus, CellSummary, ResultSet, Stat};
use crate::{io_err, Error, Result};

fn fmt_stat(s: Option<Stat>, prec: usize) -> String {
    match s {
        Some(s) => format!("{:.p$} [{:.p$}–{:.p$}]", s.median, s.min, s.max, p = prec),
        None => "–".into(),
    }
}

fn fmt_med(s: Option<Stat>, prec: usize) -> String {
    s.map_or("–".into(), |s| format!("{:.p$}", s.median, p = prec))
}

/// The reference cell of `c` (same workload on the reference tier) in `set`.
fn reference<'a>(set: &'a ResultSet, c: &CellSummary) -> Option<&'a CellSummary> {
    let r = Tier::from_name(&c.tier)?.reference(c.kind)?;
    set.cells
        .iter()
        .find(|x| x.tier == r.name() && x.workload == c.workload)
}

fn ratio(set: &ResultSet, c: &CellSummary, metric: &str) -> String {
    let Some(r) = reference(set, c) else {
        return "–".into();
    };
    match (c.stat(metric), r.stat(metric)) {
        (Some(a), Some(b)) if b.median > 0.0 => {
            format!("{:.2} (vs {})", a.median / b.median, r.tier)
        }
        _ => "–".into(),
    }
}

fn raw_links(c: &CellSummary) -> String {
    if c.raw_files.is_empty() {
        return "–".into();
    }
    c.raw_files
        .iter()
        .map(|f| format!("[{}]({f})", f.rsplit('/').next().unwrap_or(f)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn status_cell(c: &CellSummary) -> String {
    match c.status_word() {
        "ok" => format!("ok {}/{}", c.runs_ok, c.runs.max(c.planned)),
        w => {
            let r = c.reason().replace('|', "\\|").replace('\n', " ");
            format!("**{w}** {}/{}: {r}", c.runs_ok, c.runs.max(c.planned))
        }
    }
}

/// Writes `report.md` and its SVG charts into `dir`; `host` is a one-paragraph host summary.
pub fn write_report(dir: &Path, set: &ResultSet, host: &str) -> Result<()> {
    let mut md = String::new();
    let _ = writeln!(md, "# I/O comparison: {} mode\n", set.mode);
    let _ = writeln!(
        md,
        "{host}\n\nEach cell: {} runs of {} s (fio file/region {} MiB); values are **median [min–max]** over the successful runs. \
         Ratios divide a tier's median by the reference tier's median measured in the same invocation. \
         Every run's raw fio/iperf3 JSON (or boot timing lines) is linked in the last column, relative to this file.\n",
        set.repeat, set.duration_s, set.size_mib
    );
    if set.mode == "lab" {
        md.push_str("Lab mode: nested KVM inside a TCG-emulated host on a shared machine. Absolute numbers are not meaningful; compare ratios within this run.\n\n");
    }
    if set.interrupted {
        md.push_str("**Interrupted (Ctrl-C):** cells not yet run are listed as skipped.\n\n");
    }
    md.push_str("## Tiers\n\n| tier | status |\n|---|---|\n");
    let tiers = tier_order(set.cells.iter().map(|c| c.tier.clone()));
    for t in &tiers {
        let status = set.missing_tiers.iter().find(|(n, _)| n == t).map_or(
            "available".to_string(),
            |(_, r)| {
                let partly = set
                    .cells
                    .iter()
                    .any(|c| &c.tier == t && !matches!(c.status, CellStatus::Missing(_)));
                if partly {
                    format!("available, **partly missing**: {r}")
                } else {
                    format!("**missing**: {r}")
                }
            },
        );
        let _ = writeln!(md, "| {t} | {status} |");
    }
    let of_kind = |k: Kind| {
        set.cells
            .iter()
            .filter(move |c| c.kind == k && !matches!(c.status, CellStatus::Missing(_)))
    };
    let missing_note = |k: Kind| {
        let mut t: Vec<&str> = set
            .cells
            .iter()
            .filter(|c| c.kind == k && matches!(c.status, CellStatus::Missing(_)))
            .map(|c| c.tier.as_str())
            .collect();
        t.dedup();
        if t.is_empty() {
            String::new()
        } else {
            format!(
                "\nNot measured (tier missing, see Tiers): {}.\n",
                t.join(", ")
            )
        }
    };

    if of_kind(Kind::Block).next().is_some() {
        md.push_str("\n## Block (fio)\n\nLatency is completion latency (clat) of the direction that moved the most data (read for the 70/30 mix).\n\n");
        md.push_str("| tier | workload | IOPS | MiB/s | p50 µs | p99 µs | p99.9 µs | IOPS ratio | status | raw |\n|---|---|---|---|---|---|---|---|---|---|\n");
        for c in of_kind(Kind::Block) {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.tier,
                c.workload,
                fmt_stat(c.stat("iops"), 0),
                fmt_stat(c.stat("bw_mib_s"), 1),
                fmt_stat(c.stat("clat_p50_us"), 1),
                fmt_stat(c.stat("clat_p99_us"), 1),
                fmt_stat(c.stat("clat_p999_us"), 1),
                ratio(set, c, "iops"),
                status_cell(c),
                raw_links(c)
            );
        }
        md.push_str(&missing_note(Kind::Block));
        md.push_str("\n![IOPS](iops.svg)\n\n![Bandwidth](bandwidth.svg)\n\n");
        chart_by_workload(
            dir,
            set,
            Kind::Block,
            "iops",
            "IOPS per tier (median)",
            "IOPS",
            "iops.svg",
        )?;
        chart_by_workload(
            dir,
            set,
            Kind::Block,
            "bw_mib_s",
            "Bandwidth per tier (median)",
            "MiB/s",
            "bandwidth.svg",
        )?;
        let mut workloads: Vec<String> = of_kind(Kind::Block).map(|c| c.workload.clone()).collect();
        workloads.dedup();
        for w in workloads {
            let file = format!("latency-{w}.svg");
            if latency_chart(dir, set, &w, &file)? {
                let _ = writeln!(md, "![latency {w}]({file})\n");
            }
        }
    }
    if of_kind(Kind::Net).next().is_some() {
        md.push_str("\n## Network (iperf3)\n\n| tier | workload | Gbit/s | retransmits | jitter ms | lost % | ratio | status | raw |\n|---|---|---|---|---|---|---|---|---|\n");
        for c in of_kind(Kind::Net) {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.tier,
                c.workload,
                fmt_stat(c.stat("gbit_s"), 3),
                fmt_med(c.stat("retransmits"), 0),
                fmt_med(c.stat("jitter_ms"), 3),
                fmt_med(c.stat("lost_percent"), 2),
                ratio(set, c, "gbit_s"),
                status_cell(c),
                raw_links(c)
            );
        }
        md.push_str(&missing_note(Kind::Net));
        md.push_str("\n![Throughput](network.svg)\n");
        chart_by_workload(
            dir,
            set,
            Kind::Net,
            "gbit_s",
            "iperf3 throughput per tier (median)",
            "Gbit/s",
            "network.svg",
        )?;
    }
    if of_kind(Kind::Boot).next().is_some() {
        md.push_str("\n## Boot to guest init\n\n| tier | seconds | ratio | status | raw |\n|---|---|---|---|---|\n");
        for c in of_kind(Kind::Boot) {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                c.tier,
                fmt_stat(c.stat("boot_to_init_s"), 2),
                ratio(set, c, "boot_to_init_s"),
                status_cell(c),
                raw_links(c)
            );
        }
        md.push_str(&missing_note(Kind::Boot));
        md.push_str("\n![Boot](boot.svg)\n");
        chart_by_workload(
            dir,
            set,
            Kind::Boot,
            "boot_to_init_s",
            "Boot to guest init (median)",
            "s",
            "boot.svg",
        )?;
    }
    let failed: Vec<&CellSummary> = set
        .cells
        .iter()
        .filter(|c| !c.failures.is_empty())
        .collect();
    if !failed.is_empty() {
        md.push_str("\n## Failed runs\n\n");
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
    }
    let path = dir.join("report.md");
    std::fs::write(&path, md).map_err(io_err(format!("write {}", path.display())))
}

const COLORS: [RGBColor; 9] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
];

fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::Report(format!("plot: {e}"))
}

/// A grouped bar chart: one group per entry of `groups`, one bar per series.
pub fn grouped_bars(
    path: &Path,
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[(String, Vec<Option<f64>>)],
) -> Result<()> {
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten())
        .fold(0.0f64, |a, &b| a.max(b));
    let max = if max > 0.0 { max * 1.15 } else { 1.0 };
    let n_series = series.len().max(1);
    let longest = groups.iter().map(|g| g.chars().count()).max().unwrap_or(0);
    let per_group = (30 + 22 * n_series).max(longest * 7 + 20);
    let width = (160 + groups.len() * per_group).clamp(640, 2400) as u32;
    let root = SVGBackend::new(path, (width, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..groups.len().max(1) as f64, 0f64..max)
        .map_err(plot_err)?;
    let names = groups.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(y_label)
        .y_label_formatter(&|v| {
            if max >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        })
        .x_labels(groups.len().max(1) * 2 + 1)
        .x_label_formatter(&|x| {
            let f = x - x.floor();
            if (f - 0.5).abs() < 0.01 {
                names.get(x.floor() as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .draw()
        .map_err(plot_err)?;
    let bar = 0.8 / n_series as f64;
    for (si, (name, values)) in series.iter().enumerate() {
        let color = COLORS[si % COLORS.len()];
        chart
            .draw_series(values.iter().enumerate().filter_map(|(gi, v)| {
                let v = (*v)?;
                let x0 = gi as f64 + 0.1 + si as f64 * bar;
                Some(Rectangle::new(
                    [(x0, 0.0), (x0 + bar * 0.9, v)],
                    color.filled(),
                ))
            }))
            .map_err(plot_err)?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)
}

fn chart_by_workload(
    dir: &Path,
    set: &ResultSet,
    kind: Kind,
    metric: &str,
    title: &str,
    y: &str,
    file: &str,
) -> Result<()> {
    let cells: Vec<&CellSummary> = set.cells.iter().filter(|c| c.kind == kind).collect();
    let mut groups: Vec<String> = Vec::new();
    for c in &cells {
        if !groups.contains(&c.workload) {
            groups.push(c.workload.clone());
        }
    }
    let tiers = tier_order(cells.iter().map(|c| c.tier.clone()));
    let series: Vec<(String, Vec<Option<f64>>)> = tiers
        .iter()
        .map(|t| {
            let v = groups
                .iter()
                .map(|w| {
                    cells
                        .iter()
                        .find(|c| &c.tier == t && &c.workload == w)
                        .and_then(|c| c.stat(metric))
                        .map(|s| s.median)
                })
                .collect();
            (t.clone(), v)
        })
        .filter(|(_, v): &(String, Vec<Option<f64>>)| v.iter().any(Option::is_some))
        .collect();
    grouped_bars(&dir.join(file), title, y, &groups, &series)
}

/// Latency percentiles of one workload per tier; false if no tier has data.
fn latency_chart(dir: &Path, set: &ResultSet, workload: &str, file: &str) -> Result<bool> {
    let cells: Vec<&CellSummary> = set
        .cells
        .iter()
        .filter(|c| {
            c.kind == Kind::Block && c.workload == workload && c.stat("clat_p50_us").is_some()
        })
        .collect();
    if cells.is_empty() {
        return Ok(false);
    }
    let groups: Vec<String> = cells.iter().map(|c| c.tier.clone()).collect();
    let series: Vec<(String, Vec<Option<f64>>)> = [
        ("p50", "clat_p50_us"),
        ("p99", "clat_p99_us"),
        ("p99.9", "clat_p999_us"),
    ]
    .iter()
    .map(|(n, m)| {
        (
            n.to_string(),
            cells.iter().map(|c| c.stat(m).map(|s| s.median)).collect(),
        )
    })
    .collect();
    grouped_bars(
        &dir.join(file),
        &format!("{workload}: completion latency percentiles (median of runs)"),
        "µs",
        &groups,
        &series,
    )?;
    Ok(true)
}

/// The terminal summary: one line per cell with its main metric.
pub fn summary_table(set: &ResultSet) -> String {
    let mut o = format!(
        "{:<15} {:<22} {:>9} {:>26} {:>12} {:>12}\n",
        "tier", "workload", "status", "median [min-max]", "unit", "p99 µs"
    );
    for c in set
        .cells
        .iter()
        .filter(|c| !matches!(c.status, CellStatus::Missing(_)))
    {
        let (metric, unit, prec) = match c.kind {
            Kind::Block => ("iops", "IOPS", 0),
            Kind::Net => ("gbit_s", "Gbit/s", 3),
            Kind::Boot => ("boot_to_init_s", "s", 2),
        };
        let val = match c.stat(metric) {
            Some(s) => format!("{:.p$} [{:.p$}-{:.p$}]", s.median, s.min, s.max, p = prec),
            None => c.reason().chars().take(60).collect(),
        };
        let _ = writeln!(
            o,
            "{:<15} {:<22} {:>9} {:>26} {:>12} {:>12}",
            c.tier,
            c.workload,
            c.status_word(),
            val,
            unit,
            fmt_med(c.stat("clat_p99_us"), 1)
        );
    }
    for (t, r) in &set.missing_tiers {
        let _ = writeln!(o, "{t:<15} MISSING: {r}");
    }
    o
}
