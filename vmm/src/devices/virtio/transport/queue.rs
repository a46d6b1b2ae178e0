// SPDX-License-Identifier: Apache-2.0
//! Per-queue state the driver programs through the common configuration,
//! with every guest-supplied value validated on the way in.

use std::fmt;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::virtio::NO_VECTOR;

/// One virtqueue as the driver configured it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueState {
    /// Largest size the device accepts (a power of two).
    pub max_size: u16,
    /// Size chosen by the driver (a power of two, at most `max_size`).
    pub size: u16,
    /// The driver enabled the queue.
    pub ready: bool,
    /// MSI-X vector for used-buffer notifications, or [`NO_VECTOR`].
    pub msix_vector: u16,
    /// Guest-physical address of the descriptor table.
    pub desc: u64,
    /// Guest-physical address of the driver (available) ring.
    pub avail: u64,
    /// Guest-physical address of the device (used) ring.
    pub used: u64,
}

impl QueueState {
    /// A queue in its reset state.
    pub fn new(max_size: u16) -> Self {
        Self {
            max_size,
            size: max_size,
            ready: false,
            msix_vector: NO_VECTOR,
            desc: 0,
            avail: 0,
            used: 0,
        }
    }

    /// Back to the reset state.
    pub fn reset(&mut self) {
        *self = Self::new(self.max_size);
    }

    /// Accepts `size` only if it is a non-zero power of two no larger than
    /// the maximum; returns whether it was accepted.
    pub fn set_size(&mut self, size: u16) -> bool {
        let ok = size != 0 && size.is_power_of_two() && size <= self.max_size;
        if ok {
            self.size = size;
        }
        ok
    }

    /// Byte lengths of the descriptor table, driver ring and device ring
    /// (split virtqueue layout, with the event-index fields).
    pub fn ring_lengths(&self) -> (u64, u64, u64) {
        let n = u64::from(self.size);
        (16 * n, 6 + 2 * n, 6 + 8 * n)
    }

    /// The split rings' indices and suppression fields as they are in guest memory now;
    /// `None` if a field lies outside it.
    pub fn ring_snapshot(&self, mem: &GuestMemoryMmap) -> Option<RingSnapshot> {
        // Each ring ends with its event field (`used_event`, `avail_event`).
        let (_, avail_len, used_len) = self.ring_lengths();
        let read = |base: u64, off: u64| -> Option<u16> {
            let addr = GuestAddress(base.checked_add(off)?);
            mem.read_obj::<u16>(addr).ok().map(u16::from_le)
        };
        Some(RingSnapshot {
            avail_flags: read(self.avail, 0)?,
            avail_idx: read(self.avail, 2)?,
            used_event: read(self.avail, avail_len - 2)?,
            used_flags: read(self.used, 0)?,
            used_idx: read(self.used, 2)?,
            avail_event: read(self.used, used_len - 2)?,
        })
    }
}

/// What driver and device last wrote to a split virtqueue's rings (virtio 1.2 §2.7):
/// enough to tell a missed kick from a missed interrupt when a queue stalls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingSnapshot {
    /// Driver ring `flags` (bit 0: no interrupts, without EVENT_IDX).
    pub avail_flags: u16,
    /// Driver ring `idx`: buffers made available.
    pub avail_idx: u16,
    /// Driver's `used_event`: notify once the used index passes it (EVENT_IDX).
    pub used_event: u16,
    /// Device ring `flags` (bit 0: no kicks, without EVENT_IDX).
    pub used_flags: u16,
    /// Device ring `idx`: buffers used.
    pub used_idx: u16,
    /// Device's `avail_event`: kick once the available index passes it (EVENT_IDX).
    pub avail_event: u16,
}

impl fmt::Display for RingSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "avail idx {} flags {:#x} used_event {}; used idx {} flags {:#x} avail_event {}",
            self.avail_idx,
            self.avail_flags,
            self.used_event,
            self.used_idx,
            self.used_flags,
            self.avail_event
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_validated() {
        let mut q = QueueState::new(256);
        assert!(!q.set_size(0));
        assert!(!q.set_size(100));
        assert!(!q.set_size(512));
        assert!(!q.set_size(u16::MAX));
        assert_eq!(q.size, 256);
        assert!(q.set_size(64));
        assert_eq!(q.size, 64);
        assert_eq!(q.ring_lengths(), (1024, 134, 518));
        q.ready = true;
        q.reset();
        assert_eq!(q, QueueState::new(256));
    }

    #[test]
    fn ring_snapshot_reads_both_rings_and_refuses_rings_outside_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap();
        let mut q = QueueState::new(8);
        q.avail = 0x1000;
        q.used = 0x2000;
        for (addr, v) in [
            (0x1000, 1u16),
            (0x1002, 7),
            (0x1000 + 4 + 16, 5),
            (0x2002, 6),
            (0x2000 + 4 + 64, 7),
        ] {
            mem.write_obj(v.to_le(), GuestAddress(addr)).unwrap();
        }
        let s = q.ring_snapshot(&mem).unwrap();
        assert_eq!(
            s,
            RingSnapshot {
                avail_flags: 1,
                avail_idx: 7,
                used_event: 5,
                used_flags: 0,
                used_idx: 6,
                avail_event: 7,
            }
        );
        q.used = 0x4000 - 8;
        assert_eq!(q.ring_snapshot(&mem), None);
        q.avail = u64::MAX - 1;
        assert_eq!(q.ring_snapshot(&mem), None);
    }
}
