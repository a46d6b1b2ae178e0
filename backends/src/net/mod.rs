// SPDX-License-Identifier: Apache-2.0
//! virtio-net over a TAP device: the transmit handler on the shared [`Engine`](crate::engine::Engine)
//! ([`TxHandler`]), the receive path ([`RxPath`]), the TAP itself ([`Tap`]) and the
//! vhost-user backend ([`NetBackend`]).
//!
//! Every frame starts with a 12-byte `virtio_net_hdr_v1` (VERSION_1 makes the header the same
//! size with or without MRG_RXBUF); the TAP is configured with the same header size
//! (`TUNSETVNETHDRSZ`), so the header passes through unchanged in both directions and only
//! `num_buffers` is filled in by this device on receive.

mod backend;
mod ctrl;
mod hdr;
mod pair;
mod rx;
pub mod switch;
mod tap;
#[cfg(test)]
mod tests;
mod tx;

pub use backend::{NetBackend, NetOptions, PairStats, Port};
pub use ctrl::CtrlQueue;
pub use hdr::{HdrError, VnetHdr};
pub use pair::PairWork;
pub use rx::RxPath;
pub use tap::Tap;
pub use tx::TxHandler;

use virtio_bindings::virtio_net::*;

/// `virtio_net_hdr_v1` length (with `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;
/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// One 802.1Q tag.
pub const VLAN_HLEN: usize = 4;
/// Largest IP datagram a segmentation-offload frame may carry.
pub const MAX_GSO_PAYLOAD: usize = 65535;
/// Largest frame (without the virtio header) that may cross the device with GSO.
pub const MAX_GSO_FRAME: usize = MAX_GSO_PAYLOAD + ETH_HLEN + VLAN_HLEN;
/// Receive bounce buffer: header + the largest frame + one byte to detect truncation.
pub const RX_BUF_LEN: usize = VNET_HDR_LEN + MAX_GSO_FRAME + 1;
/// Default MTU.
pub const DEFAULT_MTU: u16 = 1500;
/// Largest iovec count for one transmitted frame.
pub const TX_MAX_IOV: usize = 64;

/// The virtio-net feature bits this device can offer (without `VIRTIO_NET_F_MQ` and
/// `VIRTIO_NET_F_CTRL_VQ`, which depend on the queue count).
pub fn device_features() -> u64 {
    use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
    [
        VIRTIO_F_VERSION_1,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MTU,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_RING_F_INDIRECT_DESC,
    ]
    .iter()
    .fold(0u64, |acc, bit| acc | (1u64 << bit))
}

/// The checksum and segmentation offload bits of [`device_features`]: not offered when the
/// other end cannot take them (link mode, a TAP without `TUNSETOFFLOAD` support).
pub fn offload_features() -> u64 {
    [
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
    ]
    .iter()
    .fold(0, |acc, b| acc | (1u64 << b))
}

/// Queue pairs a driver has once it acked `features`: with our control queue it starts on one
/// pair and asks for more with VQ_PAIRS_SET; a frontend that acks MQ without CTRL_VQ manages
/// pairs itself (all of them); without MQ only the first pair exists for the driver.
pub(crate) fn initial_active_pairs(features: u64, queue_pairs: u16) -> u16 {
    if has(features, VIRTIO_NET_F_MQ) && !has(features, VIRTIO_NET_F_CTRL_VQ) {
        queue_pairs
    } else {
        1
    }
}

/// vhost-user-backend's queue mask per worker thread: one thread per queue pair (its receive
/// and transmit queues), the control queue (after the pairs) on the first pair's thread.
pub(crate) fn pair_thread_queues(queue_pairs: u16, ctrl: bool) -> Vec<u64> {
    let mut masks: Vec<u64> = (0..queue_pairs).map(|q| 0b11u64 << (2 * q)).collect();
    if let (true, Some(first)) = (ctrl, masks.first_mut()) {
        *first |= 1u64 << (2 * queue_pairs);
    }
    masks
}

/// Whether feature `bit` is set in `features`.
pub fn has(features: u64, bit: u32) -> bool {
    features & (1u64 << bit) != 0
}

/// Parse `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}
