// SPDX-License-Identifier: Apache-2.0
//! One VFIO container per VM: the KVM VFIO pseudo-device, the type1 IOMMU
//! container every group joins, and the DMA map of all guest RAM.

use std::sync::Arc;

use kvm_bindings::{kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO};
use kvm_ioctls::VmFd;
use vfio_ioctls::{VfioContainer, VfioDeviceFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

use crate::error::{vfio_err, Result, VfioError};

/// The VM's VFIO container and DMA mappings.
pub struct VfioContext {
    container: Arc<VfioContainer>,
    /// (iova, size) of every range mapped with VFIO_IOMMU_MAP_DMA.
    mapped: Vec<(u64, u64)>,
}

impl VfioContext {
    /// Creates the KVM VFIO device and an (empty) container. Groups are
    /// added to both when devices are opened.
    pub fn new(vm: &VmFd) -> Result<Self> {
        if !std::path::Path::new("/dev/vfio/vfio").exists() {
            return Err(VfioError::NoVfioModule);
        }
        let mut dev = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
            fd: 0,
            flags: 0,
        };
        let fd = vm.create_device(&mut dev).map_err(VfioError::KvmDevice)?;
        let handle = Arc::new(VfioDeviceFd::new_from_kvm(fd));
        let container = VfioContainer::new(Some(handle)).map_err(vfio_err("open container"))?;
        Ok(Self {
            container: Arc::new(container),
            mapped: Vec::new(),
        })
    }

    /// The container devices are opened in.
    pub fn container(&self) -> &Arc<VfioContainer> {
        &self.container
    }

    /// Maps every region of guest RAM at IOVA = guest-physical address.
    /// Needs at least one group in the container (the IOMMU type is set when
    /// the first group joins). Idempotent.
    pub fn map_guest_memory(&mut self, mem: &GuestMemoryMmap) -> Result<()> {
        if !self.mapped.is_empty() {
            return Ok(());
        }
        for region in mem.iter() {
            let iova = region.start_addr().0;
            let size = region.len();
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| VfioError::Os {
                    what: "host address of guest memory",
                    source: std::io::Error::from_raw_os_error(libc::EFAULT),
                })?;
            let len = usize::try_from(size).map_err(|_| VfioError::Os {
                what: "guest memory region size",
                source: std::io::Error::from_raw_os_error(libc::EOVERFLOW),
            })?;
            // SAFETY: the region is a live MAP_SHARED mapping of guest RAM that
            // outlives the container mapping: `unmap_guest_memory` runs in
            // teardown before guest RAM is unmapped. The VMM never holds Rust
            // references into guest RAM (it goes through vm-memory's volatile
            // accessors), so device DMA into it is sound.
            let r = unsafe { self.container.vfio_dma_map(iova, len, host) };
            if let Err(source) = r {
                self.unmap_guest_memory();
                return Err(VfioError::Vfio {
                    what: "VFIO_IOMMU_MAP_DMA of guest RAM",
                    source,
                });
            }
            tracing::debug!(
                iova = format_args!("{iova:#x}"),
                size,
                "DMA-mapped guest RAM"
            );
            self.mapped.push((iova, size));
        }
        Ok(())
    }

    /// Unmaps everything [`Self::map_guest_memory`] mapped.
    pub fn unmap_guest_memory(&mut self) {
        for (iova, size) in self.mapped.drain(..) {
            let Ok(len) = usize::try_from(size) else {
                continue;
            };
            match self.container.vfio_dma_unmap(iova, len) {
                Ok(()) => tracing::debug!(iova = format_args!("{iova:#x}"), size, "DMA-unmapped"),
                Err(e) => tracing::warn!("VFIO_IOMMU_UNMAP_DMA {iova:#x}+{size:#x}: {e}"),
            }
        }
    }
}

impl Drop for VfioContext {
    fn drop(&mut self) {
        self.unmap_guest_memory();
    }
}
