// SPDX-License-Identifier: Apache-2.0
//! Pausing a device thread (`vm.pause`): the VMM asks through a [`PauseGate`] and waits for the
//! thread to acknowledge, which it does once it takes no new requests (in-VMM queue threads
//! finish what they had taken first; the e1000 receive thread stops reading its TAP).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::lock;

/// How long a pause or resume waits for a device thread.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the thread last acknowledged.
#[derive(Default)]
struct Acked {
    paused: bool,
    /// The thread ended: nothing to wait for.
    gone: bool,
}

/// A pause request channel between the VMM and one device thread.
pub struct PauseGate {
    evt: EventFd,
    want: AtomicBool,
    acked: Mutex<Acked>,
    changed: Condvar,
}

impl PauseGate {
    /// A gate for a running thread.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            want: AtomicBool::new(false),
            acked: Mutex::new(Acked::default()),
            changed: Condvar::new(),
        })
    }

    /// The eventfd the thread polls for requests.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    /// Ask the thread to pause (`true`) or resume and wait for its acknowledgement; `false`
    /// if it did not answer within `timeout`.
    pub fn request(&self, paused: bool, timeout: Duration) -> bool {
        self.want.store(paused, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            tracing::error!("pause gate: {e}");
            return false;
        }
        let acked = lock(&self.acked);
        let (acked, _) = self
            .changed
            .wait_timeout_while(acked, timeout, |a| !a.gone && a.paused != paused)
            .unwrap_or_else(|p| p.into_inner());
        acked.gone || acked.paused == paused
    }

    /// Thread side: consume the wake-up and return the state asked for.
    pub fn wanted(&self) -> bool {
        let _ = self.evt.read();
        self.want.load(Ordering::SeqCst)
    }

    /// Thread side: the thread is now paused (or running).
    pub fn acknowledge(&self, paused: bool) {
        lock(&self.acked).paused = paused;
        self.changed.notify_all();
    }

    /// Thread side: the thread ended; requests no longer wait for it.
    pub fn close(&self) {
        lock(&self.acked).gone = true;
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn requests_wait_for_the_acknowledgement_and_time_out_without_it() {
        let gate = Arc::new(PauseGate::new().unwrap());
        assert!(
            !gate.request(true, Duration::from_millis(20)),
            "nobody answered"
        );
        let thread_gate = gate.clone();
        let thread = std::thread::spawn(move || {
            for _ in 0..2 {
                // Wait for a request as a device thread does (poll on the eventfd).
                let mut pfd = libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(thread_gate.eventfd()),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd for the duration of the call.
                assert_eq!(unsafe { libc::poll(&mut pfd, 1, 5000) }, 1);
                let want = thread_gate.wanted();
                thread_gate.acknowledge(want);
            }
            thread_gate.close();
        });
        assert!(gate.request(true, ACK_TIMEOUT));
        assert!(gate.request(false, ACK_TIMEOUT));
        thread.join().unwrap();
        // A thread that ended answers every request.
        assert!(gate.request(true, Duration::from_millis(1)));
    }
}
