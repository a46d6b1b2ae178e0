//! virtio-blk served by an external vhost-user backend: this side negotiates
//! features, shares guest memory (the memfd of every RAM region) and hands
//! the backend each queue's rings and its kick/call eventfds. Requests never
//! pass through the VMM.

use std::os::fd::RawFd;
use std::path::Path;

use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{VhostUserFrontend, VhostUserProtocolFeatures};

use super::link::{read_config, vhost_err, VhostUserLink};
use crate::config::DiskConfig;
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

impl VhostUserBlk {
    /// Connects to the backend at `path` and negotiates everything
    /// that does not depend on the guest driver.
    pub fn connect(path: &Path, cfg: &DiskConfig, index: usize) -> Result<Self, VirtioError> {
        let socket = path.display().to_string();
        let mut link = VhostUserLink::connect(
            path,
            format!("vhost-user-blk{index} {socket}"),
            1,
            VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK,
        )?;
        let err = |what| vhost_err(&socket, what);
        let missing = |what: String| VirtioError::Backend {
            socket: socket.clone(),
            what,
        };
        let protocol = link.protocol;
        if !protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(missing("backend lacks VHOST_USER_PROTOCOL_F_CONFIG".into()));
        }
        let features = link.backend_features;
        let (deadline, frontend) = (&link.deadline, &mut link.frontend);
        let (backend_queues, payload) = deadline.guard("configuration", || {
            let queues = if protocol.contains(VhostUserProtocolFeatures::MQ) {
                frontend.get_queue_num().map_err(err("GET_QUEUE_NUM"))?
            } else {
                1
            };
            Ok((queues, read_config::<BLK_CONFIG_LEN>(frontend, &socket)?))
        })?;
        let num_queues = match cfg.queues {
            Some(n) if u64::from(n) > backend_queues => {
                return Err(missing(format!(
                    "queues={n} requested but the backend serves {backend_queues}"
                )))
            }
            Some(n) => n,
            None => u16::try_from(backend_queues.clamp(1, 64)).unwrap_or(1),
        };
        let mut config = payload;
        // The guest sees the queue count we expose, not the backend's.
        config[BLK_CONFIG_NUM_QUEUES..BLK_CONFIG_NUM_QUEUES + 2]
            .copy_from_slice(&num_queues.to_le_bytes());
        link.set_num_queues(usize::from(num_queues))?;
        let capacity = u64::from_le_bytes(config[..8].try_into().unwrap_or_default());
        tracing::info!(
            "vhost-user-blk{index} {socket}: {capacity} sectors, {num_queues} queue(s) \
             of {}, features {features:#x}, protocol {:#x}",
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
}

impl VirtioDevice for VhostUserBlk {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_BLOCK
    }

    fn features(&self) -> u64 {
        let mut f = self.link.backend_features & GUEST_FEATURE_MASK;
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
        // Only `writeback` is writable; pass it on with SET_CONFIG and keep
        // the cached copy in step when the backend accepts it.
        if offset != BLK_CONFIG_WRITEBACK || data.len() != 1 || self.link.lost {
            tracing::debug!("{}: ignored config write at {offset:#x}", self.link.name);
            return;
        }
        let link = &mut self.link;
        let (deadline, frontend) = (&link.deadline, &mut link.frontend);
        let err = vhost_err(&link.socket, "SET_CONFIG writeback");
        match deadline.guard("SET_CONFIG", || {
            frontend
                .set_config(offset as u32, VhostUserConfigFlags::empty(), data)
                .map_err(err)
        }) {
            Ok(()) => self.config[BLK_CONFIG_WRITEBACK as usize] = data[0],
            Err(e) => tracing::warn!("{}: {e}", link.name),
        }
    }

    fn activate(&mut self, act: Activation<'_>) -> Result<(), VirtioError> {
        self.link.activate(&act)
    }

    fn reset(&mut self) {
        self.link.reset();
    }

    fn hangup_fd(&self) -> Option<RawFd> {
        Some(self.link.hangup_fd())
    }

    fn disconnected(&mut self) {
        self.link.lost = true;
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
