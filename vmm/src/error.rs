// SPDX-License-Identifier: Apache-2.0
//! The crate's error type: every failure a user of `vmm` can see, with the
//! context that tells them what to fix.

use std::io;
use std::path::PathBuf;

/// Errors raised by the `vmm` crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or opening a host file failed.
    #[error("{path}: {source}")]
    HostFile {
        /// The file that was accessed.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// A KVM ioctl failed.
    #[error("KVM: {0}")]
    Kvm(#[from] kvm_ioctls::Error),
    /// A step of the io_uring probe failed.
    #[error("io_uring: {what}: {source}")]
    IoUring {
        /// The step.
        what: &'static str,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// A step of the memfd probe (memfd_create, ftruncate, mmap, read back) failed.
    #[error("memfd: {what}: {source}")]
    Memfd {
        /// The step.
        what: &'static str,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// Serializing a report failed.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// An invalid configuration value.
    #[error("{0}")]
    Config(String),
    /// The file given with `--serial file=` could not be opened.
    #[error("--serial file={}: {source}", path.display())]
    SerialFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The 64-bit PCI window could not be set up for BAR allocation.
    #[error("64-bit PCI window: {0}")]
    PciWindow(#[source] vm_allocator::Error),
    /// A configuration value that failed to parse.
    #[error(transparent)]
    ConfigValue(#[from] crate::config::ConfigError),
    /// Creating the VM failed.
    #[error(transparent)]
    Vm(#[from] crate::vstate::vm::VmError),
    /// Creating a vCPU failed.
    #[error(transparent)]
    Vcpu(#[from] crate::vstate::vcpu::VcpuError),
    /// Guest memory could not be created.
    #[error(transparent)]
    Memory(#[from] crate::memory::MemoryError),
    /// Loading the kernel, initramfs or command line failed.
    #[error(transparent)]
    Boot(#[from] crate::boot::loader::BootError),
    /// Writing ACPI tables failed.
    #[error(transparent)]
    Acpi(#[from] crate::boot::acpi::AcpiError),
    /// Interrupt routing failed.
    #[error(transparent)]
    Interrupt(#[from] crate::vstate::interrupts::InterruptError),
    /// A device could not be placed on a bus.
    #[error("device placement: {0}")]
    Bus(#[from] crate::devices::bus::BusError),
    /// A PCI bus error.
    #[error(transparent)]
    Pci(#[from] crate::pci::bus::PciError),
    /// A virtio device failed.
    #[error(transparent)]
    Virtio(#[from] crate::devices::virtio::VirtioError),
    /// A passed-through device could not be set up.
    #[error(transparent)]
    Vfio(#[from] vfio::VfioError),
    /// An NVMe controller could not be created.
    #[error(transparent)]
    Nvme(#[from] crate::devices::nvme::NvmeError),
    /// A seccomp filter could not be installed.
    #[error(transparent)]
    Seccomp(backends::Error),
    /// A NIC could not be created.
    #[error(transparent)]
    Net(#[from] crate::devices::e1000::NetError),
    /// The API socket could not be created.
    #[error("--api-socket: {0}")]
    ApiSocket(#[source] minihttp::Error),
    /// The metrics endpoint could not be served.
    #[error("--metrics: {0}")]
    Metrics(String),
    /// A vCPU thread did not stop (pause) in time.
    #[error("vCPU {0} did not pause in time")]
    PauseTimeout(usize),
    /// An OS call failed.
    #[error("{0}")]
    Io(#[source] io::Error),
}

/// Result alias for [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
