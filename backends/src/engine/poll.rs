// SPDX-License-Identifier: Apache-2.0
//! Adaptive busy-polling of a queue thread.
//!
//! After a queue thread runs out of work it can keep checking its avail rings and io_uring
//! completion queues for a while before it re-enables notifications and sleeps: a request
//! that arrives within that window costs neither the driver a kick nor this thread a
//! wake-up. How long is worth it depends on the load, so the window adapts as QEMU's
//! AioContext polling does ([`PollWindow`]): every idle period that ends (work found, by
//! polling or after a wake-up) is compared with the window and the bound. Idle shorter than
//! the window: the window was right. Longer than the bound: polling could not have caught
//! it, the window halves (and drops to zero below [`INITIAL_WINDOW`]). In between: a
//! longer window would have caught it, the window doubles (from [`INITIAL_WINDOW`]), up
//! to the bound. An idle backend therefore never polls: its window shrinks to zero with
//! its first long sleep, and a thread that sleeps is only woken by work.
//!
//! An adaptive window also steps aside while the host's CPUs are contended
//! ([`super::pressure`]): a thread that polls then keeps other runnable threads (the
//! clients among them) off its CPU.
//!
//! [`Poller`] runs the serve → poll → park cycle of one thread over anything that
//! implements [`Polled`] (one engine and its queue, or a network queue pair).

use std::time::{Duration, Instant};

use super::pressure::{CpuPressure, PollGate, EPOCH};

use crate::Result;

/// Largest adaptive window unless `--poll-max-us` says otherwise.
pub const DEFAULT_POLL_MAX: Duration = Duration::from_micros(64);
/// The first window after polling started paying off (QEMU starts at 4 µs too).
pub const INITIAL_WINDOW: Duration = Duration::from_micros(4);
/// Factor by which the window grows and shrinks.
const STEP: u32 = 2;
/// Rounds in a row in which reported work was not there before a thread sleeps anyway
/// (the first serve of a wake-up may legitimately find nothing).
const FUTILE_ROUNDS: usize = 2;
/// Longest a thread stays in one [`Poller::run`] while work keeps coming: then it yields to
/// its event loop ([`Polled::wake_again`]), where a ring stop or an exit waits for it.
pub const RUN_SLICE: Duration = Duration::from_millis(2);

/// How a queue thread busy-polls before it sleeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollPolicy {
    /// Never: re-enable notifications and sleep as soon as the queue is empty.
    Off,
    /// Always this long (`--poll-us`).
    Fixed(Duration),
    /// A window between zero and `max` that follows the load (`--poll-max-us`).
    Adaptive {
        /// Upper bound of the window.
        max: Duration,
    },
}

impl Default for PollPolicy {
    fn default() -> Self {
        Self::Adaptive {
            max: DEFAULT_POLL_MAX,
        }
    }
}

/// The current busy-poll window of one queue thread (pure: the caller measures time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollWindow {
    policy: PollPolicy,
    window: Duration,
}

impl PollWindow {
    /// A window following `policy`; adaptive windows start at zero.
    pub fn new(policy: PollPolicy) -> Self {
        let window = match policy {
            PollPolicy::Fixed(w) => w,
            PollPolicy::Off | PollPolicy::Adaptive { .. } => Duration::ZERO,
        };
        Self { policy, window }
    }

    /// How long to poll after the next time the thread runs out of work.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// An idle period ended after `idle` (from running out of work until work was found,
    /// by polling or after a wake-up): adapt the window.
    pub fn idle_ended(&mut self, idle: Duration) {
        let PollPolicy::Adaptive { max } = self.policy else {
            return;
        };
        if idle <= self.window {
            // Polling caught it: the window is right.
        } else if idle > max {
            // No window within the bound would have caught it.
            self.window /= STEP;
            if self.window < INITIAL_WINDOW {
                self.window = Duration::ZERO;
            }
        } else if self.window < max {
            // A longer window would have caught it.
            self.window = if self.window.is_zero() {
                INITIAL_WINDOW
            } else {
                self.window * STEP
            }
            .min(max);
        }
    }
}

/// One queue thread's work, as the poll loop sees it.
pub trait Polled {
    /// Serve everything there is to do now, driver notifications left off; returns how
    /// much it did (requests taken, completions reaped; 0: nothing). `polled`:
    /// busy-polling found this work (no kick or completion signal was needed), for the
    /// queues' `polled` counters.
    fn serve(&mut self, polled: bool) -> Result<usize>;
    /// Whether [`Polled::serve`] would find work: a cheap look at the avail rings and
    /// completion queues, no system call.
    fn pending(&mut self) -> bool;
    /// Going to sleep: re-enable driver notifications and completion signals, then look
    /// once more; `true` if work arrived in between (nothing is lost either way: what
    /// arrives after this look wakes the thread).
    fn park(&mut self) -> Result<bool>;
    /// Make the thread's next wait return at once (write its completion eventfd): it
    /// leaves a long run of work to let the rest of its event loop in (a ring stop, an
    /// exit, another device's queue) and comes straight back.
    fn wake_again(&mut self) -> Result<()>;
}

/// The serve → poll → park cycle of one queue thread, with its adaptive window.
#[derive(Debug, Clone, Copy)]
pub struct Poller {
    window: PollWindow,
    /// When the thread last ran out of work (still idle if set).
    idle_since: Option<Instant>,
    /// With an adaptive window: whether the host's CPU pressure lets it poll, and the
    /// sampler and time of the next judgement.
    gate: Option<(PollGate, CpuPressure, Instant)>,
}

impl Poller {
    /// A poller following `policy`. An adaptive window polls only while the host's CPUs
    /// are not contended ([`PollGate`]); a fixed one (`--poll-us`) always does.
    pub fn new(policy: PollPolicy) -> Self {
        let gate = matches!(policy, PollPolicy::Adaptive { .. })
            .then(|| (PollGate::default(), CpuPressure::default(), Instant::now()));
        Self {
            window: PollWindow::new(policy),
            idle_since: None,
            gate,
        }
    }

    /// Without the pressure gate if `keep_polling`: an adaptive window then polls however
    /// contended the host's CPUs are (`--poll-when-contended`).
    pub fn polling_when_contended(mut self, keep_polling: bool) -> Self {
        if keep_polling {
            self.gate = None;
        }
        self
    }

    /// Whether the pressure gate lets this poller poll (always, without a gate).
    pub fn gate_open(&self) -> bool {
        self.gate.as_ref().is_none_or(|(g, _, _)| g.is_open())
    }

    /// Judge the host's CPU pressure once an epoch has passed since the last judgement.
    fn judge_pressure(&mut self) {
        let Some((gate, pressure, next)) = self.gate.as_mut() else {
            return;
        };
        let now = Instant::now();
        if now < *next {
            return;
        }
        *next = now + EPOCH;
        if let Some(waited) = pressure.sample(now) {
            let was_open = gate.is_open();
            if gate.epoch(waited, now) != was_open {
                tracing::debug!(
                    waited,
                    open = !was_open,
                    "busy-polling {} by the host's CPU pressure",
                    if was_open { "stopped" } else { "resumed" }
                );
            }
        }
    }

    /// The current window.
    pub fn window(&self) -> Duration {
        self.window.window()
    }

    /// Serve `work` until it is idle, poll it for the window, then park it; call on every
    /// wake-up of the thread. Returns how much was served after polling found it.
    ///
    /// Work that polling or parking reports but serving does not find (a ring a pop
    /// cannot take from) is looked at once more, then the thread parks and sleeps: a queue
    /// in that state never keeps its thread spinning. Work that keeps coming for longer
    /// than [`RUN_SLICE`] is left to the next wake-up, which the thread arranges at once.
    pub fn run(&mut self, work: &mut impl Polled) -> Result<usize> {
        self.work_found();
        self.judge_pressure();
        let start = Instant::now();
        let mut polled = 0;
        let mut found_by_poll = false;
        let mut futile = 0;
        loop {
            let served = work.serve(found_by_poll)?;
            if found_by_poll {
                polled += served;
            }
            futile = if served == 0 { futile + 1 } else { 0 };
            if futile > FUTILE_ROUNDS {
                work.park()?;
                return Ok(polled);
            }
            if served > 0 && start.elapsed() >= RUN_SLICE {
                work.wake_again()?;
                return Ok(polled);
            }
            let since = *self.idle_since.get_or_insert_with(Instant::now);
            found_by_poll = self.poll(since, work);
            if found_by_poll || work.park()? {
                self.work_found();
                continue;
            }
            return Ok(polled);
        }
    }

    /// Spin on `work.pending()` until it reports work or the window since `since` ends.
    fn poll(&self, since: Instant, work: &mut impl Polled) -> bool {
        let window = self.window.window();
        if window.is_zero() || !self.gate_open() {
            return false;
        }
        loop {
            if work.pending() {
                return true;
            }
            if since.elapsed() >= window {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// Work came (polled, re-checked or woken): end the idle period and adapt.
    fn work_found(&mut self) {
        if let Some(since) = self.idle_since.take() {
            self.window.idle_ended(since.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(64);

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn the_window_grows_while_work_comes_back_within_the_bound() {
        let mut w = PollWindow::new(PollPolicy::Adaptive { max: MAX });
        assert_eq!(w.window(), Duration::ZERO, "no polling before any load");
        // Requests arrive 20 µs after the queue runs dry, again and again.
        let mut seen = Vec::new();
        for _ in 0..8 {
            w.idle_ended(us(20));
            seen.push(w.window().as_micros());
        }
        // 4, 8, 16, 32 µs: then 20 µs gaps are caught and the window stays.
        assert_eq!(seen, [4, 8, 16, 32, 32, 32, 32, 32]);
        // Gaps near the bound push it to the bound and no further.
        for _ in 0..4 {
            w.idle_ended(us(60));
        }
        assert_eq!(w.window(), MAX);
        w.idle_ended(MAX);
        assert_eq!(w.window(), MAX);
    }

    #[test]
    fn the_window_shrinks_to_zero_when_the_queue_goes_idle() {
        let mut w = PollWindow::new(PollPolicy::Adaptive { max: MAX });
        for _ in 0..10 {
            w.idle_ended(us(50));
        }
        assert_eq!(w.window(), MAX);
        let mut seen = Vec::new();
        for _ in 0..6 {
            w.idle_ended(Duration::from_millis(10));
            seen.push(w.window().as_micros());
        }
        assert_eq!(seen, [32, 16, 8, 4, 0, 0]);
        // One idle second from the bound: five halvings, not a second of polling.
        for _ in 0..10 {
            w.idle_ended(us(50));
        }
        w.idle_ended(Duration::from_secs(1));
        assert_eq!(w.window(), MAX / 2);
    }

    #[test]
    fn a_window_never_exceeds_its_bound_and_fixed_or_off_never_move() {
        for max in [us(1), us(5), us(64), us(1000)] {
            let mut w = PollWindow::new(PollPolicy::Adaptive { max });
            for i in 0..200u64 {
                w.idle_ended(us(i * 7 % 1500));
                assert!(w.window() <= max, "{:?} > {max:?}", w.window());
            }
        }
        let mut zero = PollWindow::new(PollPolicy::Adaptive {
            max: Duration::ZERO,
        });
        zero.idle_ended(Duration::ZERO);
        zero.idle_ended(us(1));
        assert_eq!(zero.window(), Duration::ZERO, "--poll-max-us 0 never polls");
        let mut fixed = PollWindow::new(PollPolicy::Fixed(us(50)));
        let mut off = PollWindow::new(PollPolicy::Off);
        for idle in [us(1), us(40), Duration::from_secs(1)] {
            fixed.idle_ended(idle);
            off.idle_ended(idle);
        }
        assert_eq!((fixed.window(), off.window()), (us(50), Duration::ZERO));
    }

    /// Work that arrives `gap` after each time the thread runs dry, `rounds` times, and
    /// counts what the poll loop did with it.
    struct Arrivals {
        gap: Duration,
        rounds: usize,
        dry_since: Option<Instant>,
        served: usize,
        pending_checks: usize,
        parks: usize,
        wakes: usize,
    }

    impl Arrivals {
        fn new(gap: Duration, rounds: usize) -> Self {
            Self {
                gap,
                rounds,
                dry_since: None,
                served: 0,
                pending_checks: 0,
                parks: 0,
                wakes: 0,
            }
        }

        fn arrived(&self) -> bool {
            self.rounds > 0 && self.dry_since.is_some_and(|t| t.elapsed() >= self.gap)
        }
    }

    impl Polled for Arrivals {
        fn serve(&mut self, _polled: bool) -> Result<usize> {
            if self.arrived() {
                self.rounds -= 1;
                self.served += 1;
                self.dry_since = Some(Instant::now());
                return Ok(1);
            }
            self.dry_since.get_or_insert_with(Instant::now);
            Ok(0)
        }

        fn pending(&mut self) -> bool {
            self.pending_checks += 1;
            self.arrived()
        }

        fn park(&mut self) -> Result<bool> {
            self.parks += 1;
            Ok(false)
        }

        fn wake_again(&mut self) -> Result<()> {
            self.wakes += 1;
            Ok(())
        }
    }

    #[test]
    fn the_loop_polls_within_the_window_and_parks_after_it() {
        // A fixed window far longer than the gap: every arrival is found by polling.
        // A run slice ends after 2 ms of serving (the thread yields, `wake_again`); on a
        // loaded machine the five arrivals may span slices, each next run being a wake-up.
        let mut poller = Poller::new(PollPolicy::Fixed(Duration::from_millis(500)));
        let mut work = Arrivals::new(us(200), 5);
        let mut polled = 0;
        for _ in 0..100 {
            polled += poller.run(&mut work).unwrap();
            if work.parks > 0 {
                break;
            }
        }
        assert_eq!((work.served, work.parks), (5, 1));
        assert!(
            polled + work.wakes >= 5,
            "{polled} polled, {} wakes",
            work.wakes
        );
        assert!(polled >= 1 && work.pending_checks > 5);

        // No polling: nothing is looked at, the thread parks at once.
        let mut poller = Poller::new(PollPolicy::Off);
        let mut work = Arrivals::new(us(200), 5);
        assert_eq!(poller.run(&mut work).unwrap(), 0);
        assert_eq!((work.served, work.pending_checks, work.parks), (0, 0, 1));
    }

    /// Reports work that serving never finds.
    struct Phantom {
        serves: usize,
        parks: usize,
    }

    impl Polled for Phantom {
        fn serve(&mut self, _polled: bool) -> Result<usize> {
            self.serves += 1;
            Ok(0)
        }

        fn pending(&mut self) -> bool {
            true
        }

        fn park(&mut self) -> Result<bool> {
            self.parks += 1;
            Ok(true)
        }

        fn wake_again(&mut self) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn work_that_is_reported_but_never_found_does_not_spin_the_thread() {
        for policy in [
            PollPolicy::Off,
            PollPolicy::Fixed(Duration::from_secs(1)),
            PollPolicy::default(),
        ] {
            let mut phantom = Phantom {
                serves: 0,
                parks: 0,
            };
            Poller::new(policy).run(&mut phantom).unwrap();
            assert!(
                phantom.serves <= FUTILE_ROUNDS + 1,
                "{policy:?}: {}",
                phantom.serves
            );
            assert!(phantom.parks >= 1, "{policy:?}: slept without parking");
        }
    }

    #[test]
    fn work_that_keeps_coming_is_left_to_the_next_wake_up_after_a_slice() {
        // Work every 10 µs and a window far longer: without a slice the thread would
        // never leave. It leaves after about RUN_SLICE, arranging to be woken at once,
        // without parking (notifications stay off, nothing is lost).
        let mut poller = Poller::new(PollPolicy::Fixed(Duration::from_secs(1)));
        let mut work = Arrivals::new(us(10), 1_000_000);
        work.dry_since = Some(Instant::now());
        let start = Instant::now();
        poller.run(&mut work).unwrap();
        let spent = start.elapsed();
        assert!(spent >= RUN_SLICE, "left after {spent:?}");
        assert!(spent < RUN_SLICE * 100, "stayed {spent:?}");
        assert_eq!((work.wakes, work.parks), (1, 0));
        assert!(work.served > 1);
    }

    #[test]
    fn an_idle_queue_is_polled_no_longer_than_the_window() {
        let window = Duration::from_millis(20);
        let mut poller = Poller::new(PollPolicy::Fixed(window));
        let mut idle = Arrivals::new(Duration::MAX, 1);
        let start = Instant::now();
        assert_eq!(poller.run(&mut idle).unwrap(), 0);
        let spent = start.elapsed();
        assert!(spent >= window, "parked after {spent:?}");
        // Generous: a loaded 2-CPU machine may deschedule the thread mid-poll.
        assert!(
            spent < window * 25,
            "polled {spent:?} for a {window:?} window"
        );
        assert_eq!(idle.parks, 1);
    }

    /// `rounds` requests, each `gap` after the queue ran dry, served by `poller` (sleeping
    /// between wake-ups as a parked thread would); how many polling found, and the work.
    fn serve_arrivals(poller: &mut Poller, gap: Duration, rounds: usize) -> (usize, Arrivals) {
        let mut work = Arrivals::new(gap, rounds);
        let mut polled = 0;
        while work.rounds > 0 {
            polled += poller.run(&mut work).unwrap();
            while work.rounds > 0 && !work.arrived() {
                std::thread::sleep(us(50));
            }
        }
        (polled, work)
    }

    #[test]
    fn an_adaptive_loop_learns_the_gap_between_requests() {
        let mut poller = Poller::new(PollPolicy::Adaptive {
            max: Duration::from_millis(40),
        });
        // Requests come 300 µs after the queue runs dry. While the window is shorter the
        // thread parks and sleeps until the next one arrives (the kick would wake it); the
        // window doubles from 4 µs with each such sleep until polling catches them.
        let (polled, work) = serve_arrivals(&mut poller, us(300), 24);
        assert!(poller.window() >= us(300), "{:?}", poller.window());
        assert!(polled >= 8, "{polled} of 24 requests found by polling");
        assert!(work.parks <= 16, "{} parks", work.parks);
    }

    #[test]
    fn a_closed_pressure_gate_parks_at_once_and_a_fixed_window_has_no_gate() {
        let mut poller = Poller::new(PollPolicy::Adaptive {
            max: Duration::from_millis(40),
        });
        assert!(poller.gate_open());
        let (gate, _, _) = poller.gate.as_mut().expect("an adaptive window has a gate");
        let now = Instant::now();
        gate.epoch(0.9, now);
        gate.epoch(0.9, now);
        assert!(!poller.gate_open());
        // The same arrivals the adaptive loop learns to catch: none is found by polling.
        let (polled, _) = serve_arrivals(&mut poller, us(300), 24);
        assert_eq!(polled, 0, "a closed gate polls nothing");
        assert!(Poller::new(PollPolicy::Fixed(us(10))).gate_open());
        assert!(Poller::new(PollPolicy::Fixed(us(10))).gate.is_none());
        let adaptive = PollPolicy::Adaptive { max: us(10) };
        assert!(Poller::new(adaptive)
            .polling_when_contended(true)
            .gate
            .is_none());
        assert!(Poller::new(adaptive)
            .polling_when_contended(false)
            .gate
            .is_some());
    }
}
