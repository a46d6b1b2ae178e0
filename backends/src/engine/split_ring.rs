// SPDX-License-Identifier: Apache-2.0
//! [`SplitRing`]: our own batched reader and writer of one split virtqueue (virtio 1.2 §2.7),
//! for the data paths where virtio-queue's per-access checks are the cost that matters (the
//! in-process switch of `vhost-user-net --link` moves a 64-byte frame in ~100 ns).
//!
//! It is the one place where this crate reads an avail ring or writes a used ring itself:
//!
//! * The three parts of the ring are looked up once per pass ([`SplitRing::new`]): each must
//!   lie inside one mapped guest memory region, or the ring is refused. After that, an avail
//!   index, a ring entry or a used element is a bounds-checked access to an already mapped
//!   slice, not a region search.
//! * Chains are walked by [`SplitWalk`] over the mapped descriptor table, into a
//!   [`DescChain`], which validates every buffer address exactly as for a chain popped by
//!   virtio-queue (the same walk limits, the same faults; [`compare_with_virtio_queue`] runs
//!   both on the same bytes and the tests feed it hostile and random rings).
//! * An avail index more than a ring ahead of the next pop is a driver bug: nothing is taken
//!   (virtio-queue refuses it the same way) until the driver writes a sane index.
//! * Used elements are written as they come and published with one release store of the used
//!   index per batch; whether the driver asked to be notified is its `used_event` (EVENT_IDX)
//!   or `VRING_AVAIL_F_NO_INTERRUPT`, tested over exactly the entries published.
//!
//! The caller keeps the queue's indexes: it builds a `SplitRing` from them for a pass, under
//! the lock that serialises the queue, and stores [`SplitRing::next_avail`] and
//! [`SplitRing::next_used`] back afterwards.

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use virtio_bindings::virtio_ring::{VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, VolatileSlice};

use super::{DescChain, SplitWalk};

/// Where a split queue lives and how it notifies: what the driver configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingAddrs {
    /// Queue size (a power of two up to 32768).
    pub size: u16,
    /// Descriptor table.
    pub desc: GuestAddress,
    /// Available ring.
    pub avail: GuestAddress,
    /// Used ring.
    pub used: GuestAddress,
    /// VIRTIO_RING_F_EVENT_IDX negotiated.
    pub event_idx: bool,
}

const RING_HEADER: usize = 4;
const AVAIL_ELEM: usize = 2;
const USED_ELEM: usize = 8;
const DESC_SIZE: usize = 16;

/// One split virtqueue's rings, mapped for one pass of the device.
pub struct SplitRing<'m, M: ?Sized> {
    mem: &'m M,
    addrs: RingAddrs,
    desc: VolatileSlice<'m>,
    avail: VolatileSlice<'m>,
    used: VolatileSlice<'m>,
    next_avail: Wrapping<u16>,
    next_used: Wrapping<u16>,
    /// The used index the driver has seen (published by the last [`SplitRing::publish`]).
    published: Wrapping<u16>,
}

/// `[addr, addr + len)` of `mem` as one mapped slice, if it lies inside one region.
fn mapped<'m, M: GuestMemory + ?Sized>(
    mem: &'m M,
    addr: GuestAddress,
    len: usize,
) -> Option<VolatileSlice<'m>> {
    let slice = mem.physical_memory()?.get_slice(addr, len).ok()?;
    let host = slice.ptr_guard_mut().as_ptr();
    // SAFETY: `get_slice` checked that `[addr, addr + len)` lies inside one mapped region of
    // `mem`; the region stays mapped while `mem` is borrowed for 'm. The slice carries no
    // dirty bitmap: the devices using this ring do not offer dirty-page logging.
    Some(unsafe { VolatileSlice::new(host, len) })
}

impl<'m, M: GuestMemory + ?Sized> SplitRing<'m, M> {
    /// Map the rings at `addrs` in `mem`, resuming at the queue's `next_avail`/`next_used`.
    /// `None`: a size that is not a power of two, or a part that is not inside one mapped
    /// region (the driver's configuration is unusable; the caller takes nothing).
    pub fn new(mem: &'m M, addrs: RingAddrs, next_avail: u16, next_used: u16) -> Option<Self> {
        let size = usize::from(addrs.size);
        if !addrs.size.is_power_of_two() || size > 32768 {
            return None;
        }
        // Each part with its trailing event field (`used_event`, `avail_event`).
        let desc = mapped(mem, addrs.desc, size * DESC_SIZE)?;
        let avail = mapped(mem, addrs.avail, RING_HEADER + size * AVAIL_ELEM + 2)?;
        let used = mapped(mem, addrs.used, RING_HEADER + size * USED_ELEM + 2)?;
        Some(Self {
            mem,
            addrs,
            desc,
            avail,
            used,
            next_avail: Wrapping(next_avail),
            next_used: Wrapping(next_used),
            published: Wrapping(next_used),
        })
    }

    /// Position of the next chain to take.
    pub fn next_avail(&self) -> u16 {
        self.next_avail.0
    }

    /// Used index after the entries written so far (published or not).
    pub fn next_used(&self) -> u16 {
        self.next_used.0
    }

    /// Chains the driver has made available and not yet taken; 0 when its avail index is more
    /// than a ring ahead (nothing can be taken from such a ring).
    pub fn pending(&self) -> u16 {
        let idx = self.avail.load::<u16>(2, Ordering::Acquire).unwrap_or(0);
        let n = u16::from_le(idx).wrapping_sub(self.next_avail.0);
        if n > self.addrs.size {
            0
        } else {
            n
        }
    }

    /// Take the next available chain into `chain` (walked and validated; a bad chain carries
    /// its fault). The caller checked [`SplitRing::pending`].
    pub fn pop(&mut self, chain: &mut DescChain) {
        let slot = usize::from(self.next_avail.0 % self.addrs.size);
        let head = self
            .avail
            .load::<u16>(RING_HEADER + slot * AVAIL_ELEM, Ordering::Relaxed)
            .map(u16::from_le)
            // Unreachable (the slice holds the whole ring); a head past the table walks empty.
            .unwrap_or(u16::MAX);
        self.next_avail += 1;
        let walk =
            SplitWalk::in_mapped_table(self.mem, self.addrs.desc, self.desc, self.addrs.size, head);
        chain.reset_from_walk(self.mem, head, walk);
    }

    /// Give the last `n` taken chains back: the next pops take them again.
    pub fn unpop(&mut self, n: u16) {
        self.next_avail -= n;
    }

    /// Write a used element (visible to the driver at the next [`SplitRing::publish`]).
    /// `false`: `head` is past the queue size and was refused.
    pub fn push_used(&mut self, head: u16, len: u32) -> bool {
        if head >= self.addrs.size {
            return false;
        }
        let slot = usize::from(self.next_used.0 % self.addrs.size);
        let mut elem = [0u8; USED_ELEM];
        elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        elem[4..].copy_from_slice(&len.to_le_bytes());
        if self
            .used
            .write_slice(&elem, RING_HEADER + slot * USED_ELEM)
            .is_err()
        {
            return false; // unreachable: the slice holds the whole ring
        }
        self.next_used += 1;
        true
    }

    /// Make the used elements written since the last call visible (one release store of the
    /// used index); `true` if the driver asked to be notified of them.
    pub fn publish(&mut self) -> bool {
        if self.next_used == self.published {
            return false;
        }
        let old = self.published;
        self.published = self.next_used;
        let _ = self
            .used
            .store(self.next_used.0.to_le(), 2, Ordering::Release);
        // The used index must be visible before the driver's suppression state is read.
        fence(Ordering::SeqCst);
        if self.addrs.event_idx {
            let at = RING_HEADER + usize::from(self.addrs.size) * AVAIL_ELEM;
            let event = Wrapping(u16::from_le(
                self.avail.load::<u16>(at, Ordering::Acquire).unwrap_or(0),
            ));
            self.next_used - event - Wrapping(1) < self.next_used - old
        } else {
            let flags = u16::from_le(self.avail.load::<u16>(0, Ordering::Acquire).unwrap_or(0));
            flags & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0
        }
    }

    /// Ask the driver for no kicks: `VRING_USED_F_NO_NOTIFY`, or with EVENT_IDX nothing (the
    /// driver kicks once when it passes the `avail_event` last written, then no more until
    /// it is moved).
    pub fn disable_notification(&mut self) {
        if !self.addrs.event_idx {
            let _ = self.used.store(
                (VRING_USED_F_NO_NOTIFY as u16).to_le(),
                0,
                Ordering::Relaxed,
            );
        }
    }

    /// Ask the driver to kick for the next chain it makes available, then look once more:
    /// `true` if chains arrived before the request was visible (take them; nothing that
    /// arrives later is missed, it kicks).
    pub fn enable_notification(&mut self) -> bool {
        if self.addrs.event_idx {
            let at = RING_HEADER + usize::from(self.addrs.size) * USED_ELEM;
            let _ = self
                .used
                .store(self.next_avail.0.to_le(), at, Ordering::Release);
        } else {
            let _ = self.used.store(0u16, 0, Ordering::Release);
        }
        fence(Ordering::SeqCst);
        self.pending() > 0
    }
}

/// The fuzzing entry point: take every available chain of a ring described by `data` with
/// [`SplitRing`] and with virtio-queue's `Queue`, and compare what the two walks recorded.
/// `Ok(chains taken)` when they agree, `Err(why)` otherwise. Never panics on any input.
///
/// `data`: byte 0 picks the queue size (2^(1 + b % 8)), bytes 1..3 the next avail index and
/// byte 3 EVENT_IDX; the rest is the start of 64 KiB of guest memory holding the descriptor
/// table at 0, the avail ring at 0x1000 and the used ring at 0x2000 (indirect tables and
/// buffers anywhere; addresses past 64 KiB are outside guest memory).
pub fn compare_with_virtio_queue(data: &[u8]) -> Result<usize, String> {
    use virtio_queue::{Queue, QueueOwnedT, QueueT};
    use vm_memory::GuestMemoryMmap;

    const MEM: usize = 0x1_0000;
    let (head, image) = data.split_at(data.len().min(4));
    let byte = |i: usize| head.get(i).copied().unwrap_or(0);
    let size = 1u16 << (1 + byte(0) % 8);
    let next_avail = u16::from_le_bytes([byte(1), byte(2)]);
    let event_idx = byte(3) & 1 != 0;
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).map_err(|e| e.to_string())?;
    let image = &image[..image.len().min(MEM)];
    mem.write_slice(image, GuestAddress(0))
        .map_err(|e| e.to_string())?;
    let addrs = RingAddrs {
        size,
        desc: GuestAddress(0),
        avail: GuestAddress(0x1000),
        used: GuestAddress(0x2000),
        event_idx,
    };

    let mut queue = Queue::new(size).map_err(|e| e.to_string())?;
    queue.set_desc_table_address(Some(0), Some(0));
    queue.set_avail_ring_address(Some(0x1000), Some(0));
    queue.set_used_ring_address(Some(0x2000), Some(0));
    queue.set_event_idx(event_idx);
    queue.set_next_avail(next_avail);
    queue.set_ready(true);
    let theirs: Vec<DescChain> = match queue.iter(&mem) {
        Ok(iter) => iter.map(DescChain::walk).collect(),
        Err(_) => Vec::new(), // avail index out of range: nothing to take
    };

    let mut ring =
        SplitRing::new(&mem, addrs, next_avail, 0).ok_or("rings not inside guest memory")?;
    let pending = ring.pending();
    if usize::from(pending) != theirs.len() {
        return Err(format!(
            "{pending} chains pending, virtio-queue took {}",
            theirs.len()
        ));
    }
    let mut ours = DescChain::default();
    for (i, want) in theirs.iter().enumerate() {
        ring.pop(&mut ours);
        let summary = |c: &DescChain| {
            (
                c.head(),
                c.fault(),
                c.segs(super::Dir::Readable).to_vec(),
                c.segs(super::Dir::Writable).to_vec(),
            )
        };
        if summary(&ours) != summary(want) {
            return Err(format!(
                "chain {i}: ours {:?}, virtio-queue's {:?}",
                summary(&ours),
                summary(want)
            ));
        }
    }
    if ring.next_avail() != queue.next_avail() {
        return Err(format!(
            "next avail {} vs {}",
            ring.next_avail(),
            queue.next_avail()
        ));
    }
    Ok(theirs.len())
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestMemoryMmap;

    use super::*;

    const AVAIL: u64 = 0x1000;
    const USED: u64 = 0x2000;

    fn ring(mem: &GuestMemoryMmap<()>, event_idx: bool) -> SplitRing<'_, GuestMemoryMmap<()>> {
        let addrs = RingAddrs {
            size: 8,
            desc: GuestAddress(0),
            avail: GuestAddress(AVAIL),
            used: GuestAddress(USED),
            event_idx,
        };
        SplitRing::new(mem, addrs, 0, 0).unwrap()
    }

    fn read16(mem: &GuestMemoryMmap<()>, at: u64) -> u16 {
        mem.read_obj(GuestAddress(at)).unwrap()
    }

    #[test]
    fn used_entries_publish_together_and_notify_as_the_driver_asked() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap();
        let mut r = ring(&mem, true);
        // used_event = 1: notify once the used index passes 1.
        mem.write_obj(1u16, GuestAddress(AVAIL + 4 + 2 * 8))
            .unwrap();
        assert!(r.push_used(3, 60));
        assert!(!r.push_used(8, 1), "a head past the ring is refused");
        assert_eq!(read16(&mem, USED + 2), 0, "not visible before publish");
        assert!(!r.publish(), "0 -> 1 does not pass used_event 1");
        assert!(r.push_used(4, 70));
        assert!(r.publish(), "1 -> 2 passes it");
        assert_eq!(read16(&mem, USED + 2), 2);
        let elem: [u32; 2] = mem.read_obj(GuestAddress(USED + 4 + 8)).unwrap();
        assert_eq!(elem, [4, 70]);
        assert!(!r.publish(), "nothing new");

        // Without EVENT_IDX: VRING_AVAIL_F_NO_INTERRUPT decides.
        let mut r = ring(&mem, false);
        r.push_used(1, 1);
        assert!(r.publish());
        mem.write_obj(1u16, GuestAddress(AVAIL)).unwrap();
        r.push_used(2, 1);
        assert!(!r.publish());
    }

    #[test]
    fn kicks_are_asked_for_where_the_ring_stopped_and_arrivals_are_seen() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap();
        let avail_event = USED + 4 + 8 * 8;
        let mut r = ring(&mem, true);
        mem.write_obj(3u16, GuestAddress(AVAIL + 2)).unwrap();
        assert_eq!(r.pending(), 3);
        let mut c = DescChain::default();
        r.pop(&mut c);
        r.pop(&mut c);
        assert!(r.enable_notification(), "one chain still there");
        assert_eq!(read16(&mem, avail_event), 2, "avail_event at the next pop");
        r.pop(&mut c);
        assert!(!r.enable_notification());
        assert_eq!(read16(&mem, avail_event), 3);
        // An index more than a ring ahead: nothing to take.
        mem.write_obj(3u16 + 9, GuestAddress(AVAIL + 2)).unwrap();
        assert_eq!(r.pending(), 0);

        // Without EVENT_IDX the used ring's flags say it.
        let mut r = ring(&mem, false);
        r.disable_notification();
        assert_eq!(read16(&mem, USED), VRING_USED_F_NO_NOTIFY as u16);
        r.enable_notification();
        assert_eq!(read16(&mem, USED), 0);
    }

    #[test]
    fn rings_outside_guest_memory_are_refused() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap();
        let mut addrs = RingAddrs {
            size: 8,
            desc: GuestAddress(0),
            avail: GuestAddress(AVAIL),
            used: GuestAddress(0x4000 - 16),
            event_idx: false,
        };
        assert!(SplitRing::new(&mem, addrs, 0, 0).is_none());
        addrs.used = GuestAddress(USED);
        addrs.size = 6;
        assert!(
            SplitRing::new(&mem, addrs, 0, 0).is_none(),
            "not a power of two"
        );
        addrs.size = 8;
        assert!(SplitRing::new(&mem, addrs, 0, 0).is_some());
    }
}
