// SPDX-License-Identifier: Apache-2.0
//! `vmm-perf top`: a live per-queue table of the VMM and backends, from their `/metrics`
//! endpoints, refreshed every second.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use backends::metrics::scrape::{scrape, Samples};
use clap::Parser;
use minihttp::ListenAddr;
use perf::metrics::{table, top_rows};
use perf::Result;

#[derive(Parser)]
pub struct TopArgs {
    /// Metrics endpoints of the VMM and backends (127.0.0.1:PORT or unix:PATH), comma
    /// separated or repeated.
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    metrics: Vec<ListenAddr>,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Stop after this many refreshes (default: until interrupted).
    #[arg(long)]
    count: Option<u64>,
}

const HEADER: [&str; 8] = [
    "ENDPOINT", "DEVICE", "QUEUE", "IOPS", "MB/s", "p50", "p99", "INFLIGHT",
];

/// Refresh the table every `interval` until `count` refreshes (or forever).
pub fn top(a: TopArgs) -> Result<()> {
    let interval = Duration::from_secs_f64(a.interval.max(0.1));
    let redraw = std::io::stdout().is_terminal();
    let mut prev: Vec<Option<(Samples, Instant)>> = vec![None; a.metrics.len()];
    let mut refreshes = 0u64;
    loop {
        let started = Instant::now();
        let mut rows = Vec::new();
        let mut unreachable = Vec::new();
        for (addr, prev) in a.metrics.iter().zip(prev.iter_mut()) {
            match scrape(addr, Duration::from_secs(2)) {
                Ok(now) => {
                    let at = Instant::now();
                    let last = prev.as_ref();
                    let secs = last.map_or(1.0, |(_, t)| at.duration_since(*t).as_secs_f64());
                    rows.extend(top_rows(
                        &addr.to_string(),
                        last.map(|(s, _)| s),
                        &now,
                        secs,
                    ));
                    *prev = Some((now, at));
                }
                Err(e) => {
                    unreachable.push(format!("{addr}: {e}"));
                    *prev = None;
                }
            }
        }
        let mut out = String::new();
        if redraw {
            out.push_str("\x1b[H\x1b[2J");
        }
        out.push_str(&table(&HEADER, &rows));
        for u in unreachable {
            out.push_str(&format!("unreachable: {u}\n"));
        }
        out.push('\n');
        // A closed pipe ends the command quietly.
        if std::io::stdout().lock().write_all(out.as_bytes()).is_err() {
            return Ok(());
        }
        refreshes += 1;
        if a.count.is_some_and(|c| refreshes >= c) {
            return Ok(());
        }
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
    }
}
