// SPDX-License-Identifier: Apache-2.0
//! An emulated Intel 82540EM (e1000) NIC: the emulated network tier. Every
//! register access traps to the VMM; transmit runs on the vCPU thread that
//! wrote TDT, receive on the TAP reader thread, both under the device lock.
//!
//! * [`phy`] — the microwire EEPROM (MAC address, checksum) and the MII PHY.
//! * [`nic`] — registers, interrupt causes, transmit and receive rings.
//! * [`pci`] — the PCI function (class 02:00:00, BAR0, INTx through an irqfd).
//! * [`tap`] — the host side: a TAP interface (the `backends` crate's type)
//!   and its reader thread.
//!
//! TCP segmentation offload (IPv4 and IPv6) and IP/TCP/UDP checksum insertion
//! are done in software. Not implemented: receive checksum offload, VLAN
//! filtering, interrupt moderation timers, jumbo frames.

pub mod nic;
pub mod pci;
pub mod phy;
pub mod tap;
#[cfg(test)]
mod tests;

pub use nic::{Irq, NetSink, E1000};

/// Errors setting up the NIC.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The TAP device could not be opened or configured.
    #[error(transparent)]
    Tap(#[from] backends::Error),
    /// The reader thread could not start.
    #[error("e1000: {0}")]
    Thread(#[source] std::io::Error),
}
