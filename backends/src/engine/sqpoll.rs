// SPDX-License-Identifier: Apache-2.0
//! Kernel submission polling (io_uring `SQPOLL`) that switches on by itself.
//!
//! With `SQPOLL` a kernel thread picks up a queue's submissions without `io_uring_enter`
//! and runs them, with their page-cache copies, beside the queue thread: at depth 32 on one
//! queue that lifted our backend from ~0.6× to ~1.1× raw io_uring (notes/2026-12-blk-backend.md).
//! It needs a CPU of its own while the queue is busy: with two busy queues on two CPUs it
//! made both slower, and at depth 1 the hop to the kernel thread adds latency a polling
//! queue thread does not have. So by default ([`SqpollPolicy::Auto`]) a queue switches to a
//! `SQPOLL` ring only while it stays busy and deep and the host has a CPU to spare, judged
//! every [`EPOCH`] ([`SqpollGovernor`]), and back once the load is gone. An idle queue's
//! kernel thread sleeps after the idle time, so an idle backend costs no CPU either way.

use std::time::{Duration, Instant};

/// Idle time of a kernel submission thread before it sleeps, unless `--sqpoll-idle-ms` says.
pub const DEFAULT_SQPOLL_IDLE: Duration = Duration::from_millis(10);
/// How often a busy queue's load is judged.
pub const EPOCH: Duration = Duration::from_millis(100);
/// Epochs in a row that must agree before the governor switches.
const AGREE: u32 = 3;
/// Switch on: the queue thread was awake (serving or polling) this share of the epoch ...
const ON_BUSY: f64 = 0.8;
/// ... taking at least this many chains per pass that took any (a deep queue) ...
const ON_DEPTH: f64 = 3.0;
/// ... while this many CPUs of the host sat idle.
const ON_IDLE_CPUS: f64 = 0.5;
/// Switch off: the thread was awake less than this share of the epoch, or ...
const OFF_BUSY: f64 = 0.3;
/// ... took fewer chains than this per pass.
const OFF_DEPTH: f64 = 2.0;

/// When a queue's submissions go through a kernel submission thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqpollPolicy {
    /// Never (`--sqpoll-idle-ms 0`).
    Off,
    /// Always, the kernel thread sleeping after `idle` without work (`--sqpoll-idle-ms N`).
    On {
        /// Idle time before the kernel thread sleeps.
        idle: Duration,
    },
    /// While the queue stays busy and deep and a CPU is free ([`SqpollGovernor`]).
    Auto {
        /// Idle time before the kernel thread sleeps.
        idle: Duration,
    },
}

impl Default for SqpollPolicy {
    fn default() -> Self {
        Self::Auto {
            idle: DEFAULT_SQPOLL_IDLE,
        }
    }
}

/// What a queue did in one epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochLoad {
    /// Share of the epoch the queue thread was awake (0..=1).
    pub busy: f64,
    /// Mean chains taken per pass that took any.
    pub depth: f64,
    /// CPUs of the host that were idle on average (0 when unknown).
    pub idle_cpus: f64,
}

/// Decides from epoch after epoch whether a queue should use kernel submission polling
/// (pure: the engine measures the load).
#[derive(Debug, Clone, Copy, Default)]
pub struct SqpollGovernor {
    on: bool,
    /// Epochs in a row that disagreed with `on`.
    streak: u32,
}

impl SqpollGovernor {
    /// Take one epoch's load into account; returns whether kernel submission polling
    /// should be on from now.
    pub fn epoch(&mut self, load: EpochLoad) -> bool {
        let want = if self.on {
            load.busy >= OFF_BUSY && load.depth >= OFF_DEPTH
        } else {
            load.busy >= ON_BUSY && load.depth >= ON_DEPTH && load.idle_cpus >= ON_IDLE_CPUS
        };
        if want == self.on {
            self.streak = 0;
        } else {
            self.streak += 1;
            if self.streak >= AGREE {
                self.on = want;
                self.streak = 0;
            }
        }
        self.on
    }

    /// Whether it is on.
    pub fn on(&self) -> bool {
        self.on
    }
}

/// The host's idle CPU time, sampled from `/proc/stat`.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostIdle {
    last: Option<(u64, u64)>,
    cpus: usize,
}

impl HostIdle {
    /// A sampler; the first [`HostIdle::sample`] only starts the measurement.
    pub fn new() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self { last: None, cpus }
    }

    /// CPUs idle on average since the previous sample (0 if unknown).
    pub fn sample(&mut self) -> f64 {
        let Some(now) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| idle_and_total(&s))
        else {
            return 0.0;
        };
        let Some(before) = self.last.replace(now) else {
            return 0.0;
        };
        let (idle, total) = (
            now.0.saturating_sub(before.0),
            now.1.saturating_sub(before.1),
        );
        if total == 0 {
            return 0.0;
        }
        // The aggregate line sums every CPU: its share times the CPU count.
        idle as f64 / total as f64 * self.cpus as f64
    }
}

/// `(idle + iowait, total)` jiffies of the aggregate `cpu` line of `/proc/stat`.
fn idle_and_total(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total = v.iter().take(8).sum();
    Some((v.get(3)? + v.get(4).unwrap_or(&0), total))
}

/// A queue's load over the current epoch, and the governor it feeds.
#[derive(Debug, Clone, Copy)]
pub struct SqpollLoad {
    governor: SqpollGovernor,
    host: HostIdle,
    epoch_start: Instant,
    /// Time the thread was awake in this epoch, up to `awake_since`.
    awake: Duration,
    awake_since: Option<Instant>,
    passes: u64,
    chains: u64,
}

impl SqpollLoad {
    /// A fresh measurement, starting now.
    pub fn new() -> Self {
        let mut host = HostIdle::new();
        host.sample();
        Self {
            governor: SqpollGovernor::default(),
            host,
            epoch_start: Instant::now(),
            awake: Duration::ZERO,
            awake_since: None,
            passes: 0,
            chains: 0,
        }
    }

    /// The queue thread woke up.
    pub fn woke(&mut self) {
        self.awake_since.get_or_insert_with(Instant::now);
    }

    /// The queue thread goes to sleep.
    pub fn sleeps(&mut self) {
        if let Some(t) = self.awake_since.take() {
            self.awake += t.elapsed();
        }
    }

    /// A pass took `chains` chains (passes that took none are not counted).
    pub fn pass(&mut self, chains: usize) {
        if chains > 0 {
            self.passes += 1;
            self.chains += chains as u64;
        }
    }

    /// Judge no epoch from now on (tests that force the engine's switches).
    #[cfg(test)]
    pub(crate) fn freeze(&mut self) {
        self.epoch_start = Instant::now() + Duration::from_secs(3600);
    }

    /// If an epoch has ended: judge it and start the next; returns the governor's verdict
    /// then (`None` within an epoch).
    pub fn tick(&mut self) -> Option<bool> {
        let now = Instant::now();
        let length = now.duration_since(self.epoch_start);
        if length < EPOCH {
            return None;
        }
        let mut awake = self.awake;
        if let Some(t) = self.awake_since.as_mut() {
            awake += now.duration_since(*t);
            *t = now;
        }
        let load = EpochLoad {
            busy: awake.as_secs_f64() / length.as_secs_f64(),
            depth: if self.passes == 0 {
                0.0
            } else {
                self.chains as f64 / self.passes as f64
            },
            idle_cpus: self.host.sample(),
        };
        self.epoch_start = now;
        self.awake = Duration::ZERO;
        self.passes = 0;
        self.chains = 0;
        let on = self.governor.epoch(load);
        tracing::trace!(?load, on, "sqpoll epoch");
        Some(on)
    }
}

impl Default for SqpollLoad {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(busy: f64, depth: f64, idle_cpus: f64) -> EpochLoad {
        EpochLoad {
            busy,
            depth,
            idle_cpus,
        }
    }

    #[test]
    fn a_busy_deep_queue_with_a_free_cpu_switches_on_after_three_epochs() {
        let mut g = SqpollGovernor::default();
        let busy = load(0.95, 8.0, 0.9);
        assert_eq!(
            [g.epoch(busy), g.epoch(busy), g.epoch(busy)],
            [false, false, true]
        );
        // Still busy: stays on even though the kernel thread now takes the spare CPU.
        assert!(g.epoch(load(0.9, 6.0, 0.0)));
        // The load goes away: off again after three quiet epochs.
        let quiet = load(0.05, 1.0, 1.8);
        assert_eq!(
            [g.epoch(quiet), g.epoch(quiet), g.epoch(quiet)],
            [true, true, false]
        );
    }

    #[test]
    fn no_switch_without_a_free_cpu_at_shallow_depth_or_in_bursts() {
        let mut g = SqpollGovernor::default();
        for _ in 0..10 {
            assert!(!g.epoch(load(0.99, 8.0, 0.2)), "no CPU to spare");
            assert!(!g.epoch(load(0.99, 1.0, 1.5)), "depth 1");
        }
        // Two busy epochs, then a quiet one: the streak starts over.
        let busy = load(0.95, 8.0, 0.9);
        g.epoch(busy);
        g.epoch(busy);
        g.epoch(load(0.1, 8.0, 0.9));
        g.epoch(busy);
        assert!(!g.epoch(busy));
        assert!(g.epoch(busy));
    }

    #[test]
    fn proc_stat_gives_idle_and_total() {
        let stat = "cpu  100 5 50 800 20 1 2 3 0 0\ncpu0 50 2 25 400 10 0 1 1 0 0\n";
        assert_eq!(idle_and_total(stat), Some((820, 981)));
        assert_eq!(idle_and_total("intr 1 2\n"), None);
        let mut h = HostIdle::new();
        assert_eq!(h.sample(), 0.0, "the first sample only starts");
        std::thread::sleep(Duration::from_millis(50));
        let idle = h.sample();
        assert!((0.0..=h.cpus as f64 + 0.01).contains(&idle), "{idle}");
    }

    #[test]
    fn an_epoch_measures_how_long_the_thread_was_awake_and_how_deep_the_queue_was() {
        let mut l = SqpollLoad::new();
        l.woke();
        l.pass(8);
        l.pass(0);
        l.pass(4);
        assert_eq!(l.tick(), None, "within the epoch");
        std::thread::sleep(EPOCH + Duration::from_millis(5));
        // Awake all along, 6 chains per pass: one epoch is not enough to switch.
        assert_eq!(l.tick(), Some(false));
        assert_eq!((l.passes, l.chains), (0, 0), "the next epoch starts empty");
        l.sleeps();
        assert!(l.awake_since.is_none());
    }
}
