// SPDX-License-Identifier: Apache-2.0
//! A type-0 PCI configuration header with per-bit write masks, so that the
//! guest can only change what real hardware would let it change.

use super::msix::{MsixCapability, CTRL_ENABLE, CTRL_FUNCTION_MASK, MSIX_CAP_ID};

/// Number of 32-bit registers in PCIe configuration space (4 KiB).
pub const CONFIG_REGS: usize = 1024;
/// The command/status register (dword index).
pub const COMMAND_REG: usize = 1;
/// Command register: memory space decode enable.
pub const COMMAND_MEMORY: u32 = 1 << 1;
const BAR0_REG: usize = 4;
const CAP_PTR_REG: usize = 0xd;
const STATUS_CAP_LIST: u32 = 1 << 20;

/// Identity of a PCI function.
#[derive(Clone, Copy, Debug)]
pub struct PciIds {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code (class, subclass, prog-if).
    pub class: u32,
    /// Revision ID.
    pub revision: u8,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
}

/// A memory BAR the device exposes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// Index of the (first) BAR register.
    pub index: usize,
    /// Size in bytes (a power of two).
    pub size: u64,
    /// 64-bit BAR (occupies two registers).
    pub is_64bit: bool,
}

/// Configuration space contents and write masks.
pub struct PciConfig {
    regs: Box<[u32; CONFIG_REGS]>,
    writable: Box<[u32; CONFIG_REGS]>,
    bars: Vec<Bar>,
    next_cap: usize,
}

impl PciConfig {
    /// A header for `ids` with Command writable (I/O, memory, bus master,
    /// INTx disable) and everything else read-only.
    pub fn new(ids: PciIds) -> Self {
        let mut regs = Box::new([0u32; CONFIG_REGS]);
        let mut writable = Box::new([0u32; CONFIG_REGS]);
        regs[0] = u32::from(ids.device) << 16 | u32::from(ids.vendor);
        regs[2] = ids.class << 8 | u32::from(ids.revision);
        regs[0xb] = u32::from(ids.subsystem) << 16 | u32::from(ids.subsystem_vendor);
        writable[COMMAND_REG] = 0x0000_0407;
        // Interrupt line is scratch space for the OS.
        writable[0xf] = 0xff;
        Self {
            regs,
            writable,
            bars: Vec::new(),
            next_cap: 0x40,
        }
    }

    /// Declares a memory BAR at `addr` (the VMM's initial placement).
    pub fn add_bar(&mut self, bar: Bar, addr: u64) {
        let mask = !(bar.size - 1);
        let type_bits: u32 = if bar.is_64bit { 0x4 } else { 0x0 };
        self.regs[BAR0_REG + bar.index] = (addr as u32 & 0xffff_fff0) | type_bits;
        self.writable[BAR0_REG + bar.index] = mask as u32 & 0xffff_fff0;
        if bar.is_64bit {
            self.regs[BAR0_REG + bar.index + 1] = (addr >> 32) as u32;
            self.writable[BAR0_REG + bar.index + 1] = (mask >> 32) as u32;
        }
        self.bars.push(bar);
    }

    /// The current guest-programmed address of `bar`.
    pub fn bar_addr(&self, bar: &Bar) -> u64 {
        let lo = u64::from(self.regs[BAR0_REG + bar.index] & 0xffff_fff0);
        let hi = if bar.is_64bit {
            u64::from(self.regs[BAR0_REG + bar.index + 1])
        } else {
            0
        };
        hi << 32 | lo
    }

    /// The declared BARs.
    pub fn bars(&self) -> &[Bar] {
        &self.bars
    }

    /// Appends a capability with body `data` (after the 2-byte header);
    /// `writable` masks apply dword by dword from the capability start.
    /// Returns the capability's config offset.
    pub fn add_capability(&mut self, id: u8, data: &[u8], writable: &[u32]) -> usize {
        let offset = self.next_cap;
        let len = (2 + data.len()).next_multiple_of(4);
        let mut bytes = vec![0u8; len];
        bytes[0] = id;
        bytes[2..2 + data.len()].copy_from_slice(data);
        for (i, chunk) in bytes.chunks(4).enumerate() {
            let mut w = [0u8; 4];
            w[..chunk.len()].copy_from_slice(chunk);
            self.regs[offset / 4 + i] = u32::from_le_bytes(w);
            self.writable[offset / 4 + i] = writable.get(i).copied().unwrap_or(0);
        }
        // Link it after the previous capability.
        let prev_ptr = self.last_cap_next_ptr();
        self.set_byte(prev_ptr, offset as u8);
        self.regs[COMMAND_REG] |= STATUS_CAP_LIST;
        self.next_cap = offset + len;
        offset
    }

    /// Appends the MSI-X capability `cap`, with the enable and function-mask
    /// bits of message control writable; returns its config offset.
    pub fn add_msix_capability(&mut self, cap: &MsixCapability) -> usize {
        let ctrl_writable = u32::from(CTRL_ENABLE | CTRL_FUNCTION_MASK) << 16;
        self.add_capability(MSIX_CAP_ID, &cap.body(), &[ctrl_writable])
    }

    fn last_cap_next_ptr(&self) -> usize {
        let mut ptr_offset = CAP_PTR_REG * 4;
        let mut cap = self.byte(ptr_offset) as usize;
        while cap != 0 {
            ptr_offset = cap + 1;
            cap = self.byte(ptr_offset) as usize;
        }
        ptr_offset
    }

    fn byte(&self, offset: usize) -> u8 {
        (self.regs[offset / 4] >> ((offset % 4) * 8)) as u8
    }

    fn set_byte(&mut self, offset: usize, v: u8) {
        let shift = (offset % 4) * 8;
        let r = &mut self.regs[offset / 4];
        *r = (*r & !(0xff << shift)) | u32::from(v) << shift;
    }

    /// Reads register `reg`; out-of-range registers read as zero.
    pub fn read(&self, reg: usize) -> u32 {
        self.regs.get(reg).copied().unwrap_or(0)
    }

    /// Overwrites register `reg` regardless of the write mask (device-side update).
    pub fn set_reg(&mut self, reg: usize, value: u32) {
        if let Some(r) = self.regs.get_mut(reg) {
            *r = value;
        }
    }

    /// Applies a guest write of 1, 2 or 4 bytes at `offset` within `reg`,
    /// honouring the write mask. Malformed accesses are ignored.
    pub fn write(&mut self, reg: usize, offset: u64, data: &[u8]) {
        let (Some(cur), Some(mask)) =
            (self.regs.get(reg).copied(), self.writable.get(reg).copied())
        else {
            return;
        };
        let offset = offset as usize;
        if !matches!(data.len(), 1 | 2 | 4) || offset + data.len() > 4 {
            return;
        }
        let mut bytes = cur.to_le_bytes();
        bytes[offset..offset + data.len()].copy_from_slice(data);
        let new = u32::from_le_bytes(bytes);
        let access_mask = match data.len() {
            4 => u32::MAX,
            n => ((1u32 << (n * 8)) - 1) << (offset * 8),
        };
        let m = mask & access_mask;
        self.regs[reg] = (cur & !m) | (new & m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> PciIds {
        PciIds {
            vendor: 0x1af4,
            device: 0x1042,
            class: 0x01_80_00,
            revision: 1,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        }
    }

    #[test]
    fn read_only_ids_and_bar_sizing() {
        let mut c = PciConfig::new(ids());
        c.add_bar(
            Bar {
                index: 0,
                size: 0x4000,
                is_64bit: true,
            },
            0x1_0000_0000,
        );
        c.write(0, 0, &[0xff; 4]);
        assert_eq!(c.read(0), 0x1042_1af4);
        // Sizing: write all ones, read back the size mask.
        c.write(4, 0, &[0xff; 4]);
        c.write(5, 0, &[0xff; 4]);
        assert_eq!(c.read(4), 0xffff_c004);
        assert_eq!(c.read(5), 0xffff_ffff);
        c.write(4, 0, &0xc000_0000u32.to_le_bytes());
        c.write(5, 0, &[0; 4]);
        assert_eq!(c.bar_addr(&c.bars()[0]), 0xc000_0000);
    }

    #[test]
    fn capability_chain() {
        let mut c = PciConfig::new(ids());
        let a = c.add_capability(0x11, &[0; 10], &[0xc000_0000]);
        let b = c.add_capability(0x09, &[0; 14], &[]);
        assert_eq!(c.read(CAP_PTR_REG) & 0xff, a as u32);
        assert_eq!((c.read(a / 4) >> 8) & 0xff, b as u32);
        assert_ne!(c.read(COMMAND_REG) & STATUS_CAP_LIST, 0);
        // Only the masked bits of the capability are writable.
        c.write(a / 4, 2, &[0xff, 0xff]);
        assert_eq!(c.read(a / 4) >> 16, 0xc000);
    }

    #[test]
    fn malformed_writes_are_ignored() {
        let mut c = PciConfig::new(ids());
        c.write(CONFIG_REGS + 5, 0, &[1]);
        c.write(1, 3, &[1, 2]);
        c.write(1, 0, &[1, 2, 3]);
        assert_eq!(c.read(1), 0);
        c.write(1, 0, &[0x06]);
        assert_eq!(c.read(1), 0x06);
    }
}
