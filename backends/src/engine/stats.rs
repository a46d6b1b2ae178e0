//! Per-queue counters, shared between the queue thread and whoever reports them.

use std::sync::atomic::{AtomicU64, Ordering};

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
            sqpoll_switches: r(&self.sqpoll_switches),
        }
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
