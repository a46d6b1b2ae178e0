//! virtio-net served by an external vhost-user backend (one queue pair, no control queue):
//! like [`super::vhost_user_blk`], this side only negotiates, shares guest memory and hands
//! the backend the rings and kick/call eventfds; frames never pass through the VMM.
//!
//! The device config (MAC, status, max_virtqueue_pairs, MTU) is built here: the MAC from
//! `--net mac=` (or the backend's config when it offers one), the MTU from the backend's
//! config (GET_CONFIG) when it offers VIRTIO_NET_F_MTU.

use std::os::fd::RawFd;

use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{VhostUserFrontend, VhostUserProtocolFeatures};
use virtio_bindings::virtio_net::*;

use super::vhost_user::{vhost_err, VhostUserLink};
use super::{Activation, VirtioBackend, VirtioError, VIRTIO_F_VERSION_1};
use crate::config::VhostUserNetConfig;

/// Virtio device ID of a network card.
pub const VIRTIO_ID_NET: u16 = 1;
/// Bytes of `struct virtio_net_config` exposed: mac, status, max_virtqueue_pairs, mtu.
pub const NET_CONFIG_LEN: usize = 12;

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
    link: VhostUserLink,
    /// Features offered to the guest.
    offered: u64,
    queue_size: u16,
    config: [u8; NET_CONFIG_LEN],
}

impl VhostUserNet {
    /// Connects to the backend at `cfg.socket` and negotiates everything that does not depend
    /// on the guest driver.
    pub fn connect(cfg: &VhostUserNetConfig, index: usize) -> Result<Self, VirtioError> {
        let socket = cfg.socket.display().to_string();
        let mut link = VhostUserLink::connect(
            &cfg.socket,
            format!("vhost-user-net{index} {socket}"),
            2,
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
        let features = link.backend_features;
        let frontend = &mut link.frontend;
        if let Some(q) = cfg.queues.filter(|&q| q > 1) {
            return Err(missing(format!(
                "queues={q}: this VMM has no virtio-net control queue yet, only 1 queue pair"
            )));
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
        link.set_num_queues(2)?;
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
            link,
            offered,
            queue_size: cfg.queue_size,
            config,
        })
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
        tracing::debug!("{}: ignored config write at {offset:#x}", self.link.name);
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
        // Link down: Linux re-reads `status` on a config interrupt.
        self.config[6..8].fill(0);
    }

    fn name(&self) -> String {
        self.link.name.clone()
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
