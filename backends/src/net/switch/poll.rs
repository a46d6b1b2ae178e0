// SPDX-License-Identifier: Apache-2.0
//! [`PollWindow`]: how long a switch queue thread keeps polling its transmit ring after it ran
//! dry, adapted to the load as QEMU's AioContext adapts its polling (grow while polling would
//! have caught the next frame, shrink while it could not have).

use std::time::Duration;

/// The first non-zero window.
const INITIAL: Duration = Duration::from_micros(4);

/// The busy-poll window of one queue (pure: the caller measures the idle periods).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollWindow {
    max: Duration,
    window: Duration,
}

impl PollWindow {
    /// A window between zero and `max` (zero: never poll), starting at zero.
    pub fn new(max: Duration) -> Self {
        Self {
            max,
            window: Duration::ZERO,
        }
    }

    /// How long to poll the next time the queue runs dry.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The queue was idle for `idle` (from running dry until frames came, found by polling or
    /// after a kick). Idle within the window: the window is right. Longer than the bound: no
    /// window could have caught it, halve (zero below [`INITIAL`]). In between: double (from
    /// [`INITIAL`]) up to the bound.
    pub fn idle_ended(&mut self, idle: Duration) {
        if idle <= self.window {
            return;
        }
        if idle > self.max {
            self.window /= 2;
            if self.window < INITIAL {
                self.window = Duration::ZERO;
            }
        } else {
            self.window = if self.window.is_zero() {
                INITIAL
            } else {
                self.window * 2
            }
            .min(self.max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn the_window_grows_under_load_and_shrinks_to_zero_when_idle() {
        let mut w = PollWindow::new(us(64));
        assert_eq!(w.window(), Duration::ZERO);
        let grown: Vec<u128> = (0..6)
            .map(|_| {
                w.idle_ended(us(50));
                w.window().as_micros()
            })
            .collect();
        assert_eq!(grown, [4, 8, 16, 32, 64, 64], "never past the bound");
        // Frames every 50 µs are now caught: the window stays.
        w.idle_ended(us(50));
        assert_eq!(w.window(), us(64));
        // Long idle periods halve it down to zero, where it stays while idle.
        let shrunk: Vec<u128> = (0..6)
            .map(|_| {
                w.idle_ended(Duration::from_millis(10));
                w.window().as_micros()
            })
            .collect();
        assert_eq!(shrunk, [32, 16, 8, 4, 0, 0]);
    }

    #[test]
    fn a_zero_bound_never_polls() {
        let mut w = PollWindow::new(Duration::ZERO);
        for idle in [us(1), us(100), Duration::from_secs(1)] {
            w.idle_ended(idle);
            assert_eq!(w.window(), Duration::ZERO);
        }
    }
}
