// SPDX-License-Identifier: Apache-2.0
//! The virtio-pci modern transport (virtio 1.x §4.1): what a guest driver
//! sees of every virtio device, whatever serves its queues.
//!
//! `common_cfg` and `queue` hold the register logic the driver programs (pure,
//! unit tested); `pci` ties them to a PCI function with one BAR, MSI-X,
//! ioeventfds for queue notifies and irqfds for interrupts, and hands the
//! queues to a [`VirtioDevice`](super::VirtioDevice) at DRIVER_OK.

pub mod common_cfg;
pub mod pci;
pub mod queue;

pub use pci::VirtioPciDevice;
pub use queue::QueueState;
