// SPDX-License-Identifier: Apache-2.0
//! [`SplitWalk`]: the descriptors of one split-virtqueue chain, found from its head index.
//!
//! virtio-queue only builds a `DescriptorChain` while popping the avail ring (its constructor
//! is crate-private); a backend that resubmits requests after a restart knows just their head
//! indexes. This walk yields the same descriptors, and stops at the same points, as
//! virtio-queue 0.18's `DescriptorChain` iterator, so that [`DescChain`](super::DescChain)
//! applies identical checks to both (the engine's chain tests run every hostile chain through
//! both and compare the results):
//!
//! * at most as many descriptors as the table has entries (a loop ends the walk);
//! * a `next` index past the table, or a descriptor that cannot be read, ends it;
//! * an `INDIRECT` descriptor switches to its table (entries of 16 bytes, at most 65535) and
//!   ends the chain there; an indirect table may not name another one;
//! * the walk ends before a descriptor that would take the chain past 2^32 bytes.
//!
//! The walk ending on a descriptor that still has `NEXT` set is how the caller tells a broken
//! chain from a complete one.
//!
//! The queue's own table can be given already mapped ([`SplitWalk::in_mapped_table`]: our ring
//! reader, [`SplitRing`](super::SplitRing), maps it once per pass); its descriptors are then read
//! from that slice instead of through a guest memory lookup each. Indirect tables are always
//! read through `mem`.

use virtio_bindings::virtio_ring::VRING_DESC_ALIGN_SIZE;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, VolatileSlice};

/// Bytes of one split descriptor.
const DESC_SIZE: u64 = 16;

/// Iterator over the descriptors of the chain starting at a head index.
pub struct SplitWalk<'m, M: ?Sized> {
    mem: &'m M,
    /// Table being walked (the queue's, then an indirect one).
    table: GuestAddress,
    /// The queue's table, mapped (read from here until an indirect table is entered).
    mapped: Option<VolatileSlice<'m>>,
    /// Entries in that table.
    entries: u16,
    next: u16,
    /// Descriptors that may still follow.
    ttl: u16,
    /// Bytes of the descriptors yielded so far.
    bytes: u32,
    indirect: bool,
}

impl<'m, M: GuestMemory + ?Sized> SplitWalk<'m, M> {
    /// The chain at `head` of the descriptor table at `table` with `size` entries.
    pub fn new(mem: &'m M, table: GuestAddress, size: u16, head: u16) -> Self {
        Self {
            mem,
            table,
            mapped: None,
            entries: size,
            next: head,
            ttl: size,
            bytes: 0,
            indirect: false,
        }
    }

    /// Like [`SplitWalk::new`], reading the queue's table from `mapped`, the table's `size`
    /// entries as mapped from guest memory (shorter: the entries past it cannot be read).
    pub fn in_mapped_table(
        mem: &'m M,
        table: GuestAddress,
        mapped: VolatileSlice<'m>,
        size: u16,
        head: u16,
    ) -> Self {
        Self {
            mapped: Some(mapped),
            ..Self::new(mem, table, size, head)
        }
    }

    /// Continue in the indirect table `desc` names; `None` if it cannot be one.
    fn enter_indirect(&mut self, desc: &Descriptor) -> Option<()> {
        if self.indirect || !desc.len().is_multiple_of(VRING_DESC_ALIGN_SIZE) {
            return None;
        }
        let entries = u16::try_from(desc.len() / VRING_DESC_ALIGN_SIZE).ok()?;
        self.table = desc.addr();
        self.entries = entries;
        self.next = 0;
        self.ttl = entries;
        self.indirect = true;
        Some(())
    }
}

impl<M: GuestMemory + ?Sized> Iterator for SplitWalk<'_, M> {
    type Item = Descriptor;

    fn next(&mut self) -> Option<Descriptor> {
        loop {
            if self.ttl == 0 || self.next >= self.entries {
                return None;
            }
            let offset = u64::from(self.next) * DESC_SIZE;
            let desc: Descriptor = match &self.mapped {
                Some(table) if !self.indirect => table.read_obj(offset as usize).ok()?,
                _ => self.mem.read_obj(self.table.checked_add(offset)?).ok()?,
            };
            if desc.refers_to_indirect_table() {
                self.enter_indirect(&desc)?;
                continue;
            }
            self.bytes = self.bytes.checked_add(desc.len())?;
            if desc.has_next() {
                self.next = desc.next();
                self.ttl -= 1;
            } else {
                self.ttl = 0;
            }
            return Some(desc);
        }
    }
}
