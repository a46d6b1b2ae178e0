// SPDX-License-Identifier: Apache-2.0
//! A KVM virtual machine monitor built for I/O performance work.
//!
//! * [`machine`] — builds a VM from a [`config::VmConfig`], runs its vCPUs and
//!   event loop, and tears it down;
//! * [`device_manager`] — creates the devices and owns the buses, the PCI bus
//!   and the 64-bit BAR window;
//! * [`vstate`] — KVM: the VM, vCPUs, interrupt routing, exits;
//! * [`memory`] — memfd-backed guest RAM (shareable with vhost-user backends);
//! * [`boot`] — the Linux loader and ACPI tables;
//! * [`pci`] — the PCI bus, config-space access (CF8/CFC, ECAM), BAR mapping
//!   and MSI-X routes (the MSI-X table itself is the `pci` crate's);
//! * [`devices`] — the devices, one tier each for the I/O paths compared:
//!   virtio with a vhost-user backend or with in-VMM queue threads
//!   (`devices::virtio`), emulated NVMe and e1000 (every access traps), and
//!   VFIO passthrough; plus the legacy devices;
//! * [`check`] — `vmm check`: what this host can run;
//! * [`api`] — the API socket (`--api-socket`) and its client (`vmm remote`);
//! * [`seccomp`] — what each kind of thread may call.

pub mod api;
pub mod boot;
pub mod check;
pub mod config;
pub mod device_manager;
pub mod devices;
pub mod error;
pub mod layout;
pub mod machine;
pub mod memory;
pub mod pci;
pub mod seccomp;
pub mod vstate;

pub use error::{Error, Result};
