// SPDX-License-Identifier: Apache-2.0
//! Pre-built test frames: a 12-byte `virtio_net_hdr_v1` followed by an Ethernet/IPv4 frame,
//! UDP for the plain sizes, one TCP segment with TSO (`GSO_TCPV4`, `NEEDS_CSUM`) for the
//! 64 KiB size. The same bytes go through our backend and through the raw TAP writes.

use backends::net::{VnetHdr, ETH_HLEN, VNET_HDR_LEN};
use serde::Serialize;
use virtio_bindings::virtio_net::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4};

/// Destination MAC: a unicast address that is not the TAP's, so the kernel counts the frame
/// on the TAP and drops it as `PACKET_OTHERHOST` before IP processing (the sink).
pub const DST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
/// Source MAC (the "guest").
pub const SRC_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
/// TCP maximum segment size of the TSO frame (1500-byte MTU, TCP timestamps on).
pub const TSO_MSS: u16 = 1448;
/// Segments carried by one TSO frame (65160 payload bytes, as Linux builds a 64 KiB GSO skb).
pub const TSO_SEGMENTS: usize = 45;

const IPV4_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const TCP_HLEN: usize = 20;

/// The frame shapes the benchmark sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameKind {
    /// 64-byte Ethernet frame (without FCS): IPv4/UDP with 22 payload bytes.
    Small,
    /// 1514-byte Ethernet frame: a full 1500-byte IPv4/UDP datagram.
    Mtu,
    /// 65214-byte Ethernet frame: one IPv4/TCP segment of 45 × 1448 bytes for the TAP to
    /// take as a GSO (TSO) packet.
    Tso,
}

impl FrameKind {
    /// All kinds, smallest first.
    pub const ALL: [FrameKind; 3] = [FrameKind::Small, FrameKind::Mtu, FrameKind::Tso];

    /// Name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Small => "64",
            FrameKind::Mtu => "1500",
            FrameKind::Tso => "64k-tso",
        }
    }

    /// Parse a [`FrameKind::name`].
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Ethernet frame length (without the virtio header and FCS).
    pub fn frame_len(self) -> usize {
        match self {
            FrameKind::Small => 64,
            FrameKind::Mtu => 1514,
            FrameKind::Tso => ETH_HLEN + IPV4_HLEN + TCP_HLEN + TSO_SEGMENTS * usize::from(TSO_MSS),
        }
    }

    /// Length of the buffer handed to the device: virtio header + frame.
    pub fn wire_len(self) -> usize {
        VNET_HDR_LEN + self.frame_len()
    }
}

/// Build the virtio header and frame of `kind` (`wire_len` bytes).
pub fn build(kind: FrameKind) -> Vec<u8> {
    let len = kind.frame_len();
    let ip_len = len - ETH_HLEN;
    let mut f = vec![0u8; VNET_HDR_LEN + len];
    let (hdr, frame) = f.split_at_mut(VNET_HDR_LEN);
    frame[0..6].copy_from_slice(&DST_MAC);
    frame[6..12].copy_from_slice(&SRC_MAC);
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let proto = if kind == FrameKind::Tso { 6 } else { 17 };
    let src = [10, 0, 0, 1];
    let dst = [10, 0, 0, 2];
    {
        let ip = &mut frame[ETH_HLEN..ETH_HLEN + IPV4_HLEN];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        ip[6] = 0x40; // don't fragment
        ip[8] = 64;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        let sum = checksum(0, ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
    }
    let l4 = ETH_HLEN + IPV4_HLEN;
    let l4_len = ip_len - IPV4_HLEN;
    for (i, b) in frame[l4..].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let pseudo = pseudo_header_sum(src, dst, proto, l4_len);
    let mut vh = VnetHdr::default();
    if kind == FrameKind::Tso {
        let tcp = &mut frame[l4..l4 + TCP_HLEN];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
        tcp[8..12].fill(0);
        tcp[12] = (TCP_HLEN as u8 / 4) << 4;
        tcp[13] = 0x18; // PSH | ACK
        tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
        tcp[16..20].fill(0);
        // Partial checksum: the device (here the kernel's segmentation) finishes it.
        tcp[16..18].copy_from_slice(&fold(pseudo).to_be_bytes());
        vh.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
        vh.gso_type = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
        vh.hdr_len = (l4 + TCP_HLEN) as u16;
        vh.gso_size = TSO_MSS;
        vh.csum_start = l4 as u16;
        vh.csum_offset = 16;
    } else {
        let udp = &mut frame[l4..l4 + UDP_HLEN];
        udp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        udp[2..4].copy_from_slice(&9u16.to_be_bytes()); // discard
        udp[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        udp[6..8].fill(0);
        let sum = match checksum(pseudo, &frame[l4..]) {
            0 => 0xffff,
            s => s,
        };
        frame[l4 + 6..l4 + 8].copy_from_slice(&sum.to_be_bytes());
    }
    hdr.copy_from_slice(&vh.to_bytes());
    f
}

fn pseudo_header_sum(src: [u8; 4], dst: [u8; 4], proto: u8, len: usize) -> u32 {
    let w = |b: [u8; 4]| {
        u32::from(u16::from_be_bytes([b[0], b[1]])) + u32::from(u16::from_be_bytes([b[2], b[3]]))
    };
    w(src) + w(dst) + u32::from(proto) + len as u32
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Internet checksum of `data` with `initial` (a partial sum) added.
fn checksum(initial: u32, data: &[u8]) -> u16 {
    let mut sum = u64::from(initial);
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        assert_eq!(build(FrameKind::Small).len(), 12 + 64);
        assert_eq!(build(FrameKind::Mtu).len(), 12 + 1514);
        assert_eq!(FrameKind::Tso.frame_len(), 65214);
        for k in FrameKind::ALL {
            assert_eq!(FrameKind::from_name(k.name()), Some(k));
        }
    }

    #[test]
    fn ip_and_udp_checksums_verify() {
        for k in [FrameKind::Small, FrameKind::Mtu] {
            let f = build(k);
            let frame = &f[VNET_HDR_LEN..];
            assert_eq!(checksum(0, &frame[14..34]), 0, "{k:?} IPv4 header");
            let l4_len = frame.len() - 34;
            let pseudo = pseudo_header_sum([10, 0, 0, 1], [10, 0, 0, 2], 17, l4_len);
            assert_eq!(checksum(pseudo, &frame[34..]), 0, "{k:?} UDP");
            assert_eq!(
                usize::from(u16::from_be_bytes([frame[16], frame[17]])),
                frame.len() - 14
            );
            assert_eq!(f[..VNET_HDR_LEN], [0u8; VNET_HDR_LEN]);
        }
    }

    #[test]
    fn tso_header_is_valid_for_the_backend() {
        use backends::net::device_features;
        let f = build(FrameKind::Tso);
        let mut raw = [0u8; VNET_HDR_LEN];
        raw.copy_from_slice(&f[..VNET_HDR_LEN]);
        let h = VnetHdr::from_bytes(&raw);
        assert_eq!(h.gso_type, VIRTIO_NET_HDR_GSO_TCPV4 as u8);
        assert_eq!(
            (h.gso_size, h.csum_start, h.csum_offset, h.hdr_len),
            (1448, 34, 16, 54)
        );
        h.validate_tx(FrameKind::Tso.frame_len(), device_features(), 1500)
            .expect("backend accepts the TSO header");
        let ip_len = u16::from_be_bytes([f[12 + 16], f[12 + 17]]);
        assert_eq!(usize::from(ip_len), 20 + 20 + 45 * 1448);
    }
}
