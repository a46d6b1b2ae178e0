// SPDX-License-Identifier: Apache-2.0
//! The PCI root bus: configuration space through ports 0xCF8/0xCFC and ECAM,
//! a host bridge at 00:00.0, and the device trait the VMM's PCI devices
//! implement; `config` builds their configuration headers, `bar_map` maps
//! their BARs, and `msix` gives them MSI-X (the `pci` crate's table, which
//! VFIO passthrough shares, plus KVM routes).

pub mod bar_map;
pub mod bus;
pub mod config;
pub mod msix;

pub use ::pci::MsiMessage;
pub use bus::{PciBus, PciConfigIo, PciEcam};
pub use config::PciConfig;

/// A device on the PCI bus.
pub trait PciDevice: Send {
    /// Reads the 32-bit configuration register `reg` (dword index).
    fn read_config(&mut self, reg: usize) -> u32;
    /// Writes `data` (1, 2 or 4 bytes) at byte `offset` within dword `reg`.
    fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]);
}

/// The host bridge at 00:00.0 (Red Hat's ID for a generic PCIe host bridge).
pub struct HostBridge {
    config: PciConfig,
}

impl HostBridge {
    /// A host bridge with no BARs.
    pub fn new() -> Self {
        Self {
            config: PciConfig::new(config::PciIds {
                vendor: 0x1b36,
                device: 0x0008,
                class: 0x06_00_00,
                revision: 0,
                subsystem_vendor: 0x1b36,
                subsystem: 0,
            }),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for HostBridge {
    fn read_config(&mut self, reg: usize) -> u32 {
        self.config.read(reg)
    }

    fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]) {
        self.config.write(reg, offset, data);
    }
}
