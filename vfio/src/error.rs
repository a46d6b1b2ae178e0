// SPDX-License-Identifier: Apache-2.0
//! The crate's single error type. Messages are one line and name the fix.

use std::io;
use std::path::PathBuf;

/// Errors raised while validating, opening or running a passed-through device.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    /// The sysfs path does not exist.
    #[error("{0}: no such PCI device (list devices with `lspci -D` or `ls /sys/bus/pci/devices`)")]
    NoSuchDevice(PathBuf),
    /// The path is not of the form /sys/bus/pci/devices/DDDD:BB:DD.F.
    #[error("{0}: not a PCI device path (expected /sys/bus/pci/devices/DDDD:BB:DD.F)")]
    NotPciDevice(PathBuf),
    /// The device is bound to a host driver.
    #[error("{bdf} is bound to {driver}, not vfio-pci: run `scripts/vfio-bind.sh {bdf}` first")]
    WrongDriver {
        /// The device address.
        bdf: String,
        /// Its current driver.
        driver: String,
    },
    /// The device is bound to no driver at all.
    #[error("{bdf} is bound to no driver: run `scripts/vfio-bind.sh {bdf}` first")]
    Unbound {
        /// The device address.
        bdf: String,
    },
    /// The device has no IOMMU group: no IOMMU on this host.
    #[error("{bdf} has no IOMMU group: the host IOMMU is off (boot the host with `intel_iommu=on` or `amd_iommu=on`, or use the lab)")]
    NoIommu {
        /// The device address.
        bdf: String,
    },
    /// Another device in the group is still bound to a host driver.
    #[error("IOMMU group {group} of {bdf} is not viable: {other} is bound to {driver} (run `scripts/vfio-bind.sh {other}` too)")]
    GroupNotViable {
        /// The requested device.
        bdf: String,
        /// The group number.
        group: u32,
        /// The offending group member.
        other: String,
        /// The offending member's driver.
        driver: String,
    },
    /// The same device was given twice.
    #[error("{0} is given twice: pass each device once")]
    Duplicate(String),
    /// The VFIO container device is missing.
    #[error("/dev/vfio/vfio is missing: load the vfio-pci module (`modprobe vfio-pci`)")]
    NoVfioModule,
    /// Reading sysfs failed.
    #[error("{path}: {source}")]
    Sysfs {
        /// The file read.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A vfio-ioctls call failed.
    #[error("VFIO {what}: {source}")]
    Vfio {
        /// The operation.
        what: &'static str,
        /// The error from vfio-ioctls.
        source: vfio_ioctls::VfioError,
    },
    /// Creating the KVM VFIO pseudo-device failed.
    #[error("KVM_CREATE_DEVICE(VFIO): {0}")]
    KvmDevice(#[source] kvm_ioctls::Error),
    /// The VMM refused a request (memory slot, GSI, irqfd).
    #[error("VMM {what}: {source}")]
    Vmm {
        /// The operation.
        what: &'static str,
        /// The VMM's error.
        #[source]
        source: crate::device::OpsError,
    },
    /// An OS call failed.
    #[error("{what}: {source}")]
    Os {
        /// The operation.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The device exposes something this model cannot handle.
    #[error("{bdf}: unsupported device: {why}")]
    Unsupported {
        /// The device address.
        bdf: String,
        /// What is missing.
        why: String,
    },
}

/// Result alias for [`VfioError`].
pub type Result<T> = std::result::Result<T, VfioError>;

pub(crate) fn vfio_err(what: &'static str) -> impl FnOnce(vfio_ioctls::VfioError) -> VfioError {
    move |source| VfioError::Vfio { what, source }
}
