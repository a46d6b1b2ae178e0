// SPDX-License-Identifier: Apache-2.0
//! The ioctl request numbers the VMM's threads issue after set-up, computed from their
//! definitions in the kernel headers (`include/uapi/linux/kvm.h`, `vfio.h`).

use kvm_bindings::{
    kvm_device_attr, kvm_ioeventfd, kvm_irq_routing, kvm_irqfd, kvm_msi,
    kvm_userspace_memory_region, KVMIO,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_iow_nr};

ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_io_nr!(KVM_KVMCLOCK_CTRL, KVMIO, 0xad);
ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_irqfd);
ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_ioeventfd);
ioctl_iow_nr!(KVM_SET_GSI_ROUTING, KVMIO, 0x6a, kvm_irq_routing);
ioctl_iow_nr!(KVM_SIGNAL_MSI, KVMIO, 0xa5, kvm_msi);
ioctl_iow_nr!(
    KVM_SET_USER_MEMORY_REGION,
    KVMIO,
    0x46,
    kvm_userspace_memory_region
);
ioctl_iow_nr!(KVM_SET_DEVICE_ATTR, KVMIO, 0xe1, kvm_device_attr);

/// `VFIO_TYPE` (`';'`) and `VFIO_BASE` of `vfio.h`.
const VFIO_TYPE: u32 = 0x3b;
const VFIO_BASE: u32 = 100;
ioctl_io_nr!(VFIO_GROUP_UNSET_CONTAINER, VFIO_TYPE, VFIO_BASE + 5);
ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, VFIO_TYPE, VFIO_BASE + 10);
ioctl_io_nr!(VFIO_DEVICE_RESET, VFIO_TYPE, VFIO_BASE + 11);
ioctl_io_nr!(VFIO_IOMMU_UNMAP_DMA, VFIO_TYPE, VFIO_BASE + 14);

/// The ioctl "type" byte (bits 8–15 of a request number) of each family the VMM's set-up
/// uses: KVM, VFIO, TUN (`'T'`, shared with the terminal ioctls), block devices.
pub const SET_UP_FAMILIES: [u32; 4] = [KVMIO, VFIO_TYPE, b'T' as u32, 0x12];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_the_kernel_headers() {
        // Values from `strace -X raw` and the kernel's uapi headers.
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_KVMCLOCK_CTRL(), 0xaead);
        assert_eq!(KVM_IRQFD(), 0x4020_ae76);
        assert_eq!(KVM_IOEVENTFD(), 0x4040_ae79);
        assert_eq!(KVM_SET_GSI_ROUTING(), 0x4008_ae6a);
        assert_eq!(KVM_SIGNAL_MSI(), 0x4020_aea5);
        assert_eq!(KVM_SET_USER_MEMORY_REGION(), 0x4020_ae46);
        assert_eq!(KVM_SET_DEVICE_ATTR(), 0x4018_aee1);
        assert_eq!(VFIO_GROUP_UNSET_CONTAINER(), 0x3b69);
        assert_eq!(VFIO_DEVICE_SET_IRQS(), 0x3b6e);
        assert_eq!(VFIO_DEVICE_RESET(), 0x3b6f);
        assert_eq!(VFIO_IOMMU_UNMAP_DMA(), 0x3b72);
    }
}
