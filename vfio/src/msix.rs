//! MSI-X table emulation. The guest's table writes never reach the device:
//! they become KVM MSI routes for the per-vector GSIs, and the host kernel
//! programs the physical table through VFIO_DEVICE_SET_IRQS.

/// MSI-X table entry size in bytes.
pub const ENTRY_SIZE: u64 = 16;
/// Vector control bit: masked.
const ENTRY_MASKED: u32 = 1;
/// Message control: MSI-X enable.
pub const CTRL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
pub const CTRL_FUNCTION_MASK: u16 = 1 << 14;

/// An MSI message (address and data) as the guest programmed it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Low 32 bits of the address.
    pub address_lo: u32,
    /// High 32 bits of the address.
    pub address_hi: u32,
    /// Message data.
    pub data: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    msg: MsiMessage,
    control: u32,
}

impl Default for Entry {
    fn default() -> Self {
        // Reset state: every vector masked.
        Self {
            msg: MsiMessage::default(),
            control: ENTRY_MASKED,
        }
    }
}

/// The emulated table plus the enable/function-mask bits of message control.
#[derive(Debug)]
pub struct MsixTable {
    entries: Vec<Entry>,
    enabled: bool,
    function_masked: bool,
}

impl MsixTable {
    /// A reset table of `n` vectors.
    pub fn new(n: usize) -> Self {
        Self {
            entries: vec![Entry::default(); n],
            enabled: false,
            function_masked: false,
        }
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the table has no vectors.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// MSI-X enabled by the guest.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The enable and function-mask bits as they appear in message control.
    pub fn control_bits(&self) -> u16 {
        (if self.enabled { CTRL_ENABLE } else { 0 })
            | (if self.function_masked {
                CTRL_FUNCTION_MASK
            } else {
                0
            })
    }

    /// Applies a guest write to message control; returns the previous enable state.
    pub fn set_control(&mut self, ctrl: u16) -> bool {
        let was = self.enabled;
        self.enabled = ctrl & CTRL_ENABLE != 0;
        self.function_masked = ctrl & CTRL_FUNCTION_MASK != 0;
        was
    }

    /// The message of vector `v` if it may fire now (enabled, unmasked).
    pub fn active_message(&self, v: usize) -> Option<MsiMessage> {
        let e = self.entries.get(v)?;
        (self.enabled && !self.function_masked && e.control & ENTRY_MASKED == 0).then_some(e.msg)
    }

    /// Reads `data.len()` bytes (4 or 8) at `offset` in the table; anything
    /// else reads as all-ones.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if !matches!(data.len(), 4 | 8) || !offset.is_multiple_of(4) {
            return;
        }
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            if let Some(v) = self.dword(offset + 4 * i as u64) {
                chunk.copy_from_slice(&v.to_le_bytes());
            }
        }
    }

    fn dword(&self, offset: u64) -> Option<u32> {
        let e = self
            .entries
            .get(usize::try_from(offset / ENTRY_SIZE).ok()?)?;
        Some(match (offset % ENTRY_SIZE) / 4 {
            0 => e.msg.address_lo,
            1 => e.msg.address_hi,
            2 => e.msg.data,
            _ => e.control,
        })
    }

    /// Applies a guest write (4 or 8 bytes) at `offset`; returns the vectors
    /// whose routing may have changed. Malformed writes are ignored.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Vec<usize> {
        let mut touched = Vec::new();
        if !matches!(data.len(), 4 | 8) || !offset.is_multiple_of(4) {
            return touched;
        }
        for (i, chunk) in data.chunks(4).enumerate() {
            let off = offset + 4 * i as u64;
            let Ok(v) = usize::try_from(off / ENTRY_SIZE) else {
                continue;
            };
            let Some(e) = self.entries.get_mut(v) else {
                continue;
            };
            let mut b = [0u8; 4];
            b.copy_from_slice(chunk);
            let val = u32::from_le_bytes(b);
            match (off % ENTRY_SIZE) / 4 {
                0 => e.msg.address_lo = val,
                1 => e.msg.address_hi = val,
                2 => e.msg.data = val,
                _ => e.control = val & ENTRY_MASKED,
            }
            if !touched.contains(&v) {
                touched.push(v);
            }
        }
        touched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_start_masked_and_fire_only_when_enabled_and_unmasked() {
        let mut t = MsixTable::new(4);
        assert_eq!(t.active_message(0), None);
        assert_eq!(t.write(16, &0xfee0_1000u32.to_le_bytes()), vec![1]);
        t.write(24, &0x41u32.to_le_bytes());
        t.write(28, &0u32.to_le_bytes());
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
        t.write(0, &0x0000_0001_fee0_0000u64.to_le_bytes());
        let mut q = [0u8; 8];
        t.read(0, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0x0000_0001_fee0_0000);
        // Out of range, unaligned and odd-sized accesses do not panic.
        assert!(t.write(32, &[0; 4]).is_empty());
        assert!(t.write(2, &[0; 4]).is_empty());
        assert!(t.write(0, &[0; 2]).is_empty());
        let mut d = [0u8; 4];
        t.read(4096, &mut d);
        assert_eq!(d, [0xff; 4]);
        t.read(12, &mut d);
        assert_eq!(u32::from_le_bytes(d), 1, "control reads back masked");
    }
}
