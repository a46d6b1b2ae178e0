// SPDX-License-Identifier: Apache-2.0
//! The reference: this process on the same TAP with io_uring, no virtio in between, the TAP
//! registered as the ring's fixed file as our backend's engine does. Transmit writes the same
//! virtio header + frame buffers (the same guest memory slots) `batch` per `io_uring_enter`,
//! one `write` each, as our backend does for a frame in one descriptor, and cycles through all
//! the slots in ring order as a virtqueue consumer must (reusing the few slots a batch needs
//! would keep them hot in this CPU's cache, an advantage no device behind a full ring has);
//! receive keeps `batch` reads in flight.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use backends::engine::{register_file, FIXED_FILE};
use backends::net::{Tap, RX_BUF_LEN, VNET_HDR_LEN};
use io_uring::{opcode, types, IoUring};

use super::driver::NetMem;
use super::Counts;
use crate::{io_err, Error, Result};

fn uring_err(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    io_err(format!("io_uring {what}"))
}

/// Register the TAP as `ring`'s fixed file through our backend's engine's own code; returns how
/// operations name it.
fn register_tap(ring: &IoUring, tap: &Tap) -> Result<types::Fixed> {
    register_file(ring, tap.as_raw_fd())
        .map_err(|e| Error::Backend(format!("register the TAP with io_uring: {e}")))?;
    Ok(FIXED_FILE)
}

/// Write the transmit slots of `mem` to `tap` for `duration`, oldest free slot first.
pub fn transmit(tap: &Tap, mem: &NetMem, duration: Duration, batch: u16) -> Result<Counts> {
    let size = mem.tx.size;
    let batch = batch.clamp(1, size);
    let iov: Vec<libc::iovec> = (0..size)
        .map(|i| {
            Ok(libc::iovec {
                iov_base: mem.host_ptr(mem.tx_slot(i), mem.wire_len())?.cast(),
                iov_len: mem.wire_len(),
            })
        })
        .collect::<Result<_>>()?;
    let frame_len = (mem.wire_len() - VNET_HDR_LEN) as u64;
    let mut ring = IoUring::new(u32::from(size).next_power_of_two()).map_err(uring_err("setup"))?;
    let fd = register_tap(&ring, tap)?;
    let mut free: VecDeque<u16> = (0..size).collect();
    let (mut frames, mut errors) = (0u64, 0u64);
    let start = Instant::now();
    let deadline = start + duration;
    loop {
        let stopping = Instant::now() >= deadline;
        let mut queued = 0;
        'fill: while !stopping && free.len() >= usize::from(batch) {
            for _ in 0..batch {
                let Some(i) = free.pop_front() else {
                    break 'fill;
                };
                let v = &iov[usize::from(i)];
                let sqe = opcode::Write::new(fd, v.iov_base.cast(), v.iov_len as u32)
                    .build()
                    .user_data(u64::from(i));
                // SAFETY: the iovec and the guest memory it points to outlive the ring's use
                // of them (every write is reaped before this function returns).
                if unsafe { ring.submission().push(&sqe) }.is_err() {
                    free.push_front(i);
                    break 'fill;
                }
                queued += 1;
            }
        }
        let outstanding = usize::from(size) - free.len();
        if stopping && outstanding == 0 {
            break;
        }
        // Writes to a TAP complete during submission; wait only when nothing is queued.
        let wait = usize::from(queued == 0);
        match ring.submit_and_wait(wait) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(uring_err("submit")(e)),
        }
        for cqe in ring.completion() {
            let Ok(i) = u16::try_from(cqe.user_data()) else {
                continue;
            };
            free.push_back(i);
            if u64::try_from(cqe.result()).is_ok_and(|n| n == frame_len + VNET_HDR_LEN as u64) {
                frames += 1;
            } else {
                errors += 1;
            }
        }
    }
    if errors > 0 {
        tracing::warn!(errors, "raw TAP writes failed or were short");
    }
    Ok(Counts {
        frames,
        bytes: frames * frame_len,
        seconds: start.elapsed().as_secs_f64(),
        notifications: 0,
    })
}

/// Read frames from `tap` for `duration` with `batch` reads in flight.
pub fn receive(tap: &Tap, duration: Duration, batch: u16) -> Result<Counts> {
    let n = usize::from(batch.max(1));
    let mut bufs = vec![0u8; n * RX_BUF_LEN];
    let mut ring = IoUring::new((2 * n as u32).next_power_of_two()).map_err(uring_err("setup"))?;
    let fd = register_tap(&ring, tap)?;
    let base = bufs.as_mut_ptr();
    let read = |i: usize| {
        // SAFETY: `i < n`, so the pointer stays inside `bufs`.
        let ptr = unsafe { base.add(i * RX_BUF_LEN) };
        opcode::Read::new(fd, ptr, RX_BUF_LEN as u32)
            .build()
            .user_data(i as u64)
    };
    for i in 0..n {
        // SAFETY: `bufs` outlives every read: all are cancelled and reaped before returning.
        unsafe { ring.submission().push(&read(i)) }
            .map_err(|_| Error::Backend("io_uring queue full".into()))?;
    }
    let (mut frames, mut bytes) = (0u64, 0u64);
    let start = Instant::now();
    let deadline = start + duration;
    let mut inflight = n;
    let mut stopping = false;
    let mut done: Vec<(u64, i32)> = Vec::with_capacity(2 * n);
    const CANCEL: u64 = u64::MAX;
    while inflight > 0 {
        if !stopping && Instant::now() >= deadline {
            stopping = true;
            let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                .build()
                .user_data(CANCEL);
            // SAFETY: the cancel carries no buffers.
            let _ = unsafe { ring.submission().push(&cancel) };
        }
        // Wake at least every 100 ms to notice the deadline.
        let ts = types::Timespec::from(Duration::from_millis(100));
        let args = types::SubmitArgs::new().timespec(&ts);
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
            Err(e) => return Err(uring_err("submit")(e)),
        }
        if stopping && deadline.elapsed() > Duration::from_secs(5) {
            // Leak the buffers rather than free them under the kernel.
            std::mem::forget(bufs);
            return Err(Error::Backend(format!(
                "{inflight} TAP reads not cancelled"
            )));
        }
        done.clear();
        done.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        for &(tag, res) in &done {
            if tag == CANCEL {
                continue;
            }
            let i = tag as usize;
            if i >= n {
                continue;
            }
            inflight -= 1;
            if let Ok(len) = usize::try_from(res) {
                if !stopping && len >= VNET_HDR_LEN {
                    frames += 1;
                    bytes += (len - VNET_HDR_LEN) as u64;
                }
            }
            if !stopping {
                // SAFETY: as above.
                unsafe { ring.submission().push(&read(i)) }
                    .map_err(|_| Error::Backend("io_uring queue full".into()))?;
                inflight += 1;
            }
        }
    }
    Ok(Counts {
        frames,
        bytes,
        seconds: duration.as_secs_f64(),
        notifications: 0,
    })
}
