// SPDX-License-Identifier: Apache-2.0
//! The vhost-user message sequences our backends receive, as a hostile frontend sends them:
//! framed messages (request code, flags, size, body) written to a connection that the
//! patched vhost-user-backend daemon serves with our virtio-blk backend (on a memfd disk)
//! or our virtio-net backend (link mode, no TAP). Messages that carry file descriptors get
//! stubs: a memfd for memory tables, memory regions, the log and the inflight region, an
//! eventfd for the vring kick, call and error descriptors, a socket for the backend request
//! channel. One daemon per backend serves one connection per input, as a backend serves
//! successive frontends; each connection ends with the frontend hanging up, which resets
//! the device.
//!
//! Input: one byte picks the backend, then frames of `[request] [flags] [size] [body...]`.

#![no_main]

use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use backends::blk::{BlkBackend, BlkOptions, Disk};
use backends::engine::Tuning;
use backends::net::{NetBackend, NetOptions, Port};
use backends::placement::Affinity;
use iovmm_fuzz::{memfd, Input};
use libfuzzer_sys::fuzz_target;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// Size of the memfd stubs handed over as guest memory, log and inflight region.
const STUB_LEN: u64 = 1 << 20;
/// How long one connection may take before the input counts as a hang.
const CONNECTION_LIMIT: Duration = Duration::from_secs(20);

/// A daemon thread: connections in, "served" notices out.
struct Served {
    connections: Mutex<SyncSender<UnixStream>>,
    done: Mutex<Receiver<()>>,
}

fn serve<T>(name: &'static str, daemon: VhostUserDaemon<T>) -> Served
where
    T: vhost_user_backend::VhostUserBackend + Clone + 'static,
    T::Bitmap: vhost_user_backend::bitmap::BitmapReplace
        + vm_memory::bitmap::Bitmap
        + vm_memory::mmap::NewBitmap
        + Clone
        + Send
        + Sync,
    T::Vring: Clone + Send + Sync,
{
    let (tx, rx) = sync_channel::<UnixStream>(0);
    let (done_tx, done_rx): (Sender<()>, Receiver<()>) = channel();
    let mut daemon = daemon;
    let spawned = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            for stream in rx {
                // Refused messages end the connection with an error: answers, not findings.
                if daemon.start_connection(stream).is_ok() {
                    let _ = daemon.wait();
                }
                if done_tx.send(()).is_err() {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        panic!("daemon thread (harness): {e}");
    }
    Served {
        connections: Mutex::new(tx),
        done: Mutex::new(done_rx),
    }
}

fn blk() -> &'static Served {
    static BLK: OnceLock<Served> = OnceLock::new();
    BLK.get_or_init(|| {
        let disk = Disk {
            file: memfd(1 << 20),
            path: "memfd".into(),
            size: 1 << 20,
            is_block_device: false,
        };
        let opts = BlkOptions {
            queues: 2,
            queue_size: 64,
            readonly: false,
            tuning: Tuning::default(),
            serial: "fuzz".into(),
            affinity: Affinity::default(),
        };
        let backend = match BlkBackend::new(disk, opts) {
            Ok(b) => Arc::new(b),
            Err(e) => panic!("blk backend (harness): {e}"),
        };
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let daemon = match VhostUserDaemon::new("fuzz-blk".into(), backend.clone(), mem) {
            Ok(d) => d,
            Err(e) => panic!("daemon (harness): {e}"),
        };
        for (q, handler) in daemon.get_epoll_handlers().iter().enumerate() {
            let Ok(fd) = backend.completion_fd(q) else {
                panic!("completion fd (harness)");
            };
            let registered = handler.register_listener(
                fd.as_raw_fd(),
                EventSet::IN,
                u64::from(backend.completion_event()),
            );
            assert!(registered.is_ok(), "listener (harness)");
            std::mem::forget(fd);
        }
        serve("fuzz-blk", daemon)
    })
}

fn net() -> &'static Served {
    static NET: OnceLock<Served> = OnceLock::new();
    NET.get_or_init(|| {
        // Link mode with the other ends of the wires kept here (frames sent are dropped).
        let mut ports = Vec::new();
        let mut peers = Vec::new();
        for _ in 0..2 {
            let (tx, peer_rx) = datagram_pair();
            let (peer_tx, rx) = datagram_pair();
            // SAFETY: F_GETFL/F_SETFL on a descriptor this harness owns.
            unsafe {
                let fl = libc::fcntl(tx.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(tx.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
            }
            ports.push((tx, rx));
            peers.push((peer_rx, peer_tx));
        }
        // The other ends stay open for the process life (frames sent to them are dropped).
        static PEERS: OnceLock<Vec<(OwnedFd, OwnedFd)>> = OnceLock::new();
        let _ = PEERS.set(peers);
        let opts = NetOptions {
            port: Port::Link(ports),
            mac: Some([0x52, 0x54, 0, 0, 0, 1]),
            mtu: 1500,
            queue_pairs: 2,
            queue_size: 64,
            tuning: Tuning::default(),
            affinity: Affinity::default(),
        };
        let backend = match NetBackend::new(opts) {
            Ok(b) => Arc::new(b),
            Err(e) => panic!("net backend (harness): {e}"),
        };
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let daemon = match VhostUserDaemon::new("fuzz-net".into(), backend.clone(), mem) {
            Ok(d) => d,
            Err(e) => panic!("daemon (harness): {e}"),
        };
        for (q, handler) in daemon.get_epoll_handlers().iter().enumerate() {
            let Ok((tx, rx)) = backend.completion_fds(q) else {
                panic!("completion fds (harness)");
            };
            let ev = u64::from(backend.tx_completion_event());
            for (fd, data) in [(&tx, ev), (&rx, ev + 1)] {
                let registered = handler.register_listener(fd.as_raw_fd(), EventSet::IN, data);
                assert!(registered.is_ok(), "listener (harness)");
            }
            std::mem::forget(tx);
            std::mem::forget(rx);
        }
        serve("fuzz-net", daemon)
    })
}

fn datagram_pair() -> (OwnedFd, OwnedFd) {
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

/// Stub descriptors for a message of type `request` with `body`, as the protocol says
/// that message carries them.
fn stubs(request: u8, body: &[u8]) -> Vec<OwnedFd> {
    let mem = || OwnedFd::from(memfd(STUB_LEN));
    let event = || match EventFd::new(libc::EFD_NONBLOCK) {
        // SAFETY: the duplicate is a fresh descriptor owned by nobody else.
        Ok(e) => unsafe { OwnedFd::from_raw_fd(libc::dup(e.as_raw_fd())) },
        Err(e) => panic!("eventfd (harness): {e}"),
    };
    match request {
        // SET_MEM_TABLE: one per region (the body's first word, at most 8).
        5 => {
            let n = body.first().map_or(0, |&n| usize::from(n).min(8));
            (0..n).map(|_| mem()).collect()
        }
        // SET_LOG_BASE, SET_INFLIGHT_FD, ADD_MEM_REG, SET_DEVICE_STATE_FD.
        6 | 32 | 37 | 42 => vec![mem()],
        // SET_VRING_KICK/CALL/ERR: one unless the body's "no fd" bit (8) is set.
        12..=14 => {
            if body.get(1).is_some_and(|b| b & 1 != 0) {
                Vec::new()
            } else {
                vec![event()]
            }
        }
        // SET_LOG_FD.
        7 => vec![event()],
        // SET_BACKEND_REQ_FD.
        21 => vec![datagram_pair().0],
        _ => Vec::new(),
    }
}

/// Send one frame with its descriptors (SCM_RIGHTS).
fn send(sock: &UnixStream, frame: &[u8], fds: &[OwnedFd]) -> bool {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let iov = [IoSlice::new(frame)];
    // Room for 8 descriptors.
    let mut cmsg = [0u64; 8];
    // SAFETY: msghdr is plain data; every pointer set below stays valid during sendmsg.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        let bytes = std::mem::size_of_val(raw.as_slice()) as u32;
        // SAFETY: CMSG_SPACE/CMSG_LEN only compute sizes.
        let (space, len) = unsafe { (libc::CMSG_SPACE(bytes), libc::CMSG_LEN(bytes)) };
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = space as usize;
        // SAFETY: the control buffer holds one header plus 8 descriptors; the header is
        // written in place and the descriptors copied after it.
        unsafe {
            let hdr = libc::CMSG_FIRSTHDR(&msg);
            (*hdr).cmsg_level = libc::SOL_SOCKET;
            (*hdr).cmsg_type = libc::SCM_RIGHTS;
            (*hdr).cmsg_len = len as usize;
            std::ptr::copy_nonoverlapping(raw.as_ptr(), libc::CMSG_DATA(hdr).cast(), raw.len());
        }
    }
    // SAFETY: `msg` points at live buffers for the duration of the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    n == frame.len() as isize
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let served = if input.u8() & 1 == 0 { blk() } else { net() };
    let (ours, theirs) = match UnixStream::pair() {
        Ok(p) => p,
        Err(e) => panic!("socket pair (harness): {e}"),
    };
    // Replies are never read: the socket buffer holds them, and the frontend hangs up last.
    let _ = ours.set_write_timeout(Some(Duration::from_secs(2)));
    if let Ok(conns) = served.connections.lock() {
        if conns.send(theirs).is_err() {
            panic!("daemon thread ended (harness)");
        }
    }
    while !input.is_empty() {
        let request = input.u8() % 45;
        let flags = input.u8();
        let size = usize::from(input.u8());
        let body = input.bytes(size);
        // Version 1 with the fuzzer's reply bits, or any flags at all (rarely).
        let flags = if flags & 0xf0 == 0xf0 {
            u32::from(flags)
        } else {
            0x1 | u32::from(flags & 0x8)
        };
        let mut frame = Vec::with_capacity(12 + size);
        frame.extend_from_slice(&u32::from(request).to_le_bytes());
        frame.extend_from_slice(&flags.to_le_bytes());
        frame.extend_from_slice(&(size as u32).to_le_bytes());
        frame.extend_from_slice(body);
        frame.resize(12 + size, 0);
        if !send(&ours, &frame, &stubs(request, body)) {
            break; // the backend ended the connection
        }
    }
    drop(ours);
    if let Ok(done) = served.done.lock() {
        if done.recv_timeout(CONNECTION_LIMIT).is_err() {
            panic!("the backend did not finish the connection in {CONNECTION_LIMIT:?}");
        }
    }
});
