// SPDX-License-Identifier: Apache-2.0
//! Shared pieces of the fuzz targets in `fuzz_targets/`: a reader that turns the fuzzer's
//! bytes into numbers, a small guest memory, a split virtqueue laid out in it from fuzzer
//! bytes, and memfd-backed files. Every target drives the project's real code through its
//! public API; nothing here re-implements a parser.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::engine::LocalQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory of the virtqueue targets.
pub type Mem = GuestMemoryMmap<()>;

/// Size of the guest memory the targets use (one region at guest address 0).
pub const MEM_SIZE: u64 = 1 << 20;
/// Descriptor table, avail ring and used ring of the fuzzed queue.
pub const DESC_TABLE: u64 = 0x0;
/// Avail ring address.
pub const AVAIL_RING: u64 = 0x1000;
/// Used ring address.
pub const USED_RING: u64 = 0x2000;
/// Start of the area the fuzzer fills with data (request headers, frames, ...).
pub const DATA: u64 = 0x4000;

/// The fuzzer's bytes, read front to back; reads past the end give zeros.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Read `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Bytes left.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let b = self.bytes(N);
        out[..b.len()].copy_from_slice(b);
        out
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// A guest address: mostly inside [`MEM_SIZE`], sometimes just past it, rarely anywhere.
    pub fn addr(&mut self) -> u64 {
        let raw = self.u32();
        match raw >> 30 {
            0..=2 => u64::from(raw) % MEM_SIZE,
            _ => u64::from(raw & 0x3fff_ffff) + MEM_SIZE - 0x1000,
        }
    }
}

/// A zeroed guest memory of [`MEM_SIZE`] bytes at guest address 0.
pub fn guest_memory() -> Mem {
    // A failure here is the harness's, not a finding.
    Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap_or_else(|e| panic!("{e}"))
}

/// Lay out a split virtqueue of `size` entries from the fuzzer's bytes: `size` descriptors
/// (address, length, flags, next), then the avail ring (flags, index, `size` heads, used
/// event), then as many data bytes as are left (at [`DATA`]). Returns the queue, ready, with
/// EVENT_IDX on when `event_idx`.
pub fn split_queue(mem: &Mem, input: &mut Input<'_>, size: u16, event_idx: bool) -> Queue {
    for i in 0..u64::from(size) {
        let addr = input.addr();
        let len = input.u32() % 0x2_0000;
        let flags = input.u16() & 0x7; // NEXT, WRITE, INDIRECT
        let next = input.u16() % (size + 2);
        let base = GuestAddress(DESC_TABLE + 16 * i);
        let _ = mem.write_obj(addr, base);
        let _ = mem.write_obj(len, GuestAddress(base.0 + 8));
        let _ = mem.write_obj(flags, GuestAddress(base.0 + 12));
        let _ = mem.write_obj(next, GuestAddress(base.0 + 14));
    }
    let avail_flags = input.u16() & 1;
    let avail_idx = input.u16() % (2 * size + 1);
    let _ = mem.write_obj(avail_flags, GuestAddress(AVAIL_RING));
    let _ = mem.write_obj(avail_idx, GuestAddress(AVAIL_RING + 2));
    for i in 0..u64::from(size) {
        let head = input.u16() % (size + 1);
        let _ = mem.write_obj(head, GuestAddress(AVAIL_RING + 4 + 2 * i));
    }
    let data = input.bytes((MEM_SIZE - DATA) as usize);
    let _ = mem.write_slice(data, GuestAddress(DATA));
    let mut q = Queue::new(size).unwrap_or_else(|e| panic!("{e}"));
    q.set_size(size);
    q.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    q.set_used_ring_address(Some(USED_RING as u32), Some(0));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    q
}

/// A queue size the fuzzer picks: a power of two from 1 to 256.
pub fn queue_size(input: &mut Input<'_>) -> u16 {
    1 << (input.u8() % 9)
}

/// The [`LocalQueue`] over `queue` in `mem` (no interrupt eventfd).
pub fn local_queue(mem: &Mem, queue: Queue) -> LocalQueue<Mem> {
    LocalQueue::new(queue, Arc::new(mem.clone()), None)
}

/// An anonymous in-memory file of `len` bytes (page cache only: fast, nothing on disk).
pub fn memfd(len: u64) -> File {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; the fd is wrapped at once.
    let fd = unsafe { libc::memfd_create(c"fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        panic!("memfd_create: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len)
        .unwrap_or_else(|e| panic!("memfd set_len: {e}"));
    file
}

/// Call `step` until it reports nothing left in flight, for at most `limit` (I/O on memfds
/// and socket pairs completes in microseconds; the limit only keeps a stuck run finite).
pub fn run_until_idle(limit: Duration, mut step: impl FnMut() -> usize) {
    let deadline = Instant::now() + limit;
    while step() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(50));
    }
}
