//! Validated view of one descriptor chain: the single place where guest-supplied
//! addresses and lengths are turned into host memory.
//!
//! A chain is seen as two byte streams, the device-readable one followed by the
//! device-writable one (virtio 1.2 §2.7.4: the device must not assume any particular
//! framing). Every byte range handed to the kernel or copied goes through
//! [`DescChain::iovecs`], [`DescChain::read_at`] or [`DescChain::write_at`], which resolve
//! guest addresses with vm-memory's checked `get_slices` / `read_slice` / `write_slice`.

use std::ops::Deref;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::bitmap::Bitmap;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

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
#[derive(Debug, Default)]
pub struct DescChain {
    head: u16,
    readable: Vec<Seg>,
    writable: Vec<Seg>,
    readable_len: u64,
    writable_len: u64,
    fault: Option<GuestFault>,
}

impl DescChain {
    /// Walk `chain`, recording every descriptor and checking each against guest memory.
    pub fn walk<M>(chain: DescriptorChain<M>) -> Self
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        let mut c = DescChain::default();
        c.reset_from(chain);
        c
    }

    /// Like [`DescChain::walk`], reusing this value's allocations.
    pub fn reset_from<M>(&mut self, mut chain: DescriptorChain<M>)
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        self.head = chain.head_index();
        self.readable.clear();
        self.writable.clear();
        self.readable_len = 0;
        self.writable_len = 0;
        self.fault = None;
        let mut last: Option<Descriptor> = None;
        let mut count = 0usize;
        while let Some(desc) = chain.next() {
            count += 1;
            if count > MAX_CHAIN_DESCRIPTORS {
                self.fault = Some(GuestFault::ChainTooLong);
                return;
            }
            let seg = Seg {
                addr: desc.addr(),
                len: desc.len(),
            };
            let perm = if desc.is_write_only() {
                Permissions::Write
            } else {
                Permissions::Read
            };
            if !chain.memory().check_range(seg.addr, seg.len as usize, perm) {
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
        // virtio-queue's iterator ends silently on loops (TTL), bad `next` indexes, unreadable
        // descriptors and bad indirect tables: the last descriptor then still has NEXT set.
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

    /// Calls `f(addr, len)` for the guest pieces covering `[offset, offset+len)` of a stream.
    fn for_range(
        &self,
        dir: Dir,
        offset: u64,
        len: u64,
        mut f: impl FnMut(GuestAddress, usize, usize) -> Result<(), GuestFault>,
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
                f(addr, n, done)?;
                done += n;
            }
            if seg_end >= end {
                break;
            }
            pos = seg_end;
        }
        Ok(())
    }

    /// Copy `buf.len()` bytes from stream `dir` at `offset` into `buf`.
    pub fn read_at<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        dir: Dir,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), GuestFault> {
        self.for_range(dir, offset, buf.len() as u64, |addr, n, done| {
            mem.read_slice(&mut buf[done..done + n], addr)
                .map_err(|_| GuestFault::OutOfBounds)
        })
    }

    /// Copy `buf` into stream `dir` at `offset`.
    pub fn write_at<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        dir: Dir,
        offset: u64,
        buf: &[u8],
    ) -> Result<(), GuestFault> {
        self.for_range(dir, offset, buf.len() as u64, |addr, n, done| {
            mem.write_slice(&buf[done..done + n], addr)
                .map_err(|_| GuestFault::OutOfBounds)
        })
    }

    /// Append host iovecs for `[offset, offset+len)` of stream `dir` to `out`, failing with
    /// [`GuestFault::TooManySegments`] past `max_iov` entries.
    ///
    /// The pointers stay valid while the guest memory object (`mem`) is alive and not
    /// remapped: callers keep an `Arc` of it for as long as the kernel may use them.
    /// Writable ranges are marked dirty in the memory's bitmap (for live migration).
    pub fn iovecs<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        dir: Dir,
        offset: u64,
        len: u64,
        max_iov: usize,
        out: &mut Vec<libc::iovec>,
    ) -> Result<(), GuestFault> {
        let perm = match dir {
            Dir::Readable => Permissions::Read,
            Dir::Writable => Permissions::Write,
        };
        self.for_range(dir, offset, len, |addr, n, _| {
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
