// SPDX-License-Identifier: Apache-2.0
//! virtio-blk served by an external vhost-user backend: this side negotiates
//! features, shares guest memory (the memfd of every RAM region) and hands
//! the backend each queue's rings and its kick/call eventfds. Requests never
//! pass through the VMM.

use std::os::fd::RawFd;
use std::path::Path;

use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{VhostUserFrontend, VhostUserProtocolFeatures};

use super::connection::{vhost_err, BackendTarget, Connection};
use super::link::{ReconnectError, VhostUserLink};
use crate::config::{DiskBackend, DiskConfig};
use crate::devices::virtio::{
    read_config_bytes, Activation, BackendState, VirtioDevice, VirtioError, VIRTIO_F_VERSION_1,
};

/// Virtio device ID of a block device.
pub const VIRTIO_ID_BLOCK: u16 = 2;
/// Bytes of `struct virtio_blk_config` read from the backend (up to and
/// including `write_zeroes_may_unmap` and its padding).
pub const BLK_CONFIG_LEN: usize = 60;
const BLK_CONFIG_NUM_QUEUES: usize = 34;
/// `writeback`: the only field the driver may write (with CONFIG_WCE).
const BLK_CONFIG_WRITEBACK: u64 = 32;
const VIRTIO_BLK_F_MQ: u64 = 1 << virtio_bindings::virtio_blk::VIRTIO_BLK_F_MQ;

/// Features passed from the backend to the guest: the block-specific bits,
/// indirect descriptors, event index and VERSION_1. Packed rings, platform
/// access, ring reset and notification data are not offered (the transport
/// does not implement them), nor secure erase and zoned (their config
/// fields lie past the [`BLK_CONFIG_LEN`] bytes fetched).
const GUEST_FEATURE_MASK: u64 = (((1 << 24) - 1)
    & !(1 << virtio_bindings::virtio_blk::VIRTIO_BLK_F_SECURE_ERASE)
    & !(1 << virtio_bindings::virtio_blk::VIRTIO_BLK_F_ZONED))
    | 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC
    | 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX
    | VIRTIO_F_VERSION_1;

/// A vhost-user-blk device.
pub struct VhostUserBlk {
    link: VhostUserLink,
    num_queues: u16,
    queue_size: u16,
    config: [u8; BLK_CONFIG_LEN],
    /// The backend's metrics address, if configured.
    metrics: Option<String>,
}

/// Protocol features a vhost-user-blk device asks for.
const WANTED_PROTOCOL: VhostUserProtocolFeatures = VhostUserProtocolFeatures::CONFIG
    .union(VhostUserProtocolFeatures::MQ)
    .union(VhostUserProtocolFeatures::REPLY_ACK)
    .union(VhostUserProtocolFeatures::INFLIGHT_SHMFD);

impl VhostUserBlk {
    /// Connects to the backend at `path` and negotiates everything
    /// that does not depend on the guest driver.
    pub fn connect(path: &Path, cfg: &DiskConfig, index: usize) -> Result<Self, VirtioError> {
        let socket = path.display().to_string();
        let reconnect = match &cfg.backend {
            DiskBackend::VhostUser { reconnect, .. } => *reconnect,
            DiskBackend::File { .. } => Default::default(),
        };
        let mut link = VhostUserLink::connect(BackendTarget {
            socket: path.to_path_buf(),
            name: format!("vhost-user-blk{index} {socket}"),
            max_queues: 1,
            wanted: WANTED_PROTOCOL,
            reconnect,
        })?;
        let missing = |what: String| VirtioError::Backend {
            socket: socket.clone(),
            what,
        };
        let protocol = link.conn.protocol;
        if !protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(missing("backend lacks VHOST_USER_PROTOCOL_F_CONFIG".into()));
        }
        let features = link.conn.backend_features;
        let backend_queues = link.conn.queue_num()?;
        let mut config = link.conn.read_config::<BLK_CONFIG_LEN>()?;
        let num_queues = match cfg.queues {
            Some(n) if u64::from(n) > backend_queues => {
                return Err(missing(format!(
                    "queues={n} requested but the backend serves {backend_queues}"
                )))
            }
            Some(n) => n,
            None => u16::try_from(backend_queues.clamp(1, 64)).unwrap_or(1),
        };
        // The guest sees the queue count we expose, not the backend's.
        config[BLK_CONFIG_NUM_QUEUES..BLK_CONFIG_NUM_QUEUES + 2]
            .copy_from_slice(&num_queues.to_le_bytes());
        link.set_num_queues(usize::from(num_queues))?;
        tracing::info!(
            "vhost-user-blk{index} {socket}: {} sectors, {num_queues} queue(s) \
             of {}, features {features:#x}, protocol {:#x}",
            capacity(&config),
            cfg.queue_size,
            protocol.bits()
        );
        Ok(Self {
            link,
            num_queues,
            queue_size: cfg.queue_size,
            config,
            metrics: cfg.metrics.as_ref().map(ToString::to_string),
        })
    }

    /// Whether the backend behind `conn` serves this same disk: the features the guest was
    /// offered, the protocol features agreed on, enough queues, the same configuration
    /// (capacity first); `Err` names the first difference. Reads the new backend's config.
    fn same_disk(&self, conn: &mut Connection) -> Result<(), ReconnectError> {
        let refused = |what: String| Err(ReconnectError::Refused(what));
        let missing = self.features() & !conn.backend_features;
        if missing != 0 {
            return refused(format!(
                "the backend no longer offers features {missing:#x}"
            ));
        }
        let lost = self.link.conn.protocol.difference(conn.protocol);
        if !lost.is_empty() {
            return refused(format!(
                "the backend no longer offers protocol features {:#x}",
                lost.bits()
            ));
        }
        let queues = conn.queue_num()?;
        if queues < u64::from(self.num_queues) {
            return refused(format!(
                "the backend serves {queues} queue(s), the disk has {}",
                self.num_queues
            ));
        }
        let mut config = conn.read_config::<BLK_CONFIG_LEN>()?;
        let (old, new) = (capacity(&self.config), capacity(&config));
        if old != new {
            return refused(format!("capacity {old} -> {new} sectors"));
        }
        // Ours, not the backend's: the queue count the guest sees and the cache mode it set.
        config[BLK_CONFIG_NUM_QUEUES..BLK_CONFIG_NUM_QUEUES + 2]
            .copy_from_slice(&self.config[BLK_CONFIG_NUM_QUEUES..BLK_CONFIG_NUM_QUEUES + 2]);
        config[BLK_CONFIG_WRITEBACK as usize] = self.config[BLK_CONFIG_WRITEBACK as usize];
        if let Some(at) = (0..BLK_CONFIG_LEN).find(|&i| config[i] != self.config[i]) {
            return refused(format!(
                "configuration byte {at}: {:#x} -> {:#x}",
                self.config[at], config[at]
            ));
        }
        Ok(())
    }

    /// SET_CONFIG of the guest's cache mode (`writeback`) on the current connection.
    fn send_writeback(&mut self, value: u8) -> Result<(), VirtioError> {
        self.link.conn.exchange("SET_CONFIG", |f, socket| {
            f.set_config(
                BLK_CONFIG_WRITEBACK as u32,
                VhostUserConfigFlags::empty(),
                &[value],
            )
            .map_err(vhost_err(socket, "SET_CONFIG writeback"))
        })
    }
}

/// The capacity field (sectors) of a block configuration.
fn capacity(config: &[u8; BLK_CONFIG_LEN]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&config[..8]);
    u64::from_le_bytes(b)
}

impl VirtioDevice for VhostUserBlk {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_BLOCK
    }

    fn features(&self) -> u64 {
        let mut f = self.link.conn.backend_features & GUEST_FEATURE_MASK;
        if self.num_queues == 1 {
            f &= !VIRTIO_BLK_F_MQ;
        }
        f
    }

    fn num_queues(&self) -> u16 {
        self.num_queues
    }

    fn queue_max_size(&self) -> u16 {
        self.queue_size
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `writeback` is writable; pass it on with SET_CONFIG and keep the cached copy in
        // step when the backend accepts it (while the backend is away, keep it for the next).
        let [value] = data else {
            tracing::debug!("{}: ignored config write at {offset:#x}", self.link.name);
            return;
        };
        if offset != BLK_CONFIG_WRITEBACK {
            tracing::debug!("{}: ignored config write at {offset:#x}", self.link.name);
            return;
        }
        if self.link.lost() {
            self.config[BLK_CONFIG_WRITEBACK as usize] = *value;
            return;
        }
        match self.send_writeback(*value) {
            Ok(()) => self.config[BLK_CONFIG_WRITEBACK as usize] = *value,
            Err(e) => tracing::warn!("{}: {e}", self.link.name),
        }
    }

    fn activate(&mut self, act: Activation<'_>) -> Result<(), VirtioError> {
        self.link.activate(&act)
    }

    fn reset(&mut self) {
        self.link.reset();
    }

    fn hangup_fd(&self) -> Option<RawFd> {
        Some(self.link.conn.hangup_fd())
    }

    fn reconnect_target(&self) -> Option<BackendTarget> {
        self.link.reconnect_target()
    }

    fn connection_lost(&mut self) {
        self.link.connection_lost();
    }

    fn reconnected(&mut self, mut conn: Connection) -> Result<(), ReconnectError> {
        self.same_disk(&mut conn)?;
        self.link.resume(conn)?;
        // A new backend starts in writeback mode: give it the guest's choice again.
        let writeback = self.config[BLK_CONFIG_WRITEBACK as usize];
        if writeback != 1 {
            self.send_writeback(writeback)?;
        }
        Ok(())
    }

    fn disconnected(&mut self) {
        self.link.connection_lost();
        // Linux 6.1 does not act on DEVICE_NEEDS_RESET, but it does re-read
        // the capacity on a config interrupt: a zero-sized disk turns new
        // I/O into errors/EOF at once instead of requests that never finish.
        self.config[..8].fill(0);
    }

    fn backend_state(&self) -> Option<BackendState> {
        Some(self.link.state())
    }

    fn backend_metrics(&self) -> Option<String> {
        self.metrics.clone()
    }

    fn name(&self) -> String {
        self.link.name.clone()
    }
}
