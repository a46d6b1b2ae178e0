// SPDX-License-Identifier: Apache-2.0
//! MSI-X (PCI Local Bus 3.0 §6.8.2): the capability (where the table and the
//! pending-bit array live), the vector table the guest programs, and the
//! pending bits of vectors that fired while masked.
//!
//! Guest accesses to the table and PBA must be aligned DWORDs or QWORDs
//! (§6.8.2.1); anything else is ignored and reads as zero.

use crate::MsiMessage;

/// PCI capability ID of MSI-X.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Bytes per table entry.
pub const ENTRY_SIZE: u64 = 16;
/// Message control: MSI-X enable.
pub const CTRL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
pub const CTRL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: masked.
const ENTRY_MASKED: u32 = 1;
/// Message control: table size minus one.
const CTRL_TABLE_SIZE: u16 = 0x7ff;
/// Table/PBA offset registers: the BAR indicator bits.
const BIR_MASK: u32 = 7;

/// The MSI-X capability's body: the table size and where the table and the
/// PBA live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixCapability {
    /// Number of vectors.
    pub table_size: u16,
    /// BAR holding the table.
    pub table_bar: usize,
    /// Offset of the table in that BAR.
    pub table_offset: u64,
    /// BAR holding the PBA.
    pub pba_bar: usize,
    /// Offset of the PBA in that BAR.
    pub pba_offset: u64,
}

impl MsixCapability {
    /// Decodes the capability's message control, table and PBA registers.
    pub fn from_registers(ctrl: u16, table: u32, pba: u32) -> Self {
        Self {
            table_size: (ctrl & CTRL_TABLE_SIZE) + 1,
            table_bar: (table & BIR_MASK) as usize,
            table_offset: u64::from(table & !BIR_MASK),
            pba_bar: (pba & BIR_MASK) as usize,
            pba_offset: u64::from(pba & !BIR_MASK),
        }
    }

    /// The capability body after the 2-byte header: message control (table
    /// size, MSI-X off), table offset/BIR and PBA offset/BIR.
    pub fn body(&self) -> [u8; 10] {
        let mut b = [0u8; 10];
        let ctrl = self.table_size.saturating_sub(1) & CTRL_TABLE_SIZE;
        let table = self.table_offset as u32 | (self.table_bar as u32 & BIR_MASK);
        let pba = self.pba_offset as u32 | (self.pba_bar as u32 & BIR_MASK);
        b[0..2].copy_from_slice(&ctrl.to_le_bytes());
        b[2..6].copy_from_slice(&table.to_le_bytes());
        b[6..10].copy_from_slice(&pba.to_le_bytes());
        b
    }

    /// Table length in bytes.
    pub fn table_len(&self) -> u64 {
        u64::from(self.table_size) * ENTRY_SIZE
    }

    /// PBA length in bytes (whole QWORDs).
    pub fn pba_len(&self) -> u64 {
        u64::from(self.table_size).div_ceil(64) * 8
    }
}

/// One table entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsixEntry {
    /// The message address and data.
    pub msg: MsiMessage,
    /// Vector control (bit 0: masked).
    pub control: u32,
}

impl MsixEntry {
    fn masked(&self) -> bool {
        self.control & ENTRY_MASKED != 0
    }
}

/// The guest-visible MSI-X state: the table, the pending bits and the enable
/// and function-mask bits of message control.
#[derive(Debug)]
pub struct MsixTable {
    entries: Vec<MsixEntry>,
    pending: Vec<bool>,
    enabled: bool,
    function_masked: bool,
}

impl MsixTable {
    /// A reset table of `vectors` entries: all masked, none pending.
    pub fn new(vectors: u16) -> Self {
        Self {
            entries: vec![
                MsixEntry {
                    control: ENTRY_MASKED,
                    ..Default::default()
                };
                usize::from(vectors)
            ],
            pending: vec![false; usize::from(vectors)],
            enabled: false,
            function_masked: false,
        }
    }

    /// Number of vectors.
    pub fn len(&self) -> u16 {
        self.entries.len() as u16
    }

    /// Whether the table has no vectors.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Table size in bytes.
    pub fn table_bytes(&self) -> u64 {
        self.entries.len() as u64 * ENTRY_SIZE
    }

    /// MSI-X enabled by the guest.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The enable and function-mask bits as they appear in message control.
    pub fn control_bits(&self) -> u16 {
        let enable = if self.enabled { CTRL_ENABLE } else { 0 };
        let mask = if self.function_masked {
            CTRL_FUNCTION_MASK
        } else {
            0
        };
        enable | mask
    }

    /// Applies the message control word the guest wrote.
    pub fn set_control(&mut self, ctrl: u16) {
        self.enabled = ctrl & CTRL_ENABLE != 0;
        self.function_masked = ctrl & CTRL_FUNCTION_MASK != 0;
    }

    /// Whether `vector` may be delivered now (MSI-X enabled, neither the
    /// function nor the vector masked).
    pub fn deliverable(&self, vector: u16) -> bool {
        self.enabled
            && !self.function_masked
            && self
                .entries
                .get(usize::from(vector))
                .is_some_and(|e| !e.masked())
    }

    /// The entry of `vector`, if it exists.
    pub fn entry(&self, vector: u16) -> Option<&MsixEntry> {
        self.entries.get(usize::from(vector))
    }

    /// The message of `vector` if it may be delivered now.
    pub fn active_message(&self, vector: u16) -> Option<MsiMessage> {
        self.deliverable(vector)
            .then(|| self.entry(vector).map(|e| e.msg))
            .flatten()
    }

    /// A guest read in the table. Returns whether the access was valid (an
    /// aligned DWORD or QWORD inside the table); invalid ones read as zero.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) -> bool {
        data.fill(0);
        let Some((index, field)) = self.decode(offset, data.len()) else {
            return false;
        };
        let e = &self.entries[index];
        let words = [e.msg.address_lo, e.msg.address_hi, e.msg.data, e.control];
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            chunk.copy_from_slice(&words[field + i].to_le_bytes());
        }
        true
    }

    /// A guest write in the table; returns the vector it changed (`None` for
    /// an invalid access, which is ignored). Only the mask bit of vector
    /// control is writable.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> Option<u16> {
        let (index, field) = self.decode(offset, data.len())?;
        let e = &mut self.entries[index];
        for (i, chunk) in data.chunks(4).enumerate() {
            let mut w = [0u8; 4];
            w.copy_from_slice(chunk);
            let v = u32::from_le_bytes(w);
            match field + i {
                0 => e.msg.address_lo = v,
                1 => e.msg.address_hi = v,
                2 => e.msg.data = v,
                _ => e.control = v & ENTRY_MASKED,
            }
        }
        Some(index as u16)
    }

    /// (entry, first DWORD) of a valid access, which stays inside one entry.
    fn decode(&self, offset: u64, len: usize) -> Option<(usize, usize)> {
        let aligned = match len {
            4 => offset.is_multiple_of(4),
            8 => offset.is_multiple_of(8),
            _ => false,
        };
        if !aligned || offset.checked_add(len as u64)? > self.table_bytes() {
            return None;
        }
        Some((
            (offset / ENTRY_SIZE) as usize,
            ((offset % ENTRY_SIZE) / 4) as usize,
        ))
    }

    /// Records a message that could not be delivered (vector masked).
    pub fn set_pending(&mut self, vector: u16, pending: bool) {
        if let Some(p) = self.pending.get_mut(usize::from(vector)) {
            *p = pending;
        }
    }

    /// Whether `vector` has its pending bit set.
    pub fn pending(&self, vector: u16) -> bool {
        self.pending
            .get(usize::from(vector))
            .copied()
            .unwrap_or(false)
    }

    /// A guest read of the PBA; `extra(v)` reports pending state held
    /// elsewhere (an undelivered eventfd count).
    pub fn read_pba(&self, offset: u64, data: &mut [u8], extra: impl Fn(u16) -> bool) {
        data.fill(0);
        let first_bit = offset.saturating_mul(8);
        for (byte_i, byte) in data.iter_mut().enumerate() {
            for bit in 0..8u64 {
                let v = first_bit.saturating_add(byte_i as u64 * 8 + bit);
                if v < u64::from(self.len()) && (self.pending(v as u16) || extra(v as u16)) {
                    *byte |= 1 << bit;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_accesses_are_validated() {
        let mut t = MsixTable::new(3);
        assert_eq!(t.write_table(16, &0xfee0_0000u32.to_le_bytes()), Some(1));
        assert_eq!(t.write_table(24, &0x41u32.to_le_bytes()), Some(1));
        assert_eq!(t.entry(1).unwrap().msg.address_lo, 0xfee0_0000);
        assert_eq!(t.entry(1).unwrap().msg.data, 0x41);
        // Outside the table, unaligned or odd sizes: ignored, read as zero.
        assert_eq!(t.write_table(48, &[0xff; 4]), None);
        assert_eq!(t.write_table(44 + 4, &[0xff; 4]), None);
        assert_eq!(t.write_table(2, &[0xff; 4]), None);
        assert_eq!(t.write_table(0, &[0xff; 2]), None);
        assert_eq!(t.write_table(0, &[0xff; 3]), None);
        assert_eq!(t.write_table(u64::MAX - 3, &[0xff; 4]), None);
        let mut d = [0xaau8; 4];
        assert!(!t.read_table(60, &mut d));
        assert_eq!(d, [0; 4]);
        assert!(!t.read_table(1, &mut d));
        assert_eq!(d, [0; 4]);
        // 8-byte access covers address lo/hi.
        t.write_table(32, &0x1234_5678_fee0_1000u64.to_le_bytes());
        let mut q = [0u8; 8];
        assert!(t.read_table(32, &mut q));
        assert_eq!(u64::from_le_bytes(q), 0x1234_5678_fee0_1000);
    }

    #[test]
    fn masking_and_pending() {
        let mut t = MsixTable::new(2);
        assert!(!t.deliverable(0), "entries start masked, MSI-X disabled");
        t.set_control(CTRL_ENABLE);
        assert!(!t.deliverable(0));
        t.write_table(12, &0u32.to_le_bytes());
        assert!(t.deliverable(0));
        t.set_control(CTRL_ENABLE | CTRL_FUNCTION_MASK);
        assert!(!t.deliverable(0));
        assert!(!t.deliverable(7));
        t.set_pending(1, true);
        t.set_pending(9, true);
        let mut d = [0u8; 8];
        t.read_pba(0, &mut d, |v| v == 0);
        assert_eq!(d[0], 0b11);
        t.read_pba(0, &mut d, |_| false);
        assert_eq!(d[0], 0b10);
        // Only bit 0 of vector control is writable.
        t.write_table(28, &u32::MAX.to_le_bytes());
        assert_eq!(t.entry(1).unwrap().control, 1);
    }

    #[test]
    fn vectors_start_masked_and_fire_only_when_enabled_and_unmasked() {
        let mut t = MsixTable::new(4);
        assert_eq!(t.active_message(0), None);
        assert_eq!(t.write_table(16, &0xfee0_1000u32.to_le_bytes()), Some(1));
        t.write_table(24, &0x41u32.to_le_bytes());
        t.write_table(28, &0u32.to_le_bytes());
        assert_eq!(t.active_message(1), None, "MSI-X not enabled yet");
        t.set_control(CTRL_ENABLE | CTRL_FUNCTION_MASK);
        assert_eq!(t.active_message(1), None, "function masked");
        t.set_control(CTRL_ENABLE);
        let m = t.active_message(1).unwrap();
        assert_eq!((m.address_lo, m.data), (0xfee0_1000, 0x41));
        assert_eq!(t.active_message(0), None, "vector 0 still masked");
        assert_eq!(t.control_bits(), CTRL_ENABLE);
    }

    #[test]
    fn qword_access_and_bounds() {
        let mut t = MsixTable::new(2);
        t.write_table(0, &0x0000_0001_fee0_0000u64.to_le_bytes());
        let mut q = [0u8; 8];
        t.read_table(0, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0x0000_0001_fee0_0000);
        // Out of range, unaligned and odd-sized accesses do not panic.
        assert!(t.write_table(32, &[0; 4]).is_none());
        assert!(t.write_table(2, &[0; 4]).is_none());
        assert!(t.write_table(0, &[0; 2]).is_none());
        let mut d = [0u8; 4];
        assert!(!t.read_table(4096, &mut d), "out of range is reported");
        assert_eq!(d, [0; 4]);
        t.read_table(12, &mut d);
        assert_eq!(u32::from_le_bytes(d), 1, "control reads back masked");
    }

    #[test]
    fn capability_round_trip() {
        let cap = MsixCapability {
            table_size: 64,
            table_bar: 0,
            table_offset: 0x2000,
            pba_bar: 2,
            pba_offset: 0x3000,
        };
        let b = cap.body();
        assert_eq!(u16::from_le_bytes([b[0], b[1]]), 63);
        let reg = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        assert_eq!((reg(2), reg(6)), (0x2000, 0x3002));
        assert_eq!(
            MsixCapability::from_registers(u16::from_le_bytes([b[0], b[1]]), reg(2), reg(6)),
            cap
        );
        assert_eq!((cap.table_len(), cap.pba_len()), (64 * 16, 8));
    }
}
