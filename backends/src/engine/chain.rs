//! Validated view of one descriptor chain: the single place where guest-supplied
//! addresses and lengths are turned into host memory.
//!
//! A chain is seen as two byte streams, the device-readable one followed by the
//! device-writable one (virtio 1.2 §2.7.4: the device must not assume any particular
//! framing). Every byte range handed to the kernel or copied goes through
//! [`DescChain::iovecs`], [`DescChain::read_at`] or [`DescChain::write_at`].
//!
//! The walk resolves each descriptor once: it finds the guest memory region holding the
//! whole buffer (vm-memory's `find_region`, a binary search) and records the host address,
//! so that building iovecs for the kernel is pointer arithmetic on already-checked ranges.
//! Buffers that span two regions, and memory behind an IOMMU, take vm-memory's checked
//! `get_slices` / `read_slice` / `write_slice` instead.

use std::ops::Deref;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::bitmap::Bitmap;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryRegion,
    MemoryRegionAddress, Permissions, VolatileSlice,
};

use super::SplitWalk;
use crate::GuestFault;

/// Upper bound on descriptors kept for one chain (a queue has at most 32768 entries, an
/// indirect table at most 65535; anything this long is rejected as [`GuestFault::ChainTooLong`]).
pub const MAX_CHAIN_DESCRIPTORS: usize = 1024;

/// One guest buffer: a descriptor's address and length, as the guest wrote them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seg {
    /// Guest-physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Host address of the whole buffer inside one mapped region (0: not resolved; the
    /// buffer spans regions or the memory has no direct mapping).
    host: usize,
}

/// Which half of a chain a byte range refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Device-readable (driver → device) buffers.
    Readable,
    /// Device-writable (device → driver) buffers.
    Writable,
}

/// A descriptor chain walked once, with its first guest fault (if any) recorded.
///
/// Walking never stops at a bad address so that the status byte at the end of the
/// writable stream can still be located and answered.
///
/// The host addresses recorded by the walk belong to the guest memory object the chain was
/// walked against, recognised by its address: whoever keeps a chain beyond the call that
/// popped it must keep that object alive too (the engine's in-flight slots and the receive
/// path's held chains do), or a successor allocated at the same address would pass for it.
#[derive(Debug, Default)]
pub struct DescChain {
    head: u16,
    readable: Vec<Seg>,
    writable: Vec<Seg>,
    readable_len: u64,
    writable_len: u64,
    fault: Option<GuestFault>,
    /// Identity of the guest memory object the host addresses were resolved in.
    resolved_in: usize,
}

/// Identity of a guest memory object (its address), to match a chain with the memory it
/// was walked against.
fn identity<M: ?Sized>(mem: &M) -> usize {
    (mem as *const M).cast::<()>() as usize
}

/// Host address of `[addr, addr+len)` when it lies inside one directly mapped region;
/// writable buffers are marked dirty in the region's bitmap (for live migration).
fn resolve<M: GuestMemory + ?Sized>(mem: &M, addr: GuestAddress, len: u32, write: bool) -> usize {
    let Some(region) = mem.physical_memory().and_then(|m| m.find_region(addr)) else {
        return 0;
    };
    let Some(offset) = addr.checked_offset_from(region.start_addr()) else {
        return 0;
    };
    if offset
        .checked_add(u64::from(len))
        .is_none_or(|end| end > region.len())
    {
        return 0;
    }
    let Ok(host) = region.get_host_address(MemoryRegionAddress(offset)) else {
        return 0;
    };
    if write {
        region.bitmap().mark_dirty(offset as usize, len as usize);
    }
    host as usize
}

impl DescChain {
    /// Walk `chain`, recording every descriptor and checking each against guest memory.
    pub fn walk<M>(chain: DescriptorChain<M>) -> Self
    where
        M: Deref + Clone,
        M::Target: GuestMemory,
    {
        let mut c = DescChain::default();
        c.reset_from(chain);
        c
    }

    /// Like [`DescChain::walk`], reusing this value's allocations.
    pub fn reset_from<M>(&mut self, chain: DescriptorChain<M>)
    where
        M: Deref + Clone,
        M::Target: GuestMemory,
    {
        let head = chain.head_index();
        let descriptors = chain.clone();
        self.record(head, chain.memory(), descriptors);
    }

    /// Walk the chain whose head is descriptor `head` of the split virtqueue descriptor table
    /// at `table` (`size` entries), with exactly the checks of [`DescChain::reset_from`]: for
    /// a chain that did not come from the avail ring just now (a request resubmitted after a
    /// backend restart). See [`SplitWalk`].
    pub fn reset_from_head<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        table: GuestAddress,
        size: u16,
        head: u16,
    ) {
        self.record(head, mem, SplitWalk::new(mem, table, size, head));
    }

    /// Walk the chain at `head` whose descriptors `walk` yields (our ring reader's
    /// [`SplitWalk`] over a mapped table), with exactly the checks of [`DescChain::reset_from`].
    pub fn reset_from_walk<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &M,
        head: u16,
        walk: SplitWalk<'_, M>,
    ) {
        self.record(head, mem, walk);
    }

    /// The walk itself, over the descriptors `descriptors` yields for the chain at `head`.
    fn record<M: GuestMemory + ?Sized>(
        &mut self,
        head: u16,
        mem: &M,
        descriptors: impl Iterator<Item = Descriptor>,
    ) {
        self.head = head;
        self.readable.clear();
        self.writable.clear();
        self.readable_len = 0;
        self.writable_len = 0;
        self.fault = None;
        self.resolved_in = identity(mem);
        let mut last: Option<Descriptor> = None;
        for (count, desc) in descriptors.enumerate() {
            if count == MAX_CHAIN_DESCRIPTORS {
                self.fault = Some(GuestFault::ChainTooLong);
                return;
            }
            let write = desc.is_write_only();
            let seg = Seg {
                addr: desc.addr(),
                len: desc.len(),
                host: resolve(mem, desc.addr(), desc.len(), write),
            };
            let perm = if write {
                Permissions::Write
            } else {
                Permissions::Read
            };
            if seg.host == 0 && !mem.check_range(seg.addr, seg.len as usize, perm) {
                self.note(GuestFault::OutOfBounds);
            }
            if desc.is_write_only() {
                self.writable.push(seg);
                self.writable_len += u64::from(seg.len);
            } else {
                if !self.writable.is_empty() {
                    self.note(GuestFault::ReadableAfterWritable);
                }
                self.readable.push(seg);
                self.readable_len += u64::from(seg.len);
            }
            last = Some(desc);
        }
        // The walk ends silently on loops (TTL), bad `next` indexes, unreadable descriptors
        // and bad indirect tables: the last descriptor then still has NEXT set.
        match last {
            Some(d) if !d.has_next() => {}
            _ => self.fault = Some(GuestFault::BrokenChain),
        }
    }

    fn note(&mut self, f: GuestFault) {
        self.fault.get_or_insert(f);
    }

    /// Head descriptor index (what goes into the used ring).
    pub fn head(&self) -> u16 {
        self.head
    }

    /// First fault seen while walking, if any.
    pub fn fault(&self) -> Option<GuestFault> {
        self.fault
    }

    /// Whether the chain could be walked to its end (its status byte location is known).
    pub fn is_complete(&self) -> bool {
        !matches!(
            self.fault,
            Some(GuestFault::BrokenChain | GuestFault::ChainTooLong)
        )
    }

    /// Total length of the device-readable stream.
    pub fn readable_len(&self) -> u64 {
        self.readable_len
    }

    /// Total length of the device-writable stream.
    pub fn writable_len(&self) -> u64 {
        self.writable_len
    }

    /// Descriptors of one half.
    pub fn segs(&self, dir: Dir) -> &[Seg] {
        match dir {
            Dir::Readable => &self.readable,
            Dir::Writable => &self.writable,
        }
    }

    /// Calls `f(addr, len, done, host)` for the guest pieces covering `[offset, offset+len)` of
    /// a stream (`done`: bytes handed over before this piece; `host`: the piece's host address,
    /// 0 if its descriptor was not resolved).
    fn for_range(
        &self,
        dir: Dir,
        offset: u64,
        len: u64,
        mut f: impl FnMut(GuestAddress, usize, usize, usize) -> Result<(), GuestFault>,
    ) -> Result<(), GuestFault> {
        let total = match dir {
            Dir::Readable => self.readable_len,
            Dir::Writable => self.writable_len,
        };
        let end = offset.checked_add(len).ok_or(GuestFault::OutOfBounds)?;
        if end > total {
            return Err(GuestFault::OutOfBounds);
        }
        let mut pos = 0u64; // stream position of the current segment
        let mut done = 0usize; // bytes handed to `f` so far
        for seg in self.segs(dir) {
            let seg_end = pos + u64::from(seg.len);
            if seg_end > offset && pos < end {
                let start = offset.max(pos);
                let stop = end.min(seg_end);
                let addr = seg
                    .addr
                    .checked_add(start - pos)
                    .ok_or(GuestFault::OutOfBounds)?;
                let n = (stop - start) as usize;
                let host = if seg.host == 0 {
                    0
                } else {
                    seg.host + (start - pos) as usize
                };
                f(addr, n, done, host)?;
                done += n;
            }
            if seg_end >= end {
                break;
            }
            pos = seg_end;
        }
        Ok(())
    }

    /// Host address of `[offset, offset+len)` of stream `dir` when that range lies inside one
    /// descriptor the walk resolved in `mem` (the common case: a header or a whole frame in one
    /// buffer), so that it can be used without splitting it into pieces.
    fn within_one_descriptor<M: ?Sized>(
        &self,
        mem: &M,
        dir: Dir,
        offset: u64,
        len: u64,
    ) -> Option<usize> {
        if len == 0 || identity(mem) != self.resolved_in {
            return None;
        }
        let end = offset.checked_add(len)?;
        let mut pos = 0u64;
        for seg in self.segs(dir) {
            let seg_end = pos + u64::from(seg.len);
            if offset < seg_end {
                let inside = seg.host != 0 && end <= seg_end;
                return inside.then(|| seg.host + (offset - pos) as usize);
            }
            pos = seg_end;
        }
        None
    }

    /// Copy `buf.len()` bytes from stream `dir` at `offset` into `buf` (through the walk's host
    /// addresses when `mem` is the object the chain was walked against, as for [`Self::iovecs`]).
    pub fn read_at<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        dir: Dir,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), GuestFault> {
        if let Some(host) = self.within_one_descriptor(mem, dir, offset, buf.len() as u64) {
            // SAFETY: as below; the range lies inside one resolved descriptor.
            unsafe { VolatileSlice::new(host as *mut u8, buf.len()) }.copy_to(buf);
            return Ok(());
        }
        let resolved = identity(mem) == self.resolved_in;
        self.for_range(dir, offset, buf.len() as u64, |addr, n, done, host| {
            let dst = &mut buf[done..done + n];
            if resolved && host != 0 {
                // SAFETY: `host..host+n` lies inside a region of `mem` (checked by the walk
                // against this same, immutable, memory object, which the caller keeps alive).
                unsafe { VolatileSlice::new(host as *mut u8, n) }.copy_to(dst);
                return Ok(());
            }
            mem.read_slice(dst, addr)
                .map_err(|_| GuestFault::OutOfBounds)
        })
    }

    /// Copy `buf` into stream `dir` at `offset` (host addresses used as in [`Self::read_at`]).
    pub fn write_at<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        dir: Dir,
        offset: u64,
        buf: &[u8],
    ) -> Result<(), GuestFault> {
        if dir == Dir::Writable {
            if let Some(host) = self.within_one_descriptor(mem, dir, offset, buf.len() as u64) {
                // SAFETY: as in `read_at`; the walk marked the buffer dirty.
                unsafe { VolatileSlice::new(host as *mut u8, buf.len()) }.copy_from(buf);
                return Ok(());
            }
        }
        let resolved = identity(mem) == self.resolved_in;
        self.for_range(dir, offset, buf.len() as u64, |addr, n, done, host| {
            let src = &buf[done..done + n];
            if resolved && host != 0 && dir == Dir::Writable {
                // SAFETY: as in `read_at`; writable buffers were marked dirty by the walk.
                unsafe { VolatileSlice::new(host as *mut u8, n) }.copy_from(src);
                return Ok(());
            }
            mem.write_slice(src, addr)
                .map_err(|_| GuestFault::OutOfBounds)
        })
    }

    /// Append host iovecs for `[offset, offset+len)` of stream `dir` to `out`, failing with
    /// [`GuestFault::TooManySegments`] past `max_iov` entries.
    ///
    /// The pointers stay valid while the guest memory object (`mem`) is alive and not
    /// remapped: callers keep an `Arc` of it for as long as the kernel may use them.
    /// Writable ranges are marked dirty in the memory's bitmap (for live migration).
    /// Host addresses resolved by the walk are used when `mem` is the object the chain was
    /// walked against; anything else goes through vm-memory's `get_slices`.
    pub fn iovecs<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        dir: Dir,
        offset: u64,
        len: u64,
        max_iov: usize,
        out: &mut Vec<libc::iovec>,
    ) -> Result<(), GuestFault> {
        if out.len() < max_iov {
            if let Some(host) = self.within_one_descriptor(mem, dir, offset, len) {
                out.push(libc::iovec {
                    iov_base: host as *mut libc::c_void,
                    iov_len: len as usize,
                });
                return Ok(());
            }
        }
        let perm = match dir {
            Dir::Readable => Permissions::Read,
            Dir::Writable => Permissions::Write,
        };
        let resolved = identity(mem) == self.resolved_in;
        self.for_range(dir, offset, len, |addr, n, _, host| {
            if resolved && host != 0 {
                if out.len() >= max_iov {
                    return Err(GuestFault::TooManySegments);
                }
                out.push(libc::iovec {
                    iov_base: host as *mut libc::c_void,
                    iov_len: n,
                });
                return Ok(());
            }
            let slices = mem
                .get_slices(addr, n, perm)
                .map_err(|_| GuestFault::OutOfBounds)?;
            for slice in slices {
                let slice = slice.map_err(|_| GuestFault::OutOfBounds)?;
                if out.len() >= max_iov {
                    return Err(GuestFault::TooManySegments);
                }
                if dir == Dir::Writable {
                    slice.bitmap().mark_dirty(0, slice.len());
                }
                let guard = slice.ptr_guard_mut();
                out.push(libc::iovec {
                    iov_base: guard.as_ptr().cast(),
                    iov_len: slice.len(),
                });
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{GuestMemoryMmap, GuestRegionCollection};

    use super::*;

    type Mem = GuestMemoryMmap<()>;

    /// Two adjacent 64 KiB regions: a buffer at 0xff00..0x10100 spans both.
    fn two_regions() -> Mem {
        let mem = Mem::from_ranges(&[
            (GuestAddress(0), 0x1_0000),
            (GuestAddress(0x1_0000), 0x1_0000),
        ])
        .unwrap();
        let pattern: Vec<u8> = (0..0x2_0000u32).map(|i| (i % 253) as u8).collect();
        mem.write_slice(&pattern, GuestAddress(0)).unwrap();
        mem
    }

    fn desc(addr: u64, len: u32, write: bool) -> RawDescriptor {
        let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    fn chain_of(mem: &Mem, descs: &[RawDescriptor]) -> DescChain {
        let vq = MockSplitQueue::create(mem, GuestAddress(0x1_8000), 16);
        DescChain::walk(vq.build_desc_chain(descs).unwrap())
    }

    fn expected(addr: u64, len: usize) -> Vec<u8> {
        (addr..addr + len as u64).map(|i| (i % 253) as u8).collect()
    }

    /// What a walk recorded, for comparing two walks of the same chain.
    fn summary(c: &DescChain) -> (u16, Option<GuestFault>, Vec<Seg>, Vec<Seg>, u64, u64) {
        (
            c.head(),
            c.fault(),
            c.segs(Dir::Readable).to_vec(),
            c.segs(Dir::Writable).to_vec(),
            c.readable_len(),
            c.writable_len(),
        )
    }

    /// `(index, addr, len, flags, next)` descriptors written to a queue of `size` at 0x8_0000
    /// in 1 MiB of memory, the chain at `head` popped from the avail ring (virtio-queue's walk)
    /// and walked from its head index ([`SplitWalk`]): both must record the same.
    fn both_walks(size: u16, descs: &[(u16, u64, u32, u16, u16)], head: u16) -> DescChain {
        let mem = Mem::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0x8_0000), size);
        for &(i, addr, len, flags, next) in descs {
            let raw = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
            vq.desc_table().store(i, raw).unwrap();
        }
        vq.avail().ring().ref_at(0).unwrap().store(head);
        vq.avail().idx().store(1);
        let mut q: virtio_queue::Queue = vq.create_queue().unwrap();
        use virtio_queue::QueueT;
        let popped = DescChain::walk(q.pop_descriptor_chain(&mem).unwrap());
        let mut from_head = DescChain::default();
        from_head.reset_from_head(&mem, vq.desc_table_addr(), size, head);
        assert_eq!(summary(&from_head), summary(&popped));
        assert_eq!(summary(&ours(&mem, &vq, size)), summary(&popped));
        popped
    }

    /// The first chain of `vq` taken by our own ring reader ([`super::super::SplitRing`]).
    fn ours(mem: &Mem, vq: &MockSplitQueue<Mem>, size: u16) -> DescChain {
        let addrs = super::super::RingAddrs {
            size,
            desc: vq.desc_table_addr(),
            avail: vq.avail_addr(),
            used: vq.used_addr(),
            event_idx: false,
        };
        let mut ring = super::super::SplitRing::new(mem, addrs, 0, 0).unwrap();
        assert_eq!(ring.pending(), 1);
        let mut c = DescChain::default();
        ring.pop(&mut c);
        c
    }

    /// Write indirect-table descriptors `(addr, len, flags, next)` at `at`.
    fn write_table(mem: &Mem, descs: &[(u64, u32, u16, u16)], at: u64) {
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let raw = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
            // The last entries may lie past guest memory on purpose.
            let _ = mem.write_obj(raw, GuestAddress(at + 16 * i as u64));
        }
    }

    const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const INDIRECT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;

    #[test]
    fn hostile_chains_walk_the_same_from_the_avail_ring_from_a_head_and_through_our_ring() {
        let ok = |c: &DescChain| c.fault();
        // A good chain; the head in the middle of the table.
        let c = both_walks(
            16,
            &[
                (5, 0x1000, 16, NEXT, 9),
                (9, 0x2000, 512, NEXT | WRITE, 2),
                (2, 0x3000, 1, WRITE, 0),
            ],
            5,
        );
        assert_eq!(
            (ok(&c), c.readable_len(), c.writable_len()),
            (None, 16, 513)
        );
        // A loop, a `next` past the table, readable after writable, outside memory.
        let c = both_walks(16, &[(0, 0x1000, 16, NEXT, 1), (1, 0x2000, 8, NEXT, 0)], 0);
        assert_eq!(ok(&c), Some(GuestFault::BrokenChain));
        let c = both_walks(16, &[(0, 0x1000, 16, NEXT, 16)], 0);
        assert_eq!(ok(&c), Some(GuestFault::BrokenChain));
        let c = both_walks(
            16,
            &[(0, 0x1000, 16, NEXT | WRITE, 1), (1, 0x2000, 8, 0, 0)],
            0,
        );
        assert_eq!(ok(&c), Some(GuestFault::ReadableAfterWritable));
        let c = both_walks(16, &[(0, 0xf_ff00, 0x200, WRITE, 0)], 0);
        assert_eq!(ok(&c), Some(GuestFault::OutOfBounds));
        // More than 2^32 bytes in all.
        let c = both_walks(
            16,
            &[(0, 0x1000, u32::MAX, NEXT, 1), (1, 0x2000, 2, 0, 0)],
            0,
        );
        assert_eq!(ok(&c), Some(GuestFault::BrokenChain));
        // Longer than the engine takes (a queue large enough to hold it).
        let long: Vec<_> = (0..1100u16)
            .map(|i| (i, 0x1000, 1, NEXT, i + 1))
            .chain([(1100, 0x1000, 1, 0, 0)])
            .collect();
        let c = both_walks(2048, &long, 0);
        assert_eq!(ok(&c), Some(GuestFault::ChainTooLong));
    }

    #[test]
    fn hostile_indirect_tables_walk_the_same_from_the_avail_ring_from_a_head_and_through_our_ring()
    {
        let run_at = |queue: &[(u16, u64, u32, u16, u16)], tables: &[(u64, u32, u16, u16)], at| {
            let mem = Mem::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
            write_table(&mem, tables, at);
            let vq = MockSplitQueue::create(&mem, GuestAddress(0x8_0000), 16);
            for &(i, addr, len, flags, next) in queue {
                let raw = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
                vq.desc_table().store(i, raw).unwrap();
            }
            vq.avail().ring().ref_at(0).unwrap().store(0);
            vq.avail().idx().store(1);
            let mut q: virtio_queue::Queue = vq.create_queue().unwrap();
            use virtio_queue::QueueT;
            let popped = DescChain::walk(q.pop_descriptor_chain(&mem).unwrap());
            let mut from_head = DescChain::default();
            from_head.reset_from_head(&mem, vq.desc_table_addr(), 16, 0);
            assert_eq!(summary(&from_head), summary(&popped));
            assert_eq!(summary(&ours(&mem, &vq, 16)), summary(&popped));
            popped.fault()
        };
        let run = |queue: &[(u16, u64, u32, u16, u16)], tables: &[(u64, u32, u16, u16)]| {
            run_at(queue, tables, 0x4_0000)
        };
        let three = [
            (0x1000, 16, NEXT, 1),
            (0x2000, 4096, NEXT | WRITE, 2),
            (0x3000, 1, WRITE, 0),
        ];
        // A good indirect table, at the head and after a direct descriptor.
        assert_eq!(run(&[(0, 0x4_0000, 48, INDIRECT, 0)], &three), None);
        assert_eq!(
            run(
                &[(0, 0x5000, 8, NEXT, 1), (1, 0x4_0000, 48, INDIRECT, 0)],
                &three
            ),
            None
        );
        // Length not a multiple of 16, empty, nested, looping, `next` past the table.
        assert_eq!(
            run(&[(0, 0x4_0000, 40, INDIRECT, 0)], &three),
            Some(GuestFault::BrokenChain)
        );
        assert_eq!(
            run(&[(0, 0x4_0000, 0, INDIRECT, 0)], &three),
            Some(GuestFault::BrokenChain)
        );
        let nested = [(0x1000, 16, NEXT, 1), (0x4_0000, 48, INDIRECT, 0)];
        assert_eq!(
            run(&[(0, 0x4_0000, 32, INDIRECT, 0)], &nested),
            Some(GuestFault::BrokenChain)
        );
        let looping = [(0x1000, 16, NEXT, 1), (0x2000, 16, NEXT, 0)];
        assert_eq!(
            run(&[(0, 0x4_0000, 32, INDIRECT, 0)], &looping),
            Some(GuestFault::BrokenChain)
        );
        let past = [(0x1000, 16, NEXT, 2), (0x2000, 16, 0, 0)];
        assert_eq!(
            run(&[(0, 0x4_0000, 32, INDIRECT, 0)], &past),
            Some(GuestFault::BrokenChain)
        );
        // A table partly outside guest memory: the entry past the end cannot be read.
        let at_end = [(0, 0xf_fff0, 48, INDIRECT, 0)];
        assert_eq!(
            run_at(&at_end, &three, 0xf_fff0),
            Some(GuestFault::BrokenChain)
        );
        // A head index past the table (only reachable from a head): no descriptor at all.
        let mem = Mem::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let mut c = DescChain::default();
        c.reset_from_head(&mem, GuestAddress(0x8_0000), 16, 16);
        assert_eq!(c.fault(), Some(GuestFault::BrokenChain));
    }

    #[test]
    fn buffer_inside_one_region_becomes_its_host_address() {
        let mem = two_regions();
        let c = chain_of(
            &mem,
            &[desc(0x1000, 0x200, false), desc(0x1_2000, 0x100, true)],
        );
        assert_eq!(c.fault(), None);
        let mut iov = Vec::new();
        c.iovecs(&mem, Dir::Readable, 0x10, 0x100, 8, &mut iov)
            .unwrap();
        assert_eq!(iov.len(), 1);
        let host = mem.get_host_address(GuestAddress(0x1010)).unwrap();
        assert_eq!(iov[0].iov_base, host.cast());
        assert_eq!(iov[0].iov_len, 0x100);

        c.write_at(&mem, Dir::Writable, 4, b"abcd").unwrap();
        let mut back = [0u8; 4];
        mem.read_slice(&mut back, GuestAddress(0x1_2004)).unwrap();
        assert_eq!(&back, b"abcd");
    }

    #[test]
    fn buffer_spanning_two_regions_is_split_at_the_boundary() {
        let mem = two_regions();
        let c = chain_of(&mem, &[desc(0xff00, 0x200, false)]);
        assert_eq!(c.fault(), None);
        let mut iov = Vec::new();
        c.iovecs(&mem, Dir::Readable, 0, 0x200, 8, &mut iov)
            .unwrap();
        assert_eq!(
            iov.iter().map(|v| v.iov_len).collect::<Vec<_>>(),
            [0x100, 0x100]
        );
        let mut buf = vec![0u8; 0x200];
        c.read_at(&mem, Dir::Readable, 0, &mut buf).unwrap();
        assert_eq!(buf, expected(0xff00, 0x200));
    }

    #[test]
    fn another_memory_object_is_read_through_its_own_mapping() {
        let mem = two_regions();
        let c = chain_of(&mem, &[desc(0x3000, 0x40, false)]);
        // Same layout, different mappings: the chain's cached host addresses must not be used.
        let other: Mem =
            GuestRegionCollection::from_ranges(&[(GuestAddress(0), 0x2_0000)]).unwrap();
        other
            .write_slice(&[0x5a; 0x40], GuestAddress(0x3000))
            .unwrap();
        let mut buf = [0u8; 0x40];
        c.read_at(&other, Dir::Readable, 0, &mut buf).unwrap();
        assert_eq!(buf, [0x5a; 0x40]);
        let mut iov = Vec::new();
        c.iovecs(&other, Dir::Readable, 0, 0x40, 8, &mut iov)
            .unwrap();
        assert_eq!(
            iov[0].iov_base,
            other.get_host_address(GuestAddress(0x3000)).unwrap().cast()
        );
    }

    #[test]
    fn buffer_past_the_end_of_memory_is_a_fault() {
        let mem = two_regions();
        let c = chain_of(&mem, &[desc(0x1_ff00, 0x200, false)]);
        assert_eq!(c.fault(), Some(GuestFault::OutOfBounds));
        let mut iov = Vec::new();
        assert!(c
            .iovecs(&mem, Dir::Readable, 0, 0x200, 8, &mut iov)
            .is_err());
    }

    #[test]
    fn ranges_inside_one_descriptor_and_across_descriptors_read_and_write_the_same_bytes() {
        let mem = two_regions();
        let c = chain_of(
            &mem,
            &[
                desc(0x1000, 0x10, false),
                desc(0x3000, 0x20, false),
                desc(0x5000, 0x10, true),
                desc(0x6000, 0x10, true),
            ],
        );
        assert_eq!(c.fault(), None);
        // Inside the second readable descriptor, across the first two, up to the very end.
        for (offset, len, pieces) in [(0x12u64, 8usize, 1usize), (0xc, 8, 2), (0x28, 8, 1)] {
            let mut got = vec![0u8; len];
            c.read_at(&mem, Dir::Readable, offset, &mut got).unwrap();
            let mut want = Vec::new();
            let mut iov = Vec::new();
            c.iovecs(&mem, Dir::Readable, offset, len as u64, 8, &mut iov)
                .unwrap();
            assert_eq!(iov.len(), pieces, "offset {offset:#x}");
            for v in &iov {
                // SAFETY: the iovec points into `mem`, alive for the whole test.
                want.extend_from_slice(unsafe {
                    std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
                });
            }
            assert_eq!(got, want, "offset {offset:#x}");
        }
        let mut four = [0u8; 4];
        c.read_at(&mem, Dir::Readable, 0x12, &mut four).unwrap();
        assert_eq!(four.to_vec(), expected(0x3002, 4));
        // One past the end, and no room for even one iovec, are refused.
        assert_eq!(
            c.read_at(&mem, Dir::Readable, 0x29, &mut [0u8; 8]),
            Err(GuestFault::OutOfBounds)
        );
        assert_eq!(
            c.iovecs(&mem, Dir::Readable, 0, 4, 0, &mut Vec::new()),
            Err(GuestFault::TooManySegments)
        );
        // Writes inside the second writable descriptor and across both land where they should.
        c.write_at(&mem, Dir::Writable, 0x12, b"in").unwrap();
        c.write_at(&mem, Dir::Writable, 0xe, b"span").unwrap();
        let mut back = [0u8; 2];
        mem.read_slice(&mut back, GuestAddress(0x6002)).unwrap();
        assert_eq!(&back, b"in");
        mem.read_slice(&mut back, GuestAddress(0x500e)).unwrap();
        assert_eq!(&back, b"sp");
        mem.read_slice(&mut back, GuestAddress(0x6000)).unwrap();
        assert_eq!(&back, b"an");
    }
}
