// SPDX-License-Identifier: Apache-2.0
//! Unit tests: transmit through the real [`Engine`] and receive through [`RxPath`] against a
//! `GuestMemoryMmap`, virtio-queue's mock driver-side queue and a datagram socket pair standing
//! in for the TAP (one datagram = one frame with its vnet header), including hostile chains.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::{RxPath, TxHandler, VnetHdr, TX_MAX_IOV, VNET_HDR_LEN};
use crate::engine::{Engine, EngineConfig, LocalQueue, QueueStats, StatsSnapshot};

mod ctrl;

type Mem = GuestMemoryMmap<()>;

const QSIZE: u16 = 64;
const RXQ: u64 = 0;
const TXQ: u64 = 0x1_0000;
const BUF: u64 = 0x10_0000;
const MEM_SIZE: usize = 0x80_0000;
const MTU: u16 = 1500;

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

/// Driver side of one split queue.
struct Vq {
    base: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    next_avail: u16,
    next_used: u16,
}

impl Vq {
    fn new(mem: &Mem, base: u64) -> (Vq, Queue) {
        let vq = MockSplitQueue::create(mem, GuestAddress(base), QSIZE);
        let queue: Queue = vq.create_queue().unwrap();
        let v = Vq {
            base,
            avail: vq.avail_addr().0,
            used: vq.used_addr().0,
            next_desc: 0,
            next_avail: 0,
            next_used: 0,
        };
        (v, queue)
    }

    fn add_raw(&mut self, mem: &Mem, descs: &[(D, u16, u16)]) -> u16 {
        let head = self.next_desc;
        for (i, (d, flags, next)) in descs.iter().enumerate() {
            let mut f = *flags;
            if d.write {
                f |= VRING_DESC_F_WRITE as u16;
            }
            let raw = RawDescriptor::from(SplitDescriptor::new(d.addr, d.len, f, *next));
            let at = GuestAddress(self.base + 16 * u64::from(head + i as u16));
            mem.write_obj(raw, at).unwrap();
        }
        self.next_desc += descs.len() as u16;
        let slot = self.avail + 4 + 2 * u64::from(self.next_avail % QSIZE);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.next_avail = self.next_avail.wrapping_add(1);
        mem.write_obj(self.next_avail, GuestAddress(self.avail + 2))
            .unwrap();
        head
    }

    fn add(&mut self, mem: &Mem, descs: &[D]) -> u16 {
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
        self.add_raw(mem, &linked)
    }

    fn used_idx(&self, mem: &Mem) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    fn pending_used(&self, mem: &Mem) -> u16 {
        self.used_idx(mem).wrapping_sub(self.next_used)
    }

    fn used(&mut self, mem: &Mem) -> (u32, u32) {
        assert!(self.pending_used(mem) > 0, "no used entry");
        let e = self.used + 4 + 8 * u64::from(self.next_used % QSIZE);
        let id: u32 = mem.read_obj(GuestAddress(e)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(e + 4)).unwrap();
        self.next_used = self.next_used.wrapping_add(1);
        (id, len)
    }
}

struct Harness {
    mem: Mem,
    rxv: Vq,
    txv: Vq,
    rxq: LocalQueue<Mem>,
    txq: LocalQueue<Mem>,
    rx: RxPath,
    tx: Engine<TxHandler, Mem>,
    /// The "TAP" end given to the device.
    _dev: OwnedFd,
    /// The network side of the "TAP".
    peer: OwnedFd,
}

fn base_features() -> u64 {
    (1 << VIRTIO_F_VERSION_1)
        | (1 << VIRTIO_NET_F_CSUM)
        | (1 << VIRTIO_NET_F_HOST_TSO4)
        | (1 << VIRTIO_NET_F_GUEST_CSUM)
}

impl Harness {
    fn new(features: u64) -> Harness {
        let mem = Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let (rxv, rq) = Vq::new(&mem, RXQ);
        let (txv, tq) = Vq::new(&mem, TXQ);
        let mut fds = [0i32; 2];
        // SAFETY: socketpair fills two fds on success; both are wrapped at once.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0);
        // SAFETY: fresh fds owned by nobody else.
        let (dev, peer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let features = Arc::new(AtomicU64::new(features));
        let rx_stats = Arc::new(QueueStats::default());
        let tx_stats = Arc::new(QueueStats::default());
        let rx = RxPath::new(dev.as_raw_fd(), QSIZE, features.clone(), rx_stats).unwrap();
        let handler = TxHandler::new(dev.as_raw_fd(), features.clone(), MTU, tx_stats.clone());
        let cfg = EngineConfig::new(QSIZE, TX_MAX_IOV);
        let tx = Engine::new(handler, cfg, tx_stats).unwrap();
        let shared = Arc::new(mem.clone());
        Harness {
            rxq: LocalQueue::new(rq, shared.clone(), None),
            txq: LocalQueue::new(tq, shared, None),
            mem,
            rxv,
            txv,
            rx,
            tx,
            _dev: dev,
            peer,
        }
    }

    fn tx_stats(&self) -> StatsSnapshot {
        self.tx.stats().snapshot()
    }

    fn rx_stats(&self) -> StatsSnapshot {
        self.rx.stats().snapshot()
    }

    fn write_hdr(&self, addr: u64, hdr: VnetHdr) {
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(addr))
            .unwrap();
    }

    /// Run the transmit engine until nothing is in flight.
    fn run_tx(&mut self) {
        self.tx.process(&mut self.txq).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.tx.inflight() > 0 {
            assert!(Instant::now() < deadline, "tx never completed");
            wait_readable(self.tx.completion_fd().as_raw_fd(), 100);
            self.tx.process(&mut self.txq).unwrap();
        }
    }

    /// Post receive buffers `heads` of `len` bytes each, one descriptor each, buffer `i` at
    /// [`rx_buf`]`(i)` (its head index when the receive queue's descriptors are used in order).
    fn post_rx_buffers(&mut self, heads: std::ops::Range<u32>, len: u32) {
        for i in heads {
            self.rxv.add(&self.mem, &[w(rx_buf(i), len)]);
        }
    }

    /// The next used entries are `pkts`, in order, each whole in its own buffer.
    fn expect_rx_frames_in_order(&mut self, pkts: &[Vec<u8>]) {
        for (i, p) in pkts.iter().enumerate() {
            let (head, len) = self.rxv.used(&self.mem);
            assert_eq!(len as usize, p.len(), "frame {i}");
            let mut got = vec![0u8; p.len()];
            self.mem
                .read_slice(&mut got, GuestAddress(rx_buf(head)))
                .unwrap();
            assert_eq!(&got[VNET_HDR_LEN..], &p[VNET_HDR_LEN..], "frame {i}");
        }
    }

    /// Process the receive queue until `n` used entries appeared (or time out).
    fn run_rx_until(&mut self, n: u16) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            self.rx.process(&mut self.rxq).unwrap();
            if self.rxv.pending_used(&self.mem) >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} rx used entries",
                self.rxv.pending_used(&self.mem)
            );
            wait_readable(self.rx.completion_fd().as_raw_fd(), 100);
        }
    }

    /// One datagram from the network side, if any.
    fn peer_recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 70000];
        // SAFETY: recv writes at most buf.len() bytes into buf.
        let n = unsafe {
            libc::recv(
                self.peer.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        (n >= 0).then(|| {
            buf.truncate(n as usize);
            buf
        })
    }

    fn peer_send(&self, data: &[u8]) {
        // SAFETY: send reads data.len() bytes from data.
        let n = unsafe { libc::send(self.peer.as_raw_fd(), data.as_ptr().cast(), data.len(), 0) };
        assert_eq!(n, data.len() as isize);
    }

    /// Whether a datagram is still queued towards the device.
    fn device_has_input(&self) -> bool {
        let mut b = [0u8; 1];
        // SAFETY: recv into a 1-byte buffer.
        let n = unsafe {
            libc::recv(
                self._dev.as_raw_fd(),
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_DONTWAIT | libc::MSG_PEEK,
            )
        };
        n >= 0
    }
}

fn wait_readable(fd: i32, ms: i32) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

/// A received datagram as the TAP would deliver it: header + frame.
fn packet(hdr: VnetHdr, frame_len: usize, seed: u8) -> Vec<u8> {
    let mut p = hdr.to_bytes().to_vec();
    p.extend(frame(frame_len, seed));
    p
}

// ---------------------------------------------------------------------------------- transmit

/// Header + frame in guest memory at BUF (header) and BUF+0x1000 (frame).
fn put_tx(h: &Harness, hdr: VnetHdr, frame_len: usize) -> Vec<u8> {
    h.write_hdr(BUF, hdr);
    let f = frame(frame_len, 3);
    h.mem.write_slice(&f, GuestAddress(BUF + 0x1000)).unwrap();
    let mut expect = hdr.to_bytes().to_vec();
    expect.extend(&f);
    expect
}

#[test]
fn tx_frame_passes_header_and_data_to_the_tap() {
    let mut h = Harness::new(base_features());
    let expect = put_tx(&h, VnetHdr::default(), 100);
    let head = h
        .txv
        .add(&h.mem, &[r(BUF, VNET_HDR_LEN as u32), r(BUF + 0x1000, 100)]);
    h.run_tx();
    assert_eq!(h.txv.used(&h.mem), (u32::from(head), 0));
    assert_eq!(h.peer_recv().expect("frame on the tap"), expect);
    let s = h.tx_stats();
    assert_eq!((s.requests, s.ok, s.guest_faults), (1, 1, 0));
}

#[test]
fn tx_header_and_frame_in_one_descriptor_and_tso() {
    let mut h = Harness::new(base_features());
    let hdr = VnetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4 as u8,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    h.write_hdr(BUF, hdr);
    let f = frame(30000, 9);
    h.mem
        .write_slice(&f, GuestAddress(BUF + VNET_HDR_LEN as u64))
        .unwrap();
    h.txv
        .add(&h.mem, &[r(BUF, (VNET_HDR_LEN + f.len()) as u32)]);
    h.run_tx();
    let got = h.peer_recv().expect("TSO frame");
    assert_eq!(got.len(), VNET_HDR_LEN + f.len());
    assert_eq!(&got[VNET_HDR_LEN..], &f[..]);
    assert_eq!(h.tx_stats().ok, 1);
}

/// Asserts the chain was returned, nothing reached the TAP and the fault was counted; then
/// checks the queue still carries a good frame.
fn assert_tx_dropped(h: &mut Harness, head: u16) {
    h.run_tx();
    assert_eq!(h.txv.used(&h.mem), (u32::from(head), 0));
    assert!(h.peer_recv().is_none(), "hostile frame reached the tap");
    let s = h.tx_stats();
    assert_eq!((s.guest_faults, s.dropped, s.ok), (1, 1, 0), "{s:?}");
    let expect = put_tx(h, VnetHdr::default(), 64);
    h.txv
        .add(&h.mem, &[r(BUF, VNET_HDR_LEN as u32), r(BUF + 0x1000, 64)]);
    h.run_tx();
    h.txv.used(&h.mem);
    assert_eq!(h.peer_recv().expect("queue still works"), expect);
}

#[test]
fn tx_descriptor_outside_guest_memory_is_dropped() {
    let mut h = Harness::new(base_features());
    put_tx(&h, VnetHdr::default(), 100);
    let head = h.txv.add(
        &h.mem,
        &[r(BUF, VNET_HDR_LEN as u32), r(MEM_SIZE as u64 - 50, 100)],
    );
    assert_tx_dropped(&mut h, head);
}

#[test]
fn tx_looping_chain_is_dropped() {
    let mut h = Harness::new(base_features());
    put_tx(&h, VnetHdr::default(), 100);
    let base = h.txv.next_desc;
    let next = VRING_DESC_F_NEXT as u16;
    let head = h.txv.add_raw(
        &h.mem,
        &[
            (r(BUF, VNET_HDR_LEN as u32), next, base + 1),
            (r(BUF + 0x1000, 100), next, base),
        ],
    );
    assert_tx_dropped(&mut h, head);
}

#[test]
fn tx_frame_larger_than_the_mtu_is_dropped() {
    let mut h = Harness::new(base_features());
    let len = usize::from(MTU) + 18 + 1;
    put_tx(&h, VnetHdr::default(), len);
    let head = h.txv.add(
        &h.mem,
        &[r(BUF, VNET_HDR_LEN as u32), r(BUF + 0x1000, len as u32)],
    );
    assert_tx_dropped(&mut h, head);
}

#[test]
fn tx_unknown_gso_type_is_dropped() {
    let mut h = Harness::new(base_features());
    let hdr = VnetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
        gso_type: 0x42,
        gso_size: 1000,
        csum_start: 34,
        csum_offset: 16,
        ..Default::default()
    };
    put_tx(&h, hdr, 100);
    let head = h
        .txv
        .add(&h.mem, &[r(BUF, VNET_HDR_LEN as u32), r(BUF + 0x1000, 100)]);
    assert_tx_dropped(&mut h, head);
}

#[test]
fn tx_unnegotiated_tso6_is_dropped() {
    let mut h = Harness::new(base_features());
    let hdr = VnetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV6 as u8,
        gso_size: 1000,
        csum_start: 54,
        csum_offset: 16,
        ..Default::default()
    };
    put_tx(&h, hdr, 3000);
    let head = h.txv.add(
        &h.mem,
        &[r(BUF, VNET_HDR_LEN as u32), r(BUF + 0x1000, 3000)],
    );
    assert_tx_dropped(&mut h, head);
}

#[test]
fn tx_short_header_and_writable_buffers_are_dropped() {
    let mut h = Harness::new(base_features());
    let head = h.txv.add(&h.mem, &[r(BUF, 8)]);
    assert_tx_dropped(&mut h, head);
    let mut h = Harness::new(base_features());
    put_tx(&h, VnetHdr::default(), 100);
    let head = h
        .txv
        .add(&h.mem, &[r(BUF, VNET_HDR_LEN as u32), w(BUF + 0x1000, 100)]);
    assert_tx_dropped(&mut h, head);
}

#[test]
fn tx_checksum_offset_past_the_frame_is_dropped() {
    let mut h = Harness::new(base_features());
    let hdr = VnetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
        csum_start: 90,
        csum_offset: 16,
        ..Default::default()
    };
    put_tx(&h, hdr, 100);
    let head = h
        .txv
        .add(&h.mem, &[r(BUF, VNET_HDR_LEN as u32), r(BUF + 0x1000, 100)]);
    assert_tx_dropped(&mut h, head);
}

// ----------------------------------------------------------------------------------- receive

fn rx_num_buffers(h: &Harness, addr: u64) -> u16 {
    h.mem.read_obj(GuestAddress(addr + 10)).unwrap()
}

#[test]
fn rx_frame_lands_in_one_buffer_with_num_buffers_1() {
    let mut h = Harness::new(base_features());
    h.mem.write_obj(0xffffu16, GuestAddress(BUF + 10)).unwrap();
    let head = h.rxv.add(&h.mem, &[w(BUF, 2048)]);
    let pkt = packet(VnetHdr::default(), 200, 5);
    h.peer_send(&pkt);
    h.run_rx_until(1);
    assert_eq!(h.rxv.used(&h.mem), (u32::from(head), pkt.len() as u32));
    let mut got = vec![0u8; pkt.len()];
    h.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert_eq!(rx_num_buffers(&h, BUF), 1);
    assert_eq!(&got[VNET_HDR_LEN..], &pkt[VNET_HDR_LEN..]);
    let s = h.rx_stats();
    assert_eq!((s.ok, s.dropped, s.guest_faults), (1, 0, 0));
    assert!(
        !h.rx.reading(),
        "no read is outstanding once the only buffer is used"
    );
}

/// Guest address of the receive buffer with descriptor index `head`, for tests that post
/// one single-descriptor buffer per 4 KiB page from [`BUF`] on.
fn rx_buf(head: u32) -> u64 {
    BUF + u64::from(head) * 0x1000
}

/// The next `frames` frames from the used ring, each reassembled from its buffers
/// (MRG_RXBUF: the first buffer's `num_buffers` says how many used entries the frame spans).
fn rx_frames(h: &mut Harness, frames: usize) -> Vec<Vec<u8>> {
    (0..frames)
        .map(|_| {
            let (head, len) = h.rxv.used(&h.mem);
            let first = rx_buf(head);
            let mut frame = vec![0u8; len as usize];
            h.mem.read_slice(&mut frame, GuestAddress(first)).unwrap();
            for _ in 1..rx_num_buffers(h, first) {
                let (head, len) = h.rxv.used(&h.mem);
                let mut part = vec![0u8; len as usize];
                h.mem
                    .read_slice(&mut part, GuestAddress(rx_buf(head)))
                    .unwrap();
                frame.extend(part);
            }
            frame
        })
        .collect()
}

/// A frame spread over three posted buffers (MRG_RXBUF), `num_buffers` 3.
#[test]
fn rx_mergeable_frame_spans_buffers() {
    let mut h = Harness::new(base_features() | (1 << VIRTIO_NET_F_MRG_RXBUF));
    h.post_rx_buffers(0..3, 1000);
    let pkt = packet(VnetHdr::default(), 2500 - VNET_HDR_LEN, 1);
    h.peer_send(&pkt);
    h.run_rx_until(3);
    assert_eq!(rx_num_buffers(&h, BUF), 3);
    let got = rx_frames(&mut h, 1);
    assert_eq!(got[0].len(), pkt.len());
    assert_eq!(&got[0][VNET_HDR_LEN..], &pkt[VNET_HDR_LEN..]);
    assert_eq!(h.rx_stats().ok, 1);
}

/// Big and small frames interleaved (MRG_RXBUF): every frame arrives intact, in order, each
/// spread over as many buffers as it needs.
#[test]
fn rx_mergeable_frames_of_mixed_sizes_arrive_in_order() {
    let mut h = Harness::new(base_features() | (1 << VIRTIO_NET_F_MRG_RXBUF));
    let mut posted = 0u64;
    let mut post = |h: &mut Harness, n: u64| {
        for _ in 0..n {
            h.rxv.add(&h.mem, &[w(BUF + posted * 0x1000, 1024)]);
            posted += 1;
        }
    };
    let mut sent = Vec::new();
    let mut received = Vec::new();
    // (buffers to post, frame sizes to send); at most 32 buffers in all (the mock queue's used
    // ring overlaps the second half of its avail ring).
    let rounds: [(u64, &[usize]); 3] = [
        (3, &[2500]),
        (12, &[2900, 2000, 100]),
        (8, &[3100, 60, 700]),
    ];
    for (i, (bufs, sizes)) in rounds.iter().enumerate() {
        post(&mut h, *bufs);
        for (k, &n) in sizes.iter().enumerate() {
            let p = packet(VnetHdr::default(), n, (10 * i + k) as u8);
            h.peer_send(&p);
            h.run_rx_until((p.len()).div_ceil(1024) as u16);
            received.extend(rx_frames(&mut h, 1));
            sent.push(p);
        }
    }
    for (i, (got, want)) in received.iter().zip(&sent).enumerate() {
        assert_eq!(got.len(), want.len(), "frame {i}");
        assert_eq!(&got[VNET_HDR_LEN..], &want[VNET_HDR_LEN..], "frame {i}");
    }
    let s = h.rx_stats();
    assert_eq!(
        (s.ok, s.dropped, s.guest_faults),
        (sent.len() as u64, 0, 0),
        "{s:?}"
    );
}

/// A big frame waits for buffers the driver has not posted yet, and the frame behind it waits
/// too; both arrive intact, in order, as the driver posts more.
#[test]
fn rx_frames_waiting_for_buffers_arrive_intact_in_order() {
    let mut h = Harness::new(base_features() | (1 << VIRTIO_NET_F_MRG_RXBUF));
    h.post_rx_buffers(0..2, 1000);
    let big = packet(VnetHdr::default(), 2500 - VNET_HDR_LEN, 1);
    let small = packet(VnetHdr::default(), 100, 2);
    h.peer_send(&big);
    h.peer_send(&small);
    // Both frames are read; the big one needs three buffers and two are posted.
    h.rx.process(&mut h.rxq).unwrap();
    wait_readable(h.rx.completion_fd().as_raw_fd(), 200);
    h.rx.process(&mut h.rxq).unwrap();
    assert!(!h.rx.reading());
    assert_eq!(
        h.rxv.pending_used(&h.mem),
        0,
        "the big frame went out partly"
    );
    h.post_rx_buffers(2..3, 1000);
    h.run_rx_until(3);
    h.post_rx_buffers(3..4, 1000);
    h.run_rx_until(4);
    let got = rx_frames(&mut h, 2);
    for (got, want) in got.iter().zip([&big, &small]) {
        assert_eq!(got.len(), want.len());
        assert_eq!(&got[VNET_HDR_LEN..], &want[VNET_HDR_LEN..]);
    }
    let s = h.rx_stats();
    assert_eq!((s.ok, s.dropped, s.guest_faults), (2, 0, 0), "{s:?}");
}

/// A receive chain of 80 small pieces (an indirect table) takes a frame across them.
#[test]
fn rx_chain_of_many_small_descriptors_takes_a_frame_across_them() {
    let mut h = Harness::new(base_features());
    // An indirect table of 80 writable 40-byte buffers (3200 bytes).
    let table = BUF + 0x8000;
    let pieces = 80u16;
    for i in 0..pieces {
        let (flags, next) = if i + 1 < pieces {
            (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, i + 1)
        } else {
            (VRING_DESC_F_WRITE, 0)
        };
        let d = SplitDescriptor::new(BUF + u64::from(i) * 64, 40, flags as u16, next);
        h.mem
            .write_obj(
                RawDescriptor::from(d),
                GuestAddress(table + 16 * u64::from(i)),
            )
            .unwrap();
    }
    let head = h.rxv.add_raw(
        &h.mem,
        &[(
            r(table, 16 * u32::from(pieces)),
            VRING_DESC_F_INDIRECT as u16,
            0,
        )],
    );
    let pkt = packet(VnetHdr::default(), 1000, 3);
    h.peer_send(&pkt);
    h.run_rx_until(1);
    assert_eq!(h.rxv.used(&h.mem), (u32::from(head), pkt.len() as u32));
    let mut got = Vec::new();
    for i in 0..pkt.len().div_ceil(40) as u64 {
        let mut b = vec![0u8; 40];
        h.mem
            .read_slice(&mut b, GuestAddress(BUF + i * 64))
            .unwrap();
        got.extend(b);
    }
    got.truncate(pkt.len());
    assert_eq!(rx_num_buffers(&h, BUF), 1);
    assert_eq!(&got[VNET_HDR_LEN..], &pkt[VNET_HDR_LEN..]);
}

#[test]
fn rx_mergeable_frame_waits_for_more_buffers() {
    let mut h = Harness::new(base_features() | (1 << VIRTIO_NET_F_MRG_RXBUF));
    h.rxv.add(&h.mem, &[w(BUF, 1000)]);
    h.peer_send(&packet(VnetHdr::default(), 2000, 1));
    h.rx.process(&mut h.rxq).unwrap();
    wait_readable(h.rx.completion_fd().as_raw_fd(), 200);
    h.rx.process(&mut h.rxq).unwrap();
    assert_eq!(
        h.rxv.pending_used(&h.mem),
        0,
        "partial frame must not be used"
    );
    h.rxv.add(&h.mem, &[w(BUF + 0x1000, 1000)]);
    h.rxv.add(&h.mem, &[w(BUF + 0x2000, 1000)]);
    h.run_rx_until(3);
    assert_eq!(rx_num_buffers(&h, BUF), 3);
    assert_eq!(h.rx_stats().ok, 1);
}

#[test]
fn rx_chains_held_across_a_memory_update_write_into_the_new_memory() {
    let mut h = Harness::new(base_features());
    let head = h.rxv.add(&h.mem, &[w(BUF, 2048)]);
    // No frame yet: the receive chain is reserved and a read waits on the "TAP".
    h.rx.process(&mut h.rxq).unwrap();
    assert!(h.rx.reading());
    // The frontend replaces the memory table: a new mapping with the same contents. The old
    // snapshot is released before the new one is allocated, so the allocator may hand the
    // new object the old one's address.
    let mut image = vec![0u8; MEM_SIZE];
    h.mem.read_slice(&mut image, GuestAddress(0)).unwrap();
    let fresh = Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    fresh.write_slice(&image, GuestAddress(0)).unwrap();
    let fresh_view = fresh.clone();
    let placeholder = Arc::new(Mem::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap());
    h.rxq.mem = placeholder.clone();
    h.txq.mem = placeholder;
    let shared = Arc::new(fresh);
    h.rxq.mem = shared.clone();
    h.txq.mem = shared;
    let old = std::mem::replace(&mut h.mem, fresh_view);

    let pkt = packet(VnetHdr::default(), 300, 9);
    h.peer_send(&pkt);
    h.run_rx_until(1);
    assert_eq!(h.rxv.used(&h.mem), (u32::from(head), pkt.len() as u32));
    let mut got = vec![0u8; pkt.len()];
    h.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert_eq!(
        &got[VNET_HDR_LEN..],
        &pkt[VNET_HDR_LEN..],
        "frame not in the new memory"
    );
    let mut stale = vec![0u8; pkt.len()];
    old.read_slice(&mut stale, GuestAddress(BUF)).unwrap();
    assert_ne!(
        &stale[VNET_HDR_LEN..],
        &pkt[VNET_HDR_LEN..],
        "frame written to the old memory"
    );
}

#[test]
fn rx_nothing_is_read_without_buffers() {
    let mut h = Harness::new(base_features());
    h.peer_send(&packet(VnetHdr::default(), 100, 1));
    h.rx.process(&mut h.rxq).unwrap();
    assert!(!h.rx.reading());
    assert!(h.device_has_input(), "frame must stay in the TAP");
    let head = h.rxv.add(&h.mem, &[w(BUF, 2048)]);
    h.run_rx_until(1);
    assert_eq!(h.rxv.used(&h.mem).0, u32::from(head));
}

#[test]
fn rx_buffer_too_small_drops_the_frame_and_keeps_running() {
    let mut h = Harness::new(base_features());
    let small = h.rxv.add(&h.mem, &[w(BUF, 200)]);
    h.peer_send(&packet(VnetHdr::default(), 1000, 1));
    h.run_rx_until(1);
    assert_eq!(h.rxv.used(&h.mem), (u32::from(small), 0));
    let s = h.rx_stats();
    assert_eq!((s.dropped, s.guest_faults, s.ok), (1, 1, 0));
    let good = h.rxv.add(&h.mem, &[w(BUF + 0x1000, 2048)]);
    let pkt = packet(VnetHdr::default(), 300, 2);
    h.peer_send(&pkt);
    h.run_rx_until(1);
    assert_eq!(h.rxv.used(&h.mem), (u32::from(good), pkt.len() as u32));
}

#[test]
fn rx_hostile_chains_are_returned_empty() {
    let mut h = Harness::new(base_features() | (1 << VIRTIO_NET_F_MRG_RXBUF));
    // Outside guest memory, shorter than the header, device-readable, looping.
    let oob = h.rxv.add(&h.mem, &[w(MEM_SIZE as u64 - 100, 1000)]);
    let tiny = h.rxv.add(&h.mem, &[w(BUF, 4)]);
    let ro = h.rxv.add(&h.mem, &[r(BUF, 1000)]);
    let base = h.rxv.next_desc;
    let lp = h
        .rxv
        .add_raw(&h.mem, &[(w(BUF, 100), VRING_DESC_F_NEXT as u16, base)]);
    let good = h.rxv.add(&h.mem, &[w(BUF + 0x1000, 2048)]);
    let pkt = packet(VnetHdr::default(), 500, 4);
    h.peer_send(&pkt);
    h.run_rx_until(5);
    for bad in [oob, tiny, ro, lp] {
        assert_eq!(h.rxv.used(&h.mem), (u32::from(bad), 0));
    }
    assert_eq!(h.rxv.used(&h.mem), (u32::from(good), pkt.len() as u32));
    let s = h.rx_stats();
    assert_eq!((s.guest_faults, s.ok), (4, 1), "{s:?}");
}

#[test]
fn rx_inactive_queue_takes_nothing_until_reactivated() {
    let mut h = Harness::new(base_features());
    h.rx.set_active(false).unwrap();
    let head = h.rxv.add(&h.mem, &[w(BUF, 2048)]);
    let pkt = packet(VnetHdr::default(), 100, 1);
    h.peer_send(&pkt);
    h.rx.process(&mut h.rxq).unwrap();
    assert!(!h.rx.reading(), "an inactive queue must not read");
    assert_eq!(h.rxv.pending_used(&h.mem), 0);
    assert!(h.device_has_input(), "frame must stay in the TAP");
    h.rx.set_active(true).unwrap();
    // Reactivation wakes the queue through its completion eventfd.
    wait_readable(h.rx.completion_fd().as_raw_fd(), 0);
    h.run_rx_until(1);
    assert_eq!(h.rxv.used(&h.mem), (u32::from(head), pkt.len() as u32));
}

#[test]
fn rx_batch_signals_once() {
    let mut h = Harness::new(base_features());
    h.post_rx_buffers(0..8, 2048);
    for i in 0..8 {
        h.peer_send(&packet(VnetHdr::default(), 100, i));
    }
    h.run_rx_until(8);
    assert!(
        h.rxq.signals <= 2,
        "{} signals for one batch",
        h.rxq.signals
    );
    assert_eq!(h.rx_stats().ok, 8);
}

/// More frames than read slots: every frame arrives intact, in the order it was sent, each
/// in its own buffer (batched reads keep the TAP's order). At most 32 buffers: the mock
/// queue's used ring overlaps the second half of its avail ring.
#[test]
fn rx_many_frames_arrive_in_order() {
    let mut h = Harness::new(base_features());
    let n = 2 * super::rx::READ_SLOTS - 2;
    h.post_rx_buffers(0..n as u32, 2048);
    let pkts: Vec<Vec<u8>> = (0..n)
        .map(|i| packet(VnetHdr::default(), 60 + i, i as u8))
        .collect();
    for p in &pkts {
        h.peer_send(p);
    }
    h.run_rx_until(n as u16);
    h.expect_rx_frames_in_order(&pkts);
    assert_eq!(h.rx_stats().ok, n as u64);
}

/// Frames that come while the TAP is empty or only partly full: the reads that find nothing
/// end quietly (no read error, nothing dropped), one read waits, and every frame still lands
/// in order — whether frames trickle in one by one or come in bursts shorter than a batch.
#[test]
fn rx_frames_trickling_into_an_empty_tap_arrive_in_order() {
    frames_trickle_in(false);
}

/// The same with hard-linked reads, the fallback for kernels that refuse `RWF_NOWAIT`.
#[test]
fn rx_frames_trickling_in_arrive_in_order_with_linked_reads() {
    frames_trickle_in(true);
}

fn frames_trickle_in(linked_reads: bool) {
    let mut h = Harness::new(base_features());
    if linked_reads {
        h.rx.link_reads();
    }
    let n = 2 * super::rx::READ_SLOTS - 2;
    h.post_rx_buffers(0..n as u32, 2048);
    h.rx.process(&mut h.rxq).unwrap();
    assert!(h.rx.reading(), "a read waits on the empty TAP");
    assert_eq!(h.rxv.pending_used(&h.mem), 0);
    let pkts: Vec<Vec<u8>> = (0..n)
        .map(|i| packet(VnetHdr::default(), 60 + 3 * i, i as u8))
        .collect();
    // One by one, then bursts of 3 and 7, then the rest at once.
    let mut sent = 0;
    for burst in [1, 1, 1, 1, 3, 7, n - 14] {
        for p in &pkts[sent..sent + burst] {
            h.peer_send(p);
        }
        sent += burst;
        h.run_rx_until(sent as u16);
    }
    h.expect_rx_frames_in_order(&pkts);
    let s = h.rx_stats();
    assert_eq!((s.ok, s.dropped, s.io_errors), (n as u64, 0, 0));
}

#[test]
fn header_roundtrip_and_validation() {
    let hdr = VnetHdr {
        flags: 1,
        gso_type: 4,
        hdr_len: 74,
        gso_size: 1440,
        csum_start: 54,
        csum_offset: 16,
        num_buffers: 2,
    };
    assert_eq!(VnetHdr::from_bytes(&hdr.to_bytes()), hdr);
    let all = super::device_features();
    assert!(hdr.validate_tx(9000, all, 1500).is_ok());
    assert!(hdr.validate_tx(70000, all, 1500).is_err());
    assert!(VnetHdr::default().validate_tx(10, all, 1500).is_err());
    assert!(VnetHdr::default().validate_tx(1518, all, 1500).is_ok());
    assert!(VnetHdr::default().validate_tx(9018, all, 9000).is_ok());
    assert_eq!(
        super::parse_mac("52:54:00:ab:cd:ef"),
        Some([0x52, 0x54, 0, 0xab, 0xcd, 0xef])
    );
    assert_eq!(super::parse_mac("52:54:00:ab:cd"), None);
    assert_eq!(super::parse_mac("52:54:00:ab:cd:ef:00"), None);
    assert_eq!(
        super::tap::tun_offload_flags(all),
        libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
    );
    assert_eq!(
        super::tap::tun_offload_flags(1 << VIRTIO_NET_F_GUEST_TSO4),
        0
    );
}

/// Stop the receive ring as vhost-user GET_VRING_BASE does: marked not ready, then
/// [`RxPath::stop`].
fn stop_rx(h: &mut Harness) {
    h.rxq.queue.set_ready(false);
    h.rx.stop(&mut h.rxq).unwrap();
}

#[test]
fn rx_stop_gives_reserved_buffers_back_and_a_reset_driver_gets_frames_in_its_new_ones() {
    let mut h = Harness::new(base_features());
    let marker = vec![0xa5u8; 2048];
    for i in 0..4 {
        h.mem.write_slice(&marker, GuestAddress(rx_buf(i))).unwrap();
    }
    h.post_rx_buffers(0..4, 2048);
    h.rx.process(&mut h.rxq).unwrap();
    assert!(h.rx.reading(), "buffers reserved, a read waits");
    stop_rx(&mut h);
    assert_eq!(
        h.rxq.queue.next_avail(),
        0,
        "the ring base must exclude the reserved, unused buffers"
    );
    assert_eq!(h.rxv.pending_used(&h.mem), 0);
    // A frame arriving while the ring is stopped goes nowhere near the driver's memory.
    let pkt = packet(VnetHdr::default(), 300, 7);
    h.peer_send(&pkt);
    wait_readable(h.rx.completion_fd().as_raw_fd(), 1000);
    h.rx.process(&mut h.rxq).unwrap();
    assert_eq!(
        h.rxv.pending_used(&h.mem),
        0,
        "used entry on a stopped ring"
    );
    // The driver resets: fresh rings (same place, zeroed) and new buffers elsewhere, whose
    // descriptor indices start at 0 again.
    h.mem
        .write_slice(&vec![0u8; TXQ as usize], GuestAddress(RXQ))
        .unwrap();
    let (rxv, rq) = Vq::new(&h.mem, RXQ);
    h.rxv = rxv;
    h.rxq.queue = rq;
    let fresh = rx_buf(32);
    let head = h.rxv.add(&h.mem, &[w(fresh, 2048)]);
    h.run_rx_until(1);
    assert_eq!(h.rxv.used(&h.mem), (u32::from(head), pkt.len() as u32));
    let mut got = vec![0u8; pkt.len()];
    h.mem.read_slice(&mut got, GuestAddress(fresh)).unwrap();
    assert_eq!(&got[VNET_HDR_LEN..], &pkt[VNET_HDR_LEN..]);
    for i in 0..4 {
        let mut old = vec![0u8; 2048];
        h.mem.read_slice(&mut old, GuestAddress(rx_buf(i))).unwrap();
        assert_eq!(
            old, marker,
            "buffer {i} of the old ring written after the stop"
        );
    }
}

#[test]
fn rx_stop_answers_reserved_buffers_older_than_a_bad_chain_empty() {
    let mut h = Harness::new(base_features());
    let first = h.rxv.add(&h.mem, &[w(rx_buf(0), 2048)]);
    let bad = h.rxv.add(&h.mem, &[r(rx_buf(1), 2048)]);
    h.post_rx_buffers(2..4, 2048);
    h.rx.process(&mut h.rxq).unwrap();
    assert_eq!(h.rxv.used(&h.mem), (u32::from(bad), 0));
    stop_rx(&mut h);
    // The two buffers after the bad chain go back to the avail ring; the one before it
    // cannot (rewinding past the answered chain would offer it twice): answered empty.
    assert_eq!(h.rxq.queue.next_avail(), 2);
    assert_eq!(h.rxv.used(&h.mem), (u32::from(first), 0));
    assert_eq!(h.rxv.pending_used(&h.mem), 0);
}

/// A region for the receive queue of [`Harness`] (one queue of [`QSIZE`]).
fn rx_region() -> (vhost::vhost_user::message::VhostUserInflight, std::fs::File) {
    let request = vhost::vhost_user::message::VhostUserInflight {
        num_queues: 1,
        queue_size: QSIZE,
        ..Default::default()
    };
    crate::inflight::InflightRegion::create(&request, 1, QSIZE).unwrap()
}

#[test]
fn rx_buffers_reserved_by_a_killed_backend_take_the_next_frames_in_order() {
    use crate::inflight::InflightRegion;
    let (msg, file) = rx_region();
    let view = || InflightRegion::map(&msg, &file, 1, QSIZE).unwrap().queue(0);
    let mut h = Harness::new(base_features());
    h.rx.set_inflight(view());
    h.post_rx_buffers(0..4, 2048);
    let first = packet(VnetHdr::default(), 200, 1);
    h.peer_send(&first);
    h.run_rx_until(1);
    h.expect_rx_frames_in_order(std::slice::from_ref(&first));
    // Buffers 1..4 are reserved with a read waiting; the backend is killed.
    assert!(h.rx.reading());
    let features = Arc::new(AtomicU64::new(base_features()));
    let stats = Arc::new(QueueStats::default());
    h.rx = RxPath::new(h._dev.as_raw_fd(), QSIZE, features, stats).unwrap();
    h.rx.set_inflight(view());
    // Its successor's queue starts at the frontend's base, the used index.
    let mut queue = Queue::new(QSIZE).unwrap();
    queue.set_desc_table_address(Some(h.rxv.base as u32), Some(0));
    queue.set_avail_ring_address(Some(h.rxv.avail as u32), Some(0));
    queue.set_used_ring_address(Some(h.rxv.used as u32), Some(0));
    queue.set_ready(true);
    queue.set_next_avail(1);
    queue.set_next_used(1);
    h.rxq.queue = queue;
    let next: Vec<Vec<u8>> = (2..5)
        .map(|seed| packet(VnetHdr::default(), 300, seed))
        .collect();
    for p in &next {
        h.peer_send(p);
    }
    h.run_rx_until(3);
    // They land in the reserved buffers 1, 2, 3, in order; nothing was popped again.
    h.expect_rx_frames_in_order(&next);
    let s = h.rx_stats();
    assert_eq!((s.resubmitted, s.requests, s.ok), (3, 0, 3));
    // A buffer posted now is taken after them.
    h.post_rx_buffers(4..5, 2048);
    let last = packet(VnetHdr::default(), 100, 9);
    h.peer_send(&last);
    h.run_rx_until(1);
    assert_eq!(h.rxv.used(&h.mem).0, 4);
}

/// Runs `f` on another thread; fails if it does not return within 5 s.
fn returns_in_time(f: impl FnOnce() + Send + 'static) {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = done.send(());
    });
    assert!(
        finished.recv_timeout(Duration::from_secs(5)).is_ok(),
        "the queue never went back to sleep"
    );
}

#[test]
fn rx_an_avail_index_out_of_range_does_not_spin_the_queue() {
    returns_in_time(|| {
        let mut h = Harness::new(base_features());
        h.peer_send(&packet(VnetHdr::default(), 100, 1));
        // The driver writes an avail index more than a ring ahead of the device's next pop
        // (behind it, here): pops refuse it, and re-enabling notifications must not report
        // buffers that will never come.
        h.rxq.queue.set_next_avail(5);
        h.rx.process(&mut h.rxq).unwrap();
        assert_eq!(h.rxv.used_idx(&h.mem), 0);
        // The driver repairs its ring and notifies: served again.
        h.rxq.queue.set_next_avail(0);
        let head = h.rxv.add(&h.mem, &[w(BUF, 2048)]);
        h.run_rx_until(1);
        assert_eq!(h.rxv.used(&h.mem).0, u32::from(head));
    });
}

#[test]
fn tx_an_avail_index_out_of_range_does_not_spin_the_queue() {
    returns_in_time(|| {
        let mut h = Harness::new(base_features());
        h.txq.queue.set_next_avail(5);
        h.tx.process(&mut h.txq).unwrap();
        assert_eq!(h.tx_stats().requests, 0);
    });
}
