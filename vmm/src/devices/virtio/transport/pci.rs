// SPDX-License-Identifier: Apache-2.0
//! The virtio-pci modern transport: a PCI function whose 64-bit memory BAR
//! holds the common, ISR, device and notify structures plus the MSI-X table
//! and PBA. Queue notifies go to KVM ioeventfds and interrupts come from
//! irqfds, so the data path never enters this code; only setup does.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, Weak};

use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::common_cfg::{CommonCfg, CommonEvent, COMMON_CFG_LEN};
use crate::devices::bus::{lock, BusDevice};
use crate::devices::virtio::{
    status, Activation, BackendTarget, Connection, ReconnectError, VirtioDevice, VirtioError,
    NO_VECTOR,
};
use crate::pci::bar_map::BarMapping;
use crate::pci::config::{Bar, PciConfig, PciIds, COMMAND_MEMORY, COMMAND_REG};
use crate::pci::msix::{MsixCapability, MsixRoutes, MsixTable};
use crate::pci::PciDevice;
use crate::vstate::interrupts::IrqRouting;
use crate::vstate::vcpu::IoBuses;

/// Size of the BAR.
pub const BAR_SIZE: u64 = 0x8000;
const COMMON_OFFSET: u64 = 0x0000;
const ISR_OFFSET: u64 = 0x1000;
const DEVICE_OFFSET: u64 = 0x2000;
const DEVICE_LEN: u64 = 0x1000;
const NOTIFY_OFFSET: u64 = 0x3000;
const MSIX_TABLE_OFFSET: u64 = 0x4000;
const MSIX_PBA_OFFSET: u64 = 0x5000;
const REGION_LEN: u64 = 0x1000;
/// Bytes between two queues' notify addresses.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
const BAR_INDEX: u8 = 0;

// virtio_pci_cap cfg_type values (virtio 1.x §4.1.4).
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
const CAP_PCI_CFG: u8 = 5;
const VENDOR_CAP_ID: u8 = 0x09;
const ISR_CONFIG: u8 = 2;

/// Body of a `struct virtio_pci_cap` after the 2-byte header.
fn virtio_cap(cfg_type: u8, offset: u64, length: u64, extra: Option<u32>) -> Vec<u8> {
    let cap_len: u8 = if extra.is_some() { 20 } else { 16 };
    let mut b = vec![cap_len, cfg_type, BAR_INDEX, 0, 0, 0];
    b.extend_from_slice(&(offset as u32).to_le_bytes());
    b.extend_from_slice(&(length as u32).to_le_bytes());
    if let Some(x) = extra {
        b.extend_from_slice(&x.to_le_bytes());
    }
    b
}

/// The configuration space of a virtio function: IDs, the BAR, the MSI-X
/// capability (table and PBA in the BAR) and the virtio capabilities
/// locating the common, ISR, device and notify structures, plus the
/// VIRTIO_PCI_CAP_PCI_CFG window.
struct ConfigLayout {
    config: PciConfig,
    bar: Bar,
    /// Config offset of the MSI-X capability.
    msix_cap: usize,
    /// Config offset of the VIRTIO_PCI_CAP_PCI_CFG window.
    cfg_cap: usize,
}

impl ConfigLayout {
    /// For a device of virtio type `device_type` with `nq` queues (and one
    /// MSI-X vector more), the BAR at `bar_addr`.
    fn new(device_type: u16, nq: u16, bar_addr: u64) -> Self {
        let vectors = nq + 1;
        let mut config = PciConfig::new(PciIds {
            vendor: 0x1af4,
            device: 0x1040 + device_type,
            class: 0x01_80_00,
            revision: 1,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        });
        let bar = Bar {
            index: usize::from(BAR_INDEX),
            size: BAR_SIZE,
            is_64bit: true,
        };
        config.add_bar(bar, bar_addr);
        let msix_cap = config.add_msix_capability(&MsixCapability {
            table_size: vectors,
            table_bar: usize::from(BAR_INDEX),
            table_offset: MSIX_TABLE_OFFSET,
            pba_bar: usize::from(BAR_INDEX),
            pba_offset: MSIX_PBA_OFFSET,
        });
        let caps = [
            virtio_cap(CAP_COMMON, COMMON_OFFSET, COMMON_CFG_LEN, None),
            virtio_cap(CAP_ISR, ISR_OFFSET, 1, None),
            virtio_cap(CAP_DEVICE, DEVICE_OFFSET, DEVICE_LEN, None),
            virtio_cap(
                CAP_NOTIFY,
                NOTIFY_OFFSET,
                u64::from(nq) * u64::from(NOTIFY_OFF_MULTIPLIER),
                Some(NOTIFY_OFF_MULTIPLIER),
            ),
        ];
        for c in &caps {
            config.add_capability(VENDOR_CAP_ID, c, &[]);
        }
        // The config-space window into the BAR: bar, offset, length and data
        // are writable.
        let cfg_cap = config.add_capability(
            VENDOR_CAP_ID,
            &virtio_cap(CAP_PCI_CFG, 0, 0, Some(0)),
            &[0, 0xff, u32::MAX, u32::MAX, u32::MAX],
        );
        // Firmware-style: memory decoding on at the VMM's placement.
        config.set_reg(COMMAND_REG, config.read(COMMAND_REG) | COMMAND_MEMORY);
        Self {
            config,
            bar,
            msix_cap,
            cfg_cap,
        }
    }
}

/// A virtio device on the PCI bus.
pub struct VirtioPciDevice {
    config: PciConfig,
    bar: Bar,
    msix_cap: usize,
    /// Config offset of the VIRTIO_PCI_CAP_PCI_CFG window.
    cfg_cap: usize,
    common: CommonCfg,
    msix: MsixTable,
    routes: MsixRoutes,
    isr: u8,
    device: Box<dyn VirtioDevice>,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    config_evt: EventFd,
    /// GSI each interrupt source (queues, then config) is bound to.
    bound: Vec<Option<u32>>,
    mapping: BarMapping<VirtioPciDevice>,
    /// Queue notifies that trapped to the VMM instead of an ioeventfd.
    slow_notifies: u64,
    vm: Arc<VmFd>,
    buses: Arc<IoBuses>,
    mem: GuestMemoryMmap,
}

fn eventfd() -> Result<EventFd, VirtioError> {
    EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(VirtioError::Io)
}

impl VirtioPciDevice {
    /// Wraps `device` in a PCI function whose BAR starts at `bar_addr` and
    /// maps the BAR (MMIO bus range and ioeventfds).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        vm: Arc<VmFd>,
        routing: Arc<IrqRouting>,
        buses: Arc<IoBuses>,
        mem: GuestMemoryMmap,
        bar_addr: u64,
    ) -> Result<Arc<Mutex<Self>>, VirtioError> {
        let nq = device.num_queues();
        let vectors = nq + 1;
        let layout = ConfigLayout::new(device.device_type(), nq, bar_addr);
        let msix = MsixTable::new(vectors);

        let kicks = (0..nq).map(|_| eventfd()).collect::<Result<Vec<_>, _>>()?;
        let calls = (0..nq).map(|_| eventfd()).collect::<Result<Vec<_>, _>>()?;
        let config_evt = eventfd()?;
        let routes = MsixRoutes::new(routing, vectors)?;
        let common = CommonCfg::new(device.features(), nq, device.queue_max_size(), vectors);
        let fields = |self_ref| Self {
            config: layout.config,
            bar: layout.bar,
            msix_cap: layout.msix_cap,
            cfg_cap: layout.cfg_cap,
            common,
            msix,
            routes,
            isr: 0,
            device,
            kicks,
            calls,
            config_evt,
            bound: vec![None; usize::from(nq) + 1],
            mapping: BarMapping::new(self_ref, "virtio"),
            slow_notifies: 0,
            vm,
            buses,
            mem,
        };
        let dev = Arc::new_cyclic(|w: &Weak<Mutex<Self>>| Mutex::new(fields(w.clone())));
        lock(&dev).update_mapping(false);
        Ok(dev)
    }

    /// A name for logs.
    pub fn name(&self) -> String {
        self.device.name()
    }

    /// The device model behind the transport.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The device model behind the transport, to pause or resume it.
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// The driver's side as the API reports it: `active` once the driver
    /// set DRIVER_OK, `needs-reset` after the device failed, `reset` before.
    pub fn driver_state(&self) -> &'static str {
        if self.needs_reset() {
            "needs-reset"
        } else if self.common.status & status::DRIVER_OK != 0 {
            "active"
        } else {
            "reset"
        }
    }

    /// Queue notifies that trapped to the VMM instead of an ioeventfd.
    pub fn slow_notifies(&self) -> u64 {
        self.slow_notifies
    }

    /// The descriptor whose hangup means the backend is gone.
    pub fn hangup_fd(&self) -> Option<RawFd> {
        self.device.hangup_fd()
    }

    /// The backend hung up. If the device reconnects, it goes quiet (no DEVICE_NEEDS_RESET:
    /// the guest keeps its requests, kicks wait in the ioeventfds) and the target to connect
    /// to is returned; otherwise it is marked DEVICE_NEEDS_RESET at once.
    pub fn backend_lost(&mut self) -> Option<BackendTarget> {
        let name = self.device.name();
        let target = self.device.reconnect_target();
        let Some(target) = target.filter(|_| !self.needs_reset()) else {
            self.give_up("backend disconnected");
            return None;
        };
        tracing::warn!(
            "{name}: backend disconnected; reconnecting every {} ms for up to {} s",
            target.reconnect.interval.as_millis(),
            target.reconnect.timeout.as_secs()
        );
        self.device.connection_lost();
        Some(target)
    }

    /// A new connection to the lost backend: the device checks it and replays its setup.
    pub fn reconnected(&mut self, conn: Connection) -> Result<(), ReconnectError> {
        self.device.reconnected(conn)
    }

    /// The backend is gone for good (`why`): DEVICE_NEEDS_RESET and a config interrupt.
    pub fn give_up(&mut self, why: &str) {
        tracing::error!(
            "{}: {why}; device marked DEVICE_NEEDS_RESET",
            self.device.name()
        );
        self.device.disconnected();
        self.fail();
    }

    fn fail(&mut self) {
        self.common.set_needs_reset();
        self.isr |= ISR_CONFIG;
        if let Err(e) = self.config_evt.write(1) {
            tracing::warn!("{}: config interrupt: {e}", self.device.name());
        }
    }

    /// Stops the data path (VMM exit).
    pub fn shutdown(&mut self) {
        self.log_rings("exit");
        self.device.reset();
        tracing::info!(
            "{}: stopped; {} queue notifies went through the VMM",
            self.device.name(),
            self.slow_notifies
        );
    }

    /// Debug log of every ready queue's ring indices and interrupt wiring (what tells a missed
    /// kick from a missed interrupt after a stall).
    fn log_rings(&self, when: &str) {
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        let name = self.device.name();
        for (i, q) in self.common.queues.iter().enumerate() {
            if !q.ready {
                continue;
            }
            let rings = q
                .ring_snapshot(&self.mem)
                .map_or_else(|| "rings outside guest memory".into(), |s| s.to_string());
            let call_pending = self.calls.get(i).is_some_and(|e| readable(e.as_raw_fd()));
            tracing::debug!(
                "{name}: queue {i} at {when}: {rings}; vector {} deliverable {} bound {:?} \
                 call pending {call_pending}",
                q.msix_vector,
                self.msix.deliverable(q.msix_vector),
                self.bound.get(i).copied().flatten(),
            );
        }
    }

    /// Whether the driver has been told the device needs a reset.
    pub fn needs_reset(&self) -> bool {
        self.common.status & status::DEVICE_NEEDS_RESET != 0
    }

    /// Binds each interrupt source's eventfd to the GSI of its vector when
    /// that vector can be delivered, and unbinds it otherwise (the eventfd
    /// then holds the pending interrupt until KVM is given it again).
    fn sync_irqfds(&mut self) {
        let n = self.calls.len();
        for i in 0..=n {
            let vector = match self.common.queues.get(i) {
                Some(q) if i < n => q.msix_vector,
                _ => self.common.config_vector,
            };
            let want = if vector != NO_VECTOR && self.msix.deliverable(vector) {
                self.routes.gsi(vector)
            } else {
                None
            };
            if self.bound[i] == want {
                continue;
            }
            let evt = self.calls.get(i).unwrap_or(&self.config_evt);
            let routing = self.routes.routing();
            if let Some(old) = self.bound[i].take() {
                if let Err(e) = routing.unregister_irqfd(evt, old) {
                    tracing::warn!("irqfd unbind from GSI {old}: {e}");
                }
            }
            if let Some(gsi) = want {
                match routing.register_irqfd(evt, gsi) {
                    Ok(()) => self.bound[i] = Some(gsi),
                    Err(e) => tracing::warn!("irqfd bind to GSI {gsi}: {e}"),
                }
            }
        }
    }

    /// Whether an interrupt for `vector` waits in an unbound eventfd.
    fn eventfd_pending(&self, vector: u16) -> bool {
        let n = self.calls.len();
        (0..=n).any(|i| {
            let (v, evt) = match self.common.queues.get(i) {
                Some(q) if i < n => (q.msix_vector, &self.calls[i]),
                _ => (self.common.config_vector, &self.config_evt),
            };
            v == vector && self.bound[i].is_none() && readable(evt.as_raw_fd())
        })
    }

    fn on_common_event(&mut self, ev: CommonEvent) {
        match ev {
            CommonEvent::Reset => {
                tracing::debug!("{}: reset by the driver", self.device.name());
                self.device.reset();
                self.isr = 0;
                self.sync_irqfds();
            }
            CommonEvent::VectorsChanged => self.sync_irqfds(),
            CommonEvent::DriverOk => {
                let act = Activation {
                    acked_features: self.common.driver_features,
                    queues: &self.common.queues,
                    kicks: &self.kicks,
                    calls: &self.calls,
                    mem: &self.mem,
                };
                match self.device.activate(act) {
                    Ok(()) => tracing::info!("{}: data path started", self.device.name()),
                    Err(e) => {
                        tracing::error!("{}: cannot start: {e}", self.device.name());
                        self.fail();
                    }
                }
            }
        }
    }

    /// Maps or unmaps the BAR according to the command register and BAR
    /// address; `defer` when called under a bus lock (config write via ECAM).
    fn update_mapping(&mut self, defer: bool) {
        let Some((old, want)) = self
            .mapping
            .update(&self.config, &self.bar, &self.buses, defer)
        else {
            return;
        };
        if let Some(old) = old {
            for (q, k) in self.kicks.iter().enumerate() {
                let a = IoEventAddress::Mmio(notify_addr(old, q));
                if let Err(e) = self.vm.unregister_ioevent(k, &a, NoDatamatch) {
                    tracing::warn!("queue {q}: unregister ioeventfd: {e}");
                }
            }
        }
        if let Some(new) = want {
            for (q, k) in self.kicks.iter().enumerate() {
                let a = IoEventAddress::Mmio(notify_addr(new, q));
                if let Err(e) = self.vm.register_ioevent(k, &a, NoDatamatch) {
                    tracing::warn!(
                        "queue {q}: register ioeventfd at {:#x}: {e}",
                        notify_addr(new, q)
                    );
                }
            }
            tracing::debug!("{}: BAR at {new:#x}", self.device.name());
        }
    }
}

fn notify_addr(bar: u64, queue: usize) -> u64 {
    bar + NOTIFY_OFFSET + queue as u64 * u64::from(NOTIFY_OFF_MULTIPLIER)
}

/// Whether `fd` is readable right now (without consuming anything).
fn readable(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    unsafe { libc::poll(&mut p, 1, 0) == 1 && p.revents & libc::POLLIN != 0 }
}

impl VirtioPciDevice {
    /// The BAR access the VIRTIO_PCI_CAP_PCI_CFG window selects, if valid:
    /// BAR 0, a 1/2/4-byte length, inside the BAR and aligned to the length.
    fn cfg_window(&self) -> Option<(u64, usize)> {
        let base = self.cfg_cap / 4;
        let bar = self.config.read(base + 1) & 0xff;
        let offset = u64::from(self.config.read(base + 2));
        let len = self.config.read(base + 3) as usize;
        let ok = bar == u32::from(BAR_INDEX)
            && matches!(len, 1 | 2 | 4)
            && offset % len as u64 == 0
            && offset + len as u64 <= BAR_SIZE;
        ok.then_some((offset, len))
    }
}

impl PciDevice for VirtioPciDevice {
    fn read_config(&mut self, reg: usize) -> u32 {
        if reg == self.cfg_cap / 4 + 4 {
            if let Some((offset, len)) = self.cfg_window() {
                let mut b = [0u8; 4];
                self.read(offset, &mut b[..len]);
                self.config.set_reg(reg, u32::from_le_bytes(b));
            }
        }
        self.config.read(reg)
    }

    fn write_config(&mut self, reg: usize, offset: u64, data: &[u8]) {
        self.config.write(reg, offset, data);
        if reg == self.cfg_cap / 4 + 4 {
            if let Some((off, len)) = self.cfg_window() {
                let b = self.config.read(reg).to_le_bytes();
                self.write(off, &b[..len]);
            }
        } else if reg == self.msix_cap / 4 {
            self.msix.set_control((self.config.read(reg) >> 16) as u16);
            self.sync_irqfds();
        } else if reg == COMMAND_REG || (4..=5).contains(&reg) {
            self.update_mapping(true);
        }
    }
}

impl BusDevice for VirtioPciDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let (region, off) = (offset & !(REGION_LEN - 1), offset & (REGION_LEN - 1));
        data.fill(0);
        match region {
            COMMON_OFFSET => self.common.read(off, data),
            ISR_OFFSET if off == 0 => {
                if let Some(b) = data.first_mut() {
                    *b = self.isr;
                    self.isr = 0;
                }
            }
            DEVICE_OFFSET => self.device.read_config(off, data),
            MSIX_TABLE_OFFSET => {
                self.msix.read_table(off, data);
            }
            MSIX_PBA_OFFSET => {
                let msix = &self.msix;
                msix.read_pba(off, data, |v| self.eventfd_pending(v));
            }
            _ => {}
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (region, off) = (offset & !(REGION_LEN - 1), offset & (REGION_LEN - 1));
        match region {
            COMMON_OFFSET => {
                if CommonCfg::resets_device(off, data) {
                    self.log_rings("reset");
                }
                if let Some(ev) = self.common.write(off, data) {
                    self.on_common_event(ev);
                }
            }
            DEVICE_OFFSET => self.device.write_config(off, data),
            NOTIFY_OFFSET => {
                // Only reached when the ioeventfd is not registered: the
                // data path is going through the VMM, which it must not.
                let q = (off / u64::from(NOTIFY_OFF_MULTIPLIER)) as usize;
                if let Some(k) = self.kicks.get(q) {
                    self.slow_notifies += 1;
                    if self.slow_notifies == 1 {
                        tracing::warn!(
                            "{}: queue {q} notify reached the VMM (no ioeventfd)",
                            self.device.name()
                        );
                    }
                    let _ = k.write(1);
                }
            }
            MSIX_TABLE_OFFSET => {
                if let Some(v) = self.msix.write_table(off, data) {
                    self.routes.update(&self.msix, v);
                    self.sync_irqfds();
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
#[path = "pci_tests.rs"]
mod tests;
