//! A KVM virtual machine monitor built for I/O performance work.
//!
//! `vstate` owns KVM (VM, vCPUs, interrupt routing), `memory` the memfd-backed
//! guest RAM, `boot` the Linux loader and ACPI tables, `devices` the legacy
//! devices, `pci` the PCI bus, and `machine` ties them into a running VM.

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
pub mod vstate;

pub use error::{Error, Result};
