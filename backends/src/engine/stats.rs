// SPDX-License-Identifier: Apache-2.0
//! Per-queue counters, shared between the queue thread and whoever reports them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::histogram::{BatchHistogram, LatencyHistogram};

/// Per-queue counters (relaxed atomics: written by one queue thread, read by reporters).
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Chains popped from the avail ring.
    pub requests: AtomicU64,
    /// Requests answered with OK.
    pub ok: AtomicU64,
    /// Requests answered with an I/O error status (including guest faults).
    pub io_errors: AtomicU64,
    /// Requests answered with UNSUPP.
    pub unsupported: AtomicU64,
    /// Guest faults (bad descriptors, bad headers, out-of-range sectors, …).
    pub guest_faults: AtomicU64,
    /// Chains returned with used length 0 because no status could be written.
    pub dropped: AtomicU64,
    /// Used entries the queue refused (head index out of range).
    pub used_rejected: AtomicU64,
    /// `io_uring_enter` submissions.
    pub submits: AtomicU64,
    /// Driver notifications (call eventfd writes).
    pub notifications: AtomicU64,
    /// Requests found while busy-polling (no kick needed).
    pub polled: AtomicU64,
    /// Passes over the queue that ended in an error (logged; the queue keeps being served).
    pub failures: AtomicU64,
    /// Requests a previous backend process left in flight, resubmitted at a ring start
    /// (receive queues: buffers it had taken and not filled, taken again).
    pub resubmitted: AtomicU64,
    /// Bytes moved into guest buffers: disk reads, frames received (without vnet headers).
    pub bytes_read: AtomicU64,
    /// Bytes taken from guest buffers: disk writes, frames sent (without vnet headers).
    pub bytes_written: AtomicU64,
    /// Guest notifications (kicks) the queue's thread took.
    pub kicks: AtomicU64,
    /// Times the queue's thread was woken from its sleep to serve the queue.
    pub wakeups: AtomicU64,
    /// Busy-polling windows that found work (served without a wake-up).
    pub poll_hits: AtomicU64,
    /// Operations handed to io_uring (divided by `submits`: the mean batch).
    pub submitted: AtomicU64,
    /// Requests taken and not answered yet, as of the queue's last pass (a gauge).
    pub inflight: AtomicU64,
    /// Time from the pass that took a request to the used-ring publication that answered it
    /// (nanoseconds), while [`QueueStats::set_timed`] is on.
    pub latency: LatencyHistogram,
    /// Operations per io_uring submission.
    pub batch: BatchHistogram,
    /// Whether requests are timed for `latency` (a clock read per batch).
    timed: AtomicBool,
    /// Times the queue switched kernel submission polling on or off by itself.
    pub sqpoll_switches: AtomicU64,
}

/// Plain copy of [`QueueStats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub ok: u64,
    pub io_errors: u64,
    pub unsupported: u64,
    pub guest_faults: u64,
    pub dropped: u64,
    pub used_rejected: u64,
    pub submits: u64,
    pub notifications: u64,
    pub polled: u64,
    pub failures: u64,
    pub resubmitted: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub kicks: u64,
    pub submitted: u64,
    pub sqpoll_switches: u64,
}

impl QueueStats {
    /// Add one to `counter`.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Read all counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            requests: r(&self.requests),
            ok: r(&self.ok),
            io_errors: r(&self.io_errors),
            unsupported: r(&self.unsupported),
            guest_faults: r(&self.guest_faults),
            dropped: r(&self.dropped),
            used_rejected: r(&self.used_rejected),
            submits: r(&self.submits),
            notifications: r(&self.notifications),
            polled: r(&self.polled),
            failures: r(&self.failures),
            resubmitted: r(&self.resubmitted),
            bytes_read: r(&self.bytes_read),
            bytes_written: r(&self.bytes_written),
            kicks: r(&self.kicks),
            submitted: r(&self.submitted),
            sqpoll_switches: r(&self.sqpoll_switches),
        }
    }

    /// Time requests into [`QueueStats::latency`] (on while a metrics endpoint exports the
    /// queue; off, the data path reads no clock).
    pub fn set_timed(&self, on: bool) {
        self.timed.store(on, Ordering::Relaxed);
    }

    /// Whether requests are timed.
    pub fn timed(&self) -> bool {
        self.timed.load(Ordering::Relaxed)
    }

    /// Count and log a pass over queue `queue` that failed with `error`. The caller keeps
    /// serving the queue: vhost-user-backend ends a queue thread whose handler returns an
    /// error, which would stall the queue for good. The first few failures are errors in
    /// the log, later ones debug messages (a guest can make every pass fail).
    pub fn report_failure(&self, queue: &str, error: &dyn std::fmt::Display) {
        let earlier = self.failures.fetch_add(1, Ordering::Relaxed);
        if earlier < LOGGED_FAILURES {
            tracing::error!(queue, "queue pass failed: {error}");
        } else {
            tracing::debug!(queue, "queue pass failed: {error}");
        }
    }
}

/// Failures per queue logged as errors before they are only counted.
const LOGGED_FAILURES: u64 = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_past_the_logged_ones() {
        let stats = QueueStats::default();
        for _ in 0..LOGGED_FAILURES + 3 {
            stats.report_failure("q0", &"used ring outside guest memory");
        }
        assert_eq!(stats.snapshot().failures, LOGGED_FAILURES + 3);
    }
}
