// SPDX-License-Identifier: Apache-2.0
//! `virtio_net_hdr_v1` parsing and validation of driver-supplied headers (virtio 1.2 §5.1.6).

use virtio_bindings::virtio_net::*;

use super::{has, ETH_HLEN, MAX_GSO_FRAME, VLAN_HLEN, VNET_HDR_LEN};

/// A decoded `virtio_net_hdr_v1` (little-endian on the wire).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VnetHdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`, possibly with the ECN bit.
    pub gso_type: u8,
    /// Length of the headers to copy into each segment.
    pub hdr_len: u16,
    /// Segment payload size.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where to store the checksum, relative to `csum_start`.
    pub csum_offset: u16,
    /// Buffers used for this frame (receive with MRG_RXBUF).
    pub num_buffers: u16,
}

/// Why a transmitted header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HdrError {
    /// Unknown bits in `flags`.
    #[error("unknown header flags {0:#x}")]
    Flags(u8),
    /// A GSO type that is unknown or was not negotiated.
    #[error("unsupported gso_type {0:#x}")]
    GsoType(u8),
    /// GSO without a segment size or without a partial checksum.
    #[error("GSO frame without gso_size or NEEDS_CSUM")]
    GsoParams,
    /// NEEDS_CSUM without VIRTIO_NET_F_CSUM, or a checksum position past the frame.
    #[error("bad checksum offload (start {start}, offset {offset})")]
    Csum {
        /// `csum_start`.
        start: u16,
        /// `csum_offset`.
        offset: u16,
    },
    /// Shorter than an Ethernet header.
    #[error("frame of {0} bytes is shorter than an Ethernet header")]
    Runt(usize),
    /// Longer than the MTU (non-GSO) or than 64 KiB (GSO) allows.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// Frame length.
        len: usize,
        /// Limit.
        max: usize,
    },
}

impl VnetHdr {
    /// Decode the 12 header bytes.
    pub fn from_bytes(b: &[u8; VNET_HDR_LEN]) -> Self {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        }
    }

    /// Encode into 12 bytes.
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }

    /// Check a header the driver sent with a frame of `frame_len` bytes (without the header)
    /// against the negotiated `features` and the device `mtu`.
    pub fn validate_tx(&self, frame_len: usize, features: u64, mtu: u16) -> Result<(), HdrError> {
        let known = (VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID) as u8;
        if self.flags & !known != 0 {
            return Err(HdrError::Flags(self.flags));
        }
        if frame_len < ETH_HLEN {
            return Err(HdrError::Runt(frame_len));
        }
        let needs_csum = self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM as u8 != 0;
        if needs_csum {
            let end = usize::from(self.csum_start) + usize::from(self.csum_offset) + 2;
            if !has(features, VIRTIO_NET_F_CSUM) || end > frame_len {
                return Err(HdrError::Csum {
                    start: self.csum_start,
                    offset: self.csum_offset,
                });
            }
        }
        if self.gso_type & VIRTIO_NET_HDR_GSO_ECN as u8 != 0 {
            // HOST_ECN is never offered.
            return Err(HdrError::GsoType(self.gso_type));
        }
        let max = match u32::from(self.gso_type) {
            VIRTIO_NET_HDR_GSO_NONE => usize::from(mtu) + ETH_HLEN + VLAN_HLEN,
            t @ (VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_TCPV6) => {
                let bit = if t == VIRTIO_NET_HDR_GSO_TCPV4 {
                    VIRTIO_NET_F_HOST_TSO4
                } else {
                    VIRTIO_NET_F_HOST_TSO6
                };
                if !has(features, bit) {
                    return Err(HdrError::GsoType(self.gso_type));
                }
                if self.gso_size == 0 || !needs_csum {
                    return Err(HdrError::GsoParams);
                }
                MAX_GSO_FRAME
            }
            _ => return Err(HdrError::GsoType(self.gso_type)),
        };
        if frame_len > max {
            return Err(HdrError::TooLong {
                len: frame_len,
                max,
            });
        }
        Ok(())
    }
}
