// SPDX-License-Identifier: Apache-2.0
//! Live metrics of a process's queues in the Prometheus text format, served at `GET /metrics`
//! on `--metrics ADDR` (`127.0.0.1:PORT` or `unix:PATH`) by the backends and the VMM.
//!
//! The queue threads only update their [`QueueStats`] (relaxed atomics and lock-free bucket
//! arrays they alone write); a scrape reads them through a `prometheus-client` collector, so
//! serving metrics adds nothing to the data path but one clock read per batch for the latency
//! histogram (on only for the queues an [`Exporter`] exports, see [`QueueStats::set_timed`]).
//!
//! Per queue (labels `device` and `queue`): `iovmm_requests_total`, `iovmm_bytes_total{dir}`
//! (`read`: into guest buffers, `write`: out of them), `iovmm_errors_total{kind}`,
//! `iovmm_notifications_total`, `iovmm_kicks_total`, `iovmm_inflight`,
//! `iovmm_request_latency_seconds` (submission to used-ring publication, 1 µs to 100 ms),
//! `iovmm_uring_submissions_total`, `iovmm_uring_batch_size`, `iovmm_wakeups_total{how}`
//! (`slept`: woken by an event, `polled`: found work while busy-polling); per process
//! `process_cpu_seconds_total`.

pub mod scrape;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use minihttp::{Limits, ListenAddr, Listener, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use vmm_sys_util::eventfd::EventFd;

use crate::engine::histogram::HistogramSnapshot;
use crate::engine::QueueStats;
use crate::seccomp::{self, ThreadKind};
use crate::{Error, Result};

/// The `Content-Type` of the Prometheus text format.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// One queue to export.
#[derive(Clone, Debug)]
pub struct QueueMetrics {
    /// Device label (`vhost-user-blk`, `blk0`, `net0`, ...).
    pub device: String,
    /// Queue label (`0`, `rx0`, `tx0`, `ctrl`).
    pub queue: String,
    /// The queue's counters.
    pub stats: Arc<QueueStats>,
    /// Whether its requests are timed (queues served by the request engine; a receive queue
    /// holds buffers until frames arrive, which is no request latency).
    pub timed: bool,
}

impl QueueMetrics {
    /// Queue `queue` of `device`.
    pub fn new(device: &str, queue: impl ToString, stats: &Arc<QueueStats>, timed: bool) -> Self {
        Self {
            device: device.to_string(),
            queue: queue.to_string(),
            stats: stats.clone(),
            timed,
        }
    }
}

/// The queues a process exports; devices may replace them at any time (a VM reboot).
#[derive(Debug, Default)]
struct Shared {
    queues: RwLock<Vec<QueueMetrics>>,
}

/// Renders the exported queues and the process CPU time.
#[derive(Debug)]
pub struct Exporter {
    shared: Arc<Shared>,
    registry: Registry,
}

impl Default for Exporter {
    fn default() -> Self {
        let shared = Arc::new(Shared::default());
        let mut registry = Registry::default();
        registry.register_collector(Box::new(QueueCollector(shared.clone())));
        registry.register_collector(Box::new(ProcessCollector));
        Self { shared, registry }
    }
}

impl Exporter {
    /// Export `queues` instead of what was exported, timing the requests of the timed ones.
    pub fn set_queues(&self, queues: Vec<QueueMetrics>) {
        for q in &queues {
            q.stats.set_timed(q.timed);
        }
        *self
            .shared
            .queues
            .write()
            .unwrap_or_else(|p| p.into_inner()) = queues;
    }

    /// The exported queues.
    pub fn queues(&self) -> Vec<QueueMetrics> {
        self.shared
            .queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The metrics page.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::error!("metrics encoding failed: {e}");
        }
        out
    }
}

/// One series of a family: an extra label (`("", "")` for none) and the counter it reads.
type Series = (&'static str, &'static str, fn(&QueueStats) -> &AtomicU64);

/// A `counter` family over every queue.
fn counter_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    queues: &[QueueMetrics],
    series: &[Series],
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for q in queues {
        for (key, value, counter) in series {
            let mut labels = vec![("device", q.device.as_str()), ("queue", q.queue.as_str())];
            if !key.is_empty() {
                labels.push((key, value));
            }
            let v = counter(&q.stats).load(Ordering::Relaxed);
            ConstCounter::new(v).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

/// A `histogram` family over the queues `pick` gives a histogram for, its values divided by
/// `per_unit` (1e9 for nanoseconds exported as seconds).
fn histogram_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    queues: &[QueueMetrics],
    pick: impl Fn(&QueueMetrics) -> Option<HistogramSnapshot>,
    per_unit: f64,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for q in queues {
        let Some(h) = pick(q) else { continue };
        let labels = [("device", q.device.as_str()), ("queue", q.queue.as_str())];
        let buckets: Vec<(f64, u64)> = h
            .bounds
            .iter()
            .zip(&h.counts)
            .map(|(&b, &c)| (b as f64 / per_unit, c))
            .collect();
        family
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(h.sum as f64 / per_unit, h.count(), &buckets, None)?;
    }
    Ok(())
}

/// Encodes the exported queues on each scrape.
#[derive(Debug)]
struct QueueCollector(Arc<Shared>);

impl Collector for QueueCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let queues = self.0.queues.read().unwrap_or_else(|p| p.into_inner());
        let q = queues.as_slice();
        counter_family(
            &mut e,
            "iovmm_requests",
            "Requests taken from the avail ring.",
            q,
            &[("", "", |s| &s.requests)],
        )?;
        counter_family(
            &mut e,
            "iovmm_bytes",
            "Bytes moved into (read) and out of (write) guest buffers.",
            q,
            &[
                ("dir", "read", |s| &s.bytes_read),
                ("dir", "write", |s| &s.bytes_written),
            ],
        )?;
        counter_family(
            &mut e,
            "iovmm_errors",
            "Requests answered with an error, by kind.",
            q,
            &[
                ("kind", "io", |s| &s.io_errors),
                ("kind", "unsupported", |s| &s.unsupported),
                ("kind", "guest_fault", |s| &s.guest_faults),
                ("kind", "dropped", |s| &s.dropped),
                ("kind", "used_rejected", |s| &s.used_rejected),
                ("kind", "pass_failed", |s| &s.failures),
            ],
        )?;
        counter_family(
            &mut e,
            "iovmm_notifications",
            "Used-buffer notifications sent to the driver (call eventfd writes).",
            q,
            &[("", "", |s| &s.notifications)],
        )?;
        counter_family(
            &mut e,
            "iovmm_kicks",
            "Driver notifications (kicks) taken by the queue's thread.",
            q,
            &[("", "", |s| &s.kicks)],
        )?;
        counter_family(
            &mut e,
            "iovmm_uring_submissions",
            "io_uring_enter submissions.",
            q,
            &[("", "", |s| &s.submits)],
        )?;
        counter_family(
            &mut e,
            "iovmm_wakeups",
            "Passes over the queue: woken from sleep, or found work while busy-polling.",
            q,
            &[
                ("how", "slept", |s| &s.wakeups),
                ("how", "polled", |s| &s.poll_hits),
            ],
        )?;
        counter_family(
            &mut e,
            "iovmm_resubmitted",
            "Requests a previous backend process left in flight, resubmitted at a ring start.",
            q,
            &[("", "", |s| &s.resubmitted)],
        )?;
        counter_family(
            &mut e,
            "iovmm_sqpoll_switches",
            "Times the queue turned kernel submission polling on or off by itself.",
            q,
            &[("", "", |s| &s.sqpoll_switches)],
        )?;
        let mut inflight = e.encode_descriptor(
            "iovmm_inflight",
            "Requests taken and not answered yet.",
            None,
            MetricType::Gauge,
        )?;
        for m in q {
            let labels = [("device", m.device.as_str()), ("queue", m.queue.as_str())];
            let v = m.stats.inflight.load(Ordering::Relaxed);
            inflight.encode_family(&labels)?.encode_gauge(&v)?;
        }
        histogram_family(
            &mut e,
            "iovmm_request_latency_seconds",
            "Time from taking a request to publishing its used entry.",
            q,
            |m| m.timed.then(|| m.stats.latency.snapshot()),
            1e9,
        )?;
        histogram_family(
            &mut e,
            "iovmm_uring_batch_size",
            "Operations per io_uring submission.",
            q,
            |m| (m.stats.submits.load(Ordering::Relaxed) > 0).then(|| m.stats.batch.snapshot()),
            1.0,
        )
    }
}

/// The process's CPU time.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let counter = ConstCounter::new(process_cpu_seconds());
        let m = e.encode_descriptor(
            "process_cpu_seconds",
            "User and system CPU time spent by the process.",
            None,
            counter.metric_type(),
        )?;
        counter.encode(m)
    }
}

/// User plus system CPU time of this process, in seconds.
pub fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// The `metrics` thread serving `GET /metrics`; stopped and joined when dropped.
pub struct MetricsServer {
    addr: ListenAddr,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

/// A metrics endpoint listening but not yet served: bound early (a busy port fails before
/// anything else is set up), served once the process dropped its privileges.
pub struct MetricsListener {
    listener: Listener,
    addr: ListenAddr,
}

impl MetricsListener {
    /// Listen on `addr` now (a busy port or a path in the way is an error here).
    pub fn bind(addr: &ListenAddr) -> Result<Self> {
        let listener = Listener::bind(addr).map_err(|e| Error::Metrics(e.to_string()))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Metrics(e.to_string()))?;
        Ok(Self { listener, addr })
    }

    /// Serve `exporter` from a thread named `metrics`, which confines itself to the seccomp
    /// filter `filter` first.
    pub fn serve<K>(self, exporter: Arc<Exporter>, filter: K) -> Result<MetricsServer>
    where
        K: ThreadKind + Send + 'static,
    {
        let Self { listener, addr } = self;
        let stop = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(Error::EventFd)?;
        let stop_thread = stop.try_clone().map_err(Error::EventFd)?;
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                seccomp::install_or_exit(filter);
                let served = minihttp::serve(&listener, Limits::default(), &stop_thread, |req| {
                    match (req.path.as_str(), req.method.as_str()) {
                        ("/metrics", "GET") => {
                            Response::with_type(200, CONTENT_TYPE, exporter.render())
                        }
                        ("/metrics", m) => Response::method_not_allowed(m, "GET"),
                        (p, _) => Response::not_found(p),
                    }
                });
                if let Err(e) = served {
                    tracing::error!("metrics server stopped: {e}");
                }
            })
            .map_err(|e| Error::Metrics(format!("metrics thread: {e}")))?;
        tracing::info!(%addr, "serving metrics");
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl MetricsServer {
    /// Listen on `addr` now and serve `exporter` ([`MetricsListener`] in one step).
    pub fn start<K>(addr: &ListenAddr, exporter: Arc<Exporter>, filter: K) -> Result<Self>
    where
        K: ThreadKind + Send + 'static,
    {
        MetricsListener::bind(addr)?.serve(exporter, filter)
    }

    /// The address served (with the port the kernel chose for port 0).
    pub fn addr(&self) -> &ListenAddr {
        &self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests;
