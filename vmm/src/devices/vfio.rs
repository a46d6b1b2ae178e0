// SPDX-License-Identifier: Apache-2.0
//! Glue between the `vfio` crate's passthrough device model and this VMM:
//! KVM memory slots for BAR pages, GSI routes and irqfds for MSI-X, BAR
//! placement in the ACPI PCI windows, and bus adapters for trapped accesses.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vfio::{BarInfo, BarKind, CheckedDevice, MsiMessage, OpsError, VfioContext, VfioPciDevice};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::{lock, BusDevice};
use crate::error::Error;
use crate::layout;
use crate::memory::GuestRam;
use crate::pci::{PciBus, PciDevice};
use crate::vstate::interrupts::IrqRouting;
use crate::vstate::vcpu::IoBuses;

/// First KVM slot used for BAR mappings (guest RAM uses the low slots).
const FIRST_BAR_SLOT: u32 = 64;
/// First I/O port handed to I/O BARs.
const IO_BAR_START: u64 = 0xc000;
/// End of the I/O port range handed to I/O BARs.
const IO_BAR_END: u64 = 0x1_0000;

/// [`vfio::VmmOps`] on KVM and this VMM's routing table.
struct KvmOps {
    vm: Arc<VmFd>,
    routing: Arc<IrqRouting>,
    next_slot: AtomicU32,
}

impl vfio::VmmOps for KvmOps {
    fn map_guest_mmio(&self, gpa: u64, size: u64, host_addr: u64) -> Result<u32, OpsError> {
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
        let r = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host_addr,
        };
        // SAFETY: `host_addr` is a live mmap of a VFIO BAR owned by the
        // device model, which removes this slot before unmapping it.
        unsafe { self.vm.set_user_memory_region(r) }.map_err(OpsError::new)?;
        Ok(slot)
    }

    fn unmap_guest_mmio(&self, slot: u32, gpa: u64, _size: u64, host_addr: u64) {
        let r = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: 0,
            userspace_addr: host_addr,
        };
        // SAFETY: a zero-sized region deletes the slot; no memory is accessed.
        if let Err(e) = unsafe { self.vm.set_user_memory_region(r) } {
            tracing::warn!("removing KVM slot {slot}: {e}");
        }
    }

    fn allocate_gsi(&self) -> Result<u32, OpsError> {
        self.routing.allocate_gsi().map_err(OpsError::new)
    }

    fn release_gsi(&self, gsi: u32) {
        if let Err(e) = self.routing.release_gsi(gsi) {
            tracing::warn!("releasing GSI {gsi}: {e}");
        }
    }

    fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), OpsError> {
        self.routing.set_msi_route(gsi, msg).map_err(OpsError::new)
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<(), OpsError> {
        self.routing.register_irqfd(fd, gsi).map_err(OpsError::new)
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) {
        if let Err(e) = self.routing.unregister_irqfd(fd, gsi) {
            tracing::warn!("removing irqfd of GSI {gsi}: {e}");
        }
    }
}

type SharedDevice = Arc<Mutex<VfioPciDevice>>;

/// The device on the PCI bus.
struct PciAdapter(SharedDevice);

impl PciDevice for PciAdapter {
    fn read_config(&mut self, reg: usize) -> u32 {
        lock(&self.0).config_read(reg)
    }

    fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]) {
        lock(&self.0).config_write(reg, offset, data);
    }
}

/// A trapped BAR on the MMIO or PIO bus.
struct BarAdapter {
    dev: SharedDevice,
    index: usize,
}

impl BusDevice for BarAdapter {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.dev).bar_read(self.index, offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.dev).bar_write(self.index, offset, data);
    }
}

/// Bump allocation of BAR addresses: VFIO BARs take the upper half of the
/// 32-bit window (then the upper half of the 64-bit window) and ports from
/// 0xc000, leaving the lower halves to the VMM's own devices.
struct BarPlacer {
    mmio32: (u64, u64),
    mmio64: (u64, u64),
    io: (u64, u64),
}

impl BarPlacer {
    fn new(mmio64_start: u64) -> Self {
        let half32 = layout::PCI_MMIO32_SIZE / 2;
        let half64 = layout::PCI_MMIO64_SIZE / 2;
        Self {
            mmio32: (
                layout::PCI_MMIO32_START + half32,
                layout::PCI_MMIO32_START + layout::PCI_MMIO32_SIZE,
            ),
            mmio64: (
                mmio64_start + half64,
                mmio64_start + layout::PCI_MMIO64_SIZE,
            ),
            io: (IO_BAR_START, IO_BAR_END),
        }
    }

    fn take(range: &mut (u64, u64), size: u64) -> Option<u64> {
        let base = range.0.checked_next_multiple_of(size.max(4096))?;
        let end = base.checked_add(size)?;
        (end <= range.1).then(|| {
            range.0 = end;
            base
        })
    }

    fn place(&mut self, bar: &BarInfo) -> Option<u64> {
        match bar.kind {
            BarKind::Io => {
                let base = self.io.0.checked_next_multiple_of(bar.size)?;
                let end = base.checked_add(bar.size)?;
                (end <= self.io.1).then(|| {
                    self.io.0 = end;
                    base
                })
            }
            BarKind::Mem32 => Self::take(&mut self.mmio32, bar.size),
            BarKind::Mem64 => Self::take(&mut self.mmio32, bar.size)
                .or_else(|| Self::take(&mut self.mmio64, bar.size)),
        }
    }
}

/// The VM's passed-through devices and their container (none by default).
#[derive(Default)]
pub struct VfioDevices {
    devices: Vec<SharedDevice>,
    ctx: Option<VfioContext>,
}

impl VfioDevices {
    /// Opens every checked device, maps guest RAM for DMA, places the BARs
    /// and puts the devices on the PCI bus. On error everything opened so far
    /// is stopped, reset and unmapped again (by drop).
    pub fn attach(
        vm: &Arc<VmFd>,
        ram: &GuestRam,
        buses: &IoBuses,
        routing: &Arc<IrqRouting>,
        pci: &Mutex<PciBus>,
        checked: &[CheckedDevice],
        mmio64_start: u64,
    ) -> Result<Self, Error> {
        let mut this = Self {
            devices: Vec::new(),
            ctx: None,
        };
        if checked.is_empty() {
            return Ok(this);
        }
        let ops: Arc<dyn vfio::VmmOps> = Arc::new(KvmOps {
            vm: vm.clone(),
            routing: routing.clone(),
            next_slot: AtomicU32::new(FIRST_BAR_SLOT),
        });
        let ctx = this.ctx.insert(VfioContext::new(vm)?);
        let mut placer = BarPlacer::new(mmio64_start);
        for c in checked {
            let dev = VfioPciDevice::open(ctx, c, ops.clone())?;
            ctx.map_guest_memory(&ram.mem)?;
            let dev = Arc::new(Mutex::new(dev));
            this.devices.push(dev.clone());
            // Not `for bar in lock(&dev).bars()`: that guard would live through the loop.
            let bars = lock(&dev).bars();
            for bar in bars {
                let addr = placer.place(&bar).ok_or_else(|| {
                    Error::Config(format!(
                        "{}: no room for BAR{} ({} bytes) in the PCI windows",
                        c.bdf, bar.index, bar.size
                    ))
                })?;
                lock(&dev).place_bar(&bar, addr)?;
                let trap = Arc::new(Mutex::new(BarAdapter {
                    dev: dev.clone(),
                    index: bar.index,
                }));
                let bus = if bar.kind == BarKind::Io {
                    &buses.pio
                } else {
                    &buses.mmio
                };
                bus.write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(trap, addr, bar.size)?;
                tracing::info!(bdf = %c.bdf, bar = bar.index, addr = format_args!("{addr:#x}"), size = bar.size, kind = ?bar.kind, "BAR placed");
            }
            let slot = lock(pci).add(Arc::new(Mutex::new(PciAdapter(dev.clone()))))?;
            tracing::info!(bdf = %c.bdf, "passed through as 00:{slot:02x}.0");
        }
        Ok(this)
    }

    /// Stops interrupts, removes BAR slots, resets every device and removes
    /// guest RAM from the IOMMU. Idempotent.
    pub fn shutdown(&mut self) {
        for d in &self.devices {
            lock(d).shutdown();
        }
        if let Some(ctx) = self.ctx.as_mut() {
            ctx.unmap_guest_memory();
        }
    }
}

impl Drop for VfioDevices {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(kind: BarKind, size: u64) -> BarInfo {
        BarInfo {
            index: 0,
            size,
            kind,
            prefetchable: false,
        }
    }

    #[test]
    fn bars_are_aligned_and_stay_in_their_windows() {
        let mut p = BarPlacer::new(1 << 32);
        let a = p.place(&bar(BarKind::Mem64, 0x4000)).unwrap();
        assert_eq!(a, 0xd000_0000);
        let b = p.place(&bar(BarKind::Mem32, 0x100)).unwrap();
        assert_eq!(b, 0xd000_4000, "small BARs get a page of their own");
        let big = p.place(&bar(BarKind::Mem64, 1 << 30)).unwrap();
        assert_eq!(
            big,
            (1 << 32) + (32 << 30),
            "too big for 32-bit: 64-bit window"
        );
        assert!(p.place(&bar(BarKind::Mem32, 1 << 30)).is_none());
        assert_eq!(p.place(&bar(BarKind::Io, 0x20)).unwrap(), 0xc000);
        assert_eq!(p.place(&bar(BarKind::Io, 0x100)).unwrap(), 0xc100);
    }
}
