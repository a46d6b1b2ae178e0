// SPDX-License-Identifier: Apache-2.0
//! The vhost-user-net device: features, config space, one TAP queue, one transmit [`Engine`]
//! and one [`RxPath`] per queue pair, each pair served by its own vhost-user-backend worker
//! thread (`net-q<N>`).
//!
//! With several pairs the device also offers VIRTIO_NET_F_CTRL_VQ and serves the control
//! queue (index 2N, on the thread of pair 0, see [`CtrlQueue`]). Pairs past the number the
//! driver set with `VQ_PAIRS_SET` are inactive: their TAP queue is detached
//! (`TUNSETQUEUE`), so the kernel steers no flow to them, and their receive path is stopped.
//! A frontend that keeps the control queue itself (QEMU acks MQ but not CTRL_VQ) switches
//! pairs with `SET_VRING_ENABLE`; then every pair stays attached.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::{
    VhostUserInflight, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_bindings::virtio_net::*;
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::EventFd;

use super::{
    device_features, offload_features, CtrlQueue, PairWork, RxPath, Tap, TxHandler, TX_MAX_IOV,
};
use crate::engine::histogram::bump;
use crate::engine::{
    BackendMemory, Engine, EngineConfig, Poller, QueueStats, Tuning, VhostMem, Vring, VringQueue,
    WorkerVrings,
};
use crate::inflight::InflightRegion;
use crate::placement::Affinity;
use crate::seccomp::{self, net::NetThread};
use crate::{Error, Result};
use std::fs::File;
use std::os::fd::{OwnedFd, RawFd};

/// Options of a vhost-user-net device.
#[derive(Debug)]
pub struct NetOptions {
    /// Where frames go.
    pub port: Port,
    /// MAC address offered to the driver (VIRTIO_NET_F_MAC); `None`: the driver picks one.
    pub mac: Option<[u8; 6]>,
    /// MTU offered to the driver (VIRTIO_NET_F_MTU) and set on the TAP.
    pub mtu: u16,
    /// Queue pairs (one worker thread, one TAP queue and two io_urings each).
    pub queue_pairs: u16,
    /// Maximum queue size.
    pub queue_size: u16,
    /// Polling (of each queue pair's thread) and batching (of the transmit engines).
    pub tuning: Tuning,
    /// Host CPUs per queue pair's thread (empty: anywhere).
    pub affinity: Affinity,
}

/// The other end of the device's wire.
#[derive(Debug)]
pub enum Port {
    /// A TAP interface to create or attach to (one queue per queue pair).
    Tap(String),
    /// Per queue pair, `(tx, rx)` ends of two datagram socket pairs whose other ends belong
    /// to another device (link mode: two guests wired back to back, no TAP). Each datagram
    /// is one frame with its 12-byte vnet header. The `tx` end should be `O_NONBLOCK` so a
    /// peer that posts no receive buffers makes frames drop (counted in `io_errors`) instead
    /// of stalling this queue, as a TAP would. No checksum/segmentation offloads are
    /// offered: the peer guest may not have negotiated them.
    Link(Vec<(OwnedFd, OwnedFd)>),
}

/// One queue pair's file descriptor.
#[derive(Debug)]
enum PortFd {
    Tap(Tap),
    Sock { tx: OwnedFd, rx: OwnedFd },
}

impl PortFd {
    fn tx(&self) -> RawFd {
        match self {
            PortFd::Tap(t) => t.as_raw_fd(),
            PortFd::Sock { tx, .. } => tx.as_raw_fd(),
        }
    }

    fn rx(&self) -> RawFd {
        match self {
            PortFd::Tap(t) => t.as_raw_fd(),
            PortFd::Sock { rx, .. } => rx.as_raw_fd(),
        }
    }
}

type TxEngine = Engine<TxHandler, VhostMem>;

/// Per queue-pair counters.
#[derive(Debug, Clone)]
pub struct PairStats {
    /// Receive queue counters (requests = chains used, ok = frames delivered).
    pub rx: Arc<QueueStats>,
    /// Transmit queue counters (requests = frames, ok = written to the TAP).
    pub tx: Arc<QueueStats>,
}

/// vhost-user-net backend state shared by the daemon and the queue threads.
pub struct NetBackend {
    opts: NetOptions,
    features: u64,
    acked: Arc<AtomicU64>,
    config: Vec<u8>,
    ports: Vec<PortFd>,
    tx: Vec<Mutex<TxEngine>>,
    rx: Vec<Mutex<RxPath>>,
    stats: Vec<PairStats>,
    ctrl: Option<Mutex<CtrlQueue>>,
    /// Each pair's busy-poll window: its thread polls both queues together.
    pollers: Vec<Mutex<Poller>>,
    /// Queue pairs in use (the rest are detached and stopped).
    active: Mutex<u16>,
    mem: BackendMemory,
    /// Each pair's worker's vrings, for [`VhostUserBackend::stop_vring`].
    vrings: WorkerVrings,
}

/// Local vring index of the receive queue in a worker thread.
const RX_VRING: u16 = 0;
/// Local vring index of the transmit queue.
const TX_VRING: u16 = 1;
/// Local vring index of the control queue in the thread of pair 0.
const CTRL_VRING: u16 = 2;

fn poisoned<T>(what: &'static str) -> impl FnOnce(std::sync::PoisonError<T>) -> Error {
    move |_| Error::Poisoned(what)
}

/// The ranges the device supports: 1..=16 queue pairs, power-of-two queue
/// sizes up to 32768, an MTU the header fields can carry.
fn validate(opts: &NetOptions) -> Result<()> {
    check_shape(opts.queue_pairs, opts.queue_size, opts.mtu)
}

/// [`validate`] for the parts every vhost-user-net device shares (the switch's too).
pub(super) fn check_shape(queue_pairs: u16, queue_size: u16, mtu: u16) -> Result<()> {
    if queue_pairs == 0 || queue_pairs > 16 {
        return Err(Error::InvalidConfig(format!(
            "queues must be 1..=16, got {queue_pairs}"
        )));
    }
    if !queue_size.is_power_of_two() || queue_size > 32768 {
        return Err(Error::InvalidConfig(format!(
            "queue size must be a power of two <= 32768, got {queue_size}"
        )));
    }
    if !(68..=65535 - 18).contains(&mtu) {
        return Err(Error::InvalidConfig(format!("mtu {mtu} out of range")));
    }
    Ok(())
}

/// One port per queue pair: a TAP queue (the first one sets the MTU) or a
/// duplicate of the given link socket pair.
fn open_ports(opts: &NetOptions) -> Result<Vec<PortFd>> {
    let multi = opts.queue_pairs > 1;
    Ok(match &opts.port {
        Port::Tap(name) => {
            let taps = (0..opts.queue_pairs)
                .map(|_| Tap::open(name, multi))
                .collect::<Result<Vec<_>>>()?;
            if let Err(e) = taps[0].set_mtu(opts.mtu) {
                tracing::warn!("{e}");
            }
            // A restarted backend finds the interface again, with its addresses, routes and
            // bridge port, instead of a new one.
            if let Err(e) = taps[0].set_persistent(true) {
                tracing::warn!("{e}");
            }
            taps.into_iter().map(PortFd::Tap).collect()
        }
        Port::Link(fds) => {
            if fds.len() != usize::from(opts.queue_pairs) {
                return Err(Error::InvalidConfig(format!(
                    "{} link sockets for {} queue pairs",
                    fds.len(),
                    opts.queue_pairs
                )));
            }
            fds.iter()
                .map(|(tx, rx)| {
                    Ok(PortFd::Sock {
                        tx: tx.try_clone().map_err(Error::EventFd)?,
                        rx: rx.try_clone().map_err(Error::EventFd)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?
        }
    })
}

/// The features offered: multiqueue and the control queue with several
/// pairs, no offloads on a link (its peer is not a TAP), MAC only when given.
fn offered_features(opts: &NetOptions) -> u64 {
    let mut features = device_features() | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    if opts.queue_pairs > 1 {
        features |= (1 << VIRTIO_NET_F_MQ) | (1 << VIRTIO_NET_F_CTRL_VQ);
    }
    if matches!(opts.port, Port::Link(_)) {
        features &= !offload_features();
    }
    if opts.mac.is_none() {
        features &= !(1 << VIRTIO_NET_F_MAC);
    }
    features
}

/// `struct virtio_net_config` up to the MTU: MAC, status (link up), pairs, MTU.
pub(super) fn config_space(mac: Option<[u8; 6]>, queue_pairs: u16, mtu: u16) -> Vec<u8> {
    let mut config = Vec::with_capacity(12);
    config.extend_from_slice(&mac.unwrap_or_default());
    config.extend_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
    config.extend_from_slice(&queue_pairs.to_le_bytes());
    config.extend_from_slice(&mtu.to_le_bytes());
    config
}

impl NetBackend {
    /// Open the TAP queues and build the device.
    pub fn new(opts: NetOptions) -> Result<Self> {
        validate(&opts)?;
        let multi = opts.queue_pairs > 1;
        let ports = open_ports(&opts)?;
        let features = offered_features(&opts);
        let config = config_space(opts.mac, opts.queue_pairs, opts.mtu);

        let acked = Arc::new(AtomicU64::new(0));
        let ecfg = EngineConfig {
            tuning: opts.tuning,
            ..EngineConfig::new(opts.queue_size, TX_MAX_IOV)
        };
        let mut tx = Vec::new();
        let mut rx = Vec::new();
        let mut stats = Vec::new();
        for port in &ports {
            let st = PairStats {
                rx: Arc::new(QueueStats::default()),
                tx: Arc::new(QueueStats::default()),
            };
            let handler = TxHandler::new(port.tx(), acked.clone(), opts.mtu, st.tx.clone());
            tx.push(Mutex::new(Engine::new(handler, ecfg, st.tx.clone())?));
            rx.push(Mutex::new(RxPath::new(
                port.rx(),
                opts.queue_size,
                acked.clone(),
                st.rx.clone(),
            )?));
            stats.push(st);
        }
        let ctrl = multi.then(|| {
            let st = Arc::new(QueueStats::default());
            Mutex::new(CtrlQueue::new(opts.queue_pairs, acked.clone(), st))
        });
        let active = Mutex::new(opts.queue_pairs);
        let vrings = WorkerVrings::new(usize::from(opts.queue_pairs));
        let pollers = (0..opts.queue_pairs)
            .map(|_| {
                let poller = Poller::new(opts.tuning.poll);
                Mutex::new(poller.polling_when_contended(opts.tuning.poll_when_contended))
            })
            .collect();
        Ok(Self {
            opts,
            features,
            acked,
            config,
            ports,
            tx,
            rx,
            stats,
            ctrl,
            pollers,
            active,
            mem: BackendMemory::default(),
            vrings,
        })
    }

    /// Per queue-pair counters.
    pub fn stats(&self) -> &[PairStats] {
        &self.stats
    }

    /// Counters of the control queue, if the device has one.
    pub fn ctrl_stats(&self) -> Option<Arc<QueueStats>> {
        let ctrl = self.ctrl.as_ref()?.lock().ok()?;
        Some(ctrl.stats().clone())
    }

    /// Completion eventfds of pair `q`: `(tx, rx)`, to register with that pair's epoll loop.
    pub fn completion_fds(&self, q: usize) -> io::Result<(EventFd, EventFd)> {
        let tx = self.tx[q]
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?;
        let rx = self.rx[q]
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?;
        Ok((
            tx.completion_fd().try_clone()?,
            rx.completion_fd().try_clone()?,
        ))
    }

    /// epoll `data` of the transmit completion eventfd (the receive one is this + 1); past
    /// the range vhost-user-backend reserves for the queues and its exit event.
    pub fn tx_completion_event(&self) -> u16 {
        self.vring_count() + 1
    }

    /// Number of virtqueues: two per pair, plus the control queue.
    fn vring_count(&self) -> u16 {
        2 * self.opts.queue_pairs + u16::from(self.ctrl.is_some())
    }

    /// Queue pairs currently in use.
    pub fn active_pairs(&self) -> Result<u16> {
        Ok(*self.active.lock().map_err(poisoned("active pairs"))?)
    }

    /// Use pairs `0..n` only: stop the receive path and detach the TAP queue of the pairs
    /// past `n`, attach and restart those below it. Pairs already in the wanted state are
    /// left alone.
    pub fn set_active_pairs(&self, n: u16) -> Result<()> {
        if n == 0 || n > self.opts.queue_pairs {
            return Err(Error::InvalidConfig(format!(
                "{n} active pairs out of 1..={}",
                self.opts.queue_pairs
            )));
        }
        let mut active = self.active.lock().map_err(poisoned("active pairs"))?;
        let mut result = Ok(());
        // Receive stops before the TAP queue goes, so no read is issued on a detached queue.
        for k in (n..*active).rev() {
            let k = usize::from(k);
            self.rx[k]
                .lock()
                .map_err(poisoned("rx"))?
                .set_active(false)?;
            if let PortFd::Tap(tap) = &self.ports[k] {
                if let Err(e) = tap.set_attached(false) {
                    tracing::error!(pair = k, "{e}");
                    result = Err(e);
                }
            }
        }
        for k in *active..n {
            let i = usize::from(k);
            if let PortFd::Tap(tap) = &self.ports[i] {
                if let Err(e) = tap.set_attached(true) {
                    *active = k;
                    return Err(e);
                }
            }
            self.rx[i]
                .lock()
                .map_err(poisoned("rx"))?
                .set_active(true)?;
        }
        if *active != n {
            tracing::info!(from = *active, to = n, "active queue pairs changed");
        }
        *active = n;
        result
    }

    /// Give each queue its part of an inflight region (`view(vring index)`).
    fn set_trackers(
        &self,
        view: impl Fn(u16) -> Option<crate::inflight::InflightQueue>,
    ) -> Result<()> {
        for pair in 0..self.opts.queue_pairs {
            let p = usize::from(pair);
            self.rx[p]
                .lock()
                .map_err(poisoned("rx"))?
                .set_inflight(view(2 * pair));
            self.tx[p]
                .lock()
                .map_err(poisoned("tx"))?
                .set_inflight(view(2 * pair + 1));
        }
        if let Some(ctrl) = &self.ctrl {
            ctrl.lock()
                .map_err(poisoned("ctrl"))?
                .set_inflight(view(2 * self.opts.queue_pairs));
        }
        Ok(())
    }

    fn rx_completion_event(&self) -> u16 {
        self.tx_completion_event() + 1
    }

    /// Serve pair `pair`'s two queues on its thread's wake-up (a kick of either queue or a
    /// completion of either side), busy-polling both for the pair's window; `device_event`
    /// says which (counted as that side's wake-up, and kick if it is one).
    fn serve_pair(
        &self,
        pair: usize,
        device_event: u16,
        vrings: &[Vring],
        mem: &GuestMemoryAtomic<VhostMem>,
    ) -> io::Result<()> {
        let missing = || io::Error::other(format!("no queue pair for thread {pair}"));
        let (Some(rx_vring), Some(tx_vring)) = (
            vrings.get(usize::from(RX_VRING)),
            vrings.get(usize::from(TX_VRING)),
        ) else {
            return Err(missing());
        };
        let (Some(poller), Some(rx), Some(tx)) =
            (self.pollers.get(pair), self.rx.get(pair), self.tx.get(pair))
        else {
            return Err(missing());
        };
        let mut poller = poller.lock().map_err(|_| io::Error::other("poisoned"))?;
        let mut rx = rx.lock().map_err(|_| io::Error::other("poisoned"))?;
        let mut tx = tx.lock().map_err(|_| io::Error::other("poisoned"))?;
        // The side that woke the thread: its kick or its completions.
        if device_event == RX_VRING || device_event == self.rx_completion_event() {
            bump(&rx.stats().wakeups, 1);
        } else {
            bump(&tx.stats().wakeups, 1);
        }
        if device_event == RX_VRING {
            bump(&rx.stats().kicks, 1);
            rx.kicked();
        } else if device_event == TX_VRING {
            bump(&tx.stats().kicks, 1);
        }
        let (mut rx_q, mut tx_q) = (
            VringQueue::new(rx_vring, mem),
            VringQueue::new(tx_vring, mem),
        );
        let mut work = PairWork {
            rx: &mut rx,
            rx_q: &mut rx_q,
            tx: &mut tx,
            tx_q: &mut tx_q,
            pair,
        };
        // Each side counts and logs its own failures; the pair keeps being served.
        let _ = poller.run(&mut work);
        rx.publish_inflight();
        let tx_inflight = tx.inflight() as u64;
        tx.stats().inflight.store(tx_inflight, Ordering::Relaxed);
        Ok(())
    }

    /// Log the per-queue counters.
    pub fn log_stats(&self) {
        for (q, s) in self.stats.iter().enumerate() {
            tracing::info!(pair = q, rx = ?s.rx.snapshot(), tx = ?s.tx.snapshot(), "queue counters");
        }
        if let Some(ctrl) = &self.ctrl {
            if let Ok(c) = ctrl.lock() {
                let active = self.active_pairs().unwrap_or_default();
                tracing::info!(active_pairs = active, ctrl = ?c.stats().snapshot(), "control queue counters");
            }
        }
    }
}

impl VhostUserBackend for NetBackend {
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
        self.acked.store(features, Ordering::Relaxed);
        for tap in self.ports.iter().filter_map(|p| match p {
            PortFd::Tap(t) => Some(t),
            PortFd::Sock { .. } => None,
        }) {
            if let Err(e) = tap.set_offload(features) {
                tracing::error!("{e}");
            }
        }
        tracing::info!(
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
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
    }

    fn set_event_idx(&self, _enabled: bool) {}

    fn get_inflight_fd(&self, req: &VhostUserInflight) -> io::Result<(VhostUserInflight, File)> {
        Ok(InflightRegion::create(
            req,
            self.vring_count(),
            self.opts.queue_size,
        )?)
    }

    /// Receive, transmit and control queues track what they take in their part of the region
    /// (vring `2p` is pair `p`'s receive queue, `2p + 1` its transmit queue, `2N` the control
    /// queue) from their next start on.
    fn set_inflight_fd(&self, msg: &VhostUserInflight, file: File) -> io::Result<()> {
        let region = InflightRegion::map(msg, &file, self.vring_count(), self.opts.queue_size)
            .inspect_err(|e| tracing::error!("inflight region refused: {e}"))?;
        self.set_trackers(|index| region.queue(index))
            .map_err(|e| io::Error::other(e.to_string()))?;
        tracing::info!(queues = msg.num_queues, "inflight region mapped");
        Ok(())
    }

    fn connection_closed(&self) {
        if let Err(e) = self.set_trackers(|_| None) {
            tracing::error!("{e}");
        }
    }

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
        self.mem.set(mem)
    }

    /// GET_VRING_BASE: the transmit queue completes what it took; the receive queue publishes
    /// what it owes and gives its reserved buffers back ([`RxPath::stop`]). The control
    /// queue answers each request as it takes it.
    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        let index = usize::try_from(queue_index).unwrap_or(usize::MAX);
        let pair = index / 2;
        if pair >= usize::from(self.opts.queue_pairs) {
            if let Some(ctrl) = &self.ctrl {
                ctrl.lock()
                    .map_err(|_| io::Error::other("poisoned"))?
                    .stop();
            }
            return Ok(());
        }
        let local = index % 2;
        let Some(vring) = self.vrings.get(pair, local) else {
            return Ok(()); // never served: nothing taken
        };
        let mem = self.mem.get()?;
        let mut q = VringQueue::new(vring, &mem);
        // The base is reported even if publishing failed: nothing is left to wait for.
        if local == usize::from(RX_VRING) {
            let mut rx = self.rx[pair]
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?;
            if let Err(e) = rx.stop(&mut q) {
                rx.stats().report_failure(&format!("rx{pair} stop"), &e);
            }
        } else {
            let mut tx = self.tx[pair]
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?;
            match tx.settle(&mut q) {
                Ok(()) => {}
                Err(e @ Error::SettleTimeout { .. }) => {
                    return Err(crate::engine::stop_failed(index, e))
                }
                Err(e) => tx.stats().report_failure(&format!("tx{pair} stop"), &e),
            }
        }
        tracing::debug!(
            queue_index,
            next_avail = vring.queue_next_avail(),
            "ring stopped"
        );
        Ok(())
    }

    /// Names the worker (vhost-user-backend calls them all `vring_worker`) and confines it to
    /// what a queue thread does.
    fn worker_started(&self, thread_index: usize) -> io::Result<()> {
        let name = format!("net-q{thread_index}");
        crate::name_thread(&name);
        self.opts.affinity.pin_current(thread_index, &name);
        seccomp::install(NetThread::Queue).map_err(io::Error::other)
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
        seccomp::violation_point(NetThread::Queue);
        let mem = self.mem.get()?;
        tracing::trace!(device_event, thread_id, "event");
        self.vrings.remember(thread_id, vrings);
        let pair_events = [
            RX_VRING,
            TX_VRING,
            self.rx_completion_event(),
            self.tx_completion_event(),
        ];
        if pair_events.contains(&device_event) {
            self.serve_pair(thread_id, device_event, vrings, &mem)
        } else if device_event == CTRL_VRING && thread_id == 0 {
            let (Some(ctrl), Some(vring)) = (&self.ctrl, vrings.get(usize::from(CTRL_VRING)))
            else {
                return Ok(());
            };
            let mut ctrl = ctrl.lock().map_err(|_| io::Error::other("poisoned"))?;
            bump(&ctrl.stats().kicks, 1);
            let mut q = VringQueue::new(vring, &mem);
            if let Err(e) = ctrl.process(&mut q, |n| self.set_active_pairs(n)) {
                ctrl.stats().report_failure("ctrl", &e);
            }
            Ok(())
        } else {
            Ok(())
        }
    }
}
