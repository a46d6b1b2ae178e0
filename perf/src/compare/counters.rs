// SPDX-License-Identifier: Apache-2.0
//! What the VMM and the backends counted during each guest-tier run.
//!
//! In a guest tier's I/O phase the VMM serves `--metrics` on [`VMM_PORT`] and a vhost-user
//! backend on [`BACKEND_PORT`] (lab-internal loopback). The lab script passes the VMM's output
//! (the guest console) through [`WATCH_FN`]: when a run's `===CELL-BEGIN id===` line goes by,
//! and again after its output's `===JSON-END id===`, it scrapes both endpoints and prints the
//! sums as `===COUNTERS begin|end id key=value ...===`. The recorder attaches the difference to
//! the run ([`RunCounters`]): notifications, kicks, io_uring batch and CPU (VMM, vCPUs
//! included, plus backends) per I/O.

use serde::{Deserialize, Serialize};

use crate::metrics::{CellCounters, PerIo};

/// The VMM's metrics port inside the lab.
pub const VMM_PORT: u16 = 9190;
/// A vhost-user backend's metrics port inside the lab.
pub const BACKEND_PORT: u16 = 9191;

/// Shell functions: `counters begin|end ID` scrapes both endpoints (`$COUNTER_PORTS`, by
/// default [`VMM_PORT`] and [`BACKEND_PORT`]; a port nobody serves is skipped) and prints one
/// `===COUNTERS===` line; `watch_counters` copies its input to its output and calls `counters`
/// at each run's begin and end markers. The scrape is a plain HTTP/1.0 request through `nc`:
/// the lab's static busybox `wget` crashes (Debian 12's `busybox-static`, SIGSEGV on every
/// URL), which left every counter at zero.
pub const WATCH_FN: &str = r#"counters() {
  for p in ${COUNTER_PORTS:-9190 9191}; do
    printf 'GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' | nc -w 2 127.0.0.1 "$p" 2>/dev/null
  done |
  awk -v mark="$1" -v id="$2" '
    /^iovmm_requests_total/ {r += $2} /^iovmm_notifications_total/ {n += $2}
    /^iovmm_kicks_total/ {k += $2} /^iovmm_uring_submissions_total/ {s += $2}
    /^iovmm_uring_batch_size_sum/ {b += $2} /^process_cpu_seconds_total/ {c += $2}
    END {printf "===COUNTERS %s %s requests=%.0f notifications=%.0f kicks=%.0f submissions=%.0f submitted=%.0f cpu=%.4f===\n", mark, id, r, n, k, s, b, c}'
}
watch_counters() {
  while IFS= read -r line; do
    printf '%s\n' "$line"
    case "$line" in
      *"===CELL-BEGIN "*) id=${line#*===CELL-BEGIN }; counters begin "${id%%===*}" ;;
      *"===JSON-END "*) id=${line#*===JSON-END }; counters end "${id%%===*}" ;;
    esac
  done
}
"#;

/// One `===COUNTERS===` line.
#[derive(Clone, Debug, PartialEq)]
pub struct CountersLine {
    /// At the end of the run (else at its beginning).
    pub end: bool,
    /// The run id.
    pub id: String,
    /// The sums scraped.
    pub totals: CellCounters,
}

/// Parses a `===COUNTERS begin|end ID k=v ...===` line.
pub fn parse_line(line: &str) -> Option<CountersLine> {
    let i = line.find("===COUNTERS ")?;
    let body = line[i + "===COUNTERS ".len()..]
        .trim_end()
        .strip_suffix("===")?;
    let mut words = body.split_whitespace();
    let end = match words.next()? {
        "begin" => false,
        "end" => true,
        _ => return None,
    };
    let id = words.next()?.to_string();
    let mut t = CellCounters::default();
    for w in words {
        let (k, v) = w.split_once('=')?;
        let v: f64 = v.parse().ok()?;
        match k {
            "requests" => t.requests = v,
            "notifications" => t.notifications = v,
            "kicks" => t.kicks = v,
            "submissions" => t.submissions = v,
            "submitted" => t.submitted = v,
            "cpu" => t.cpu_seconds = v,
            _ => {}
        }
    }
    Some(CountersLine { end, id, totals: t })
}

/// A run's counter deltas and their values per I/O.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunCounters {
    /// What the VMM and backends counted over the run.
    pub deltas: CellCounters,
    /// The same per I/O (per fio I/O for block runs, per virtio request for net runs).
    pub per_io: PerIo,
}

impl RunCounters {
    /// The difference of two scrapes, per `ios` I/Os (`None`: per device request).
    pub fn between(begin: &CellCounters, end: &CellCounters, ios: Option<f64>) -> Self {
        let d = |a: f64, b: f64| (b - a).max(0.0);
        let deltas = CellCounters {
            requests: d(begin.requests, end.requests),
            notifications: d(begin.notifications, end.notifications),
            kicks: d(begin.kicks, end.kicks),
            submissions: d(begin.submissions, end.submissions),
            submitted: d(begin.submitted, end.submitted),
            cpu_seconds: d(begin.cpu_seconds, end.cpu_seconds),
        };
        let per_io = deltas.per_io(ios.unwrap_or(deltas.requests));
        Self { deltas, per_io }
    }
}

/// A per-I/O figure's name in a cell's statistics, and where a run's counters have it.
pub type PerIoStat = (&'static str, fn(&PerIo) -> Option<f64>);

/// The per-I/O statistics a cell reports, by name, from a run's counters.
pub const PER_IO_STATS: [PerIoStat; 4] = [
    ("notifications_per_io", |p| p.notifications),
    ("kicks_per_io", |p| p.kicks),
    ("uring_batch", |p| p.batch),
    ("cpu_us_per_io", |p| p.cpu_us),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// `counters begin ID` run by busybox's `sh`, with busybox's `nc` and `awk` (the lab's),
    /// against a metrics endpoint serving `body`.
    fn scrape_with_busybox(body: &'static str) -> Option<String> {
        use std::io::{Read, Write};
        if std::process::Command::new("busybox")
            .arg("true")
            .status()
            .is_err()
        {
            eprintln!("skipping: no busybox here (the lab images are built from it)");
            return None;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = [0u8; 512];
            let _ = conn.read(&mut request);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            conn.write_all(head.as_bytes()).unwrap();
            conn.write_all(body.as_bytes()).unwrap();
            String::from_utf8_lossy(&request).into_owned()
        });
        let dir = tempfile::tempdir().unwrap();
        for applet in ["nc", "awk", "printf"] {
            std::os::unix::fs::symlink(which_busybox(), dir.path().join(applet)).unwrap();
        }
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap()
        );
        let out = std::process::Command::new("busybox")
            .args(["sh", "-c", &format!("{WATCH_FN}\ncounters begin x.y.1")])
            .env("PATH", path)
            .env("COUNTER_PORTS", format!("{port} 1"))
            .output()
            .unwrap();
        let request = server.join().unwrap();
        assert!(
            request.starts_with("GET /metrics HTTP/1.0\r\n"),
            "{request:?}"
        );
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn which_busybox() -> std::path::PathBuf {
        std::env::var_os("PATH")
            .and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("busybox"))
                    .find(|b| b.exists())
            })
            .expect("busybox on PATH")
    }

    #[test]
    fn the_scrape_sums_what_the_endpoints_serve_with_the_labs_busybox() {
        let body = "# HELP iovmm_requests_total Requests.\n\
                    iovmm_requests_total{queue=\"0\"} 40\n\
                    iovmm_requests_total{queue=\"1\"} 2\n\
                    iovmm_notifications_total{queue=\"0\"} 7\n\
                    iovmm_kicks_total{queue=\"0\"} 3\n\
                    process_cpu_seconds_total 1.25\n";
        let Some(out) = scrape_with_busybox(body) else {
            return;
        };
        let line = parse_line(out.trim()).unwrap_or_else(|| panic!("{out:?}"));
        assert_eq!((line.end, line.id.as_str()), (false, "x.y.1"));
        let t = &line.totals;
        assert_eq!(
            (t.requests, t.notifications, t.kicks),
            (42.0, 7.0, 3.0),
            "{out}"
        );
        assert!((t.cpu_seconds - 1.25).abs() < 1e-9, "{out}");
    }

    #[test]
    fn lines_parse_and_deltas_are_per_io() {
        let b = parse_line("===COUNTERS begin vhost-user-blk.randread-4k-qd1.1 requests=10 notifications=5 kicks=4 submissions=2 submitted=10 cpu=1.5000===\r")
            .unwrap();
        assert!(!b.end);
        assert_eq!(b.id, "vhost-user-blk.randread-4k-qd1.1");
        let e = parse_line("x ===COUNTERS end vhost-user-blk.randread-4k-qd1.1 requests=1010 notifications=505 kicks=254 submissions=502 submitted=1010 cpu=2.0000===")
            .unwrap();
        assert!(e.end);
        let r = RunCounters::between(&b.totals, &e.totals, Some(1000.0));
        assert_eq!(r.deltas.requests, 1000.0);
        assert_eq!(r.per_io.notifications, Some(0.5));
        assert_eq!(r.per_io.kicks, Some(0.25));
        assert_eq!(r.per_io.cpu_us, Some(500.0));
        assert_eq!(r.per_io.batch, Some(2.0));
        // Without an I/O count: per device request.
        let r = RunCounters::between(&b.totals, &e.totals, None);
        assert_eq!(r.per_io.notifications, Some(0.5));
        assert!(parse_line("===COUNTERS middle x===").is_none());
        assert!(parse_line("===COUNTERS end x requests=y===").is_none());
    }
}
