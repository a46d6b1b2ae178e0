// SPDX-License-Identifier: Apache-2.0
//! The two ways the switch reads and writes a virtqueue, behind one small trait ([`Ring`]):
//! our own batched reader over the mapped rings ([`SplitRing`], the default) and
//! virtio-queue's `Queue` ([`RingReader::VirtioQueue`], kept to measure one against the other).
//! Both hand out chains walked and validated by [`DescChain`].

use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use crate::engine::{DescChain, RingAddrs, SplitRing, VhostMem};

/// Which ring reader the switch uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum RingReader {
    /// Our own batched reader over the mapped rings ([`SplitRing`]).
    #[default]
    Own,
    /// virtio-queue's `Queue` through vm-memory's checked accessors (for A/B measurements).
    VirtioQueue,
}

/// One pass's access to a virtqueue.
pub(super) trait Ring {
    /// Chains available and not yet taken (0 when the avail index is out of range).
    fn pending(&mut self) -> u16;
    /// Take the next chain (the caller checked [`Ring::pending`]).
    fn pop(&mut self, chain: &mut DescChain);
    /// Give the last `n` taken chains back.
    fn unpop(&mut self, n: u16);
    /// Add a used element; `false` if the head was refused.
    fn push_used(&mut self, head: u16, len: u32) -> bool;
    /// Make the used elements visible; `true` if the driver wants a notification.
    fn publish(&mut self) -> bool;
    /// No kicks wanted for now.
    fn disable_notification(&mut self);
    /// Kicks wanted again; `true` if chains arrived meanwhile.
    fn enable_notification(&mut self) -> bool;
    /// `(next_avail, next_used)` to store back into the queue.
    fn indexes(&self) -> (u16, u16);
}

impl<M: vm_memory::GuestMemory + ?Sized> Ring for SplitRing<'_, M> {
    fn pending(&mut self) -> u16 {
        SplitRing::pending(self)
    }
    fn pop(&mut self, chain: &mut DescChain) {
        SplitRing::pop(self, chain)
    }
    fn unpop(&mut self, n: u16) {
        SplitRing::unpop(self, n)
    }
    fn push_used(&mut self, head: u16, len: u32) -> bool {
        SplitRing::push_used(self, head, len)
    }
    fn publish(&mut self) -> bool {
        SplitRing::publish(self)
    }
    fn disable_notification(&mut self) {
        SplitRing::disable_notification(self)
    }
    fn enable_notification(&mut self) -> bool {
        SplitRing::enable_notification(self)
    }
    fn indexes(&self) -> (u16, u16) {
        (self.next_avail(), self.next_used())
    }
}

/// virtio-queue's `Queue` as a [`Ring`].
pub(super) struct QueueRing<'a> {
    q: &'a mut Queue,
    mem: &'a VhostMem,
}

impl Ring for QueueRing<'_> {
    fn pending(&mut self) -> u16 {
        let Ok(idx) = self.q.avail_idx(self.mem, Ordering::Acquire) else {
            return 0;
        };
        let n = idx.0.wrapping_sub(self.q.next_avail());
        if n > self.q.size() {
            0
        } else {
            n
        }
    }
    fn pop(&mut self, chain: &mut DescChain) {
        match self.q.pop_descriptor_chain(self.mem) {
            Some(c) => chain.reset_from(c),
            // Unreadable avail ring: a chain with no descriptor (a broken one).
            None => {
                let size = self.q.size();
                chain.reset_from_head(self.mem, GuestAddress(self.q.desc_table()), size, size)
            }
        }
    }
    fn unpop(&mut self, n: u16) {
        let next = self.q.next_avail().wrapping_sub(n);
        self.q.set_next_avail(next);
    }
    fn push_used(&mut self, head: u16, len: u32) -> bool {
        self.q.add_used(self.mem, head, len).is_ok()
    }
    fn publish(&mut self) -> bool {
        self.q.needs_notification(self.mem).unwrap_or(true)
    }
    fn disable_notification(&mut self) {
        let _ = self.q.disable_notification(self.mem);
    }
    fn enable_notification(&mut self) -> bool {
        self.q.enable_notification(self.mem).unwrap_or(false)
    }
    fn indexes(&self) -> (u16, u16) {
        (self.q.next_avail(), self.q.next_used())
    }
}

/// Run `f` over `q` through the reader `reader`; the queue's indexes follow what `f` did.
/// `None` (and `f` not run): the rings are not inside guest memory.
pub(super) fn with_ring<T>(
    reader: RingReader,
    q: &mut Queue,
    mem: &VhostMem,
    f: impl FnOnce(&mut dyn Ring) -> T,
) -> Option<T> {
    let (result, (next_avail, next_used)) = match reader {
        RingReader::Own => {
            let addrs = RingAddrs {
                size: q.size(),
                desc: GuestAddress(q.desc_table()),
                avail: GuestAddress(q.avail_ring()),
                used: GuestAddress(q.used_ring()),
                event_idx: q.event_idx_enabled(),
            };
            let mut ring = SplitRing::new(mem, addrs, q.next_avail(), q.next_used())?;
            let result = f(&mut ring);
            (result, Ring::indexes(&ring))
        }
        RingReader::VirtioQueue => {
            let mut ring = QueueRing { q, mem };
            let result = f(&mut ring);
            (result, ring.indexes())
        }
    };
    q.set_next_avail(next_avail);
    q.set_next_used(next_used);
    Some(result)
}
