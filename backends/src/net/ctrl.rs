// SPDX-License-Identifier: Apache-2.0
//! The control virtqueue (VIRTIO_NET_F_CTRL_VQ, virtio 1.2 §5.1.6.5), served in the backend
//! like the data queues so the VMM stays out of the control path too.
//!
//! A command is `class`, `command` and the command data (device-readable), then the `ack`
//! byte: the last device-writable byte of the chain. Only `VIRTIO_NET_CTRL_MQ` /
//! `VQ_PAIRS_SET` is implemented; every other class or command is answered
//! `VIRTIO_NET_ERR` (the device offers none of the features that lead a driver to send
//! them). Malformed chains are answered `VIRTIO_NET_ERR` when the ack byte can be written
//! and returned with used length 0 otherwise; both are counted as guest faults.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_net::*;
use vm_memory::GuestMemory;

use super::has;
use crate::engine::{DescChain, Dir, QueueStats, VirtQueue};
use crate::inflight::InflightQueue;
use crate::Result;

/// Guest faults logged at `warn` level before switching to `debug`.
const WARN_BUDGET: u32 = 16;
/// `class` + `command`.
const CTRL_HDR_LEN: u64 = 2;

/// Why a command was answered `VIRTIO_NET_ERR`.
enum Reject {
    /// The driver broke the protocol (counted in `guest_faults`).
    Fault(String),
    /// A class or command this device does not implement (counted in `unsupported`).
    Unsupported { class: u8, command: u8 },
    /// Applying a valid command failed on the host (counted in `io_errors`).
    Failed(crate::Error),
}

/// The control queue of a device with `max_pairs` queue pairs.
pub struct CtrlQueue {
    max_pairs: u16,
    features: Arc<AtomicU64>,
    stats: Arc<QueueStats>,
    chain: DescChain,
    used: Vec<(u16, u32)>,
    warned: u32,
    /// The ring was seen running (a start is noticed on the first pass after it).
    running: bool,
    /// This queue's part of the frontend's inflight region.
    tracker: Option<InflightQueue>,
}

impl CtrlQueue {
    /// A control queue for `max_pairs` queue pairs; `features` holds the negotiated features.
    pub fn new(max_pairs: u16, features: Arc<AtomicU64>, stats: Arc<QueueStats>) -> Self {
        Self {
            max_pairs,
            features,
            stats,
            chain: DescChain::default(),
            used: Vec::new(),
            warned: 0,
            running: false,
            tracker: None,
        }
    }

    /// Track commands in `inflight` (or stop tracking), from the next start of the ring on,
    /// which first answers the commands the region records as taken and unanswered.
    pub fn set_inflight(&mut self, inflight: Option<InflightQueue>) {
        self.tracker = inflight;
    }

    /// The ring stopped (vhost-user GET_VRING_BASE): every command taken was answered already.
    pub fn stop(&mut self) {
        self.running = false;
        if let Some(tracker) = &mut self.tracker {
            tracker.stop();
        }
    }

    /// Counters of this queue (requests, ok, unsupported, guest faults, dropped, …).
    pub fn stats(&self) -> &Arc<QueueStats> {
        &self.stats
    }

    /// Answer every available command. `set_pairs(n)` applies a validated
    /// `VQ_PAIRS_SET n`; it runs before the command is put on the used ring, as the spec
    /// requires. Signals the driver once per batch when it asks for it.
    pub fn process<Q, F>(&mut self, q: &mut Q, mut set_pairs: F) -> Result<()>
    where
        Q: VirtQueue,
        F: FnMut(u16) -> Result<()>,
    {
        if !self.running {
            self.running = true;
            self.resume(q, &mut set_pairs)?;
        }
        loop {
            q.disable_notification()?;
            let mem = q.memory();
            while let Some(chain) = q.pop(&mem) {
                self.chain.reset_from(chain);
                if let Some(tracker) = &mut self.tracker {
                    tracker.mark(self.chain.head());
                }
                let len = self.answer(&*mem, &mut set_pairs);
                self.used.push((self.chain.head(), len));
            }
            q.flush_used(&mut self.used, &self.stats, self.tracker.as_mut())?;
            if !q.enable_notification()? {
                return Ok(());
            }
        }
    }

    /// The ring (re)started: with an inflight region, answer the commands a previous backend
    /// took and did not answer (applying them again is harmless: they set state), then
    /// resume the avail ring after them.
    fn resume<Q, F>(&mut self, q: &mut Q, set_pairs: &mut F) -> Result<()>
    where
        Q: VirtQueue,
        F: FnMut(u16) -> Result<()>,
    {
        let Some(tracker) = &mut self.tracker else {
            return Ok(());
        };
        let mem = q.memory();
        let guest_used = q.guest_used_idx(&mem)?;
        let (table, size) = q.desc_table();
        let recovery = tracker.start(guest_used, size);
        let Some(next_avail) = recovery.next_avail else {
            return Ok(());
        };
        q.set_next_avail(next_avail);
        for &head in &recovery.heads {
            self.chain.reset_from_head(&*mem, table, size, head);
            let len = self.answer(&*mem, set_pairs);
            self.used.push((head, len));
        }
        self.stats
            .resubmitted
            .fetch_add(recovery.heads.len() as u64, Ordering::Relaxed);
        q.flush_used(&mut self.used, &self.stats, self.tracker.as_mut())
    }

    /// Run the command in `self.chain` and write its ack; returns the used length.
    fn answer<M: GuestMemory, F: FnMut(u16) -> Result<()>>(
        &mut self,
        mem: &M,
        set_pairs: &mut F,
    ) -> u32 {
        QueueStats::inc(&self.stats.requests);
        let head = self.chain.head();
        let wlen = self.chain.writable_len();
        if !self.chain.is_complete() || wlen == 0 {
            let why = match self.chain.fault() {
                Some(f) if !self.chain.is_complete() => f.to_string(),
                _ => "no device-writable ack byte".to_string(),
            };
            self.fault(head, &why);
            QueueStats::inc(&self.stats.dropped);
            return 0;
        }
        let mut faulted = false;
        let ack = match self.run(mem, set_pairs) {
            Ok(()) => {
                QueueStats::inc(&self.stats.ok);
                VIRTIO_NET_OK
            }
            Err(Reject::Fault(why)) => {
                self.fault(head, &why);
                faulted = true;
                VIRTIO_NET_ERR
            }
            Err(Reject::Unsupported { class, command }) => {
                QueueStats::inc(&self.stats.unsupported);
                tracing::debug!(head, class, command, "control command not supported");
                VIRTIO_NET_ERR
            }
            Err(Reject::Failed(e)) => {
                QueueStats::inc(&self.stats.io_errors);
                tracing::error!(head, "control command failed: {e}");
                VIRTIO_NET_ERR
            }
        };
        match self
            .chain
            .write_at(mem, Dir::Writable, wlen - 1, &[ack as u8])
        {
            // The ack ends the writable stream: report the stream as used up to it.
            Ok(()) => u32::try_from(wlen).unwrap_or(u32::MAX),
            Err(f) => {
                if ack == VIRTIO_NET_OK {
                    tracing::warn!(head, "control command applied but its ack is unwritable");
                }
                if !faulted {
                    self.fault(head, &f);
                }
                QueueStats::inc(&self.stats.dropped);
                0
            }
        }
    }

    /// Validate and execute the command of `self.chain`.
    fn run<M: GuestMemory, F: FnMut(u16) -> Result<()>>(
        &self,
        mem: &M,
        set_pairs: &mut F,
    ) -> std::result::Result<(), Reject> {
        let c = &self.chain;
        if let Some(f) = c.fault() {
            return Err(Reject::Fault(f.to_string()));
        }
        let mut hdr = [0u8; CTRL_HDR_LEN as usize];
        if c.readable_len() < CTRL_HDR_LEN {
            return Err(Reject::Fault(format!(
                "control command of {} bytes has no class/command header",
                c.readable_len()
            )));
        }
        c.read_at(mem, Dir::Readable, 0, &mut hdr)
            .map_err(|f| Reject::Fault(f.to_string()))?;
        let [class, command] = hdr;
        let features = self.features.load(Ordering::Relaxed);
        if u32::from(class) != VIRTIO_NET_CTRL_MQ
            || u32::from(command) != VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET
            || !has(features, VIRTIO_NET_F_MQ)
        {
            return Err(Reject::Unsupported { class, command });
        }
        let data_len = c.readable_len() - CTRL_HDR_LEN;
        if data_len != 2 || c.writable_len() != 1 {
            return Err(Reject::Fault(format!(
                "VQ_PAIRS_SET with {data_len} data bytes and a {}-byte ack",
                c.writable_len()
            )));
        }
        let mut v = [0u8; 2];
        c.read_at(mem, Dir::Readable, CTRL_HDR_LEN, &mut v)
            .map_err(|f| Reject::Fault(f.to_string()))?;
        let pairs = u16::from_le_bytes(v);
        if !(1..=self.max_pairs).contains(&pairs) {
            return Err(Reject::Fault(format!(
                "VQ_PAIRS_SET {pairs} outside 1..={}",
                self.max_pairs
            )));
        }
        set_pairs(pairs).map_err(Reject::Failed)?;
        tracing::info!(pairs, "queue pairs set by the driver");
        Ok(())
    }

    fn fault(&mut self, head: u16, why: &dyn std::fmt::Display) {
        QueueStats::inc(&self.stats.guest_faults);
        if self.warned < WARN_BUDGET {
            self.warned += 1;
            tracing::warn!(head, "control queue: {why}");
        } else {
            tracing::debug!(head, "control queue: {why}");
        }
    }
}
