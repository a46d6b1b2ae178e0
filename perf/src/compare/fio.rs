// SPDX-License-Identifier: Apache-2.0
//! fio `--output-format=json` parsing into typed metrics.
//!
//! fio may print error lines (e.g. `fio: pid=0, err=2/file:filesetup.c:174, func=open, ...`)
//! into its output file ahead of the JSON document: the document starts at the first `{`, and
//! the text before it is kept as context for the failure reason.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The parts of fio's JSON output this harness reads.
#[derive(Debug, Deserialize)]
pub struct FioOutput {
    /// One entry per job (per `numjobs` clone unless `group_reporting`).
    pub jobs: Vec<FioJob>,
}

/// One fio job.
#[derive(Debug, Deserialize)]
pub struct FioJob {
    /// `--name`.
    pub jobname: String,
    /// errno of the first error, 0 if none.
    pub error: i64,
    /// Read statistics.
    pub read: FioDir,
    /// Write statistics.
    pub write: FioDir,
}

/// Statistics of one direction.
#[derive(Debug, Deserialize)]
pub struct FioDir {
    /// Bytes transferred.
    pub io_bytes: u64,
    /// Bandwidth, bytes per second.
    pub bw_bytes: f64,
    /// I/Os per second.
    pub iops: f64,
    /// Completion latency.
    pub clat_ns: FioLat,
}

/// A latency distribution in nanoseconds.
#[derive(Debug, Deserialize)]
pub struct FioLat {
    /// Mean.
    pub mean: f64,
    /// Number of samples.
    #[serde(rename = "N", default)]
    pub n: u64,
    /// Percentiles keyed by fio's formatted percentage (`"99.900000"`); absent without samples.
    #[serde(default)]
    pub percentile: BTreeMap<String, f64>,
}

impl FioLat {
    /// The percentile `p` (e.g. 99.9) in microseconds, if fio reported it.
    pub fn percentile_us(&self, p: f64) -> Option<f64> {
        self.percentile
            .iter()
            .find(|(k, _)| k.parse::<f64>().is_ok_and(|v| (v - p).abs() < 1e-6))
            .map(|(_, ns)| ns / 1000.0)
    }
}

/// What one fio run measured (all jobs summed; latency from the direction and job that did the
/// most I/O, so a 70/30 mix reports read latency).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FioMetrics {
    /// Read + write IOPS.
    pub iops: f64,
    /// Read IOPS.
    pub read_iops: f64,
    /// Write IOPS.
    pub write_iops: f64,
    /// Read + write bandwidth, MiB/s.
    pub bw_mib_s: f64,
    /// Which direction the latency figures describe (`read` or `write`).
    pub lat_dir: String,
    /// Completion latency p50, µs.
    pub clat_p50_us: Option<f64>,
    /// Completion latency p99, µs.
    pub clat_p99_us: Option<f64>,
    /// Completion latency p99.9, µs.
    pub clat_p999_us: Option<f64>,
}

/// Parses a raw fio output file. `Err` is the reason the run counts as failed: no JSON, a job
/// with `error != 0`, or no completed I/O.
pub fn parse(raw: &[u8]) -> Result<FioMetrics, String> {
    let text = String::from_utf8_lossy(raw);
    let Some(start) = text.find('{') else {
        return Err(no_json(&text));
    };
    let prefix = text[..start].trim();
    let out: FioOutput = serde_json::from_str(&text[start..])
        .map_err(|e| format!("fio output is not valid JSON ({e}){}", context(prefix)))?;
    if out.jobs.is_empty() {
        return Err(format!("fio reported no jobs{}", context(prefix)));
    }
    if let Some(j) = out.jobs.iter().find(|j| j.error != 0) {
        return Err(format!(
            "fio job '{}' error {} ({}){}",
            j.jobname,
            j.error,
            std::io::Error::from_raw_os_error(j.error as i32),
            context(prefix)
        ));
    }
    let sum = |f: fn(&FioJob) -> f64| out.jobs.iter().map(f).sum::<f64>();
    let read_iops = sum(|j| j.read.iops);
    let write_iops = sum(|j| j.write.iops);
    let bytes: u64 = out
        .jobs
        .iter()
        .map(|j| j.read.io_bytes + j.write.io_bytes)
        .sum();
    if bytes == 0 {
        return Err(format!("fio completed no I/O{}", context(prefix)));
    }
    let (dir_name, lat) = out
        .jobs
        .iter()
        .flat_map(|j| [("read", &j.read), ("write", &j.write)])
        .max_by_key(|(_, d)| d.io_bytes)
        .map(|(n, d)| (n, &d.clat_ns))
        .ok_or_else(|| "fio reported no jobs".to_string())?;
    Ok(FioMetrics {
        iops: read_iops + write_iops,
        read_iops,
        write_iops,
        bw_mib_s: sum(|j| j.read.bw_bytes + j.write.bw_bytes) / (1024.0 * 1024.0),
        lat_dir: dir_name.to_string(),
        clat_p50_us: lat.percentile_us(50.0),
        clat_p99_us: lat.percentile_us(99.0),
        clat_p999_us: lat.percentile_us(99.9),
    })
}

fn context(prefix: &str) -> String {
    let first = prefix.lines().next().unwrap_or("").trim();
    if first.is_empty() {
        String::new()
    } else {
        format!(": {first}")
    }
}

fn no_json(text: &str) -> String {
    let t = text.trim();
    if t.is_empty() {
        "no JSON output (empty)".to_string()
    } else {
        let short: String = t.chars().take(200).collect();
        format!("no JSON output: {short}")
    }
}
