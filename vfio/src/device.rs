// SPDX-License-Identifier: Apache-2.0
//! A PCI function passed through with VFIO: config space through
//! [`ConfigModel`], BARs mapped into the guest where possible and trapped
//! where not, MSI-X through eventfds and KVM irqfds.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use vfio_bindings::bindings::vfio::{
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX,
    VFIO_REGION_INFO_FLAG_MMAP,
};
use vfio_ioctls::{VfioDevice, VfioOps, VfioRegionInfoCap};
use vmm_sys_util::eventfd::EventFd;

use crate::config::{BarInfo, BarKind, ConfigModel, MsiConfig, MsixCap, WriteAction, LEGACY_REGS};
use crate::context::VfioContext;
use crate::error::{Result, VfioError};
use crate::sysfs::CheckedDevice;
use pci::msix::MsixTable;
use pci::MsiMessage;

const PAGE: u64 = 4096;

/// An error from the VMM side of [`VmmOps`]: the VMM's own error, boxed
/// because this crate does not know its type.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct OpsError(Box<dyn std::error::Error + Send + Sync>);

impl OpsError {
    /// Wraps an error of the VMM.
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Box::new(e))
    }
}

/// What the device model needs from the VMM.
pub trait VmmOps: Send + Sync {
    /// Maps `size` bytes of host memory at `host_addr` (a device mmap) into
    /// the guest at `gpa` as a KVM memory slot; returns the slot.
    fn map_guest_mmio(
        &self,
        gpa: u64,
        size: u64,
        host_addr: u64,
    ) -> std::result::Result<u32, OpsError>;
    /// Removes a slot returned by [`VmmOps::map_guest_mmio`].
    fn unmap_guest_mmio(&self, slot: u32, gpa: u64, size: u64, host_addr: u64);
    /// Reserves a GSI for one MSI vector.
    fn allocate_gsi(&self) -> std::result::Result<u32, OpsError>;
    /// Returns a GSI (and drops its route).
    fn release_gsi(&self, gsi: u32);
    /// Points `gsi` at the guest's MSI message.
    fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> std::result::Result<(), OpsError>;
    /// Makes a write to `fd` inject `gsi`.
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> std::result::Result<(), OpsError>;
    /// Undoes [`VmmOps::register_irqfd`].
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32);
}

/// A device mmap, unmapped on drop.
struct Mmap {
    addr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is plain device memory owned by this value; it is only
// handed to KVM and never dereferenced by Rust code.
unsafe impl Send for Mmap {}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: addr/len came from a successful mmap and are unmapped once.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// Part of a BAR mapped straight into the guest.
struct MappedArea {
    mmap: Mmap,
    gpa: u64,
    slot: u32,
}

/// One MSI-X vector: the eventfd VFIO signals and the GSI it injects.
struct Vector {
    evt: EventFd,
    gsi: u32,
    irqfd: bool,
    route: Option<MsiMessage>,
}

struct Msix {
    cap: MsixCap,
    table: MsixTable,
    vectors: Vec<Vector>,
    on_device: bool,
}

/// A passed-through PCI function.
pub struct VfioPciDevice {
    bdf: String,
    device: VfioDevice,
    ops: Arc<dyn VmmOps>,
    config: ConfigModel,
    msix: Option<Msix>,
    /// MSI vectors while the guest has MSI enabled.
    msi: Vec<Vector>,
    placed: Vec<(BarInfo, u64)>,
    areas: Vec<MappedArea>,
    shut_down: bool,
}

impl VfioPciDevice {
    /// Opens `dev` in `ctx`'s container (adding its group to the container
    /// and to the KVM VFIO device), resets it and reads its config space.
    pub fn open(ctx: &VfioContext, dev: &CheckedDevice, ops: Arc<dyn VmmOps>) -> Result<Self> {
        let container: Arc<dyn VfioOps> = ctx.container().clone();
        let device =
            VfioDevice::new(&dev.sysfs, container, false).map_err(|source| VfioError::Vfio {
                what: "open device (group viability, container, KVM VFIO device)",
                source,
            })?;
        device.reset();
        let mut raw = [0u8; LEGACY_REGS * 4];
        device.region_read(VFIO_PCI_CONFIG_REGION_INDEX, &mut raw, 0);
        if raw[0..2] == [0xff, 0xff] || raw[0..2] == [0, 0] {
            return Err(VfioError::Unsupported {
                bdf: dev.bdf.clone(),
                why: "config space reads as empty".into(),
            });
        }
        let mut sizes = [0u64; 6];
        for (i, s) in sizes.iter_mut().enumerate() {
            *s = device.get_region_size(i as u32);
        }
        let msi_count = device
            .get_irq_info(VFIO_PCI_MSI_IRQ_INDEX)
            .map_or(0, |i| i.count);
        let config = ConfigModel::new(&raw, sizes, msi_count > 0);
        let mut this = Self {
            bdf: dev.bdf.clone(),
            device,
            ops,
            config,
            msix: None,
            msi: Vec::new(),
            placed: Vec::new(),
            areas: Vec::new(),
            shut_down: false,
        };
        this.setup_msix()?;
        tracing::info!(
            bdf = %this.bdf,
            bars = ?this.config.bars(),
            msix_vectors = this.msix.as_ref().map_or(0, |m| m.vectors.len()),
            msi_hidden = this.config.msi_hidden(),
            "VFIO device opened"
        );
        Ok(this)
    }

    fn setup_msix(&mut self) -> Result<()> {
        let Some(cap) = self.config.msix() else {
            tracing::warn!(bdf = %self.bdf, "no MSI-X capability: the guest gets no interrupts (INTx is not implemented)");
            return Ok(());
        };
        let irq_count = self
            .device
            .get_irq_info(VFIO_PCI_MSIX_IRQ_INDEX)
            .map_or(0, |i| i.count);
        let n = cap
            .body
            .table_size
            .min(u16::try_from(irq_count).unwrap_or(u16::MAX));
        let mut vectors = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            match new_vector(self.ops.as_ref()) {
                Ok(v) => vectors.push(v),
                Err(e) => {
                    for v in &vectors {
                        self.ops.release_gsi(v.gsi);
                    }
                    return Err(e);
                }
            }
        }
        self.msix = Some(Msix {
            cap,
            table: MsixTable::new(n),
            vectors,
            on_device: false,
        });
        Ok(())
    }

    /// The PCI address on the host.
    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// The BARs the VMM has to place.
    pub fn bars(&self) -> Vec<BarInfo> {
        self.config.bars().to_vec()
    }

    /// Places `bar` at guest address (or port) `addr` and maps its
    /// mmap-able pages (all but the MSI-X table and PBA pages) into the guest.
    /// The VMM must trap the whole range and send accesses to
    /// [`Self::bar_read`]/[`Self::bar_write`]: mapped pages never exit.
    pub fn place_bar(&mut self, bar: &BarInfo, addr: u64) -> Result<()> {
        self.config.set_bar_addr(bar, addr);
        self.placed.push((*bar, addr));
        if bar.kind == BarKind::Io {
            return Ok(());
        }
        for (off, len) in self.mappable_areas(bar) {
            let host = self.mmap_region(bar.index, off, len)?;
            let gpa = addr + off;
            let slot = self
                .ops
                .map_guest_mmio(gpa, len, host.addr as u64)
                .map_err(|source| VfioError::Vmm {
                    what: "map BAR into the guest",
                    source,
                })?;
            tracing::debug!(bdf = %self.bdf, bar = bar.index, gpa = format_args!("{gpa:#x}"), len, slot, "BAR area mapped");
            self.areas.push(MappedArea {
                mmap: host,
                gpa,
                slot,
            });
        }
        Ok(())
    }

    /// Page-aligned (offset, len) pieces of `bar` that may be mapped: the
    /// region's mmap areas minus the pages holding the MSI-X table or PBA.
    fn mappable_areas(&self, bar: &BarInfo) -> Vec<(u64, u64)> {
        let index = bar.index as u32;
        if self.device.get_region_flags(index) & VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return Vec::new();
        }
        let mut areas: Vec<(u64, u64)> = self
            .device
            .get_region_caps(index)
            .iter()
            .find_map(|c| match c {
                VfioRegionInfoCap::SparseMmap(s) => {
                    Some(s.areas.iter().map(|a| (a.offset, a.size)).collect())
                }
                _ => None,
            })
            .unwrap_or_else(|| vec![(0, bar.size)]);
        let mut holes = Vec::new();
        if let Some(m) = &self.msix {
            let c = m.cap.body;
            if c.table_bar == bar.index {
                holes.push(page_span(c.table_offset, c.table_len()));
            }
            if c.pba_bar == bar.index {
                holes.push(page_span(c.pba_offset, c.pba_len()));
            }
        }
        for hole in holes {
            areas = areas.into_iter().flat_map(|a| subtract(a, hole)).collect();
        }
        areas
            .into_iter()
            .filter(|&(off, len)| len > 0 && off % PAGE == 0 && len % PAGE == 0)
            .collect()
    }

    fn mmap_region(&self, index: usize, off: u64, len: u64) -> Result<Mmap> {
        let file_off = self.device.get_region_offset(index as u32) + off;
        let len_usize = usize::try_from(len).map_err(|_| VfioError::Os {
            what: "BAR size",
            source: std::io::Error::from_raw_os_error(libc::EOVERFLOW),
        })?;
        let file_off = libc::off_t::try_from(file_off).map_err(|_| VfioError::Os {
            what: "BAR offset",
            source: std::io::Error::from_raw_os_error(libc::EOVERFLOW),
        })?;
        // SAFETY: a fresh shared mapping of the VFIO device fd at a region
        // offset the kernel reported; the result is checked below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.device.as_raw_fd(),
                file_off,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(VfioError::Os {
                what: "mmap of a VFIO BAR",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Mmap {
            addr,
            len: len_usize,
        })
    }

    /// Reads config register `reg` as the guest sees it.
    pub fn config_read(&mut self, reg: usize) -> u32 {
        let device = if self.config.read_is_emulated(reg) {
            0
        } else {
            self.device_config_dword(reg)
        };
        let bits = self.msix.as_ref().map_or(0, |m| m.table.control_bits());
        self.config.read(reg, device, bits)
    }

    fn device_config_dword(&self, reg: usize) -> u32 {
        let mut b = [0u8; 4];
        self.device
            .region_read(VFIO_PCI_CONFIG_REGION_INDEX, &mut b, (reg * 4) as u64);
        u32::from_le_bytes(b)
    }

    /// Applies a guest config write.
    pub fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) {
        let device_ctrl = match &self.msix {
            Some(m) if reg == m.cap.offset / 4 => self.device_config_dword(reg),
            _ => 0,
        };
        match self.config.write(reg, offset, data, device_ctrl) {
            WriteAction::Handled => {}
            WriteAction::Forward => self.device.region_write(
                VFIO_PCI_CONFIG_REGION_INDEX,
                data,
                reg as u64 * 4 + offset,
            ),
            WriteAction::Command => {
                self.device.region_write(
                    VFIO_PCI_CONFIG_REGION_INDEX,
                    data,
                    reg as u64 * 4 + offset,
                );
                self.check_bar_moves();
            }
            WriteAction::MsixControl(ctrl) => self.msix_control(ctrl),
            WriteAction::Msi => self.msi_update(),
        }
    }

    /// BARs stay where the VMM placed them; Linux keeps firmware placements
    /// that fit the ACPI windows, so a move is only reported.
    fn check_bar_moves(&self) {
        for (bar, addr) in &self.placed {
            let now = self.config.bar_addr(bar);
            if now != *addr {
                tracing::warn!(bdf = %self.bdf, bar = bar.index, placed = format_args!("{addr:#x}"), guest = format_args!("{now:#x}"), "guest moved a BAR: relocation is not supported, accesses still go to the original address");
            }
        }
    }

    fn msix_control(&mut self, ctrl: u16) {
        let Some(m) = self.msix.as_mut() else { return };
        m.table.set_control(ctrl);
        let want = m.table.enabled();
        if want && !m.on_device {
            let fds: Vec<&EventFd> = m.vectors.iter().map(|v| &v.evt).collect();
            match self.device.enable_msix(fds) {
                Ok(()) => m.on_device = true,
                Err(e) => tracing::error!(bdf = %self.bdf, "VFIO enable MSI-X: {e}"),
            }
        } else if !want && m.on_device {
            if let Err(e) = self.device.disable_msix() {
                tracing::warn!(bdf = %self.bdf, "VFIO disable MSI-X: {e}");
            }
            m.on_device = false;
        }
        tracing::debug!(bdf = %self.bdf, ctrl = format_args!("{ctrl:#x}"), "MSI-X control");
        for v in 0..m.table.len() {
            self.sync_vector(v);
        }
    }

    /// Brings MSI-X vector `v` in line with the guest's table.
    fn sync_vector(&mut self, v: u16) {
        let Some(m) = self.msix.as_mut() else { return };
        let active = if m.on_device {
            m.table.active_message(v)
        } else {
            None
        };
        if let Some(vec) = m.vectors.get_mut(usize::from(v)) {
            sync_route(self.ops.as_ref(), &self.bdf, usize::from(v), vec, active);
        }
    }

    /// Follows the guest's MSI capability: enables VFIO MSI with one eventfd
    /// per enabled vector, routes each with the guest's message (vector `i`
    /// replaces the low data bits with `i`), honours per-vector masks.
    fn msi_update(&mut self) {
        let Some(cfg) = self.config.msi() else { return };
        let on = !self.msi.is_empty();
        if cfg.enabled && !on {
            for _ in 0..cfg.vectors {
                match new_vector(self.ops.as_ref()) {
                    Ok(v) => self.msi.push(v),
                    Err(e) => {
                        tracing::error!(bdf = %self.bdf, "MSI vector: {e}");
                        break;
                    }
                }
            }
            let fds: Vec<&EventFd> = self.msi.iter().map(|v| &v.evt).collect();
            if let Err(e) = self.device.enable_msi(fds) {
                tracing::error!(bdf = %self.bdf, "VFIO enable MSI: {e}");
                self.release_msi();
                return;
            }
            tracing::debug!(bdf = %self.bdf, vectors = self.msi.len(), "MSI enabled");
        } else if !cfg.enabled && on {
            if let Err(e) = self.device.disable_msi() {
                tracing::warn!(bdf = %self.bdf, "VFIO disable MSI: {e}");
            }
            self.release_msi();
            return;
        }
        let n = self.msi.len() as u32;
        for (i, vec) in self.msi.iter_mut().enumerate() {
            let active = msi_vector_message(&cfg, n, i as u32);
            sync_route(self.ops.as_ref(), &self.bdf, i, vec, active);
        }
    }

    fn release_msi(&mut self) {
        for v in self.msi.drain(..) {
            if v.irqfd {
                self.ops.unregister_irqfd(&v.evt, v.gsi);
            }
            self.ops.release_gsi(v.gsi);
        }
    }

    fn placed_bar(&self, index: usize) -> Option<BarInfo> {
        self.placed
            .iter()
            .find(|(b, _)| b.index == index)
            .map(|(b, _)| *b)
    }

    /// A trapped guest read of `data.len()` bytes at `offset` in BAR `index`.
    pub fn bar_read(&mut self, index: usize, offset: u64, data: &mut [u8]) {
        let Some(bar) = self.placed_bar(index) else {
            data.fill(0xff);
            return;
        };
        if let Some(m) = &self.msix {
            let c = m.cap.body;
            if c.table_bar == index && in_range(offset, data.len(), c.table_offset, c.table_len()) {
                // Malformed accesses read as all-ones, like a missing device.
                if !m.table.read_table(offset - c.table_offset, data) {
                    data.fill(0xff);
                }
                return;
            }
            if c.pba_bar == index && in_range(offset, data.len(), c.pba_offset, c.pba_len()) {
                // Pending bits live in the eventfds of masked vectors; the
                // model does not report them (Linux does not read the PBA).
                m.table.read_pba(offset - c.pba_offset, data, |_| false);
                return;
            }
        }
        if offset + data.len() as u64 > bar.size {
            data.fill(0xff);
            return;
        }
        self.device.region_read(index as u32, data, offset);
    }

    /// A trapped guest write at `offset` in BAR `index`.
    pub fn bar_write(&mut self, index: usize, offset: u64, data: &[u8]) {
        let Some(bar) = self.placed_bar(index) else {
            return;
        };
        if let Some(m) = self.msix.as_mut() {
            let c = m.cap.body;
            if c.table_bar == index && in_range(offset, data.len(), c.table_offset, c.table_len()) {
                if let Some(v) = m.table.write_table(offset - c.table_offset, data) {
                    self.sync_vector(v);
                }
                return;
            }
            if c.pba_bar == index && in_range(offset, data.len(), c.pba_offset, c.pba_len()) {
                return;
            }
        }
        if offset + data.len() as u64 > bar.size {
            return;
        }
        self.device.region_write(index as u32, data, offset);
    }

    /// Stops interrupts, removes the BAR slots and resets the device.
    /// Idempotent; also run on drop.
    pub fn shutdown(&mut self) {
        if self.shut_down {
            return;
        }
        self.shut_down = true;
        if let Some(m) = self.msix.as_mut() {
            if m.on_device {
                if let Err(e) = self.device.disable_msix() {
                    tracing::warn!(bdf = %self.bdf, "VFIO disable MSI-X: {e}");
                }
                m.on_device = false;
            }
            for v in m.vectors.drain(..) {
                if v.irqfd {
                    self.ops.unregister_irqfd(&v.evt, v.gsi);
                }
                self.ops.release_gsi(v.gsi);
            }
        }
        if !self.msi.is_empty() {
            if let Err(e) = self.device.disable_msi() {
                tracing::warn!(bdf = %self.bdf, "VFIO disable MSI: {e}");
            }
            self.release_msi();
        }
        for a in self.areas.drain(..) {
            self.ops
                .unmap_guest_mmio(a.slot, a.gpa, a.mmap.len as u64, a.mmap.addr as u64);
            drop(a.mmap);
        }
        self.device.reset();
        tracing::info!(bdf = %self.bdf, "VFIO device stopped and reset");
    }
}

impl Drop for VfioPciDevice {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The message of MSI vector `i` of `n` enabled ones, or `None` when masked:
/// multiple-message MSI puts the vector number in the low data bits.
fn msi_vector_message(cfg: &MsiConfig, n: u32, i: u32) -> Option<MsiMessage> {
    if i >= 32 || cfg.mask & (1 << i) != 0 {
        return None;
    }
    let low = n.max(1).next_power_of_two() - 1;
    Some(MsiMessage {
        address_lo: cfg.address as u32,
        address_hi: (cfg.address >> 32) as u32,
        data: (u32::from(cfg.data) & !low) | (i & low),
    })
}

/// An eventfd and a GSI for one vector.
fn new_vector(ops: &dyn VmmOps) -> Result<Vector> {
    let evt =
        EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(|source| VfioError::Os {
            what: "eventfd",
            source,
        })?;
    let gsi = ops.allocate_gsi().map_err(|source| VfioError::Vmm {
        what: "allocate GSI",
        source,
    })?;
    Ok(Vector {
        evt,
        gsi,
        irqfd: false,
        route: None,
    })
}

/// Brings a vector's route and irqfd in line with what the guest allows:
/// an active vector injects through its irqfd; an inactive (masked) one has
/// no irqfd, so its eventfd keeps the event until the guest unmasks it (KVM
/// injects a pending event when the irqfd is registered again).
fn sync_route(ops: &dyn VmmOps, bdf: &str, v: usize, vec: &mut Vector, active: Option<MsiMessage>) {
    match active {
        Some(msg) => {
            if vec.route != Some(msg) {
                if let Err(e) = ops.set_msi_route(vec.gsi, msg) {
                    tracing::warn!(bdf, vector = v, "MSI route: {e}");
                    return;
                }
                vec.route = Some(msg);
            }
            if !vec.irqfd {
                match ops.register_irqfd(&vec.evt, vec.gsi) {
                    Ok(()) => vec.irqfd = true,
                    Err(e) => tracing::warn!(bdf, vector = v, "irqfd: {e}"),
                }
            }
        }
        None if vec.irqfd => {
            ops.unregister_irqfd(&vec.evt, vec.gsi);
            vec.irqfd = false;
        }
        None => {}
    }
}

fn in_range(offset: u64, len: usize, start: u64, size: u64) -> bool {
    offset >= start && offset + len as u64 <= start + size
}

/// The page-aligned span covering `[off, off + len)`.
fn page_span(off: u64, len: u64) -> (u64, u64) {
    let start = off & !(PAGE - 1);
    let end = (off + len).next_multiple_of(PAGE);
    (start, end - start)
}

/// `a` minus `hole`, as 0–2 pieces.
fn subtract(a: (u64, u64), hole: (u64, u64)) -> Vec<(u64, u64)> {
    let (a_start, a_end) = (a.0, a.0 + a.1);
    let (h_start, h_end) = (hole.0, hole.0 + hole.1);
    if h_end <= a_start || h_start >= a_end {
        return vec![a];
    }
    let mut out = Vec::new();
    if h_start > a_start {
        out.push((a_start, h_start - a_start));
    }
    if h_end < a_end {
        out.push((h_end, a_end - h_end));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records what the device model asks of the VMM.
    #[derive(Default)]
    struct MockOps {
        log: Mutex<Vec<String>>,
    }

    impl MockOps {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.log.lock().unwrap())
        }
    }

    impl VmmOps for MockOps {
        fn map_guest_mmio(&self, _: u64, _: u64, _: u64) -> std::result::Result<u32, OpsError> {
            Ok(0)
        }
        fn unmap_guest_mmio(&self, _: u32, _: u64, _: u64, _: u64) {}
        fn allocate_gsi(&self) -> std::result::Result<u32, OpsError> {
            Ok(30)
        }
        fn release_gsi(&self, gsi: u32) {
            self.log.lock().unwrap().push(format!("release {gsi}"));
        }
        fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> std::result::Result<(), OpsError> {
            self.log
                .lock()
                .unwrap()
                .push(format!("route {gsi} {:#x}", msg.data));
            Ok(())
        }
        fn register_irqfd(&self, _: &EventFd, gsi: u32) -> std::result::Result<(), OpsError> {
            self.log.lock().unwrap().push(format!("irqfd+ {gsi}"));
            Ok(())
        }
        fn unregister_irqfd(&self, _: &EventFd, gsi: u32) {
            self.log.lock().unwrap().push(format!("irqfd- {gsi}"));
        }
    }

    #[test]
    fn masking_detaches_the_irqfd_and_unmasking_reattaches_it() {
        let ops = MockOps::default();
        let mut v = new_vector(&ops).unwrap();
        let msg = |data| MsiMessage {
            address_lo: 0xfee0_0000,
            address_hi: 0,
            data,
        };
        sync_route(&ops, "t", 0, &mut v, Some(msg(0x41)));
        assert_eq!(ops.take(), ["route 30 0x41", "irqfd+ 30"]);
        // Same message again: no routing-table commit, no second irqfd.
        sync_route(&ops, "t", 0, &mut v, Some(msg(0x41)));
        assert!(ops.take().is_empty());
        sync_route(&ops, "t", 0, &mut v, None);
        assert_eq!(ops.take(), ["irqfd- 30"]);
        sync_route(&ops, "t", 0, &mut v, None);
        assert!(ops.take().is_empty());
        // Unmasked with a new message: route first, then the irqfd.
        sync_route(&ops, "t", 0, &mut v, Some(msg(0x42)));
        assert_eq!(ops.take(), ["route 30 0x42", "irqfd+ 30"]);
    }

    #[test]
    fn multi_message_msi_data() {
        let cfg = MsiConfig {
            enabled: true,
            vectors: 4,
            address: 0x1_fee0_1000,
            data: 0x4043,
            mask: 0b0100,
        };
        let m = msi_vector_message(&cfg, 4, 1).unwrap();
        assert_eq!(
            (m.address_hi, m.address_lo, m.data),
            (1, 0xfee0_1000, 0x4041)
        );
        assert_eq!(msi_vector_message(&cfg, 4, 3).unwrap().data, 0x4043);
        assert_eq!(msi_vector_message(&cfg, 4, 2), None, "masked");
        assert_eq!(
            msi_vector_message(&cfg, 1, 0).unwrap().data,
            0x4043,
            "single vector keeps data"
        );
        assert_eq!(msi_vector_message(&cfg, 4, 40), None);
    }

    #[test]
    fn msix_pages_are_cut_out_of_the_mapping() {
        // NVMe-like BAR0: registers+doorbells, table page at 0x2000, PBA page at 0x3000.
        let bar = (0, 0x4000);
        let mut areas = vec![bar];
        for hole in [page_span(0x2000, 65 * 16), page_span(0x3000, 16)] {
            areas = areas.into_iter().flat_map(|a| subtract(a, hole)).collect();
        }
        assert_eq!(areas, vec![(0, 0x2000)]);
        // A table in the middle of a page removes the whole page.
        assert_eq!(page_span(0x1810, 16), (0x1000, 0x1000));
        assert_eq!(
            subtract((0, 0x4000), (0x1000, 0x1000)),
            vec![(0, 0x1000), (0x2000, 0x2000)]
        );
        assert_eq!(subtract((0, 0x1000), (0x3000, 0x1000)), vec![(0, 0x1000)]);
    }
}
