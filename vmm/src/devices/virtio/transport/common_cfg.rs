// SPDX-License-Identifier: Apache-2.0
//! The virtio-pci common configuration structure (`struct
//! virtio_pci_common_cfg`, virtio 1.x §4.1.4.3): feature negotiation, device
//! status, and per-queue setup. Pure register logic; the transport acts on
//! the [`CommonEvent`]s it returns.

use super::QueueState;
use crate::devices::virtio::{status, NO_VECTOR, VIRTIO_F_VERSION_1};

/// Size of the structure in the BAR (up to and including `queue_device`).
pub const COMMON_CFG_LEN: u64 = 0x38;

// Field offsets and sizes.
const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const CONFIG_MSIX_VECTOR: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const CONFIG_GENERATION: u64 = 0x15;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;

/// The field containing `offset`: (start, size).
fn field(offset: u64) -> Option<(u64, u64)> {
    let f = match offset {
        0x00..=0x0f => (offset & !3, 4),
        0x10..=0x13 => (offset & !1, 2),
        0x14 | 0x15 => (offset, 1),
        0x16..=0x1f => (offset & !1, 2),
        0x20..=0x37 => (offset & !7, 8),
        _ => return None,
    };
    Some(f)
}

/// Something the transport must act on after a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommonEvent {
    /// The driver wrote 0 to the status: reset the device.
    Reset,
    /// The driver set DRIVER_OK: start the data path.
    DriverOk,
    /// A queue or the config vector changed its MSI-X vector.
    VectorsChanged,
}

/// The common configuration registers and the queues they program.
pub struct CommonCfg {
    /// Features the device offers.
    pub device_features: u64,
    /// Features the driver acknowledged.
    pub driver_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    /// MSI-X vector for configuration changes.
    pub config_vector: u16,
    /// Device status.
    pub status: u8,
    /// Bumped whenever the device configuration changes.
    pub generation: u8,
    queue_select: u16,
    /// The queues.
    pub queues: Vec<QueueState>,
    msix_vectors: u16,
}

impl CommonCfg {
    /// Registers for a device with `features`, `num_queues` queues of at most
    /// `max_size` entries and an MSI-X table of `msix_vectors` entries.
    pub fn new(features: u64, num_queues: u16, max_size: u16, msix_vectors: u16) -> Self {
        Self {
            device_features: features,
            driver_features: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            config_vector: NO_VECTOR,
            status: 0,
            generation: 0,
            queue_select: 0,
            queues: (0..num_queues).map(|_| QueueState::new(max_size)).collect(),
            msix_vectors,
        }
    }

    /// Back to the reset state (status 0); keeps the generation moving.
    pub fn reset(&mut self) {
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.config_vector = NO_VECTOR;
        self.status = 0;
        self.queue_select = 0;
        self.queues.iter_mut().for_each(QueueState::reset);
    }

    fn selected(&self) -> Option<&QueueState> {
        self.queues.get(usize::from(self.queue_select))
    }

    fn selected_mut(&mut self) -> Option<&mut QueueState> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn field_value(&self, start: u64) -> u64 {
        let q = self.selected();
        match start {
            DEVICE_FEATURE_SELECT => self.device_feature_select.into(),
            DEVICE_FEATURE => match self.device_feature_select {
                0 => self.device_features & 0xffff_ffff,
                1 => self.device_features >> 32,
                _ => 0,
            },
            DRIVER_FEATURE_SELECT => self.driver_feature_select.into(),
            DRIVER_FEATURE => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            CONFIG_MSIX_VECTOR => self.config_vector.into(),
            NUM_QUEUES => self.queues.len() as u64,
            DEVICE_STATUS => self.status.into(),
            CONFIG_GENERATION => self.generation.into(),
            QUEUE_SELECT => self.queue_select.into(),
            // An absent queue reads as size 0: "not available".
            QUEUE_SIZE => q.map_or(0, |q| q.size.into()),
            QUEUE_MSIX_VECTOR => q.map_or(NO_VECTOR, |q| q.msix_vector).into(),
            QUEUE_ENABLE => q.map_or(0, |q| q.ready.into()),
            QUEUE_NOTIFY_OFF if q.is_some() => self.queue_select.into(),
            QUEUE_DESC => q.map_or(0, |q| q.desc),
            QUEUE_DRIVER => q.map_or(0, |q| q.avail),
            QUEUE_DEVICE => q.map_or(0, |q| q.used),
            _ => 0,
        }
    }

    /// A guest read; accesses that are not 1, 2, 4 or 8 bytes inside one
    /// field read as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some((start, size)) = field(offset) else {
            return;
        };
        let len = data.len() as u64;
        if !matches!(len, 1 | 2 | 4 | 8) || offset + len > start + size {
            return;
        }
        let bytes = self.field_value(start).to_le_bytes();
        let at = (offset - start) as usize;
        data.copy_from_slice(&bytes[at..at + data.len()]);
    }

    /// Whether writing `data` at `offset` resets the device (0 to the device status), so the
    /// transport can look at the queues before they are cleared.
    pub fn resets_device(offset: u64, data: &[u8]) -> bool {
        offset == DEVICE_STATUS && data == [0]
    }

    /// A guest write; malformed accesses are ignored.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Option<CommonEvent> {
        let (start, size) = field(offset)?;
        let len = data.len() as u64;
        if !matches!(len, 1 | 2 | 4 | 8) || offset + len > start + size {
            tracing::debug!("virtio common cfg: ignored {len}-byte write at {offset:#x}");
            return None;
        }
        let mut bytes = self.field_value(start).to_le_bytes();
        let at = (offset - start) as usize;
        bytes[at..at + data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(bytes);
        self.apply(start, v)
    }

    fn apply(&mut self, start: u64, v: u64) -> Option<CommonEvent> {
        let features_locked = self.status & status::FEATURES_OK != 0;
        match start {
            DEVICE_FEATURE_SELECT => self.device_feature_select = v as u32,
            DRIVER_FEATURE_SELECT => self.driver_feature_select = v as u32,
            DRIVER_FEATURE if !features_locked => match self.driver_feature_select {
                0 => {
                    self.driver_features = (self.driver_features & !0xffff_ffff) | (v & 0xffff_ffff)
                }
                1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (v << 32),
                _ => {}
            },
            CONFIG_MSIX_VECTOR => {
                self.config_vector = self.valid_vector(v as u16);
                return Some(CommonEvent::VectorsChanged);
            }
            DEVICE_STATUS => return self.write_status(v as u8),
            QUEUE_SELECT => self.queue_select = v as u16,
            QUEUE_SIZE => {
                if let Some(q) = self.selected_mut().filter(|q| !q.ready) {
                    if !q.set_size(v as u16) {
                        tracing::debug!("virtio: ignored queue size {v}");
                    }
                }
            }
            QUEUE_MSIX_VECTOR => {
                let vector = self.valid_vector(v as u16);
                if let Some(q) = self.selected_mut() {
                    q.msix_vector = vector;
                    return Some(CommonEvent::VectorsChanged);
                }
            }
            // Only 1 enables; the driver must not write 0 (ignored).
            QUEUE_ENABLE if v == 1 => {
                if let Some(q) = self.selected_mut() {
                    q.ready = true;
                }
            }
            QUEUE_DESC | QUEUE_DRIVER | QUEUE_DEVICE => {
                if let Some(q) = self.selected_mut().filter(|q| !q.ready) {
                    match start {
                        QUEUE_DESC => q.desc = v,
                        QUEUE_DRIVER => q.avail = v,
                        _ => q.used = v,
                    }
                }
            }
            _ => {}
        }
        None
    }

    /// A vector outside the MSI-X table becomes NO_VECTOR, which the driver
    /// reads back as "allocation failed".
    fn valid_vector(&self, v: u16) -> u16 {
        if v < self.msix_vectors {
            v
        } else {
            NO_VECTOR
        }
    }

    fn write_status(&mut self, new: u8) -> Option<CommonEvent> {
        if new == 0 {
            self.reset();
            return Some(CommonEvent::Reset);
        }
        let old = self.status;
        // NEEDS_RESET is the device's to set; the driver cannot clear bits.
        let mut new = (new & !status::DEVICE_NEEDS_RESET) | old;
        if new & status::FEATURES_OK != 0 && old & status::FEATURES_OK == 0 {
            let subset = self.driver_features & !self.device_features == 0;
            let modern = self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !(subset && modern) {
                tracing::warn!(
                    "virtio: driver features {:#x} refused (offered {:#x})",
                    self.driver_features,
                    self.device_features
                );
                new &= !status::FEATURES_OK;
            }
        }
        self.status = new;
        let driver_ok_now = new & status::DRIVER_OK != 0 && old & status::DRIVER_OK == 0;
        (driver_ok_now && new & status::FEATURES_OK != 0).then_some(CommonEvent::DriverOk)
    }

    /// Marks the device as needing a reset (backend lost).
    pub fn set_needs_reset(&mut self) {
        self.status |= status::DEVICE_NEEDS_RESET;
        self.generation = self.generation.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rd(c: &CommonCfg, off: u64, len: usize) -> u64 {
        let mut b = [0u8; 8];
        c.read(off, &mut b[..len]);
        u64::from_le_bytes(b)
    }

    fn cfg() -> CommonCfg {
        CommonCfg::new(VIRTIO_F_VERSION_1 | 1 << 12, 2, 256, 3)
    }

    #[test]
    fn negotiation() {
        let mut c = cfg();
        c.write(DEVICE_FEATURE_SELECT, &1u32.to_le_bytes());
        assert_eq!(rd(&c, DEVICE_FEATURE, 4), 1);
        c.write(DRIVER_FEATURE_SELECT, &1u32.to_le_bytes());
        c.write(DRIVER_FEATURE, &1u32.to_le_bytes());
        c.write(DRIVER_FEATURE_SELECT, &0u32.to_le_bytes());
        c.write(DRIVER_FEATURE, &(1u32 << 12).to_le_bytes());
        assert_eq!(c.driver_features, VIRTIO_F_VERSION_1 | 1 << 12);
        assert_eq!(c.write(DEVICE_STATUS, &[1 | 2 | 8]), None);
        assert_eq!(rd(&c, DEVICE_STATUS, 1), 11);
        // Features are frozen after FEATURES_OK.
        c.write(DRIVER_FEATURE, &0u32.to_le_bytes());
        assert_eq!(c.driver_features, VIRTIO_F_VERSION_1 | 1 << 12);
        assert_eq!(c.write(DEVICE_STATUS, &[15]), Some(CommonEvent::DriverOk));
        assert!(CommonCfg::resets_device(DEVICE_STATUS, &[0]));
        assert!(!CommonCfg::resets_device(DEVICE_STATUS, &[1]));
        assert_eq!(c.write(DEVICE_STATUS, &[0]), Some(CommonEvent::Reset));
        assert_eq!(c.status, 0);
        assert_eq!(c.driver_features, 0);
    }

    #[test]
    fn features_not_offered_are_refused() {
        let mut c = cfg();
        c.write(DRIVER_FEATURE, &(1u32 << 5).to_le_bytes());
        c.write(DEVICE_STATUS, &[1 | 2 | 8]);
        assert_eq!(c.status & status::FEATURES_OK, 0);
        // Without VERSION_1 as well.
        let mut c = cfg();
        c.write(DEVICE_STATUS, &[1 | 2 | 8]);
        assert_eq!(c.status & status::FEATURES_OK, 0);
        // DRIVER_OK without FEATURES_OK does not start anything.
        assert_eq!(c.write(DEVICE_STATUS, &[1 | 2 | 4]), None);
    }

    #[test]
    fn hostile_queue_programming() {
        let mut c = cfg();
        // Out-of-range queue: reads as absent, writes ignored.
        c.write(QUEUE_SELECT, &7u16.to_le_bytes());
        assert_eq!(rd(&c, QUEUE_SIZE, 2), 0);
        c.write(QUEUE_SIZE, &16u16.to_le_bytes());
        c.write(QUEUE_ENABLE, &1u16.to_le_bytes());
        c.write(QUEUE_DESC, &0x1000u64.to_le_bytes());
        assert!(c.queues.iter().all(|q| !q.ready && q.desc == 0));
        // Bad sizes keep the old size.
        c.write(QUEUE_SELECT, &1u16.to_le_bytes());
        c.write(QUEUE_SIZE, &1000u16.to_le_bytes());
        c.write(QUEUE_SIZE, &100u16.to_le_bytes());
        c.write(QUEUE_SIZE, &0u16.to_le_bytes());
        assert_eq!(rd(&c, QUEUE_SIZE, 2), 256);
        c.write(QUEUE_SIZE, &128u16.to_le_bytes());
        assert_eq!(rd(&c, QUEUE_SIZE, 2), 128);
        // 64-bit address written as two halves.
        c.write(QUEUE_DRIVER, &0x5000u32.to_le_bytes());
        c.write(QUEUE_DRIVER + 4, &1u32.to_le_bytes());
        assert_eq!(c.queues[1].avail, 0x1_0000_5000);
        assert_eq!(rd(&c, QUEUE_NOTIFY_OFF, 2), 1);
        // Vectors outside the table read back as NO_VECTOR.
        c.write(QUEUE_MSIX_VECTOR, &9u16.to_le_bytes());
        assert_eq!(rd(&c, QUEUE_MSIX_VECTOR, 2), u64::from(NO_VECTOR));
        c.write(QUEUE_MSIX_VECTOR, &2u16.to_le_bytes());
        assert_eq!(rd(&c, QUEUE_MSIX_VECTOR, 2), 2);
        // Enabled queues are frozen.
        c.write(QUEUE_ENABLE, &1u16.to_le_bytes());
        c.write(QUEUE_SIZE, &64u16.to_le_bytes());
        assert_eq!(c.queues[1].size, 128);
    }

    #[test]
    fn odd_accesses_are_ignored() {
        let mut c = cfg();
        for (off, len) in [
            (0x01u64, 4usize),
            (0x12, 4),
            (0x13, 2),
            (0x100, 1),
            (0x00, 3),
        ] {
            let mut b = vec![0xaa; len];
            c.read(off, &mut b);
            assert!(b.iter().all(|&x| x == 0), "{off:#x}/{len}");
            assert_eq!(c.write(off, &b), None);
        }
        c.write(u64::MAX, &[1]);
        c.write(QUEUE_DESC + 2, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(c.queues[0].desc, 0);
        assert_eq!(rd(&c, NUM_QUEUES, 2), 2);
        // The driver cannot set NEEDS_RESET.
        c.write(DEVICE_STATUS, &[status::DEVICE_NEEDS_RESET | 1]);
        assert_eq!(c.status, 1);
    }
}
