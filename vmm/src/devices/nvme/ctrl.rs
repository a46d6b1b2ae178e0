// SPDX-License-Identifier: Apache-2.0
//! The controller core: queues, doorbells, command fetch, completion posting
//! with the phase tag, and interrupts. Everything runs on the vCPU thread
//! that wrote the doorbell; nothing here trusts a guest-supplied number
//! before checking it.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::regs::{RegEvent, Regs, CSTS_CFS, CSTS_RDY, CSTS_SHST_COMPLETE};
use super::{Status, CQ_ENTRY, MAX_QUEUE_ENTRIES, SQ_ENTRY};

/// Offset of the first doorbell in BAR0.
pub const DOORBELL_BASE: u64 = 0x1000;

/// Interrupt delivery for completion queues (MSI-X in the VMM, a recorder in tests).
pub trait Interrupts {
    /// Raise `vector`.
    fn signal(&mut self, vector: u16);
}

/// Where a namespace's blocks live: the backing file in the VMM, a recorder in tests.
pub trait Storage: Send {
    /// Read exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Write all of `buf` at `offset`; with `durable` (Force Unit Access) the data is on
    /// stable storage when this returns.
    fn write_at(&self, buf: &[u8], offset: u64, durable: bool) -> io::Result<()>;
    /// Make every completed write durable (Flush).
    fn sync(&self) -> io::Result<()>;
    /// Deallocate `len` bytes at `offset` (reads return zeros afterwards).
    fn deallocate(&self, offset: u64, len: u64) -> io::Result<()>;
}

impl Storage for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }

    fn write_at(&self, mut buf: &[u8], mut offset: u64, durable: bool) -> io::Result<()> {
        if !durable {
            return self.write_all_at(buf, offset);
        }
        // RWF_DSYNC: this write alone is synced (data and the metadata to find it), as
        // fdatasync would after it, in the same system call.
        while !buf.is_empty() {
            let iov = libc::iovec {
                iov_base: buf.as_ptr() as *mut libc::c_void,
                iov_len: buf.len(),
            };
            let off =
                i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            // SAFETY: one iovec over `buf`, which the kernel only reads during the call.
            let n = unsafe { libc::pwritev2(self.as_raw_fd(), &iov, 1, off, libc::RWF_DSYNC) };
            match n {
                n if n > 0 => {
                    buf = &buf[n as usize..];
                    offset += n as u64;
                }
                0 => return Err(io::ErrorKind::WriteZero.into()),
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.sync_data()
    }

    fn deallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        let bad = || io::Error::from_raw_os_error(libc::EINVAL);
        let off = i64::try_from(offset).map_err(|_| bad())?;
        let len = i64::try_from(len).map_err(|_| bad())?;
        // SAFETY: fallocate on a descriptor this file owns; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                self.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The one namespace (NSID 1).
pub struct Namespace {
    /// Backing storage.
    pub storage: Box<dyn Storage>,
    /// Size in logical blocks.
    pub blocks: u64,
    /// Writes and deallocation answer Namespace is Write Protected.
    pub readonly: bool,
}

/// A submission queue.
#[derive(Clone, Debug)]
pub struct Sq {
    pub(super) base: u64,
    pub(super) size: u16,
    pub(super) head: u16,
    pub(super) tail: u16,
    pub(super) cqid: u16,
}

/// A completion queue.
#[derive(Clone, Debug)]
pub struct Cq {
    pub(super) base: u64,
    pub(super) size: u16,
    pub(super) head: u16,
    pub(super) tail: u16,
    pub(super) phase: bool,
    pub(super) vector: u16,
    pub(super) ien: bool,
}

impl Cq {
    fn full(&self) -> bool {
        (self.tail + 1) % self.size == self.head
    }
}

/// One 64-byte submission queue entry.
#[derive(Clone, Copy, Debug, Default)]
pub struct Command {
    /// Dwords 0..16.
    pub dw: [u32; 16],
}

impl Command {
    /// Parses a little-endian entry.
    pub fn from_bytes(b: &[u8; 64]) -> Self {
        let mut dw = [0u32; 16];
        for (i, c) in b.chunks_exact(4).enumerate() {
            dw[i] = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        Self { dw }
    }
    /// Opcode.
    pub fn opcode(&self) -> u8 {
        self.dw[0] as u8
    }
    /// Command identifier.
    pub fn cid(&self) -> u16 {
        (self.dw[0] >> 16) as u16
    }
    /// FUSE and PSDT (must both be 0: no fused commands, PRPs only).
    pub fn fuse_psdt(&self) -> u32 {
        (self.dw[0] >> 8) & 0xc3
    }
    /// Namespace identifier.
    pub fn nsid(&self) -> u32 {
        self.dw[1]
    }
    /// PRP entry 1.
    pub fn prp1(&self) -> u64 {
        u64::from(self.dw[6]) | u64::from(self.dw[7]) << 32
    }
    /// PRP entry 2.
    pub fn prp2(&self) -> u64 {
        u64::from(self.dw[8]) | u64::from(self.dw[9]) << 32
    }
    /// Command dword 10..15.
    pub fn cdw(&self, n: usize) -> u32 {
        self.dw.get(n).copied().unwrap_or(0)
    }
}

/// Counters for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NvmeStats {
    /// Commands completed.
    pub commands: u64,
    /// Commands completed with an error status.
    pub errors: u64,
    /// Doorbell writes for missing queues or with out-of-range values.
    pub bad_doorbells: u64,
    /// Interrupts raised.
    pub interrupts: u64,
}

/// What a command produced.
pub enum Outcome {
    /// Post a completion with this status and DW0.
    Done(Status, u32),
    /// Held (Asynchronous Event Request): completed later.
    Held,
}

/// The NVMe controller.
pub struct Controller {
    pub(super) regs: Regs,
    pub(super) sqs: Vec<Option<Sq>>,
    pub(super) cqs: Vec<Option<Cq>>,
    pub(super) ns: Namespace,
    /// MSI-X vectors available.
    pub(super) vectors: u16,
    /// I/O queue pairs the controller supports.
    pub(super) max_io_queues: u16,
    pub(super) aers: Vec<u16>,
    pub(super) events: VecDeque<u32>,
    pub(super) async_config: u32,
    pub(super) serial: String,
    pub(super) buf: Vec<u8>,
    /// Counters.
    pub stats: NvmeStats,
}

impl Controller {
    /// A disabled controller for `ns` with `max_io_queues` I/O queue pairs
    /// and `vectors` MSI-X vectors.
    pub fn new(ns: Namespace, max_io_queues: u16, vectors: u16, serial: String) -> Self {
        let n = usize::from(max_io_queues) + 1;
        Self {
            regs: Regs::default(),
            sqs: vec![None; n],
            cqs: vec![None; n],
            ns,
            vectors,
            max_io_queues,
            aers: Vec::new(),
            events: VecDeque::new(),
            async_config: 0,
            serial,
            buf: Vec::new(),
            stats: NvmeStats::default(),
        }
    }

    /// Controller status register.
    pub fn csts(&self) -> u32 {
        self.regs.csts
    }

    /// A BAR0 read: registers, doorbells (write-only, read 0).
    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        if offset < DOORBELL_BASE {
            self.regs.read(offset, data);
        } else {
            data.fill(0);
        }
    }

    /// A BAR0 write: registers or doorbells.
    pub fn mmio_write(
        &mut self,
        mem: &GuestMemoryMmap,
        irq: &mut dyn Interrupts,
        offset: u64,
        data: &[u8],
    ) {
        if offset < DOORBELL_BASE {
            match self.regs.write(offset, data) {
                Some(RegEvent::Enable) => self.enable(mem),
                Some(RegEvent::Disable) => self.reset(),
                Some(RegEvent::Shutdown) => {
                    tracing::info!("nvme: shutdown requested by the driver");
                    self.regs.csts |= CSTS_SHST_COMPLETE;
                }
                None => {}
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return self.bad_doorbell(mem, irq, offset, "not a 4-byte write", 0);
        };
        let value = u32::from_le_bytes(bytes);
        let index = (offset - DOORBELL_BASE) / 4;
        if !offset.is_multiple_of(4) {
            return self.bad_doorbell(mem, irq, offset, "misaligned", 0);
        }
        if self.regs.csts & CSTS_RDY == 0 {
            tracing::debug!("nvme: doorbell {offset:#x} while the controller is disabled");
            return;
        }
        let Ok(qid) = u16::try_from(index / 2) else {
            return self.bad_doorbell(mem, irq, offset, "no such queue", 0);
        };
        if index.is_multiple_of(2) {
            self.sq_doorbell(mem, irq, qid, value, offset);
        } else {
            self.cq_doorbell(mem, irq, qid, value, offset);
        }
    }

    fn sq_doorbell(
        &mut self,
        mem: &GuestMemoryMmap,
        irq: &mut dyn Interrupts,
        qid: u16,
        value: u32,
        offset: u64,
    ) {
        let Some(sq) = self.sqs.get_mut(usize::from(qid)).and_then(Option::as_mut) else {
            return self.bad_doorbell(mem, irq, offset, "no such submission queue", 0);
        };
        if value >= u32::from(sq.size) {
            return self.bad_doorbell(mem, irq, offset, "tail past the queue size", 1);
        }
        sq.tail = value as u16;
        self.process_sq(mem, irq, qid);
    }

    fn cq_doorbell(
        &mut self,
        mem: &GuestMemoryMmap,
        irq: &mut dyn Interrupts,
        qid: u16,
        value: u32,
        offset: u64,
    ) {
        let Some(cq) = self.cqs.get_mut(usize::from(qid)).and_then(Option::as_mut) else {
            return self.bad_doorbell(mem, irq, offset, "no such completion queue", 0);
        };
        if value >= u32::from(cq.size) {
            return self.bad_doorbell(mem, irq, offset, "head past the queue size", 1);
        }
        cq.head = value as u16;
        // Submission queues that stopped on a full completion queue go on.
        let waiting: Vec<u16> = self
            .sqs
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                s.as_ref()
                    .filter(|s| s.cqid == qid && s.head != s.tail)
                    .map(|_| i as u16)
            })
            .collect();
        for sq in waiting {
            self.process_sq(mem, irq, sq);
        }
    }

    /// A doorbell write the spec calls invalid: ignored, counted, and
    /// reported through an Asynchronous Event (Error, `info` 0 = invalid
    /// doorbell register, 1 = invalid doorbell value) when one is outstanding.
    fn bad_doorbell(
        &mut self,
        mem: &GuestMemoryMmap,
        irq: &mut dyn Interrupts,
        offset: u64,
        why: &str,
        info: u32,
    ) {
        self.stats.bad_doorbells += 1;
        if self.stats.bad_doorbells <= 16 {
            tracing::warn!("nvme: invalid doorbell write at {offset:#x}: {why}");
        }
        if self.regs.csts & CSTS_RDY != 0 {
            // Event type 0 (error status), log page 1 (error information).
            self.events.push_back(info << 8 | 1 << 16);
            self.deliver_events(mem, irq);
        }
    }

    /// Completes outstanding AERs with queued events.
    pub(super) fn deliver_events(&mut self, mem: &GuestMemoryMmap, irq: &mut dyn Interrupts) {
        let mut posted = false;
        while !self.aers.is_empty() && !self.events.is_empty() {
            let (Some(cid), Some(ev)) = (self.aers.pop(), self.events.pop_front()) else {
                break;
            };
            posted |= self.post(mem, 0, cid, Status::SUCCESS, ev);
        }
        if posted {
            self.interrupt(irq, 0);
        }
    }

    fn enable(&mut self, mem: &GuestMemoryMmap) {
        let r = &self.regs;
        let (sqs, cqs) = (r.asq_size(), r.acq_size());
        let ok = r.mps() == 0
            && r.css() == 0
            && sqs >= 2
            && cqs >= 2
            && sqs <= MAX_QUEUE_ENTRIES
            && cqs <= MAX_QUEUE_ENTRIES
            && ring_ok(mem, r.asq, sqs, SQ_ENTRY)
            && ring_ok(mem, r.acq, cqs, CQ_ENTRY);
        if !ok {
            tracing::warn!(
                "nvme: enable with an invalid admin queue or CC {:#x}: controller fatal",
                r.cc
            );
            self.regs.csts = CSTS_CFS;
            return;
        }
        self.cqs[0] = Some(Cq {
            base: r.acq,
            size: cqs,
            head: 0,
            tail: 0,
            phase: true,
            vector: 0,
            ien: true,
        });
        self.sqs[0] = Some(Sq {
            base: r.asq,
            size: sqs,
            head: 0,
            tail: 0,
            cqid: 0,
        });
        self.regs.csts = CSTS_RDY;
        tracing::info!("nvme: enabled, admin queues {sqs}/{cqs} entries");
    }

    /// Controller reset (CC.EN 1 → 0): every queue and outstanding AER is dropped.
    pub fn reset(&mut self) {
        self.sqs.iter_mut().for_each(|q| *q = None);
        self.cqs.iter_mut().for_each(|q| *q = None);
        self.aers.clear();
        self.events.clear();
        self.async_config = 0;
        // AQA, ASQ and ACQ survive a controller reset (NVMe 1.4 §7.3.2).
        self.regs.csts = 0;
        tracing::info!("nvme: controller reset; {:?}", self.stats);
    }

    /// Runs the commands between head and tail of submission queue `qid`,
    /// stopping early when its completion queue is full.
    fn process_sq(&mut self, mem: &GuestMemoryMmap, irq: &mut dyn Interrupts, qid: u16) {
        let mut posted = false;
        let mut cqid = 0;
        while let Some(sq) = self.sqs.get(usize::from(qid)).and_then(Option::as_ref) {
            cqid = sq.cqid;
            if sq.head == sq.tail {
                break;
            }
            if self
                .cqs
                .get(usize::from(cqid))
                .and_then(Option::as_ref)
                .is_none_or(Cq::full)
            {
                break;
            }
            let addr = sq.base + u64::from(sq.head) * SQ_ENTRY;
            let mut raw = [0u8; 64];
            if mem.read_slice(&mut raw, GuestAddress(addr)).is_err() {
                // Checked at creation: only a memory layout change gets here.
                tracing::error!("nvme: SQ {qid} entry at {addr:#x} unreadable: controller fatal");
                self.regs.csts |= CSTS_CFS;
                break;
            }
            if let Some(sq) = self.sqs.get_mut(usize::from(qid)).and_then(Option::as_mut) {
                sq.head = (sq.head + 1) % sq.size;
            }
            let cmd = Command::from_bytes(&raw);
            let outcome = if cmd.fuse_psdt() != 0 {
                Outcome::Done(Status::INVALID_FIELD, 0)
            } else if qid == 0 {
                self.admin(mem, irq, &cmd)
            } else {
                self.io(mem, &cmd)
            };
            if let Outcome::Done(status, dw0) = outcome {
                if status != Status::SUCCESS && self.stats.errors < 16 {
                    tracing::info!(
                        "nvme: SQ {qid} opcode {:#x} nsid {} cdw10 {:#x}: status {status:?}",
                        cmd.opcode(),
                        cmd.nsid(),
                        cmd.cdw(10)
                    );
                }
                posted |= self.post(mem, qid, cmd.cid(), status, dw0);
            }
        }
        if posted {
            self.interrupt(irq, cqid);
        }
    }

    /// Writes a completion entry for a command from `sqid`; returns whether one was posted.
    pub(super) fn post(
        &mut self,
        mem: &GuestMemoryMmap,
        sqid: u16,
        cid: u16,
        status: Status,
        dw0: u32,
    ) -> bool {
        let Some(sq) = self.sqs.get(usize::from(sqid)).and_then(Option::as_ref) else {
            return false;
        };
        let (sqhd, cqid) = (sq.head, sq.cqid);
        let Some(cq) = self.cqs.get_mut(usize::from(cqid)).and_then(Option::as_mut) else {
            return false;
        };
        if cq.full() {
            tracing::warn!("nvme: CQ {cqid} full; completion of cid {cid} dropped");
            return false;
        }
        let dw3 = u32::from(cid) | u32::from(cq.phase) << 16 | u32::from(status.field()) << 17;
        let mut e = [0u8; 16];
        e[0..4].copy_from_slice(&dw0.to_le_bytes());
        e[8..12].copy_from_slice(&(u32::from(sqhd) | u32::from(sqid) << 16).to_le_bytes());
        e[12..16].copy_from_slice(&dw3.to_le_bytes());
        let addr = cq.base + u64::from(cq.tail) * CQ_ENTRY;
        if mem.write_slice(&e, GuestAddress(addr)).is_err() {
            tracing::error!("nvme: CQ {cqid} entry at {addr:#x} unwritable");
            return false;
        }
        cq.tail += 1;
        if cq.tail == cq.size {
            cq.tail = 0;
            cq.phase = !cq.phase;
        }
        self.stats.commands += 1;
        if status != Status::SUCCESS {
            self.stats.errors += 1;
        }
        true
    }

    fn interrupt(&mut self, irq: &mut dyn Interrupts, cqid: u16) {
        if let Some(cq) = self.cqs.get(usize::from(cqid)).and_then(Option::as_ref) {
            if cq.ien {
                self.stats.interrupts += 1;
                irq.signal(cq.vector);
            }
        }
    }
}

/// Whether a contiguous ring of `entries` × `entry` bytes at `base` is page
/// aligned and inside guest memory.
pub(super) fn ring_ok(mem: &GuestMemoryMmap, base: u64, entries: u16, entry: u64) -> bool {
    let len = u64::from(entries) * entry;
    base.is_multiple_of(super::PAGE_SIZE)
        && usize::try_from(len).is_ok_and(|l| mem.check_range(GuestAddress(base), l))
}
