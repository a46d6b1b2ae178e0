// SPDX-License-Identifier: Apache-2.0
//! iperf3 `-J` parsing into typed metrics. A run with an `"error"` field (e.g. "unable to
//! connect to server: Connection refused") or without JSON is a failed run.

use serde::Deserialize;

/// The parts of iperf3's JSON output this harness reads.
#[derive(Debug, Deserialize)]
pub struct IperfOutput {
    /// Summary; `{}` when the test never started.
    #[serde(default)]
    pub end: IperfEnd,
    /// Set when iperf3 failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// `end` section.
#[derive(Debug, Default, Deserialize)]
pub struct IperfEnd {
    /// Sender-side totals.
    #[serde(default)]
    pub sum_sent: Option<IperfSum>,
    /// Receiver-side totals.
    #[serde(default)]
    pub sum_received: Option<IperfSum>,
    /// UDP totals (jitter and loss as seen by the receiver).
    #[serde(default)]
    pub sum: Option<IperfSum>,
}

/// A totals block (TCP or UDP).
#[derive(Debug, Deserialize)]
pub struct IperfSum {
    /// Throughput.
    pub bits_per_second: f64,
    /// Bytes transferred.
    #[serde(default)]
    pub bytes: u64,
    /// TCP retransmits (sender side only).
    #[serde(default)]
    pub retransmits: Option<u64>,
    /// UDP jitter, ms.
    #[serde(default)]
    pub jitter_ms: Option<f64>,
    /// UDP lost datagrams.
    #[serde(default)]
    pub lost_packets: Option<u64>,
    /// UDP loss, percent.
    #[serde(default)]
    pub lost_percent: Option<f64>,
}

/// What one iperf3 run measured.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IperfMetrics {
    /// Received throughput, Gbit/s.
    pub gbit_s: f64,
    /// TCP retransmits.
    pub retransmits: Option<u64>,
    /// UDP jitter, ms.
    pub jitter_ms: Option<f64>,
    /// UDP lost datagrams.
    pub lost_packets: Option<u64>,
    /// UDP loss, percent.
    pub lost_percent: Option<f64>,
}

/// Parses a raw iperf3 `-J` output. `Err` is the reason the run counts as failed.
pub fn parse(raw: &[u8]) -> Result<IperfMetrics, String> {
    let text = String::from_utf8_lossy(raw);
    let Some(start) = text.find('{') else {
        let t: String = text.trim().chars().take(200).collect();
        return Err(if t.is_empty() {
            "no JSON output (empty)".into()
        } else {
            format!("no JSON output: {t}")
        });
    };
    let out: IperfOutput = serde_json::from_str(&text[start..])
        .map_err(|e| format!("iperf3 output is not valid JSON ({e})"))?;
    if let Some(e) = out.error {
        return Err(format!("iperf3: {e}"));
    }
    let end = out.end;
    if let Some(udp) = &end.sum {
        if udp.jitter_ms.is_some() || udp.lost_packets.is_some() {
            let bps = end
                .sum_received
                .as_ref()
                .map_or(udp.bits_per_second, |r| r.bits_per_second);
            return Ok(IperfMetrics {
                gbit_s: bps / 1e9,
                retransmits: None,
                jitter_ms: udp.jitter_ms,
                lost_packets: udp.lost_packets,
                lost_percent: udp.lost_percent,
            });
        }
    }
    let recv = end
        .sum_received
        .as_ref()
        .ok_or_else(|| "iperf3 JSON has no end.sum_received".to_string())?;
    if recv.bytes == 0 {
        return Err("iperf3 received no data".into());
    }
    Ok(IperfMetrics {
        gbit_s: recv.bits_per_second / 1e9,
        retransmits: end.sum_sent.as_ref().and_then(|s| s.retransmits),
        jitter_ms: None,
        lost_packets: None,
        lost_percent: None,
    })
}
