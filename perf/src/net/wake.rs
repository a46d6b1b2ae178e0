// SPDX-License-Identifier: Apache-2.0
//! What one notification costs on this machine: an eventfd write that wakes a thread asleep
//! in `poll(2)`, as each used-buffer notification of the backend (and each kick of the
//! driver) does. Measured in every run because it varies by orders of magnitude between
//! machines (a few µs on bare metal, tens where the kernel is itself a guest), and the
//! interrupt-driven figures depend on it while the raw reference pays nothing of the kind.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::{io_err, Result};

/// Time the sleeper gets to fall asleep before each wake-up.
const SETTLE: Duration = Duration::from_micros(300);

/// Median cost, in ns, of `samples` eventfd writes each waking a thread blocked in `poll`
/// (the time the writer spends in `write`).
pub fn eventfd_wake_ns(samples: usize) -> Result<f64> {
    let wake = Arc::new(EventFd::new(0).map_err(io_err("eventfd"))?);
    let ack = Arc::new(EventFd::new(0).map_err(io_err("eventfd"))?);
    let stop = Arc::new(AtomicBool::new(false));
    let sleeper = {
        let (wake, ack, stop) = (wake.clone(), ack.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut pfd = libc::pollfd {
                    fd: wake.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for the duration of the call.
                if unsafe { libc::poll(&mut pfd, 1, 1000) } > 0 {
                    let _ = wake.read();
                    let _ = ack.write(1);
                }
            }
        })
    };
    let mut times = Vec::with_capacity(samples);
    let mut result = Ok(());
    for _ in 0..samples.max(1) {
        std::thread::sleep(SETTLE);
        let t = Instant::now();
        if let Err(e) = wake.write(1) {
            result = Err(io_err("wake the sleeper")(e));
            break;
        }
        times.push(t.elapsed().as_nanos() as f64);
        if let Err(e) = ack.read() {
            result = Err(io_err("wait for the sleeper")(e));
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = wake.write(1);
    let _ = sleeper.join();
    result?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_measures_a_positive_bounded_cost() {
        let ns = eventfd_wake_ns(20).unwrap();
        assert!(ns > 0.0 && ns < 10e6, "{ns} ns");
    }
}
