// SPDX-License-Identifier: Apache-2.0
//! virtio-net served inside the VMM process (the in-VMM tier): the same PCI
//! transport and config space as the vhost-user-net device, but the queue
//! pair is served by one VMM thread (`net-q0`, see `queue_thread`) running
//! the `backends` crate's transmit handler (on the shared engine) and receive
//! path over a TAP opened with the same code as the vhost-user-net backend.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use backends::engine::histogram::bump;
use backends::engine::{Engine, EngineConfig, LocalQueue, Poller, QueueStats};
use backends::metrics::QueueMetrics;
use backends::net::{
    device_features, offload_features, PairWork, RxPath, Tap, TxHandler, DEFAULT_MTU, TX_MAX_IOV,
};
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_S_LINK_UP};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::GuestMemoryMmap;

use super::queue_thread::{dup_eventfd, engine_err, ready_queue, QueueThread, QueueWorker};
use crate::config::TapNetConfig;
use crate::devices::virtio::vhost_user::net::{NET_CONFIG_LEN, VIRTIO_ID_NET};
use crate::devices::virtio::{
    read_config_bytes, Activation, QueueState, VirtioDevice, VirtioError,
};

type TxEngine = Engine<TxHandler, GuestMemoryMmap>;

/// Receive queue index.
const RXQ: usize = 0;
/// Transmit queue index.
const TXQ: usize = 1;

/// The counters of the queue pair, kept across activations.
struct PairStats {
    rx: Arc<QueueStats>,
    tx: Arc<QueueStats>,
}

/// A virtio-net device on a TAP whose queue pair is served by a VMM thread.
pub struct InVmmNet {
    /// First field, so dropped (stopped and joined) before the TAP it uses.
    thread: Option<QueueThread>,
    stats: PairStats,
    name: String,
    tap: Tap,
    features: u64,
    acked: Arc<AtomicU64>,
    config: [u8; NET_CONFIG_LEN],
    mtu: u16,
    queue_size: u16,
}

impl InVmmNet {
    /// Creates or attaches to the TAP `cfg.tap` as NIC number `index`.
    pub fn open(cfg: &TapNetConfig, queue_size: u16, index: usize) -> Result<Self, VirtioError> {
        let tap = Tap::open(&cfg.tap, false).map_err(|e| VirtioError::Tap {
            tap: cfg.tap.clone(),
            source: e,
        })?;
        let mtu = DEFAULT_MTU;
        if let Err(e) = tap.set_mtu(mtu) {
            tracing::warn!("net{index}: {e}");
        }
        let mut features = device_features() | 1 << VIRTIO_NET_F_MAC;
        let offloads = tap.offloads_supported();
        if !offloads {
            features &= !offload_features();
        }
        let mut config = [0u8; NET_CONFIG_LEN];
        config[..6].copy_from_slice(&cfg.mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..12].copy_from_slice(&mtu.to_le_bytes());
        let m = cfg.mac;
        tracing::info!(
            "net{index} tap {}: in-VMM virtio-net, mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, \
             mtu {mtu}, queue size {queue_size}, offloads {}, features {features:#x}",
            cfg.tap,
            m[0],
            m[1],
            m[2],
            m[3],
            m[4],
            m[5],
            if offloads {
                "on"
            } else {
                "off (TAP lacks them)"
            }
        );
        Ok(Self {
            name: format!("net{index} tap {}", cfg.tap),
            tap,
            features,
            acked: Arc::new(AtomicU64::new(0)),
            config,
            mtu,
            queue_size,
            thread: None,
            stats: PairStats {
                rx: Arc::new(QueueStats::default()),
                tx: Arc::new(QueueStats::default()),
            },
        })
    }

    fn start(
        &mut self,
        act: &Activation<'_>,
        rxq: &QueueState,
        txq: &QueueState,
    ) -> Result<(), VirtioError> {
        let event_idx = act.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mem = Arc::new(act.mem.clone());
        let local =
            |i: usize, q: &QueueState| -> Result<LocalQueue<GuestMemoryMmap>, VirtioError> {
                let queue = ready_queue(i, q, event_idx, act.mem)?;
                Ok(LocalQueue::new(
                    queue,
                    mem.clone(),
                    Some(dup_eventfd(act.calls, i)?),
                ))
            };
        let rx_q = local(RXQ, rxq)?;
        let tx_q = local(TXQ, txq)?;
        let kicks = vec![dup_eventfd(act.kicks, RXQ)?, dup_eventfd(act.kicks, TXQ)?];

        let rx_stats = self.stats.rx.clone();
        let tx_stats = self.stats.tx.clone();
        let fd = self.tap.as_raw_fd();
        let handler = TxHandler::new(fd, self.acked.clone(), self.mtu, tx_stats.clone());
        let ecfg = EngineConfig::new(txq.size, TX_MAX_IOV);
        let tx = Engine::new(handler, ecfg, tx_stats.clone()).map_err(engine_err(TXQ))?;
        let rx = RxPath::new(fd, rxq.size, self.acked.clone(), rx_stats.clone())
            .map_err(engine_err(RXQ))?;
        let poller =
            Poller::new(ecfg.tuning.poll).polling_when_contended(ecfg.tuning.poll_when_contended);
        let pair = Pair {
            rx,
            tx,
            rx_q,
            tx_q,
            poller,
        };
        let stats = vec![rx_stats, tx_stats];
        let thread = QueueThread::spawn("net-q0".into(), self.name.clone(), pair, kicks, stats)?;
        self.thread = Some(thread);
        Ok(())
    }
}

/// What the `net-q0` thread owns.
struct Pair {
    rx: RxPath,
    tx: TxEngine,
    rx_q: LocalQueue<GuestMemoryMmap>,
    tx_q: LocalQueue<GuestMemoryMmap>,
    /// The thread's busy-poll window, over both queues.
    poller: Poller,
}

impl QueueWorker for Pair {
    fn completion_fds(&self) -> Vec<RawFd> {
        // In kick order: receive, then transmit.
        vec![
            self.rx.completion_fd().as_raw_fd(),
            self.tx.completion_fd().as_raw_fd(),
        ]
    }

    /// Both queues on any wake-up (transmit first), busy-polled together; each side
    /// counts and logs its own failures.
    fn process(&mut self, ready: &[bool], kicked: &[bool]) -> Result<(), VirtioError> {
        for (q, stats) in [(RXQ, self.rx.stats()), (TXQ, self.tx.stats())] {
            if ready.get(q) == Some(&true) {
                bump(&stats.wakeups, 1);
            }
        }
        if kicked.get(RXQ) == Some(&true) {
            self.rx.kicked();
        }
        let mut work = PairWork {
            rx: &mut self.rx,
            rx_q: &mut self.rx_q,
            tx: &mut self.tx,
            tx_q: &mut self.tx_q,
            pair: 0,
        };
        let served = self.poller.run(&mut work);
        self.rx.publish_inflight();
        let tx_inflight = self.tx.inflight() as u64;
        self.tx
            .stats()
            .inflight
            .store(tx_inflight, Ordering::Relaxed);
        served.map_err(engine_err(TXQ))?;
        Ok(())
    }

    /// Only the transmit side has requests in flight to finish.
    fn drain(&mut self) -> Result<(), VirtioError> {
        self.tx.drain(&mut self.tx_q).map_err(engine_err(TXQ))
    }

    /// Transmit finishes its writes; receive simply is not served until the
    /// next `process` (frames wait in the TAP and the read slots, not in guest
    /// memory).
    fn settle(&mut self) -> Result<(), VirtioError> {
        self.tx.settle(&mut self.tx_q).map_err(engine_err(TXQ))
    }
}

impl VirtioDevice for InVmmNet {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_NET
    }

    /// One receive and one transmit queue.
    fn num_queues(&self) -> u16 {
        2
    }

    fn queue_max_size(&self) -> u16 {
        self.queue_size
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // Read-only for the driver: MAC changes would go through a control queue.
        tracing::debug!("{}: ignored config write at {offset:#x}", self.name);
    }

    fn activate(&mut self, act: Activation<'_>) -> Result<(), VirtioError> {
        self.reset();
        let acked = act.acked_features & self.features;
        self.acked.store(acked, Ordering::Relaxed);
        if let Err(e) = self.tap.set_offload(acked) {
            tracing::warn!("{}: {e}", self.name);
        }
        match (act.queues.get(RXQ), act.queues.get(TXQ)) {
            (Some(rx), Some(tx)) if rx.ready && tx.ready => self.start(&act, rx, tx),
            _ => {
                tracing::warn!(
                    "{}: driver did not enable both queues: no data path",
                    self.name
                );
                Ok(())
            }
        }
    }

    fn reset(&mut self) {
        let Some(t) = self.thread.take() else {
            return;
        };
        t.stop();
        tracing::info!(
            "{}: stopped: rx {:?}, tx {:?}",
            self.name,
            self.stats.rx.snapshot(),
            self.stats.tx.snapshot()
        );
        self.acked.store(0, Ordering::Relaxed);
        if let Err(e) = self.tap.set_offload(0) {
            tracing::warn!("{}: {e}", self.name);
        }
    }

    fn queue_metrics(&self) -> Vec<QueueMetrics> {
        let device = self.name.split(' ').next().unwrap_or("net");
        vec![
            QueueMetrics::new(device, "rx0", &self.stats.rx, false),
            QueueMetrics::new(device, "tx0", &self.stats.tx, true),
        ]
    }

    fn pause(&mut self) -> bool {
        self.thread.as_ref().is_none_or(QueueThread::pause)
    }

    fn resume(&mut self) -> bool {
        self.thread.as_ref().is_none_or(QueueThread::resume)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use virtio_bindings::virtio_net::{
        VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF,
    };
    use vm_memory::{Address, Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    /// A TAP of our own (removed when the fd closes), or `None` without CAP_NET_ADMIN.
    fn device(tag: &str) -> Option<InVmmNet> {
        let cfg = TapNetConfig {
            tap: format!("vmt{tag}{}", std::process::id() % 100_000),
            mac: [0x52, 0x54, 0, 1, 2, 3],
            model: crate::config::NicModel::Virtio,
        };
        match InVmmNet::open(&cfg, 16, 0) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("SKIP: cannot create a TAP here: {e}");
                None
            }
        }
    }

    #[test]
    fn config_space_and_features() {
        let Some(mut d) = device("c") else { return };
        let mut cfg = [0xffu8; NET_CONFIG_LEN];
        d.read_config(0, &mut cfg);
        assert_eq!(&cfg[..6], &[0x52, 0x54, 0, 1, 2, 3]);
        assert_eq!(
            u16::from_le_bytes([cfg[6], cfg[7]]),
            VIRTIO_NET_S_LINK_UP as u16
        );
        assert_eq!(u16::from_le_bytes([cfg[8], cfg[9]]), 1);
        assert_eq!(u16::from_le_bytes([cfg[10], cfg[11]]), DEFAULT_MTU);
        let mut big = [0xffu8; 8];
        d.read_config(u64::MAX - 2, &mut big);
        assert_eq!(big, [0; 8]);
        d.read_config(8, &mut big);
        assert_eq!(big, [0; 8]);
        d.write_config(0, &[0; 6]);
        d.read_config(0, &mut cfg);
        assert_eq!(&cfg[..6], &[0x52, 0x54, 0, 1, 2, 3]);
        let f = d.features();
        for bit in [
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_NET_F_MAC,
        ] {
            assert_ne!(f & (1 << bit), 0, "bit {bit}");
        }
        assert_ne!(f & crate::devices::virtio::VIRTIO_F_VERSION_1, 0);
        for bit in [VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MQ] {
            assert_eq!(f & (1 << bit), 0, "bit {bit}");
        }
        assert_eq!((d.device_type(), d.num_queues()), (VIRTIO_ID_NET, 2));
        d.reset(); // no thread yet: a no-op
    }

    const QSIZE: u16 = 16;
    /// (desc, avail, used) of queue `i`.
    fn rings(i: u64) -> (u64, u64, u64) {
        let base = 0x1000 + i * 0x3000;
        (base, base + 0x1000, base + 0x2000)
    }

    fn write_desc(mem: &GuestMemoryMmap, table: u64, idx: u64, addr: u64, len: u32, flags: u16) {
        let d = GuestAddress(table + 16 * idx);
        mem.write_obj(addr, d).unwrap();
        mem.write_obj(len, d.unchecked_add(8)).unwrap();
        mem.write_obj(flags, d.unchecked_add(12)).unwrap();
        mem.write_obj(0u16, d.unchecked_add(14)).unwrap();
    }

    /// The queue thread end to end without a VM: a hostile transmit chain (outside guest RAM)
    /// comes back with length 0 and is counted, the next frame still goes to the TAP, the
    /// "irqfd" is signalled, and reset stops and joins the thread.
    #[test]
    fn kick_transmits_signals_and_reset_stops_the_thread() {
        let Some(mut d) = device("t") else { return };
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut queues = Vec::new();
        for i in 0..2 {
            let (desc, avail, used) = rings(i);
            let mut q = QueueState::new(QSIZE);
            q.size = QSIZE;
            q.ready = true;
            (q.desc, q.avail, q.used) = (desc, avail, used);
            queues.push(q);
        }
        let (tdesc, tavail, tused) = rings(TXQ as u64);
        // Chain 0: outside guest RAM. Chain 1: header + a 60-byte frame.
        write_desc(&mem, tdesc, 0, 0xfff0_0000, 72, 0);
        write_desc(&mem, tdesc, 1, 0x10000, 72, 0);
        mem.write_slice(&[0xff; 72], GuestAddress(0x10000)).unwrap();
        mem.write_slice(&[0; 12], GuestAddress(0x10000)).unwrap();
        mem.write_obj(0u16, GuestAddress(tavail + 4)).unwrap();
        mem.write_obj(1u16, GuestAddress(tavail + 6)).unwrap();
        mem.write_obj(2u16, GuestAddress(tavail + 2)).unwrap();
        let evt = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let kicks = [evt(), evt()];
        let calls = [evt(), evt()];
        let acked = crate::devices::virtio::VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MRG_RXBUF;
        d.activate(Activation {
            acked_features: acked,
            queues: &queues,
            kicks: &kicks,
            calls: &calls,
            mem: &mem,
        })
        .unwrap();
        kicks[TXQ].write(1).unwrap();
        let mut used_idx = 0u16;
        for _ in 0..200 {
            used_idx = mem.read_obj(GuestAddress(tused + 2)).unwrap();
            if used_idx == 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(used_idx, 2);
        for e in 0..2u64 {
            let len: u32 = mem.read_obj(GuestAddress(tused + 4 + 8 * e + 4)).unwrap();
            assert_eq!(len, 0, "tx used length is 0");
        }
        assert!(calls[TXQ].read().unwrap() >= 1, "no interrupt");
        let tx = d.stats.tx.snapshot();
        assert_eq!(tx.requests, 2, "{tx:?}");
        assert_eq!(tx.guest_faults, 1, "{tx:?}");
        // The TAP is down here: the write fails (EIO), counted; the chain still returns.
        assert_eq!(tx.ok + tx.io_errors, 1, "{tx:?}");
        d.reset();
        assert!(d.thread.is_none());
        d.reset();
    }
}
