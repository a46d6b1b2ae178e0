// SPDX-License-Identifier: Apache-2.0
//! The vhost-user-blk device: features, config space and one [`Engine`] per queue, each
//! driven by its own vhost-user-backend worker thread (`blk-q<N>`).

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::{
    VhostUserInflight, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost_user_backend::VhostUserBackend;
use virtio_bindings::virtio_blk::*;
use vm_memory::{ByteValued, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::EventFd;

use super::{
    device_config, device_features, BlkConfig, BlkHandler, BlkSettings, Disk, CONFIG_WCE_OFFSET,
    SEG_MAX,
};
use crate::engine::histogram::bump;
use crate::engine::{
    BackendMemory, Engine, EngineConfig, QueueStats, Tuning, VhostMem, Vring, VringQueue,
    WorkerVrings,
};
use crate::inflight::InflightRegion;
use crate::placement::Affinity;
use crate::seccomp::{self, blk::BlkThread};
use crate::{Error, Result};

/// Options of a vhost-user-blk device.
#[derive(Debug, Clone)]
pub struct BlkOptions {
    /// Number of queues (one worker thread and one io_uring each).
    pub queues: u16,
    /// Maximum queue size.
    pub queue_size: u16,
    /// Export read-only.
    pub readonly: bool,
    /// Polling and batching of the queues' engines.
    pub tuning: Tuning,
    /// GET_ID serial (truncated to 20 bytes).
    pub serial: String,
    /// Host CPUs per queue thread (empty: anywhere).
    pub affinity: Affinity,
}

type BlkEngine = Engine<BlkHandler, VhostMem>;

/// vhost-user-blk backend state shared by the daemon and the queue threads.
pub struct BlkBackend {
    config: BlkConfig,
    features: u64,
    opts: BlkOptions,
    engines: Vec<Mutex<BlkEngine>>,
    stats: Vec<Arc<QueueStats>>,
    mem: BackendMemory,
    /// The backing file (for the final `fdatasync`).
    file: Arc<File>,
    writeback: Arc<AtomicBool>,
    stopping: AtomicBool,
    drained: Vec<AtomicBool>,
    /// Each queue's worker's vring, for [`VhostUserBackend::stop_vring`].
    vrings: WorkerVrings,
}

impl BlkBackend {
    /// Build the device for `disk`.
    pub fn new(disk: Disk, opts: BlkOptions) -> Result<Self> {
        if opts.queues == 0 || opts.queues > 64 {
            return Err(Error::InvalidConfig(format!(
                "queues must be 1..=64, got {}",
                opts.queues
            )));
        }
        if !opts.queue_size.is_power_of_two() || opts.queue_size > 32768 {
            return Err(Error::InvalidConfig(format!(
                "queue size must be a power of two <= 32768, got {}",
                opts.queue_size
            )));
        }
        let mut serial = [0u8; VIRTIO_BLK_ID_BYTES as usize];
        let n = opts.serial.len().min(serial.len());
        serial[..n].copy_from_slice(&opts.serial.as_bytes()[..n]);
        let sectors = disk.sectors();
        let settings = BlkSettings {
            sectors,
            readonly: opts.readonly,
            serial,
            seg_max: SEG_MAX,
            discard: true,
            write_zeroes: true,
        };

        let cfg = device_config(sectors, opts.queues);
        let features =
            device_features(opts.readonly) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

        let file = Arc::new(disk.file);
        let writeback = Arc::new(AtomicBool::new(true));
        let ecfg = EngineConfig {
            tuning: opts.tuning,
            ..EngineConfig::new(opts.queue_size, SEG_MAX as usize)
        };
        let mut engines = Vec::new();
        let mut stats = Vec::new();
        for _ in 0..opts.queues {
            let st = Arc::new(QueueStats::default());
            let handler = BlkHandler::new(
                Arc::clone(&file),
                settings.clone(),
                writeback.clone(),
                st.clone(),
            );
            engines.push(Mutex::new(Engine::new(handler, ecfg, st.clone())?));
            stats.push(st);
        }
        let drained = (0..opts.queues).map(|_| AtomicBool::new(false)).collect();
        let vrings = WorkerVrings::new(usize::from(opts.queues));
        Ok(Self {
            config: cfg,
            features,
            opts,
            engines,
            stats,
            mem: BackendMemory::default(),
            file,
            writeback,
            stopping: AtomicBool::new(false),
            drained,
            vrings,
        })
    }

    /// Per-queue counters.
    pub fn stats(&self) -> &[Arc<QueueStats>] {
        &self.stats
    }

    /// Completion eventfd of queue `q`'s engine (to register with that queue's epoll loop).
    pub fn completion_fd(&self, q: usize) -> io::Result<EventFd> {
        let engine = self.engines[q]
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?;
        engine.completion_fd().try_clone()
    }

    /// epoll `data` value used for the completion eventfd of every queue thread.
    pub fn completion_event(&self) -> u16 {
        self.opts.queues + 1
    }

    /// Stop taking new requests; wake every queue thread so it drains its in-flight I/O.
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for e in &self.engines {
            if let Ok(e) = e.lock() {
                let _ = e.completion_fd().write(1);
            }
        }
    }

    /// Number of queues that finished draining after [`BlkBackend::begin_shutdown`].
    pub fn drained_queues(&self) -> usize {
        self.drained
            .iter()
            .filter(|d| d.load(Ordering::SeqCst))
            .count()
    }

    /// Flush the backing file's data to stable storage (`fdatasync`), as at shutdown.
    pub fn sync_disk(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Log the per-queue counters.
    pub fn log_stats(&self) {
        for (q, s) in self.stats.iter().enumerate() {
            tracing::info!(queue = q, stats = ?s.snapshot(), "queue counters");
        }
    }
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        usize::from(self.opts.queues)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.opts.queue_size)
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
    }

    fn set_event_idx(&self, _enabled: bool) {
        // vhost-user-backend sets EVENT_IDX on each vring; the engine asks the vring.
    }

    fn get_inflight_fd(&self, req: &VhostUserInflight) -> io::Result<(VhostUserInflight, File)> {
        let made = InflightRegion::create(req, self.opts.queues, self.opts.queue_size)?;
        tracing::info!(
            queues = req.num_queues,
            queue_size = req.queue_size,
            bytes = made.0.mmap_size,
            "inflight region created"
        );
        Ok(made)
    }

    /// Every queue tracks its requests in its part of the region from its next start on.
    fn set_inflight_fd(&self, msg: &VhostUserInflight, file: File) -> io::Result<()> {
        let region = InflightRegion::map(msg, &file, self.opts.queues, self.opts.queue_size)
            .inspect_err(|e| tracing::error!("inflight region refused: {e}"))?;
        for (q, engine) in self.engines.iter().enumerate() {
            let mut engine = engine.lock().map_err(|_| io::Error::other("poisoned"))?;
            engine.set_inflight(u16::try_from(q).ok().and_then(|q| region.queue(q)));
        }
        tracing::info!(queues = msg.num_queues, "inflight region mapped");
        Ok(())
    }

    fn connection_closed(&self) {
        for engine in &self.engines {
            if let Ok(mut engine) = engine.lock() {
                engine.set_inflight(None);
            }
        }
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg = self.config.as_slice();
        let start = offset as usize;
        match start.checked_add(size as usize) {
            Some(end) if end <= cfg.len() => {
                let mut out = cfg[start..end].to_vec();
                // `wce` reflects the live cache mode.
                if (start..end).contains(&CONFIG_WCE_OFFSET) {
                    out[CONFIG_WCE_OFFSET - start] =
                        u8::from(self.writeback.load(Ordering::Relaxed));
                }
                out
            }
            _ => {
                tracing::warn!(offset, size, "get_config out of range");
                Vec::new()
            }
        }
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // Only `wce` is writable (virtio 1.2 §5.2.4, CONFIG_WCE).
        if offset as usize == CONFIG_WCE_OFFSET && buf.len() == 1 {
            self.writeback.store(buf[0] != 0, Ordering::Relaxed);
            tracing::info!(writeback = buf[0] != 0, "write cache mode changed");
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::EINVAL))
        }
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<VhostMem>) -> io::Result<()> {
        if tracing::enabled!(tracing::Level::DEBUG) {
            use vm_memory::{GuestAddressSpace, GuestMemoryBackend, GuestMemoryRegion};
            let regions: Vec<String> = mem
                .memory()
                .iter()
                .map(|r| format!("{:#x}+{:#x}", r.start_addr().0, r.len()))
                .collect();
            tracing::debug!(?regions, "guest memory table updated");
        }
        self.mem.set(mem)
    }

    /// GET_VRING_BASE: wait for the queue's in-flight requests and answer them before the
    /// frontend reads the base, so none completes into a ring the driver took back.
    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        let index = usize::try_from(queue_index).unwrap_or(usize::MAX);
        let (Some(vring), Some(engine)) = (self.vrings.get(index, 0), self.engines.get(index))
        else {
            return Ok(()); // never served: nothing taken
        };
        let mem = self.mem.get()?;
        let mut engine = engine.lock().map_err(|_| io::Error::other("poisoned"))?;
        let inflight = engine.inflight();
        // The base is reported even if publishing failed: nothing is left to wait for. Not
        // after requests failed to complete in time: the frontend gets an error instead.
        match engine.settle(&mut VringQueue::new(vring, &mem)) {
            Ok(()) => {}
            Err(e @ Error::SettleTimeout { .. }) => {
                return Err(crate::engine::stop_failed(index, e))
            }
            Err(e) => engine.stats().report_failure(&format!("q{index} stop"), &e),
        }
        tracing::debug!(queue_index, inflight, "ring stopped");
        Ok(())
    }

    /// Names the worker (vhost-user-backend calls them all `vring_worker`) and confines it to
    /// what a queue thread does.
    fn worker_started(&self, thread_index: usize) -> io::Result<()> {
        let name = format!("blk-q{thread_index}");
        crate::name_thread(&name);
        self.opts.affinity.pin_current(thread_index, &name);
        seccomp::install(BlkThread::Queue).map_err(io::Error::other)
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // A fresh pair per worker thread: the daemon keeps the notifier and fires it when the
        // connection ends, so worker threads exit instead of blocking the daemon's join.
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.opts.queues).map(|q| 1u64 << q).collect()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Self::Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        seccomp::violation_point(BlkThread::Queue);
        let (Some(vring), Some(engine)) = (vrings.first(), self.engines.get(thread_id)) else {
            return Err(io::Error::other(format!("no queue for thread {thread_id}")));
        };
        self.vrings.remember(thread_id, vrings);
        if device_event != 0 && device_event != self.completion_event() {
            return Ok(());
        }
        let mem = self.mem.get()?;
        let mut engine = engine.lock().map_err(|_| io::Error::other("poisoned"))?;
        if device_event == 0 {
            bump(&engine.stats().kicks, 1);
        }
        let mut q = VringQueue::new(vring, &mem);
        if self.stopping.load(Ordering::SeqCst) {
            if let Err(e) = engine.drain(&mut q) {
                engine
                    .stats()
                    .report_failure(&format!("q{thread_id} drain"), &e);
            }
            if let Some(d) = self.drained.get(thread_id) {
                d.store(true, Ordering::SeqCst);
            }
            return Ok(());
        }
        if let Err(e) = engine.process(&mut q) {
            engine.stats().report_failure(&format!("q{thread_id}"), &e);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

    use crate::blk::SIZE_MAX;

    fn backend(readonly: bool) -> (BlkBackend, tempfile::NamedTempFile) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(8 << 20).unwrap();
        let disk = Disk::open(f.path(), readonly, false).unwrap();
        let opts = BlkOptions {
            queues: 2,
            queue_size: 128,
            readonly,
            tuning: Tuning::default(),
            serial: "x".into(),
            affinity: Affinity::default(),
        };
        (BlkBackend::new(disk, opts).unwrap(), f)
    }

    #[test]
    fn config_space_is_bounds_checked() {
        let (b, _f) = backend(false);
        let len = std::mem::size_of::<virtio_blk_config>() as u32;
        let all = b.get_config(0, len);
        assert_eq!(all.len(), len as usize);
        assert_eq!(
            u64::from_le_bytes(all[0..8].try_into().unwrap()),
            (8 << 20) / 512
        );
        assert_eq!(b.get_config(8, 4), SIZE_MAX.to_le_bytes());
        assert!(b.get_config(len, 1).is_empty());
        assert!(b.get_config(len - 2, 4).is_empty());
        assert!(b.get_config(u32::MAX, 2).is_empty());
        // Only `wce` is writable.
        let wce = CONFIG_WCE_OFFSET as u32;
        assert_eq!(b.get_config(wce, 1), [1]);
        b.set_config(wce, &[0]).unwrap();
        assert_eq!(b.get_config(wce, 1), [0]);
        assert!(b.set_config(0, &[0; 8]).is_err());
    }

    #[test]
    fn features_follow_options() {
        let (rw, _f) = backend(false);
        let (ro, _g) = backend(true);
        assert_eq!(rw.features() & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(ro.features() & (1 << VIRTIO_BLK_F_RO), 0);
        for bit in [
            VIRTIO_BLK_F_FLUSH,
            VIRTIO_BLK_F_DISCARD,
            VIRTIO_BLK_F_WRITE_ZEROES,
            VIRTIO_BLK_F_MQ,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_F_VERSION_1,
        ] {
            assert_ne!(rw.features() & (1 << bit), 0, "feature bit {bit}");
        }
        assert_eq!(rw.queues_per_thread(), vec![1, 2]);
        assert_eq!(rw.num_queues(), 2);
    }
}
