// SPDX-License-Identifier: Apache-2.0
//! The configuration-space model: which registers the VMM owns (emulated)
//! and which go to the device (passed through with pread/pwrite on the VFIO
//! config region).
//!
//! | Registers                          | Owner                                  |
//! |------------------------------------|----------------------------------------|
//! | Vendor/device/class/revision/…     | device (read-only anyway)              |
//! | Command/status                     | device (vfio-pci virtualizes it too)   |
//! | BAR0–BAR5                          | VMM: guest-physical address and sizing |
//! | Expansion ROM BAR                  | VMM: reads 0 (no ROM exposed)          |
//! | Interrupt line / pin               | VMM: line is scratch, pin reads 0 (no INTx) |
//! | MSI capability                     | VMM: emulated (enable, vectors, address, data, masks); hidden if VFIO offers no MSI |
//! | MSI-X message control (enable, function mask) | VMM                          |
//! | Rest of MSI-X capability           | device (table size, BIR/offsets), writes dropped |
//! | Other capabilities (PM, PCIe, …)   | device                                 |
//! | Extended space (0x100–0xfff)       | VMM: reads 0 (no extended capabilities) |

const COMMAND_REG: usize = 1;
const BAR0_REG: usize = 4;
const ROM_REG: usize = 0xc;
const INTERRUPT_REG: usize = 0xf;
const CAP_PTR: usize = 0x34;
/// Registers in the legacy (256-byte) config space.
pub const LEGACY_REGS: usize = 64;
const CAP_ID_MSI: u8 = 0x05;

use pci::msix::{MsixCapability, CTRL_ENABLE, CTRL_FUNCTION_MASK, MSIX_CAP_ID as CAP_ID_MSIX};

/// Kind of a BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// I/O ports.
    Io,
    /// 32-bit memory.
    Mem32,
    /// 64-bit memory (uses the next BAR register for the high half).
    Mem64,
}

/// A BAR the device implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarInfo {
    /// BAR index (0–5), also the VFIO region index.
    pub index: usize,
    /// Size in bytes (a power of two).
    pub size: u64,
    /// Kind.
    pub kind: BarKind,
    /// Prefetchable memory.
    pub prefetchable: bool,
}

/// Where the MSI-X capability sits in config space and what it says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixCap {
    /// Config-space offset of the capability.
    pub offset: usize,
    /// Its table size and where the table and PBA live.
    pub body: MsixCapability,
}

/// What a guest config write turned into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteAction {
    /// Handled (or dropped) by the model.
    Handled,
    /// Send the write to the device.
    Forward,
    /// The guest wrote MSI-X message control.
    MsixControl(u16),
    /// The guest wrote the command register (forward it, then check BARs).
    Command,
    /// The guest wrote the (emulated) MSI capability.
    Msi,
}

/// The MSI state the guest programmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiConfig {
    /// MSI enable bit.
    pub enabled: bool,
    /// Vectors enabled (Multiple Message Enable, capped by the capability).
    pub vectors: u32,
    /// Message address.
    pub address: u64,
    /// Message data (vector `i` uses the low bits replaced by `i`).
    pub data: u16,
    /// Per-vector mask bits (0 without per-vector masking).
    pub mask: u32,
}

/// The emulated MSI capability: a copy of its bytes and what the guest may change.
#[derive(Clone, Debug)]
struct MsiState {
    offset: usize,
    is_64bit: bool,
    per_vector_mask: bool,
    max_vectors: u32,
    bytes: Vec<u8>,
}

impl MsiState {
    fn new(raw: &[u8], offset: usize) -> Self {
        let ctrl = cfg_u16(raw, offset + 2);
        let is_64bit = ctrl & (1 << 7) != 0;
        let per_vector_mask = ctrl & (1 << 8) != 0;
        let len = 10 + if is_64bit { 4 } else { 0 } + if per_vector_mask { 10 } else { 0 };
        let mut bytes: Vec<u8> = (0..len).map(|i| cfg_u8(raw, offset + i)).collect();
        // Reset state: disabled, one vector, no message, nothing masked.
        bytes[2] &= !0x71;
        for b in bytes.iter_mut().skip(4) {
            *b = 0;
        }
        Self {
            offset,
            is_64bit,
            per_vector_mask,
            max_vectors: 1 << ((ctrl >> 1) & 7).min(5),
            bytes,
        }
    }

    fn data_off(&self) -> usize {
        if self.is_64bit {
            12
        } else {
            8
        }
    }

    /// Which bits of byte `i` the guest may write.
    fn writable(&self, i: usize) -> u8 {
        let d = self.data_off();
        match i {
            2 => 0x71,
            4 => 0xfc,
            5..=7 => 0xff,
            8..=11 if self.is_64bit => 0xff,
            i if i == d || i == d + 1 => 0xff,
            i if self.per_vector_mask && (d + 4..d + 8).contains(&i) => 0xff,
            _ => 0,
        }
    }

    fn contains(&self, byte: usize) -> bool {
        (self.offset..self.offset + self.bytes.len()).contains(&byte)
    }

    fn config(&self) -> MsiConfig {
        let b = &self.bytes;
        let ctrl = cfg_u16(b, 2);
        let d = self.data_off();
        let hi = if self.is_64bit { cfg_u32(b, 8) } else { 0 };
        MsiConfig {
            enabled: ctrl & 1 != 0,
            vectors: (1u32 << ((ctrl >> 4) & 7).min(5)).min(self.max_vectors),
            address: u64::from(hi) << 32 | u64::from(cfg_u32(b, 4)),
            data: cfg_u16(b, d),
            mask: if self.per_vector_mask {
                cfg_u32(b, d + 4)
            } else {
                0
            },
        }
    }
}

/// The VMM-owned parts of configuration space.
#[derive(Debug)]
pub struct ConfigModel {
    bars: Vec<BarInfo>,
    bar_regs: [u32; 6],
    bar_masks: [u32; 6],
    msix: Option<MsixCap>,
    msi: Option<MsiState>,
    hidden: Vec<(usize, usize)>,
    next_overrides: Vec<(usize, u8)>,
    interrupt_line: u8,
}

fn cfg_u8(raw: &[u8], off: usize) -> u8 {
    raw.get(off).copied().unwrap_or(0)
}

fn cfg_u16(raw: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([cfg_u8(raw, off), cfg_u8(raw, off + 1)])
}

fn cfg_u32(raw: &[u8], off: usize) -> u32 {
    u32::from(cfg_u16(raw, off)) | u32::from(cfg_u16(raw, off + 2)) << 16
}

impl ConfigModel {
    /// Builds the model from the device's first 256 config bytes and the
    /// VFIO region sizes of BAR0–BAR5. `msi_supported`: VFIO offers MSI
    /// vectors (else an MSI capability is hidden).
    pub fn new(raw: &[u8], region_sizes: [u64; 6], msi_supported: bool) -> Self {
        let mut bars = Vec::new();
        let mut i = 0;
        while i < 6 {
            let reg = cfg_u32(raw, 0x10 + 4 * i);
            let size = region_sizes[i];
            let kind = if reg & 1 == 1 {
                BarKind::Io
            } else if reg & 0x6 == 0x4 && i < 5 {
                BarKind::Mem64
            } else {
                BarKind::Mem32
            };
            if size.is_power_of_two() {
                bars.push(BarInfo {
                    index: i,
                    size,
                    kind,
                    prefetchable: kind != BarKind::Io && reg & 0x8 != 0,
                });
            }
            i += if kind == BarKind::Mem64 { 2 } else { 1 };
        }
        let mut model = Self {
            bars: Vec::new(),
            bar_regs: [0; 6],
            bar_masks: [0; 6],
            msix: None,
            msi: None,
            hidden: Vec::new(),
            next_overrides: Vec::new(),
            interrupt_line: 0,
        };
        for b in &bars {
            let flags = match b.kind {
                BarKind::Io => 0x1,
                BarKind::Mem32 => 0x0,
                BarKind::Mem64 => 0x4,
            } | if b.prefetchable { 0x8 } else { 0 };
            let mask = !(b.size - 1);
            let low_mask = if b.kind == BarKind::Io { !0x3 } else { !0xf };
            model.bar_regs[b.index] = flags;
            model.bar_masks[b.index] = mask as u32 & low_mask;
            if b.kind == BarKind::Mem64 {
                model.bar_masks[b.index + 1] = (mask >> 32) as u32;
            }
        }
        model.bars = bars;
        model.parse_caps(raw, msi_supported);
        model
    }

    fn parse_caps(&mut self, raw: &[u8], msi_supported: bool) {
        // Status bit 4: capability list present.
        if cfg_u16(raw, 6) & 0x10 == 0 {
            return;
        }
        let mut visible_ptr = CAP_PTR;
        let mut cap = usize::from(cfg_u8(raw, CAP_PTR) & 0xfc);
        let mut guard = 0;
        while (0x40..0x100).contains(&cap) && guard < 48 {
            guard += 1;
            let id = cfg_u8(raw, cap);
            let next = cfg_u8(raw, cap + 1) & 0xfc;
            match id {
                CAP_ID_MSI if msi_supported && self.msi.is_none() => {
                    self.msi = Some(MsiState::new(raw, cap));
                }
                CAP_ID_MSI => {
                    let ctrl = cfg_u16(raw, cap + 2);
                    let mut len = 10;
                    if ctrl & (1 << 7) != 0 {
                        len += 4;
                    }
                    if ctrl & (1 << 8) != 0 {
                        len += 10;
                    }
                    self.hidden.push((cap, len));
                    self.set_override(visible_ptr, next);
                    cap = usize::from(next);
                    continue;
                }
                CAP_ID_MSIX => {
                    self.msix = Some(MsixCap {
                        offset: cap,
                        body: MsixCapability::from_registers(
                            cfg_u16(raw, cap + 2),
                            cfg_u32(raw, cap + 4),
                            cfg_u32(raw, cap + 8),
                        ),
                    });
                }
                _ => {}
            }
            visible_ptr = cap + 1;
            cap = usize::from(next);
        }
    }

    fn set_override(&mut self, loc: usize, value: u8) {
        self.next_overrides.retain(|(l, _)| *l != loc);
        self.next_overrides.push((loc, value));
    }

    /// The BARs the device implements.
    pub fn bars(&self) -> &[BarInfo] {
        &self.bars
    }

    /// The MSI-X capability, if any.
    pub fn msix(&self) -> Option<MsixCap> {
        self.msix
    }

    /// The guest's MSI programming, if the MSI capability is emulated.
    pub fn msi(&self) -> Option<MsiConfig> {
        self.msi.as_ref().map(MsiState::config)
    }

    /// Whether an MSI capability was hidden from the guest.
    pub fn msi_hidden(&self) -> bool {
        !self.hidden.is_empty()
    }

    /// The guest-programmed address of `bar`.
    pub fn bar_addr(&self, bar: &BarInfo) -> u64 {
        let low_mask = if bar.kind == BarKind::Io { !0x3 } else { !0xf };
        let lo = u64::from(self.bar_regs[bar.index] & low_mask);
        let hi = if bar.kind == BarKind::Mem64 {
            u64::from(self.bar_regs[bar.index + 1])
        } else {
            0
        };
        hi << 32 | lo
    }

    /// Sets the address of `bar` (the VMM's placement).
    pub fn set_bar_addr(&mut self, bar: &BarInfo, addr: u64) {
        let flags = self.bar_regs[bar.index] & if bar.kind == BarKind::Io { 0x3 } else { 0xf };
        self.bar_regs[bar.index] = (addr as u32 & self.bar_masks[bar.index]) | flags;
        if bar.kind == BarKind::Mem64 {
            self.bar_regs[bar.index + 1] = (addr >> 32) as u32;
        }
    }

    /// True when `reg` never reaches the device on reads.
    pub fn read_is_emulated(&self, reg: usize) -> bool {
        (BAR0_REG..BAR0_REG + 6).contains(&reg) || reg == ROM_REG || reg >= LEGACY_REGS
    }

    /// The value the guest sees for `reg`, given the device's value
    /// (ignored for emulated registers) and the MSI-X control bits.
    pub fn read(&self, reg: usize, device: u32, msix_ctrl_bits: u16) -> u32 {
        let mut v = match reg {
            r if (BAR0_REG..BAR0_REG + 6).contains(&r) => self.bar_regs[r - BAR0_REG],
            ROM_REG => 0,
            r if r >= LEGACY_REGS => 0,
            INTERRUPT_REG => (device & 0xffff_0000) | u32::from(self.interrupt_line),
            _ => device,
        };
        if let Some(m) = self.msix {
            if reg == m.offset / 4 {
                let ctrl_mask = u32::from(CTRL_ENABLE | CTRL_FUNCTION_MASK) << 16;
                v = (v & !ctrl_mask) | u32::from(msix_ctrl_bits) << 16;
            }
        }
        if let Some(msi) = &self.msi {
            for i in 0..4 {
                let byte = reg * 4 + i;
                if msi.contains(byte) && byte - msi.offset >= 2 {
                    let shift = i * 8;
                    let b = msi.bytes[byte - msi.offset];
                    v = (v & !(0xff << shift)) | u32::from(b) << shift;
                }
            }
        }
        for &(loc, value) in &self.next_overrides {
            if loc / 4 == reg {
                let shift = (loc % 4) * 8;
                v = (v & !(0xff << shift)) | u32::from(value) << shift;
            }
        }
        v
    }

    /// Classifies (and for VMM-owned registers applies) a guest write of
    /// `data` at byte `offset` within `reg`.
    pub fn write(&mut self, reg: usize, offset: u64, data: &[u8], device_ctrl: u32) -> WriteAction {
        let offset = offset as usize;
        if !matches!(data.len(), 1 | 2 | 4) || offset + data.len() > 4 {
            return WriteAction::Handled;
        }
        let byte = reg * 4 + offset;
        if reg >= LEGACY_REGS || reg == ROM_REG {
            return WriteAction::Handled;
        }
        if (BAR0_REG..BAR0_REG + 6).contains(&reg) {
            let i = reg - BAR0_REG;
            let mut bytes = self.bar_regs[i].to_le_bytes();
            bytes[offset..offset + data.len()].copy_from_slice(data);
            let flags_mask = if self.bar_masks[i] == 0 {
                0
            } else {
                self.bar_regs[i] & 0xf
            };
            let is_high_half = self
                .bars
                .iter()
                .any(|b| b.kind == BarKind::Mem64 && b.index + 1 == i);
            let flags = if is_high_half { 0 } else { flags_mask };
            self.bar_regs[i] = (u32::from_le_bytes(bytes) & self.bar_masks[i]) | flags;
            return WriteAction::Handled;
        }
        if reg == INTERRUPT_REG {
            if offset == 0 {
                self.interrupt_line = data[0];
            }
            return WriteAction::Handled;
        }
        if self
            .hidden
            .iter()
            .any(|&(start, len)| (start..start + len).contains(&byte))
        {
            return WriteAction::Handled;
        }
        if let Some(msi) = self.msi.as_mut() {
            if msi.contains(byte) {
                for (i, &d) in data.iter().enumerate() {
                    let rel = byte + i - msi.offset;
                    if rel < msi.bytes.len() {
                        let m = msi.writable(rel);
                        msi.bytes[rel] = (msi.bytes[rel] & !m) | (d & m);
                    }
                }
                return WriteAction::Msi;
            }
        }
        if let Some(m) = self.msix {
            if (m.offset..m.offset + 12).contains(&byte) {
                if reg == m.offset / 4 && offset + data.len() > 2 {
                    let mut bytes = device_ctrl.to_le_bytes();
                    bytes[offset..offset + data.len()].copy_from_slice(data);
                    let ctrl = u16::from_le_bytes([bytes[2], bytes[3]]);
                    return WriteAction::MsixControl(ctrl);
                }
                return WriteAction::Handled;
            }
        }
        if reg == COMMAND_REG && offset < 2 {
            return WriteAction::Command;
        }
        WriteAction::Forward
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An NVMe-like function: 64-bit BAR0 of 16 KiB, 32-bit I/O BAR2,
    /// capabilities PM (0x40) → MSI (0x50) → MSI-X (0x70) → PCIe (0x80).
    fn raw() -> Vec<u8> {
        let mut c = vec![0u8; 256];
        c[0..4].copy_from_slice(&0x0010_1b36u32.to_le_bytes());
        c[6] = 0x10;
        c[0x10] = 0x4;
        c[0x18] = 0x1;
        c[0x3d] = 1;
        c[0x34] = 0x40;
        c[0x40] = 0x01;
        c[0x41] = 0x50;
        c[0x50] = CAP_ID_MSI;
        c[0x51] = 0x70;
        c[0x52] = 0x80; // 64-bit
        c[0x70] = CAP_ID_MSIX;
        c[0x71] = 0x80;
        c[0x72..0x74].copy_from_slice(&63u16.to_le_bytes());
        c[0x74..0x78].copy_from_slice(&0x2000u32.to_le_bytes());
        c[0x78..0x7c].copy_from_slice(&0x3000u32.to_le_bytes());
        c[0x80] = 0x10;
        c
    }

    fn model() -> ConfigModel {
        ConfigModel::new(&raw(), [0x4000, 0, 0x100, 0, 0, 0], false)
    }

    #[test]
    fn bars_and_msix_are_discovered() {
        let m = model();
        assert_eq!(
            m.bars(),
            &[
                BarInfo {
                    index: 0,
                    size: 0x4000,
                    kind: BarKind::Mem64,
                    prefetchable: false
                },
                BarInfo {
                    index: 2,
                    size: 0x100,
                    kind: BarKind::Io,
                    prefetchable: false
                },
            ]
        );
        let x = m.msix().unwrap();
        assert_eq!(
            (
                x.offset,
                x.body.table_size,
                x.body.table_bar,
                x.body.table_offset
            ),
            (0x70, 64, 0, 0x2000)
        );
        assert_eq!(
            (x.body.pba_bar, x.body.pba_offset, x.body.pba_len()),
            (0, 0x3000, 8)
        );
        assert!(m.msi_hidden());
    }

    #[test]
    fn msi_is_unlinked_from_the_capability_list() {
        let m = model();
        let r = raw();
        let dev = |reg: usize| cfg_u32(&r, reg * 4);
        // PM's next pointer skips MSI and goes straight to MSI-X.
        assert_eq!((m.read(0x40 / 4, dev(0x40 / 4), 0) >> 8) & 0xff, 0x70);
        let mut model = model();
        assert_eq!(model.write(0x50 / 4, 2, &[1, 0], 0), WriteAction::Handled);
    }

    #[test]
    fn msi_is_emulated_when_vfio_offers_it() {
        let mut r = raw();
        // 64-bit, per-vector masking, 4 vectors capable.
        r[0x52..0x54].copy_from_slice(&(0x0180u16 | 2 << 1).to_le_bytes());
        let mut m = ConfigModel::new(&r, [0x4000, 0, 0x100, 0, 0, 0], true);
        let dev = |reg: usize| cfg_u32(&r, reg * 4);
        assert!(!m.msi_hidden());
        assert_eq!((m.read(0x40 / 4, dev(0x40 / 4), 0) >> 8) & 0xff, 0x50);
        assert_eq!(
            m.write(0x54 / 4, 0, &0xfee0_0000u32.to_le_bytes(), 0),
            WriteAction::Msi
        );
        m.write(0x58 / 4, 0, &1u32.to_le_bytes(), 0);
        m.write(0x5c / 4, 0, &0x4041u16.to_le_bytes(), 0);
        m.write(0x60 / 4, 0, &0b10u32.to_le_bytes(), 0);
        // Enable with MME = 2 (4 vectors); the capability bits stay read-only.
        m.write(0x50 / 4, 2, &(0x0001u16 | 2 << 4 | 0xff00).to_le_bytes(), 0);
        let c = m.msi().unwrap();
        assert_eq!(
            c,
            MsiConfig {
                enabled: true,
                vectors: 4,
                address: 0x1_fee0_0000,
                data: 0x4041,
                mask: 0b10
            }
        );
        assert_eq!(
            m.read(0x50 / 4, dev(0x50 / 4), 0) >> 16,
            0x0180 | 2 << 1 | 2 << 4 | 1
        );
        // Pending bits are read-only.
        m.write(0x64 / 4, 0, &[0xff; 4], 0);
        assert_eq!(m.read(0x64 / 4, 0xffff_ffff, 0), 0);
    }

    #[test]
    fn bar_sizing_and_placement() {
        let mut m = model();
        let bar0 = m.bars()[0];
        m.set_bar_addr(&bar0, 0x8_0000_0000);
        assert_eq!(m.read(4, 0, 0), 0x4);
        assert_eq!(m.read(5, 0, 0), 0x8);
        m.write(4, 0, &[0xff; 4], 0);
        m.write(5, 0, &[0xff; 4], 0);
        assert_eq!(m.read(4, 0, 0), 0xffff_c004);
        assert_eq!(m.read(5, 0, 0), 0xffff_ffff);
        m.write(4, 0, &0x4u32.to_le_bytes(), 0);
        m.write(5, 0, &0x8u32.to_le_bytes(), 0);
        assert_eq!(m.bar_addr(&bar0), 0x8_0000_0000);
        // I/O BAR keeps its type bit; unimplemented BARs read 0.
        m.write(6, 0, &[0xff; 4], 0);
        assert_eq!(m.read(6, 0, 0), 0xffff_ff01);
        m.write(8, 0, &[0xff; 4], 0);
        assert_eq!(m.read(8, 0, 0), 0);
    }

    #[test]
    fn vmm_owned_registers() {
        let mut m = model();
        assert_eq!(m.read(ROM_REG, 0xdead_beef, 0), 0);
        assert_eq!(m.read(0x100 / 4, 0xdead_beef, 0), 0);
        // Line is scratch; pin reads 0 whatever the device says (no INTx).
        m.write(INTERRUPT_REG, 0, &[11], 0);
        assert_eq!(m.read(INTERRUPT_REG, 0x0000_0100, 0) & 0xffff, 11);
        assert_eq!(m.write(1, 0, &[0x6, 0], 0), WriteAction::Command);
        assert_eq!(m.write(0x80 / 4, 0, &[0; 4], 0), WriteAction::Forward);
        // MSI-X control is intercepted; enable bit shows our state, not the device's.
        assert_eq!(
            m.write(0x70 / 4, 2, &0xc000u16.to_le_bytes(), 0x003f_8011),
            WriteAction::MsixControl(0xc000)
        );
        assert_eq!(m.read(0x70 / 4, 0x003f_8011, 0x8000) >> 16, 0x803f);
        assert_eq!(m.write(0x74 / 4, 0, &[0; 4], 0), WriteAction::Handled);
    }
}
