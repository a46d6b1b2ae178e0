// SPDX-License-Identifier: Apache-2.0
//! vhost-user inflight I/O tracking for split virtqueues (`VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`):
//! a shared-memory record of the requests a backend took from the avail ring and has not yet
//! answered, which survives the backend process. The frontend keeps the region's file from
//! `VHOST_USER_GET_INFLIGHT_FD` and hands it back with `VHOST_USER_SET_INFLIGHT_FD` to every
//! backend it starts, so a restarted backend resubmits what its predecessor had in flight.
//!
//! Layout (vhost-user specification, "Inflight I/O tracking"; queue regions are placed as
//! libvhost-user places them, `16 * queue_size + 2` bytes rounded up to 64, so regions made by
//! other backends map the same way). Native endianness, one region per queue:
//!
//! ```text
//! u64 features | u16 version | u16 desc_num | u16 last_batch_head | u16 used_idx
//! desc_num x { u8 inflight | u8 padding[5] | u16 next | u64 counter }
//! ```
//!
//! * Taking a request: `desc[head].counter = counter++`, then `desc[head].inflight = 1`.
//! * Answering a batch ([`InflightQueue::publish`]): link the batch's heads through `next` and
//!   point `last_batch_head` at the last one; publish the used entries and the used index;
//!   clear the batch's `inflight` flags; store the new used index in `used_idx`.
//! * Starting a ring ([`InflightQueue::start`]): if `used_idx` differs from the guest's used
//!   index, the last batch was published but not cleared: clear the `used - used_idx` entries
//!   listed from `last_batch_head`. Every head still marked is then resubmitted, in counter
//!   (= submission) order, before new requests; the ring's next avail index is the used index
//!   plus their number (what libvhost-user does; after a crash the frontend's
//!   `SET_VRING_BASE` carries the used index).
//!
//! The region comes from another process and is hostile like any frontend input: a queue
//! region that does not hold up ([`InflightFault`]) is logged, reinitialised and started empty,
//! never trusted and never a reason to panic.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{compiler_fence, Ordering};
use std::sync::Arc;

use vhost::vhost_user::message::VhostUserInflight;

/// Version of the queue region format this module writes and reads.
pub const INFLIGHT_VERSION: u16 = 1;
/// Alignment of each queue's region (a cache line, as libvhost-user).
const QUEUE_ALIGN: u64 = 64;
const HEADER_LEN: usize = 16;
const DESC_LEN: usize = 16;
const H_VERSION: usize = 8;
const H_DESC_NUM: usize = 10;
const H_LAST_BATCH_HEAD: usize = 12;
const H_USED_IDX: usize = 14;
const D_INFLIGHT: usize = 0;
const D_NEXT: usize = 6;
const D_COUNTER: usize = 8;
/// Largest split virtqueue (virtio 1.2 §2.7).
const MAX_QUEUE_SIZE: u16 = 32768;
/// Counters at or past this are not believed (at a billion requests per second a queue takes
/// 146 years to get there).
const COUNTER_LIMIT: u64 = 1 << 62;

/// Why a region, or one queue's part of it, is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InflightFault {
    /// The message's queue count or size cannot be a split virtqueue of this device.
    #[error("{num_queues} queue(s) of {queue_size} entries (this device: up to {max_queues} of {max_size})")]
    Geometry {
        /// Queues in the message.
        num_queues: u16,
        /// Queue size in the message.
        queue_size: u16,
        /// Queues the device has.
        max_queues: u16,
        /// Largest queue the device serves.
        max_size: u16,
    },
    /// The region is smaller than the layout needs, or the file smaller than the region.
    #[error("region of {have} bytes where {need} are needed")]
    TooSmall {
        /// Bytes available.
        have: u64,
        /// Bytes the layout needs.
        need: u64,
    },
    /// The region's offset in its file is not aligned to a queue region.
    #[error("offset {0:#x} is not 64-byte aligned")]
    Misaligned(u64),
    /// Creating, sizing or mapping the region failed.
    #[error("{op}: {errno}")]
    Os {
        /// What was attempted.
        op: &'static str,
        /// The OS error.
        errno: std::io::ErrorKind,
    },
    /// A queue region of another format version.
    #[error("queue region version {0} (expected {INFLIGHT_VERSION})")]
    Version(u16),
    /// A queue region sized for another queue size.
    #[error("queue region of {found} entries, the region was set up for {expected}")]
    DescNum {
        /// Entries the queue region says it has.
        found: u16,
        /// The message's queue size.
        expected: u16,
    },
    /// The ring has more entries than the region tracks.
    #[error("ring of {ring} entries, region tracks {tracked}")]
    RingTooLarge {
        /// Ring size.
        ring: u16,
        /// Entries in the region.
        tracked: u16,
    },
    /// An `inflight` flag that is neither 0 nor 1.
    #[error("entry {head}: inflight flag {value}")]
    Flag {
        /// Descriptor index.
        head: u16,
        /// The flag.
        value: u8,
    },
    /// A head marked in flight past the ring's size.
    #[error("entry {head} in flight in a ring of {ring}")]
    HeadPastRing {
        /// Descriptor index.
        head: u16,
        /// Ring size.
        ring: u16,
    },
    /// A counter too large to be real, or two in-flight heads with the same counter.
    #[error("entry {head}: counter {counter} out of range or repeated")]
    Counter {
        /// Descriptor index.
        head: u16,
        /// Its counter.
        counter: u64,
    },
    /// The last batch cannot be followed: more entries than the ring, an index past it, or a
    /// list that comes back to an entry it already listed.
    #[error("last batch of {len} entries from {head} is broken at entry {at}")]
    Batch {
        /// Entries the used indexes say the batch had.
        len: u16,
        /// `last_batch_head`.
        head: u16,
        /// The entry where the walk failed.
        at: u16,
    },
}

impl From<InflightFault> for std::io::Error {
    fn from(fault: InflightFault) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, fault)
    }
}

fn os(op: &'static str) -> InflightFault {
    InflightFault::Os {
        op,
        errno: std::io::Error::last_os_error().kind(),
    }
}

/// Bytes of one queue's region for `queue_size` entries (libvhost-user's size).
pub fn queue_region_len(queue_size: u16) -> u64 {
    (DESC_LEN as u64 * u64::from(queue_size) + 2).div_ceil(QUEUE_ALIGN) * QUEUE_ALIGN
}

/// Checks `num_queues` x `queue_size` against the device and returns the layout's length.
fn layout_len(
    num_queues: u16,
    queue_size: u16,
    max_queues: u16,
    max_size: u16,
) -> Result<u64, InflightFault> {
    if num_queues == 0
        || num_queues > max_queues
        || queue_size == 0
        || queue_size > max_size.min(MAX_QUEUE_SIZE)
    {
        return Err(InflightFault::Geometry {
            num_queues,
            queue_size,
            max_queues,
            max_size,
        });
    }
    Ok(u64::from(num_queues) * queue_region_len(queue_size))
}

/// A shared mapping, unmapped on drop.
struct Mapping {
    addr: NonNull<u8>,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `addr..addr+len` is a mapping this value created and nothing else unmaps.
        unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len) };
    }
}

/// The inflight region of one frontend connection, mapped from the file `SET_INFLIGHT_FD`
/// handed over.
pub struct InflightRegion {
    map: Mapping,
    /// Offset of queue 0's region inside the mapping.
    start: usize,
    num_queues: u16,
    queue_size: u16,
}

// SAFETY: the mapping is plain shared memory; each queue's part is only accessed through the
// one `InflightQueue` made for it, owned by that queue's thread.
unsafe impl Send for InflightRegion {}
// SAFETY: as above; the region itself only hands out queue views.
unsafe impl Sync for InflightRegion {}

impl InflightRegion {
    /// `VHOST_USER_GET_INFLIGHT_FD`: a zero-filled, sealed memfd laid out for the request's
    /// queues (at most `max_queues` of at most `max_size` entries). Every queue region starts
    /// at version 0: initialised when its ring first starts.
    pub fn create(
        req: &VhostUserInflight,
        max_queues: u16,
        max_size: u16,
    ) -> Result<(VhostUserInflight, File), InflightFault> {
        let len = layout_len(req.num_queues, req.queue_size, max_queues, max_size)?;
        // SAFETY: memfd_create reads a NUL-terminated name; the result is checked.
        let fd = unsafe {
            libc::memfd_create(
                c"vhost-inflight".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(os("memfd_create"));
        }
        // SAFETY: a fresh descriptor owned by nobody else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(len).map_err(|e| InflightFault::Os {
            op: "ftruncate",
            errno: e.kind(),
        })?;
        let seals = libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
        // SAFETY: fcntl on our own descriptor.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(os("F_ADD_SEALS"));
        }
        let answer = VhostUserInflight {
            mmap_size: len,
            mmap_offset: 0,
            num_queues: req.num_queues,
            queue_size: req.queue_size,
        };
        Ok((answer, file))
    }

    /// `VHOST_USER_SET_INFLIGHT_FD`: map the region `msg` describes in `file`, after checking
    /// that it holds the layout of `msg.num_queues` x `msg.queue_size` (at most `max_queues`
    /// of at most `max_size` entries) and that the file is that large.
    pub fn map(
        msg: &VhostUserInflight,
        file: &File,
        max_queues: u16,
        max_size: u16,
    ) -> Result<Arc<Self>, InflightFault> {
        let need = layout_len(msg.num_queues, msg.queue_size, max_queues, max_size)?;
        if msg.mmap_size < need {
            return Err(InflightFault::TooSmall {
                have: msg.mmap_size,
                need,
            });
        }
        if !msg.mmap_offset.is_multiple_of(QUEUE_ALIGN) {
            return Err(InflightFault::Misaligned(msg.mmap_offset));
        }
        let file_len = file
            .metadata()
            .map_err(|e| InflightFault::Os {
                op: "fstat",
                errno: e.kind(),
            })?
            .len();
        let end = msg.mmap_offset.checked_add(need);
        if end.is_none_or(|end| end > file_len) {
            return Err(InflightFault::TooSmall {
                have: file_len.saturating_sub(msg.mmap_offset),
                need,
            });
        }
        // SAFETY: sysconf has no preconditions.
        let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let map_offset = msg.mmap_offset - msg.mmap_offset % page;
        let start = (msg.mmap_offset - map_offset) as usize;
        let len = start + need as usize;
        // SAFETY: a fresh shared mapping of a range the file holds (checked above); the
        // result is checked before use.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                map_offset as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(os("mmap"));
        }
        let addr = NonNull::new(addr.cast::<u8>()).ok_or_else(|| os("mmap"))?;
        Ok(Arc::new(Self {
            map: Mapping { addr, len },
            start,
            num_queues: msg.num_queues,
            queue_size: msg.queue_size,
        }))
    }

    /// Queues the region tracks.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// The view of queue `index`'s region (`None` past the region's queues). Make one per
    /// queue: two views of the same queue would race.
    pub fn queue(self: &Arc<Self>, index: u16) -> Option<InflightQueue> {
        if index >= self.num_queues {
            return None;
        }
        let offset = self.start + usize::from(index) * queue_region_len(self.queue_size) as usize;
        // SAFETY: `offset` plus one queue region lies inside the mapping (`map` sized it for
        // `num_queues` regions after `start`).
        let base = unsafe { self.map.addr.add(offset) };
        Some(InflightQueue {
            _region: self.clone(),
            base,
            desc_num: self.queue_size,
            ring_size: 0,
            counter: 0,
            #[cfg(test)]
            crash: tests::Crash::default(),
        })
    }
}

/// What starting a ring found in its queue region.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Heads a previous backend took and did not answer, in submission order: resubmit them
    /// before taking new requests.
    pub heads: Vec<u16>,
    /// Entries of a last batch that was published but not yet cleared (now cleared).
    pub cleared: u16,
    /// Where the ring resumes taking requests: the used index plus the heads to resubmit.
    /// `None` for a fresh or refused region (the frontend's ring base stands).
    pub next_avail: Option<u16>,
    /// The queue region was refused (logged, reinitialised; nothing resubmitted).
    pub refused: Option<InflightFault>,
}

/// One queue's part of an [`InflightRegion`], owned by the thread serving that queue.
pub struct InflightQueue {
    /// Keeps the mapping alive.
    _region: Arc<InflightRegion>,
    base: NonNull<u8>,
    /// Entries in the queue region (the message's queue size).
    desc_num: u16,
    /// Size of the running ring; 0 while it is not started (nothing is tracked).
    ring_size: u16,
    /// Counter of the next request taken.
    counter: u64,
    #[cfg(test)]
    crash: tests::Crash,
}

// SAFETY: the view is the only accessor of its queue's region and moves with the engine that
// owns it; the region it points into is kept alive by `region`.
unsafe impl Send for InflightQueue {}

/// A value stored in the region.
trait Field: Copy {}
impl Field for u8 {}
impl Field for u16 {}
impl Field for u64 {}

impl InflightQueue {
    fn at(&self, offset: usize) -> *mut u8 {
        debug_assert!(offset < queue_region_len(self.desc_num) as usize);
        // SAFETY: callers pass offsets inside this queue's region (the header, or an entry
        // below `desc_num`), which the mapping holds.
        unsafe { self.base.as_ptr().add(offset) }
    }

    fn load<T: Field>(&self, offset: usize) -> T {
        // SAFETY: an aligned field inside the queue region (the region is 64-byte aligned and
        // every field sits at a multiple of its size); volatile: another process wrote it.
        unsafe { std::ptr::read_volatile(self.at(offset).cast::<T>()) }
    }

    /// Store in program order: a process killed between two stores leaves exactly the first
    /// in the region (the compiler may not reorder or merge volatile accesses).
    fn store<T: Field>(&mut self, offset: usize, value: T) {
        #[cfg(test)]
        if !self.crash.survives() {
            return;
        }
        // SAFETY: as in `load`.
        unsafe { std::ptr::write_volatile(self.at(offset).cast::<T>(), value) };
    }

    fn entry(head: u16) -> usize {
        HEADER_LEN + usize::from(head) * DESC_LEN
    }

    /// Whether the queue's ring is started and its requests are tracked.
    pub fn tracking(&self) -> bool {
        self.ring_size != 0
    }

    /// The ring starts with `ring_size` entries and the guest's used index at `guest_used`:
    /// bring the queue region in line with the used ring and return what is still in flight.
    /// A fresh region (version 0) is initialised; a region that does not hold up is logged,
    /// reinitialised and started empty.
    pub fn start(&mut self, guest_used: u16, ring_size: u16) -> Recovery {
        self.ring_size = 0;
        tracing::debug!(
            version = self.load::<u16>(H_VERSION),
            desc_num = self.load::<u16>(H_DESC_NUM),
            used_idx = self.load::<u16>(H_USED_IDX),
            last_batch_head = self.load::<u16>(H_LAST_BATCH_HEAD),
            guest_used,
            ring_size,
            "ring start on an inflight region"
        );
        if self.load::<u16>(H_VERSION) == 0 {
            self.reinit(guest_used, ring_size);
            return Recovery::default();
        }
        match self.inspect(guest_used, ring_size) {
            Ok((heads, batch)) => {
                for &head in &batch {
                    self.store(Self::entry(head) + D_INFLIGHT, 0u8);
                }
                compiler_fence(Ordering::SeqCst);
                self.store(H_USED_IDX, guest_used);
                self.counter = self.max_counter() + 1;
                self.ring_size = ring_size;
                Recovery {
                    next_avail: Some(guest_used.wrapping_add(heads.len() as u16)),
                    heads,
                    cleared: batch.len() as u16,
                    refused: None,
                }
            }
            Err(fault) => {
                tracing::error!("inflight region refused, starting the queue empty: {fault}");
                self.reinit(guest_used, ring_size);
                Recovery {
                    refused: Some(fault),
                    ..Recovery::default()
                }
            }
        }
    }

    /// Checks the queue region against the ring and returns the heads in flight (in counter
    /// order) and those of a published but uncleared last batch. Reads only.
    #[allow(clippy::type_complexity)]
    fn inspect(
        &self,
        guest_used: u16,
        ring_size: u16,
    ) -> Result<(Vec<u16>, Vec<u16>), InflightFault> {
        let version = self.load::<u16>(H_VERSION);
        if version != INFLIGHT_VERSION {
            return Err(InflightFault::Version(version));
        }
        let found = self.load::<u16>(H_DESC_NUM);
        if found != self.desc_num {
            return Err(InflightFault::DescNum {
                found,
                expected: self.desc_num,
            });
        }
        if ring_size == 0 || ring_size > self.desc_num {
            return Err(InflightFault::RingTooLarge {
                ring: ring_size,
                tracked: self.desc_num,
            });
        }
        // The last batch: `guest_used - used_idx` entries listed from `last_batch_head`.
        let len = guest_used.wrapping_sub(self.load::<u16>(H_USED_IDX));
        let head = self.load::<u16>(H_LAST_BATCH_HEAD);
        let mut in_batch = vec![false; usize::from(ring_size)];
        let mut batch = Vec::with_capacity(usize::from(len.min(ring_size)));
        let mut at = head;
        for _ in 0..len {
            let broken = InflightFault::Batch { len, head, at };
            if len > ring_size || at >= ring_size || in_batch[usize::from(at)] {
                return Err(broken);
            }
            in_batch[usize::from(at)] = true;
            batch.push(at);
            at = self.load::<u16>(Self::entry(at) + D_NEXT);
        }
        // Everything else still marked is in flight.
        let mut inflight: Vec<(u64, u16)> = Vec::new();
        for h in 0..self.desc_num {
            let value = self.load::<u8>(Self::entry(h) + D_INFLIGHT);
            match value {
                0 => continue,
                1 => {}
                _ => return Err(InflightFault::Flag { head: h, value }),
            }
            if h >= ring_size {
                return Err(InflightFault::HeadPastRing {
                    head: h,
                    ring: ring_size,
                });
            }
            let counter = self.load::<u64>(Self::entry(h) + D_COUNTER);
            if counter >= COUNTER_LIMIT {
                return Err(InflightFault::Counter { head: h, counter });
            }
            if !in_batch[usize::from(h)] {
                inflight.push((counter, h));
            }
        }
        inflight.sort_unstable();
        if let Some(w) = inflight.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(InflightFault::Counter {
                head: w[1].1,
                counter: w[1].0,
            });
        }
        Ok((inflight.into_iter().map(|(_, h)| h).collect(), batch))
    }

    /// Largest counter below the limit in the queue region (0 if none).
    fn max_counter(&self) -> u64 {
        (0..self.desc_num)
            .map(|h| self.load::<u64>(Self::entry(h) + D_COUNTER))
            .filter(|&c| c < COUNTER_LIMIT)
            .max()
            .unwrap_or(0)
    }

    /// Empty the queue region and start tracking a ring of `ring_size` at `guest_used`.
    fn reinit(&mut self, guest_used: u16, ring_size: u16) {
        for h in 0..self.desc_num {
            self.store(Self::entry(h) + D_INFLIGHT, 0u8);
            self.store(Self::entry(h) + D_NEXT, 0u16);
            self.store(Self::entry(h) + D_COUNTER, 0u64);
        }
        self.store(H_LAST_BATCH_HEAD, 0u16);
        self.store(H_USED_IDX, guest_used);
        self.store(H_DESC_NUM, self.desc_num);
        compiler_fence(Ordering::SeqCst);
        self.store(H_VERSION, INFLIGHT_VERSION);
        self.counter = 0;
        self.ring_size = if ring_size <= self.desc_num {
            ring_size
        } else {
            tracing::error!(
                ring_size,
                tracked = self.desc_num,
                "ring larger than its inflight region: not tracked"
            );
            0
        };
    }

    /// The ring stopped: nothing is tracked until it starts again.
    pub fn stop(&mut self) {
        self.ring_size = 0;
    }

    /// Record `head` as taken from the avail ring, before its request is started.
    pub fn mark(&mut self, head: u16) {
        if head >= self.ring_size {
            return;
        }
        let counter = self.counter;
        self.counter += 1;
        self.store(Self::entry(head) + D_COUNTER, counter);
        compiler_fence(Ordering::SeqCst);
        self.store(Self::entry(head) + D_INFLIGHT, 1u8);
    }

    /// Forget `head` without answering it (it went back to the avail ring).
    pub fn unmark(&mut self, head: u16) {
        if head < self.ring_size {
            self.store(Self::entry(head) + D_INFLIGHT, 0u8);
        }
    }

    /// Answer the batch `used` through `publish`, which puts the entries on the used ring and
    /// returns its own result with the new used index: the batch is linked from
    /// `last_batch_head` first, its flags cleared and `used_idx` stored after, so a crash at any
    /// point leaves a region that [`InflightQueue::start`] reads correctly. If `publish` fails
    /// the batch stays in flight.
    pub fn publish<T, E>(
        &mut self,
        used: &[(u16, u32)],
        publish: impl FnOnce() -> Result<(T, u16), E>,
    ) -> Result<T, E> {
        if !self.tracking() {
            return publish().map(|(result, _)| result);
        }
        let ring = self.ring_size;
        for &(head, _) in used.iter().filter(|(h, _)| *h < ring) {
            let last = self.load::<u16>(H_LAST_BATCH_HEAD);
            self.store(Self::entry(head) + D_NEXT, last);
            self.store(H_LAST_BATCH_HEAD, head);
        }
        compiler_fence(Ordering::SeqCst);
        let (result, used_idx) = publish()?;
        compiler_fence(Ordering::SeqCst);
        for &(head, _) in used.iter().filter(|(h, _)| *h < ring) {
            self.store(Self::entry(head) + D_INFLIGHT, 0u8);
        }
        compiler_fence(Ordering::SeqCst);
        self.store(H_USED_IDX, used_idx);
        Ok(result)
    }
}

#[cfg(test)]
mod tests;
