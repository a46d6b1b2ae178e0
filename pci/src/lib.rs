// SPDX-License-Identifier: Apache-2.0
//! PCI building blocks shared by every PCI function the VMM presents: its
//! emulated devices (virtio, NVMe) and VFIO passthrough.
//!
//! * [`msix`] — the MSI-X capability, vector table and pending-bit array a
//!   guest programs;
//! * [`MsiMessage`] — the address/data pair an MSI or MSI-X vector sends.
//!
//! Pure state with no KVM or VFIO knowledge: the VMM turns messages into
//! interrupt routes, the VFIO device model into VFIO irq set-up.

pub mod msix;

/// An MSI message (address and data) as the guest programmed it into an MSI
/// capability or an MSI-X table entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Low 32 bits of the address.
    pub address_lo: u32,
    /// High 32 bits of the address.
    pub address_hi: u32,
    /// Message data.
    pub data: u32,
}
