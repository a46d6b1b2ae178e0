// SPDX-License-Identifier: Apache-2.0
use std::time::Duration;

use super::scrape::{scrape, Samples};
use super::*;
use crate::engine::histogram::bump;
use crate::seccomp::blk::BlkThread;

const T: Duration = Duration::from_secs(5);

fn queue(device: &str, queue: &str, timed: bool) -> QueueMetrics {
    QueueMetrics::new(device, queue, &Arc::new(QueueStats::default()), timed)
}

#[test]
fn the_page_carries_every_family_per_queue() {
    let exporter = Exporter::default();
    let blk = queue("blk0", "0", true);
    let rx = queue("net0", "rx0", false);
    exporter.set_queues(vec![blk.clone(), rx.clone()]);
    assert!(blk.stats.timed() && !rx.stats.timed());
    let s = &blk.stats;
    bump(&s.requests, 7);
    bump(&s.bytes_read, 4096);
    bump(&s.bytes_written, 512);
    bump(&s.io_errors, 2);
    bump(&s.kicks, 3);
    bump(&s.notifications, 5);
    bump(&s.submits, 2);
    bump(&s.wakeups, 4);
    bump(&s.poll_hits, 1);
    s.inflight.store(6, Ordering::Relaxed);
    s.latency.observe(1_500); // 1.5 µs: the 2 µs bucket
    s.latency.observe(300_000_000); // 300 ms: only +Inf
    s.batch.observe(3);
    bump(&rx.stats.bytes_read, 60);

    let page = exporter.render();
    let p = Samples::parse(&page);
    let b = [("device", "blk0"), ("queue", "0")];
    assert_eq!(p.sum("iovmm_requests_total", &b), 7.0);
    assert_eq!(p.sum("iovmm_bytes_total", &[b[0], ("dir", "read")]), 4096.0);
    assert_eq!(p.sum("iovmm_bytes_total", &[b[0], ("dir", "write")]), 512.0);
    assert_eq!(p.sum("iovmm_errors_total", &[b[0], ("kind", "io")]), 2.0);
    assert_eq!(p.sum("iovmm_kicks_total", &b), 3.0);
    assert_eq!(p.sum("iovmm_notifications_total", &b), 5.0);
    assert_eq!(p.sum("iovmm_uring_submissions_total", &b), 2.0);
    assert_eq!(p.sum("iovmm_wakeups_total", &[b[0], ("how", "slept")]), 4.0);
    assert_eq!(
        p.sum("iovmm_wakeups_total", &[b[0], ("how", "polled")]),
        1.0
    );
    assert_eq!(p.sum("iovmm_inflight", &b), 6.0);
    let lat = p.buckets("iovmm_request_latency_seconds", &b);
    assert_eq!(lat.len(), 17, "16 bounds and +Inf: {lat:?}");
    assert_eq!(lat[0], (1e-6, 0.0));
    assert_eq!(lat[1], (2e-6, 1.0));
    assert_eq!(lat[15], (0.1, 1.0));
    assert_eq!(lat[16], (f64::INFINITY, 2.0));
    assert_eq!(p.sum("iovmm_request_latency_seconds_count", &b), 2.0);
    let sum = p.sum("iovmm_request_latency_seconds_sum", &b);
    assert!((sum - 0.3000015).abs() < 1e-9, "{sum}");
    assert_eq!(p.buckets("iovmm_uring_batch_size", &b)[2], (4.0, 1.0));
    // The receive queue: counters, no latency histogram, no batches.
    let r = [("device", "net0"), ("queue", "rx0")];
    assert_eq!(p.sum("iovmm_bytes_total", &[r[1], ("dir", "read")]), 60.0);
    assert!(p.buckets("iovmm_request_latency_seconds", &r).is_empty());
    assert!(p.buckets("iovmm_uring_batch_size", &r).is_empty());
    assert!(p.sum("process_cpu_seconds_total", &[]) > 0.0);
    assert!(
        page.contains("# TYPE iovmm_request_latency_seconds histogram"),
        "{page}"
    );
    // Replacing the queues drops the old ones.
    exporter.set_queues(vec![rx]);
    let p = Samples::parse(&exporter.render());
    assert_eq!(
        p.queues("iovmm_requests_total"),
        [("net0".into(), "rx0".into())]
    );
}

#[test]
fn the_endpoint_serves_get_metrics_only() {
    let exporter = Arc::new(Exporter::default());
    let q = queue("vhost-user-blk", "0", true);
    bump(&q.stats.requests, 42);
    exporter.set_queues(vec![q]);
    let server = MetricsServer::start(
        &"127.0.0.1:0".parse().unwrap(),
        exporter,
        BlkThread::Metrics,
    )
    .unwrap();
    let p = scrape(server.addr(), T).unwrap();
    assert_eq!(p.sum("iovmm_requests_total", &[("queue", "0")]), 42.0);
    let get = |m: &str, path: &str| {
        minihttp::client::request(server.addr(), m, path, None, T)
            .unwrap()
            .status
    };
    assert_eq!(get("PUT", "/metrics"), 405);
    assert_eq!(get("GET", "/"), 404);
    // The port is taken while the server runs: a second one fails at once.
    let e = MetricsServer::start(
        server.addr(),
        Arc::new(Exporter::default()),
        BlkThread::Metrics,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("in use"), "{e}");
}
