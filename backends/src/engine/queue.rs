// SPDX-License-Identifier: Apache-2.0
//! The queue side of the engine: one small trait over "a split virtqueue plus its guest
//! memory and call eventfd", implemented for vhost-user-backend vrings and for a plain
//! in-process [`virtio_queue::Queue`] (in-VMM tier, tests).

use std::io;
use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestAddressSpace, GuestMemory, GuestMemoryAtomic,
    GuestMemoryBackend, GuestMemoryMmap,
};
use vmm_sys_util::eventfd::EventFd;

use super::QueueStats;
use crate::inflight::InflightQueue;
use crate::{Error, Result};

/// What the engine needs from a virtqueue.
pub trait VirtQueue {
    /// Guest memory type.
    type Mem: GuestMemory + Send + Sync + 'static;

    /// Current guest memory snapshot; in-flight requests keep it alive.
    fn memory(&self) -> Arc<Self::Mem>;
    /// Pop the next available chain.
    fn pop<'m>(&mut self, mem: &'m Arc<Self::Mem>) -> Option<DescriptorChain<&'m Self::Mem>>;
    /// Pop up to `max` available chains, handing each to `f`; returns how many were popped.
    fn pop_batch(
        &mut self,
        mem: &Arc<Self::Mem>,
        max: usize,
        mut f: impl FnMut(DescriptorChain<&Self::Mem>),
    ) -> usize {
        let mut n = 0;
        while n < max {
            let Some(chain) = self.pop(mem) else { break };
            f(chain);
            n += 1;
        }
        n
    }
    /// Put `(head, len)` entries on the used ring and make them visible with one store of the
    /// used index, so the driver sees them together (virtio 1.2 §5.1.6.4.2: the buffers of one
    /// received frame must be used together) and the index cache line moves once per batch.
    /// Returns how many were rejected (a head index past the queue size) and whether the
    /// driver asked to be notified of the published ones (EVENT_IDX `used_event`, or
    /// `VRING_AVAIL_F_NO_INTERRUPT` without it).
    fn publish_used(&mut self, used: &[(u16, u32)]) -> Result<(usize, bool)>;
    /// Publish `used` (see [`VirtQueue::publish_used`]) and empty it, count refused entries in
    /// `stats` (all of them when the used ring cannot be written), and signal the driver once
    /// if it asked. With an `inflight` region the publication follows its batch protocol
    /// ([`InflightQueue::publish`]).
    fn flush_used(
        &mut self,
        used: &mut Vec<(u16, u32)>,
        stats: &QueueStats,
        inflight: Option<&mut InflightQueue>,
    ) -> Result<()> {
        if used.is_empty() {
            return Ok(());
        }
        let published = match inflight {
            Some(tracker) => tracker.publish(used, || {
                let result = self.publish_used(used)?;
                Ok((result, self.next_used()))
            }),
            None => self.publish_used(used),
        };
        let count = used.len() as u64;
        used.clear();
        let (rejected, notify) = published.inspect_err(|_| {
            stats.used_rejected.fetch_add(count, Ordering::Relaxed);
        })?;
        if rejected > 0 {
            stats
                .used_rejected
                .fetch_add(rejected as u64, Ordering::Relaxed);
            tracing::warn!(rejected, "used ring refused entries (bad head index)");
        }
        if notify {
            QueueStats::inc(&stats.notifications);
            self.signal()?;
        }
        Ok(())
    }
    /// Whether the ring is running: false before the frontend starts it and once it stopped
    /// it (vhost-user GET_VRING_BASE); a stopped ring's memory may belong to the driver again.
    fn ready(&self) -> bool;
    /// Give the last `n` popped chains back to the avail ring: the next pops (and the ring
    /// base reported when it stops) start at them again.
    fn rewind(&mut self, n: u16);
    /// Make the next pop start at avail ring position `idx` (a restarted backend resumes after
    /// the chains it resubmits).
    fn set_next_avail(&mut self, idx: u16);
    /// The used index after the entries published so far.
    fn next_used(&self) -> u16;
    /// The used index the driver sees (read from guest memory).
    fn guest_used_idx(&self, mem: &Self::Mem) -> Result<u16>;
    /// The descriptor table's address and the ring's size, to walk a chain from its head
    /// ([`DescChain::reset_from_head`](super::DescChain::reset_from_head)).
    fn desc_table(&self) -> (GuestAddress, u16);
    /// Whether the avail ring holds chains a pop can take: a cheap look for busy-polling
    /// (one index load, no notification change, nothing logged).
    fn has_available(&self) -> bool;
    /// Disable driver notifications (no-op with EVENT_IDX).
    fn disable_notification(&mut self) -> Result<()>;
    /// Re-enable notifications; `true` if new buffers arrived meanwhile (and can be taken:
    /// an avail index more than a ring ahead of the next pop, which a driver can write, would
    /// otherwise report buffers that no pop ever yields, and a caller that keeps going while
    /// buffers arrive would never sleep).
    fn enable_notification(&mut self) -> Result<bool>;
    /// Signal the driver (call eventfd / irqfd).
    fn signal(&mut self) -> Result<()>;
}

/// Guest memory as vhost-user-backend hands it out.
pub type VhostMem = GuestMemoryMmap<()>;

/// The guest memory a vhost-user backend serves, replaced on each memory-table update
/// (`VhostUserBackend::update_memory`) and read by every event and ring stop.
pub struct BackendMemory(RwLock<GuestMemoryAtomic<VhostMem>>);

impl Default for BackendMemory {
    fn default() -> Self {
        Self(RwLock::new(GuestMemoryAtomic::new(VhostMem::default())))
    }
}

impl BackendMemory {
    /// The current memory (a cheap handle).
    pub fn get(&self) -> io::Result<GuestMemoryAtomic<VhostMem>> {
        Ok(self.0.read().map_err(|_| poisoned())?.clone())
    }

    /// Replace the memory.
    pub fn set(&self, mem: GuestMemoryAtomic<VhostMem>) -> io::Result<()> {
        *self.0.write().map_err(|_| poisoned())? = mem;
        Ok(())
    }
}

fn poisoned() -> io::Error {
    io::Error::other("guest memory lock poisoned")
}

/// A vhost-user-backend vring over [`VhostMem`].
pub type Vring = VringRwLock<GuestMemoryAtomic<VhostMem>>;

/// The vrings of each vhost-user-backend worker thread, kept from the first event the thread
/// handles: the daemon hands a backend its vrings only with events, while
/// `VhostUserBackend::stop_vring` (vhost-user GET_VRING_BASE) names just a ring index.
pub struct WorkerVrings(Vec<OnceLock<Vec<Vring>>>);

impl WorkerVrings {
    /// Room for `threads` worker threads.
    pub fn new(threads: usize) -> Self {
        Self((0..threads).map(|_| OnceLock::new()).collect())
    }

    /// Keep the vrings of worker `thread` (called on each event; only the first one stores).
    pub fn remember(&self, thread: usize, vrings: &[Vring]) {
        if let Some(cell) = self.0.get(thread) {
            cell.get_or_init(|| vrings.to_vec());
        }
    }

    /// Vring `local` of worker `thread`, if that thread has handled an event: a ring no event
    /// reached has had nothing taken from it.
    pub fn get(&self, thread: usize, local: usize) -> Option<&Vring> {
        self.0.get(thread)?.get()?.get(local)
    }
}

/// [`VirtQueue`] over a vhost-user-backend [`VringRwLock`].
pub struct VringQueue<'a> {
    vring: &'a Vring,
    mem: &'a GuestMemoryAtomic<VhostMem>,
}

impl<'a> VringQueue<'a> {
    /// Wrap `vring`; `mem` is the backend's view of guest memory.
    pub fn new(vring: &'a Vring, mem: &'a GuestMemoryAtomic<VhostMem>) -> Self {
        Self { vring, mem }
    }
}

impl VirtQueue for VringQueue<'_> {
    type Mem = VhostMem;

    fn memory(&self) -> Arc<VhostMem> {
        self.mem.memory().into_inner()
    }

    fn pop<'m>(&mut self, mem: &'m Arc<VhostMem>) -> Option<DescriptorChain<&'m VhostMem>> {
        let mut state = self.vring.get_mut();
        let q = state.get_queue_mut();
        let chain = q.pop_descriptor_chain(&**mem);
        if let Some(c) = &chain {
            tracing::trace!(
                head = c.head_index(),
                next_avail = q.next_avail(),
                next_used = q.next_used(),
                avail_idx = ?q.avail_idx(&**mem, std::sync::atomic::Ordering::Acquire).ok(),
                used_idx = ?q.used_idx(&**mem, std::sync::atomic::Ordering::Acquire).ok(),
                size = q.size(),
                ready = q.ready(),
                event_idx = q.event_idx_enabled(),
                desc = format_args!("{:#x}", q.desc_table()),
                avail = format_args!("{:#x}", q.avail_ring()),
                used = format_args!("{:#x}", q.used_ring()),
                "popped"
            );
        }
        chain
    }

    /// One vring lock and one read of the avail index for the whole batch.
    fn pop_batch(
        &mut self,
        mem: &Arc<VhostMem>,
        max: usize,
        mut f: impl FnMut(DescriptorChain<&VhostMem>),
    ) -> usize {
        let mut state = self.vring.get_mut();
        match state.get_queue_mut().iter(&**mem) {
            Ok(iter) => iter.take(max).map(&mut f).count(),
            Err(e) => {
                tracing::debug!("queue not poppable: {e}");
                0
            }
        }
    }

    fn publish_used(&mut self, used: &[(u16, u32)]) -> Result<(usize, bool)> {
        let mem = self.mem.memory();
        let mut state = self.vring.get_mut();
        publish_used(state.get_queue_mut(), &*mem, used)
    }

    fn ready(&self) -> bool {
        self.vring.get_ref().get_queue().ready()
    }

    fn rewind(&mut self, n: u16) {
        let next = self.vring.queue_next_avail().wrapping_sub(n);
        self.vring.set_queue_next_avail(next);
    }

    fn set_next_avail(&mut self, idx: u16) {
        self.vring.set_queue_next_avail(idx);
    }

    fn next_used(&self) -> u16 {
        self.vring.get_ref().get_queue().next_used()
    }

    fn guest_used_idx(&self, mem: &VhostMem) -> Result<u16> {
        let state = self.vring.get_ref();
        Ok(state.get_queue().used_idx(mem, Ordering::Acquire)?.0)
    }

    fn desc_table(&self) -> (GuestAddress, u16) {
        let state = self.vring.get_ref();
        let q = state.get_queue();
        (GuestAddress(q.desc_table()), q.size())
    }

    fn has_available(&self) -> bool {
        let mem = self.mem.memory();
        let state = self.vring.get_ref();
        available(state.get_queue(), &*mem).is_some_and(|n| n != 0)
    }

    fn disable_notification(&mut self) -> Result<()> {
        Ok(self.vring.disable_notification()?)
    }

    fn enable_notification(&mut self) -> Result<bool> {
        if !self.vring.enable_notification()? {
            return Ok(false);
        }
        let mem = self.mem.memory();
        poppable(self.vring.get_ref().get_queue(), &*mem)
    }

    fn signal(&mut self) -> Result<()> {
        self.vring.signal_used_queue().map_err(Error::Signal)
    }
}

/// [`VirtQueue`] over an in-process queue: for the in-VMM virtio tier and for tests.
pub struct LocalQueue<M: GuestMemory> {
    /// The queue state.
    pub queue: Queue,
    /// Guest memory.
    pub mem: Arc<M>,
    /// Interrupt eventfd (irqfd); `None` counts signals only.
    pub call: Option<EventFd>,
    /// Number of times the driver was signalled.
    pub signals: u64,
}

impl<M: GuestMemory> LocalQueue<M> {
    /// Wrap a ready queue.
    pub fn new(queue: Queue, mem: Arc<M>, call: Option<EventFd>) -> Self {
        Self {
            queue,
            mem,
            call,
            signals: 0,
        }
    }
}

impl<M: GuestMemory + Send + Sync + 'static> VirtQueue for LocalQueue<M> {
    type Mem = M;

    fn memory(&self) -> Arc<M> {
        self.mem.clone()
    }

    fn pop<'m>(&mut self, mem: &'m Arc<M>) -> Option<DescriptorChain<&'m M>> {
        self.queue.pop_descriptor_chain(&**mem)
    }

    fn publish_used(&mut self, used: &[(u16, u32)]) -> Result<(usize, bool)> {
        publish_used(&mut self.queue, &*self.mem, used)
    }

    fn ready(&self) -> bool {
        self.queue.ready()
    }

    fn rewind(&mut self, n: u16) {
        let next = self.queue.next_avail().wrapping_sub(n);
        self.queue.set_next_avail(next);
    }

    fn set_next_avail(&mut self, idx: u16) {
        self.queue.set_next_avail(idx);
    }

    fn next_used(&self) -> u16 {
        self.queue.next_used()
    }

    fn guest_used_idx(&self, mem: &M) -> Result<u16> {
        Ok(self.queue.used_idx(mem, Ordering::Acquire)?.0)
    }

    fn desc_table(&self) -> (GuestAddress, u16) {
        (GuestAddress(self.queue.desc_table()), self.queue.size())
    }

    fn has_available(&self) -> bool {
        available(&self.queue, &*self.mem).is_some_and(|n| n != 0)
    }

    fn disable_notification(&mut self) -> Result<()> {
        Ok(self.queue.disable_notification(&*self.mem)?)
    }

    fn enable_notification(&mut self) -> Result<bool> {
        if !self.queue.enable_notification(&*self.mem)? {
            return Ok(false);
        }
        poppable(&self.queue, &*self.mem)
    }

    fn signal(&mut self) -> Result<()> {
        self.signals += 1;
        match &self.call {
            Some(evt) => evt.write(1).map_err(Error::Signal),
            None => Ok(()),
        }
    }
}

/// Whether `q`'s avail ring holds chains a pop can take: between one and a ring's worth past
/// the next pop. Anything else is a driver bug (or attack) that pops refuse; it is logged, and
/// the queue waits for the driver's next notification.
fn poppable<M: GuestMemory>(q: &Queue, mem: &M) -> Result<bool> {
    let avail = q.avail_idx(mem, Ordering::Acquire)?;
    let pending = avail.0.wrapping_sub(q.next_avail());
    if pending > q.size() {
        tracing::debug!(
            avail = avail.0,
            next_avail = q.next_avail(),
            size = q.size(),
            "avail index out of range: nothing to take until the driver notifies again"
        );
    }
    Ok(pending != 0 && pending <= q.size())
}

/// How many chains `q`'s avail ring holds past the next pop, if that is a count a pop can
/// take (see [`poppable`]); `None` for a ring that is not ready, unreadable or out of range.
fn available<M: GuestMemory>(q: &Queue, mem: &M) -> Option<u16> {
    if !q.ready() {
        return None;
    }
    let avail = q.avail_idx(mem, Ordering::Acquire).ok()?;
    let pending = avail.0.wrapping_sub(q.next_avail());
    (pending <= q.size()).then_some(pending)
}

/// Split virtqueue layout (virtio 1.2 §2.7.6, §2.7.8): `flags` and `idx` before the ring
/// entries, then `used_event` after the avail ring.
const RING_HEADER: u64 = 4;
const USED_ELEMENT: u64 = 8;
const AVAIL_ELEMENT: u64 = 2;
/// Used elements written to guest memory in one access (at most).
const USED_RUN: usize = 64;

/// `flags` bit of the avail ring: the driver asks for no used-buffer notifications
/// (virtio 1.2 §2.7.7; only meaningful without EVENT_IDX).
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// [`VirtQueue::publish_used`] on a virtio-queue [`Queue`] (which only offers one used-index
/// store per entry). The notification test is virtio-queue's own EVENT_IDX formula, over
/// exactly the entries just published; without EVENT_IDX the driver's
/// `VRING_AVAIL_F_NO_INTERRUPT` flag is honoured.
///
/// The used ring is looked up once per call (one region search) when it lies inside one
/// directly mapped region, which is what every VMM lays out; otherwise each access goes
/// through vm-memory's checked, region-splitting path.
fn publish_used<M: GuestMemory>(
    q: &mut Queue,
    mem: &M,
    used: &[(u16, u32)],
) -> Result<(usize, bool)> {
    let overflow = || Error::Queue(virtio_queue::Error::AddressOverflow);
    let guest = |e| Error::Queue(virtio_queue::Error::GuestMemory(e));
    let size = q.size();
    let ring = GuestAddress(q.used_ring());
    let ring_len = RING_HEADER + u64::from(size) * USED_ELEMENT;
    let direct = mem
        .physical_memory()
        .and_then(|m| m.get_slice(ring, ring_len as usize).ok());
    // Elements are encoded into a small buffer and written one contiguous run at a time (a
    // run ends where the ring wraps), not one guest-memory access per element.
    let write_run = |bytes: &[u8], first: Wrapping<u16>| -> Result<()> {
        let offset = RING_HEADER + u64::from(first.0 % size) * USED_ELEMENT;
        match &direct {
            Some(used_ring) => used_ring
                .write_slice(bytes, offset as usize)
                .map_err(|e| guest(e.into())),
            None => mem
                .write_slice(bytes, ring.checked_add(offset).ok_or_else(overflow)?)
                .map_err(guest),
        }
    };
    let mut run = [0u8; USED_RUN * USED_ELEMENT as usize];
    let mut run_len = 0usize;
    let start = Wrapping(q.next_used());
    let mut run_first = start;
    let mut next = start;
    let mut rejected = 0;
    for &(head, len) in used {
        if head >= size {
            rejected += 1;
            continue;
        }
        let elem = &mut run[run_len * USED_ELEMENT as usize..][..USED_ELEMENT as usize];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        run_len += 1;
        next += Wrapping(1);
        if run_len == USED_RUN || next.0.is_multiple_of(size) {
            write_run(&run[..run_len * USED_ELEMENT as usize], run_first)?;
            run_first = next;
            run_len = 0;
        }
    }
    if run_len > 0 {
        write_run(&run[..run_len * USED_ELEMENT as usize], run_first)?;
    }
    if next == start {
        return Ok((rejected, false));
    }
    let idx = next.0.to_le();
    match &direct {
        Some(used_ring) => used_ring
            .store(idx, 2, Ordering::Release)
            .map_err(|e| guest(e.into()))?,
        None => mem
            .store(
                idx,
                ring.checked_add(2).ok_or_else(overflow)?,
                Ordering::Release,
            )
            .map_err(guest)?,
    }
    q.set_next_used(next.0);
    // The used index must be visible before the driver's suppression state is read.
    fence(Ordering::SeqCst);
    let avail = GuestAddress(q.avail_ring());
    if !q.event_idx_enabled() {
        let flags: u16 = mem.load(avail, Ordering::Acquire).map_err(guest)?;
        return Ok((rejected, u16::from_le(flags) & AVAIL_F_NO_INTERRUPT == 0));
    }
    let event_offset = RING_HEADER + u64::from(size) * AVAIL_ELEMENT;
    let event_addr = avail.checked_add(event_offset).ok_or_else(overflow)?;
    let used_event: u16 = mem.load(event_addr, Ordering::Acquire).map_err(guest)?;
    let used_event = Wrapping(u16::from_le(used_event));
    Ok((rejected, next - used_event - Wrapping(1) < next - start))
}

#[cfg(test)]
mod tests {
    use virtio_queue::QueueT;

    use super::*;

    type Mem = GuestMemoryMmap<()>;

    fn used_ring(mem: &Mem, used: GuestAddress, n: u64) -> (u16, Vec<(u32, u32)>) {
        let idx: u16 = mem.read_obj(used.unchecked_add(2)).unwrap();
        let entries = (0..n)
            .map(|i| {
                let e = used.unchecked_add(4 + 8 * i);
                (
                    mem.read_obj(e).unwrap(),
                    mem.read_obj(e.unchecked_add(4)).unwrap(),
                )
            })
            .collect();
        (idx, entries)
    }

    /// A ready 16-entry queue with its avail and used rings where the test puts them
    /// (virtio-queue's mock lays the used ring over `used_event`).
    fn queue_with_rings(mem: &Mem, avail: GuestAddress, used: GuestAddress) -> LocalQueue<Mem> {
        sized_queue_with_rings(mem, 16, avail, used)
    }

    fn sized_queue_with_rings(
        mem: &Mem,
        size: u16,
        avail: GuestAddress,
        used: GuestAddress,
    ) -> LocalQueue<Mem> {
        let mut queue = Queue::new(size).unwrap();
        queue.set_desc_table_address(Some(0), Some(0));
        queue.set_avail_ring_address(Some(avail.0 as u32), Some(0));
        queue.set_used_ring_address(Some(used.0 as u32), Some(0));
        queue.set_ready(true);
        LocalQueue::new(queue, Arc::new(mem.clone()), None)
    }

    #[test]
    fn published_entries_land_together_and_notify_as_used_event_asks() {
        let mem = Mem::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let (avail, used) = (GuestAddress(0x1000), GuestAddress(0x2000));
        let mut q = queue_with_rings(&mem, avail, used);
        q.queue.set_event_idx(true);
        let used_event = avail.unchecked_add(4 + 2 * 16);

        // The driver wants a notification once the used index passes 2.
        mem.write_obj(2u16, used_event).unwrap();
        assert_eq!(q.publish_used(&[(0, 10), (1, 20)]).unwrap(), (0, false));
        assert_eq!(used_ring(&mem, used, 2), (2, vec![(0, 10), (1, 20)]));
        // A head past the queue size is rejected; the rest cross `used_event`.
        assert_eq!(
            q.publish_used(&[(2, 30), (99, 1), (3, 40)]).unwrap(),
            (1, true)
        );
        assert_eq!(
            used_ring(&mem, used, 4),
            (4, vec![(0, 10), (1, 20), (2, 30), (3, 40)])
        );
        assert_eq!(q.queue.next_used(), 4);
        // Nothing published: nothing to notify.
        assert_eq!(q.publish_used(&[(99, 1)]).unwrap(), (1, false));

        // Without EVENT_IDX every publication asks for a notification unless the driver set
        // VRING_AVAIL_F_NO_INTERRUPT.
        q.queue.set_event_idx(false);
        assert_eq!(q.publish_used(&[(4, 50)]).unwrap(), (0, true));
        mem.write_obj(1u16, avail).unwrap();
        assert_eq!(q.publish_used(&[(5, 60)]).unwrap(), (0, false));
        assert_eq!(used_ring(&mem, used, 6).0, 6);
    }

    #[test]
    fn a_used_ring_across_two_regions_is_written_address_by_address() {
        let mem =
            Mem::from_ranges(&[(GuestAddress(0), 0x2000), (GuestAddress(0x2000), 0x2000)]).unwrap();
        // 4 + 16 * 8 bytes from 0x1fc0: entries 7 and up live in the second region.
        let (avail, used) = (GuestAddress(0x1000), GuestAddress(0x1fc0));
        let mut q = queue_with_rings(&mem, avail, used);
        let entries: Vec<(u16, u32)> = (0..10).map(|i| (i, 100 + u32::from(i))).collect();
        assert_eq!(q.publish_used(&entries).unwrap(), (0, true));
        let expected = entries.iter().map(|&(h, l)| (u32::from(h), l)).collect();
        assert_eq!(used_ring(&mem, used, 10), (10, expected));
    }

    #[test]
    fn a_long_batch_wrapping_the_ring_end_lands_in_ring_order() {
        let mem = Mem::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let (avail, used) = (GuestAddress(0x1000), GuestAddress(0x2000));
        let mut q = sized_queue_with_rings(&mem, 128, avail, used);
        q.queue.set_next_used(90);
        // 100 entries from position 90: 38 up to the ring's end, the rest from its start;
        // more than one run of USED_RUN; one bad head in the middle is left out.
        let mut entries: Vec<(u16, u32)> = (0..100).map(|i| (i, 1000 + u32::from(i))).collect();
        entries.insert(50, (128, 7));
        assert_eq!(q.publish_used(&entries).unwrap(), (1, true));
        let (idx, ring) = used_ring(&mem, used, 128);
        assert_eq!(idx, 190);
        for i in 0..100u32 {
            let pos = (90 + i as usize) % 128;
            assert_eq!(ring[pos], (i, 1000 + i), "entry {i} at ring position {pos}");
        }
        // Positions 62..90 were not written.
        assert!(ring[62..90].iter().all(|&e| e == (0, 0)));
    }
}
