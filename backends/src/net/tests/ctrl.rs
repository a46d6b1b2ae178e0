// SPDX-License-Identifier: Apache-2.0
//! Control queue: `VQ_PAIRS_SET` and hostile commands through [`CtrlQueue`] against the
//! same mock driver-side queue, and the multiqueue shape of [`NetBackend`].

use std::os::fd::OwnedFd;

use vhost_user_backend::VhostUserBackend;

use super::*;
use crate::engine::Tuning;
use crate::net::{CtrlQueue, NetBackend, NetOptions, Port};
use crate::Error;

const CMD: u64 = BUF;
const DATA: u64 = BUF + 0x100;
const ACK: u64 = BUF + 0x200;
const MAX_PAIRS: u16 = 4;
const UNSET: u8 = 0xee;

struct Ctrl {
    mem: Mem,
    v: Vq,
    q: LocalQueue<Mem>,
    ctrl: CtrlQueue,
    applied: Vec<u16>,
    /// Make `set_pairs` fail (a host-side error).
    fail: bool,
}

fn mq_features() -> u64 {
    (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_CTRL_VQ) | (1 << VIRTIO_NET_F_MQ)
}

impl Ctrl {
    fn new(features: u64) -> Ctrl {
        let mem = Mem::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let (v, queue) = Vq::new(&mem, RXQ);
        let ctrl = CtrlQueue::new(
            MAX_PAIRS,
            Arc::new(AtomicU64::new(features)),
            Arc::new(QueueStats::default()),
        );
        let q = LocalQueue::new(queue, Arc::new(mem.clone()), None);
        Ctrl {
            mem,
            v,
            q,
            ctrl,
            applied: Vec::new(),
            fail: false,
        }
    }

    /// Header at CMD, data at DATA, ack byte at ACK (preset to UNSET).
    fn put(&self, class: u8, command: u8, data: &[u8]) {
        self.mem
            .write_slice(&[class, command], GuestAddress(CMD))
            .unwrap();
        self.mem.write_slice(data, GuestAddress(DATA)).unwrap();
        self.mem.write_obj(UNSET, GuestAddress(ACK)).unwrap();
    }

    /// A well-formed command as Linux sends it: header, data, ack in three descriptors.
    fn send(&mut self, class: u8, command: u8, data: &[u8]) -> u16 {
        self.put(class, command, data);
        self.v.add(
            &self.mem,
            &[r(CMD, 2), r(DATA, data.len() as u32), w(ACK, 1)],
        )
    }

    fn pairs_set(&mut self, n: u16) -> u16 {
        self.send(
            VIRTIO_NET_CTRL_MQ as u8,
            VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8,
            &n.to_le_bytes(),
        )
    }

    fn run(&mut self) {
        let (applied, fail) = (&mut self.applied, self.fail);
        self.ctrl
            .process(&mut self.q, |n| {
                if fail {
                    return Err(Error::InvalidConfig("refused".into()));
                }
                applied.push(n);
                Ok(())
            })
            .unwrap();
    }

    fn ack(&self) -> u8 {
        self.mem.read_obj(GuestAddress(ACK)).unwrap()
    }

    fn stats(&self) -> StatsSnapshot {
        self.ctrl.stats().snapshot()
    }

    /// Runs the queue and checks `head` came back with `len` and the ack byte is `ack`.
    fn expect(&mut self, head: u16, len: u32, ack: u8) {
        self.run();
        assert_eq!(self.v.used(&self.mem), (u32::from(head), len));
        assert_eq!(self.ack(), ack);
    }

    /// The queue still answers a good command afterwards.
    fn still_serves(&mut self) {
        let head = self.pairs_set(2);
        self.expect(head, 1, VIRTIO_NET_OK as u8);
        assert_eq!(self.applied.last(), Some(&2));
    }
}

const OK: u8 = VIRTIO_NET_OK as u8;
const ERR: u8 = VIRTIO_NET_ERR as u8;

#[test]
fn ctrl_vq_pairs_set_is_applied_and_acked() {
    let mut c = Ctrl::new(mq_features());
    let head = c.pairs_set(MAX_PAIRS);
    c.expect(head, 1, OK);
    // Header and data in one descriptor is as good as two.
    c.put(
        VIRTIO_NET_CTRL_MQ as u8,
        VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8,
        &[],
    );
    c.mem.write_slice(&[4, 0, 1, 0], GuestAddress(CMD)).unwrap();
    let head = c.v.add(&c.mem, &[r(CMD, 4), w(ACK, 1)]);
    c.expect(head, 1, OK);
    assert_eq!(c.applied, vec![MAX_PAIRS, 1]);
    let s = c.stats();
    assert_eq!((s.requests, s.ok, s.guest_faults, s.dropped), (2, 2, 0, 0));
    assert_eq!(c.q.signals, 2);
}

#[test]
fn ctrl_pairs_out_of_range_are_refused() {
    let mut c = Ctrl::new(mq_features());
    for n in [0, MAX_PAIRS + 1, u16::MAX] {
        let head = c.pairs_set(n);
        c.expect(head, 1, ERR);
    }
    assert!(c.applied.is_empty());
    let s = c.stats();
    assert_eq!((s.guest_faults, s.ok, s.dropped), (3, 0, 0), "{s:?}");
    c.still_serves();
}

#[test]
fn ctrl_unsupported_commands_get_err() {
    let mut c = Ctrl::new(mq_features());
    // RX mode (promisc), the RSS config of the MQ class, MAC table, an unknown class.
    for (class, command) in [
        (VIRTIO_NET_CTRL_RX as u8, VIRTIO_NET_CTRL_RX_PROMISC as u8),
        (
            VIRTIO_NET_CTRL_MQ as u8,
            VIRTIO_NET_CTRL_MQ_RSS_CONFIG as u8,
        ),
        (
            VIRTIO_NET_CTRL_MAC as u8,
            VIRTIO_NET_CTRL_MAC_ADDR_SET as u8,
        ),
        (0xff, 0xff),
    ] {
        let head = c.send(class, command, &[1]);
        c.expect(head, 1, ERR);
    }
    let s = c.stats();
    assert_eq!((s.unsupported, s.guest_faults, s.ok), (4, 0, 0), "{s:?}");
    c.still_serves();
}

#[test]
fn ctrl_pairs_set_without_negotiated_mq_gets_err() {
    let mut c = Ctrl::new((1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_CTRL_VQ));
    let head = c.pairs_set(2);
    c.expect(head, 1, ERR);
    assert!(c.applied.is_empty());
    assert_eq!(c.stats().unsupported, 1);
}

#[test]
fn ctrl_malformed_commands_get_err_and_the_queue_keeps_serving() {
    let mut c = Ctrl::new(mq_features());
    let (mq, set) = (
        VIRTIO_NET_CTRL_MQ as u8,
        VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8,
    );
    c.put(mq, set, &[2, 0]);
    // No header at all, half a header, one data byte, three data bytes, a 2-byte ack.
    let cases: Vec<Vec<D>> = vec![
        vec![w(ACK, 1)],
        vec![r(CMD, 1), w(ACK, 1)],
        vec![r(CMD, 2), r(DATA, 1), w(ACK, 1)],
        vec![r(CMD, 2), r(DATA, 3), w(ACK, 1)],
        vec![r(CMD, 2), r(DATA, 2), w(ACK - 1, 2)],
        // Data descriptor outside guest memory; a readable one after the ack.
        vec![r(CMD, 2), r(MEM_SIZE as u64 - 1, 2), w(ACK, 1)],
        vec![r(CMD, 2), w(ACK, 1), r(DATA, 2)],
    ];
    for (i, descs) in cases.iter().enumerate() {
        c.mem.write_obj(UNSET, GuestAddress(ACK)).unwrap();
        let head = c.v.add(&c.mem, descs);
        let len = descs.iter().filter(|d| d.write).map(|d| d.len).sum();
        c.run();
        assert_eq!(c.v.used(&c.mem), (u32::from(head), len), "case {i}");
        assert_eq!(c.ack(), ERR, "case {i}");
    }
    assert!(c.applied.is_empty(), "a malformed command was applied");
    let s = c.stats();
    assert_eq!((s.guest_faults, s.ok), (cases.len() as u64, 0), "{s:?}");
    c.still_serves();
}

#[test]
fn ctrl_chains_without_a_writable_ack_are_returned_empty() {
    let mut c = Ctrl::new(mq_features());
    c.put(
        VIRTIO_NET_CTRL_MQ as u8,
        VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8,
        &[2, 0],
    );
    let no_ack = c.v.add(&c.mem, &[r(CMD, 2), r(DATA, 2)]);
    let ack_oob =
        c.v.add(&c.mem, &[r(CMD, 2), r(DATA, 2), w(MEM_SIZE as u64, 1)]);
    let base = c.v.next_desc;
    let next = VRING_DESC_F_NEXT as u16;
    let looping = c.v.add_raw(
        &c.mem,
        &[(r(CMD, 2), next, base + 1), (r(DATA, 2), next, base)],
    );
    c.run();
    for head in [no_ack, ack_oob, looping] {
        assert_eq!(c.v.used(&c.mem), (u32::from(head), 0));
    }
    assert_eq!(c.ack(), UNSET);
    assert!(c.applied.is_empty());
    let s = c.stats();
    assert_eq!((s.guest_faults, s.dropped, s.ok), (3, 3, 0), "{s:?}");
    c.still_serves();
}

#[test]
fn ctrl_host_failure_is_answered_err() {
    let mut c = Ctrl::new(mq_features());
    c.fail = true;
    let head = c.pairs_set(2);
    c.expect(head, 1, ERR);
    assert_eq!(c.stats().io_errors, 1);
    c.fail = false;
    c.still_serves();
}

// ------------------------------------------------------------------------ backend shape

fn link_backend(pairs: u16) -> (NetBackend, Vec<OwnedFd>) {
    let mut ours = Vec::new();
    let mut peers = Vec::new();
    for _ in 0..pairs {
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
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        ours.push((a.try_clone().unwrap(), a));
        peers.push(b);
    }
    let opts = NetOptions {
        port: Port::Link(ours),
        mac: None,
        mtu: MTU,
        queue_pairs: pairs,
        queue_size: QSIZE,
        tuning: Tuning::default(),
        affinity: Default::default(),
    };
    (NetBackend::new(opts).unwrap(), peers)
}

#[test]
fn backend_with_two_pairs_offers_and_serves_the_control_queue() {
    let (b, _peers) = link_backend(2);
    let f = b.features();
    assert_ne!(f & (1 << VIRTIO_NET_F_MQ), 0);
    assert_ne!(f & (1 << VIRTIO_NET_F_CTRL_VQ), 0);
    assert_eq!(b.num_queues(), 5);
    // Pair 0 and the control queue (index 4) on thread 0, pair 1 on thread 1.
    assert_eq!(b.queues_per_thread(), vec![0b10011, 0b01100]);
    assert_eq!(b.get_config(8, 2), 2u16.to_le_bytes().to_vec());
    assert!(u64::from(b.tx_completion_event()) > b.num_queues() as u64);

    // Our frontend acks CTRL_VQ: one pair until the driver asks for more.
    b.acked_features(mq_features());
    assert_eq!(b.active_pairs().unwrap(), 1);
    b.set_active_pairs(2).unwrap();
    assert_eq!(b.active_pairs().unwrap(), 2);
    assert!(b.set_active_pairs(0).is_err());
    assert!(b.set_active_pairs(3).is_err());
    assert_eq!(b.active_pairs().unwrap(), 2);
    // QEMU acks MQ but keeps the control queue: every pair is in use.
    b.acked_features(mq_features() & !(1 << VIRTIO_NET_F_CTRL_VQ));
    assert_eq!(b.active_pairs().unwrap(), 2);
    // A driver without MQ uses the first pair only.
    b.acked_features(1 << VIRTIO_F_VERSION_1);
    assert_eq!(b.active_pairs().unwrap(), 1);
}

#[test]
fn backend_with_one_pair_has_no_control_queue() {
    let (b, _peers) = link_backend(1);
    assert_eq!(b.features() & (1 << VIRTIO_NET_F_CTRL_VQ), 0);
    assert_eq!(b.features() & (1 << VIRTIO_NET_F_MQ), 0);
    assert_eq!(b.num_queues(), 2);
    assert_eq!(b.queues_per_thread(), vec![0b11]);
}
