// SPDX-License-Identifier: Apache-2.0
//! `vmm remote`: one API request over the socket, the answer as a table (or
//! as the JSON the server sent, with `--json`).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use minihttp::ListenAddr;

use super::types::{ErrorBody, Ping, VmCounters, VmInfo};

/// How long `vmm remote` waits for each step of a request.
const TIMEOUT: Duration = Duration::from_secs(20);

/// A `vmm remote` command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `ping`.
    Ping,
    /// `info`.
    Info,
    /// `counters`.
    Counters,
    /// `pause`.
    Pause,
    /// `resume`.
    Resume,
    /// `shutdown [--force]`.
    Shutdown {
        /// Stop at once instead of pressing the power button.
        force: bool,
    },
    /// `reboot`.
    Reboot,
}

impl Command {
    fn request(self) -> (&'static str, &'static str) {
        match self {
            Self::Ping => ("GET", "/api/v1/vmm.ping"),
            Self::Info => ("GET", "/api/v1/vm.info"),
            Self::Counters => ("GET", "/api/v1/vm.counters"),
            Self::Pause => ("PUT", "/api/v1/vm.pause"),
            Self::Resume => ("PUT", "/api/v1/vm.resume"),
            Self::Shutdown { force: false } => ("PUT", "/api/v1/vm.shutdown"),
            Self::Shutdown { force: true } => ("PUT", "/api/v1/vm.shutdown?force=true"),
            Self::Reboot => ("PUT", "/api/v1/vm.reboot"),
        }
    }
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached or the answer not read.
    #[error("{0}")]
    Http(#[from] minihttp::Error),
    /// The VMM refused the request.
    #[error("{status}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The VMM's explanation.
        message: String,
    },
    /// The answer is not what the API documents.
    #[error("unexpected answer: {0}")]
    BadAnswer(String),
}

/// Send `cmd` to the VMM on `socket`; returns what to print (the JSON body with
/// `json`, else a table; nothing for a command that only acts).
pub fn run(socket: &Path, cmd: Command, json: bool) -> Result<String, ClientError> {
    let (method, path) = cmd.request();
    let addr = ListenAddr::Unix(socket.to_path_buf());
    let r = minihttp::client::request(&addr, method, path, None, TIMEOUT)?;
    if !(200..300).contains(&r.status) {
        let message = serde_json::from_slice::<ErrorBody>(&r.body)
            .map(|e| e.error)
            .unwrap_or_else(|_| r.text());
        return Err(ClientError::Refused {
            status: r.status,
            message,
        });
    }
    if json || r.body.is_empty() {
        return Ok(r.text());
    }
    let bad = |e: serde_json::Error| ClientError::BadAnswer(e.to_string());
    Ok(match cmd {
        Command::Ping => ping_text(&serde_json::from_slice(&r.body).map_err(bad)?),
        Command::Info => info_table(&serde_json::from_slice(&r.body).map_err(bad)?),
        Command::Counters => counters_table(&serde_json::from_slice(&r.body).map_err(bad)?),
        _ => r.text(),
    })
}

fn ping_text(p: &Ping) -> String {
    format!(
        "vmm {}, pid {}, up {:.1} s",
        p.version, p.pid, p.uptime_seconds
    )
}

/// The VM's state and configuration, then one line per device.
pub fn info_table(i: &VmInfo) -> String {
    let c = &i.config;
    let mut out = String::new();
    let memory = format!(
        "{} MiB{}",
        c.memory_mib,
        if c.hugepages { " (huge pages)" } else { "" }
    );
    let lines = [
        ("state", format!("{} (boot {})", i.state, i.boots)),
        ("cpus", c.cpus.to_string()),
        ("memory", memory),
        ("kernel", c.kernel.clone()),
        (
            "initramfs",
            c.initramfs.clone().unwrap_or_else(|| "-".into()),
        ),
        ("cmdline", c.cmdline.clone()),
        ("serial", c.serial.clone()),
    ];
    for (k, v) in lines {
        let _ = writeln!(out, "{k:<10} {v}");
    }
    let dash = || "-".to_string();
    let rows: Vec<Vec<String>> = i
        .devices
        .iter()
        .map(|d| {
            vec![
                d.name.clone(),
                d.kind.clone(),
                d.tier.clone(),
                d.queues.map_or_else(dash, |q| q.to_string()),
                d.driver.clone().unwrap_or_else(dash),
                d.connection.clone().unwrap_or_else(dash),
                d.backend.clone().unwrap_or_else(dash),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        &[
            "DEVICE",
            "KIND",
            "TIER",
            "QUEUES",
            "DRIVER",
            "CONNECTION",
            "BACKEND",
        ],
        &rows,
    ));
    out
}

/// One line per queue the VMM serves; devices whose data path it does not see
/// say where their backend's metrics are.
pub fn counters_table(c: &VmCounters) -> String {
    let mut rows = Vec::new();
    let mut notes = String::new();
    for d in &c.devices {
        for q in &d.queues {
            rows.push(vec![
                d.name.clone(),
                q.queue.clone(),
                q.requests.to_string(),
                bytes(q.bytes_read),
                bytes(q.bytes_written),
                q.errors.to_string(),
                q.notifications.to_string(),
                q.kicks.to_string(),
                q.inflight.to_string(),
            ]);
        }
        let device_wide: Vec<String> = (d.counters.iter())
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if d.queues.is_empty() {
            let metrics = d.metrics.as_deref().map_or_else(
                || "its backend serves the queues (no metrics address configured)".into(),
                |m| format!("its backend serves the queues; metrics at {m}"),
            );
            let what = if d.tier == "vhost-user" {
                metrics
            } else {
                device_wide.join(" ")
            };
            let _ = writeln!(notes, "{} ({}): {what}", d.name, d.tier);
        }
    }
    let mut out = table(
        &[
            "DEVICE", "QUEUE", "REQUESTS", "READ", "WRITTEN", "ERRORS", "NOTIFIED", "KICKS",
            "INFLIGHT",
        ],
        &rows,
    );
    if !notes.is_empty() {
        out.push('\n');
        out.push_str(&notes);
    }
    out
}

/// `4.0 MiB`-style sizes.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let parts: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", parts.join("  ").trim_end());
    };
    line(&mut header.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::{ConfigInfo, DeviceCounters, DeviceInfo, QueueCounters, VmState};

    #[test]
    fn tables_line_up_and_say_where_backend_metrics_are() {
        let info = VmInfo {
            state: VmState::Paused,
            boots: 2,
            config: ConfigInfo {
                cpus: 2,
                memory_mib: 512,
                hugepages: false,
                kernel: "/k".into(),
                initramfs: None,
                cmdline: "console=ttyS0".into(),
                serial: "stdio".into(),
            },
            devices: vec![DeviceInfo {
                name: "vhost-user-blk0".into(),
                kind: "virtio-blk".into(),
                tier: "vhost-user".into(),
                backend: Some("/tmp/vu.sock".into()),
                queues: Some(2),
                driver: Some("active".into()),
                connection: Some("connected".into()),
                metrics: None,
            }],
        };
        let t = info_table(&info);
        assert!(t.starts_with("state      Paused (boot 2)\n"), "{t}");
        assert!(
            t.contains("\nDEVICE           KIND        TIER        QUEUES"),
            "{t}"
        );
        assert!(t.contains(
            "\nvhost-user-blk0  virtio-blk  vhost-user  2       active  connected   /tmp/vu.sock\n"
        ), "{t}");
        let counters = VmCounters {
            devices: vec![
                DeviceCounters {
                    name: "blk0".into(),
                    tier: "in-vmm".into(),
                    queues: vec![QueueCounters {
                        queue: "0".into(),
                        requests: 3,
                        bytes_read: 4096,
                        ..QueueCounters::default()
                    }],
                    ..DeviceCounters::default()
                },
                DeviceCounters {
                    name: "vhost-user-blk0".into(),
                    tier: "vhost-user".into(),
                    metrics: Some("127.0.0.1:9101".into()),
                    ..DeviceCounters::default()
                },
            ],
        };
        let t = counters_table(&counters);
        assert!(t.contains("\nblk0    0      3         4.0 KiB  0 B"), "{t}");
        assert!(
            t.contains("vhost-user-blk0 (vhost-user): its backend serves the queues; metrics at 127.0.0.1:9101"),
            "{t}"
        );
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }
}
