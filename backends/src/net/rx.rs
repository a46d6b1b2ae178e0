//! Receive: frames read from the TAP through io_uring straight into the driver's receive
//! chains (several with MRG_RXBUF, `num_buffers` filled in).
//!
//! Each read is given the receive chains reserved for it — as many as the largest frame of
//! the previous batch needed (one without MRG_RXBUF) — followed by a per-slot overflow
//! buffer, as one `readv`: a frame that fits lands in guest memory with no copy; what does
//! not fit lands in the overflow buffer and is copied into further chains (MRG_RXBUF) or the
//! frame is dropped. Chains a frame did not need go back to the reserve. When a frame needs
//! more chains than the driver has posted while other reads hold some, those reads are
//! cancelled to get their chains back.
//!
//! Reads are batched: one `io_uring_enter` submits up to [`READ_SLOTS`] reads as one
//! hard-linked chain (`IOSQE_IO_HARDLINK`), so the kernel runs them one after the other,
//! frames land in the slots in arrival order (independent reads on one TAP could be served out
//! of order), only the head of the chain waits on the TAP, and a short read (every TAP read is
//! one) does not cut the chain. A new chain is submitted once the previous one has completed.
//! Reads are only submitted with receive chains reserved from the driver, so nothing is
//! taken from the TAP when the driver has posted no buffers (frames then queue in the TAP, and
//! the kernel drops them past its queue length). When buffers run out, notifications are
//! re-enabled and the next kick resumes. Slots and chain records are allocated once per
//! queue and reused: no per-frame heap allocation.
//!
//! Why not the per-chain [`Engine`](crate::engine::Engine): with MRG_RXBUF one frame spans
//! a number of chains that is only known once the frame has arrived; the engine maps one
//! chain to one operation.

use std::any::Any;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use io_uring::{opcode, squeue, types, IoUring};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{has, ETH_HLEN, RX_BUF_LEN, VNET_HDR_LEN};
use crate::engine::{DescChain, Dir, QueueStats, VirtQueue};
use crate::{Error, GuestFault, Result};

const WARN_BUDGET: u32 = 16;
/// Frames moved per call before yielding to the other queue of the thread.
const BATCH: usize = 64;
/// Reads in one submitted chain (and read slots per queue).
pub const READ_SLOTS: usize = 16;
/// Largest iovec count of one read (guest buffers + the overflow buffer); a read whose chains
/// need more goes entirely through the overflow buffer.
const MAX_READ_IOV: usize = 65;
/// `user_data` of cancellations; reads carry their slot index.
const CANCEL_TAG: u64 = u64::MAX;
/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

/// A guest memory snapshot kept alive (type-erased) while host pointers into it are in use.
type Snapshot = Arc<dyn Any + Send + Sync>;

fn same_object<T: ?Sized, U: ?Sized>(a: &Arc<T>, b: &Arc<U>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

/// One read: the receive chains it reads into, then the overflow buffer.
struct ReadSlot {
    /// Frame bytes past the chains' room (all of the frame when `direct` is 0).
    overflow: Box<[u8]>,
    /// Chains the read was given, in order (the vector is reused).
    chains: Vec<DescChain>,
    /// The read's iovecs; they must stay put until the read completes.
    iov: Vec<libc::iovec>,
    /// Bytes of the frame read straight into `chains` (their room; 0: the read went to
    /// `overflow` only, because the chains could not be mapped).
    direct: usize,
    /// The memory the iovecs point into.
    mem: Option<Snapshot>,
    /// Length of the completed read (header included).
    len: usize,
}

// SAFETY: the raw pointers in `iov` point into the slot's own overflow buffer and into guest
// memory kept mapped by `mem`; a slot is only touched by the thread that owns the receive
// path (moved between threads behind a mutex, never used concurrently).
unsafe impl Send for ReadSlot {}

/// The receive side of one queue pair.
pub struct RxPath {
    ring: IoUring,
    fd: RawFd,
    slots: Vec<ReadSlot>,
    /// Slots with no read and no frame.
    free: Vec<usize>,
    /// Reads submitted and not yet completed.
    inflight: usize,
    /// Frames read, oldest first, waiting to be placed (slot indices).
    ready: VecDeque<usize>,
    /// A read failed: submit no more until the driver kicks again.
    read_error: bool,
    /// Whether the queue pair is in use (VIRTIO_NET_CTRL_MQ); an inactive queue takes no
    /// frames and no buffers.
    active: bool,
    completion: EventFd,
    /// Receive chains reserved from the driver and given to no read, oldest first.
    reserve: VecDeque<DescChain>,
    /// Empty chain records, to reuse their allocations.
    spare: Vec<DescChain>,
    /// The guest memory snapshots the reserved and read-attached chains were walked in,
    /// kept alive while any chain is held: a chain's cached host addresses are only used with
    /// the very object it was walked in, and a freed snapshot's address could be reused by
    /// its successor after a memory-table update.
    held_mem: Vec<Snapshot>,
    /// Largest frame placed since the last batch of reads was submitted, and the size the
    /// current reads were given chains for (MRG_RXBUF).
    batch_max: usize,
    expect: usize,
    max_chains: usize,
    used: Vec<(u16, u32)>,
    features: Arc<AtomicU64>,
    stats: Arc<QueueStats>,
    warned: u32,
}

impl RxPath {
    /// Receive from `fd` (kept open by the owner) for a queue of at most `queue_size` entries.
    pub fn new(
        fd: RawFd,
        queue_size: u16,
        features: Arc<AtomicU64>,
        stats: Arc<QueueStats>,
    ) -> Result<Self> {
        let ring = IoUring::builder()
            .build(2 * READ_SLOTS as u32)
            .map_err(Error::UringSetup)?;
        let completion = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
        ring.submitter()
            .register_eventfd(completion.as_raw_fd())
            .map_err(Error::UringSetup)?;
        let max_chains = usize::from(queue_size.max(1));
        Ok(Self {
            ring,
            fd,
            slots: (0..READ_SLOTS)
                .map(|_| ReadSlot {
                    overflow: vec![0u8; RX_BUF_LEN].into_boxed_slice(),
                    chains: Vec::new(),
                    iov: Vec::with_capacity(MAX_READ_IOV),
                    direct: 0,
                    mem: None,
                    len: 0,
                })
                .collect(),
            free: (0..READ_SLOTS).rev().collect(),
            inflight: 0,
            ready: VecDeque::with_capacity(READ_SLOTS),
            read_error: false,
            active: true,
            completion,
            reserve: VecDeque::with_capacity(max_chains),
            spare: Vec::new(),
            held_mem: Vec::new(),
            batch_max: 0,
            expect: 0,
            max_chains,
            used: Vec::with_capacity(max_chains),
            features,
            stats,
            warned: 0,
        })
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

    /// Start or stop receiving (virtio 1.2 §5.1.6.5.5: no frames on receive queues past the
    /// active pairs). Stopping drops the frames that wait to be placed (outstanding reads
    /// are left to finish, their frames dropped; the chains stay reserved); starting wakes
    /// the queue's thread through the completion eventfd so it resumes at once.
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

    /// Drop every frame read but not placed; their chains go back to the reserve.
    fn drop_ready(&mut self) {
        while let Some(slot) = self.ready.pop_front() {
            QueueStats::inc(&self.stats.dropped);
            self.release_slot(slot);
        }
    }

    /// Give a slot's chains back to the reserve (their contents are of no use) and free it.
    fn release_slot(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        for c in s.chains.drain(..).rev() {
            self.reserve.push_front(c);
        }
        s.iov.clear();
        s.mem = None;
        self.free.push(slot);
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

    /// Reserve one more usable receive chain (at the back of the reserve); bad chains go
    /// back with length 0. `false`: the driver has none.
    fn pop_one<Q: VirtQueue>(&mut self, q: &mut Q, mem: &Arc<Q::Mem>) -> bool {
        loop {
            let Some(chain) = q.pop(mem) else {
                return false;
            };
            let mut c = self.spare.pop().unwrap_or_default();
            c.reset_from(chain);
            let head = c.head();
            QueueStats::inc(&self.stats.requests);
            let problem: Option<String> = if let Some(f) = c.fault() {
                Some(f.to_string())
            } else if c.readable_len() != 0 {
                Some("device-readable descriptor in an rx chain".into())
            } else if c.writable_len() < VNET_HDR_LEN as u64 {
                Some(format!("rx buffer of {} bytes too small", c.writable_len()))
            } else {
                None
            };
            if let Some(p) = problem {
                self.spare.push(c);
                self.fault(head, &p);
                QueueStats::inc(&self.stats.dropped);
                self.used.push((head, 0));
                continue;
            }
            self.reserve.push_back(c);
            if !self.held_mem.last().is_some_and(|m| same_object(m, mem)) {
                self.held_mem.push(mem.clone());
            }
            return true;
        }
    }

    /// Drop the frame in `slot`: its first chain (the slot's, else the reserve's) goes back
    /// used and empty, so the driver sees the loss; the slot's other chains go back to the
    /// reserve.
    fn drop_frame(&mut self, slot: usize, why: &dyn std::fmt::Display) {
        let first = if self.slots[slot].chains.is_empty() {
            self.reserve.pop_front()
        } else {
            Some(self.slots[slot].chains.remove(0))
        };
        QueueStats::inc(&self.stats.dropped);
        if let Some(first) = first {
            self.fault(first.head(), why);
            self.used.push((first.head(), 0));
            self.spare.push(first);
        }
        self.release_slot(slot);
    }

    /// Move a waiting frame out of its chains into its overflow buffer and hand the chains
    /// to the reserve, for an older frame that needs more buffers than the driver has left.
    fn unmap_frame<Q: VirtQueue>(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        let (n, direct) = (s.len, s.direct);
        let mut fault = None;
        if direct > 0 {
            let in_chains = n.min(direct);
            // The overflow part moves up to make room for the start of the frame.
            s.overflow.copy_within(0..n - in_chains, in_chains);
            match s.mem.as_ref().and_then(|m| m.downcast_ref::<Q::Mem>()) {
                Some(mem) => {
                    let mut off = 0usize;
                    for c in &s.chains {
                        let take = (in_chains - off).min(chain_room(c));
                        if let Err(f) =
                            c.read_at(mem, Dir::Writable, 0, &mut s.overflow[off..off + take])
                        {
                            fault = Some((c.head(), f));
                        }
                        off += take;
                        if off == in_chains {
                            break;
                        }
                    }
                }
                None => fault = Some((s.chains[0].head(), GuestFault::OutOfBounds)),
            }
            s.direct = 0;
        }
        self.reserve.extend(s.chains.drain(..));
        if let Some((head, f)) = fault {
            self.fault(head, &f);
        }
    }

    /// Move the frame in read slot `slot` into receive chains. `false`: it needs more
    /// buffers than the driver has posted (the frame stays ready; outstanding reads are
    /// cancelled to free their chains).
    fn place<Q: VirtQueue>(&mut self, q: &mut Q, mem: &Arc<Q::Mem>, slot: usize) -> bool {
        let mrg = has(
            self.features.load(Ordering::Relaxed),
            VIRTIO_NET_F_MRG_RXBUF,
        );
        let n = self.slots[slot].len;
        // The slot's own chains that take part of the frame, and their room (none if the
        // frame was moved out of them).
        let (mut own, mut room) = (0usize, 0usize);
        for c in &self.slots[slot].chains {
            if room >= n {
                break;
            }
            room = room.saturating_add(chain_room(c));
            own += 1;
        }
        // Chains from the reserve for the rest: any number with MRG_RXBUF, else the one
        // buffer of a frame that has none.
        let max_extra = match (mrg, own) {
            (true, _) => usize::MAX,
            (false, 0) => 1,
            (false, _) => 0,
        };
        let mut extra = 0usize;
        while room < n && extra < max_extra {
            if extra == self.reserve.len() {
                if own + extra >= self.max_chains {
                    self.drop_frame(slot, &format!("{n}-byte frame exceeds the queue"));
                    return true;
                }
                if !self.pop_one(q, mem) {
                    self.reclaim();
                    return false;
                }
            }
            room = room.saturating_add(chain_room(&self.reserve[extra]));
            extra += 1;
        }
        if room < n {
            self.drop_frame(
                slot,
                &format!("frame of {n} bytes does not fit a {room}-byte buffer"),
            );
            return true;
        }
        self.batch_max = self.batch_max.max(n);

        let Self {
            slots,
            reserve,
            spare,
            used,
            ..
        } = self;
        let s = &mut slots[slot];
        let direct = s.direct;
        let mut faults: Vec<(u16, GuestFault)> = Vec::new();
        if direct > 0 && !s.mem.as_ref().is_some_and(|m| same_object(m, mem)) {
            // The memory table was replaced while the read was outstanding: the kernel wrote
            // the frame's start into the previous mapping. Carry it over (rare: a copy).
            let old = s.mem.as_ref().and_then(|m| m.downcast_ref::<Q::Mem>());
            for c in &s.chains[..own] {
                let mut bytes = vec![0u8; chain_room(c)];
                let copied = match old {
                    Some(old) => c.read_at(old, Dir::Writable, 0, &mut bytes),
                    None => Err(GuestFault::OutOfBounds),
                };
                if let Err(f) = copied.and_then(|()| c.write_at(&**mem, Dir::Writable, 0, &bytes)) {
                    faults.push((c.head(), f));
                }
            }
        }
        // `num_buffers`: into the overflow copy of the header, or straight into the guest.
        let nbuf = u16::try_from(own + extra).unwrap_or(u16::MAX).to_le_bytes();
        if direct == 0 {
            s.overflow[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2].copy_from_slice(&nbuf);
        } else if let Err(f) =
            s.chains[0].write_at(&**mem, Dir::Writable, NUM_BUFFERS_OFFSET as u64, &nbuf)
        {
            faults.push((s.chains[0].head(), f));
        }
        // Frame bytes from `direct` on are in the overflow buffer.
        let overflow = &s.overflow;
        let mut pos = 0usize;
        let mut put = |c: DescChain, spare: &mut Vec<DescChain>| {
            let take = (n - pos).min(chain_room(&c));
            let (from, end) = (pos.max(direct), pos + take);
            let wrote = if from < end {
                c.write_at(
                    &**mem,
                    Dir::Writable,
                    (from - pos) as u64,
                    &overflow[from - direct..end - direct],
                )
            } else {
                Ok(())
            };
            match wrote {
                Ok(()) => used.push((c.head(), take as u32)),
                Err(f) => {
                    faults.push((c.head(), f));
                    used.push((c.head(), 0));
                }
            }
            pos = end;
            spare.push(c);
        };
        let mut chains = std::mem::take(&mut s.chains);
        for c in chains.drain(..own) {
            put(c, spare);
        }
        for c in reserve.drain(..extra) {
            put(c, spare);
        }
        // Chains the frame did not need: back to the front of the reserve, in order.
        for c in chains.drain(..).rev() {
            reserve.push_front(c);
        }
        s.chains = chains;
        s.iov.clear();
        s.mem = None;
        self.free.push(slot);
        for (head, f) in faults {
            self.fault(head, &f);
        }
        QueueStats::inc(&self.stats.ok);
        true
    }

    /// Cancel the outstanding reads so that their chains come back to the reserve (a frame
    /// waits for buffers those reads hold). Called again on every wake-up while the frame
    /// waits: the reads are hard-linked, so the next one may start when the one waiting on
    /// the TAP is cancelled.
    fn reclaim(&mut self) {
        if self.inflight == 0 {
            return;
        }
        let all = types::CancelBuilder::fd(types::Fd(self.fd)).all();
        let cancel = opcode::AsyncCancel2::new(all).build().user_data(CANCEL_TAG);
        // SAFETY: cancel SQEs carry no buffers.
        if unsafe { self.ring.submission().push(&cancel) }.is_ok() {
            if let Err(e) = self.ring.submit() {
                tracing::debug!("rx: cancelling reads: {e}");
            }
        }
    }

    /// Collect finished reads into `ready` (in completion order, which is arrival order).
    fn reap(&mut self) {
        loop {
            let Some(cqe) = self.ring.completion().next() else {
                break;
            };
            let Ok(slot) = usize::try_from(cqe.user_data()) else {
                continue;
            };
            if slot >= self.slots.len() {
                continue; // a cancellation
            }
            self.inflight = self.inflight.saturating_sub(1);
            let res = cqe.result();
            if res < 0 {
                self.release_slot(slot);
                if res != -libc::ECANCELED {
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
                self.release_slot(slot);
                QueueStats::inc(&self.stats.dropped);
                tracing::debug!(n, "rx: runt or oversized frame from the TAP dropped");
                continue;
            }
            self.slots[slot].len = n;
            self.ready.push_back(slot);
        }
    }

    /// Give reserved chains to up to [`READ_SLOTS`] reads (as many as the largest recent
    /// frame needed each, one without MRG_RXBUF) and submit them as one hard-linked chain.
    fn submit_reads<Q: VirtQueue>(&mut self, q: &mut Q, mem: &Arc<Q::Mem>) -> Result<()> {
        let mrg = has(
            self.features.load(Ordering::Relaxed),
            VIRTIO_NET_F_MRG_RXBUF,
        );
        if self.batch_max > 0 {
            // Frames were placed since the last batch: size the reads for the largest.
            self.expect = std::mem::take(&mut self.batch_max);
        }
        let mut batch = [0usize; READ_SLOTS];
        let mut reads = 0usize;
        // Reads take at most half the queue, so that a frame bigger than its read's chains
        // usually finds more posted without cancelling reads.
        let mut attached = 0usize;
        while reads < READ_SLOTS && (reads == 0 || attached < self.max_chains / 2) {
            let Some(&slot) = self.free.last() else { break };
            let mut room = 0usize;
            while self.slots[slot].chains.is_empty() || (mrg && room < self.expect) {
                if self.reserve.is_empty() && !self.pop_one(q, mem) {
                    break;
                }
                let Some(c) = self.reserve.pop_front() else {
                    break;
                };
                room = room.saturating_add(chain_room(&c));
                self.slots[slot].chains.push(c);
                attached += 1;
            }
            if self.slots[slot].chains.is_empty() {
                break;
            }
            self.free.pop();
            let s = &mut self.slots[slot];
            s.iov.clear();
            s.direct = room;
            for c in &s.chains {
                let got = c.iovecs(
                    &**mem,
                    Dir::Writable,
                    0,
                    c.writable_len(),
                    MAX_READ_IOV - 1,
                    &mut s.iov,
                );
                if got.is_err() {
                    // Not mappable as a whole: read into the overflow buffer, copy later.
                    s.iov.clear();
                    s.direct = 0;
                    break;
                }
            }
            s.iov.push(libc::iovec {
                iov_base: s.overflow.as_mut_ptr().cast(),
                iov_len: s.overflow.len(),
            });
            s.mem = Some(mem.clone());
            batch[reads] = slot;
            reads += 1;
        }
        {
            let mut sq = self.ring.submission();
            for (i, &slot) in batch[..reads].iter().enumerate() {
                let s = &self.slots[slot];
                let mut sqe =
                    opcode::Readv::new(types::Fd(self.fd), s.iov.as_ptr(), s.iov.len() as u32)
                        .build()
                        .user_data(slot as u64);
                if i + 1 < reads {
                    sqe = sqe.flags(squeue::Flags::IO_HARDLINK);
                }
                // SAFETY: the iovecs point into the slot's overflow buffer (alive as long as
                // `self`) and into guest memory kept mapped by the snapshot in `s.mem`; the
                // slot is in neither `free` nor `ready` until its read completes, and `Drop`
                // cancels and waits for outstanding reads (or leaks the slots). The ring has
                // room for twice READ_SLOTS entries and is empty between batches.
                if unsafe { sq.push(&sqe) }.is_err() {
                    tracing::error!("rx: submission queue full");
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
    /// the driver has no buffers left; signal the driver once. Call on every kick of the
    /// receive queue and every completion eventfd event. An inactive queue only reaps
    /// outstanding reads (dropping their frames).
    pub fn process<Q: VirtQueue>(&mut self, q: &mut Q) -> Result<()> {
        if self.completion.read().is_err() {
            // Not a completion: a kick, which also restarts reading after an error.
            self.read_error = false;
        }
        if !self.active {
            self.reap();
            self.drop_ready();
            return self.flush(q);
        }
        q.disable_notification()?;
        let mut moved = 0usize;
        loop {
            let mem = q.memory();
            self.reap();
            let mut starved = false;
            while let Some(&slot) = self.ready.front() {
                if moved >= BATCH {
                    break;
                }
                if !self.place(q, &mem, slot) {
                    // Waiting for receive buffers. With no read left to cancel, frames
                    // behind this one give theirs up (youngest first), or it waits for the
                    // driver.
                    if self.inflight == 0 {
                        let holding = |s: &&usize| !self.slots[**s].chains.is_empty();
                        if let Some(&young) = self.ready.iter().skip(1).rev().find(holding) {
                            self.unmap_frame::<Q>(young);
                            continue;
                        }
                    }
                    starved = true;
                    break;
                }
                self.ready.pop_front();
                moved += 1;
            }
            if moved >= BATCH {
                // Yield to the transmit queue of this thread; come back at once.
                self.flush(q)?;
                let _ = self.completion.write(1);
                return Ok(());
            }
            if !starved && self.inflight == 0 && !self.read_error {
                // Every frame is placed: read into the reserved (and newly posted) chains.
                self.submit_reads(q, &mem)?;
                if self.inflight > 0 {
                    continue; // reads on a non-empty TAP complete during the submit
                }
                starved = true;
            }
            self.flush(q)?;
            if starved && q.enable_notification()? {
                q.disable_notification()?;
                continue; // buffers were posted meanwhile
            }
            return Ok(());
        }
    }

    fn flush<Q: VirtQueue>(&mut self, q: &mut Q) -> Result<()> {
        if self.inflight == 0 && self.ready.is_empty() && self.reserve.is_empty() {
            // No chain is held: no cached host address can outlive its snapshot.
            self.held_mem.clear();
        }
        if self.used.is_empty() {
            return Ok(());
        }
        // A frame's buffers become visible to the driver together.
        let (rejected, notify) = q.publish_used(&self.used)?;
        if rejected > 0 {
            self.stats
                .used_rejected
                .fetch_add(rejected as u64, Ordering::Relaxed);
        }
        self.used.clear();
        if notify {
            QueueStats::inc(&self.stats.notifications);
            q.signal()?;
        }
        Ok(())
    }
}

/// Bytes a receive chain can take.
fn chain_room(c: &DescChain) -> usize {
    usize::try_from(c.writable_len()).unwrap_or(usize::MAX)
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
                let c = opcode::AsyncCancel::new(slot).build().user_data(CANCEL_TAG);
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
