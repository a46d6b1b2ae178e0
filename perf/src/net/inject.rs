// SPDX-License-Identifier: Apache-2.0
//! Receive traffic: an `AF_PACKET` socket on the TAP (inside the benchmark's namespace) sends
//! the test frame as fast as it can, `sendmmsg` 64 at a time, with a `virtio_net_hdr`
//! (`PACKET_VNET_HDR`) so a 64 KiB TSO frame leaves the stack as one GSO packet. The kernel
//! queues the frames for the TAP's reader (our backend or the raw reader) and drops what does
//! not fit (the TAP's `tx_dropped`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use backends::net::VNET_HDR_LEN;

use super::frame::{self, FrameKind};
use crate::{io_err, Error, Result};

/// `PACKET_VNET_HDR` (linux/if_packet.h): frames carry a 10-byte `virtio_net_hdr`.
const PACKET_VNET_HDR: libc::c_int = 15;
/// `PACKET_QDISC_BYPASS`: hand frames straight to the driver.
const PACKET_QDISC_BYPASS: libc::c_int = 20;
/// `virtio_net_hdr` without `num_buffers`.
const PACKET_HDR_LEN: usize = 10;
const BURST: usize = 64;

/// A running sender thread.
pub struct Injector {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<u64>>,
}

fn setsockopt(fd: &OwnedFd, level: libc::c_int, opt: libc::c_int, val: libc::c_int) -> Result<()> {
    // SAFETY: the option value is one int read by the kernel.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&val as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io_err(format!("setsockopt {level}/{opt}"))(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

impl Injector {
    /// Open the socket on interface `ifindex` (in the calling thread's namespace) and start
    /// sending frames of `kind`.
    pub fn start(ifindex: u32, kind: FrameKind) -> Result<Injector> {
        let proto = (libc::ETH_P_IP as u16).to_be();
        // SAFETY: plain socket creation; wrapped at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                0, // send only: no protocol, so nothing is queued for reception
            )
        };
        if fd < 0 {
            return Err(io_err("AF_PACKET socket")(std::io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor owned by nothing else.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        setsockopt(&sock, libc::SOL_PACKET, PACKET_VNET_HDR, 1)?;
        setsockopt(&sock, libc::SOL_PACKET, PACKET_QDISC_BYPASS, 1)?;
        setsockopt(&sock, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 8 << 20)?;
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: SO_SNDTIMEO reads one timeval.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        // SAFETY: sockaddr_ll is plain data (all-zero is valid).
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex =
            i32::try_from(ifindex).map_err(|_| Error::Backend(format!("ifindex {ifindex}")))?;
        // SAFETY: binds to a fully initialised sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io_err("bind AF_PACKET")(std::io::Error::last_os_error()));
        }
        let wire = frame::build(kind);
        // The socket's header is the 10-byte `virtio_net_hdr`: drop `num_buffers`.
        let mut buf = wire[..PACKET_HDR_LEN].to_vec();
        buf.extend_from_slice(&wire[VNET_HDR_LEN..]);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("net-inject".into())
            .spawn(move || send_loop(&sock, &buf, &flag))
            .map_err(io_err("spawn injector"))?;
        Ok(Injector { stop, thread })
    }

    /// Stop sending; returns the frames the socket accepted.
    pub fn stop(self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| Error::Backend("injector thread panicked".into()))?
    }
}

fn send_loop(sock: &OwnedFd, buf: &[u8], stop: &AtomicBool) -> Result<u64> {
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: mmsghdr is plain data (all-zero is valid).
    let mut msgs: Vec<libc::mmsghdr> = (0..BURST).map(|_| unsafe { std::mem::zeroed() }).collect();
    for m in &mut msgs {
        m.msg_hdr.msg_iov = &mut iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `msgs` holds BURST initialised headers pointing at `iov`/`buf`, which
        // outlive the call; the kernel only reads them (and writes msg_len).
        let n = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                BURST as libc::c_uint,
                0,
            )
        };
        if n >= 0 {
            sent += n as u64;
            continue;
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR) => std::thread::yield_now(),
            _ => return Err(io_err("sendmmsg on the TAP")(e)),
        }
    }
    Ok(sent)
}
