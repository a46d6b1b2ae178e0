// SPDX-License-Identifier: Apache-2.0
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
use super::{
    DescChain, Polled, Poller, Prepared, QueueStats, RequestHandler, SqpollLoad, SqpollPolicy,
    Tuning, VirtQueue, DEFAULT_SQPOLL_IDLE,
};
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
    /// The busy-poll window of [`Engine::process`].
    poller: Poller,
    /// The ring polls submissions in a kernel thread (`SQPOLL`).
    sqpoll_on: bool,
    /// With [`SqpollPolicy::Auto`]: the load that decides whether it should.
    sqpoll_load: Option<SqpollLoad>,
    /// A switch decided and waiting for nothing to be in flight.
    sqpoll_switch: Option<bool>,
}

/// A ring for `cfg`'s queue carrying `handler`'s operations on its file (and cancellations
/// of them), completions signalled on `completion`, polled by a kernel submission thread if
/// `sqpoll`.
fn build_ring<H: RequestHandler>(
    cfg: &EngineConfig,
    handler: &H,
    completion: &EventFd,
    sqpoll: bool,
) -> Result<IoUring> {
    let entries = u32::from(cfg.queue_size.max(1)).next_power_of_two();
    let mut sq_entries = entries;
    let idle = match cfg.tuning.sqpoll {
        SqpollPolicy::On { idle } | SqpollPolicy::Auto { idle } => idle,
        SqpollPolicy::Off => DEFAULT_SQPOLL_IDLE,
    };
    let mut sqpoll_idle_ms = None;
    if sqpoll {
        sqpoll_idle_ms = Some(u32::try_from(idle.as_millis()).unwrap_or(u32::MAX).max(1));
        // The kernel thread posts a batch's completions before it moves the SQ head past
        // the batch: the slots those completions free are refilled while up to a slot
        // count of consumed entries still holds the ring, next to at most a slot count
        // of unconsumed ones. Twice the slots always fit.
        sq_entries = entries * 2;
    }
    let mut opcodes = handler.opcodes().to_vec();
    opcodes.push(opcode::AsyncCancel::CODE);
    super::new_ring(&super::RingSpec {
        sq_entries,
        cq_entries: Some(entries * 2),
        sqpoll_idle_ms,
        file: handler.file(),
        eventfd: completion.as_raw_fd(),
        opcodes: &opcodes,
        flags: io_uring::squeue::Flags::empty(),
    })
}

/// An engine and the queue it serves: the [`Polled`] work of a thread that serves just
/// this queue ([`Engine::process`]), or part of a thread's work.
pub struct EngineWork<'a, H: RequestHandler, M, Q> {
    /// The engine.
    pub engine: &'a mut Engine<H, M>,
    /// Its queue.
    pub queue: &'a mut Q,
}

impl<H, M, Q> Polled for EngineWork<'_, H, M, Q>
where
    H: RequestHandler,
    M: GuestMemory + Send + Sync + 'static,
    Q: VirtQueue<Mem = M>,
{
    fn serve(&mut self, polled: bool) -> Result<usize> {
        self.engine.serve(self.queue, polled)
    }

    fn pending(&mut self) -> bool {
        self.engine.pending(self.queue)
    }

    fn park(&mut self) -> Result<bool> {
        self.engine.park(self.queue)
    }

    fn wake_again(&mut self) -> Result<()> {
        self.engine.wake_again()
    }
}

impl<H: RequestHandler, M: GuestMemory + Send + Sync + 'static> Engine<H, M> {
    /// Create an engine with its own io_uring; completions are signalled on
    /// [`Engine::completion_fd`].
    pub fn new(handler: H, cfg: EngineConfig, stats: Arc<QueueStats>) -> Result<Self> {
        let completion = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
        let sqpoll_on = matches!(cfg.tuning.sqpoll, SqpollPolicy::On { .. });
        let ring = build_ring(&cfg, &handler, &completion, sqpoll_on)?;
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
            poller: Poller::new(cfg.tuning.poll)
                .polling_when_contended(cfg.tuning.poll_when_contended),
            sqpoll_on,
            sqpoll_load: matches!(cfg.tuning.sqpoll, SqpollPolicy::Auto { .. })
                .then(SqpollLoad::new),
            sqpoll_switch: None,
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

    /// Serve `q` until it is empty and no completion is pending, busy-poll it for the
    /// thread's adaptive window ([`Poller`]), then re-enable notifications and re-check
    /// ([`Engine::park`]). Call on every kick and every completion eventfd event.
    pub fn process<Q: VirtQueue<Mem = M>>(&mut self, q: &mut Q) -> Result<()> {
        bump(&self.stats.wakeups, 1);
        if let Some(load) = &mut self.sqpoll_load {
            load.woke();
        }
        let mut poller = self.poller;
        let result = poller.run(&mut EngineWork {
            engine: &mut *self,
            queue: q,
        });
        self.poller = poller;
        if let Some(load) = &mut self.sqpoll_load {
            load.sleeps();
        }
        self.stats
            .inflight
            .store(self.inflight as u64, Ordering::Relaxed);
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                // Completions still in flight must wake the thread again.
                self.ring.completion().enable_eventfd();
                Err(e)
            }
        }
    }

    /// Serve `q` until nothing is left to do now: pass after pass, pop up to a batch, submit
    /// it with one `io_uring_enter`, reap, update the used ring and signal once. Driver
    /// notifications and the completion eventfd stay off (a thread that serves does not
    /// need waking); [`Engine::park`] turns them back on. Returns the chains popped and the
    /// completions reaped.
    ///
    /// `polled`: busy-polling found the work, the chains popped count as `polled`.
    pub fn serve<Q: VirtQueue<Mem = M>>(&mut self, q: &mut Q, polled: bool) -> Result<usize> {
        self.ring.completion().disable_eventfd();
        if !q.ready() {
            // Stopped ([`Engine::settle`] answered everything taken): its rings are not ours.
            self.stopped();
            return Ok(0);
        }
        if !self.running {
            self.running = true;
            self.resume(q)?;
        }
        let mut done = 0;
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
                self.stats
                    .requests
                    .fetch_add(popped as u64, Ordering::Relaxed);
                if polled {
                    self.stats
                        .polled
                        .fetch_add(popped as u64, Ordering::Relaxed);
                }
                if let Some(load) = &mut self.sqpoll_load {
                    load.pass(popped);
                }
                progress += popped;
            }
            self.submit()?;
            progress += self.reap();
            self.publish(q)?;
            self.govern_sqpoll()?;
            if progress == 0 {
                if polled && done > 0 {
                    bump(&self.stats.poll_hits, 1);
                }
                return Ok(done);
            }
            done += progress;
        }
    }

    /// With [`SqpollPolicy::Auto`]: judge the epoch if it ended, and carry out a switch
    /// once nothing is in flight (the old ring is then empty and can go).
    fn govern_sqpoll(&mut self) -> Result<()> {
        let Some(load) = &mut self.sqpoll_load else {
            return Ok(());
        };
        if let Some(on) = load.tick() {
            self.sqpoll_switch = (on != self.sqpoll_on).then_some(on);
        }
        let Some(on) = self.sqpoll_switch else {
            return Ok(());
        };
        if self.inflight > 0 || !self.ring.submission().is_empty() {
            return Ok(());
        }
        self.ring = build_ring(&self.cfg, &self.handler, &self.completion, on)?;
        // This thread is serving: no completion signals until it parks.
        self.ring.completion().disable_eventfd();
        self.sqpoll_on = on;
        self.sqpoll_switch = None;
        QueueStats::inc(&self.stats.sqpoll_switches);
        tracing::info!(
            sqpoll = on,
            "queue {} kernel submission polling",
            if on { "switched to" } else { "switched off" }
        );
        Ok(())
    }

    /// Make the thread's next wait return at once: its completion eventfd is written
    /// ([`Polled::wake_again`]).
    pub fn wake_again(&self) -> Result<()> {
        self.completion.write(1).map_err(Error::EventFd)
    }

    /// Whether kernel submission polling is on (`SQPOLL`).
    pub fn sqpoll_on(&self) -> bool {
        self.sqpoll_on
    }

    /// Whether [`Engine::serve`] would find work: a completion waits, or the running ring
    /// holds chains and a slot is free. No system call: for busy-polling.
    pub fn pending<Q: VirtQueue<Mem = M>>(&mut self, q: &Q) -> bool {
        if !q.ready() {
            return false;
        }
        !self.ring.completion().is_empty()
            || (!self.stopping && !self.free.is_empty() && q.has_available())
    }

    /// Before the thread sleeps: re-enable driver notifications (unless every slot is busy
    /// or the engine is draining: completions wake it then) and the completion eventfd, and
    /// consume the eventfd; `true` if buffers or completions arrived before that, which
    /// the thread must serve instead of sleeping.
    pub fn park<Q: VirtQueue<Mem = M>>(&mut self, q: &mut Q) -> Result<bool> {
        let ready = q.ready();
        if ready && !self.stopping {
            let arrived = q.enable_notification().inspect_err(|_| {
                // Completions still in flight must wake the thread.
                self.ring.completion().enable_eventfd();
            })?;
            if arrived && !self.free.is_empty() {
                return Ok(true); // buffers arrived between the last pop and re-enabling
            }
        }
        // Re-arm and consume the completion eventfd, then re-check the CQ: a CQE posted
        // after re-arming signals the eventfd again, one posted before is seen here. A
        // stopped ring's completions wait for its restart.
        self.ring.completion().enable_eventfd();
        let _ = self.completion.read();
        if ready && !self.ring.completion().is_empty() {
            self.ring.completion().disable_eventfd();
            return Ok(true);
        }
        Ok(false)
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
