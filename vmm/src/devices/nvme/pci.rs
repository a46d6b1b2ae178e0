// SPDX-License-Identifier: Apache-2.0
//! The NVMe controller as a PCI function: class 01:08:02 (NVM Express),
//! a 64-bit BAR0 with the registers and doorbells (trapped: every access is an
//! MMIO exit), and MSI-X (table and PBA in BAR0) delivered with KVM_SIGNAL_MSI.

use std::sync::{Arc, Mutex, Weak};

use kvm_bindings::kvm_msi;
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

use super::ctrl::{Controller, Interrupts, DOORBELL_BASE};
use crate::devices::bus::{lock, BusDevice};
use crate::pci::bar_map::BarMapping;
use crate::pci::config::{Bar, PciConfig, PciIds, COMMAND_MEMORY, COMMAND_REG};
use crate::pci::msix::{MsixCapability, MsixTable};
use crate::pci::PciDevice;
use crate::vstate::vcpu::IoBuses;

/// Size of BAR0.
pub const BAR_SIZE: u64 = 0x4000;
const MSIX_TABLE_OFFSET: u64 = 0x2000;
const MSIX_PBA_OFFSET: u64 = 0x3000;
/// PCI class: mass storage, non-volatile memory, NVM Express.
pub const CLASS_NVME: u32 = 0x01_08_02;

/// MSI-X delivery through KVM_SIGNAL_MSI; masked vectors set their pending bit.
struct Msi<'a> {
    table: &'a mut MsixTable,
    vm: &'a VmFd,
}

impl Msi<'_> {
    fn send(&mut self, vector: u16) {
        let Some(e) = self.table.entry(vector) else {
            return;
        };
        let msi = kvm_msi {
            address_lo: e.msg.address_lo,
            address_hi: e.msg.address_hi,
            data: e.msg.data,
            ..Default::default()
        };
        if let Err(err) = self.vm.signal_msi(msi) {
            tracing::warn!("nvme: MSI-X vector {vector}: {err}");
        }
    }

    /// Sends every pending vector that became deliverable.
    fn flush_pending(&mut self) {
        for v in 0..self.table.len() {
            if self.table.pending(v) && self.table.deliverable(v) {
                self.table.set_pending(v, false);
                self.send(v);
            }
        }
    }
}

impl Interrupts for Msi<'_> {
    fn signal(&mut self, vector: u16) {
        if self.table.deliverable(vector) {
            self.send(vector);
        } else {
            self.table.set_pending(vector, true);
        }
    }
}

/// An NVMe controller on the PCI bus.
pub struct NvmePciDevice {
    name: String,
    config: PciConfig,
    bar: Bar,
    msix_cap: usize,
    msix: MsixTable,
    ctrl: Controller,
    mem: GuestMemoryMmap,
    vm: Arc<VmFd>,
    buses: Arc<IoBuses>,
    mapping: BarMapping<NvmePciDevice>,
}

impl NvmePciDevice {
    /// Wraps `ctrl` (with `vectors` MSI-X vectors) in a PCI function whose
    /// BAR0 starts at `bar_addr`, and maps the BAR.
    pub fn new(
        name: String,
        ctrl: Controller,
        vectors: u16,
        vm: Arc<VmFd>,
        buses: Arc<IoBuses>,
        mem: GuestMemoryMmap,
        bar_addr: u64,
    ) -> Arc<Mutex<Self>> {
        let mut config = PciConfig::new(PciIds {
            vendor: 0x1af4,
            device: 0x10ff,
            class: CLASS_NVME,
            revision: 0,
            subsystem_vendor: 0x1af4,
            subsystem: 0,
        });
        let bar = Bar {
            index: 0,
            size: BAR_SIZE,
            is_64bit: true,
        };
        config.add_bar(bar, bar_addr);
        let msix = MsixTable::new(vectors);
        let msix_cap = config.add_msix_capability(&MsixCapability {
            table_size: vectors,
            table_bar: 0,
            table_offset: MSIX_TABLE_OFFSET,
            pba_bar: 0,
            pba_offset: MSIX_PBA_OFFSET,
        });
        config.set_reg(COMMAND_REG, config.read(COMMAND_REG) | COMMAND_MEMORY);
        let fields = |self_ref| Self {
            name,
            config,
            bar,
            msix_cap,
            msix,
            ctrl,
            mem,
            vm,
            buses,
            mapping: BarMapping::new(self_ref, "nvme"),
        };
        let dev = Arc::new_cyclic(|w: &Weak<Mutex<Self>>| Mutex::new(fields(w.clone())));
        lock(&dev).update_mapping(false);
        dev
    }

    /// A name for logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The controller's counters as `(name, value)` pairs.
    pub fn counters(&self) -> [(&'static str, u64); 4] {
        let s = &self.ctrl.stats;
        [
            ("commands", s.commands),
            ("errors", s.errors),
            ("bad_doorbells", s.bad_doorbells),
            ("interrupts", s.interrupts),
        ]
    }

    /// Logs the counters (VMM exit).
    pub fn shutdown(&mut self) {
        tracing::info!("{}: stopped; {:?}", self.name, self.ctrl.stats);
    }

    fn msi(&mut self) -> (&mut Controller, Msi<'_>, &GuestMemoryMmap) {
        (
            &mut self.ctrl,
            Msi {
                table: &mut self.msix,
                vm: &self.vm,
            },
            &self.mem,
        )
    }

    /// Maps or unmaps BAR0 after the command register or BAR changed;
    /// `defer` when called under a bus lock.
    fn update_mapping(&mut self, defer: bool) {
        self.mapping
            .update(&self.config, &self.bar, &self.buses, defer);
    }
}

impl PciDevice for NvmePciDevice {
    fn read_config(&mut self, reg: usize) -> u32 {
        self.config.read(reg)
    }

    fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]) {
        self.config.write(reg, offset, data);
        if reg == self.msix_cap / 4 {
            self.msix.set_control((self.config.read(reg) >> 16) as u16);
            self.msi().1.flush_pending();
        } else if reg == COMMAND_REG || (4..=5).contains(&reg) {
            self.update_mapping(true);
        }
    }
}

impl BusDevice for NvmePciDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            o if o < MSIX_TABLE_OFFSET => self.ctrl.mmio_read(o, data),
            o if o < MSIX_PBA_OFFSET => {
                self.msix.read_table(o - MSIX_TABLE_OFFSET, data);
            }
            o => self.msix.read_pba(o - MSIX_PBA_OFFSET, data, |_| false),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            o if o < MSIX_TABLE_OFFSET => {
                let (ctrl, mut irq, mem) = self.msi();
                ctrl.mmio_write(mem, &mut irq, o, data);
            }
            o if o < MSIX_PBA_OFFSET
                && self.msix.write_table(o - MSIX_TABLE_OFFSET, data).is_some() =>
            {
                self.msi().1.flush_pending();
            }
            _ => {}
        }
    }
}

// The doorbell region starts where the registers end.
const _: () = assert!(DOORBELL_BASE < MSIX_TABLE_OFFSET);
