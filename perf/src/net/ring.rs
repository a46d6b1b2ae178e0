// SPDX-License-Identifier: Apache-2.0
//! The driver side of a split virtqueue (virtio 1.2 §2.7) laid out by the load generator in
//! its own guest memory: descriptor table, available ring (with `used_event`) and used ring
//! (with `avail_event`). Every access goes through vm-memory (bounds-checked); indices coming
//! back from the device are checked against the queue size.

use std::sync::atomic::{fence, Ordering};

use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

const DESC_LEN: u64 = 16;
const USED_ELEM_LEN: u64 = 8;
/// Alignment of each ring part (more than the spec's 16/2/4 bytes: keeps parts on own pages).
const PART_ALIGN: u64 = 4096;

/// Errors of the driver ring.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// A guest memory access failed (ring outside the memory).
    #[error("guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
    /// The queue size is not a power of two in 1..=32768.
    #[error("queue size {0} is not a power of two <= 32768")]
    Size(u16),
    /// A descriptor index past the table.
    #[error("descriptor {index} outside a queue of {size}")]
    Index {
        /// The index.
        index: u16,
        /// The queue size.
        size: u16,
    },
    /// The device put a bad head id on the used ring.
    #[error("device returned used id {id} for a queue of {size}")]
    UsedId {
        /// The id.
        id: u32,
        /// The queue size.
        size: u16,
    },
}

/// Where one queue's three parts live in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLayout {
    /// Queue size (entries).
    pub size: u16,
    /// Descriptor table.
    pub desc: GuestAddress,
    /// Available ring.
    pub avail: GuestAddress,
    /// Used ring.
    pub used: GuestAddress,
}

fn align_up(v: u64) -> u64 {
    v.div_ceil(PART_ALIGN) * PART_ALIGN
}

impl RingLayout {
    /// Lay out a queue of `size` entries from `base` on; returns it and the first free address
    /// after it (page aligned).
    pub fn new(base: GuestAddress, size: u16) -> Result<(Self, GuestAddress), RingError> {
        if !size.is_power_of_two() || size > 32768 {
            return Err(RingError::Size(size));
        }
        let n = u64::from(size);
        let desc = align_up(base.0);
        let avail = align_up(desc + DESC_LEN * n);
        let used = align_up(avail + 6 + 2 * n);
        let end = align_up(used + 6 + USED_ELEM_LEN * n);
        let layout = RingLayout {
            size,
            desc: GuestAddress(desc),
            avail: GuestAddress(avail),
            used: GuestAddress(used),
        };
        Ok((layout, GuestAddress(end)))
    }

    /// Lengths of the descriptor table, available ring and used ring in bytes.
    pub fn lengths(&self) -> (u64, u64, u64) {
        let n = u64::from(self.size);
        (DESC_LEN * n, 6 + 2 * n, 6 + USED_ELEM_LEN * n)
    }

    fn desc_at(&self, index: u16) -> GuestAddress {
        GuestAddress(self.desc.0 + DESC_LEN * u64::from(index))
    }

    fn used_event(&self) -> GuestAddress {
        GuestAddress(self.avail.0 + 4 + 2 * u64::from(self.size))
    }

    fn avail_event(&self) -> GuestAddress {
        GuestAddress(self.used.0 + 4 + USED_ELEM_LEN * u64::from(self.size))
    }
}

/// `vring_need_event`: whether moving an index from `old` to `new` crosses `event`.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Driver state of one split queue (the shadow indices; the rings live in guest memory).
#[derive(Debug)]
pub struct DriverRing {
    layout: RingLayout,
    event_idx: bool,
    /// Next free slot of the available ring (not yet published when ahead of `published`).
    next_avail: u16,
    /// Available index the device has been told about.
    published: u16,
    /// Next used entry to consume.
    last_used: u16,
    /// Used index last read from the device.
    used_seen: u16,
}

impl DriverRing {
    /// Zero the queue's rings in `mem` and start at index 0.
    pub fn new(
        mem: &GuestMemoryMmap,
        layout: RingLayout,
        event_idx: bool,
    ) -> Result<Self, RingError> {
        let (dl, al, ul) = layout.lengths();
        for (addr, len) in [(layout.desc, dl), (layout.avail, al), (layout.used, ul)] {
            let zeros = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
            mem.write_slice(&zeros, addr)?;
        }
        Ok(Self {
            layout,
            event_idx,
            next_avail: 0,
            published: 0,
            last_used: 0,
            used_seen: 0,
        })
    }

    /// Write descriptor `index`: one buffer at `addr` of `len` bytes, device-writable when
    /// `writable` (receive) or device-readable (transmit). No chaining.
    pub fn set_desc(
        &self,
        mem: &GuestMemoryMmap,
        index: u16,
        addr: GuestAddress,
        len: u32,
        writable: bool,
    ) -> Result<(), RingError> {
        if index >= self.layout.size {
            return Err(RingError::Index {
                index,
                size: self.layout.size,
            });
        }
        let flags: u16 = if writable {
            VRING_DESC_F_WRITE as u16
        } else {
            0
        };
        let mut d = [0u8; DESC_LEN as usize];
        d[0..8].copy_from_slice(&addr.0.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        mem.write_slice(&d, self.layout.desc_at(index))?;
        Ok(())
    }

    /// Put descriptor `head` on the available ring (visible to the device after [`publish`]).
    ///
    /// [`publish`]: DriverRing::publish
    pub fn push(&mut self, mem: &GuestMemoryMmap, head: u16) -> Result<(), RingError> {
        if head >= self.layout.size {
            return Err(RingError::Index {
                index: head,
                size: self.layout.size,
            });
        }
        let slot = self.next_avail % self.layout.size;
        let addr = GuestAddress(self.layout.avail.0 + 4 + 2 * u64::from(slot));
        mem.store(head.to_le(), addr, Ordering::Relaxed)?;
        self.next_avail = self.next_avail.wrapping_add(1);
        Ok(())
    }

    /// Entries pushed and not yet published.
    pub fn unpublished(&self) -> u16 {
        self.next_avail.wrapping_sub(self.published)
    }

    /// Publish the pushed entries (avail `idx`); returns whether the device wants a kick
    /// (EVENT_IDX `avail_event`, or no `VRING_USED_F_NO_NOTIFY`).
    pub fn publish(&mut self, mem: &GuestMemoryMmap) -> Result<bool, RingError> {
        let old = self.published;
        let new = self.next_avail;
        if old == new {
            return Ok(false);
        }
        let idx_addr = GuestAddress(self.layout.avail.0 + 2);
        mem.store(new.to_le(), idx_addr, Ordering::Release)?;
        self.published = new;
        // The index store must be visible before the device's suppression state is read.
        fence(Ordering::SeqCst);
        if self.event_idx {
            let event = u16::from_le(mem.load(self.layout.avail_event(), Ordering::Acquire)?);
            Ok(need_event(event, new, old))
        } else {
            let flags = u16::from_le(mem.load(self.layout.used, Ordering::Acquire)?);
            Ok(flags & VRING_USED_F_NO_NOTIFY as u16 == 0)
        }
    }

    /// Whether the device has put entries on the used ring that were not consumed yet.
    pub fn has_used(&mut self, mem: &GuestMemoryMmap) -> Result<bool, RingError> {
        if self.used_seen == self.last_used {
            let idx_addr = GuestAddress(self.layout.used.0 + 2);
            self.used_seen = u16::from_le(mem.load(idx_addr, Ordering::Acquire)?);
        }
        Ok(self.used_seen != self.last_used)
    }

    /// Take the next used entry: `(descriptor id, bytes written by the device)`.
    pub fn pop_used(&mut self, mem: &GuestMemoryMmap) -> Result<Option<(u16, u32)>, RingError> {
        if !self.has_used(mem)? {
            return Ok(None);
        }
        let slot = self.last_used % self.layout.size;
        let addr = GuestAddress(self.layout.used.0 + 4 + USED_ELEM_LEN * u64::from(slot));
        let mut e = [0u8; USED_ELEM_LEN as usize];
        mem.read_slice(&mut e, addr)?;
        let id = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
        let len = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let id = u16::try_from(id)
            .ok()
            .filter(|&i| i < self.layout.size)
            .ok_or(RingError::UsedId {
                id,
                size: self.layout.size,
            })?;
        self.last_used = self.last_used.wrapping_add(1);
        Ok(Some((id, len)))
    }

    /// Ask for an interrupt once `n` (>= 1) more used entries have arrived (EVENT_IDX
    /// `used_event`; without EVENT_IDX interrupts are never suppressed). The caller must
    /// check [`has_used`](DriverRing::has_used) again afterwards before sleeping.
    pub fn arm_interrupt(&mut self, mem: &GuestMemoryMmap, n: u16) -> Result<(), RingError> {
        if self.event_idx {
            let event = self.last_used.wrapping_add(n.max(1) - 1);
            mem.store(event.to_le(), self.layout.used_event(), Ordering::Release)?;
        }
        fence(Ordering::SeqCst);
        self.used_seen = self.last_used; // force a fresh read of the used index
        Ok(())
    }

    /// Ask for no interrupts, as a polling driver does: `VRING_AVAIL_F_NO_INTERRUPT` without
    /// EVENT_IDX; with it (where the flag must stay 0), `used_event` half an index wrap ahead of
    /// the entries consumed so far. Call again as entries are consumed so it is never reached.
    pub fn suppress_interrupts(&mut self, mem: &GuestMemoryMmap) -> Result<(), RingError> {
        if self.event_idx {
            let event = self.last_used.wrapping_add(0x8000);
            mem.store(event.to_le(), self.layout.used_event(), Ordering::Relaxed)?;
        } else {
            let flags = (VRING_AVAIL_F_NO_INTERRUPT as u16).to_le();
            mem.store(flags, self.layout.avail, Ordering::Relaxed)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("anonymous memory")
    }

    #[test]
    fn layout_is_aligned_and_disjoint() {
        let (l, end) = RingLayout::new(GuestAddress(100), 256).unwrap();
        assert_eq!(l.desc.0, 4096);
        assert_eq!(l.avail.0, 4096 + 4096);
        assert_eq!(l.used.0, 3 * 4096);
        assert_eq!(end.0, 3 * 4096 + 4096);
        assert_eq!(l.lengths(), (4096, 518, 2054));
        assert!(RingLayout::new(GuestAddress(0), 100).is_err());
        assert!(RingLayout::new(GuestAddress(0), 0).is_err());
    }

    #[test]
    fn need_event_wraps() {
        assert!(need_event(0, 1, 0));
        assert!(!need_event(1, 1, 0));
        assert!(need_event(65535, 2, 65534));
        assert!(!need_event(5, 3, 0));
    }

    /// Play the device by hand: publish, read the avail ring, complete in the used ring.
    #[test]
    fn push_publish_and_reclaim() {
        let m = mem();
        let (l, _) = RingLayout::new(GuestAddress(0), 4).unwrap();
        let mut r = DriverRing::new(&m, l, true).unwrap();
        r.set_desc(&m, 3, GuestAddress(0x8000), 64, false).unwrap();
        assert!(r.set_desc(&m, 4, GuestAddress(0), 1, false).is_err());
        assert!(r.push(&m, 4).is_err());
        let d: u64 = m.read_obj(l.desc_at(3)).unwrap();
        assert_eq!(d, 0x8000);
        r.push(&m, 3).unwrap();
        r.push(&m, 1).unwrap();
        assert_eq!(r.unpublished(), 2);
        // Device's avail_event is 0: moving 0 -> 2 crosses it, so a kick is due.
        assert!(r.publish(&m).unwrap());
        assert_eq!(m.read_obj::<u16>(GuestAddress(l.avail.0 + 2)).unwrap(), 2);
        assert_eq!(m.read_obj::<u16>(GuestAddress(l.avail.0 + 4)).unwrap(), 3);
        assert_eq!(m.read_obj::<u16>(GuestAddress(l.avail.0 + 6)).unwrap(), 1);
        // Device asks for a kick only past index 5: no kick for 2 -> 3.
        m.write_obj(5u16, GuestAddress(l.used.0 + 4 + 8 * 4))
            .unwrap();
        r.push(&m, 0).unwrap();
        assert!(!r.publish(&m).unwrap());

        assert_eq!(r.pop_used(&m).unwrap(), None);
        m.write_obj(3u32, GuestAddress(l.used.0 + 4)).unwrap();
        m.write_obj(0u32, GuestAddress(l.used.0 + 8)).unwrap();
        m.write_obj(9u32, GuestAddress(l.used.0 + 12)).unwrap(); // bad id
        m.write_obj(2u16, GuestAddress(l.used.0 + 2)).unwrap();
        assert_eq!(r.pop_used(&m).unwrap(), Some((3, 0)));
        assert!(matches!(
            r.pop_used(&m),
            Err(RingError::UsedId { id: 9, .. })
        ));

        r.arm_interrupt(&m, 4).unwrap();
        assert_eq!(m.read_obj::<u16>(l.used_event()).unwrap(), 1 + 3);
    }

    /// A polling driver's `used_event` is never crossed by the entries still to come.
    #[test]
    fn suppressed_interrupts_are_not_due_until_half_a_wrap() {
        let m = mem();
        let (l, _) = RingLayout::new(GuestAddress(0), 4).unwrap();
        let mut r = DriverRing::new(&m, l, true).unwrap();
        r.last_used = 0xfff0;
        r.suppress_interrupts(&m).unwrap();
        let event: u16 = m.read_obj(l.used_event()).unwrap();
        assert_eq!(event, 0x7ff0);
        assert!(!need_event(event, 0xfff0u16.wrapping_add(0x7fff), 0xfff0));
        assert!(need_event(event, 0xfff0u16.wrapping_add(0x8001), 0xfff0));
        assert_eq!(
            m.read_obj::<u16>(l.avail).unwrap(),
            0,
            "flags stay 0 with EVENT_IDX"
        );

        let mut r = DriverRing::new(&m, l, false).unwrap();
        r.suppress_interrupts(&m).unwrap();
        assert_eq!(
            m.read_obj::<u16>(l.avail).unwrap(),
            VRING_AVAIL_F_NO_INTERRUPT as u16
        );
    }
}
