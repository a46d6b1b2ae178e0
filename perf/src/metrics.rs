// SPDX-License-Identifier: Apache-2.0
//! Reading the `/metrics` endpoints of the VMM and the backends (`--metrics ADDR`): a
//! [`Scraper`] that scrapes in the background while a benchmark runs (what a monitoring system
//! does to the process being measured), per-queue [`QueueTotals`] and their [`Rates`] between
//! two scrapes (`vmm-perf top`), and the [`CellCounters`] a comparison cell records.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use backends::metrics::scrape::{scrape, Samples};
use minihttp::ListenAddr;
use serde::{Deserialize, Serialize};

/// Scrapes an endpoint every interval until stopped.
pub struct Scraper {
    stop: Arc<AtomicBool>,
    scrapes: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Scraper {
    /// Start scraping `addr` every `every` (a failed scrape is retried 50 ms later: the
    /// process may not listen yet).
    pub fn start(addr: ListenAddr, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let scrapes = Arc::new(AtomicUsize::new(0));
        let (s, n) = (stop.clone(), scrapes.clone());
        let thread = std::thread::Builder::new()
            .name("scraper".into())
            .spawn(move || {
                let mut next = Instant::now();
                while !s.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    if now >= next {
                        next = if scrape(&addr, Duration::from_secs(2)).is_ok() {
                            n.fetch_add(1, Ordering::Relaxed);
                            next + every
                        } else {
                            // Not listening yet: try again soon.
                            now + Duration::from_millis(50)
                        };
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
            .ok();
        Self {
            stop,
            scrapes,
            thread,
        }
    }

    /// Stop and return how many scrapes succeeded.
    pub fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.scrapes.load(Ordering::Relaxed)
    }
}

/// One queue's counters in a scrape.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct QueueTotals {
    /// `device` label.
    pub device: String,
    /// `queue` label.
    pub queue: String,
    /// Requests taken.
    pub requests: f64,
    /// Bytes into and out of guest buffers.
    pub bytes: f64,
    /// Driver notifications sent.
    pub notifications: f64,
    /// Kicks taken.
    pub kicks: f64,
    /// io_uring submissions.
    pub submissions: f64,
    /// Operations submitted (the batch histogram's sum).
    pub submitted: f64,
    /// Requests in flight.
    pub inflight: f64,
    /// Latency histogram `(upper bound in seconds, cumulative count)`.
    pub latency: Vec<(f64, f64)>,
}

/// The queues of a scrape, in page order.
pub fn queue_totals(s: &Samples) -> Vec<QueueTotals> {
    s.queues("iovmm_requests_total")
        .into_iter()
        .map(|(device, queue)| {
            let l = [("device", device.as_str()), ("queue", queue.as_str())];
            QueueTotals {
                requests: s.sum("iovmm_requests_total", &l),
                bytes: s.sum("iovmm_bytes_total", &l),
                notifications: s.sum("iovmm_notifications_total", &l),
                kicks: s.sum("iovmm_kicks_total", &l),
                submissions: s.sum("iovmm_uring_submissions_total", &l),
                submitted: s.sum("iovmm_uring_batch_size_sum", &l),
                inflight: s.sum("iovmm_inflight", &l),
                latency: s.buckets("iovmm_request_latency_seconds", &l),
                device,
                queue,
            }
        })
        .collect()
}

/// What a queue did between two scrapes.
#[derive(Clone, Debug, PartialEq)]
pub struct Rates {
    /// Requests per second.
    pub iops: f64,
    /// Bytes per second.
    pub bytes_per_s: f64,
    /// Median latency of the interval's requests (upper bound of its bucket), seconds.
    pub p50: Option<f64>,
    /// 99th percentile, likewise.
    pub p99: Option<f64>,
}

/// The rates of `now` against `before`, `secs` apart (a counter that went down, a restarted
/// process, counts from zero).
pub fn rates(before: Option<&QueueTotals>, now: &QueueTotals, secs: f64) -> Rates {
    let zero = QueueTotals::default();
    let b = before.unwrap_or(&zero);
    let d = |x: f64, y: f64| if x >= y { x - y } else { x };
    let latency: Vec<(f64, f64)> = now
        .latency
        .iter()
        .map(|&(le, n)| {
            let prev = b.latency.iter().find(|l| l.0 == le).map_or(0.0, |l| l.1);
            (le, d(n, prev))
        })
        .collect();
    let secs = secs.max(1e-9);
    Rates {
        iops: d(now.requests, b.requests) / secs,
        bytes_per_s: d(now.bytes, b.bytes) / secs,
        p50: quantile(&latency, 0.50),
        p99: quantile(&latency, 0.99),
    }
}

/// The upper bound of the bucket holding quantile `q` of cumulative `buckets` (`None` without
/// observations; infinity when it lies past the last bound).
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    buckets.iter().find(|b| b.1 >= rank).map(|b| b.0)
}

/// `vmm-perf top`'s rows for one endpoint: per queue IOPS, MB/s, p50 and p99 (of the requests
/// answered since `prev`, `secs` earlier) and requests in flight, then the process's CPU use.
pub fn top_rows(
    endpoint: &str,
    prev: Option<&Samples>,
    now: &Samples,
    secs: f64,
) -> Vec<Vec<String>> {
    let before = prev.map(queue_totals).unwrap_or_default();
    let us = |v: Option<f64>| match v {
        None => "-".to_string(),
        Some(v) if v.is_infinite() => ">100ms".to_string(),
        Some(v) => format!("{:.0}us", v * 1e6),
    };
    let mut rows: Vec<Vec<String>> = queue_totals(now)
        .iter()
        .map(|q| {
            let old = before
                .iter()
                .find(|b| b.device == q.device && b.queue == q.queue);
            let r = rates(if prev.is_some() { old } else { Some(q) }, q, secs);
            vec![
                endpoint.to_string(),
                q.device.clone(),
                q.queue.clone(),
                format!("{:.0}", r.iops),
                format!("{:.1}", r.bytes_per_s / 1e6),
                us(r.p50),
                us(r.p99),
                format!("{:.0}", q.inflight),
            ]
        })
        .collect();
    let cpu = |s: &Samples| s.sum("process_cpu_seconds_total", &[]);
    let busy = prev.map(|p| (cpu(now) - cpu(p)).max(0.0) / secs.max(1e-9) * 100.0);
    rows.push(vec![
        endpoint.to_string(),
        "(process)".into(),
        "-".into(),
        "-".into(),
        "-".into(),
        "-".into(),
        "-".into(),
        busy.map_or("-".into(), |b| format!("cpu {b:.0}%")),
    ]);
    rows
}

/// Left-aligned columns under `header`, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        parts.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// Counter deltas of a run, summed over every queue of the processes scraped.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CellCounters {
    /// Requests the queues took.
    pub requests: f64,
    /// Driver notifications (interrupts) sent.
    pub notifications: f64,
    /// Kicks taken.
    pub kicks: f64,
    /// io_uring submissions.
    pub submissions: f64,
    /// Operations submitted.
    pub submitted: f64,
    /// CPU seconds of the processes scraped.
    pub cpu_seconds: f64,
}

impl CellCounters {
    /// The deltas between two scrapes of the same processes.
    pub fn between(before: &[Samples], after: &[Samples]) -> Self {
        let mut c = Self::default();
        for (b, a) in before.iter().zip(after) {
            let d = |name: &str| (a.sum(name, &[]) - b.sum(name, &[])).max(0.0);
            c.requests += d("iovmm_requests_total");
            c.notifications += d("iovmm_notifications_total");
            c.kicks += d("iovmm_kicks_total");
            c.submissions += d("iovmm_uring_submissions_total");
            c.submitted += d("iovmm_uring_batch_size_sum");
            c.cpu_seconds += d("process_cpu_seconds_total");
        }
        c
    }

    /// Per I/O the guest did (`ios`): notifications, kicks, CPU microseconds; and the mean
    /// io_uring batch.
    pub fn per_io(&self, ios: f64) -> PerIo {
        let per = |x: f64| (ios > 0.0).then(|| x / ios);
        PerIo {
            notifications: per(self.notifications),
            kicks: per(self.kicks),
            cpu_us: per(self.cpu_seconds * 1e6),
            batch: (self.submissions > 0.0).then(|| self.submitted / self.submissions),
        }
    }
}

/// [`CellCounters`] per guest I/O.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PerIo {
    /// Notifications per I/O.
    pub notifications: Option<f64>,
    /// Kicks per I/O.
    pub kicks: Option<f64>,
    /// CPU microseconds per I/O (VMM and backends).
    pub cpu_us: Option<f64>,
    /// Operations per io_uring submission.
    pub batch: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "iovmm_requests_total{device=\"d\",queue=\"0\"} 100\n\
        iovmm_bytes_total{device=\"d\",queue=\"0\",dir=\"read\"} 4096\n\
        iovmm_bytes_total{device=\"d\",queue=\"0\",dir=\"write\"} 0\n\
        iovmm_notifications_total{device=\"d\",queue=\"0\"} 50\n\
        iovmm_kicks_total{device=\"d\",queue=\"0\"} 40\n\
        iovmm_uring_submissions_total{device=\"d\",queue=\"0\"} 10\n\
        iovmm_uring_batch_size_sum{device=\"d\",queue=\"0\"} 100\n\
        iovmm_request_latency_seconds_bucket{device=\"d\",queue=\"0\",le=\"1e-06\"} 0\n\
        iovmm_request_latency_seconds_bucket{device=\"d\",queue=\"0\",le=\"2e-06\"} 60\n\
        iovmm_request_latency_seconds_bucket{device=\"d\",queue=\"0\",le=\"5e-06\"} 99\n\
        iovmm_request_latency_seconds_bucket{device=\"d\",queue=\"0\",le=\"+Inf\"} 100\n\
        process_cpu_seconds_total 2.5\n";

    #[test]
    fn rates_and_percentiles_come_from_counter_and_bucket_deltas() {
        let before = queue_totals(&Samples::parse(PAGE));
        let after_page = PAGE
            .replace("} 100\n", "} 300\n")
            .replace("le=\"2e-06\"} 60", "le=\"2e-06\"} 70")
            .replace("le=\"5e-06\"} 99", "le=\"5e-06\"} 297");
        let after = queue_totals(&Samples::parse(&after_page));
        assert_eq!(after.len(), 1);
        assert_eq!(
            (after[0].device.as_str(), after[0].queue.as_str()),
            ("d", "0")
        );
        let r = rates(before.first(), &after[0], 2.0);
        assert_eq!(r.iops, 100.0);
        // Of the interval's 200 requests 10 took <= 2 us and 198 <= 5 us.
        assert_eq!(r.p50, Some(5e-6));
        assert_eq!(r.p99, Some(5e-6));
        // A restarted process counts from zero.
        let r = rates(Some(&after[0]), &before[0], 1.0);
        assert_eq!(r.iops, 100.0);
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[(1.0, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
    }

    #[test]
    fn top_shows_per_queue_rates_and_process_cpu() {
        let before = Samples::parse(PAGE);
        let now = Samples::parse(
            &PAGE
                .replace("} 100\n", "} 300\n")
                .replace("} 4096\n", "} 2004096\n")
                .replace("2.5\n", "3.0\n"),
        );
        let rows = top_rows("127.0.0.1:9101", Some(&before), &now, 1.0);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0][..5], ["127.0.0.1:9101", "d", "0", "200", "2.0"]);
        assert_eq!(rows[1][7], "cpu 50%");
        // The first refresh has no interval: rates of 0.
        let rows = top_rows("x", None, &now, 1.0);
        assert_eq!((rows[0][3].as_str(), rows[1][7].as_str()), ("0", "-"));
        let t = table(&["A", "BB"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
    }

    #[test]
    fn cell_counters_are_per_guest_io() {
        let b = Samples::parse(PAGE);
        let a = Samples::parse(
            &PAGE
                .replace("} 50\n", "} 250\n")
                .replace("} 40\n", "} 90\n")
                .replace("2.5\n", "3.5\n"),
        );
        let c = CellCounters::between(&[b], &[a]);
        assert_eq!(
            (c.notifications, c.kicks, c.cpu_seconds),
            (200.0, 50.0, 1.0)
        );
        let p = c.per_io(1000.0);
        assert_eq!(p.notifications, Some(0.2));
        assert_eq!(p.kicks, Some(0.05));
        assert_eq!(p.cpu_us, Some(1000.0));
        assert_eq!(c.per_io(0.0).cpu_us, None);
    }
}
