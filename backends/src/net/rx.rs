// SPDX-License-Identifier: Apache-2.0
//! Receive: frames read from the TAP through io_uring into a small set of per-queue read
//! slots, then copied into the driver's receive chains (several with MRG_RXBUF, `num_buffers`
//! filled in).
//!
//! Reads are batched: one `io_uring_enter` submits up to [`READ_SLOTS`] reads. All but the
//! last carry `RWF_NOWAIT`: the kernel issues them in submission order during the submit, each
//! takes the next queued frame or fails at once with `EAGAIN` when the TAP is empty, and only
//! the last one waits on the TAP. So a batch costs one system call and no kernel task_work per
//! frame, at most one read waits (no wake-up of a herd of waiting reads per frame), and the
//! completions are posted in the order the reads took frames (arrival order; all of it runs in
//! this thread). Kernels whose TAP does not take `RWF_NOWAIT` (Linux 6.1 answers
//! `EOPNOTSUPP` before reading anything) get hard-linked reads instead (`IOSQE_IO_HARDLINK`):
//! the same order, but each link runs as task_work after the previous read (~13 % of the queue
//! thread in a 64-byte flood); the first such answer switches the queue over.
//!
//! A new batch is submitted once the previous one has completed. Reads are only submitted for
//! receive chains already reserved from the driver, so nothing is taken from the TAP when the
//! driver has posted no buffers (frames then queue in the TAP, and the kernel drops them past
//! its queue length). When buffers run out, notifications are re-enabled and the next kick
//! resumes. The slots are allocated once per queue: no per-frame heap allocation.
//!
//! Why not the per-chain [`Engine`](crate::engine::Engine): with MRG_RXBUF one frame spans
//! a number of chains that is only known once the frame has arrived; the engine maps one
//! chain to one operation.

use std::any::Any;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;

use io_uring::{opcode, squeue, IoUring};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{has, ETH_HLEN, RX_BUF_LEN, VNET_HDR_LEN};
use crate::engine::histogram::bump;
use crate::engine::{new_ring, DescChain, Dir, QueueStats, RingSpec, VirtQueue, FIXED_FILE};
use crate::inflight::InflightQueue;
use crate::{Error, Result};

const WARN_BUDGET: u32 = 16;
/// Frames moved per call before yielding to the other queue of the thread.
const BATCH: usize = 64;
/// Reads in one submitted batch (and read slots per queue, [`RX_BUF_LEN`] bytes each).
pub const READ_SLOTS: usize = 16;
/// `user_data` of cancellations; reads carry their slot index.
const CANCEL_TAG: u64 = u64::MAX;

/// The receive side of one queue pair.
pub struct RxPath {
    ring: IoUring,
    /// One buffer per read slot.
    slots: Vec<Box<[u8]>>,
    /// Slots with no read and no frame.
    free: Vec<usize>,
    /// Reads submitted and not yet completed.
    inflight: usize,
    /// Frames read, oldest first, waiting for receive buffers: `(slot, length with header)`.
    ready: VecDeque<(usize, usize)>,
    /// A read failed: submit no more until the driver kicks again.
    read_error: bool,
    /// The last pass ran out of receive buffers (frames wait, or no read could be posted).
    starved: bool,
    /// The last pass stopped at [`BATCH`] frames with more waiting.
    more: bool,
    /// Batches are `RWF_NOWAIT` reads ending in one waiting read; false once the kernel
    /// refused that flag on the TAP: hard-linked reads then.
    nowait_reads: bool,
    /// Which slots' outstanding reads carry `RWF_NOWAIT`.
    nowait_slot: [bool; READ_SLOTS],
    /// Whether the queue pair is in use (VIRTIO_NET_CTRL_MQ); an inactive queue takes no
    /// frames and no buffers.
    active: bool,
    completion: EventFd,
    /// Receive chains reserved from the driver, oldest first (`held[..nheld]`; the vector
    /// keeps its entries to reuse their allocations).
    held: Vec<DescChain>,
    nheld: usize,
    /// The guest memory snapshots the held chains were walked against, kept alive while they
    /// are held: a chain's cached host addresses are only used with the very object it was
    /// walked in, and a freed snapshot's address could be reused by its successor after a
    /// memory-table update.
    held_mem: Vec<Arc<dyn Any + Send + Sync>>,
    /// How many of the held chains (the newest) were popped after the last chain answered at
    /// once (a bad one): those can go back to the avail ring when the ring stops.
    rewindable: usize,
    max_chains: usize,
    used: Vec<(u16, u32)>,
    features: Arc<AtomicU64>,
    stats: Arc<QueueStats>,
    warned: u32,
    /// The ring was seen running (a start is noticed on the first pass after it).
    running: bool,
    /// This queue's part of the frontend's inflight region: reserved receive chains are in
    /// flight until a frame fills them.
    tracker: Option<InflightQueue>,
}

impl RxPath {
    /// Receive from `fd` (registered with the ring, which keeps the file open while the ring
    /// lives) for a queue of at most `queue_size` entries.
    pub fn new(
        fd: RawFd,
        queue_size: u16,
        features: Arc<AtomicU64>,
        stats: Arc<QueueStats>,
    ) -> Result<Self> {
        let completion = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
        // Reads of the TAP (hard-linked where RWF_NOWAIT is refused) and their cancellation.
        let ring = new_ring(&RingSpec {
            sq_entries: 2 * READ_SLOTS as u32,
            cq_entries: None,
            sqpoll_idle_ms: None,
            file: fd,
            eventfd: completion.as_raw_fd(),
            opcodes: &[opcode::Read::CODE, opcode::AsyncCancel::CODE],
            flags: squeue::Flags::IO_HARDLINK,
        })?;
        Ok(Self {
            ring,
            slots: (0..READ_SLOTS)
                .map(|_| vec![0u8; RX_BUF_LEN].into_boxed_slice())
                .collect(),
            free: (0..READ_SLOTS).rev().collect(),
            inflight: 0,
            ready: VecDeque::with_capacity(READ_SLOTS),
            read_error: false,
            starved: false,
            more: false,
            nowait_reads: true,
            nowait_slot: [false; READ_SLOTS],
            active: true,
            completion,
            held: Vec::new(),
            nheld: 0,
            held_mem: Vec::new(),
            rewindable: 0,
            max_chains: usize::from(queue_size.max(1)),
            used: Vec::with_capacity(usize::from(queue_size.max(1))),
            features,
            stats,
            warned: 0,
            running: false,
            tracker: None,
        })
    }

    /// Track reserved receive chains in `inflight` (or stop tracking), from the next start of
    /// the ring on, which first takes back the chains the region records as reserved.
    pub fn set_inflight(&mut self, inflight: Option<InflightQueue>) {
        self.tracker = inflight;
    }

    /// Eventfd signalled when a read completes; call [`RxPath::process`] when readable.
    pub fn completion_fd(&self) -> &EventFd {
        &self.completion
    }

    /// Counters of this receive queue.
    pub fn stats(&self) -> &Arc<QueueStats> {
        &self.stats
    }

    /// Whether a read is outstanding on the TAP.
    pub fn reading(&self) -> bool {
        self.inflight > 0
    }

    /// Use hard-linked reads as on a kernel that refuses `RWF_NOWAIT` on the TAP.
    #[cfg(test)]
    pub fn link_reads(&mut self) {
        self.nowait_reads = false;
    }

    /// Start or stop receiving (virtio 1.2 §5.1.6.5.5: no frames on receive queues past the
    /// active pairs). Stopping drops the frames that wait for buffers (outstanding reads are
    /// left to finish, their frames dropped); starting wakes the queue's thread through the
    /// completion eventfd so it resumes at once.
    pub fn set_active(&mut self, active: bool) -> Result<()> {
        if active == self.active {
            return Ok(());
        }
        self.active = active;
        if active {
            // Reads on a detached TAP queue fail; a re-attached one reads again.
            self.read_error = false;
            self.completion.write(1).map_err(Error::EventFd)?;
        } else {
            self.drop_ready();
        }
        Ok(())
    }

    /// Drop every frame read but not delivered.
    fn drop_ready(&mut self) {
        while let Some((slot, _)) = self.ready.pop_front() {
            QueueStats::inc(&self.stats.dropped);
            self.free.push(slot);
        }
    }

    fn fault(&mut self, head: u16, why: &dyn std::fmt::Display) {
        QueueStats::inc(&self.stats.guest_faults);
        if self.warned < WARN_BUDGET {
            self.warned += 1;
            tracing::warn!(head, "rx: {why}");
        } else {
            tracing::debug!(head, "rx: {why}");
        }
    }

    /// Reserve receive chains from the driver until `want` are held (capped at the queue
    /// size), in one pass over the avail ring per attempt; bad chains go back with length 0.
    /// `false`: the driver had none to add.
    fn reserve<Q: VirtQueue>(&mut self, q: &mut Q, mem: &Arc<Q::Mem>, want: usize) -> bool {
        let want = want.min(self.max_chains);
        let before = self.nheld;
        while self.nheld < want {
            if q.pop_batch(mem, want - self.nheld, |chain| self.hold(chain)) == 0 {
                break;
            }
        }
        if self.nheld == before {
            return false;
        }
        let same =
            |m: &Arc<dyn Any + Send + Sync>| std::ptr::addr_eq(Arc::as_ptr(m), Arc::as_ptr(mem));
        if !self.held_mem.last().is_some_and(same) {
            self.held_mem.push(mem.clone());
        }
        true
    }

    /// Keep a popped chain at `held[nheld]` if it can take a frame; answer it empty if not.
    fn hold<M>(&mut self, chain: DescriptorChain<M>)
    where
        M: std::ops::Deref + Clone,
        M::Target: GuestMemory,
    {
        if self.held.len() <= self.nheld {
            self.held.push(DescChain::default());
        }
        let c = &mut self.held[self.nheld];
        c.reset_from(chain);
        if let Some(tracker) = &mut self.tracker {
            tracker.mark(c.head());
        }
        QueueStats::inc(&self.stats.requests);
        self.keep();
    }

    /// Keep the chain just walked into `held[nheld]` if it can take a frame; answer it empty
    /// if not.
    fn keep(&mut self) {
        let c = &self.held[self.nheld];
        let head = c.head();
        let problem: Option<String> = if let Some(f) = c.fault() {
            Some(f.to_string())
        } else if c.readable_len() != 0 {
            Some("device-readable descriptor in an rx chain".into())
        } else if c.writable_len() < VNET_HDR_LEN as u64 {
            Some(format!("rx buffer of {} bytes too small", c.writable_len()))
        } else {
            None
        };
        match problem {
            Some(p) => {
                self.fault(head, &p);
                QueueStats::inc(&self.stats.dropped);
                self.used.push((head, 0));
                self.rewindable = 0;
            }
            None => {
                self.nheld += 1;
                self.rewindable += 1;
            }
        }
    }

    /// Hand the first `k` held chains back (their used entries are already queued).
    fn consume_held(&mut self, k: usize) {
        self.held[..self.nheld].rotate_left(k);
        self.nheld -= k;
        self.rewindable = self.rewindable.min(self.nheld);
        if self.nheld == 0 {
            self.held_mem.clear();
        }
    }

    /// Drop a frame that cannot be delivered, returning the first held chain empty.
    fn drop_frame(&mut self, why: &dyn std::fmt::Display) {
        let head = self.held[0].head();
        self.fault(head, why);
        QueueStats::inc(&self.stats.dropped);
        self.used.push((head, 0));
        self.consume_held(1);
    }

    /// Copy the frame of `n` bytes in read slot `slot` into receive chains. `false`: not
    /// enough buffers yet (the frame stays ready).
    fn place<Q: VirtQueue>(&mut self, q: &mut Q, mem: &Arc<Q::Mem>, slot: usize, n: usize) -> bool {
        let mrg = has(
            self.features.load(Ordering::Relaxed),
            VIRTIO_NET_F_MRG_RXBUF,
        );
        if self.nheld == 0 && !self.reserve(q, mem, READ_SLOTS) {
            return false;
        }
        // How many chains the frame needs.
        let need = n as u64;
        let chains = if mrg {
            let mut room = 0u64;
            let mut k = 0usize;
            loop {
                if k == self.nheld {
                    if k >= self.max_chains {
                        self.drop_frame(&format!("{k} buffers cannot hold a {n}-byte frame"));
                        return true;
                    }
                    if !self.reserve(q, mem, k + READ_SLOTS) {
                        return false;
                    }
                }
                room += self.held[k].writable_len();
                k += 1;
                if room >= need {
                    break k;
                }
            }
        } else {
            let room = self.held[0].writable_len();
            if room < need {
                self.drop_frame(&format!(
                    "frame of {n} bytes does not fit a {room}-byte buffer"
                ));
                return true;
            }
            1
        };
        let buf = &mut self.slots[slot];
        let nbuf = u16::try_from(chains).unwrap_or(u16::MAX);
        buf[10..12].copy_from_slice(&nbuf.to_le_bytes());
        let mem = &**mem;
        let mut off = 0usize;
        let mut faults = Vec::new();
        for c in &self.held[..chains] {
            let take = (n - off).min(usize::try_from(c.writable_len()).unwrap_or(usize::MAX));
            let head = c.head();
            match c.write_at(mem, Dir::Writable, 0, &buf[off..off + take]) {
                Ok(()) => self.used.push((head, take as u32)),
                Err(f) => {
                    faults.push((head, f));
                    self.used.push((head, 0));
                }
            }
            off += take;
        }
        for (head, f) in faults {
            self.fault(head, &f);
        }
        self.consume_held(chains);
        QueueStats::inc(&self.stats.ok);
        bump(&self.stats.bytes_read, (n - VNET_HDR_LEN) as u64);
        true
    }

    /// Collect finished reads into `ready` (in completion order, which is arrival order);
    /// returns the completions seen.
    fn reap(&mut self) -> usize {
        let mut seen = 0;
        while let Some(cqe) = self.ring.completion().next() {
            seen += 1;
            let Ok(slot) = usize::try_from(cqe.user_data()) else {
                continue;
            };
            if slot >= self.slots.len() {
                continue; // a cancellation
            }
            self.inflight = self.inflight.saturating_sub(1);
            let res = cqe.result();
            let nowait = std::mem::take(&mut self.nowait_slot[slot]);
            if res == -libc::EAGAIN {
                self.free.push(slot); // a non-waiting read found the TAP empty
                continue;
            }
            if res == -libc::EOPNOTSUPP && nowait {
                self.free.push(slot); // refused before reading: nothing lost
                if self.nowait_reads {
                    self.nowait_reads = false;
                    tracing::info!("the TAP does not take RWF_NOWAIT reads: linking them");
                }
                continue;
            }
            if res < 0 {
                self.free.push(slot);
                // A cancelled read ends with ECANCELED, or with EINTR when it was blocked in
                // an io-wq worker (a TAP without non-blocking read support).
                if res != -libc::ECANCELED && res != -libc::EINTR {
                    self.read_error = true;
                    QueueStats::inc(&self.stats.io_errors);
                    if self.warned < WARN_BUDGET {
                        self.warned += 1;
                        tracing::warn!("rx read failed: {}", crate::engine::errno(res));
                    }
                }
                continue;
            }
            let n = res as usize;
            if !(VNET_HDR_LEN + ETH_HLEN..RX_BUF_LEN).contains(&n) {
                self.free.push(slot);
                QueueStats::inc(&self.stats.dropped);
                tracing::debug!(n, "rx: runt or oversized frame from the TAP dropped");
                continue;
            }
            self.ready.push_back((slot, n));
        }
        seen
    }

    /// Submit a batch of `reads` reads into free slots: all but the last without waiting, or
    /// hard-linked where the kernel cannot do that.
    fn submit_reads(&mut self, reads: usize) -> Result<()> {
        let reads = reads.min(self.free.len());
        {
            let mut sq = self.ring.submission();
            for i in 0..reads {
                let Some(slot) = self.free.pop() else { break };
                let buf = &mut self.slots[slot];
                let mut read = opcode::Read::new(FIXED_FILE, buf.as_mut_ptr(), RX_BUF_LEN as u32);
                let last = i + 1 == reads;
                self.nowait_slot[slot] = !last && self.nowait_reads;
                if self.nowait_slot[slot] {
                    read = read.rw_flags(libc::RWF_NOWAIT);
                }
                let mut sqe = read.build().user_data(slot as u64);
                if !last && !self.nowait_reads {
                    sqe = sqe.flags(squeue::Flags::IO_HARDLINK);
                }
                // SAFETY: the slot's buffer lives as long as `self` and is not touched until
                // its read completes (it is in neither `free` nor `ready` meanwhile); `Drop`
                // cancels and waits for outstanding reads.
                if unsafe { sq.push(&sqe) }.is_err() {
                    self.free.push(slot);
                    break;
                }
                self.inflight += 1;
            }
        }
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(Error::UringSubmit(e)),
            }
        }
    }

    /// Move frames from the TAP into `q` until the TAP is empty (reads are outstanding) or
    /// the driver has no buffers left, then re-enable what must wake the queue; no
    /// busy-polling (a queue pair's thread polls both queues together, [`RxPath::serve`]).
    /// A wake-up that finds the completion eventfd empty is taken for a kick
    /// ([`RxPath::kicked`]).
    pub fn process<Q: VirtQueue>(&mut self, q: &mut Q) -> Result<()> {
        bump(&self.stats.wakeups, 1);
        if self.completion.read().is_err() {
            self.kicked();
        }
        let served = (|| loop {
            self.serve(q)?;
            if !self.more && !self.park(q)? {
                return Ok(());
            }
        })();
        self.publish_inflight();
        served
    }

    /// Publish the receive buffers held (taken from the driver, not yet filled) as the
    /// queue's `inflight` gauge.
    pub fn publish_inflight(&self) {
        self.stats
            .inflight
            .store(self.nheld as u64, Ordering::Relaxed);
    }

    /// The driver kicked the receive queue: that restarts reading after a failed read.
    pub fn kicked(&mut self) {
        self.read_error = false;
    }

    /// Move up to [`BATCH`] frames from the TAP into `q`: until the TAP is empty (reads are
    /// outstanding), the driver has no buffers left or the batch is full ([`RxPath::more`]);
    /// signal the driver once. Notifications and the completion eventfd stay off until
    /// [`RxPath::park`]. An inactive queue only reaps outstanding reads (dropping their
    /// frames). Returns the frames delivered and the reads reaped (0: nothing happened).
    pub fn serve<Q: VirtQueue>(&mut self, q: &mut Q) -> Result<usize> {
        // No eventfd signal while this thread reaps anyway: each one would cost a system call
        // in the kernel and a needless wake-up of this thread afterwards (with hard-linked
        // reads, completing one by one, a signal per frame was ~10 % of the queue thread).
        self.ring.completion().disable_eventfd();
        self.more = false;
        self.starved = false;
        if !q.ready() {
            // Stopped: its rings belong to the driver again; frames wait for the restart.
            self.stopped();
            self.reap();
            if !self.active {
                self.drop_ready();
            }
            return Ok(0);
        }
        if !self.running {
            self.running = true;
            self.resume(q)?;
        }
        if !self.active {
            self.reap();
            self.drop_ready();
            self.flush(q)?;
            return Ok(0);
        }
        q.disable_notification()?;
        let mut moved = 0usize;
        let mut reaped = 0usize;
        loop {
            let mem = q.memory();
            reaped += self.reap();
            while let Some(&(slot, n)) = self.ready.front() {
                if moved >= BATCH {
                    // Let the other queue of the thread have a turn; come back at once.
                    self.more = true;
                    self.flush(q)?;
                    return Ok(moved + reaped);
                }
                if !self.place(q, &mem, slot, n) {
                    self.starved = true; // waiting for receive buffers
                    break;
                }
                self.ready.pop_front();
                self.free.push(slot);
                moved += 1;
            }
            if !self.starved && self.inflight == 0 && !self.read_error {
                // Every ready frame is placed: one read per reserved receive chain.
                self.reserve(q, &mem, READ_SLOTS);
                if self.nheld > 0 {
                    self.submit_reads(self.nheld)?;
                    continue; // reads on a non-empty TAP complete during the submit
                }
                self.starved = true;
            }
            self.flush(q)?;
            return Ok(moved + reaped);
        }
    }

    /// Make the thread's next wait return at once: the completion eventfd is written.
    pub fn wake_again(&self) -> Result<()> {
        self.completion.write(1).map_err(Error::EventFd)
    }

    /// The last [`RxPath::serve`] stopped at a full batch: frames are waiting.
    pub fn more(&self) -> bool {
        self.more
    }

    /// Whether [`RxPath::serve`] would find work: frames wait, a read completed, or the
    /// driver posted buffers a waiting frame (or a read) needs. No system call.
    pub fn pending<Q: VirtQueue>(&mut self, q: &Q) -> bool {
        if !self.active || !q.ready() {
            return false;
        }
        self.more || !self.ring.completion().is_empty() || (self.starved && q.has_available())
    }

    /// Before the thread sleeps: re-enable the driver's notifications if the queue waits
    /// for buffers or for a kick after a failed read, and the completion eventfd; consume
    /// the eventfd. `true` if buffers or completions arrived before that, which the thread
    /// must serve instead of sleeping.
    pub fn park<Q: VirtQueue>(&mut self, q: &mut Q) -> Result<bool> {
        let mut work = false;
        if self.active && q.ready() && (self.starved || self.read_error) {
            // Without buffers only the driver's kick says more came; after a failed read the
            // kick restarts reading.
            let arrived = q.enable_notification().inspect_err(|_| {
                // Outstanding reads must still wake the thread.
                self.ring.completion().enable_eventfd();
            })?;
            if arrived && self.starved {
                work = true; // buffers were posted meanwhile
            }
        }
        self.ring.completion().enable_eventfd();
        let _ = self.completion.read();
        // A completion posted before re-enabling signalled nothing: serve it. The fence
        // orders the flag store before the tail load (the kernel posts the tail, then reads
        // the flag).
        fence(Ordering::SeqCst);
        if !self.ring.completion().is_empty() {
            self.ring.completion().disable_eventfd();
            work = true;
        }
        Ok(work)
    }

    /// The frontend stops the ring (vhost-user GET_VRING_BASE, a device reset): publish every
    /// answer owed, give the reserved receive chains back to the avail ring so the base the
    /// frontend reads excludes them and nothing is written into them after the driver took
    /// its buffers back, and drop the frames read but not delivered. Reads still outstanding
    /// complete into the read slots; their frames go to the restarted ring.
    ///
    /// Held chains popped before a chain that was answered at once (a bad one, already on
    /// the used ring) cannot be rewound past it: they are answered empty instead.
    pub fn stop<Q: VirtQueue>(&mut self, q: &mut Q) -> Result<()> {
        let rewind = self.rewindable.min(self.nheld);
        for c in &self.held[..self.nheld - rewind] {
            self.used.push((c.head(), 0));
        }
        if let Some(tracker) = &mut self.tracker {
            // Back in the avail ring: no longer taken.
            for c in &self.held[self.nheld - rewind..self.nheld] {
                tracker.unmark(c.head());
            }
        }
        self.nheld = 0;
        self.rewindable = 0;
        self.held_mem.clear();
        self.drop_ready();
        let flushed = self.flush(q);
        self.stopped();
        q.rewind(u16::try_from(rewind).unwrap_or(u16::MAX));
        if rewind > 0 {
            tracing::debug!(rewind, "rx: reserved buffers returned to the stopped ring");
        }
        flushed
    }

    /// The ring stopped (or is about to): nothing is tracked until it starts again.
    fn stopped(&mut self) {
        self.running = false;
        if let Some(tracker) = &mut self.tracker {
            tracker.stop();
        }
    }

    /// The ring (re)started: with an inflight region, take back the receive chains a previous
    /// backend had reserved and not filled (oldest first, ahead of any new one), and resume
    /// the avail ring after them.
    fn resume<Q: VirtQueue>(&mut self, q: &mut Q) -> Result<()> {
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
        // What was held before the restart is gone with the old connection's memory.
        self.nheld = 0;
        self.held_mem.clear();
        for &head in &recovery.heads {
            if self.held.len() <= self.nheld {
                self.held.push(DescChain::default());
            }
            self.held[self.nheld].reset_from_head(&*mem, table, size, head);
            self.keep();
        }
        // Their avail ring positions may not be theirs (chains answered out of order before
        // the restart): never rewound, answered empty if the ring stops.
        self.rewindable = 0;
        if self.nheld > 0 {
            self.held_mem.push(mem.clone());
        }
        let n = recovery.heads.len() as u64;
        self.stats.resubmitted.fetch_add(n, Ordering::Relaxed);
        if n > 0 || recovery.cleared > 0 {
            tracing::info!(
                reserved = n,
                cleared = recovery.cleared,
                next_avail,
                "rx ring restarted: buffers reserved by a previous backend taken back"
            );
        }
        Ok(())
    }

    /// Publish the used entries: a frame's buffers become visible to the driver together.
    fn flush<Q: VirtQueue>(&mut self, q: &mut Q) -> Result<()> {
        q.flush_used(&mut self.used, &self.stats, self.tracker.as_mut())
    }
}

impl Drop for RxPath {
    fn drop(&mut self) {
        // Cancel outstanding reads and wait until they are gone before the slots are freed.
        for _ in 0..4 * READ_SLOTS {
            if self.inflight == 0 {
                return;
            }
            let mut pushed = 0;
            for slot in 0..self.slots.len() as u64 {
                // The ring requires IOSQE_FIXED_FILE on every SQE; a cancellation names no
                // file, so the flag changes nothing else.
                let c = opcode::AsyncCancel::new(slot)
                    .build()
                    .flags(squeue::Flags::FIXED_FILE)
                    .user_data(CANCEL_TAG);
                // SAFETY: cancel SQEs carry no buffers.
                if unsafe { self.ring.submission().push(&c) }.is_ok() {
                    pushed += 1;
                }
            }
            if pushed == 0 || self.ring.submit_and_wait(1).is_err() {
                break;
            }
            self.reap();
        }
        if self.inflight > 0 {
            // Could not confirm the cancellation: leak the slots rather than free them under
            // the kernel.
            std::mem::forget(std::mem::take(&mut self.slots));
        }
    }
}
