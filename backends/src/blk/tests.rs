// SPDX-License-Identifier: Apache-2.0
//! Unit tests: virtio-blk requests through the real [`Engine`] against a `GuestMemoryMmap`
//! and virtio-queue's mock driver-side queue, including hostile chains.

use std::cell::Cell;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use vhost::vhost_user::message::VhostUserInflight;

use super::{BlkHandler, BlkSettings, SEG_MAX};
use crate::engine::{
    Engine, EngineConfig, LocalQueue, QueueStats, SqpollPolicy, StatsSnapshot, Tuning,
};
use crate::inflight::InflightRegion;

type Mem = GuestMemoryMmap<()>;

const QSIZE: u16 = 256;
const HDR: u64 = 0x10_0000;
const DATA: u64 = 0x20_0000;
const STATUS: u64 = 0x40_0000;
const MEM_SIZE: usize = 0x80_0000;
const DISK_SECTORS: u64 = 2048; // 1 MiB

/// What the driver puts in one descriptor.
#[derive(Clone, Copy)]
struct D {
    addr: u64,
    len: u32,
    write: bool,
}

fn r(addr: u64, len: u32) -> D {
    D {
        addr,
        len,
        write: false,
    }
}
fn w(addr: u64, len: u32) -> D {
    D {
        addr,
        len,
        write: true,
    }
}

/// The engine settings of these tests, with kernel submission polling always on (with
/// this idle time) or never (these tests pin it: the automatic switch has its own).
fn engine_config(sqpoll_idle: Option<Duration>) -> EngineConfig {
    let mut cfg = EngineConfig::new(QSIZE, SEG_MAX as usize);
    cfg.tuning.sqpoll = match sqpoll_idle {
        Some(idle) => SqpollPolicy::On { idle },
        None => SqpollPolicy::Off,
    };
    cfg
}

thread_local! {
    /// Serve every chain the way a restarted backend does: [`Harness::run`] first records the
    /// chains added since the last run as taken by a predecessor that died before answering
    /// them, so the engine resubmits them from the inflight region, walking each from its
    /// head index instead of popping it.
    static VIA_RESTART: Cell<bool> = const { Cell::new(false) };
}

struct Harness {
    /// The inflight region handed from one backend life to the next ([`VIA_RESTART`]).
    restart: Option<(VhostUserInflight, File)>,
    mem: Mem,
    engine: Engine<BlkHandler, Mem>,
    q: LocalQueue<Mem>,
    file: tempfile::NamedTempFile,
    next_desc: u16,
    next_avail: u16,
    next_used: u16,
    avail: u64,
    used: u64,
}

impl Harness {
    fn new(readonly: bool) -> Self {
        let mem = Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0), QSIZE);
        let queue: Queue = vq.create_queue().unwrap();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let content: Vec<u8> = (0..DISK_SECTORS * 512).map(|i| (i % 251) as u8).collect();
        file.write_all(&content).unwrap();
        let handle = Arc::new(file.reopen().unwrap());
        let mut serial = [0u8; 20];
        serial[..6].copy_from_slice(b"serial");
        let settings = BlkSettings {
            sectors: DISK_SECTORS,
            readonly,
            serial,
            seg_max: SEG_MAX,
            discard: true,
            write_zeroes: true,
        };
        let stats = Arc::new(QueueStats::default());
        let handler = BlkHandler::new(
            handle,
            settings,
            Arc::new(AtomicBool::new(true)),
            stats.clone(),
        );
        let cfg = engine_config(None);
        let engine = Engine::new(handler, cfg, stats).unwrap();
        let q = LocalQueue::new(queue, Arc::new(mem.clone()), None);
        let (avail, used) = (vq.avail_addr().0, vq.used_addr().0);
        let request = VhostUserInflight {
            num_queues: 1,
            queue_size: QSIZE,
            ..VhostUserInflight::default()
        };
        let restart = VIA_RESTART
            .with(Cell::get)
            .then(|| InflightRegion::create(&request, 1, QSIZE).unwrap());
        Harness {
            restart,
            avail,
            used,
            next_avail: 0,
            mem,
            engine,
            q,
            file,
            next_desc: 0,
            next_used: 0,
        }
    }

    /// Replace the engine with one built from `cfg`, on the same file and settings.
    fn rebuild_engine(&mut self, cfg: EngineConfig) {
        let stats = self.engine.stats().clone();
        let handler = BlkHandler::new(
            Arc::new(self.file.reopen().unwrap()),
            self.engine.handler().settings().clone(),
            Arc::new(AtomicBool::new(true)),
            stats.clone(),
        );
        self.engine = Engine::new(handler, cfg, stats).unwrap();
    }

    /// Address of the driver's `used_event` field (after the avail ring).
    fn used_event_addr(&self) -> u64 {
        self.avail + 4 + 2 * u64::from(QSIZE)
    }

    /// Add a chain with explicit NEXT links, as a driver would; returns its head index.
    fn add_raw(&mut self, descs: &[(D, u16, u16)]) -> u16 {
        let head = self.next_desc;
        for (i, (d, flags, next)) in descs.iter().enumerate() {
            let mut f = *flags;
            if d.write {
                f |= VRING_DESC_F_WRITE as u16;
            }
            let raw = RawDescriptor::from(SplitDescriptor::new(d.addr, d.len, f, *next));
            let at = GuestAddress(16 * u64::from(head + i as u16));
            self.mem.write_obj(raw, at).unwrap();
        }
        self.next_desc += descs.len() as u16;
        let slot = self.avail + 4 + 2 * u64::from(self.next_avail % QSIZE);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.next_avail = self.next_avail.wrapping_add(1);
        self.mem
            .write_obj(self.next_avail, GuestAddress(self.avail + 2))
            .unwrap();
        head
    }

    fn add(&mut self, descs: &[D]) -> u16 {
        let base = self.next_desc;
        let n = descs.len() as u16;
        let linked: Vec<(D, u16, u16)> = descs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let i = i as u16;
                if i + 1 < n {
                    (*d, VRING_DESC_F_NEXT as u16, base + i + 1)
                } else {
                    (*d, 0, 0)
                }
            })
            .collect();
        self.add_raw(&linked)
    }

    fn header(&self, addr: u64, ty: u32, sector: u64) {
        self.mem.write_obj(ty.to_le(), GuestAddress(addr)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(addr + 4)).unwrap();
        self.mem
            .write_obj(sector.to_le(), GuestAddress(addr + 8))
            .unwrap();
    }

    /// Process until every submitted request completed, sleeping on the engine's completion
    /// eventfd in between (as a queue thread does), so a missing wakeup fails the test.
    fn run(&mut self) {
        if self.restart.is_some() {
            self.hand_over();
        }
        self.engine.process(&mut self.q).unwrap();
        while self.engine.inflight() > 0 {
            let mut pfd = libc::pollfd {
                fd: self.engine.completion_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
            assert!(
                n > 0
                    || (n < 0
                        && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)),
                "completion eventfd never signalled ({} in flight)",
                self.engine.inflight()
            );
            self.engine.process(&mut self.q).unwrap();
        }
    }

    /// A backend took every chain added since the last run and died: its inflight region
    /// records them; the engine restarts on that region ([`VIA_RESTART`]).
    fn hand_over(&mut self) {
        let Some((msg, file)) = &self.restart else {
            return;
        };
        let region = InflightRegion::map(msg, file, 1, QSIZE).unwrap();
        let guest_used: u16 = self.mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        let mut previous = region.queue(0).unwrap();
        previous.start(guest_used, QSIZE);
        let avail_idx: u16 = self.mem.read_obj(GuestAddress(self.avail + 2)).unwrap();
        let mut pos = self.q.queue.next_avail();
        while pos != avail_idx {
            let slot = self.avail + 4 + 2 * u64::from(pos % QSIZE);
            previous.mark(self.mem.read_obj(GuestAddress(slot)).unwrap());
            pos = pos.wrapping_add(1);
        }
        drop(previous);
        // The engine notices the ring stop, then a start with the region.
        self.q.queue.set_ready(false);
        self.engine.process(&mut self.q).unwrap();
        self.q.queue.set_ready(true);
        self.engine.set_inflight(region.queue(0));
    }

    /// Next used element `(id, len)`.
    fn used(&mut self) -> (u32, u32) {
        let idx: u16 = self.mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        assert!(idx != self.next_used, "no used entry");
        let e = self.used + 4 + 8 * u64::from(self.next_used % QSIZE);
        let id: u32 = self.mem.read_obj(GuestAddress(e)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(e + 4)).unwrap();
        self.next_used = self.next_used.wrapping_add(1);
        (id, len)
    }

    fn status(&self, addr: u64) -> u8 {
        self.mem.read_obj(GuestAddress(addr)).unwrap()
    }

    fn stats(&self) -> StatsSnapshot {
        self.engine.stats().snapshot()
    }

    fn file_bytes(&self, off: u64, len: usize) -> Vec<u8> {
        let mut f = self.file.reopen().unwrap();
        f.seek(SeekFrom::Start(off)).unwrap();
        let mut v = vec![0; len];
        f.read_exact(&mut v).unwrap();
        v
    }

    /// A well-formed read of `sectors` at `sector`; asserts OK and the data.
    fn good_read(&mut self, sector: u64, sectors: u32) {
        self.header(HDR, VIRTIO_BLK_T_IN, sector);
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let len = sectors * 512;
        let head = self.add(&[r(HDR, 16), w(DATA, len), w(STATUS, 1)]);
        self.run();
        assert_eq!(self.used(), (u32::from(head), len + 1));
        assert_eq!(self.status(STATUS), VIRTIO_BLK_S_OK as u8);
        let mut got = vec![0u8; len as usize];
        self.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(got, self.file_bytes(sector * 512, len as usize));
    }

    /// Submit one chain, run it, and return `(used len, status byte)`.
    fn one(&mut self, ty: u32, sector: u64, descs: &[D]) -> (u32, u8) {
        self.header(HDR, ty, sector);
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let head = self.add(descs);
        self.run();
        let (id, len) = self.used();
        assert_eq!(id, u32::from(head));
        (len, self.status(STATUS))
    }
}

const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
const OK: u8 = VIRTIO_BLK_S_OK as u8;

#[test]
fn read_and_write_roundtrip() {
    let mut h = Harness::new(false);
    h.good_read(3, 8);
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    h.mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
    let (len, st) = h.one(
        VIRTIO_BLK_T_OUT,
        100,
        &[
            r(HDR, 16),
            r(DATA, 2048),
            r(DATA + 2048, 2048),
            w(STATUS, 1),
        ],
    );
    assert_eq!((len, st), (1, OK));
    assert_eq!(h.file_bytes(100 * 512, 4096), pattern);
    h.good_read(100, 8);
    assert_eq!(h.stats().ok, 3);
}

#[test]
fn framing_is_not_assumed() {
    // Header and data in one readable descriptor, data and status in one writable one.
    let mut h = Harness::new(false);
    h.header(HDR, VIRTIO_BLK_T_OUT, 0);
    h.mem
        .write_slice(&[0xab; 512], GuestAddress(HDR + 16))
        .unwrap();
    let head = h.add(&[r(HDR, 16 + 512), w(STATUS, 1)]);
    h.run();
    assert_eq!(h.used(), (u32::from(head), 1));
    assert_eq!(h.file_bytes(0, 512), vec![0xab; 512]);
    h.header(HDR, VIRTIO_BLK_T_IN, 0);
    let head = h.add(&[r(HDR, 16), w(DATA, 513)]);
    h.run();
    assert_eq!(h.used(), (u32::from(head), 513));
    assert_eq!(h.status(DATA + 512), OK);
}

#[test]
fn descriptor_outside_guest_memory_is_ioerr() {
    let mut h = Harness::new(false);
    let (_, st) = h.one(
        VIRTIO_BLK_T_IN,
        0,
        &[r(HDR, 16), w(0xF000_0000, 512), w(STATUS, 1)],
    );
    assert_eq!(st, IOERR);
    // Straddling the end of guest memory is caught too.
    let (_, st) = h.one(
        VIRTIO_BLK_T_IN,
        0,
        &[r(HDR, 16), w(MEM_SIZE as u64 - 256, 512), w(STATUS, 1)],
    );
    assert_eq!(st, IOERR);
    assert_eq!(h.stats().guest_faults, 2);
    h.good_read(1, 1);
}

#[test]
fn looping_chain_is_returned_with_len_zero() {
    let mut h = Harness::new(false);
    h.header(HDR, VIRTIO_BLK_T_IN, 0);
    let base = h.next_desc;
    // header -> data -> back to header ...
    let head = h.add_raw(&[
        (r(HDR, 16), VRING_DESC_F_NEXT as u16, base + 1),
        (w(STATUS, 1), VRING_DESC_F_NEXT as u16, base),
    ]);
    h.run();
    assert_eq!(h.used(), (u32::from(head), 0));
    assert_eq!(h.stats().dropped, 1);
    h.good_read(2, 2);
}

#[test]
fn next_index_past_table_is_returned_with_len_zero() {
    let mut h = Harness::new(false);
    let head = h.add_raw(&[(r(HDR, 16), VRING_DESC_F_NEXT as u16, QSIZE + 5)]);
    h.run();
    assert_eq!(h.used(), (u32::from(head), 0));
    h.good_read(0, 1);
}

#[test]
fn short_header_is_ioerr() {
    let mut h = Harness::new(false);
    let (len, st) = h.one(VIRTIO_BLK_T_IN, 0, &[r(HDR, 8), w(DATA, 512), w(STATUS, 1)]);
    assert_eq!((len, st), (1, IOERR));
    h.good_read(0, 1);
}

#[test]
fn unaligned_length_is_ioerr() {
    let mut h = Harness::new(false);
    let (_, st) = h.one(
        VIRTIO_BLK_T_IN,
        0,
        &[r(HDR, 16), w(DATA, 500), w(STATUS, 1)],
    );
    assert_eq!(st, IOERR);
    let (_, st) = h.one(
        VIRTIO_BLK_T_OUT,
        0,
        &[r(HDR, 16), r(DATA, 1000), w(STATUS, 1)],
    );
    assert_eq!(st, IOERR);
    h.good_read(0, 1);
}

#[test]
fn sector_range_past_capacity_is_ioerr() {
    let mut h = Harness::new(false);
    let (_, st) = h.one(
        VIRTIO_BLK_T_IN,
        DISK_SECTORS - 1,
        &[r(HDR, 16), w(DATA, 1024), w(STATUS, 1)],
    );
    assert_eq!(st, IOERR);
    let (_, st) = h.one(
        VIRTIO_BLK_T_OUT,
        u64::MAX,
        &[r(HDR, 16), r(DATA, 512), w(STATUS, 1)],
    );
    assert_eq!(st, IOERR);
    // The last sector itself is fine.
    h.good_read(DISK_SECTORS - 1, 1);
}

#[test]
fn wrong_direction_descriptors_are_ioerr() {
    let mut h = Harness::new(false);
    let before = h.file_bytes(0, 512);
    // Write whose data the device would have to read from a device-writable buffer.
    let (_, st) = h.one(
        VIRTIO_BLK_T_OUT,
        0,
        &[r(HDR, 16), w(DATA, 512), w(STATUS, 1)],
    );
    assert_eq!(st, IOERR);
    assert_eq!(h.file_bytes(0, 512), before);
    // Read whose data buffer is device-readable.
    let (_, st) = h.one(
        VIRTIO_BLK_T_IN,
        0,
        &[r(HDR, 16), r(DATA, 512), w(STATUS, 1)],
    );
    assert_eq!(st, IOERR);
    // Readable descriptor after a writable one.
    let (_, st) = h.one(
        VIRTIO_BLK_T_IN,
        0,
        &[r(HDR, 16), w(DATA, 512), r(DATA + 4096, 16), w(STATUS, 1)],
    );
    assert_eq!(st, IOERR);
    h.good_read(0, 1);
}

#[test]
fn too_many_segments_is_ioerr() {
    let mut h = Harness::new(false);
    let mut descs = vec![r(HDR, 16)];
    for i in 0..(SEG_MAX as u64 + 1) {
        descs.push(w(DATA + i * 512, 512));
    }
    descs.push(w(STATUS, 1));
    let (_, st) = h.one(VIRTIO_BLK_T_IN, 0, &descs);
    assert_eq!(st, IOERR);
    h.good_read(0, 1);
}

#[test]
fn unknown_type_is_unsupp() {
    let mut h = Harness::new(false);
    let (_, st) = h.one(99, 0, &[r(HDR, 16), w(STATUS, 1)]);
    assert_eq!(st, UNSUPP);
    // Discard with flags set is UNSUPP as well (virtio 1.2 §5.2.6.2).
    h.mem.write_obj(0u64, GuestAddress(DATA)).unwrap();
    h.mem.write_obj(8u32, GuestAddress(DATA + 8)).unwrap();
    h.mem.write_obj(1u32, GuestAddress(DATA + 12)).unwrap();
    let (_, st) = h.one(
        VIRTIO_BLK_T_DISCARD,
        0,
        &[r(HDR, 16), r(DATA, 16), w(STATUS, 1)],
    );
    assert_eq!(st, UNSUPP);
    assert_eq!(h.stats().unsupported, 2);
    h.good_read(0, 1);
}

#[test]
fn unwritable_status_returns_len_zero() {
    let mut h = Harness::new(false);
    h.header(HDR, VIRTIO_BLK_T_IN, 0);
    let head = h.add(&[r(HDR, 16), w(DATA, 512), w(0xF000_0000, 1)]);
    h.run();
    assert_eq!(h.used(), (u32::from(head), 0));
    // No writable descriptor at all.
    let head = h.add(&[r(HDR, 16)]);
    h.run();
    assert_eq!(h.used(), (u32::from(head), 0));
    assert_eq!(h.stats().dropped, 2);
    h.good_read(0, 1);
}

#[test]
fn readonly_rejects_writes() {
    let mut h = Harness::new(true);
    let before = h.file_bytes(0, 512);
    h.mem.write_slice(&[9u8; 512], GuestAddress(DATA)).unwrap();
    let (_, st) = h.one(
        VIRTIO_BLK_T_OUT,
        0,
        &[r(HDR, 16), r(DATA, 512), w(STATUS, 1)],
    );
    assert_eq!(st, IOERR);
    let (_, st) = h.one(
        VIRTIO_BLK_T_WRITE_ZEROES,
        0,
        &[r(HDR, 16), r(DATA, 16), w(STATUS, 1)],
    );
    assert_eq!(st, IOERR);
    assert_eq!(h.file_bytes(0, 512), before);
    h.good_read(0, 1);
}

#[test]
fn get_id_flush_and_write_zeroes() {
    let mut h = Harness::new(false);
    let (len, st) = h.one(
        VIRTIO_BLK_T_GET_ID,
        0,
        &[r(HDR, 16), w(DATA, 20), w(STATUS, 1)],
    );
    assert_eq!((len, st), (21, OK));
    let mut id = [0u8; 20];
    h.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..7], b"serial\0");
    let (_, st) = h.one(VIRTIO_BLK_T_FLUSH, 0, &[r(HDR, 16), w(STATUS, 1)]);
    assert_eq!(st, OK);
    // Write zeroes over sectors 4..6.
    h.mem.write_obj(4u64, GuestAddress(DATA)).unwrap();
    h.mem.write_obj(2u32, GuestAddress(DATA + 8)).unwrap();
    h.mem.write_obj(0u32, GuestAddress(DATA + 12)).unwrap();
    let (_, st) = h.one(
        VIRTIO_BLK_T_WRITE_ZEROES,
        0,
        &[r(HDR, 16), r(DATA, 16), w(STATUS, 1)],
    );
    assert_eq!(st, OK);
    assert_eq!(h.file_bytes(4 * 512, 1024), vec![0; 1024]);
    assert_ne!(h.file_bytes(6 * 512, 512), vec![0; 512]);
}

#[test]
fn one_notification_per_batch() {
    let mut h = Harness::new(false);
    for i in 0..16u64 {
        h.header(HDR + i * 16, VIRTIO_BLK_T_IN, i);
        h.add(&[
            r(HDR + i * 16, 16),
            w(DATA + i * 4096, 512),
            w(STATUS + i, 1),
        ]);
    }
    h.run();
    for _ in 0..16 {
        h.used();
    }
    for i in 0..16u64 {
        assert_eq!(h.status(STATUS + i), OK);
    }
    let s = h.stats();
    assert_eq!(s.ok, 16);
    assert_eq!(s.submits, 1, "one io_uring_enter for the batch");
    assert!(
        h.q.signals >= 1 && h.q.signals <= 2,
        "signals {}",
        h.q.signals
    );
}

#[test]
fn passes_are_capped_at_the_batch_and_publish_as_they_go() {
    // Ten requests with a batch of four: three passes, each one submission, and each
    // pass's used entries are published (and signalled) before the next pass pops.
    let mut h = Harness::new(false);
    let mut cfg = engine_config(None);
    cfg.tuning.batch = 4;
    h.rebuild_engine(cfg);
    h.engine.stats().set_timed(true);
    let mut heads = Vec::new();
    for i in 0..10u64 {
        h.header(HDR + i * 16, VIRTIO_BLK_T_IN, i);
        heads.push(h.add(&[
            r(HDR + i * 16, 16),
            w(DATA + i * 4096, 512),
            w(STATUS + i, 1),
        ]));
    }
    h.run();
    let mut used: Vec<u32> = (0..10).map(|_| h.used().0).collect();
    used.sort_unstable();
    assert_eq!(
        used,
        heads.iter().map(|&h| u32::from(h)).collect::<Vec<_>>()
    );
    for i in 0..10u64 {
        assert_eq!(h.status(STATUS + i), OK);
        let mut got = vec![0u8; 512];
        h.mem
            .read_slice(&mut got, GuestAddress(DATA + i * 4096))
            .unwrap();
        assert_eq!(got, h.file_bytes(i * 512, 512));
    }
    let s = h.stats();
    assert_eq!(
        (s.ok, s.submits),
        (10, 3),
        "ceil(10 / 4) passes, one submission each"
    );
    assert!(h.q.signals >= 3, "a signal per pass, got {}", h.q.signals);
    // What a metrics scrape reads: bytes, batches of 4, 4 and 2, every request timed once.
    assert_eq!((s.bytes_read, s.bytes_written), (10 * 512, 0));
    assert_eq!(s.submitted, 10);
    assert_eq!(
        h.engine
            .stats()
            .inflight
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let stats = h.engine.stats();
    assert_eq!(
        stats.batch.snapshot().counts,
        [0, 1, 2, 0, 0, 0, 0, 0, 0, 0]
    );
    let latency = stats.latency.snapshot();
    assert_eq!((latency.count(), latency.counts[16]), (10, 0));
    assert!(latency.sum > 0);
}

#[test]
fn event_idx_suppresses_notifications() {
    let mut h = Harness::new(false);
    h.q.queue.set_event_idx(true);
    // used_event (after the avail ring) = 5: the driver wants an interrupt only once the
    // used index passes 5.
    let used_event = h.used_event_addr();
    h.mem.write_obj(5u16, GuestAddress(used_event)).unwrap();
    h.good_read(0, 1);
    assert_eq!(h.q.signals, 0, "used idx 1 has not passed used_event 5");
    for _ in 0..5 {
        h.good_read(0, 1);
    }
    assert_eq!(h.q.signals, 1, "crossing used_event signals exactly once");
}

#[test]
fn used_ring_survives_bad_file_fd_errors() {
    // I/O errors from the kernel (here: a read-only fd asked to write) become IOERR.
    let mut h = Harness::new(false);
    let ro = Arc::new(File::open(h.file.path()).unwrap());
    let stats = h.engine.stats().clone();
    let mut settings = h.engine.handler().settings().clone();
    settings.readonly = false;
    let handler = BlkHandler::new(ro, settings, Arc::new(AtomicBool::new(true)), stats.clone());
    let cfg = engine_config(None);
    h.engine = Engine::new(handler, cfg, stats).unwrap();
    let (_, st) = h.one(
        VIRTIO_BLK_T_OUT,
        0,
        &[r(HDR, 16), r(DATA, 512), w(STATUS, 1)],
    );
    assert_eq!(st, IOERR);
    h.good_read(0, 1);
}

#[test]
fn kernel_submission_polling_serves_writes_and_reads() {
    // With SQPOLL a kernel thread picks the requests up; completions arrive asynchronously
    // and must still wake the queue thread through the completion eventfd (`run` sleeps on it).
    let mut h = Harness::new(false);
    h.rebuild_engine(engine_config(Some(Duration::from_millis(1))));
    for round in 0..16u64 {
        let pattern: Vec<u8> = (0..4096u64).map(|i| (i * 13 + round) as u8).collect();
        h.mem.write_slice(&pattern, GuestAddress(DATA)).unwrap();
        let (len, st) = h.one(
            VIRTIO_BLK_T_OUT,
            round * 8,
            &[r(HDR, 16), r(DATA, 4096), w(STATUS, 1)],
        );
        assert_eq!((len, st), (1, OK));
        assert_eq!(h.file_bytes(round * 8 * 512, 4096), pattern);
        h.mem.write_slice(&[0u8; 4096], GuestAddress(DATA)).unwrap();
        h.good_read(round * 8, 8);
        // Past the idle time the kernel thread sleeps and the next submission must wake it.
        std::thread::sleep(Duration::from_millis(3));
    }
}

#[test]
fn head_index_past_queue_is_counted_not_fatal() {
    let mut h = Harness::new(false);
    let slot = h.avail + 4 + 2 * u64::from(h.next_avail % QSIZE);
    h.mem.write_obj(QSIZE + 3, GuestAddress(slot)).unwrap();
    h.next_avail = h.next_avail.wrapping_add(1);
    h.mem
        .write_obj(h.next_avail, GuestAddress(h.avail + 2))
        .unwrap();
    h.run();
    assert_eq!(h.stats().used_rejected, 1);
    h.good_read(0, 1);
}

#[test]
fn a_used_ring_outside_memory_fails_the_pass_and_the_queue_serves_on() {
    let mut h = Harness::new(false);
    // With EVENT_IDX the first used-ring access of a pass is the publish.
    h.q.queue.set_event_idx(true);
    let ring = GuestAddress(h.used);
    h.q.queue
        .try_set_used_ring_address(GuestAddress(MEM_SIZE as u64))
        .unwrap();
    h.header(HDR, VIRTIO_BLK_T_IN, 0);
    h.add(&[r(HDR, 16), w(DATA, 512), w(STATUS, 1)]);
    // The read may complete within the first pass or in a later one; the pass that
    // publishes it fails.
    let failed = (0..1000).find_map(|_| match h.engine.process(&mut h.q) {
        Ok(()) => {
            std::thread::sleep(Duration::from_millis(1));
            None
        }
        Err(e) => Some(e),
    });
    assert!(failed.is_some(), "no pass failed");
    assert_eq!(h.stats().used_rejected, 1);
    assert_eq!(h.engine.inflight(), 0);
    // A driver that fixes its ring (after a reset, say) is served again.
    h.q.queue.try_set_used_ring_address(ring).unwrap();
    h.good_read(8, 1);
}

#[test]
fn uncached_reads_wake_the_queue_thread() {
    // Reads that miss the page cache complete via task_work in the submitting thread; the
    // completion eventfd must still fire (regression: `register_eventfd_async` did not).
    let mut h = Harness::new(false);
    for round in 0..20u64 {
        let f = h.file.as_file();
        f.sync_all().unwrap();
        // SAFETY: fadvise on an open fd; only drops clean page-cache pages.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        h.good_read(round * 64, 64);
    }
}

/// `(size_max, seg_max, blk_size)` as this device advertises them in its config space.
fn advertised_limits(file: &std::path::Path) -> (u32, u32, u32) {
    use super::{BlkBackend, BlkOptions, Disk};
    use vhost_user_backend::VhostUserBackend;
    let disk = Disk::open(file, false, false).unwrap();
    let opts = BlkOptions {
        queues: 1,
        queue_size: QSIZE,
        readonly: false,
        tuning: Tuning::default(),
        serial: String::new(),
        affinity: Default::default(),
    };
    let b = BlkBackend::new(disk, opts).unwrap();
    let field = |off: usize| u32::from_le_bytes(b.get_config(off as u32, 4).try_into().unwrap());
    (
        field(std::mem::offset_of!(virtio_blk_config, size_max)),
        field(std::mem::offset_of!(virtio_blk_config, seg_max)),
        field(std::mem::offset_of!(virtio_blk_config, blk_size)),
    )
}

/// Replays SeaBIOS's `virtio_blk_op` (src/hw/virtio-blk.c, 1.16): a read of `count` sectors
/// is split into requests of at most `(u16)((u32)(size_max * seg_max) / blk_size)` sectors
/// (64 when the device advertises no limits), and the next request starts after the sectors
/// the previous one covered, once it completed with status OK. Returns the request count.
fn seabios_read(h: &mut Harness, limits: (u32, u32, u32), sector: u64, count: u16) -> usize {
    let (size_max, seg_max, blk_size) = limits;
    let max_io_size = size_max.wrapping_mul(seg_max);
    let blk_num_max = if blk_size != 0 && max_io_size != 0 {
        (max_io_size / blk_size) as u16
    } else {
        64
    };
    let (mut lba, mut left, mut off) = (sector, count, 0u64);
    let mut requests = 0;
    while left > 0 {
        assert!(
            requests < 16,
            "SeaBIOS read of {count} sectors made no progress after {requests} requests: \
             size_max {size_max} x seg_max {seg_max} gives {blk_num_max} sectors per request"
        );
        let n = left.min(blk_num_max);
        let len = u32::from(n) * blk_size;
        let (used_len, st) = h.one(
            VIRTIO_BLK_T_IN,
            lba,
            &[r(HDR, 16), w(DATA + off, len), w(STATUS, 1)],
        );
        assert_eq!((used_len, st), (len + 1, OK));
        requests += 1;
        lba += u64::from(n);
        left -= n;
        off += u64::from(len);
    }
    let mut got = vec![0u8; usize::from(count) * blk_size as usize];
    h.mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, h.file_bytes(sector * 512, got.len()));
    requests
}

/// Regression (lab: QEMU + SeaBIOS never reached the guest kernel): with size_max 1 MiB and
/// seg_max 128, SeaBIOS computed 0 sectors per request (`(u16)(128 MiB / 512)`) and sent
/// zero-length reads of the same sector forever, each one answered OK.
#[test]
fn seabios_splits_reads_into_requests_that_make_progress() {
    let mut h = Harness::new(false);
    let limits = advertised_limits(h.file.path());
    assert_eq!(limits.2, 512, "SeaBIOS only drives 512-byte blocks");
    // One sector (MBR), and the largest int13 read (127 sectors, EDD allows 128).
    assert_eq!(seabios_read(&mut h, limits, 0, 1), 1);
    assert_eq!(seabios_read(&mut h, limits, 5, 127), 1);
    assert_eq!(seabios_read(&mut h, limits, 100, 128), 1);
    assert_eq!(h.stats().submits, 3, "every request reached the disk");
}

#[test]
fn hostile_chains_resubmitted_after_a_restart_are_answered_the_same() {
    // The hostile-chain tests again, every chain walked from its head index as a restarted
    // backend resubmits it (the two walks are compared chain by chain in `engine::chain`).
    VIA_RESTART.with(|v| v.set(true));
    let before = Harness::new(false).engine.stats().snapshot();
    read_and_write_roundtrip();
    framing_is_not_assumed();
    descriptor_outside_guest_memory_is_ioerr();
    looping_chain_is_returned_with_len_zero();
    next_index_past_table_is_returned_with_len_zero();
    short_header_is_ioerr();
    unaligned_length_is_ioerr();
    sector_range_past_capacity_is_ioerr();
    wrong_direction_descriptors_are_ioerr();
    too_many_segments_is_ioerr();
    unknown_type_is_unsupp();
    unwritable_status_returns_len_zero();
    readonly_rejects_writes();
    get_id_flush_and_write_zeroes();
    // The resubmission path really was taken.
    let mut h = Harness::new(false);
    h.good_read(3, 2);
    assert_eq!(h.stats().resubmitted, 1);
    assert_eq!(h.stats().requests, 0, "nothing popped from the avail ring");
    assert_eq!(before.resubmitted, 0);
    VIA_RESTART.with(|v| v.set(false));
}
