//! [`Engine`]: one io_uring serving one virtqueue.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, IoUring};
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::histogram::bump;
use super::{DescChain, Prepared, QueueStats, RequestHandler, Tuning, VirtQueue};
use crate::inflight::InflightQueue;
use crate::{Error, Result};

mod settle;

/// `user_data` of cancellations (requests carry their slot index).
const CANCEL_TAG: u64 = u64::MAX;

/// How long stopping a ring ([`Engine::settle`], vhost-user GET_VRING_BASE) waits for the
/// requests in flight before giving up on them.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// What an engine serves and how.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Largest queue size the engine must serve (bounds in-flight requests and ring size).
    pub queue_size: u16,
    /// Largest iovec count one request may use.
    pub max_iov: usize,
    /// Polling and batching.
    pub tuning: Tuning,
}

impl EngineConfig {
    /// A queue of up to `queue_size` entries whose requests use up to `max_iov` iovecs,
    /// with the default [`Tuning`].
    pub fn new(queue_size: u16, max_iov: usize) -> Self {
        Self {
            queue_size,
            max_iov,
            tuning: Tuning::default(),
        }
    }
}

/// One in-flight request.
struct Slot<R, M> {
    chain: DescChain,
    iov: Vec<libc::iovec>,
    req: R,
    /// Guest memory snapshot pinned while the kernel may touch `iov`.
    mem: Option<Arc<M>>,
    /// Given up on when its ring stopped ([`Engine::settle`] timed out): its completion is
    /// dropped, never put on a ring the driver took back.
    abandoned: bool,
    /// When the pass that took the request started it (for the latency histogram).
    started: Instant,
}

// SAFETY: the raw pointers in `iov` point into guest memory kept mapped by `mem`; a slot is
// only touched by the thread that owns the engine (the engine is moved between threads,
// never shared).
unsafe impl<R: Send, M: Send + Sync> Send for Slot<R, M> {}

/// One io_uring serving one virtqueue for a [`RequestHandler`].
pub struct Engine<H: RequestHandler, M> {
    ring: IoUring,
    handler: H,
    slots: Vec<Slot<H::Req, M>>,
    free: Vec<u32>,
    inflight: usize,
    /// Of `inflight`, the requests given up on.
    abandoned: usize,
    used: Vec<(u16, u32)>,
    /// When each entry of `used` was started, in the same order.
    used_started: Vec<Instant>,
    /// Stands in for start times while requests are not timed ([`QueueStats::timed`]).
    epoch: Instant,
    completion: EventFd,
    cfg: EngineConfig,
    stats: Arc<QueueStats>,
    stopping: bool,
    /// The ring was seen running (a start is noticed on the first pass after it).
    running: bool,
    /// This queue's part of the frontend's inflight region, if it shared one.
    tracker: Option<InflightQueue>,
}

impl<H: RequestHandler, M: GuestMemory + Send + Sync + 'static> Engine<H, M> {
    /// Create an engine with its own io_uring; completions are signalled on
    /// [`Engine::completion_fd`].
    pub fn new(handler: H, cfg: EngineConfig, stats: Arc<QueueStats>) -> Result<Self> {
        let entries = u32::from(cfg.queue_size.max(1)).next_power_of_two();
        let mut sq_entries = entries;
        let mut sqpoll_idle_ms = None;
        if let Some(idle) = cfg.tuning.sqpoll_idle {
            sqpoll_idle_ms = Some(u32::try_from(idle.as_millis()).unwrap_or(u32::MAX).max(1));
            // The kernel thread posts a batch's completions before it moves the SQ head past
            // the batch: the slots those completions free are refilled while up to a slot
            // count of consumed entries still holds the ring, next to at most a slot count
            // of unconsumed ones. Twice the slots always fit.
            sq_entries = entries * 2;
        }
        let completion = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
        // The handler's operations, and cancelling them when a stop gives up on them.
        let mut opcodes = handler.opcodes().to_vec();
        opcodes.push(opcode::AsyncCancel::CODE);
        let ring = super::new_ring(&super::RingSpec {
            sq_entries,
            cq_entries: Some(entries * 2),
            sqpoll_idle_ms,
            file: handler.file(),
            eventfd: completion.as_raw_fd(),
            opcodes: &opcodes,
            flags: io_uring::squeue::Flags::empty(),
        })?;
        let n = usize::from(cfg.queue_size.max(1));
        let slots = (0..n)
            .map(|_| Slot {
                chain: DescChain::default(),
                iov: Vec::with_capacity(cfg.max_iov),
                req: H::Req::default(),
                mem: None,
                abandoned: false,
                started: Instant::now(),
            })
            .collect();
        Ok(Self {
            ring,
            handler,
            slots,
            free: (0..n as u32).rev().collect(),
            inflight: 0,
            abandoned: 0,
            used: Vec::with_capacity(n),
            used_started: Vec::with_capacity(n),
            epoch: Instant::now(),
            completion,
            cfg,
            stats,
            stopping: false,
            running: false,
            tracker: None,
        })
    }

    /// Track requests in `inflight` (or stop tracking): from the next start of the ring on,
    /// which first resubmits what the region records as in flight.
    pub fn set_inflight(&mut self, inflight: Option<InflightQueue>) {
        self.tracker = inflight;
    }

    /// Eventfd written when operations complete; poll it for readability and call
    /// [`Engine::process`] (which consumes it before returning).
    pub fn completion_fd(&self) -> &EventFd {
        &self.completion
    }

    /// The device handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// Counters of this queue.
    pub fn stats(&self) -> &Arc<QueueStats> {
        &self.stats
    }

    /// Requests submitted and not yet completed.
    pub fn inflight(&self) -> usize {
        self.inflight
    }

    /// Serve `q` until it is empty and no completion is pending: pass after pass, pop up to
    /// a batch, submit it with one `io_uring_enter`, reap, update the used ring and signal
    /// once; then optionally busy-poll, re-enable notifications and re-check. Call on every
    /// kick and every completion eventfd event.
    pub fn process<Q: VirtQueue<Mem = M>>(&mut self, q: &mut Q) -> Result<()> {
        // No eventfd signals while this thread is reaping anyway.
        self.ring.completion().disable_eventfd();
        bump(&self.stats.wakeups, 1);
        let served = self.serve(q);
        if served.is_err() {
            // Completions still in flight must wake the thread again.
            self.ring.completion().enable_eventfd();
        }
        self.stats
            .inflight
            .store(self.inflight as u64, Ordering::Relaxed);
        served
    }

    /// [`Engine::process`] with the completion eventfd disabled; re-enables it on success.
    fn serve<Q: VirtQueue<Mem = M>>(&mut self, q: &mut Q) -> Result<()> {
        if !q.ready() {
            // Stopped ([`Engine::settle`] answered everything taken): its rings are not ours.
            // Consume the wake-up, or the thread's epoll would report it again and again.
            self.stopped();
            self.ring.completion().enable_eventfd();
            let _ = self.completion.read();
            return Ok(());
        }
        if !self.running {
            self.running = true;
            self.resume(q)?;
        }
        let mut idle_since: Option<Instant> = None;
        let timed = self.stats.timed();
        loop {
            let mut progress = 0usize;
            if !self.stopping {
                q.disable_notification()?;
                let mem = q.memory();
                let max = self
                    .free
                    .len()
                    .min(usize::from(self.cfg.tuning.batch.max(1)));
                // One clock read per batch, at its first request.
                let mut stamp = (!timed).then_some(self.epoch);
                let popped = q.pop_batch(&mem, max, |chain| {
                    let started = *stamp.get_or_insert_with(Instant::now);
                    self.start(chain, &mem, started)
                });
                if popped > 0 {
                    let n = popped as u64;
                    self.stats.requests.fetch_add(n, Ordering::Relaxed);
                    if idle_since.is_some() {
                        self.stats.polled.fetch_add(n, Ordering::Relaxed);
                        bump(&self.stats.poll_hits, 1);
                    }
                }
                progress += popped;
            }
            self.submit()?;
            progress += self.reap();
            self.publish(q)?;
            if progress > 0 {
                idle_since = None;
                continue;
            }
            if self.stopping {
                self.ring.completion().enable_eventfd();
                return Ok(());
            }
            let poll = self.cfg.tuning.poll;
            if !poll.is_zero() {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() < poll {
                    std::hint::spin_loop();
                    continue;
                }
            }
            if q.enable_notification()? && !self.free.is_empty() {
                continue; // buffers arrived between the last pop and re-enabling
            }
            // Re-arm and consume the completion eventfd, then re-check the CQ: a CQE posted
            // after re-arming signals the eventfd again, one posted before is seen here.
            self.ring.completion().enable_eventfd();
            let _ = self.completion.read();
            if !self.ring.completion().is_empty() {
                self.ring.completion().disable_eventfd();
                continue;
            }
            return Ok(());
        }
    }

    /// Stop taking new requests, wait for every in-flight one and complete it.
    pub fn drain<Q: VirtQueue<Mem = M>>(&mut self, q: &mut Q) -> Result<()> {
        self.stopping = true;
        self.settle(q)
    }

    /// Put the answered requests on the used ring (signalling the driver if it asked) and time
    /// them.
    fn publish<Q: VirtQueue<Mem = M>>(&mut self, q: &mut Q) -> Result<()> {
        let published = q.flush_used(&mut self.used, &self.stats, self.tracker.as_mut());
        if self.stats.timed() {
            self.stats.latency.observe_since(&mut self.used_started);
        } else {
            self.used_started.clear();
        }
        published
    }

    /// The ring stopped (or is about to): nothing is taken until it starts again.
    fn stopped(&mut self) {
        self.running = false;
        if let Some(tracker) = &mut self.tracker {
            tracker.stop();
        }
    }

    /// The ring (re)started: with an inflight region, resubmit what a previous backend took
    /// and did not answer, in the order it took them, before anything new, and resume the
    /// avail ring after them.
    fn resume<Q: VirtQueue<Mem = M>>(&mut self, q: &mut Q) -> Result<()> {
        let Some(tracker) = &mut self.tracker else {
            return Ok(());
        };
        let mem = q.memory();
        let guest_used = q.guest_used_idx(&mem)?;
        let (table, size) = q.desc_table();
        let recovery = tracker.start(guest_used, size);
        let Some(next_avail) = recovery.next_avail else {
            return Ok(());
        };
        q.set_next_avail(next_avail);
        let started = Instant::now();
        for &head in &recovery.heads {
            let Some(idx) = self.free.pop() else { break };
            self.slots[idx as usize]
                .chain
                .reset_from_head(&*mem, table, size, head);
            self.prepare_and_submit(idx, &mem, started);
        }
        let n = recovery.heads.len() as u64;
        self.stats.resubmitted.fetch_add(n, Ordering::Relaxed);
        if n > 0 || recovery.cleared > 0 {
            tracing::info!(
                resubmitted = n,
                cleared = recovery.cleared,
                next_avail,
                "ring restarted: requests left in flight by a previous backend resubmitted"
            );
        }
        Ok(())
    }

    /// Prepare and queue one popped chain (the caller pops at most as many as there are free
    /// slots, and counts them).
    fn start(&mut self, chain: DescriptorChain<&M>, mem: &Arc<M>, started: Instant) {
        let Some(idx) = self.free.pop() else { return };
        let walked = &mut self.slots[idx as usize].chain;
        walked.reset_from(chain);
        if let Some(tracker) = &mut self.tracker {
            tracker.mark(walked.head());
        }
        self.prepare_and_submit(idx, mem, started);
    }

    /// Let the handler prepare the chain walked into slot `idx`, then queue its operation or
    /// answer it; `started` is when the pass that took it began.
    fn prepare_and_submit(&mut self, idx: u32, mem: &Arc<M>, started: Instant) {
        let slot = &mut self.slots[idx as usize];
        slot.iov.clear();
        slot.req = H::Req::default();
        slot.started = started;
        match self
            .handler
            .prepare(&**mem, &slot.chain, &mut slot.req, &mut slot.iov)
        {
            Prepared::Done(len) => {
                self.used.push((slot.chain.head(), len));
                self.used_started.push(started);
                self.free.push(idx);
            }
            Prepared::Submit(sqe) => {
                slot.mem = Some(mem.clone());
                let sqe = sqe.user_data(u64::from(idx));
                // SAFETY: the SQE's buffers (slot.iov, guest memory pinned by slot.mem) stay
                // valid and untouched until its completion is reaped in `reap`.
                let mut pushed = unsafe { self.ring.submission().push(&sqe) }.is_ok();
                if !pushed && self.ring.submit().is_ok() {
                    // Unreachable with the SQ sized as in `new`; retry once after flushing it.
                    // SAFETY: as above.
                    pushed = unsafe { self.ring.submission().push(&sqe) }.is_ok();
                }
                if !pushed {
                    slot.mem = None;
                    let len =
                        self.handler
                            .complete(&**mem, &slot.chain, &mut slot.req, -libc::EBUSY);
                    self.used.push((slot.chain.head(), len));
                    self.used_started.push(started);
                    self.free.push(idx);
                    return;
                }
                self.inflight += 1;
            }
        }
    }

    fn submit(&mut self) -> Result<()> {
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        loop {
            match self.ring.submit() {
                Ok(n) => {
                    QueueStats::inc(&self.stats.submits);
                    bump(&self.stats.submitted, n as u64);
                    self.stats.batch.observe(n as u64);
                    return Ok(());
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // Completion queue busy: reaping frees room; the next pass resubmits.
                Err(e)
                    if e.raw_os_error() == Some(libc::EBUSY)
                        || e.raw_os_error() == Some(libc::EAGAIN) =>
                {
                    return Ok(())
                }
                Err(e) => return Err(Error::UringSubmit(e)),
            }
        }
    }

    fn reap(&mut self) -> usize {
        let mut n = 0;
        for cqe in self.ring.completion() {
            if cqe.user_data() == CANCEL_TAG {
                continue;
            }
            let idx = cqe.user_data() as usize;
            let Some(slot) = self.slots.get_mut(idx) else {
                tracing::error!(idx, "completion for unknown slot");
                continue;
            };
            let Some(mem) = slot.mem.take() else {
                tracing::error!(idx, "completion for idle slot");
                continue;
            };
            self.inflight -= 1;
            if std::mem::take(&mut slot.abandoned) {
                // Its ring was taken back when the wait for it timed out.
                self.abandoned -= 1;
                self.free.push(idx as u32);
                continue;
            }
            let len = self
                .handler
                .complete(&*mem, &slot.chain, &mut slot.req, cqe.result());
            self.used.push((slot.chain.head(), len));
            self.used_started.push(slot.started);
            self.free.push(idx as u32);
            n += 1;
        }
        n
    }
}

/// `io::Error` for a negative io_uring result.
pub(crate) fn errno(res: i32) -> io::Error {
    io::Error::from_raw_os_error(-res)
}

#[cfg(test)]
mod tests;
