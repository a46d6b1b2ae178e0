// SPDX-License-Identifier: Apache-2.0
//! Transmit: one driver chain (`virtio_net_hdr_v1` + frame) becomes one write on the TAP
//! through the shared engine; the header passes through to the TAP unchanged.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vm_memory::GuestMemory;

use super::{VnetHdr, TX_MAX_IOV, VNET_HDR_LEN};
use crate::engine::histogram::bump;
use crate::engine::{rw_sqe, DescChain, Dir, Prepared, QueueStats, RequestHandler};

/// Guest faults logged at `warn` level per queue before switching to `debug`.
const WARN_BUDGET: u32 = 16;

/// [`RequestHandler`] for a transmit queue writing to a TAP (or any packet fd that takes a
/// vnet header, such as a datagram socket in tests).
pub struct TxHandler {
    fd: RawFd,
    features: Arc<AtomicU64>,
    mtu: u16,
    stats: Arc<QueueStats>,
    warned: u32,
}

/// Per-frame state (nothing beyond the chain is needed).
#[derive(Debug, Default)]
pub struct TxReq {
    len: u64,
}

impl TxHandler {
    /// Transmit to `fd` (kept open by the owner for the handler's life). `features` holds the
    /// negotiated virtio features (updated when the driver acks them).
    pub fn new(fd: RawFd, features: Arc<AtomicU64>, mtu: u16, stats: Arc<QueueStats>) -> Self {
        Self {
            fd,
            features,
            mtu,
            stats,
            warned: 0,
        }
    }

    fn drop_frame(&mut self, head: u16, why: &dyn std::fmt::Display) -> Prepared {
        QueueStats::inc(&self.stats.guest_faults);
        QueueStats::inc(&self.stats.dropped);
        if self.warned < WARN_BUDGET {
            self.warned += 1;
            tracing::warn!(head, "tx frame dropped: {why}");
        } else {
            tracing::debug!(head, "tx frame dropped: {why}");
        }
        // Transmit buffers are device-readable only: the used length is 0 either way.
        Prepared::Done(0)
    }
}

impl RequestHandler for TxHandler {
    type Req = TxReq;

    fn file(&self) -> RawFd {
        self.fd
    }

    fn opcodes(&self) -> &'static [u8] {
        // Frames go out with `rw_sqe(.., write = true)`: WRITE or WRITEV.
        &[
            io_uring::opcode::Write::CODE,
            io_uring::opcode::Writev::CODE,
        ]
    }

    fn prepare<M: GuestMemory>(
        &mut self,
        mem: &M,
        chain: &DescChain,
        req: &mut TxReq,
        iov: &mut Vec<libc::iovec>,
    ) -> Prepared {
        if let Some(f) = chain.fault() {
            return self.drop_frame(chain.head(), &f);
        }
        if chain.writable_len() != 0 {
            return self.drop_frame(chain.head(), &"device-writable descriptor in a tx chain");
        }
        let total = chain.readable_len();
        let mut raw = [0u8; VNET_HDR_LEN];
        if total < VNET_HDR_LEN as u64 || chain.read_at(mem, Dir::Readable, 0, &mut raw).is_err() {
            return self.drop_frame(chain.head(), &"shorter than the virtio-net header");
        }
        let hdr = VnetHdr::from_bytes(&raw);
        let frame_len = usize::try_from(total - VNET_HDR_LEN as u64).unwrap_or(usize::MAX);
        if let Err(e) = hdr.validate_tx(frame_len, self.features.load(Ordering::Relaxed), self.mtu)
        {
            return self.drop_frame(chain.head(), &e);
        }
        if let Err(f) = chain.iovecs(mem, Dir::Readable, 0, total, TX_MAX_IOV, iov) {
            return self.drop_frame(chain.head(), &f);
        }
        req.len = total;
        Prepared::Submit(rw_sqe(iov, 0, 0, true))
    }

    fn complete<M: GuestMemory>(
        &mut self,
        _mem: &M,
        chain: &DescChain,
        req: &mut TxReq,
        result: i32,
    ) -> u32 {
        if u64::try_from(result).is_ok_and(|n| n == req.len) {
            QueueStats::inc(&self.stats.ok);
            bump(&self.stats.bytes_written, req.len - VNET_HDR_LEN as u64);
        } else {
            QueueStats::inc(&self.stats.io_errors);
            let err = if result < 0 {
                crate::engine::errno(result).to_string()
            } else {
                format!("short write {result} of {}", req.len)
            };
            if self.warned < WARN_BUDGET {
                self.warned += 1;
                tracing::warn!(head = chain.head(), "tx write failed: {err}");
            }
        }
        0
    }
}
