//! virtio-net served by an external vhost-user backend (one queue pair, no control queue):
//! like [`super::vhost_user_blk`], this side only negotiates, shares guest memory and hands
//! the backend the rings and kick/call eventfds; frames never pass through the VMM.
//!
//! The device config (MAC, status, max_virtqueue_pairs, MTU) is built here: the MAC from
//! `--net mac=` (or the backend's config when it offers one), the MTU from the backend's
//! config (GET_CONFIG) when it offers VIRTIO_NET_F_MTU.

use std::os::fd::{AsRawFd, RawFd};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_net::*;
use vm_memory::GuestMemoryBackend;
use vmm_sys_util::eventfd::EventFd;

use super::vhost_user_blk::host_addr;
use super::{Activation, VirtioBackend, VirtioError, VIRTIO_F_VERSION_1};
use crate::config::VhostUserNetConfig;

/// Virtio device ID of a network card.
pub const VIRTIO_ID_NET: u16 = 1;
/// Bytes of `struct virtio_net_config` exposed: mac, status, max_virtqueue_pairs, mtu.
pub const NET_CONFIG_LEN: usize = 12;
const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// Features passed from the backend to the guest: the data-path net bits the backend
/// implements, indirect descriptors, event index, VERSION_1. Not the control-queue family
/// (CTRL_VQ, CTRL_RX, CTRL_VLAN, GUEST_ANNOUNCE, MQ, CTRL_MAC_ADDR, CTRL_GUEST_OFFLOADS):
/// this VMM has no control queue yet, so the guest sees one queue pair.
const GUEST_FEATURE_MASK: u64 = VIRTIO_F_VERSION_1
    | 1 << VIRTIO_NET_F_CSUM
    | 1 << VIRTIO_NET_F_GUEST_CSUM
    | 1 << VIRTIO_NET_F_MTU
    | 1 << VIRTIO_NET_F_MAC
    | 1 << VIRTIO_NET_F_GUEST_TSO4
    | 1 << VIRTIO_NET_F_GUEST_TSO6
    | 1 << VIRTIO_NET_F_GUEST_ECN
    | 1 << VIRTIO_NET_F_HOST_TSO4
    | 1 << VIRTIO_NET_F_HOST_TSO6
    | 1 << VIRTIO_NET_F_HOST_ECN
    | 1 << VIRTIO_NET_F_MRG_RXBUF
    | 1 << VIRTIO_NET_F_STATUS
    | 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC
    | 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// A vhost-user-net device.
pub struct VhostUserNet {
    name: String,
    socket: String,
    frontend: Frontend,
    backend_features: u64,
    /// Features offered to the guest.
    offered: u64,
    queue_size: u16,
    config: [u8; NET_CONFIG_LEN],
    started: Vec<bool>,
    errs: Vec<EventFd>,
    lost: bool,
}

impl VhostUserNet {
    /// Connects to the backend at `cfg.socket` and negotiates everything that does not depend
    /// on the guest driver.
    pub fn connect(cfg: &VhostUserNetConfig, index: usize) -> Result<Self, VirtioError> {
        let socket = cfg.socket.display().to_string();
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
        let mut frontend = Frontend::connect(&cfg.socket, 2).map_err(err("connect"))?;
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
        let offered_proto = frontend
            .get_protocol_features()
            .map_err(err("GET_PROTOCOL_FEATURES"))?;
        let protocol = offered_proto
            & (VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK);
        frontend
            .set_protocol_features(protocol)
            .map_err(err("SET_PROTOCOL_FEATURES"))?;
        if let Some(q) = cfg.queues.filter(|&q| q > 1) {
            return Err(missing(format!(
                "queues={q}: this VMM has no virtio-net control queue yet, only 1 queue pair"
            )));
        }
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let mut config = [0u8; NET_CONFIG_LEN];
        if protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            let (_, payload) = frontend
                .get_config(
                    0,
                    NET_CONFIG_LEN as u32,
                    VhostUserConfigFlags::empty(),
                    &[0u8; NET_CONFIG_LEN],
                )
                .map_err(err("GET_CONFIG"))?;
            let n = payload.len().min(NET_CONFIG_LEN);
            config[..n].copy_from_slice(&payload[..n]);
        }
        let mut offered = features & GUEST_FEATURE_MASK;
        if let Some(mac) = cfg.mac {
            config[..6].copy_from_slice(&mac);
            offered |= 1 << VIRTIO_NET_F_MAC;
        } else if !protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            // Without the backend's config the MAC is unknown: let the guest pick one.
            offered &= !(1 << VIRTIO_NET_F_MAC);
        }
        if !protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            offered &= !(1 << VIRTIO_NET_F_MTU);
        }
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        let errs = (0..2)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))
            .collect::<Result<Vec<_>, _>>()
            .map_err(VirtioError::Io)?;
        let mac = &config[..6];
        let mtu = u16::from_le_bytes([config[10], config[11]]);
        tracing::info!(
            "vhost-user-net{index} {socket}: mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, \
             mtu {mtu}, queue size {}, backend features {features:#x}, guest features \
             {offered:#x}, protocol {:#x}",
            mac[0],
            mac[1],
            mac[2],
            mac[3],
            mac[4],
            mac[5],
            cfg.queue_size,
            protocol.bits()
        );
        Ok(Self {
            name: format!("vhost-user-net{index} {socket}"),
            socket,
            frontend,
            backend_features: features,
            offered,
            queue_size: cfg.queue_size,
            config,
            started: vec![false; 2],
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

impl VirtioBackend for VhostUserNet {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_NET
    }

    fn features(&self) -> u64 {
        self.offered
    }

    fn num_queues(&self) -> u16 {
        2
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

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // virtio-net's config is read-only for the driver (MAC changes go through the
        // control queue, which this device does not have).
        tracing::debug!("{}: ignored config write at {offset:#x}", self.name);
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
        // Link down: Linux re-reads `status` on a config interrupt.
        self.config[6..8].fill(0);
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_mask_has_no_control_queue_features() {
        for bit in [
            VIRTIO_NET_F_CTRL_VQ,
            VIRTIO_NET_F_MQ,
            VIRTIO_NET_F_CTRL_RX,
            VIRTIO_NET_F_GUEST_ANNOUNCE,
        ] {
            assert_eq!(GUEST_FEATURE_MASK & (1 << bit), 0, "bit {bit}");
        }
        assert_ne!(GUEST_FEATURE_MASK & (1 << VIRTIO_NET_F_MRG_RXBUF), 0);
        assert_ne!(GUEST_FEATURE_MASK & VIRTIO_F_VERSION_1, 0);
    }
}
