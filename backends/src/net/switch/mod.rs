// SPDX-License-Identifier: Apache-2.0
//! Link mode as an in-process switch: two vhost-user-net devices ([`SwitchPort`]s, one per
//! guest) served by one process, which maps both guests' memory. The queue thread of each
//! guest's pair `p` takes that guest's transmitted frames and copies each straight into the
//! other guest's receive buffers of pair `p` ([`Forwarder`]): batched, no system call per
//! frame, notifications only where a driver asked for them (EVENT_IDX or the ring flags), and
//! the thread keeps polling its transmit ring for a window that follows the load before it
//! sleeps ([`PollWindow`]), so a busy sender does not kick at all.
//!
//! The two sides are independent vhost-user devices: each is served on its own socket, each
//! frontend may come and go (successive connections); frames sent to a side that is away
//! (no frontend, ring stopped, pair not in use) are dropped and counted in the sender's
//! transmit counters. Nothing is left in flight between two passes, so a ring stop has nothing
//! to wait for, and a restarted backend resumes where the frontend's used index says.
//!
//! Offloads (checksum, TSO) are offered to both guests and their headers pass through: a frame
//! whose header needs an offload the receiving guest did not negotiate is dropped and counted
//! (no software checksum or segmentation).

mod forward;
mod poll;
mod rings;
#[cfg(test)]
mod tests;

pub use poll::PollWindow;
pub use rings::RingReader;

use std::io;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_bindings::virtio_net::*;
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{device_features, CtrlQueue, PairStats};
use crate::engine::{BackendMemory, QueueStats, VhostMem, Vring, VringQueue, WorkerVrings};
use crate::seccomp::{self, net::NetThread};
use crate::{Error, Result};
use forward::{End, Forwarder, Pass};

/// Local vring index of the receive queue in a worker thread.
const RX_VRING: u16 = 0;
/// Local vring index of the transmit queue.
const TX_VRING: u16 = 1;
/// Local vring index of the control queue in the thread of pair 0.
const CTRL_VRING: u16 = 2;
/// A queue thread busy for this long in one go lets its other events in.
const YIELD_AFTER: Duration = Duration::from_millis(2);

/// Options of a switched link.
#[derive(Debug, Clone)]
pub struct SwitchOptions {
    /// MAC addresses offered to guest A and guest B (`None`: the driver picks one).
    pub macs: [Option<[u8; 6]>; 2],
    /// MTU offered to both guests.
    pub mtu: u16,
    /// Queue pairs of each guest (pair `p` of A is wired to pair `p` of B).
    pub queue_pairs: u16,
    /// Maximum queue size.
    pub queue_size: u16,
    /// Frames taken from a transmit queue per pass.
    pub batch: u16,
    /// Upper bound of the adaptive busy-poll window (zero: never poll).
    pub poll_max: Duration,
    /// Ring reader (ours by default; virtio-queue's to compare).
    pub reader: RingReader,
}

/// One guest's end: what the other side's queue threads need to reach its receive queues.
struct Side {
    name: &'static str,
    mem: BackendMemory,
    acked: Arc<AtomicU64>,
    vrings: WorkerVrings,
    active: AtomicU16,
    stats: Vec<PairStats>,
    /// Per pair: an eventfd in that pair's worker epoll set, to make the worker run.
    wake: Vec<EventFd>,
}

impl Side {
    fn new(name: &'static str, pairs: u16) -> Result<Self> {
        let n = usize::from(pairs);
        Ok(Self {
            name,
            mem: BackendMemory::default(),
            acked: Arc::new(AtomicU64::new(0)),
            vrings: WorkerVrings::new(n),
            active: AtomicU16::new(1),
            stats: (0..n)
                .map(|_| PairStats {
                    rx: Arc::new(QueueStats::default()),
                    tx: Arc::new(QueueStats::default()),
                })
                .collect(),
            wake: (0..n)
                .map(|_| EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd))
                .collect::<Result<_>>()?,
        })
    }
}

/// The transmit side of one pair: its forwarder and its poll window.
struct TxPair {
    fwd: Forwarder,
    window: PollWindow,
    /// When the thread last went to sleep on this queue.
    parked_at: Option<Instant>,
}

/// One guest's vhost-user-net device on the switch.
pub struct SwitchPort {
    me: Arc<Side>,
    peer: Arc<Side>,
    opts: SwitchOptions,
    features: u64,
    config: Vec<u8>,
    tx: Vec<Mutex<TxPair>>,
    ctrl: Option<Mutex<CtrlQueue>>,
}

/// Build the two devices of a switched link: `(A, B)`.
pub fn switch(opts: SwitchOptions) -> Result<(Arc<SwitchPort>, Arc<SwitchPort>)> {
    super::backend::check_shape(opts.queue_pairs, opts.queue_size, opts.mtu)?;
    let a = Arc::new(Side::new("a", opts.queue_pairs)?);
    let b = Arc::new(Side::new("b", opts.queue_pairs)?);
    let port = |me: &Arc<Side>, peer: &Arc<Side>, mac| SwitchPort::new(me, peer, &opts, mac);
    Ok((
        Arc::new(port(&a, &b, opts.macs[0])),
        Arc::new(port(&b, &a, opts.macs[1])),
    ))
}

impl SwitchPort {
    fn new(me: &Arc<Side>, peer: &Arc<Side>, opts: &SwitchOptions, mac: Option<[u8; 6]>) -> Self {
        let mut features = device_features() | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if opts.queue_pairs > 1 {
            features |= (1 << VIRTIO_NET_F_MQ) | (1 << VIRTIO_NET_F_CTRL_VQ);
        }
        if mac.is_none() {
            features &= !(1 << VIRTIO_NET_F_MAC);
        }
        let config = super::backend::config_space(mac, opts.queue_pairs, opts.mtu);
        let window = PollWindow::new(opts.poll_max);
        let tx = (0..opts.queue_pairs)
            .map(|_| {
                Mutex::new(TxPair {
                    fwd: Forwarder::new(opts.mtu, opts.batch),
                    window,
                    parked_at: None,
                })
            })
            .collect();
        let ctrl = (opts.queue_pairs > 1).then(|| {
            let stats = Arc::new(QueueStats::default());
            Mutex::new(CtrlQueue::new(opts.queue_pairs, me.acked.clone(), stats))
        });
        Self {
            me: me.clone(),
            peer: peer.clone(),
            opts: opts.clone(),
            features,
            config,
            tx,
            ctrl,
        }
    }

    /// Per queue-pair counters of this guest (transmit: frames it sent, `ok` delivered,
    /// `dropped` not delivered; receive: frames it got, `dropped` frames that found no room).
    pub fn stats(&self) -> &[PairStats] {
        &self.me.stats
    }

    /// Counters of the control queue, if the device has one.
    pub fn ctrl_stats(&self) -> Option<Arc<QueueStats>> {
        let ctrl = self.ctrl.as_ref()?.lock().ok()?;
        Some(ctrl.stats().clone())
    }

    /// Pair `pair`'s wake-up eventfd: register it with that pair's worker epoll set under
    /// [`SwitchPort::wake_event`], and write it once so the worker learns its vrings.
    pub fn wake_fd(&self, pair: usize) -> Option<&EventFd> {
        self.me.wake.get(pair)
    }

    /// epoll `data` of the wake-up eventfds (past the queues and the exit event).
    pub fn wake_event(&self) -> u16 {
        self.vring_count() + 1
    }

    fn vring_count(&self) -> u16 {
        2 * self.opts.queue_pairs + u16::from(self.ctrl.is_some())
    }

    /// Use pairs `0..n`.
    pub fn set_active_pairs(&self, n: u16) -> Result<()> {
        if n == 0 || n > self.opts.queue_pairs {
            return Err(Error::InvalidConfig(format!(
                "{n} active pairs out of 1..={}",
                self.opts.queue_pairs
            )));
        }
        let old = self.me.active.swap(n, Ordering::Relaxed);
        if old != n {
            tracing::info!(
                side = self.me.name,
                from = old,
                to = n,
                "active queue pairs"
            );
        }
        Ok(())
    }

    /// Log the per-queue counters.
    pub fn log_stats(&self) {
        for (q, s) in self.me.stats.iter().enumerate() {
            tracing::info!(side = self.me.name, pair = q, rx = ?s.rx.snapshot(), tx = ?s.tx.snapshot(), "queue counters");
        }
    }

    /// Serve pair `pair`'s transmit queue until it stays empty for the poll window (or the
    /// thread has been busy for [`YIELD_AFTER`]), then sleep with kicks enabled.
    fn serve_tx(&self, pair: usize, vring: &Vring) {
        let Some(tx) = self.tx.get(pair) else { return };
        let Ok(mut tx) = tx.lock() else { return };
        let tx = &mut *tx;
        let stats = &self.me.stats[pair].tx;
        let start = Instant::now();
        let mut idle_since = tx.parked_at.take();
        let mut polling = false;
        loop {
            let Some(taken) = self.pass(pair, vring, &mut tx.fwd) else {
                return; // the ring is stopped or unusable
            };
            if taken > 0 {
                if let Some(since) = idle_since.take() {
                    tx.window.idle_ended(since.elapsed());
                }
                if polling {
                    stats.polled.fetch_add(taken as u64, Ordering::Relaxed);
                }
                if start.elapsed() > YIELD_AFTER {
                    let _ = self.me.wake[pair].write(1);
                    return;
                }
                continue;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() < tx.window.window() {
                polling = true;
                std::hint::spin_loop();
                continue;
            }
            match self.park(vring) {
                Some(true) => continue, // frames arrived while re-enabling kicks
                _ => {
                    tx.parked_at = Some(since);
                    return;
                }
            }
        }
    }

    /// Re-enable kicks on a transmit queue; `Some(true)` if frames arrived meanwhile.
    fn park(&self, vring: &Vring) -> Option<bool> {
        let mem = self.me.mem.get().ok()?;
        let mem = mem.memory();
        let mut state = vring.get_mut();
        rings::with_ring(self.opts.reader, state.get_queue_mut(), &mem, |r| {
            r.enable_notification()
        })
    }

    /// One pass of pair `pair` from this guest's transmit queue to the peer's receive queue;
    /// frames taken, `None` if the transmit ring is not running.
    fn pass(&self, pair: usize, vring: &Vring, fwd: &mut Forwarder) -> Option<usize> {
        let mem = self.me.mem.get().ok()?;
        let mem = mem.memory();
        let features = self.me.acked.load(Ordering::Relaxed);
        let stats = &self.me.stats[pair].tx;
        let mut state = vring.get_mut();
        if !state.is_enabled() || !state.get_queue().ready() {
            return None;
        }
        let reader = self.opts.reader;
        let pass = rings::with_ring(reader, state.get_queue_mut(), &mem, |ring| {
            if ring.pending() == 0 {
                return Pass::default();
            }
            let mut tx = End {
                ring,
                mem: &mem,
                features,
                stats,
            };
            self.to_peer(pair, fwd, &mut tx)
        });
        let Some(pass) = pass else {
            stats.report_failure(
                &format!("{}-tx{pair}", self.me.name),
                &"rings outside guest memory",
            );
            return None;
        };
        if pass.notify_tx {
            QueueStats::inc(&stats.notifications);
            let _ = state.signal_used_queue();
        }
        Some(pass.taken)
    }

    /// The pass proper, with the peer's receive queue of pair `pair` if it is running.
    fn to_peer(&self, pair: usize, fwd: &mut Forwarder, tx: &mut End<'_>) -> Pass {
        let peer = &self.peer;
        let running = peer.active.load(Ordering::Relaxed) as usize > pair;
        let Some(vring) = peer
            .vrings
            .get(pair, usize::from(RX_VRING))
            .filter(|_| running)
        else {
            return fwd.pass(tx, None);
        };
        let Ok(mem) = peer.mem.get() else {
            return fwd.pass(tx, None);
        };
        let mem = mem.memory();
        let mut state = vring.get_mut();
        if !state.is_enabled() || !state.get_queue().ready() {
            return fwd.pass(tx, None);
        }
        let features = peer.acked.load(Ordering::Relaxed);
        let stats = &peer.stats[pair].rx;
        let pass = rings::with_ring(self.opts.reader, state.get_queue_mut(), &mem, |ring| {
            let mut rx = End {
                ring,
                mem: &mem,
                features,
                stats,
            };
            fwd.pass(tx, Some(&mut rx))
        });
        let pass = pass.unwrap_or_else(|| fwd.pass(tx, None));
        if pass.notify_rx {
            QueueStats::inc(&stats.notifications);
            let _ = state.signal_used_queue();
        }
        pass
    }
}

impl VhostUserBackend for SwitchPort {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        usize::from(self.vring_count())
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.opts.queue_size)
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn acked_features(&self, features: u64) {
        self.me.acked.store(features, Ordering::Relaxed);
        tracing::info!(
            side = self.me.name,
            features = format_args!("{features:#x}"),
            "driver features acked"
        );
        let pairs = super::initial_active_pairs(features, self.opts.queue_pairs);
        if let Err(e) = self.set_active_pairs(pairs) {
            tracing::error!("{e}");
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&self, _enabled: bool) {}

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let start = offset as usize;
        match start.checked_add(size as usize) {
            Some(end) if end <= self.config.len() => self.config[start..end].to_vec(),
            _ => {
                tracing::warn!(offset, size, "get_config out of range");
                Vec::new()
            }
        }
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<VhostMem>) -> io::Result<()> {
        self.me.mem.set(mem)
    }

    /// Nothing is in flight between passes, and a pass holds the ring's lock, which the
    /// daemon takes to stop the ring before it calls this.
    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        if queue_index == 2 * u32::from(self.opts.queue_pairs) {
            if let Some(ctrl) = &self.ctrl {
                ctrl.lock()
                    .map_err(|_| io::Error::other("poisoned"))?
                    .stop();
            }
        }
        Ok(())
    }

    fn worker_started(&self, thread_index: usize) -> io::Result<()> {
        crate::name_thread(&format!("sw-{}-q{thread_index}", self.me.name));
        seccomp::install(NetThread::Switch).map_err(io::Error::other)
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        super::pair_thread_queues(self.opts.queue_pairs, self.ctrl.is_some())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Self::Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        seccomp::violation_point(NetThread::Switch);
        self.me.vrings.remember(thread_id, vrings);
        let wake = device_event == self.wake_event();
        if wake {
            if let Some(fd) = self.me.wake.get(thread_id) {
                let _ = fd.read();
            }
        }
        if wake || device_event == TX_VRING {
            if let Some(vring) = vrings.get(usize::from(TX_VRING)) {
                self.serve_tx(thread_id, vring);
            }
        } else if device_event == CTRL_VRING && thread_id == 0 {
            let (Some(ctrl), Some(vring)) = (&self.ctrl, vrings.get(usize::from(CTRL_VRING)))
            else {
                return Ok(());
            };
            let mem = self.me.mem.get()?;
            let mut ctrl = ctrl.lock().map_err(|_| io::Error::other("poisoned"))?;
            let mut q = VringQueue::new(vring, &mem);
            if let Err(e) = ctrl.process(&mut q, |n| self.set_active_pairs(n)) {
                ctrl.stats().report_failure("ctrl", &e);
            }
        }
        // Receive kicks need nothing: the peer's passes look for receive buffers themselves.
        Ok(())
    }
}
