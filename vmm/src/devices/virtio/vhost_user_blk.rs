//! virtio-blk served by an external vhost-user backend: this side negotiates
//! features, shares guest memory (the memfd of every RAM region) and hands
//! the backend each queue's rings and its kick/call eventfds. Requests never
//! pass through the VMM.

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::{Activation, VirtioBackend, VirtioError, VIRTIO_F_VERSION_1};
use crate::config::DiskConfig;

/// Virtio device ID of a block device.
pub const VIRTIO_ID_BLOCK: u16 = 2;
/// Bytes of `struct virtio_blk_config` read from the backend (up to and
/// including `write_zeroes_may_unmap` and its padding).
pub const BLK_CONFIG_LEN: usize = 60;
const BLK_CONFIG_NUM_QUEUES: usize = 34;
/// `writeback`: the only field the driver may write (with CONFIG_WCE).
const BLK_CONFIG_WRITEBACK: u64 = 32;
const VIRTIO_BLK_F_MQ: u64 = 1 << virtio_bindings::virtio_blk::VIRTIO_BLK_F_MQ;
const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

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
    name: String,
    socket: String,
    frontend: Frontend,
    backend_features: u64,
    num_queues: u16,
    queue_size: u16,
    config: [u8; BLK_CONFIG_LEN],
    started: Vec<bool>,
    errs: Vec<EventFd>,
    lost: bool,
}

impl VhostUserBlk {
    /// Connects to the backend at `path` and negotiates everything
    /// that does not depend on the guest driver.
    pub fn connect(path: &Path, cfg: &DiskConfig, index: usize) -> Result<Self, VirtioError> {
        let socket = path.display().to_string();
        let err = |what: &'static str| {
            let socket = socket.clone();
            move |source| VirtioError::VhostUser {
                socket,
                what,
                source,
            }
        };
        let missing = |what: String| VirtioError::Backend {
            socket: socket.clone(),
            what,
        };
        let mut frontend = Frontend::connect(path, 1).map_err(err("connect"))?;
        frontend.set_owner().map_err(err("SET_OWNER"))?;
        let features = frontend.get_features().map_err(err("GET_FEATURES"))?;
        if features & VIRTIO_F_VERSION_1 == 0 {
            return Err(missing("backend does not offer VIRTIO_F_VERSION_1".into()));
        }
        if features & PROTOCOL_FEATURES == 0 {
            return Err(missing(
                "backend does not offer VHOST_USER_F_PROTOCOL_FEATURES".into(),
            ));
        }
        let offered = frontend
            .get_protocol_features()
            .map_err(err("GET_PROTOCOL_FEATURES"))?;
        let wanted = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK;
        let protocol = offered & wanted;
        if !protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(missing("backend lacks VHOST_USER_PROTOCOL_F_CONFIG".into()));
        }
        frontend
            .set_protocol_features(protocol)
            .map_err(err("SET_PROTOCOL_FEATURES"))?;
        let backend_queues = if protocol.contains(VhostUserProtocolFeatures::MQ) {
            frontend.get_queue_num().map_err(err("GET_QUEUE_NUM"))?
        } else {
            1
        };
        let num_queues = match cfg.queues {
            Some(n) if u64::from(n) > backend_queues => {
                return Err(missing(format!(
                    "queues={n} requested but the backend serves {backend_queues}"
                )))
            }
            Some(n) => n,
            None => u16::try_from(backend_queues.clamp(1, 64)).unwrap_or(1),
        };
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let (_, payload) = frontend
            .get_config(
                0,
                BLK_CONFIG_LEN as u32,
                VhostUserConfigFlags::empty(),
                &[0u8; BLK_CONFIG_LEN],
            )
            .map_err(err("GET_CONFIG"))?;
        let mut config = [0u8; BLK_CONFIG_LEN];
        let n = payload.len().min(BLK_CONFIG_LEN);
        config[..n].copy_from_slice(&payload[..n]);
        // The guest sees the queue count we expose, not the backend's.
        config[BLK_CONFIG_NUM_QUEUES..BLK_CONFIG_NUM_QUEUES + 2]
            .copy_from_slice(&num_queues.to_le_bytes());
        let errs = (0..num_queues)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))
            .collect::<Result<Vec<_>, _>>()
            .map_err(VirtioError::Io)?;
        let capacity = u64::from_le_bytes(config[..8].try_into().unwrap_or_default());
        tracing::info!(
            "vhost-user-blk{index} {socket}: {capacity} sectors, {num_queues} queue(s) \
             of {}, features {features:#x}, protocol {:#x}",
            cfg.queue_size,
            protocol.bits()
        );
        Ok(Self {
            name: format!("vhost-user-blk{index} {socket}"),
            socket,
            frontend,
            backend_features: features,
            num_queues,
            queue_size: cfg.queue_size,
            config,
            started: vec![false; usize::from(num_queues)],
            errs,
            lost: false,
        })
    }

    fn err(&self, what: &'static str) -> impl FnOnce(vhost::Error) -> VirtioError {
        let socket = self.socket.clone();
        move |source| VirtioError::VhostUser {
            socket,
            what,
            source,
        }
    }

    fn start_queue(
        &mut self,
        i: usize,
        act: &Activation<'_>,
        q: &super::QueueState,
    ) -> Result<(), VirtioError> {
        let (dl, al, ul) = q.ring_lengths();
        let data = VringConfigData {
            queue_max_size: q.max_size,
            queue_size: q.size,
            flags: 0,
            desc_table_addr: host_addr(act.mem, i, q.desc, dl)?,
            used_ring_addr: host_addr(act.mem, i, q.used, ul)?,
            avail_ring_addr: host_addr(act.mem, i, q.avail, al)?,
            log_addr: None,
        };
        let (Some(kick), Some(call), Some(errfd)) =
            (act.kicks.get(i), act.calls.get(i), self.errs.get(i))
        else {
            return Ok(());
        };
        let f = &mut self.frontend;
        let e = |what| {
            let socket = self.socket.clone();
            move |source| VirtioError::VhostUser {
                socket,
                what,
                source,
            }
        };
        f.set_vring_num(i, q.size).map_err(e("SET_VRING_NUM"))?;
        f.set_vring_addr(i, &data).map_err(e("SET_VRING_ADDR"))?;
        f.set_vring_base(i, 0).map_err(e("SET_VRING_BASE"))?;
        f.set_vring_kick(i, kick).map_err(e("SET_VRING_KICK"))?;
        f.set_vring_call(i, call).map_err(e("SET_VRING_CALL"))?;
        f.set_vring_err(i, errfd).map_err(e("SET_VRING_ERR"))?;
        f.set_vring_enable(i, true).map_err(e("SET_VRING_ENABLE"))?;
        self.started[i] = true;
        Ok(())
    }
}

/// Translates a guest ring address to this process's address, checking the
/// whole ring lies in one RAM region.
pub(super) fn host_addr(
    mem: &GuestMemoryMmap,
    queue: usize,
    gpa: u64,
    len: u64,
) -> Result<u64, VirtioError> {
    let bad = || VirtioError::BadRing {
        queue,
        addr: gpa,
        len,
    };
    let region = mem.find_region(GuestAddress(gpa)).ok_or_else(bad)?;
    let off = region.to_region_addr(GuestAddress(gpa)).ok_or_else(bad)?;
    if off.0.checked_add(len).is_none_or(|end| end > region.len()) {
        return Err(bad());
    }
    let ptr = region.get_host_address(off).map_err(|_| bad())?;
    Ok(ptr as u64)
}

impl VirtioBackend for VhostUserBlk {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_BLOCK
    }

    fn features(&self) -> u64 {
        let mut f = self.backend_features & GUEST_FEATURE_MASK;
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
        data.fill(0);
        let start = offset as usize;
        if let Some(src) = start
            .checked_add(data.len())
            .and_then(|end| self.config.get(start..end))
        {
            data.copy_from_slice(src);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `writeback` is writable; pass it on with SET_CONFIG and keep
        // the cached copy in step when the backend accepts it.
        if offset != BLK_CONFIG_WRITEBACK || data.len() != 1 || self.lost {
            tracing::debug!("{}: ignored config write at {offset:#x}", self.name);
            return;
        }
        match self
            .frontend
            .set_config(offset as u32, VhostUserConfigFlags::empty(), data)
        {
            Ok(()) => self.config[BLK_CONFIG_WRITEBACK as usize] = data[0],
            Err(e) => tracing::warn!("{}: SET_CONFIG writeback: {e}", self.name),
        }
    }

    fn activate(&mut self, act: Activation<'_>) -> Result<(), VirtioError> {
        if self.lost {
            return Err(VirtioError::Backend {
                socket: self.socket.clone(),
                what: "backend disconnected".into(),
            });
        }
        let features = (act.acked_features & self.backend_features) | PROTOCOL_FEATURES;
        self.frontend
            .set_features(features)
            .map_err(self.err("SET_FEATURES"))?;
        let regions = act
            .mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err("memory regions"))?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(self.err("SET_MEM_TABLE"))?;
        for (i, q) in act.queues.iter().enumerate() {
            if q.ready {
                self.start_queue(i, &act, q)?;
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        for i in 0..self.started.len() {
            if !std::mem::take(&mut self.started[i]) || self.lost {
                continue;
            }
            if let Err(e) = self.frontend.set_vring_enable(i, false) {
                tracing::warn!("{}: queue {i}: SET_VRING_ENABLE 0: {e}", self.name);
            }
            match self.frontend.get_vring_base(i) {
                Ok(base) => tracing::debug!("{}: queue {i} stopped at {base}", self.name),
                Err(e) => tracing::warn!("{}: queue {i}: GET_VRING_BASE: {e}", self.name),
            }
        }
    }

    fn hangup_fd(&self) -> Option<RawFd> {
        Some(self.frontend.as_raw_fd())
    }

    fn disconnected(&mut self) {
        self.lost = true;
        // Linux 6.1 does not act on DEVICE_NEEDS_RESET, but it does re-read
        // the capacity on a config interrupt: a zero-sized disk turns new
        // I/O into errors/EOF at once instead of requests that never finish.
        self.config[..8].fill(0);
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}
