//! [`Engine`]: one io_uring serving one virtqueue.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use io_uring::IoUring;
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{
    DescChain, Polled, Poller, Prepared, QueueStats, RequestHandler, SqpollLoad, SqpollPolicy,
    Tuning, VirtQueue, DEFAULT_SQPOLL_IDLE,
};
use crate::inflight::InflightQueue;
use crate::{Error, Result};

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
    used: Vec<(u16, u32)>,
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

/// A ring for `cfg`'s queue with `file` registered and completions signalled on
/// `completion`, polled by a kernel submission thread if `sqpoll`.
fn build_ring(
    cfg: &EngineConfig,
    file: std::os::fd::RawFd,
    completion: &EventFd,
    sqpoll: bool,
) -> Result<IoUring> {
    let entries = u32::from(cfg.queue_size.max(1)).next_power_of_two();
    let mut builder = IoUring::builder();
    builder.setup_cqsize(entries * 2);
    let mut sq_entries = entries;
    let idle = match cfg.tuning.sqpoll {
        SqpollPolicy::On { idle } | SqpollPolicy::Auto { idle } => idle,
        SqpollPolicy::Off => DEFAULT_SQPOLL_IDLE,
    };
    if sqpoll {
        let ms = u32::try_from(idle.as_millis()).unwrap_or(u32::MAX).max(1);
        builder.setup_sqpoll(ms);
        // The kernel thread posts a batch's completions before it moves the SQ head past
        // the batch: the slots those completions free are refilled while up to a slot
        // count of consumed entries still holds the ring, next to at most a slot count
        // of unconsumed ones. Twice the slots always fit.
        sq_entries = entries * 2;
    }
    let ring = builder.build(sq_entries).map_err(Error::UringSetup)?;
    // Not `register_eventfd_async`: buffered reads that miss the page cache complete
    // through task_work in this thread's context, which the async variant does not
    // signal (the completion would sit in the CQ while the thread sleeps in epoll).
    ring.submitter()
        .register_eventfd(completion.as_raw_fd())
        .map_err(Error::UringSetup)?;
    super::register_file(&ring, file)?;
    Ok(ring)
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
        let ring = build_ring(&cfg, handler.file(), &completion, sqpoll_on)?;
        let n = usize::from(cfg.queue_size.max(1));
        let slots = (0..n)
            .map(|_| Slot {
                chain: DescChain::default(),
                iov: Vec::with_capacity(cfg.max_iov),
                req: H::Req::default(),
                mem: None,
            })
            .collect();
        Ok(Self {
            ring,
            handler,
            slots,
            free: (0..n as u32).rev().collect(),
            inflight: 0,
            used: Vec::with_capacity(n),
            completion,
            cfg,
            stats,
            stopping: false,
            running: false,
            tracker: None,
            poller: Poller::new(cfg.tuning.poll),
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
        loop {
            let mut progress = 0usize;
            if !self.stopping {
                q.disable_notification()?;
                let mem = q.memory();
                let max = self
                    .free
                    .len()
                    .min(usize::from(self.cfg.tuning.batch.max(1)));
                let popped = q.pop_batch(&mem, max, |chain| self.start(chain, &mem));
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
            q.flush_used(&mut self.used, &self.stats, self.tracker.as_mut())?;
            self.govern_sqpoll()?;
            if progress == 0 {
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
        self.ring = build_ring(&self.cfg, self.handler.file(), &self.completion, on)?;
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

    /// Wait for every in-flight request and put it on the used ring: what a backend owes the
    /// frontend before it reports the base of a stopped ring (vhost-user GET_VRING_BASE).
    /// The engine serves the ring again once it is restarted.
    pub fn settle<Q: VirtQueue<Mem = M>>(&mut self, q: &mut Q) -> Result<()> {
        while self.inflight > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(Error::UringSubmit(e)),
            }
            self.reap();
        }
        let flushed = q.flush_used(&mut self.used, &self.stats, self.tracker.as_mut());
        self.stopped();
        flushed
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
        for &head in &recovery.heads {
            let Some(idx) = self.free.pop() else { break };
            self.slots[idx as usize]
                .chain
                .reset_from_head(&*mem, table, size, head);
            self.prepare_and_submit(idx, &mem);
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
    fn start(&mut self, chain: DescriptorChain<&M>, mem: &Arc<M>) {
        let Some(idx) = self.free.pop() else { return };
        let walked = &mut self.slots[idx as usize].chain;
        walked.reset_from(chain);
        if let Some(tracker) = &mut self.tracker {
            tracker.mark(walked.head());
        }
        self.prepare_and_submit(idx, mem);
    }

    /// Let the handler prepare the chain walked into slot `idx`, then queue its operation or
    /// answer it.
    fn prepare_and_submit(&mut self, idx: u32, mem: &Arc<M>) {
        let slot = &mut self.slots[idx as usize];
        slot.iov.clear();
        slot.req = H::Req::default();
        match self
            .handler
            .prepare(&**mem, &slot.chain, &mut slot.req, &mut slot.iov)
        {
            Prepared::Done(len) => {
                self.used.push((slot.chain.head(), len));
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
                Ok(_) => {
                    QueueStats::inc(&self.stats.submits);
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
            let idx = cqe.user_data() as usize;
            let Some(slot) = self.slots.get_mut(idx) else {
                tracing::error!(idx, "completion for unknown slot");
                continue;
            };
            let Some(mem) = slot.mem.take() else {
                tracing::error!(idx, "completion for idle slot");
                continue;
            };
            let len = self
                .handler
                .complete(&*mem, &slot.chain, &mut slot.req, cqe.result());
            self.used.push((slot.chain.head(), len));
            self.free.push(idx as u32);
            self.inflight -= 1;
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
mod tests {
    use std::fs::File;
    use std::io::Write;
    use std::os::fd::{FromRawFd, RawFd};
    use std::time::Duration;

    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

    use super::*;
    use crate::engine::{rw_sqe, Dir, LocalQueue, PollPolicy, Prepared, RequestHandler, Tuning};

    type Mem = GuestMemoryMmap<()>;

    /// Writes each chain's readable bytes to a file and records every result other than the
    /// full length (`-EFAULT` for a chain it could not map).
    struct Writer {
        file: File,
        failed: Vec<i32>,
    }

    impl RequestHandler for Writer {
        type Req = u64;

        fn file(&self) -> RawFd {
            self.file.as_raw_fd()
        }

        fn prepare<M: GuestMemory>(
            &mut self,
            mem: &M,
            chain: &DescChain,
            req: &mut u64,
            iov: &mut Vec<libc::iovec>,
        ) -> Prepared {
            *req = chain.readable_len();
            match chain.iovecs(mem, Dir::Readable, 0, *req, 1, iov) {
                Ok(()) => Prepared::Submit(rw_sqe(iov, 0, 0, true)),
                Err(_) => {
                    self.failed.push(-libc::EFAULT);
                    Prepared::Done(0)
                }
            }
        }

        fn complete<M: GuestMemory>(
            &mut self,
            _mem: &M,
            _chain: &DescChain,
            req: &mut u64,
            result: i32,
        ) -> u32 {
            if u64::try_from(result).ok() != Some(*req) {
                self.failed.push(result);
            }
            0
        }
    }

    /// Whether an engine's completion eventfd becomes readable within `ms` milliseconds.
    fn completion_signalled(fd: &EventFd, ms: i32) -> bool {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
    }

    #[test]
    fn kernel_submission_polling_finds_room_for_every_request() {
        // Under SQPOLL the kernel thread posts a batch's completions before it releases the
        // batch's submission entries; the slots those completions free are refilled at once
        // (the queue holds more chains than the engine has slots), and every refill must still
        // find room in the submission queue instead of failing the request. Without room for
        // both, a few to thousands of these writes failed with EBUSY on a 2-CPU machine.
        const QUEUE: u16 = 256;
        const SLOTS: u16 = 4;
        const ROUNDS: usize = 1500;
        let mem = Mem::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let (desc_table, avail, used) = (
            GuestAddress(0),
            GuestAddress(0x1_0000),
            GuestAddress(0x2_0000),
        );
        let mut queue = Queue::new(QUEUE).unwrap();
        queue.set_desc_table_address(Some(desc_table.0 as u32), Some(0));
        queue.set_avail_ring_address(Some(avail.0 as u32), Some(0));
        queue.set_used_ring_address(Some(used.0 as u32), Some(0));
        queue.set_ready(true);
        for i in 0..QUEUE {
            let buf = 0x8_0000 + 256 * u64::from(i);
            let raw = RawDescriptor::from(SplitDescriptor::new(buf, 256, 0, 0));
            mem.write_obj(raw, desc_table.unchecked_add(16 * u64::from(i)))
                .unwrap();
        }
        let mut q = LocalQueue::new(queue, Arc::new(mem.clone()), None);
        let file = File::options().write(true).open("/dev/null").unwrap();
        let handler = Writer {
            file,
            failed: Vec::new(),
        };
        let mut cfg = EngineConfig::new(SLOTS, 1);
        cfg.tuning = Tuning {
            sqpoll: SqpollPolicy::On {
                idle: Duration::from_millis(50),
            },
            ..Tuning::default()
        };
        let mut engine = Engine::new(handler, cfg, Arc::new(QueueStats::default())).unwrap();
        let mut next_avail = 0u16;
        for _ in 0..ROUNDS {
            for head in 0..QUEUE {
                let slot = avail.unchecked_add(4 + 2 * u64::from(next_avail % QUEUE));
                mem.write_obj(head, slot).unwrap();
                next_avail = next_avail.wrapping_add(1);
            }
            mem.write_obj(next_avail, avail.unchecked_add(2)).unwrap();
            // Serve as a queue thread does: on the kick, then on each completion signal.
            engine.process(&mut q).unwrap();
            while mem.read_obj::<u16>(used.unchecked_add(2)).unwrap() != next_avail {
                assert!(engine.inflight() > 0, "chains left in the avail ring");
                assert!(
                    completion_signalled(engine.completion_fd(), 5000),
                    "completion eventfd never signalled"
                );
                engine.process(&mut q).unwrap();
            }
        }
        let failed = &engine.handler().failed;
        assert!(
            failed.is_empty(),
            "{} of {} writes failed, first results {:?}",
            failed.len(),
            ROUNDS * usize::from(QUEUE),
            &failed[..failed.len().min(8)]
        );
    }

    #[test]
    fn busy_polling_takes_chains_that_arrive_after_the_ring_ran_dry() {
        // A driver thread offers one chain every 300 µs, nobody kicks. With a window far
        // longer than that, the thread takes them all, found by polling, waking only itself
        // (after each run slice, Poller::run); without polling the one call made for the
        // first chain takes what is there and returns.
        const CHAINS: u16 = 20;
        for poll in [
            PollPolicy::Fixed(Duration::from_millis(500)),
            PollPolicy::Off,
        ] {
            let mem = Mem::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
            let vq = virtio_queue::mock::MockSplitQueue::create(&mem, GuestAddress(0), 32);
            for i in 0..CHAINS {
                let buf = 0x8_0000 + 0x100 * u64::from(i);
                let desc = RawDescriptor::from(SplitDescriptor::new(buf, 64, 0, 0));
                vq.desc_table().store(i, desc).unwrap();
            }
            let avail = vq.avail_addr();
            let offer = move |mem: &Mem, i: u16| {
                mem.write_obj(i, avail.unchecked_add(4 + 2 * u64::from(i)))
                    .unwrap();
                mem.store(i + 1, avail.unchecked_add(2), Ordering::Release)
                    .unwrap();
            };
            offer(&mem, 0);
            let mut q = LocalQueue::new(vq.create_queue().unwrap(), Arc::new(mem.clone()), None);
            let file = File::options().write(true).open("/dev/null").unwrap();
            let handler = Writer {
                file,
                failed: Vec::new(),
            };
            let mut cfg = EngineConfig::new(32, 1);
            cfg.tuning.poll = poll;
            let stats = Arc::new(QueueStats::default());
            let mut engine = Engine::new(handler, cfg, stats.clone()).unwrap();
            let driver = {
                let mem = mem.clone();
                std::thread::spawn(move || {
                    for i in 1..CHAINS {
                        std::thread::sleep(Duration::from_micros(300));
                        offer(&mem, i);
                    }
                })
            };
            engine.process(&mut q).unwrap();
            let mut wakes = 0;
            while completion_signalled(engine.completion_fd(), 0) {
                wakes += 1;
                engine.process(&mut q).unwrap();
            }
            driver.join().unwrap();
            let s = stats.snapshot();
            if poll == PollPolicy::Off {
                assert_eq!((s.polled, wakes), (0, 0), "{s:?}");
                continue;
            }
            assert_eq!(s.requests, u64::from(CHAINS), "{s:?}");
            assert_eq!(q.queue.next_used(), CHAINS);
            // Each run slice's first chain is taken on its wake-up, the rest by polling.
            assert!(
                s.polled >= u64::from(CHAINS) - 1 - wakes,
                "{s:?}, {wakes} wakes"
            );
        }
    }

    #[test]
    fn an_automatic_sqpoll_switch_keeps_serving_across_rings() {
        // The governor's verdicts are forced here (its decisions have their own tests): the
        // engine switches rings between passes, with nothing in flight, and every chain
        // before, during and after is written once.
        const CHAINS: u16 = 64;
        let mem = Mem::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let vq = virtio_queue::mock::MockSplitQueue::create(&mem, GuestAddress(0), 256);
        for i in 0..CHAINS {
            let buf = 0x8_0000 + 0x100 * u64::from(i);
            let desc = RawDescriptor::from(SplitDescriptor::new(buf, 64, 0, 0));
            vq.desc_table().store(i, desc).unwrap();
        }
        let avail = vq.avail_addr();
        let mut next = 0u16;
        let mut offer = |n: u16| {
            for _ in 0..n {
                mem.write_obj(
                    next % CHAINS,
                    avail.unchecked_add(4 + 2 * u64::from(next % 256)),
                )
                .unwrap();
                next = next.wrapping_add(1);
            }
            mem.store(next, avail.unchecked_add(2), Ordering::Release)
                .unwrap();
            next
        };
        let mut q = LocalQueue::new(vq.create_queue().unwrap(), Arc::new(mem.clone()), None);
        let handler = Writer {
            file: File::options().write(true).open("/dev/null").unwrap(),
            failed: Vec::new(),
        };
        let mut cfg = EngineConfig::new(256, 1);
        cfg.tuning.poll = PollPolicy::Off;
        let stats = Arc::new(QueueStats::default());
        let mut engine = Engine::new(handler, cfg, stats.clone()).unwrap();
        assert!(!engine.sqpoll_on(), "auto starts off");
        engine.sqpoll_load.as_mut().unwrap().freeze();
        let serve_all = |engine: &mut Engine<Writer, Mem>, q: &mut LocalQueue<Mem>, upto: u16| {
            for _ in 0..10_000 {
                engine.process(q).unwrap();
                if q.queue.next_used() == upto {
                    return;
                }
                completion_signalled(engine.completion_fd(), 100);
            }
            panic!("used {} of {upto}", q.queue.next_used());
        };
        let upto = offer(32);
        serve_all(&mut engine, &mut q, upto);
        for on in [true, false, true] {
            engine.sqpoll_switch = Some(on);
            let upto = offer(48);
            serve_all(&mut engine, &mut q, upto);
            assert_eq!(engine.sqpoll_on(), on);
        }
        let s = stats.snapshot();
        assert_eq!((s.requests, s.sqpoll_switches), (32 + 3 * 48, 3));
        assert!(
            engine.handler().failed.is_empty(),
            "{:?}",
            engine.handler().failed
        );
    }

    /// Reads a pipe into each chain's writable buffer: requests stay in flight until the
    /// test writes to the pipe.
    struct PipeReader {
        pipe: File,
        /// Heads in the order they were prepared.
        seen: Vec<u16>,
        /// Heads answered at once instead of reading.
        instant: Vec<u16>,
    }

    impl PipeReader {
        fn new(pipe: File) -> Self {
            Self {
                pipe,
                seen: Vec::new(),
                instant: Vec::new(),
            }
        }
    }

    impl RequestHandler for PipeReader {
        type Req = ();

        fn file(&self) -> RawFd {
            self.pipe.as_raw_fd()
        }

        fn prepare<M: GuestMemory>(
            &mut self,
            mem: &M,
            chain: &DescChain,
            _req: &mut (),
            iov: &mut Vec<libc::iovec>,
        ) -> Prepared {
            self.seen.push(chain.head());
            if self.instant.contains(&chain.head()) {
                return Prepared::Done(0);
            }
            match chain.iovecs(mem, Dir::Writable, 0, chain.writable_len(), 1, iov) {
                Ok(()) => Prepared::Submit(rw_sqe(iov, 0, 0, false)),
                Err(_) => Prepared::Done(0),
            }
        }

        fn complete<M: GuestMemory>(
            &mut self,
            _mem: &M,
            _chain: &DescChain,
            _req: &mut (),
            result: i32,
        ) -> u32 {
            u32::try_from(result).unwrap_or(0)
        }
    }

    #[test]
    fn settle_answers_in_flight_requests_and_a_stopped_queue_is_left_alone() {
        let mem = Mem::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let vq = virtio_queue::mock::MockSplitQueue::create(&mem, GuestAddress(0), 16);
        for i in 0..3u16 {
            let desc = RawDescriptor::from(SplitDescriptor::new(
                0x8_0000 + 0x100 * u64::from(i),
                64,
                virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16,
                0,
            ));
            vq.desc_table().store(i, desc).unwrap();
        }
        let avail_ring = vq.avail_addr();
        let offer = |n: u16| {
            for i in 0..n {
                mem.write_obj(i, avail_ring.unchecked_add(4 + 2 * u64::from(i)))
                    .unwrap();
            }
            mem.write_obj(n, avail_ring.unchecked_add(2)).unwrap();
        };
        offer(2);
        let used_idx = || -> u16 { mem.read_obj(vq.used_addr().unchecked_add(2)).unwrap() };
        let mut q = LocalQueue::new(vq.create_queue().unwrap(), Arc::new(mem.clone()), None);
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 fills two fds on success; both are wrapped at once.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fresh fds owned by nobody else.
        let (rd, mut wr) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
        let handler = PipeReader::new(rd);
        let cfg = EngineConfig::new(16, 1);
        let mut engine = Engine::new(handler, cfg, Arc::new(QueueStats::default())).unwrap();
        engine.process(&mut q).unwrap();
        assert_eq!(
            (engine.inflight(), used_idx()),
            (2, 0),
            "reads wait on the pipe"
        );

        // The frontend stops the ring (vhost-user GET_VRING_BASE): not ready, then settle.
        q.queue.set_ready(false);
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            wr.write_all(&[7u8; 128]).unwrap();
        });
        engine.settle(&mut q).unwrap();
        assert_eq!(engine.inflight(), 0);
        assert_eq!(used_idx(), 2, "settle returned before answering the reads");
        writer.join().unwrap();

        // Buffers offered to the stopped ring are not taken, and the completion wake-up is
        // consumed (a queue thread would otherwise be woken for it without end).
        offer(3);
        engine.process(&mut q).unwrap();
        assert_eq!(
            (engine.inflight(), used_idx(), q.queue.next_avail()),
            (0, 2, 2)
        );
        assert!(
            !completion_signalled(engine.completion_fd(), 0),
            "completion eventfd left readable on a stopped ring"
        );
    }

    /// A pipe `(read end, write end)`.
    fn pipe() -> (File, File) {
        let mut fds = [0i32; 2];
        // SAFETY: pipe2 fills two fds on success; both are wrapped at once.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fresh fds owned by nobody else.
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    #[test]
    fn requests_left_in_flight_are_resubmitted_in_order_after_a_restart() {
        use crate::inflight::InflightRegion;
        use vhost::vhost_user::message::VhostUserInflight;

        let mem = Mem::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let vq = virtio_queue::mock::MockSplitQueue::create(&mem, GuestAddress(0), 16);
        for i in 0..5u16 {
            let desc = RawDescriptor::from(SplitDescriptor::new(
                0x8_0000 + 0x100 * u64::from(i),
                64,
                virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16,
                0,
            ));
            vq.desc_table().store(i, desc).unwrap();
        }
        let avail_ring = vq.avail_addr();
        let offer = |heads: &[u16], from: u16| {
            for (i, &h) in heads.iter().enumerate() {
                let pos = u64::from(from) + i as u64;
                mem.write_obj(h, avail_ring.unchecked_add(4 + 2 * pos))
                    .unwrap();
            }
            mem.write_obj(from + heads.len() as u16, avail_ring.unchecked_add(2))
                .unwrap();
        };
        let used_ring = |n: u16| -> (u16, Vec<u32>) {
            let used = vq.used_addr();
            let idx = mem.read_obj(used.unchecked_add(2)).unwrap();
            let heads = (0..u64::from(n))
                .map(|i| mem.read_obj(used.unchecked_add(4 + 8 * i)).unwrap())
                .collect();
            (idx, heads)
        };
        let request = VhostUserInflight {
            num_queues: 1,
            queue_size: 16,
            ..VhostUserInflight::default()
        };
        let (msg, region_file) = InflightRegion::create(&request, 1, 16).unwrap();
        let tracker = || {
            InflightRegion::map(&msg, &region_file, 1, 16)
                .unwrap()
                .queue(0)
        };

        // The first backend takes four chains: 0 and 3 are answered at once, 2 and 1 wait.
        offer(&[2, 0, 1, 3], 0);
        let (rd, _wr) = pipe();
        let mut handler = PipeReader::new(rd);
        handler.instant = vec![0, 3];
        let mut q = LocalQueue::new(vq.create_queue().unwrap(), Arc::new(mem.clone()), None);
        let cfg = EngineConfig::new(16, 1);
        let mut first = Engine::new(handler, cfg, Arc::new(QueueStats::default())).unwrap();
        first.set_inflight(tracker());
        first.process(&mut q).unwrap();
        assert_eq!((first.inflight(), used_ring(2)), (2, (2, vec![0, 3])));
        // It is killed: nothing more is answered, the region keeps what it recorded.
        drop(first);

        // Its successor starts on a fresh queue at the frontend's base (the used index), its
        // used index read from the ring (as vhost-user-backend does on SET_VRING_ADDR).
        let (rd, mut wr) = pipe();
        let mut q = LocalQueue::new(vq.create_queue().unwrap(), Arc::new(mem.clone()), None);
        q.queue.set_next_avail(2);
        q.queue.set_next_used(2);
        let stats = Arc::new(QueueStats::default());
        let mut second = Engine::new(PipeReader::new(rd), cfg, stats.clone()).unwrap();
        second.set_inflight(tracker());
        second.process(&mut q).unwrap();
        assert_eq!(
            second.handler().seen,
            [2, 1],
            "resubmitted in the order taken"
        );
        assert_eq!(second.inflight(), 2);
        assert_eq!(
            q.queue.next_avail(),
            4,
            "the ring resumes after what was taken"
        );
        // A new chain comes after them.
        offer(&[4], 4);
        wr.write_all(&[7u8; 3 * 64]).unwrap();
        while used_ring(0).0 != 5 {
            assert!(
                completion_signalled(second.completion_fd(), 5000),
                "used {:?}, in flight {}",
                used_ring(5),
                second.inflight()
            );
            second.process(&mut q).unwrap();
        }
        let (_, mut answered) = used_ring(5);
        answered[2..].sort_unstable();
        assert_eq!(answered, [0, 3, 1, 2, 4]);
        assert_eq!(second.handler().seen, [2, 1, 4]);
        let s = stats.snapshot();
        assert_eq!((s.resubmitted, s.requests), (2, 1));
        // Everything answered: a third backend finds nothing to resubmit.
        drop(second);
        let mut q = LocalQueue::new(vq.create_queue().unwrap(), Arc::new(mem.clone()), None);
        q.queue.set_next_avail(5);
        q.queue.set_next_used(5);
        let (rd, _wr) = pipe();
        let mut third = Engine::new(PipeReader::new(rd), cfg, stats.clone()).unwrap();
        third.set_inflight(tracker());
        third.process(&mut q).unwrap();
        assert!(third.handler().seen.is_empty());
        assert_eq!(q.queue.next_avail(), 5);
    }
}
