// SPDX-License-Identifier: Apache-2.0
//! The e1000 as a PCI function: 8086:100E (82540EM), class 02:00:00, a
//! 128 KiB register BAR (trapped) and INTA, delivered as an edge on an
//! irqfd bound to the GSI the root bridge's `_PRT` gives the slot.

use std::sync::{Arc, Mutex, Weak};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::nic::{Irq, NetSink, BAR_SIZE, E1000};
use crate::devices::bus::{lock, BusDevice};
use crate::pci::bar_map::BarMapping;
use crate::pci::config::{Bar, PciConfig, PciIds, COMMAND_MEMORY, COMMAND_REG};
use crate::pci::PciDevice;
use crate::vstate::vcpu::IoBuses;

const INTERRUPT_REG: usize = 0xf;

/// The INTx line: one irqfd write per edge.
struct Line<'a>(&'a EventFd);

impl Irq for Line<'_> {
    fn trigger(&mut self) {
        if let Err(e) = self.0.write(1) {
            tracing::warn!("e1000: interrupt: {e}");
        }
    }
}

/// An e1000 on the PCI bus.
pub struct E1000PciDevice {
    config: PciConfig,
    bar: Bar,
    nic: E1000,
    sink: Box<dyn NetSink + Send>,
    irq: EventFd,
    mem: GuestMemoryMmap,
    buses: Arc<IoBuses>,
    mapping: BarMapping<E1000PciDevice>,
}

impl E1000PciDevice {
    /// Wraps `nic`; frames go to `sink`, interrupts to `irq` (an irqfd).
    pub fn new(
        nic: E1000,
        sink: Box<dyn NetSink + Send>,
        irq: EventFd,
        buses: Arc<IoBuses>,
        mem: GuestMemoryMmap,
        bar_addr: u64,
    ) -> Arc<Mutex<Self>> {
        let mut config = PciConfig::new(PciIds {
            vendor: 0x8086,
            device: 0x100e,
            class: 0x02_00_00,
            revision: 3,
            subsystem_vendor: 0x8086,
            subsystem: 0x001e,
        });
        let bar = Bar {
            index: 0,
            size: BAR_SIZE,
            is_64bit: true,
        };
        config.add_bar(bar, bar_addr);
        // Interrupt pin INTA (the line byte is the OS's scratch space).
        config.set_reg(INTERRUPT_REG, 1 << 8);
        config.set_reg(COMMAND_REG, config.read(COMMAND_REG) | COMMAND_MEMORY);
        let fields = |self_ref| Self {
            config,
            bar,
            nic,
            sink,
            irq,
            mem,
            buses,
            mapping: BarMapping::new(self_ref, "e1000"),
        };
        let dev = Arc::new_cyclic(|w: &Weak<Mutex<Self>>| Mutex::new(fields(w.clone())));
        lock(&dev).update_mapping(false);
        dev
    }

    /// A frame from the host.
    pub fn receive(&mut self, frame: &[u8]) {
        let mut line = Line(&self.irq);
        self.nic.receive(&self.mem, &mut line, frame);
    }

    /// The NIC's counters as `(name, value)` pairs.
    pub fn counters(&self) -> [(&'static str, u64); 5] {
        let s = &self.nic.stats;
        [
            ("tx_frames", s.tx_frames),
            ("rx_frames", s.rx_frames),
            ("tx_dropped", s.tx_dropped),
            ("rx_dropped", s.rx_dropped),
            ("bad_rings", s.bad_rings),
        ]
    }

    /// Logs the counters (VMM exit).
    pub fn shutdown(&self) {
        tracing::info!("e1000: stopped; {:?}", self.nic.stats);
    }

    fn update_mapping(&mut self, defer: bool) {
        self.mapping
            .update(&self.config, &self.bar, &self.buses, defer);
    }
}

impl PciDevice for E1000PciDevice {
    fn read_config(&mut self, reg: usize) -> u32 {
        self.config.read(reg)
    }

    fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]) {
        self.config.write(reg, offset, data);
        if reg == COMMAND_REG || (4..=5).contains(&reg) {
            self.update_mapping(true);
        }
    }
}

impl BusDevice for E1000PciDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.nic.read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut line = Line(&self.irq);
        self.nic
            .write(&self.mem, self.sink.as_mut(), &mut line, offset, data);
    }
}
