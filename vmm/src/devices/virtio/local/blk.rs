// SPDX-License-Identifier: Apache-2.0
//! virtio-blk served inside the VMM process (the in-VMM tier): the same PCI
//! transport as the vhost-user device, but each queue is served by a VMM
//! thread (`blk-q<N>`, see `queue_thread`) running the shared
//! `backends` engine and virtio-blk handler.

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use backends::blk::{
    device_config, device_features, BlkConfig, BlkHandler, BlkSettings, Disk, CONFIG_WCE_OFFSET,
    DEFAULT_BATCH, SEG_MAX,
};
use backends::engine::{Engine, EngineConfig, LocalQueue, QueueStats};
use backends::metrics::QueueMetrics;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{ByteValued, GuestMemoryMmap};

use super::queue_thread::{dup_eventfd, engine_err, ready_queue, QueueThread, QueueWorker};
use crate::devices::virtio::vhost_user::blk::VIRTIO_ID_BLOCK;
use crate::devices::virtio::{
    read_config_bytes, Activation, QueueState, VirtioDevice, VirtioError,
};

const VIRTIO_BLK_F_MQ: u64 = 1 << virtio_bindings::virtio_blk::VIRTIO_BLK_F_MQ;

type BlkEngine = Engine<BlkHandler, GuestMemoryMmap>;

/// One running queue thread.
struct RunningQueue {
    queue: usize,
    thread: QueueThread,
}

/// A virtio-blk device whose queues are served by VMM threads (stopped
/// when it is dropped).
pub struct InVmmBlk {
    threads: Vec<RunningQueue>,
    name: String,
    /// Per queue, kept across activations (the counters of the device's life).
    stats: Vec<Arc<QueueStats>>,
    file: Arc<std::fs::File>,
    settings: BlkSettings,
    config: BlkConfig,
    features: u64,
    num_queues: u16,
    queue_size: u16,
    writeback: Arc<AtomicBool>,
}

impl InVmmBlk {
    /// Opens `path` (read-only if asked) as disk number `index`.
    pub fn open(
        path: &Path,
        readonly: bool,
        queues: u16,
        queue_size: u16,
        index: usize,
    ) -> Result<Self, VirtioError> {
        let disk = Disk::open(path, readonly, false).map_err(|e| VirtioError::Disk {
            path: path.display().to_string(),
            source: e,
        })?;
        let sectors = disk.sectors();
        let mut serial = [0u8; virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES as usize];
        let id = format!("vmm-blk{index}");
        serial[..id.len()].copy_from_slice(id.as_bytes());
        let settings = BlkSettings {
            sectors,
            readonly,
            serial,
            seg_max: SEG_MAX,
            discard: true,
            write_zeroes: true,
        };
        let mut features = device_features(readonly);
        if queues == 1 {
            features &= !VIRTIO_BLK_F_MQ;
        }
        tracing::info!(
            "blk{index} {}: {sectors} sectors, {queues} queue(s) of {queue_size}, in-VMM{}",
            path.display(),
            if readonly { ", read-only" } else { "" }
        );
        Ok(Self {
            name: format!("blk{index} {}", path.display()),
            file: Arc::new(disk.file),
            settings,
            config: device_config(sectors, queues),
            features,
            num_queues: queues,
            queue_size,
            writeback: Arc::new(AtomicBool::new(true)),
            threads: Vec::new(),
            stats: (0..queues)
                .map(|_| Arc::new(QueueStats::default()))
                .collect(),
        })
    }

    fn start_queue(
        &mut self,
        i: usize,
        q: &QueueState,
        event_idx: bool,
        act: &Activation<'_>,
    ) -> Result<(), VirtioError> {
        let queue = ready_queue(i, q, event_idx, act.mem)?;
        let stats = self
            .stats
            .get(i)
            .cloned()
            .ok_or(VirtioError::MissingEventfd { queue: i })?;
        let handler = BlkHandler::new(
            self.file.clone(),
            self.settings.clone(),
            self.writeback.clone(),
            stats.clone(),
        );
        let mut ecfg = EngineConfig::new(q.size, SEG_MAX as usize);
        ecfg.tuning.batch = DEFAULT_BATCH;
        let engine = Engine::new(handler, ecfg, stats.clone()).map_err(engine_err(i))?;
        let call = dup_eventfd(act.calls, i)?;
        let worker = BlkWorker {
            queue: i,
            engine,
            q: LocalQueue::new(queue, Arc::new(act.mem.clone()), Some(call)),
        };
        let kicks = vec![dup_eventfd(act.kicks, i)?];
        let name = format!("{}: queue {i}", self.name);
        let thread = QueueThread::spawn(format!("blk-q{i}"), name, worker, kicks, vec![stats])?;
        self.threads.push(RunningQueue { queue: i, thread });
        Ok(())
    }
}

/// What a `blk-q<N>` thread owns: one queue and its request engine.
struct BlkWorker {
    queue: usize,
    engine: BlkEngine,
    q: LocalQueue<GuestMemoryMmap>,
}

impl QueueWorker for BlkWorker {
    fn completion_fds(&self) -> Vec<RawFd> {
        vec![self.engine.completion_fd().as_raw_fd()]
    }

    fn process(&mut self, _ready: &[bool], _kicked: &[bool]) -> Result<(), VirtioError> {
        self.engine
            .process(&mut self.q)
            .map_err(engine_err(self.queue))
    }

    fn drain(&mut self) -> Result<(), VirtioError> {
        self.engine
            .drain(&mut self.q)
            .map_err(engine_err(self.queue))
    }

    fn settle(&mut self) -> Result<(), VirtioError> {
        self.engine
            .settle(&mut self.q)
            .map_err(engine_err(self.queue))
    }
}

impl VirtioDevice for InVmmBlk {
    fn device_type(&self) -> u16 {
        VIRTIO_ID_BLOCK
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn num_queues(&self) -> u16 {
        self.num_queues
    }

    fn queue_max_size(&self) -> u16 {
        self.queue_size
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut cfg = self.config;
        cfg.0.wce = u8::from(self.writeback.load(Ordering::Relaxed));
        read_config_bytes(cfg.as_slice(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `wce` is writable (CONFIG_WCE).
        if offset == CONFIG_WCE_OFFSET as u64 && data.len() == 1 {
            self.writeback.store(data[0] != 0, Ordering::Relaxed);
            tracing::info!("{}: writeback={}", self.name, data[0] != 0);
        } else {
            tracing::debug!("{}: ignored config write at {offset:#x}", self.name);
        }
    }

    fn activate(&mut self, act: Activation<'_>) -> Result<(), VirtioError> {
        self.reset();
        let event_idx = act.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        for (i, q) in act.queues.iter().enumerate() {
            if q.ready {
                if let Err(e) = self.start_queue(i, q, event_idx, &act) {
                    self.reset();
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        for t in self.threads.drain(..) {
            let i = t.queue;
            t.thread.stop();
            if let Some(stats) = self.stats.get(i) {
                tracing::info!("{}: queue {i} stopped: {:?}", self.name, stats.snapshot());
            }
        }
    }

    fn queue_metrics(&self) -> Vec<QueueMetrics> {
        let device = self.name.split(' ').next().unwrap_or("blk");
        (self.stats.iter().enumerate())
            .map(|(q, s)| QueueMetrics::new(device, q, s, true))
            .collect()
    }

    fn pause(&mut self) -> bool {
        self.threads.iter().all(|t| t.thread.pause())
    }

    fn resume(&mut self) -> bool {
        self.threads.iter().all(|t| t.thread.resume())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(readonly: bool, queues: u16) -> (InVmmBlk, tempfile::NamedTempFile) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(8 << 20).unwrap();
        (
            InVmmBlk::open(f.path(), readonly, queues, 128, 0).unwrap(),
            f,
        )
    }

    #[test]
    fn config_space_features_and_writeback() {
        let (mut b, _f) = disk(false, 2);
        let mut cap = [0u8; 8];
        b.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), (8 << 20) / 512);
        let mut nq = [0u8; 2];
        b.read_config(34, &mut nq);
        assert_eq!(u16::from_le_bytes(nq), 2);
        assert_ne!(b.features() & VIRTIO_BLK_F_MQ, 0);
        // Out of range and wrapping reads are zero, never a panic.
        let mut big = [0xffu8; 8];
        b.read_config(u64::MAX - 2, &mut big);
        assert_eq!(big, [0; 8]);
        b.read_config(4096, &mut big);
        assert_eq!(big, [0; 8]);
        // Only `wce` is writable.
        let wce = CONFIG_WCE_OFFSET as u64;
        let mut w = [9u8];
        b.read_config(wce, &mut w);
        assert_eq!(w, [1]);
        b.write_config(wce, &[0]);
        b.write_config(0, &[0; 8]);
        b.read_config(wce, &mut w);
        assert_eq!(w, [0]);
        b.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), (8 << 20) / 512);
        // No queue threads until activation; reset with none is a no-op.
        b.reset();
        let (ro, _g) = disk(true, 1);
        let ro_bit = 1u64 << virtio_bindings::virtio_blk::VIRTIO_BLK_F_RO;
        assert_ne!(ro.features() & ro_bit, 0);
        assert_eq!(ro.features() & VIRTIO_BLK_F_MQ, 0);
    }

    #[test]
    fn missing_file_is_a_typed_error() {
        let err = InVmmBlk::open(Path::new("/nonexistent/disk.img"), false, 1, 128, 3);
        assert!(matches!(err, Err(VirtioError::Disk { .. })));
    }
}
