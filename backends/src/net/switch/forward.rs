// SPDX-License-Identifier: Apache-2.0
//! [`Forwarder`]: one direction of one queue pair of the switch. A pass takes up to a batch of
//! frames from the sender's transmit queue and copies each straight into the receiver's
//! receive buffers (several with MRG_RXBUF), in this thread, with no system call unless a
//! driver asked to be notified.
//!
//! A frame is dropped and counted, never waited for, when the receiver cannot take it: the
//! receiver is away (no ring running on that pair), has no buffer posted, or has not
//! negotiated an offload the frame's header needs. So a guest that posts nothing never holds
//! up the sender, as a TAP whose reader is gone would not. Bad chains on either side are
//! answered with length 0 and counted; the pass goes on with the next one.

use std::sync::atomic::Ordering::Relaxed;

use virtio_bindings::virtio_net::*;
use vm_memory::VolatileSlice;

use super::rings::Ring;
use crate::engine::{DescChain, Dir, QueueStats};
use crate::net::{has, VnetHdr, TX_MAX_IOV, VNET_HDR_LEN};

/// Guest faults logged at `warn` level per direction before switching to `debug`.
const WARN_BUDGET: u32 = 16;

/// Largest iovec count of one frame's receive side.
const RX_MAX_IOV: usize = 256;

/// One end of a pass: a guest's queue, its memory, its negotiated features, its counters.
pub(super) struct End<'a> {
    pub ring: &'a mut dyn Ring,
    pub mem: &'a crate::engine::VhostMem,
    pub features: u64,
    pub stats: &'a QueueStats,
}

/// What a pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pass {
    /// Transmit chains taken.
    pub taken: usize,
    /// The sender's driver asked to be notified of its used transmit buffers.
    pub notify_tx: bool,
    /// The receiver's driver asked to be notified of its used receive buffers.
    pub notify_rx: bool,
}

/// Why a frame was not delivered.
enum Undelivered {
    /// A bad transmit chain or header (a guest fault of the sender).
    Fault(String),
    /// The receiver could not take it (counted as a drop on both sides).
    NoRoom(&'static str),
}

/// Per-direction state kept between passes (allocations reused; nothing guest-visible).
pub(super) struct Forwarder {
    tx_chain: DescChain,
    /// Receive chains taken for frames (`held[..nheld]`), oldest first.
    held: Vec<DescChain>,
    nheld: usize,
    /// How many of the held chains were taken after the last receive chain answered at once
    /// (those can go back to the ring at the end of the pass).
    rewindable: usize,
    src: Vec<libc::iovec>,
    dst: Vec<libc::iovec>,
    /// Used elements of the frame being copied.
    used: Vec<(u16, u32)>,
    mtu: u16,
    batch: u16,
    warned: u32,
    /// Receive chains taken in this pass.
    rx_taken: u64,
}

// SAFETY: the iovec vectors only hold pointers during a pass (cleared before each use); the
// forwarder moves between threads behind a mutex, never used by two at once.
unsafe impl Send for Forwarder {}

impl Forwarder {
    /// A direction taking up to `batch` frames per pass, of at most `mtu` (without GSO).
    pub fn new(mtu: u16, batch: u16) -> Self {
        Self {
            tx_chain: DescChain::default(),
            held: Vec::new(),
            nheld: 0,
            rewindable: 0,
            src: Vec::with_capacity(TX_MAX_IOV),
            dst: Vec::with_capacity(RX_MAX_IOV),
            used: Vec::with_capacity(RX_MAX_IOV),
            mtu,
            batch: batch.max(1),
            warned: 0,
            rx_taken: 0,
        }
    }

    fn log(&mut self, what: &str, head: u16, why: &dyn std::fmt::Display) {
        if self.warned < WARN_BUDGET {
            self.warned += 1;
            tracing::warn!(head, "switch: {what}: {why}");
        } else {
            tracing::debug!(head, "switch: {what}: {why}");
        }
    }

    /// Move up to a batch of frames from `tx` to `rx` (`None`: the receiver is away, frames
    /// are dropped). Publishes both used rings and reports who wants a notification.
    pub fn pass(&mut self, tx: &mut End<'_>, mut rx: Option<&mut End<'_>>) -> Pass {
        let n = tx.ring.pending().min(self.batch);
        let mut pass = Pass::default();
        if n == 0 {
            return pass;
        }
        tx.ring.disable_notification();
        if let Some(rx) = rx.as_deref_mut() {
            // The sender's pass looks for receive buffers itself: no kicks needed.
            rx.ring.disable_notification();
        }
        tx.stats.requests.fetch_add(u64::from(n), Relaxed);
        // Counted once per pass: an atomic add per frame is a visible share of a 64-byte
        // frame's cost.
        let mut delivered = 0u64;
        self.rx_taken = 0;
        for _ in 0..n {
            tx.ring.pop(&mut self.tx_chain);
            let head = self.tx_chain.head();
            match self.forward(tx, rx.as_deref_mut()) {
                Ok(()) => delivered += 1,
                Err(Undelivered::Fault(why)) => {
                    QueueStats::inc(&tx.stats.guest_faults);
                    QueueStats::inc(&tx.stats.dropped);
                    self.log("tx frame dropped", head, &why);
                }
                Err(Undelivered::NoRoom(why)) => {
                    QueueStats::inc(&tx.stats.dropped);
                    if let Some(rx) = rx.as_deref_mut() {
                        QueueStats::inc(&rx.stats.dropped);
                    }
                    tracing::trace!(head, "switch: frame dropped: {why}");
                }
            }
            // Transmit buffers are device-readable only: the used length is 0 either way.
            if !tx.ring.push_used(head, 0) {
                QueueStats::inc(&tx.stats.used_rejected);
            }
        }
        pass.taken = usize::from(n);
        tx.stats.ok.fetch_add(delivered, Relaxed);
        if let Some(rx) = rx {
            rx.stats.ok.fetch_add(delivered, Relaxed);
            rx.stats.requests.fetch_add(self.rx_taken, Relaxed);
            self.give_back_held(rx);
            pass.notify_rx = rx.ring.publish();
        }
        pass.notify_tx = tx.ring.publish();
        pass
    }

    /// Deliver the chain in `tx_chain` to `rx`.
    fn forward(&mut self, tx: &End<'_>, rx: Option<&mut End<'_>>) -> Result<(), Undelivered> {
        let chain = &self.tx_chain;
        if let Some(f) = chain.fault() {
            return Err(Undelivered::Fault(f.to_string()));
        }
        if chain.writable_len() != 0 {
            return Err(Undelivered::Fault(
                "device-writable descriptor in a tx chain".into(),
            ));
        }
        let total = chain.readable_len();
        let mut raw = [0u8; VNET_HDR_LEN];
        if total < VNET_HDR_LEN as u64 || chain.read_at(tx.mem, Dir::Readable, 0, &mut raw).is_err()
        {
            return Err(Undelivered::Fault(
                "shorter than the virtio-net header".into(),
            ));
        }
        let mut hdr = VnetHdr::from_bytes(&raw);
        let frame_len = usize::try_from(total).unwrap_or(usize::MAX) - VNET_HDR_LEN;
        hdr.validate_tx(frame_len, tx.features, self.mtu)
            .map_err(|e| Undelivered::Fault(e.to_string()))?;
        let Some(rx) = rx else {
            return Err(Undelivered::NoRoom("receiver away"));
        };
        if !offloads_accepted(&hdr, rx.features) {
            return Err(Undelivered::NoRoom(
                "offload the receiver did not negotiate",
            ));
        }
        if !has(rx.features, VIRTIO_NET_F_GUEST_CSUM) {
            hdr.flags &= !(VIRTIO_NET_HDR_F_DATA_VALID as u8);
        }
        let need = total;
        let chains = self.reserve(rx, need)?;
        hdr.num_buffers = u16::try_from(chains).unwrap_or(u16::MAX);
        if !self.copy(tx, rx, &hdr, frame_len as u64, chains) {
            return Err(Undelivered::NoRoom("receive buffer could not be mapped"));
        }
        Ok(())
    }

    /// Hold enough receive chains for `need` bytes (one chain without MRG_RXBUF); returns how
    /// many of the held ones the frame uses.
    fn reserve(&mut self, rx: &mut End<'_>, need: u64) -> Result<usize, Undelivered> {
        let mrg = has(rx.features, VIRTIO_NET_F_MRG_RXBUF);
        let mut room = 0u64;
        let mut k = 0usize;
        loop {
            if k == self.nheld && !self.hold_one(rx) {
                return Err(Undelivered::NoRoom("no receive buffer"));
            }
            room += self.held[k].writable_len();
            k += 1;
            if room >= need {
                return Ok(k);
            }
            if !mrg {
                // The one buffer is too small: it goes back empty, the frame is dropped.
                let head = self.held[0].head();
                let _ = rx.ring.push_used(head, 0);
                self.consume_held(1);
                self.rewindable = 0;
                return Err(Undelivered::NoRoom("frame larger than the receive buffer"));
            }
            if k >= RX_MAX_IOV {
                return Err(Undelivered::NoRoom("frame needs too many receive buffers"));
            }
        }
    }

    /// Take one usable receive chain from `rx` into `held[nheld]`; bad ones are answered
    /// empty and counted on the way. `false`: the ring has none.
    fn hold_one(&mut self, rx: &mut End<'_>) -> bool {
        loop {
            if rx.ring.pending() == 0 {
                return false;
            }
            if self.held.len() <= self.nheld {
                self.held.push(DescChain::default());
            }
            let c = &mut self.held[self.nheld];
            rx.ring.pop(c);
            self.rx_taken += 1;
            let problem = if let Some(f) = c.fault() {
                Some(f.to_string())
            } else if c.readable_len() != 0 {
                Some("device-readable descriptor in an rx chain".to_string())
            } else if c.writable_len() < VNET_HDR_LEN as u64 {
                Some(format!("rx buffer of {} bytes too small", c.writable_len()))
            } else {
                None
            };
            let head = c.head();
            match problem {
                None => {
                    self.nheld += 1;
                    self.rewindable += 1;
                    return true;
                }
                Some(why) => {
                    QueueStats::inc(&rx.stats.guest_faults);
                    if !rx.ring.push_used(head, 0) {
                        QueueStats::inc(&rx.stats.used_rejected);
                    }
                    self.rewindable = 0;
                    self.log("rx buffer refused", head, &why);
                }
            }
        }
    }

    /// The first `k` held chains were used.
    fn consume_held(&mut self, k: usize) {
        self.held[..self.nheld].rotate_left(k);
        self.nheld -= k;
        self.rewindable = self.rewindable.min(self.nheld);
    }

    /// End of a pass: held chains not used go back to the avail ring if nothing was
    /// answered after them, else back to the driver empty.
    fn give_back_held(&mut self, rx: &mut End<'_>) {
        let rewind = self.rewindable.min(self.nheld);
        for c in &self.held[..self.nheld - rewind] {
            let _ = rx.ring.push_used(c.head(), 0);
        }
        rx.ring.unpop(u16::try_from(rewind).unwrap_or(u16::MAX));
        self.nheld = 0;
        self.rewindable = 0;
    }

    /// Copy the header and the frame into the first `chains` held receive chains and put them
    /// on the used ring (empty, and counted as a fault, if a piece cannot be mapped: `false`).
    fn copy(
        &mut self,
        tx: &End<'_>,
        rx: &mut End<'_>,
        hdr: &VnetHdr,
        frame: u64,
        chains: usize,
    ) -> bool {
        self.src.clear();
        self.dst.clear();
        self.used.clear();
        let mut ok = self
            .tx_chain
            .iovecs(
                tx.mem,
                Dir::Readable,
                VNET_HDR_LEN as u64,
                frame,
                TX_MAX_IOV,
                &mut self.src,
            )
            .is_ok();
        let mut left = frame;
        for (i, c) in self.held[..chains].iter().enumerate() {
            let start = if i == 0 { VNET_HDR_LEN as u64 } else { 0 };
            let take = left.min(c.writable_len() - start);
            if take > 0 {
                ok &= c
                    .iovecs(
                        rx.mem,
                        Dir::Writable,
                        start,
                        take,
                        RX_MAX_IOV,
                        &mut self.dst,
                    )
                    .is_ok();
            }
            left -= take;
            self.used
                .push((c.head(), u32::try_from(start + take).unwrap_or(u32::MAX)));
        }
        ok &= self.held[0]
            .write_at(rx.mem, Dir::Writable, 0, &hdr.to_bytes())
            .is_ok();
        if ok {
            copy_iovecs(&self.src, &self.dst);
        } else {
            QueueStats::inc(&rx.stats.guest_faults);
            self.used.iter_mut().for_each(|u| u.1 = 0);
        }
        for &(head, len) in &self.used {
            if !rx.ring.push_used(head, len) {
                QueueStats::inc(&rx.stats.used_rejected);
            }
        }
        self.consume_held(chains);
        ok
    }
}

/// Whether a receiver that negotiated `features` can take a frame with header `hdr`.
fn offloads_accepted(hdr: &VnetHdr, features: u64) -> bool {
    let csum = hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM as u8 == 0
        || has(features, VIRTIO_NET_F_GUEST_CSUM);
    let gso = match u32::from(hdr.gso_type) {
        VIRTIO_NET_HDR_GSO_NONE => true,
        VIRTIO_NET_HDR_GSO_TCPV4 => has(features, VIRTIO_NET_F_GUEST_TSO4),
        VIRTIO_NET_HDR_GSO_TCPV6 => has(features, VIRTIO_NET_F_GUEST_TSO6),
        _ => false,
    };
    csum && gso
}

/// Copy the bytes of `src` pieces into `dst` pieces, in order, up to the shorter total.
fn copy_iovecs(src: &[libc::iovec], dst: &[libc::iovec]) {
    let (mut si, mut so, mut di, mut doff) = (0usize, 0usize, 0usize, 0usize);
    while si < src.len() && di < dst.len() {
        let (s, d) = (&src[si], &dst[di]);
        let n = (s.iov_len - so).min(d.iov_len - doff);
        // SAFETY: every iovec was built by `DescChain::iovecs` from a validated guest buffer in
        // a mapped region of the memory object the caller holds for the pass; `so`/`doff` stay
        // within each piece's length. The two guests' buffers may be the same memory only if
        // a guest gave one buffer to both queues; `copy` (memmove) is defined for that too.
        unsafe {
            let from = VolatileSlice::new((s.iov_base as *mut u8).add(so), n);
            let to = VolatileSlice::new((d.iov_base as *mut u8).add(doff), n);
            from.copy_to_volatile_slice(to);
        }
        so += n;
        doff += n;
        if so == s.iov_len {
            si += 1;
            so = 0;
        }
        if doff == d.iov_len {
            di += 1;
            doff = 0;
        }
    }
}
