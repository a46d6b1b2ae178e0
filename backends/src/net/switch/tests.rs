// SPDX-License-Identifier: Apache-2.0
//! Unit tests of the switch: two guests' memories and vhost-user-backend vrings, driven from
//! the driver side by hand, served by the real [`SwitchPort`] event handler (with both ring
//! readers), including hostile chains on either side and a receiver that posts nothing.

use std::sync::Arc;
use std::time::Duration;

use vhost_user_backend::{VhostUserBackend, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::{switch, RingReader, SwitchOptions, SwitchPort, RX_VRING, TX_VRING};
use crate::engine::{StatsSnapshot, Vring};
use crate::net::{VnetHdr, VNET_HDR_LEN};

type Mem = GuestMemoryMmap<()>;

const QSIZE: u16 = 64;
const MEM_SIZE: usize = 0x40_0000;
/// Ring layout (per guest): descriptor tables, avail and used rings of both queues.
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x2000;
/// Where the driver's buffers start.
const BUFS: u64 = 0x10_0000;

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;

/// The driver side of one split queue at `base`: table, then avail ring, then used ring.
struct Vq {
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    next_avail: u16,
    next_used: u16,
}

impl Vq {
    fn new(base: u64) -> Vq {
        let desc = base;
        let avail = desc + 16 * u64::from(QSIZE);
        let used = (avail + 6 + 2 * u64::from(QSIZE)).next_multiple_of(4);
        Vq {
            desc,
            avail,
            used,
            next_desc: 0,
            next_avail: 0,
            next_used: 0,
        }
    }

    /// Make `(addr, len, flags, next)` descriptors (written from the next free table slot on,
    /// wrapping) one available chain; `next` is relative to the chain's first slot (taken as
    /// is from the queue size on: a `next` past the table).
    fn add(&mut self, mem: &Mem, descs: &[(u64, u32, u16, u16)]) -> u16 {
        let head = self.next_desc % QSIZE;
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let slot = (head + i as u16) % QSIZE;
            let next = if next >= QSIZE {
                next
            } else {
                (head + next) % QSIZE
            };
            let raw = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
            mem.write_obj(raw, GuestAddress(self.desc + 16 * u64::from(slot)))
                .unwrap();
        }
        self.next_desc = self.next_desc.wrapping_add(descs.len() as u16);
        let at = self.avail + 4 + 2 * u64::from(self.next_avail % QSIZE);
        mem.write_obj(head, GuestAddress(at)).unwrap();
        self.next_avail = self.next_avail.wrapping_add(1);
        mem.write_obj(self.next_avail, GuestAddress(self.avail + 2))
            .unwrap();
        head
    }

    /// The used entries not consumed yet.
    fn take_used(&mut self, mem: &Mem) -> Vec<(u32, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.next_used != idx {
            let e = self.used + 4 + 8 * u64::from(self.next_used % QSIZE);
            out.push((
                mem.read_obj(GuestAddress(e)).unwrap(),
                mem.read_obj(GuestAddress(e + 4)).unwrap(),
            ));
            self.next_used = self.next_used.wrapping_add(1);
        }
        out
    }
}

/// One guest: its memory, its two vrings as the daemon holds them, its driver-side queues.
struct Guest {
    port: Arc<SwitchPort>,
    mem: Mem,
    vrings: Vec<Vring>,
    rx: Vq,
    tx: Vq,
    /// Next free buffer address.
    next_buf: u64,
}

impl Guest {
    fn new(port: Arc<SwitchPort>, features: u64) -> Guest {
        let mem = Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let atomic = GuestMemoryAtomic::new(mem.clone());
        port.update_memory(atomic.clone()).unwrap();
        port.acked_features(features);
        let (rx, tx) = (Vq::new(RX_RING), Vq::new(TX_RING));
        let vrings = [&rx, &tx]
            .iter()
            .map(|q| {
                let v = <Vring as VringT<_>>::new(atomic.clone(), QSIZE).unwrap();
                v.set_queue_size(QSIZE);
                v.set_queue_info(q.desc, q.avail, q.used).unwrap();
                v.set_queue_ready(true);
                v.set_enabled(true);
                v
            })
            .collect();
        let g = Guest {
            port,
            mem,
            vrings,
            rx,
            tx,
            next_buf: BUFS,
        };
        g.event(g.port.wake_event()); // as the daemon does at start: the worker learns its vrings
        g
    }

    fn event(&self, device_event: u16) {
        self.port
            .handle_event(device_event, EventSet::IN, &self.vrings, 0)
            .unwrap();
    }

    /// The driver kicks its transmit queue.
    fn kick_tx(&self) {
        self.event(TX_VRING);
    }

    fn buf(&mut self, len: u32) -> u64 {
        let at = self.next_buf;
        self.next_buf += u64::from(len).next_multiple_of(64);
        assert!(self.next_buf < MEM_SIZE as u64);
        at
    }

    /// Queue a frame with header `hdr` for transmission in one descriptor.
    fn send(&mut self, hdr: VnetHdr, frame: &[u8]) -> u16 {
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(frame);
        let at = self.buf(bytes.len() as u32);
        self.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        let mem = self.mem.clone();
        self.tx.add(&mem, &[(at, bytes.len() as u32, 0, 0)])
    }

    /// Post one receive buffer of `len` bytes; returns its address.
    fn post_rx(&mut self, len: u32) -> u64 {
        let at = self.buf(len);
        let mem = self.mem.clone();
        self.rx.add(&mem, &[(at, len, WRITE, 0)]);
        at
    }

    fn stats(&self) -> (StatsSnapshot, StatsSnapshot) {
        let s = &self.port.stats()[0];
        (s.tx.snapshot(), s.rx.snapshot())
    }
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect();
    f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    f
}

fn features(mrg: bool) -> u64 {
    let mut f = 1u64 << VIRTIO_F_VERSION_1;
    if mrg {
        f |= 1 << VIRTIO_NET_F_MRG_RXBUF;
    }
    f
}

fn pair(reader: RingReader, mrg: bool) -> (Guest, Guest) {
    let (a, b) = switch(SwitchOptions {
        macs: [None, None],
        mtu: 1500,
        queue_pairs: 1,
        queue_size: QSIZE,
        batch: 32,
        poll_max: Duration::ZERO,
        reader,
    })
    .unwrap();
    (Guest::new(a, features(mrg)), Guest::new(b, features(mrg)))
}

/// What a receiving guest got in its used ring since the last call, as frames:
/// `(header, frame bytes)`, reassembled over `num_buffers` buffers at `addrs`.
fn received(g: &mut Guest, addrs: &[u64]) -> Vec<(VnetHdr, Vec<u8>)> {
    let mem = g.mem.clone();
    let used = g.rx.take_used(&mem);
    let mut out = Vec::new();
    let mut it = used.into_iter();
    while let Some((id, len)) = it.next() {
        let read = |id: u32, len: u32| {
            let mut v = vec![0u8; len as usize];
            mem.read_slice(&mut v, GuestAddress(addrs[id as usize]))
                .unwrap();
            v
        };
        let mut bytes = read(id, len);
        let hdr = VnetHdr::from_bytes(bytes[..VNET_HDR_LEN].try_into().unwrap());
        for _ in 1..hdr.num_buffers {
            let (id, len) = it.next().expect("buffers of a merged frame");
            bytes.extend(read(id, len));
        }
        out.push((hdr, bytes.split_off(VNET_HDR_LEN)));
    }
    out
}

#[test]
fn frames_cross_both_ways_byte_for_byte_with_either_ring_reader() {
    for reader in [RingReader::Own, RingReader::VirtioQueue] {
        let (mut a, mut b) = pair(reader, true);
        let b_bufs: Vec<u64> = (0..8).map(|_| b.post_rx(1024)).collect();
        let a_bufs: Vec<u64> = (0..2).map(|_| a.post_rx(2048)).collect();
        let (small, big) = (frame(60, 1), frame(1514, 2));
        a.send(VnetHdr::default(), &small);
        a.send(VnetHdr::default(), &big);
        a.kick_tx();
        let got = received(&mut b, &b_bufs);
        assert_eq!(got.len(), 2, "{reader:?}");
        assert_eq!((got[0].0.num_buffers, &got[0].1), (1, &small));
        // 12 + 1514 bytes over two 1024-byte buffers (MRG_RXBUF).
        assert_eq!((got[1].0.num_buffers, &got[1].1), (2, &big));
        let mem = a.mem.clone();
        assert_eq!(a.tx.take_used(&mem).len(), 2, "both tx chains answered");

        let back = frame(100, 3);
        b.send(VnetHdr::default(), &back);
        b.kick_tx();
        assert_eq!(received(&mut a, &a_bufs), vec![(hdr(1), back)]);
        let ((atx, _), (_, brx)) = (a.stats(), b.stats());
        assert_eq!((atx.requests, atx.ok, atx.dropped), (2, 2, 0));
        assert_eq!((brx.requests, brx.ok, brx.guest_faults), (3, 2, 0));
    }
}

fn hdr(num_buffers: u16) -> VnetHdr {
    VnetHdr {
        num_buffers,
        ..VnetHdr::default()
    }
}

#[test]
fn hostile_transmit_chains_are_dropped_and_counted_and_the_peer_keeps_receiving() {
    for reader in [RingReader::Own, RingReader::VirtioQueue] {
        let (mut a, mut b) = pair(reader, true);
        let b_bufs: Vec<u64> = (0..8).map(|_| b.post_rx(2048)).collect();
        let good = frame(60, 9);
        a.send(VnetHdr::default(), &good);
        let mem = a.mem.clone();
        let buf = a.buf(128);
        let hostile: [&[(u64, u32, u16, u16)]; 5] = [
            &[(MEM_SIZE as u64 - 8, 128, 0, 0)], // past the end of guest memory
            &[(buf, 64, NEXT, 1), (buf, 64, NEXT, 0)], // a loop
            &[(buf, 64, NEXT, 1), (buf, 64, WRITE, 0)], // device-writable in a tx chain
            &[(buf, 8, 0, 0)],                   // shorter than the header
            &[(buf, 64, NEXT, 200)],             // `next` past the table
        ];
        for chain in hostile {
            a.tx.add(&mem, chain);
        }
        // A header with unknown flags.
        a.send(
            VnetHdr {
                flags: 0x80,
                ..VnetHdr::default()
            },
            &good,
        );
        a.send(VnetHdr::default(), &good);
        a.kick_tx();
        assert_eq!(
            received(&mut b, &b_bufs),
            vec![(hdr(1), good.clone()), (hdr(1), good)],
            "{reader:?}"
        );
        let used = a.tx.take_used(&mem);
        assert_eq!(used.len(), 8, "every chain answered, none left behind");
        let (atx, _) = a.stats();
        assert_eq!(
            (atx.requests, atx.ok, atx.guest_faults, atx.dropped),
            (8, 2, 6, 6)
        );
    }
}

#[test]
fn hostile_receive_chains_are_refused_and_counted_and_frames_take_the_next_buffer() {
    for reader in [RingReader::Own, RingReader::VirtioQueue] {
        let (mut a, mut b) = pair(reader, true);
        let mem = b.mem.clone();
        let buf = b.buf(4096);
        let hostile: [&[(u64, u32, u16, u16)]; 4] = [
            &[(buf, 1024, 0, 0)],                                      // device-readable
            &[(MEM_SIZE as u64 - 16, 1024, WRITE, 0)], // past the end of guest memory
            &[(buf, 8, WRITE, 0)],                     // too small for the header
            &[(buf, 64, NEXT | WRITE, 1), (buf, 64, NEXT | WRITE, 0)], // a loop
        ];
        for chain in hostile {
            b.rx.add(&mem, chain);
        }
        // Buffer ids follow the descriptor slots: 5 hostile descriptors, then the good one.
        let good_buf = b.post_rx(2048);
        let mut addrs = vec![0u64; 5];
        addrs.push(good_buf);
        let f = frame(200, 4);
        a.send(VnetHdr::default(), &f);
        a.kick_tx();
        let used = b.rx.take_used(&mem);
        assert_eq!(used[..4], [(0, 0), (1, 0), (2, 0), (3, 0)], "{reader:?}");
        assert_eq!(used[4], (5, (VNET_HDR_LEN + f.len()) as u32));
        let mut got = vec![0u8; f.len()];
        mem.read_slice(&mut got, GuestAddress(good_buf + VNET_HDR_LEN as u64))
            .unwrap();
        assert_eq!(got, f);
        let (_, brx) = b.stats();
        assert_eq!((brx.requests, brx.ok, brx.guest_faults), (5, 1, 4));
    }
}

#[test]
fn a_guest_that_posts_no_receive_buffers_does_not_stall_the_sender() {
    for reader in [RingReader::Own, RingReader::VirtioQueue] {
        let (mut a, mut b) = pair(reader, true);
        let f = frame(60, 5);
        let mem = a.mem.clone();
        // Three rings' worth of frames, refilled as the used entries come back.
        let mut answered = 0;
        for _ in 0..3 {
            a.next_buf = BUFS;
            for _ in 0..QSIZE {
                a.send(VnetHdr::default(), &f);
            }
            a.kick_tx();
            answered += a.tx.take_used(&mem).len();
        }
        assert_eq!(answered, 3 * usize::from(QSIZE), "{reader:?}");
        let n = 3 * u64::from(QSIZE);
        let ((atx, _), (_, brx)) = (a.stats(), b.stats());
        assert_eq!((atx.requests, atx.ok, atx.dropped), (n, 0, n));
        assert_eq!((brx.ok, brx.dropped), (0, n));
        // Once it posts buffers, frames arrive again.
        let bufs: Vec<u64> = (0..1).map(|_| b.post_rx(2048)).collect();
        a.next_buf = BUFS;
        a.send(VnetHdr::default(), &f);
        a.kick_tx();
        assert_eq!(received(&mut b, &bufs), vec![(hdr(1), f)]);
    }
}

#[test]
fn frames_to_a_receiver_whose_ring_is_stopped_are_dropped_and_counted() {
    let (mut a, b) = pair(RingReader::Own, true);
    b.vrings[usize::from(RX_VRING)].set_queue_ready(false);
    let mem = a.mem.clone();
    a.send(VnetHdr::default(), &frame(60, 6));
    a.kick_tx();
    assert_eq!(a.tx.take_used(&mem).len(), 1);
    let (atx, _) = a.stats();
    assert_eq!((atx.ok, atx.dropped, atx.guest_faults), (0, 1, 0));
}

#[test]
fn offloads_pass_through_only_to_a_guest_that_negotiated_them() {
    let tso = features(true)
        | (1 << VIRTIO_NET_F_CSUM)
        | (1 << VIRTIO_NET_F_HOST_TSO4)
        | (1 << VIRTIO_NET_F_GUEST_CSUM)
        | (1 << VIRTIO_NET_F_GUEST_TSO4);
    let gso = VnetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4 as u8,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    let big = frame(54 + 4 * 1448, 7);
    for (b_features, delivered) in [(tso, true), (features(true), false)] {
        let (mut a, mut b) = pair(RingReader::Own, true);
        a.port.acked_features(tso);
        b.port.acked_features(b_features);
        let bufs: Vec<u64> = (0..4).map(|_| b.post_rx(4096)).collect();
        a.send(gso, &big);
        a.kick_tx();
        let got = received(&mut b, &bufs);
        if delivered {
            let want = VnetHdr {
                num_buffers: 2,
                ..gso
            };
            assert_eq!(got, vec![(want, big.clone())]);
        } else {
            assert!(got.is_empty());
            assert_eq!(a.stats().0.dropped, 1);
        }
    }
}

#[test]
fn ring_readers_agree_on_hostile_and_random_rings() {
    use crate::engine::compare_with_virtio_queue;
    // A few hand-made rings: four chains (good, loop, indirect, head past the table).
    let mut image = vec![0u8; 0x3000];
    let mut desc = |i: usize, addr: u64, len: u32, flags: u16, next: u16| {
        let d = &mut image[16 * i..16 * i + 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
    };
    desc(0, 0x8000, 64, NEXT, 1);
    desc(1, 0x9000, 64, WRITE, 0);
    desc(2, 0x8000, 64, NEXT, 3);
    desc(3, 0x8000, 64, NEXT, 2);
    desc(4, 0x2800, 32, 4, 0); // indirect: a table of two at 0x2800
    let avail = 0x1000;
    for (i, head) in [0u16, 2, 4, 200].iter().enumerate() {
        image[avail + 4 + 2 * i..avail + 6 + 2 * i].copy_from_slice(&head.to_le_bytes());
    }
    image[avail + 2..avail + 4].copy_from_slice(&4u16.to_le_bytes());
    let mut data = vec![4u8, 0, 0, 0]; // a queue of 32, from index 0
    data.extend_from_slice(&image);
    assert_eq!(compare_with_virtio_queue(&data), Ok(4));
    // An avail index more than a ring ahead: nothing is taken by either.
    data[4 + avail + 2] = 100;
    assert_eq!(compare_with_virtio_queue(&data), Ok(0));
    // Random rings (xorshift), short and long inputs alike.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut taken = 0;
    for round in 0..300 {
        let len = [0usize, 3, 64, 0x1100, 0x3000][round % 5];
        let mut bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        if round % 2 == 0 && len > 4 + avail + 4 {
            // Every other ring: a sane avail index (a few chains from index 0).
            bytes[1..3].copy_from_slice(&[0, 0]);
            let idx = u16::from(bytes[0] % 8);
            bytes[4 + avail + 2..4 + avail + 4].copy_from_slice(&idx.to_le_bytes());
        }
        taken += compare_with_virtio_queue(&bytes).unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
    assert!(taken > 0, "random rings never had a chain to take");
}

#[test]
fn with_several_pairs_each_side_offers_multiqueue_and_a_control_queue() {
    let (a, b) = switch(SwitchOptions {
        macs: [Some([2, 0, 0, 0, 0, 1]), Some([2, 0, 0, 0, 0, 2])],
        mtu: 9000,
        queue_pairs: 2,
        queue_size: 256,
        batch: 32,
        poll_max: Duration::from_micros(64),
        reader: RingReader::Own,
    })
    .unwrap();
    for (port, last) in [(&a, 1u8), (&b, 2)] {
        let f = port.features();
        for bit in [VIRTIO_NET_F_MQ, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_MAC] {
            assert_ne!(f & (1 << bit), 0, "feature bit {bit}");
        }
        // Two pairs and the control queue; pair 0 and the control queue on thread 0.
        assert_eq!(port.num_queues(), 5);
        assert_eq!(port.queues_per_thread(), vec![0b10011, 0b01100]);
        assert!(u64::from(port.wake_event()) > port.num_queues() as u64);
        // MAC, status, pairs, MTU.
        assert_eq!(port.get_config(0, 6), vec![2, 0, 0, 0, 0, last]);
        assert_eq!(port.get_config(8, 2), 2u16.to_le_bytes().to_vec());
        assert_eq!(port.get_config(10, 2), 9000u16.to_le_bytes().to_vec());
        assert!(port.get_config(10, 4).is_empty(), "past the config space");
        // The driver starts on one pair and asks for both through the control queue.
        port.acked_features(f & !(1 << VIRTIO_NET_F_MAC));
        assert!(port.set_active_pairs(3).is_err());
        port.set_active_pairs(2).unwrap();
    }
    let bad = SwitchOptions {
        macs: [None, None],
        mtu: 1500,
        queue_pairs: 1,
        queue_size: 100,
        batch: 32,
        poll_max: Duration::ZERO,
        reader: RingReader::Own,
    };
    assert!(
        switch(bad).is_err(),
        "a queue size that is not a power of two"
    );
}
