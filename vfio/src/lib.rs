// SPDX-License-Identifier: Apache-2.0
//! VFIO PCI passthrough: a host PCI function bound to `vfio-pci` presented to
//! a KVM guest.
//!
//! The crate knows nothing about the VMM's other devices. What it needs from
//! the VMM (memory slots for BARs, GSIs, MSI routes, irqfds) goes through the
//! [`VmmOps`] trait; what the VMM needs from it (config space, trapped BAR
//! accesses) is on [`VfioPciDevice`]. The guest's MSI-X table is emulated with
//! the `pci` crate's [`pci::msix::MsixTable`], the one the VMM's own devices use.

pub mod error;
pub mod sysfs;

pub use error::{Result, VfioError};
pub use sysfs::{check_device, check_devices, CheckedDevice};
pub mod config;
pub mod context;
pub mod device;

pub use config::{BarInfo, BarKind};
pub use context::VfioContext;
pub use device::{OpsError, VfioPciDevice, VmmOps};
pub use pci::MsiMessage;
