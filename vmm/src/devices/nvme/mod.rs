// SPDX-License-Identifier: Apache-2.0
//! An emulated NVMe controller (NVMe 1.4 subset) with one namespace backed by a
//! file: the emulated tier. Every register and doorbell access is an MMIO exit
//! handled on the vCPU thread that made it, and commands run synchronously
//! there (pread/pwrite through a bounce buffer), which is exactly the cost
//! this tier exists to measure.
//!
//! * [`regs`] — controller registers (CAP, VS, CC, CSTS, AQA, ASQ, ACQ).
//! * [`prp`] — the single validating accessor for guest data: PRP1/PRP2 and
//!   PRP lists turned into checked guest-memory segments.
//! * [`ctrl`] — queues, doorbells, command fetch and completion posting.
//! * [`admin`] and [`io`] — the admin and NVM command sets.
//! * [`identify`] — Identify data structures.
//! * [`pci`] — the PCI function (class 01:08:02, BAR0, MSI-X).

pub mod admin;
pub mod ctrl;
pub mod identify;
pub mod io;
pub mod pci;
pub mod prp;
pub mod regs;
#[cfg(test)]
mod tests;

pub use ctrl::{Controller, Interrupts, Namespace, Storage};
pub use pci::NvmePciDevice;

/// Opens `path` and builds controller number `index` with `queues` I/O
/// queue pairs, placed at `bar_addr`.
#[allow(clippy::too_many_arguments)]
pub fn create(
    path: &std::path::Path,
    readonly: bool,
    queues: u16,
    index: usize,
    vm: std::sync::Arc<kvm_ioctls::VmFd>,
    buses: std::sync::Arc<crate::vstate::vcpu::IoBuses>,
    mem: vm_memory::GuestMemoryMmap,
    bar_addr: u64,
) -> Result<std::sync::Arc<std::sync::Mutex<NvmePciDevice>>, NvmeError> {
    let shown = path.display().to_string();
    let disk =
        backends::blk::Disk::open(path, readonly, false).map_err(|source| NvmeError::Open {
            path: shown.clone(),
            source,
        })?;
    let blocks = disk.size / LBA_SIZE;
    if blocks == 0 {
        return Err(NvmeError::TooSmall(shown));
    }
    let serial = format!("VMMNVME{index:04}");
    let ns = Namespace {
        storage: Box::new(disk.file),
        blocks,
        readonly,
    };
    let vectors = queues + 1;
    let ctrl = Controller::new(ns, queues, vectors, serial);
    tracing::info!(
        "nvme{index} {shown}: {blocks} blocks of {LBA_SIZE} bytes, {queues} I/O queue pair(s){}",
        if readonly { ", read-only" } else { "" }
    );
    Ok(NvmePciDevice::new(
        format!("nvme{index} {shown}"),
        ctrl,
        vectors,
        vm,
        buses,
        mem,
        bar_addr,
    ))
}

/// Logical block size exposed to the guest.
pub const LBA_SIZE: u64 = 512;
/// Memory page size (CC.MPS = 0 is the only one accepted).
pub const PAGE_SIZE: u64 = 4096;
/// Maximum data transfer size as a power of two of the page size (256 KiB).
pub const MDTS: u8 = 6;
/// Largest transfer in bytes.
pub const MAX_TRANSFER: u64 = PAGE_SIZE << MDTS;
/// Largest queue size (CAP.MQES + 1).
pub const MAX_QUEUE_ENTRIES: u16 = 1024;
/// Submission queue entry size (bytes).
pub const SQ_ENTRY: u64 = 64;
/// Completion queue entry size (bytes).
pub const CQ_ENTRY: u64 = 16;
/// Outstanding Asynchronous Event Requests accepted (Identify AERL + 1).
pub const MAX_AERS: usize = 4;

/// Errors setting up an NVMe controller (guest mistakes are NVMe statuses, not errors).
#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    /// The backing file could not be opened or sized.
    #[error("nvme {path}: {source}")]
    Open {
        /// The backing file.
        path: String,
        /// What went wrong.
        #[source]
        source: backends::Error,
    },
    /// The backing file is smaller than one logical block.
    #[error("nvme {0}: backing file smaller than 512 bytes")]
    TooSmall(String),
}

/// A completion status: Status Code Type, Status Code and Do Not Retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// Status Code Type (0 generic, 1 command specific, 2 media).
    pub sct: u8,
    /// Status Code.
    pub sc: u8,
}

impl Status {
    const fn generic(sc: u8) -> Self {
        Self { sct: 0, sc }
    }
    const fn specific(sc: u8) -> Self {
        Self { sct: 1, sc }
    }
    /// Successful Completion.
    pub const SUCCESS: Self = Self::generic(0x00);
    /// Invalid Command Opcode.
    pub const INVALID_OPCODE: Self = Self::generic(0x01);
    /// Invalid Field in Command.
    pub const INVALID_FIELD: Self = Self::generic(0x02);
    /// Data Transfer Error.
    pub const DATA_TRANSFER_ERROR: Self = Self::generic(0x04);
    /// Internal Error.
    pub const INTERNAL_ERROR: Self = Self::generic(0x06);
    /// Invalid Namespace or Format.
    pub const INVALID_NAMESPACE: Self = Self::generic(0x0b);
    /// PRP Offset Invalid.
    pub const PRP_OFFSET_INVALID: Self = Self::generic(0x13);
    /// Namespace is Write Protected.
    pub const NS_WRITE_PROTECTED: Self = Self::generic(0x20);
    /// LBA Out of Range.
    pub const LBA_OUT_OF_RANGE: Self = Self::generic(0x80);
    /// Completion Queue Invalid.
    pub const CQ_INVALID: Self = Self::specific(0x00);
    /// Invalid Queue Identifier.
    pub const INVALID_QUEUE_ID: Self = Self::specific(0x01);
    /// Invalid Queue Size.
    pub const INVALID_QUEUE_SIZE: Self = Self::specific(0x02);
    /// Asynchronous Event Request Limit Exceeded.
    pub const AER_LIMIT_EXCEEDED: Self = Self::specific(0x05);
    /// Invalid Interrupt Vector.
    pub const INVALID_VECTOR: Self = Self::specific(0x08);
    /// Invalid Log Page.
    pub const INVALID_LOG_PAGE: Self = Self::specific(0x09);
    /// Invalid Queue Deletion.
    pub const INVALID_QUEUE_DELETION: Self = Self::specific(0x0c);
    /// Feature Identifier Not Saveable.
    pub const FEATURE_NOT_SAVEABLE: Self = Self::specific(0x0d);

    /// The 15-bit status field of a completion entry (DW3 bits 31:17), with
    /// Do Not Retry set on every error: none of ours goes away on a retry.
    pub fn field(self) -> u16 {
        if self == Self::SUCCESS {
            return 0;
        }
        u16::from(self.sc) | (u16::from(self.sct & 7) << 8) | (1 << 14)
    }
}
