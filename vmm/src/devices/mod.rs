// SPDX-License-Identifier: Apache-2.0
//! Devices the vCPUs reach through port I/O and MMIO exits, by tier:
//!
//! | Tier                | Module                                 | Data path                       |
//! |---------------------|----------------------------------------|---------------------------------|
//! | vhost-user          | [`virtio::vhost_user`]                 | a backend process               |
//! | in-VMM virtio       | [`virtio::local`]                      | VMM queue threads               |
//! | emulated            | [`nvme`], [`e1000`]                    | vCPU threads, every access traps|
//! | passthrough         | [`vfio`] (glue to the `vfio` crate)    | the host device                 |
//!
//! The virtio tiers share [`virtio::transport`]; [`bus`] dispatches exits, and
//! [`serial`], [`i8042`] and [`power`] are the legacy devices (with the ACPI
//! power button); [`pause`] is how device threads stop for `vm.pause`.

pub mod bus;
pub mod e1000;
pub mod i8042;
pub mod nvme;
pub mod pause;
pub mod power;
pub mod serial;
pub mod vfio;
pub mod virtio;
