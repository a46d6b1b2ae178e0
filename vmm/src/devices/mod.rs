//! Devices the vCPUs reach through port I/O and MMIO exits.

pub mod bus;
pub mod e1000;
pub mod i8042;
pub mod nvme;
pub mod power;
pub mod serial;
pub mod vfio;
pub mod virtio;
