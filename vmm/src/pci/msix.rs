//! MSI-X: the capability's control bits, the vector table and the pending-bit
//! array, plus the KVM side (one GSI per vector whose MSI route follows the
//! guest's table entry). The transport decides which eventfds to bind to
//! which GSI from [`MsixState::active_gsi`].

use std::sync::Arc;

use crate::vstate::interrupts::{InterruptError, IrqRouting, MsiMessage};

/// PCI capability ID of MSI-X.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Bytes per table entry.
pub const ENTRY_SIZE: u64 = 16;
const CTRL_ENABLE: u16 = 1 << 15;
const CTRL_FUNCTION_MASK: u16 = 1 << 14;
const ENTRY_MASKED: u32 = 1;

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

/// The guest-visible MSI-X state.
pub struct MsixTable {
    entries: Vec<MsixEntry>,
    pending: Vec<bool>,
    /// MSI-X enable (message control bit 15).
    pub enabled: bool,
    /// Function mask (message control bit 14).
    pub function_masked: bool,
}

impl MsixTable {
    /// A table of `vectors` entries, all masked.
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

    /// The capability body after the 2-byte header: message control, table
    /// offset/BIR, PBA offset/BIR.
    pub fn capability_body(&self, bar: u8, table_offset: u32, pba_offset: u32) -> [u8; 10] {
        let mut b = [0u8; 10];
        let ctrl = self.len().saturating_sub(1) & 0x7ff;
        b[0..2].copy_from_slice(&ctrl.to_le_bytes());
        b[2..6].copy_from_slice(&(table_offset | u32::from(bar)).to_le_bytes());
        b[6..10].copy_from_slice(&(pba_offset | u32::from(bar)).to_le_bytes());
        b
    }

    /// Applies the message control word the guest wrote.
    pub fn set_control(&mut self, ctrl: u16) {
        self.enabled = ctrl & CTRL_ENABLE != 0;
        self.function_masked = ctrl & CTRL_FUNCTION_MASK != 0;
    }

    /// Whether `vector` may be delivered now.
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

    /// A guest read in the table; only aligned 4- and 8-byte accesses
    /// inside the table return data, anything else reads as zero.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some((index, field)) = self.decode(offset, data.len()) else {
            return;
        };
        let e = &self.entries[index];
        let words = [e.msg.address_lo, e.msg.address_hi, e.msg.data, e.control];
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            chunk.copy_from_slice(&words[field + i].to_le_bytes());
        }
    }

    /// A guest write in the table; returns the vector it changed.
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
        let first_bit = offset * 8;
        for (byte_i, byte) in data.iter_mut().enumerate() {
            for bit in 0..8u64 {
                let v = first_bit + byte_i as u64 * 8 + bit;
                if v < u64::from(self.len()) && (self.pending(v as u16) || extra(v as u16)) {
                    *byte |= 1 << bit;
                }
            }
        }
    }
}

/// One KVM GSI per vector, routed to the vector's current message.
pub struct MsixRoutes {
    routing: Arc<IrqRouting>,
    gsis: Vec<u32>,
}

impl MsixRoutes {
    /// Allocates `vectors` GSIs.
    pub fn new(routing: Arc<IrqRouting>, vectors: u16) -> Result<Self, InterruptError> {
        let mut gsis = Vec::new();
        for _ in 0..vectors {
            match routing.allocate_gsi() {
                Ok(g) => gsis.push(g),
                Err(e) => {
                    for g in gsis {
                        let _ = routing.release_gsi(g);
                    }
                    return Err(e);
                }
            }
        }
        Ok(Self { routing, gsis })
    }

    /// The GSI of `vector`.
    pub fn gsi(&self, vector: u16) -> Option<u32> {
        self.gsis.get(usize::from(vector)).copied()
    }

    /// Points the vector's GSI at the entry's message.
    pub fn update(&self, table: &MsixTable, vector: u16) {
        if let (Some(gsi), Some(e)) = (self.gsi(vector), table.entry(vector)) {
            if let Err(e) = self.routing.set_msi_route(gsi, e.msg) {
                tracing::warn!("MSI-X vector {vector}: cannot route GSI {gsi}: {e}");
            }
        }
    }

    /// The routing table (for irqfd registration).
    pub fn routing(&self) -> &IrqRouting {
        &self.routing
    }
}

impl Drop for MsixRoutes {
    fn drop(&mut self) {
        for &g in &self.gsis {
            let _ = self.routing.release_gsi(g);
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
        t.read_table(60, &mut d);
        assert_eq!(d, [0; 4]);
        t.read_table(1, &mut d);
        assert_eq!(d, [0; 4]);
        // 8-byte access covers address lo/hi.
        t.write_table(32, &0x1234_5678_fee0_1000u64.to_le_bytes());
        let mut q = [0u8; 8];
        t.read_table(32, &mut q);
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
}
