// SPDX-License-Identifier: Apache-2.0
//! PCI bus 0 and its two configuration mechanisms (legacy port I/O and ECAM).

use std::sync::{Arc, Mutex};

use super::PciDevice;
use crate::devices::bus::{lock, BusDevice};

/// Device slots on bus 0.
pub const SLOTS: usize = 32;

/// Errors while adding devices.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    /// Every slot is taken.
    #[error("no free PCI slot on bus 0")]
    BusFull,
}

/// Bus 0: one single-function device per slot.
pub struct PciBus {
    slots: Vec<Option<Arc<Mutex<dyn PciDevice>>>>,
}

impl PciBus {
    /// A bus with the host bridge in slot 0.
    pub fn new() -> Self {
        let mut slots: Vec<Option<Arc<Mutex<dyn PciDevice>>>> = vec![None; SLOTS];
        slots[0] = Some(Arc::new(Mutex::new(super::HostBridge::new())));
        Self { slots }
    }

    /// Puts `dev` in the first free slot and returns the slot number.
    pub fn add(&mut self, dev: Arc<Mutex<dyn PciDevice>>) -> Result<u8, PciError> {
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(PciError::BusFull)?;
        self.slots[slot] = Some(dev);
        Ok(slot as u8)
    }

    fn device(&self, bus: u8, slot: u8, function: u8) -> Option<&Arc<Mutex<dyn PciDevice>>> {
        if bus != 0 || function != 0 {
            return None;
        }
        self.slots.get(usize::from(slot))?.as_ref()
    }

    /// Reads dword `reg` of bus/slot/function; absent functions read all-ones.
    pub fn read(&self, bus: u8, slot: u8, function: u8, reg: usize) -> u32 {
        match self.device(bus, slot, function) {
            Some(d) => lock(d).read_config(reg),
            None => u32::MAX,
        }
    }

    /// Writes within dword `reg` of bus/slot/function.
    pub fn write(&self, bus: u8, slot: u8, function: u8, reg: usize, offset: u64, data: &[u8]) {
        if let Some(d) = self.device(bus, slot, function) {
            lock(d).write_config(reg, offset, data);
        }
    }
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

fn read_dword_part(value: u32, offset: u64, data: &mut [u8]) {
    let bytes = value.to_le_bytes();
    let start = (offset as usize).min(4);
    let end = (start + data.len()).min(4);
    data.fill(0xff);
    data[..end - start].copy_from_slice(&bytes[start..end]);
}

/// Configuration mechanism #1: address at 0xCF8, data at 0xCFC–0xCFF.
pub struct PciConfigIo {
    bus: Arc<Mutex<PciBus>>,
    address: u32,
}

impl PciConfigIo {
    /// Ports covered, starting at 0xCF8.
    pub const PORTS: u64 = 8;

    /// The port pair for `bus`.
    pub fn new(bus: Arc<Mutex<PciBus>>) -> Self {
        Self { bus, address: 0 }
    }

    fn target(&self) -> Option<(u8, u8, u8, usize)> {
        if self.address & 0x8000_0000 == 0 {
            return None;
        }
        let a = self.address;
        Some((
            (a >> 16) as u8,
            ((a >> 11) & 0x1f) as u8,
            ((a >> 8) & 0x7) as u8,
            ((a & 0xfc) >> 2) as usize,
        ))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset < 4 {
            read_dword_part(self.address, offset, data);
            return;
        }
        let value = match self.target() {
            Some((b, s, f, r)) => lock(&self.bus).read(b, s, f, r),
            None => u32::MAX,
        };
        read_dword_part(value, offset - 4, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.len() == 4 {
            let mut b = [0u8; 4];
            b.copy_from_slice(data);
            self.address = u32::from_le_bytes(b);
        } else if offset >= 4 {
            if let Some((b, s, f, r)) = self.target() {
                lock(&self.bus).write(b, s, f, r, offset - 4, data);
            }
        }
    }
}

/// PCIe enhanced configuration access (memory-mapped, 4 KiB per function).
pub struct PciEcam {
    bus: Arc<Mutex<PciBus>>,
}

impl PciEcam {
    /// ECAM over `bus`.
    pub fn new(bus: Arc<Mutex<PciBus>>) -> Self {
        Self { bus }
    }

    fn decode(offset: u64) -> (u8, u8, u8, usize, u64) {
        (
            ((offset >> 20) & 0xff) as u8,
            ((offset >> 15) & 0x1f) as u8,
            ((offset >> 12) & 0x7) as u8,
            ((offset & 0xfff) >> 2) as usize,
            offset & 0x3,
        )
    }
}

impl BusDevice for PciEcam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let (b, s, f, r, o) = Self::decode(offset);
        let value = lock(&self.bus).read(b, s, f, r);
        read_dword_part(value, o, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (b, s, f, r, o) = Self::decode(offset);
        lock(&self.bus).write(b, s, f, r, o, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg_read(io: &mut PciConfigIo, slot: u32, reg: u32) -> u32 {
        io.write(0, &(0x8000_0000 | slot << 11 | reg << 2).to_le_bytes());
        let mut d = [0u8; 4];
        io.read(4, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn host_bridge_visible_on_both_mechanisms() {
        let bus = Arc::new(Mutex::new(PciBus::new()));
        let mut io = PciConfigIo::new(bus.clone());
        assert_eq!(cfg_read(&mut io, 0, 0), 0x0008_1b36);
        assert_eq!(cfg_read(&mut io, 1, 0), u32::MAX);
        let mut ecam = PciEcam::new(bus);
        let mut d = [0u8; 2];
        ecam.read(2, &mut d);
        assert_eq!(u16::from_le_bytes(d), 0x0008);
        ecam.read(1 << 15, &mut d);
        assert_eq!(d, [0xff, 0xff]);
        // Class code: host bridge.
        let mut c = [0u8; 4];
        ecam.read(8, &mut c);
        assert_eq!(u32::from_le_bytes(c) >> 8, 0x06_00_00);
    }

    #[test]
    fn odd_accesses_do_not_panic() {
        let bus = Arc::new(Mutex::new(PciBus::new()));
        let mut io = PciConfigIo::new(bus.clone());
        let mut d = [0u8; 4];
        io.read(7, &mut d);
        io.write(3, &[1, 2, 3, 4]);
        let mut ecam = PciEcam::new(bus);
        ecam.read(3, &mut d);
        ecam.write(0xfff, &[1, 2, 3, 4]);
    }
}
