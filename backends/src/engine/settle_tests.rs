// SPDX-License-Identifier: Apache-2.0
//! Stopping a ring whose requests never complete: [`Engine::settle_within`] gives up after
//! its limit instead of waiting forever (vhost-user GET_VRING_BASE is then answered with an
//! error), and the requests it gave up on never reach the used ring.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::QueueT;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

use super::*;
use crate::Error;

/// Reads a pipe into each chain's writable buffer: a read waits until the test writes.
struct PipeReads(File);

impl RequestHandler for PipeReads {
    type Req = ();

    fn file(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    fn opcodes(&self) -> &'static [u8] {
        &RW_OPCODES
    }

    fn prepare<M: GuestMemory>(
        &mut self,
        mem: &M,
        chain: &DescChain,
        _req: &mut (),
        iov: &mut Vec<libc::iovec>,
    ) -> Prepared {
        match chain.iovecs(mem, Dir::Writable, 0, chain.writable_len(), 1, iov) {
            Ok(()) => Prepared::Submit(rw_sqe(iov, 0, 0, false)),
            Err(_) => Prepared::Done(0),
        }
    }

    fn complete<M: GuestMemory>(
        &mut self,
        _mem: &M,
        _chain: &DescChain,
        _req: &mut (),
        result: i32,
    ) -> u32 {
        u32::try_from(result).unwrap_or(0)
    }
}

#[test]
fn a_stop_gives_up_on_requests_that_never_complete_and_drops_their_completions() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let vq = virtio_queue::mock::MockSplitQueue::create(&mem, GuestAddress(0), 16);
    for i in 0..3u16 {
        let desc = RawDescriptor::from(SplitDescriptor::new(
            0x8_0000 + 0x100 * u64::from(i),
            64,
            virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16,
            0,
        ));
        vq.desc_table().store(i, desc).unwrap();
    }
    let avail = vq.avail_addr();
    let offer = |n: u16| {
        for i in 0..n {
            mem.write_obj(i, avail.unchecked_add(4 + 2 * u64::from(i)))
                .unwrap();
        }
        mem.write_obj(n, avail.unchecked_add(2)).unwrap();
    };
    let used_idx = || -> u16 { mem.read_obj(vq.used_addr().unchecked_add(2)).unwrap() };
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills two fds on success; both are wrapped at once.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh fds owned by nobody else.
    let (rd, mut wr) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    let mut q = LocalQueue::new(vq.create_queue().unwrap(), Arc::new(mem.clone()), None);
    let cfg = EngineConfig::new(16, 1);
    let mut engine = Engine::new(PipeReads(rd), cfg, Arc::new(QueueStats::default())).unwrap();
    offer(2);
    engine.process(&mut q).unwrap();
    assert_eq!(
        (engine.inflight(), used_idx()),
        (2, 0),
        "reads wait on the pipe"
    );

    // GET_VRING_BASE: the ring stops and nothing will ever be written to the pipe.
    q.queue.set_ready(false);
    let start = Instant::now();
    let err = engine
        .settle_within(&mut q, Duration::from_millis(300))
        .unwrap_err();
    let waited = start.elapsed();
    assert!(
        matches!(err, Error::SettleTimeout { inflight: 2, .. }),
        "unexpected error: {err}"
    );
    assert!(
        (Duration::from_millis(300)..Duration::from_secs(10)).contains(&waited),
        "waited {waited:?}"
    );
    assert_eq!(used_idx(), 0, "requests given up on were answered");
    // The error is what the backend hands the vhost-user handler instead of a base.
    let io = stop_failed(0, err);
    assert!(io.to_string().contains("still in flight"), "{io}");

    // Data arriving now must not reach the stopped ring: the reads were cancelled (or
    // their completions are dropped), and their slots come back.
    wr.write_all(&[9u8; 128]).unwrap();
    q.queue.set_ready(true);
    engine.process(&mut q).unwrap();
    assert_eq!(used_idx(), 0, "a given-up request completed into the ring");
    assert_eq!(
        engine.inflight(),
        0,
        "slots of cancelled requests not freed"
    );

    // The restarted ring is served normally: a new chain reads what is in the pipe.
    offer(3);
    engine.process(&mut q).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while used_idx() < 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        engine.process(&mut q).unwrap();
    }
    assert_eq!(used_idx(), 1);
    let head: u32 = mem.read_obj(vq.used_addr().unchecked_add(4)).unwrap();
    assert_eq!(head, 2, "the new chain was answered");
    let mut got = [0u8; 64];
    mem.read_slice(&mut got, GuestAddress(0x8_0200)).unwrap();
    assert_eq!(got, [9u8; 64]);
}
