// SPDX-License-Identifier: Apache-2.0
//! Controller registers (NVMe 1.4 §3.1): what the guest reads and writes at
//! the start of BAR0. Pure state; [`super::Controller`] acts on the returned
//! [`RegEvent`]s.

use super::MAX_QUEUE_ENTRIES;

/// Controller Capabilities.
pub const CAP: u64 = 0x00;
/// Version.
pub const VS: u64 = 0x08;
/// Interrupt Mask Set.
pub const INTMS: u64 = 0x0c;
/// Interrupt Mask Clear.
pub const INTMC: u64 = 0x10;
/// Controller Configuration.
pub const CC: u64 = 0x14;
/// Controller Status.
pub const CSTS: u64 = 0x1c;
/// Admin Queue Attributes.
pub const AQA: u64 = 0x24;
/// Admin Submission Queue base.
pub const ASQ: u64 = 0x28;
/// Admin Completion Queue base.
pub const ACQ: u64 = 0x30;

/// NVMe 1.4.
pub const VERSION: u32 = 0x0001_0400;
/// CC.EN.
pub const CC_EN: u32 = 1;
/// CSTS.RDY.
pub const CSTS_RDY: u32 = 1;
/// CSTS.CFS (controller fatal status).
pub const CSTS_CFS: u32 = 1 << 1;
/// CSTS.SHST = shutdown processing complete.
pub const CSTS_SHST_COMPLETE: u32 = 2 << 2;
const CC_SHN_MASK: u32 = 3 << 14;
/// CC bits a driver may set: EN, CSS, MPS, AMS, SHN, IOSQES, IOCQES.
const CC_WRITABLE: u32 = 0x00ff_fff1;

/// What a register write asks the controller to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegEvent {
    /// CC.EN went 0 → 1.
    Enable,
    /// CC.EN went 1 → 0 (controller reset).
    Disable,
    /// CC.SHN was set.
    Shutdown,
}

/// The register file.
#[derive(Clone, Debug, Default)]
pub struct Regs {
    /// Controller Configuration.
    pub cc: u32,
    /// Controller Status.
    pub csts: u32,
    /// Admin Queue Attributes.
    pub aqa: u32,
    /// Admin SQ base.
    pub asq: u64,
    /// Admin CQ base.
    pub acq: u64,
}

impl Regs {
    /// CAP: MQES, CQR (contiguous queues required), TO = 10 s, DSTRD = 0,
    /// CSS = NVM command set, MPSMIN = MPSMAX = 4 KiB.
    pub fn cap() -> u64 {
        u64::from(MAX_QUEUE_ENTRIES - 1) | (1 << 16) | (20 << 24) | (1 << 37)
    }

    /// Memory page size the driver chose (CC.MPS), as a shift over 4 KiB.
    pub fn mps(&self) -> u32 {
        (self.cc >> 7) & 0xf
    }

    /// Command set selected (CC.CSS).
    pub fn css(&self) -> u32 {
        (self.cc >> 4) & 0x7
    }

    /// Admin SQ size (entries).
    pub fn asq_size(&self) -> u16 {
        (self.aqa & 0xfff) as u16 + 1
    }

    /// Admin CQ size (entries).
    pub fn acq_size(&self) -> u16 {
        ((self.aqa >> 16) & 0xfff) as u16 + 1
    }

    /// Reads `data.len()` (4 or 8) bytes at `offset`; anything else reads 0.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let value: u64 = match offset & !7 {
            CAP => Self::cap(),
            VS => u64::from(VERSION),
            0x10 => u64::from(self.cc) << 32,
            0x18 => u64::from(self.csts) << 32,
            0x20 => u64::from(self.aqa) << 32,
            ASQ => self.asq,
            ACQ => self.acq,
            _ => 0,
        };
        let shift = (offset & 7) * 8;
        let v = value >> shift;
        match data.len() {
            4 if offset.is_multiple_of(4) => data.copy_from_slice(&(v as u32).to_le_bytes()),
            8 if offset.is_multiple_of(8) => data.copy_from_slice(&v.to_le_bytes()),
            _ => {}
        }
    }

    /// Applies a 4- or 8-byte aligned write; other sizes and read-only
    /// registers are ignored.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Option<RegEvent> {
        let v = match data.len() {
            4 if offset.is_multiple_of(4) => u64::from(u32::from_le_bytes(data.try_into().ok()?)),
            8 if offset.is_multiple_of(8) => u64::from_le_bytes(data.try_into().ok()?),
            _ => return None,
        };
        let set_lo = |r: &mut u64, v: u64| *r = (*r & !0xffff_ffff) | (v & 0xffff_ffff);
        let set_hi = |r: &mut u64, v: u64| *r = (*r & 0xffff_ffff) | (v << 32);
        match (offset, data.len()) {
            (CC, 4) => return self.write_cc(v as u32),
            (AQA, 4) => self.aqa = v as u32 & 0x0fff_0fff,
            (ASQ, 8) => self.asq = v & !0xfff,
            (ASQ, 4) => set_lo(&mut self.asq, v & !0xfff),
            (0x2c, 4) => set_hi(&mut self.asq, v),
            (ACQ, 8) => self.acq = v & !0xfff,
            (ACQ, 4) => set_lo(&mut self.acq, v & !0xfff),
            (0x34, 4) => set_hi(&mut self.acq, v),
            // INTMS/INTMC are for pin-based/MSI interrupts; with MSI-X the
            // driver does not use them and writes are ignored.
            _ => tracing::trace!("nvme: ignored register write at {offset:#x}"),
        }
        None
    }

    fn write_cc(&mut self, new: u32) -> Option<RegEvent> {
        let old = self.cc;
        self.cc = new & CC_WRITABLE;
        let en = |c: u32| c & CC_EN != 0;
        if en(old) && !en(new) {
            return Some(RegEvent::Disable);
        }
        if !en(old) && en(new) {
            return Some(RegEvent::Enable);
        }
        if new & CC_SHN_MASK != 0 && old & CC_SHN_MASK == 0 {
            return Some(RegEvent::Shutdown);
        }
        None
    }
}
