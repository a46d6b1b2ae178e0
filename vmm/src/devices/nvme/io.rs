// SPDX-License-Identifier: Apache-2.0
//! The NVM command set: Flush, Write, Read and Dataset Management
//! (deallocate → `fallocate(PUNCH_HOLE)`), run synchronously on the vCPU
//! thread with `pread`/`pwrite` through a bounce buffer. A write with Force
//! Unit Access is durable (`RWF_DSYNC`) before its completion is posted.

use vm_memory::GuestMemoryMmap;

use super::ctrl::{Command, Controller, Outcome};
use super::prp::Prps;
use super::{Status, LBA_SIZE, MAX_TRANSFER};

/// NVM opcodes.
pub mod op {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Dataset Management.
    pub const DSM: u8 = 0x09;
}

/// Read/Write CDW12 bit 30: Force Unit Access.
const FUA: u32 = 1 << 30;
/// Dataset Management: Attribute – Deallocate (CDW11 bit 2).
const DSM_DEALLOCATE: u32 = 1 << 2;
/// Bytes per Dataset Management range.
const DSM_RANGE_LEN: usize = 16;

impl Controller {
    /// Executes one NVM command.
    pub(super) fn io(&mut self, mem: &GuestMemoryMmap, cmd: &Command) -> Outcome {
        let opcode = cmd.opcode();
        if !matches!(opcode, op::FLUSH | op::WRITE | op::READ | op::DSM) {
            return Outcome::Done(Status::INVALID_OPCODE, 0);
        }
        // Flush may name every namespace (FFFFFFFFh).
        let nsid_ok = cmd.nsid() == 1 || (opcode == op::FLUSH && cmd.nsid() == u32::MAX);
        if !nsid_ok {
            return Outcome::Done(Status::INVALID_NAMESPACE, 0);
        }
        let status = match opcode {
            op::FLUSH => self.flush(),
            op::WRITE => self.rw(mem, cmd, true),
            op::READ => self.rw(mem, cmd, false),
            _ => self.dsm(mem, cmd),
        };
        Outcome::Done(status, 0)
    }

    fn flush(&mut self) -> Status {
        match self.ns.storage.sync() {
            Ok(()) => Status::SUCCESS,
            Err(e) => {
                tracing::warn!("nvme: flush: {e}");
                Status::INTERNAL_ERROR
            }
        }
    }

    /// Byte offset of `count` blocks from `slba`, if inside the namespace.
    fn range(&self, slba: u64, count: u64) -> Option<u64> {
        let end = slba.checked_add(count)?;
        // `then`, not `then_some`: the product of an out-of-range LBA overflows.
        (end <= self.ns.blocks).then(|| slba * LBA_SIZE)
    }

    fn rw(&mut self, mem: &GuestMemoryMmap, cmd: &Command, write: bool) -> Status {
        let slba = u64::from(cmd.cdw(10)) | u64::from(cmd.cdw(11)) << 32;
        let blocks = u64::from(cmd.cdw(12) & 0xffff) + 1;
        let len = blocks * LBA_SIZE;
        if len > MAX_TRANSFER {
            return Status::INVALID_FIELD;
        }
        let Some(offset) = self.range(slba, blocks) else {
            return Status::LBA_OUT_OF_RANGE;
        };
        if write && self.ns.readonly {
            return Status::NS_WRITE_PROTECTED;
        }
        let prps = match Prps::new(mem, cmd.prp1(), cmd.prp2(), len) {
            Ok(p) => p,
            Err(s) => return s,
        };
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(len as usize, 0);
        let status = if write {
            prps.read(mem, &mut buf).err().unwrap_or_else(|| {
                let durable = cmd.cdw(12) & FUA != 0;
                match self.ns.storage.write_at(&buf, offset, durable) {
                    Ok(()) => Status::SUCCESS,
                    Err(e) => {
                        tracing::warn!("nvme: write {len} bytes at {offset}: {e}");
                        Status::INTERNAL_ERROR
                    }
                }
            })
        } else {
            match self.ns.storage.read_at(&mut buf, offset) {
                Ok(()) => prps.write(mem, &buf).err().unwrap_or(Status::SUCCESS),
                Err(e) => {
                    tracing::warn!("nvme: read {len} bytes at {offset}: {e}");
                    Status::INTERNAL_ERROR
                }
            }
        };
        self.buf = buf;
        status
    }

    fn dsm(&mut self, mem: &GuestMemoryMmap, cmd: &Command) -> Status {
        let ranges = (cmd.cdw(10) & 0xff) as usize + 1;
        if cmd.cdw(11) & DSM_DEALLOCATE == 0 {
            // Only hints (integral read/write): nothing to do.
            return Status::SUCCESS;
        }
        if self.ns.readonly {
            return Status::NS_WRITE_PROTECTED;
        }
        let len = ranges * DSM_RANGE_LEN;
        let mut raw = vec![0u8; len];
        if let Err(s) =
            Prps::new(mem, cmd.prp1(), cmd.prp2(), len as u64).and_then(|p| p.read(mem, &mut raw))
        {
            return s;
        }
        // Validate every range before touching the file.
        let mut todo = Vec::with_capacity(ranges);
        for r in raw.chunks_exact(DSM_RANGE_LEN) {
            let nlb = u64::from(u32::from_le_bytes([r[4], r[5], r[6], r[7]]));
            let mut s = [0u8; 8];
            s.copy_from_slice(&r[8..16]);
            let slba = u64::from_le_bytes(s);
            let Some(offset) = self.range(slba, nlb) else {
                return Status::LBA_OUT_OF_RANGE;
            };
            if nlb > 0 {
                todo.push((offset, nlb * LBA_SIZE));
            }
        }
        for (offset, len) in todo {
            if let Err(e) = self.ns.storage.deallocate(offset, len) {
                tracing::warn!("nvme: deallocate {len} bytes at {offset}: {e}");
                return Status::INTERNAL_ERROR;
            }
        }
        Status::SUCCESS
    }
}
