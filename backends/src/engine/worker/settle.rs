// SPDX-License-Identifier: Apache-2.0
//! Stopping a ring: [`Engine::settle`] waits, for a bounded time, for the requests in flight.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use io_uring::{opcode, types};
use vm_memory::GuestMemory;

use super::{Engine, CANCEL_TAG, SETTLE_TIMEOUT};
use crate::engine::{RequestHandler, VirtQueue};
use crate::{Error, Result};

impl<H: RequestHandler, M: GuestMemory + Send + Sync + 'static> Engine<H, M> {
    /// Wait (at most [`SETTLE_TIMEOUT`]) for every in-flight request and put it on the used
    /// ring: what a backend owes the frontend before it reports the base of a stopped ring
    /// (vhost-user GET_VRING_BASE). The engine serves the ring again once it is restarted.
    pub fn settle<Q: VirtQueue<Mem = M>>(&mut self, q: &mut Q) -> Result<()> {
        self.settle_within(q, SETTLE_TIMEOUT)
    }

    /// [`Engine::settle`] waiting at most `limit`. Requests still in flight then are given
    /// up on: their buffers stay pinned until the kernel completes them, and their
    /// completions are dropped (an inflight region still records them). What did complete
    /// is published, and the error names how many were left.
    pub fn settle_within<Q: VirtQueue<Mem = M>>(
        &mut self,
        q: &mut Q,
        limit: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + limit;
        let mut timed_out = false;
        while self.inflight > self.abandoned {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                timed_out = true;
                break;
            }
            let ts = types::Timespec::from(left);
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::ETIME)) => {}
                Err(e) => return Err(Error::UringSubmit(e)),
            }
            self.reap();
        }
        let flushed = self.publish(q);
        // What the kernel still holds: zero unless the wait timed out.
        self.stats
            .inflight
            .store(self.inflight as u64, Ordering::Relaxed);
        self.stopped();
        if timed_out {
            let stuck = self.abandon_inflight();
            return Err(Error::SettleTimeout {
                inflight: stuck,
                secs: limit.as_secs(),
            });
        }
        flushed
    }

    /// Give up on every request in flight and ask the kernel to cancel them (an operation
    /// blocked in an io-wq worker or armed on a poll usually can be); returns how many were
    /// newly given up on.
    fn abandon_inflight(&mut self) -> usize {
        let mut n = 0;
        for (idx, slot) in self.slots.iter_mut().enumerate() {
            if slot.mem.is_some() && !slot.abandoned {
                slot.abandoned = true;
                n += 1;
                let cancel = opcode::AsyncCancel::new(idx as u64)
                    .build()
                    .flags(io_uring::squeue::Flags::FIXED_FILE)
                    .user_data(CANCEL_TAG);
                // SAFETY: a cancellation carries no buffer.
                let _ = unsafe { self.ring.submission().push(&cancel) };
            }
        }
        self.abandoned += n;
        let _ = self.submit();
        n
    }
}
