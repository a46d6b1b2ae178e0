// SPDX-License-Identifier: Apache-2.0
//! virtio-net served by an external vhost-user backend: like [`super::blk`],
//! this side only negotiates, shares guest memory and hands the backend the rings and
//! kick/call eventfds; frames never pass through the VMM.
//!
//! With `queues=N` (N>1) the device has N queue pairs and a control queue (index 2N), and
//! offers VIRTIO_NET_F_MQ and VIRTIO_NET_F_CTRL_VQ: the backend must offer both and serve
//! the control queue itself (VQ_PAIRS_SET), so the control path stays out of the VMM too.
//! The control queue is handed over like any other queue (ioeventfd kick, irqfd call).
//!
//! The device config (MAC, status, max_virtqueue_pairs, MTU) is built here: the MAC from
//! `--net mac=` (or the backend's config when it offers one), the MTU from the backend's
//! config (GET_CONFIG) when it offers VIRTIO_NET_F_MTU.

use std::os::fd::RawFd;

use vhost::vhost_user::VhostUserProtocolFeatures;
use virtio_bindings::virtio_net::*;

use super::connection::{BackendTarget, Connection};
use super::link::{ReconnectError, VhostUserLink};
use crate::config::VhostUserNetConfig;
use crate::devices::virtio::{
    read_config_bytes, Activation, BackendState, VirtioDevice, VirtioError, VIRTIO_F_VERSION_1,
};

/// Virtio device ID of a network card.
pub const VIRTIO_ID_NET: u16 = 1;
/// Bytes of `struct virtio_net_config` exposed: mac, status, max_virtqueue_pairs, mtu.
pub const NET_CONFIG_LEN: usize = 12;

/// Features passed from the backend to the guest: the data-path net bits the backend
/// implements, indirect descriptors, event index, VERSION_1. Not the control-queue family
/// (CTRL_VQ, CTRL_RX, CTRL_VLAN, GUEST_ANNOUNCE, MQ, CTRL_MAC_ADDR, CTRL_GUEST_OFFLOADS):
/// CTRL_VQ and MQ are added by [`MQ_FEATURES`] for more than one pair, the rest never.
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

/// Multiqueue: the backend serves the control queue and its `VQ_PAIRS_SET`.
const MQ_FEATURES: u64 = 1 << VIRTIO_NET_F_MQ | 1 << VIRTIO_NET_F_CTRL_VQ;

/// A vhost-user-net device.
pub struct VhostUserNet {
    link: VhostUserLink,
    /// Features offered to the guest.
    offered: u64,
    /// Queue pairs.
    pairs: u16,
    /// The MAC address given with `mac=` (otherwise the backend's).
    mac: Option<[u8; 6]>,
    /// Virtqueues: 2 per pair, plus the control queue with several pairs.
    num_queues: u16,
    queue_size: u16,
    config: [u8; NET_CONFIG_LEN],
    /// The backend's metrics address, if configured.
    metrics: Option<String>,
}

/// Protocol features a vhost-user-net device asks for.
const WANTED_PROTOCOL: VhostUserProtocolFeatures = VhostUserProtocolFeatures::CONFIG
    .union(VhostUserProtocolFeatures::MQ)
    .union(VhostUserProtocolFeatures::REPLY_ACK)
    .union(VhostUserProtocolFeatures::INFLIGHT_SHMFD);

impl VhostUserNet {
    /// Connects to the backend at `cfg.socket` and negotiates everything that does not depend
    /// on the guest driver.
    pub fn connect(cfg: &VhostUserNetConfig, index: usize) -> Result<Self, VirtioError> {
        let socket = cfg.socket.display().to_string();
        let pairs = cfg.queues.unwrap_or(1);
        // Data queues plus the control queue when there are several pairs.
        let num_queues = if pairs > 1 { 2 * pairs + 1 } else { 2 };
        let mut link = VhostUserLink::connect(BackendTarget {
            socket: cfg.socket.clone(),
            name: format!("vhost-user-net{index} {socket}"),
            max_queues: u64::from(num_queues),
            wanted: WANTED_PROTOCOL,
            reconnect: cfg.reconnect,
        })?;
        require_multiqueue(&link.conn, pairs)?;
        let mut config = query_backend(&mut link.conn, pairs, num_queues)?;
        let (protocol, features) = (link.conn.protocol, link.conn.backend_features);
        let offered = guest_features(features, protocol, pairs, cfg.mac);
        if let Some(mac) = cfg.mac {
            config[..6].copy_from_slice(&mac);
        }
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&pairs.to_le_bytes());
        link.set_num_queues(usize::from(num_queues))?;
        let mac = &config[..6];
        let mtu = u16::from_le_bytes([config[10], config[11]]);
        tracing::info!(
            "vhost-user-net{index} {socket}: mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, \
             mtu {mtu}, {pairs} queue pair(s) of {}, backend features {features:#x}, guest features \
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
            pairs,
            mac: cfg.mac,
            num_queues,
            queue_size: cfg.queue_size,
            config,
            metrics: cfg.metrics.as_ref().map(ToString::to_string),
        })
    }

    /// Whether the backend behind `conn` serves this same NIC: the features the guest was
    /// offered, the protocol features agreed on, enough queues, the same MAC (when it came
    /// from the backend) and MTU; `Err` names the first difference.
    fn same_nic(&self, conn: &mut Connection) -> Result<(), ReconnectError> {
        let refused = |what: String| Err(ReconnectError::Refused(what));
        let offered = guest_features(conn.backend_features, conn.protocol, self.pairs, self.mac);
        let missing = self.offered & !offered;
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
        if let Err(e) = require_multiqueue(conn, self.pairs) {
            return refused(e.to_string());
        }
        let config = match query_backend(conn, self.pairs, self.num_queues) {
            Err(VirtioError::Backend { what, .. }) => return refused(what),
            other => other?,
        };
        if self.mac.is_none() && config[..6] != self.config[..6] {
            return refused("the backend offers another MAC address".into());
        }
        let mtu = |c: &[u8; NET_CONFIG_LEN]| u16::from_le_bytes([c[10], c[11]]);
        if mtu(&config) != mtu(&self.config) {
            return refused(format!("MTU {} -> {}", mtu(&self.config), mtu(&config)));
        }
        Ok(())
    }
}

/// The error for a backend that lacks what the configuration needs.
fn missing(conn: &Connection, what: String) -> VirtioError {
    VirtioError::Backend {
        socket: conn.socket.clone(),
        what,
    }
}

/// More than one pair needs the backend's MQ protocol feature and its
/// VIRTIO_NET_F_MQ and VIRTIO_NET_F_CTRL_VQ (it serves the control queue).
fn require_multiqueue(conn: &Connection, pairs: u16) -> Result<(), VirtioError> {
    if pairs <= 1 {
        return Ok(());
    }
    if !conn.protocol.contains(VhostUserProtocolFeatures::MQ) {
        return Err(missing(
            conn,
            format!("queues={pairs} needs VHOST_USER_PROTOCOL_F_MQ, which the backend lacks"),
        ));
    }
    let features = conn.backend_features;
    if features & MQ_FEATURES != MQ_FEATURES {
        return Err(missing(
            conn,
            format!(
                "queues={pairs} needs a backend offering VIRTIO_NET_F_MQ and \
                 VIRTIO_NET_F_CTRL_VQ (it serves the control queue); this one offers {}",
                if features & (1 << VIRTIO_NET_F_MQ) != 0 {
                    "MQ without CTRL_VQ"
                } else {
                    "neither"
                }
            ),
        ));
    }
    Ok(())
}

/// Asks the backend how many queues it serves (with several pairs; too few
/// is an error) and for its config space (zeros without the CONFIG feature).
fn query_backend(
    conn: &mut Connection,
    pairs: u16,
    num_queues: u16,
) -> Result<[u8; NET_CONFIG_LEN], VirtioError> {
    if pairs > 1 {
        let backend_queues = conn.queue_num()?;
        if backend_queues < u64::from(num_queues) {
            return Err(missing(
                conn,
                format!(
                    "queues={pairs} needs {num_queues} virtqueues (with the control queue) \
                     but the backend serves {backend_queues}; start it with --queues {pairs} \
                     or more"
                ),
            ));
        }
    }
    conn.read_config::<NET_CONFIG_LEN>()
}

/// The features offered to the guest: the backend's within
/// [`GUEST_FEATURE_MASK`], multiqueue with several pairs, MAC when configured
/// (or known from the backend's config), MTU only from the backend's config.
fn guest_features(
    backend: u64,
    protocol: VhostUserProtocolFeatures,
    pairs: u16,
    mac: Option<[u8; 6]>,
) -> u64 {
    let has_config = protocol.contains(VhostUserProtocolFeatures::CONFIG);
    let mut offered = backend & GUEST_FEATURE_MASK;
    if pairs > 1 {
        offered |= MQ_FEATURES;
    }
    if mac.is_some() {
        offered |= 1 << VIRTIO_NET_F_MAC;
    } else if !has_config {
        // Without the backend's config the MAC is unknown: let the guest pick one.
        offered &= !(1 << VIRTIO_NET_F_MAC);
    }
    if !has_config {
        offered &= !(1 << VIRTIO_NET_F_MTU);
    }
    offered
}

impl VirtioDevice for VhostUserNet {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_NET
    }

    fn features(&self) -> u64 {
        self.offered
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

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // virtio-net's config is read-only for the driver (MAC changes would go through
        // the control queue, with CTRL_MAC_ADDR, which is not offered).
        tracing::debug!("{}: ignored config write at {offset:#x}", self.link.name);
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
        self.same_nic(&mut conn)?;
        self.link.resume(conn)?;
        Ok(())
    }

    fn disconnected(&mut self) {
        self.link.connection_lost();
        // Link down: Linux re-reads `status` on a config interrupt.
        self.config[6..8].fill(0);
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
