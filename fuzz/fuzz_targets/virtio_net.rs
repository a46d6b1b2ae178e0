// SPDX-License-Identifier: Apache-2.0
//! virtio-net as a hostile driver sees it, on a split queue laid out by the fuzzer, over a
//! datagram socket pair standing in for the TAP. The first byte picks the path:
//! - transmit: the engine walks each chain and the transmit handler validates its
//!   virtio-net header (GSO type, checksum offsets, sizes against the MTU) before writing;
//! - receive: frames the fuzzer sends from the "network" are read and copied into the
//!   driver's receive chains (mergeable buffers or not), the pair is deactivated and
//!   reactivated, then the ring is stopped;
//! - control: the control queue parses commands (class, command, payload) and answers them.

#![no_main]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use backends::engine::{Engine, EngineConfig, QueueStats};
use backends::net::{CtrlQueue, RxPath, TxHandler};
use iovmm_fuzz::{guest_memory, local_queue, queue_size, run_until_idle, split_queue, Input};
use libfuzzer_sys::fuzz_target;

/// MTU the transmit path enforces.
const MTU: u16 = 1500;

/// A datagram socket pair: (device end, network end), the network end non-blocking.
fn socket_pair() -> (OwnedFd, OwnedFd) {
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
    assert_eq!(rc, 0, "socketpair (harness)");
    // SAFETY: fresh fds owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Read and discard every datagram waiting on `fd`.
fn drain(fd: &OwnedFd) {
    let mut buf = vec![0u8; 70_000];
    loop {
        // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let path = input.u8() % 3;
    let features = Arc::new(AtomicU64::new(input.u64()));
    let size = queue_size(&mut input);
    let event_idx = input.u8() & 1 != 0;
    let mem = guest_memory();
    let (dev, net) = socket_pair();
    let stats = Arc::new(QueueStats::default());
    match path {
        0 => {
            let queue = split_queue(&mem, &mut input, size, event_idx);
            let mut q = local_queue(&mem, queue);
            let handler = TxHandler::new(dev.as_raw_fd(), features, MTU, stats.clone());
            let Ok(mut tx) = Engine::new(handler, EngineConfig::new(size, 64), stats) else {
                panic!("engine setup (harness)");
            };
            run_until_idle(Duration::from_secs(1), || {
                let _ = tx.process(&mut q);
                drain(&net);
                tx.inflight()
            });
        }
        1 => {
            let frames = usize::from(input.u8() % 8);
            let mut sizes = Vec::with_capacity(frames);
            for _ in 0..frames {
                sizes.push(usize::from(input.u16()) % 9100);
            }
            let toggle = input.u8() & 1 != 0;
            let queue = split_queue(&mem, &mut input, size, event_idx);
            let mut q = local_queue(&mem, queue);
            let Ok(mut rx) = RxPath::new(dev.as_raw_fd(), size, features, stats) else {
                panic!("rx setup (harness)");
            };
            // Frame contents: a repeating pattern (the bytes are copied, not parsed).
            for (i, len) in sizes.into_iter().enumerate() {
                let frame = vec![i as u8; len];
                // SAFETY: send reads `frame.len()` bytes from `frame`.
                unsafe {
                    libc::send(
                        net.as_raw_fd(),
                        frame.as_ptr().cast(),
                        frame.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
            }
            for round in 0..4 {
                let _ = rx.process(&mut q);
                if toggle && round == 1 {
                    // The driver deactivates the pair (VQ_PAIRS_SET) and brings it back.
                    let _ = rx.set_active(false);
                    let _ = rx.set_active(true);
                }
                std::thread::sleep(Duration::from_micros(20));
            }
            let _ = rx.stop(&mut q);
        }
        _ => {
            let max_pairs = u16::from(input.u8() % 9).max(1);
            let refuse = input.u8() & 1 != 0;
            let queue = split_queue(&mem, &mut input, size, event_idx);
            let mut q = local_queue(&mem, queue);
            let mut ctrl = CtrlQueue::new(max_pairs, features, stats);
            let _ = ctrl.process(&mut q, |pairs| {
                assert!(
                    (1..=max_pairs).contains(&pairs),
                    "VQ_PAIRS_SET {pairs} passed validation"
                );
                if refuse {
                    Err(backends::Error::InvalidConfig("refused".into()))
                } else {
                    Ok(())
                }
            });
            ctrl.stop();
        }
    }
});
