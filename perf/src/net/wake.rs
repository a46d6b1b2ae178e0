// SPDX-License-Identifier: Apache-2.0
//! What one notification costs on this machine: an eventfd write that wakes a thread asleep
//! in `poll(2)`, as each used-buffer notification of the backend (and each kick of the
//! driver) does. Measured in every run because it varies by orders of magnitude between
//! machines (a few µs on bare metal, tens where the kernel is itself a guest), and the
//! interrupt-driven figures depend on it while the raw reference pays nothing of the kind.
//! And what a whole exchange with a sleeping client costs beyond the server's work
//! ([`sleeping_client_round_trip_ns`]), the floor of every request of such a client.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// Median time, in ns, that one request of a client asleep between requests costs beyond
/// the server's `service` time, whatever the server: the client posts a request in shared
/// memory and sleeps in `poll(2)` on an eventfd (as libblkio's completion wait and a
/// guest's interrupt-driven driver do); a server thread that busy-polls the shared memory
/// sees it, spends `service` on it, and writes the eventfd; the client wakes and reads the
/// eventfd. No ring is parsed and nothing is copied, so a real server and client add to it.
pub fn sleeping_client_round_trip_ns(samples: usize, service: Duration) -> Result<f64> {
    let call = Arc::new(EventFd::new(0).map_err(io_err("eventfd"))?);
    let request = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (call, request, stop) = (call.clone(), request.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                let seq = request.load(Ordering::Acquire);
                if seq == last {
                    std::hint::spin_loop();
                    continue;
                }
                last = seq;
                let start = Instant::now();
                while start.elapsed() < service {
                    std::hint::spin_loop();
                }
                if call.write(1).is_err() {
                    return;
                }
            }
        })
    };
    let mut times = Vec::with_capacity(samples.max(1));
    let mut result = Ok(());
    for seq in 1..=samples.max(1) as u64 {
        let t = Instant::now();
        request.store(seq, Ordering::Release);
        let mut pfd = libc::pollfd {
            fd: call.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, 1000) };
        if ready != 1 {
            result = Err(io_err("wait for the spinning server")(
                std::io::Error::from(std::io::ErrorKind::TimedOut),
            ));
            break;
        }
        if let Err(e) = call.read() {
            result = Err(io_err("read the call eventfd")(e));
            break;
        }
        times.push(t.elapsed().saturating_sub(service).as_nanos() as f64);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
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

    #[test]
    fn a_round_trip_costs_more_than_nothing_and_excludes_the_service() {
        let short = sleeping_client_round_trip_ns(200, Duration::ZERO).unwrap();
        assert!(short > 0.0 && short < 10e6, "{short} ns");
        // The service time is taken off: a 20 ms service leaves a floor far below it.
        let long = sleeping_client_round_trip_ns(5, Duration::from_millis(20)).unwrap();
        assert!(long < 10e6, "{long} ns beyond a 20 ms service");
    }
}
