// SPDX-License-Identifier: Apache-2.0
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
mod tests;
