// SPDX-License-Identifier: Apache-2.0
//! virtio-blk request parsing and execution (virtio 1.2 §5.2.6).

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use io_uring::{opcode, types};
use virtio_bindings::virtio_blk::*;
use vm_memory::GuestMemory;

use super::{HEADER_LEN, MAX_DISCARD_SECTORS, SECTOR_SIZE, SIZE_MAX};
use crate::engine::histogram::bump;
use crate::engine::{rw_sqe, DescChain, Dir, Prepared, QueueStats, RequestHandler, FIXED_FILE};

/// Guest faults logged at `warn` level per queue before switching to `debug`.
const WARN_BUDGET: u32 = 16;

/// Static description of the exported disk.
#[derive(Debug, Clone)]
pub struct BlkSettings {
    /// Capacity in 512-byte sectors.
    pub sectors: u64,
    /// Reject writes, discards and write-zeroes with IOERR.
    pub readonly: bool,
    /// GET_ID answer (NUL padded, not necessarily NUL terminated).
    pub serial: [u8; VIRTIO_BLK_ID_BYTES as usize],
    /// Maximum data segments per request.
    pub seg_max: u32,
    /// DISCARD supported.
    pub discard: bool,
    /// WRITE_ZEROES supported.
    pub write_zeroes: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Op {
    #[default]
    None,
    Read,
    Write,
    Flush,
    Fallocate,
}

/// State of one in-flight virtio-blk request.
#[derive(Debug, Default)]
pub struct BlkReq {
    op: Op,
    /// Bytes the operation must transfer (reads and writes).
    expect: u64,
}

/// virtio-blk [`RequestHandler`]: one per queue, sharing the backing file.
pub struct BlkHandler {
    file: Arc<File>,
    fd: RawFd,
    settings: BlkSettings,
    writeback: Arc<AtomicBool>,
    stats: Arc<QueueStats>,
    warned: u32,
}

impl BlkHandler {
    /// Serve `file` with `settings`. `writeback` is the guest-visible write cache mode
    /// (CONFIG_WCE); when false, writes are issued with `RWF_DSYNC`.
    pub fn new(
        file: Arc<File>,
        settings: BlkSettings,
        writeback: Arc<AtomicBool>,
        stats: Arc<QueueStats>,
    ) -> Self {
        let fd = file.as_raw_fd();
        Self {
            file,
            fd,
            settings,
            writeback,
            stats,
            warned: 0,
        }
    }

    /// Disk description.
    pub fn settings(&self) -> &BlkSettings {
        &self.settings
    }

    /// The backing file.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    fn fault(&mut self, head: u16, what: &str) {
        QueueStats::inc(&self.stats.guest_faults);
        if self.warned < WARN_BUDGET {
            self.warned += 1;
            tracing::warn!(head, "bad virtio-blk request: {what}");
        } else {
            tracing::debug!(head, "bad virtio-blk request: {what}");
        }
    }

    /// Write `status` as the last byte of the writable stream; returns the used length, or 0
    /// (and counts the chain as dropped) when even that is impossible.
    fn answer<M: GuestMemory>(
        &mut self,
        mem: &M,
        chain: &DescChain,
        status: u32,
        used_len: u64,
    ) -> u32 {
        let wl = chain.writable_len();
        if wl == 0
            || chain
                .write_at(mem, Dir::Writable, wl - 1, &[status as u8])
                .is_err()
        {
            QueueStats::inc(&self.stats.dropped);
            if self.warned < WARN_BUDGET {
                self.warned += 1;
                tracing::warn!(head = chain.head(), "status byte not writable; used len 0");
            }
            return 0;
        }
        QueueStats::inc(match status {
            VIRTIO_BLK_S_OK => &self.stats.ok,
            VIRTIO_BLK_S_UNSUPP => &self.stats.unsupported,
            _ => &self.stats.io_errors,
        });
        u32::try_from(used_len.max(1)).unwrap_or(u32::MAX)
    }

    fn ioerr<M: GuestMemory>(&mut self, mem: &M, chain: &DescChain, what: &str) -> Prepared {
        self.fault(chain.head(), what);
        Prepared::Done(self.answer(mem, chain, VIRTIO_BLK_S_IOERR, 1))
    }

    /// Byte offset of `[sector, sector + len)` if it is inside the disk.
    fn range(&self, sector: u64, len: u64) -> Option<u64> {
        let end = sector.checked_add(len / SECTOR_SIZE)?;
        (end <= self.settings.sectors).then(|| sector * SECTOR_SIZE)
    }

    fn prepare_rw<M: GuestMemory>(
        &mut self,
        mem: &M,
        chain: &DescChain,
        req: &mut BlkReq,
        iov: &mut Vec<libc::iovec>,
        sector: u64,
        write: bool,
    ) -> Prepared {
        let (dir, len) = if write {
            if self.settings.readonly {
                return self.ioerr(mem, chain, "write to read-only disk");
            }
            if chain.writable_len() != 1 {
                return self.ioerr(mem, chain, "write request with writable data buffers");
            }
            (Dir::Readable, chain.readable_len() - HEADER_LEN)
        } else {
            if chain.readable_len() != HEADER_LEN {
                return self.ioerr(mem, chain, "read request with readable data buffers");
            }
            (Dir::Writable, chain.writable_len() - 1)
        };
        if len % SECTOR_SIZE != 0 {
            return self.ioerr(mem, chain, "data length not a multiple of 512");
        }
        if len > u64::from(self.settings.seg_max) * u64::from(SIZE_MAX) {
            return self.ioerr(mem, chain, "data length too large");
        }
        let Some(offset) = self.range(sector, len) else {
            return self.ioerr(mem, chain, "sector range past capacity");
        };
        if len == 0 {
            return Prepared::Done(self.answer(mem, chain, VIRTIO_BLK_S_OK, 1));
        }
        let start = if write { HEADER_LEN } else { 0 };
        let max_iov = self.settings.seg_max as usize;
        if let Err(f) = chain.iovecs(mem, dir, start, len, max_iov, iov) {
            return self.ioerr(mem, chain, &f.to_string());
        }
        req.expect = len;
        if write {
            req.op = Op::Write;
            let flags = if self.writeback.load(Ordering::Relaxed) {
                0
            } else {
                libc::RWF_DSYNC
            };
            Prepared::Submit(rw_sqe(iov, offset, flags, true))
        } else {
            req.op = Op::Read;
            Prepared::Submit(rw_sqe(iov, offset, 0, false))
        }
    }

    fn prepare_fallocate<M: GuestMemory>(
        &mut self,
        mem: &M,
        chain: &DescChain,
        req: &mut BlkReq,
        discard: bool,
    ) -> Prepared {
        let supported = if discard {
            self.settings.discard
        } else {
            self.settings.write_zeroes
        };
        if !supported {
            return Prepared::Done(self.answer(mem, chain, VIRTIO_BLK_S_UNSUPP, 1));
        }
        if self.settings.readonly {
            return self.ioerr(mem, chain, "discard/write-zeroes on read-only disk");
        }
        // One `virtio_blk_discard_write_zeroes` segment (max_discard_seg = 1).
        if chain.readable_len() != HEADER_LEN + 16 {
            return self.ioerr(mem, chain, "discard/write-zeroes needs exactly one segment");
        }
        let mut seg = [0u8; 16];
        if chain
            .read_at(mem, Dir::Readable, HEADER_LEN, &mut seg)
            .is_err()
        {
            return self.ioerr(mem, chain, "unreadable discard segment");
        }
        let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
        let num = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
        let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or_default());
        let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
        // Discard must have no flags; write-zeroes only UNMAP (virtio 1.2 §5.2.6.2).
        let bad_flags = if discard {
            flags != 0
        } else {
            flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0
        };
        if bad_flags {
            self.fault(chain.head(), "unsupported discard/write-zeroes flags");
            return Prepared::Done(self.answer(mem, chain, VIRTIO_BLK_S_UNSUPP, 1));
        }
        if num > MAX_DISCARD_SECTORS {
            return self.ioerr(mem, chain, "discard/write-zeroes too large");
        }
        let len = u64::from(num) * SECTOR_SIZE;
        let Some(offset) = self.range(sector, len) else {
            return self.ioerr(mem, chain, "sector range past capacity");
        };
        if len == 0 {
            return Prepared::Done(self.answer(mem, chain, VIRTIO_BLK_S_OK, 1));
        }
        let mode = if discard || unmap {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        req.op = Op::Fallocate;
        Prepared::Submit(
            opcode::Fallocate::new(FIXED_FILE, len)
                .offset(offset)
                .mode(mode)
                .build(),
        )
    }
}

/// What a block queue submits: reads and writes ([`rw_sqe`](crate::engine::rw_sqe)), flush
/// (`FSYNC` with DATASYNC), discard and write-zeroes (`FALLOCATE`).
const BLK_OPCODES: [u8; 6] = [
    opcode::Read::CODE,
    opcode::Write::CODE,
    opcode::Readv::CODE,
    opcode::Writev::CODE,
    opcode::Fsync::CODE,
    opcode::Fallocate::CODE,
];

impl RequestHandler for BlkHandler {
    type Req = BlkReq;

    fn file(&self) -> RawFd {
        self.fd
    }

    fn opcodes(&self) -> &'static [u8] {
        &BLK_OPCODES
    }

    fn prepare<M: GuestMemory>(
        &mut self,
        mem: &M,
        chain: &DescChain,
        req: &mut BlkReq,
        iov: &mut Vec<libc::iovec>,
    ) -> Prepared {
        if !chain.is_complete() {
            // Loops / truncated chains: where the status byte is cannot be known.
            self.fault(chain.head(), "descriptor chain truncated or looping");
            QueueStats::inc(&self.stats.dropped);
            return Prepared::Done(0);
        }
        if chain.writable_len() == 0 {
            self.fault(chain.head(), "no writable status descriptor");
            QueueStats::inc(&self.stats.dropped);
            return Prepared::Done(0);
        }
        if let Some(f) = chain.fault() {
            return self.ioerr(mem, chain, &f.to_string());
        }
        let mut hdr = [0u8; HEADER_LEN as usize];
        if chain.readable_len() < HEADER_LEN
            || chain.read_at(mem, Dir::Readable, 0, &mut hdr).is_err()
        {
            return self.ioerr(mem, chain, "request header shorter than 16 bytes");
        }
        let ty = u32::from_le_bytes(hdr[0..4].try_into().unwrap_or_default());
        let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or_default());
        tracing::trace!(
            head = chain.head(),
            ty,
            sector,
            readable = ?chain.segs(Dir::Readable),
            writable = ?chain.segs(Dir::Writable),
            "request"
        );
        match ty {
            VIRTIO_BLK_T_IN => self.prepare_rw(mem, chain, req, iov, sector, false),
            VIRTIO_BLK_T_OUT => self.prepare_rw(mem, chain, req, iov, sector, true),
            VIRTIO_BLK_T_FLUSH => {
                req.op = Op::Flush;
                Prepared::Submit(
                    opcode::Fsync::new(FIXED_FILE)
                        .flags(types::FsyncFlags::DATASYNC)
                        .build(),
                )
            }
            VIRTIO_BLK_T_GET_ID => {
                let room = (chain.writable_len() - 1).min(VIRTIO_BLK_ID_BYTES.into()) as usize;
                let id = self.settings.serial;
                if chain.write_at(mem, Dir::Writable, 0, &id[..room]).is_err() {
                    return self.ioerr(mem, chain, "GET_ID buffer not writable");
                }
                Prepared::Done(self.answer(mem, chain, VIRTIO_BLK_S_OK, chain.writable_len()))
            }
            VIRTIO_BLK_T_DISCARD => self.prepare_fallocate(mem, chain, req, true),
            VIRTIO_BLK_T_WRITE_ZEROES => self.prepare_fallocate(mem, chain, req, false),
            _ => {
                tracing::debug!(ty, "unsupported virtio-blk request type");
                Prepared::Done(self.answer(mem, chain, VIRTIO_BLK_S_UNSUPP, 1))
            }
        }
    }

    fn complete<M: GuestMemory>(
        &mut self,
        mem: &M,
        chain: &DescChain,
        req: &mut BlkReq,
        result: i32,
    ) -> u32 {
        let ok = match req.op {
            Op::Read | Op::Write => u64::try_from(result).is_ok_and(|n| n == req.expect),
            _ => result >= 0,
        };
        let status = if ok {
            VIRTIO_BLK_S_OK
        } else {
            let err = if result < 0 {
                crate::engine::errno(result).to_string()
            } else {
                format!("short transfer {result} of {}", req.expect)
            };
            tracing::warn!(head = chain.head(), op = ?req.op, "I/O failed: {err}");
            VIRTIO_BLK_S_IOERR
        };
        if ok {
            match req.op {
                Op::Read => bump(&self.stats.bytes_read, req.expect),
                Op::Write => bump(&self.stats.bytes_written, req.expect),
                _ => {}
            }
        }
        let used = if req.op == Op::Read {
            chain.writable_len()
        } else {
            1
        };
        self.answer(mem, chain, status, used)
    }
}
