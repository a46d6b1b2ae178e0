//! A message-level relay between a vhost-user frontend and the vhost-user-backend daemon that
//! tolerates one frontend ordering the `vhost` crate refuses.
//!
//! QEMU's vhost-user netdev (7.2) enables the rings of queue pair 0 while realizing the
//! device (`SET_VRING_ENABLE` before `SET_FEATURES`); the `vhost` crate answers that with
//! `InactiveFeature` and drops the connection. QEMU does not repeat the request after
//! `SET_FEATURES` (`vhost_net_start` restores the enable state before `vhost_dev_start`), so
//! the relay holds early ones back (acking them if the frontend asked for a reply) and
//! replays the last state of each ring right after forwarding `SET_FEATURES`. Everything
//! else, including file descriptors, is passed through unchanged.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const HDR_LEN: usize = 12;
const SET_FEATURES: u32 = 2;
const SET_VRING_ENABLE: u32 = 18;
const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
const PROTOCOL_FEATURES_BIT: u64 = 1 << 30;
/// Largest payload accepted from the frontend (the biggest vhost-user message is far below).
const MAX_PAYLOAD: usize = 4096;
const MAX_FDS: usize = 32;

/// Accept one frontend on `outer`, connect to the daemon listening on `inner` and relay until
/// either side closes. Returns once the frontend is accepted; the relay runs in threads.
pub fn relay_one(outer: &Path, inner: PathBuf) -> io::Result<JoinHandle<()>> {
    let _ = std::fs::remove_file(outer);
    let listener = UnixListener::bind(outer)?;
    std::thread::Builder::new()
        .name("vu-relay".into())
        .spawn(move || {
            if let Err(e) = run(listener, &inner) {
                tracing::warn!("vhost-user relay: {e}");
            }
        })
}

fn run(listener: UnixListener, inner: &Path) -> io::Result<()> {
    let (front, _) = listener.accept()?;
    drop(listener);
    let deadline = Instant::now() + Duration::from_secs(10);
    let back = loop {
        match UnixStream::connect(inner) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("waiting for the daemon socket: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    };
    // Replies: the daemon never sends file descriptors for the protocol features offered.
    let (mut back_r, mut front_w) = (back.try_clone()?, front.try_clone()?);
    let replies = std::thread::Builder::new()
        .name("vu-relay-reply".into())
        .spawn(move || {
            let _ = io::copy(&mut back_r, &mut front_w);
            let _ = front_w.shutdown(Shutdown::Both);
        })?;
    let res = requests(&front, &back);
    let _ = back.shutdown(Shutdown::Both);
    let _ = front.shutdown(Shutdown::Both);
    let _ = replies.join();
    res
}

/// One message read from the frontend: its header fields, and the
/// descriptors that came with it (closed once forwarded).
struct Message {
    request: u32,
    flags: u32,
    size: usize,
    files: Vec<File>,
}

fn requests(front: &UnixStream, back: &UnixStream) -> io::Result<()> {
    let mut features_set = false;
    // (ring index, enable) held back until SET_FEATURES.
    let mut deferred: Vec<(u32, u32)> = Vec::new();
    let mut hdr = [0u8; HDR_LEN];
    let mut payload = vec![0u8; MAX_PAYLOAD];
    loop {
        let Some(msg) = receive(front, &mut hdr, &mut payload)? else {
            return Ok(()); // frontend closed
        };
        let (request, size) = (msg.request, msg.size);
        if request == SET_FEATURES && size >= 8 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&payload[..8]);
            features_set = u64::from_le_bytes(b) & PROTOCOL_FEATURES_BIT != 0;
        }
        if request == SET_VRING_ENABLE && !features_set && size >= 8 {
            hold_vring_enable(front, &msg, &payload, &mut deferred)?;
            continue;
        }
        forward(back, &msg, &hdr, &payload[..size])?;
        if request == SET_FEATURES && features_set {
            replay_vring_enables(back, &mut deferred)?;
        }
    }
}

/// Reads one message (header, descriptors, payload) into `hdr` and
/// `payload`; `None` when the frontend closed.
fn receive(
    front: &UnixStream,
    hdr: &mut [u8; HDR_LEN],
    payload: &mut [u8],
) -> io::Result<Option<Message>> {
    let mut fds = [-1 as RawFd; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: hdr.as_mut_ptr().cast(),
        iov_len: HDR_LEN,
    }];
    // SAFETY: the iovec points at `hdr`, which may hold arbitrary bytes.
    let (n, nfds) = unsafe { front.recv_with_fds(&mut iov, &mut fds) }
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    // Own the received descriptors so they are closed after forwarding.
    let files: Vec<File> = fds[..nfds]
        .iter()
        // SAFETY: recv_with_fds handed these fresh descriptors to us.
        .map(|&fd| unsafe { File::from_raw_fd(fd) })
        .collect();
    if n == 0 {
        return Ok(None);
    }
    let mut front_r = front;
    front_r.read_exact(&mut hdr[n..])?;
    let request = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let flags = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
    let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
    if size > MAX_PAYLOAD {
        return Err(io::Error::other(format!(
            "oversized message {request} ({size} bytes)"
        )));
    }
    front_r.read_exact(&mut payload[..size])?;
    Ok(Some(Message {
        request,
        flags,
        size,
        files,
    }))
}

/// Notes an early SET_VRING_ENABLE in `deferred` (the last state per ring)
/// and acks it if the frontend asked for a reply.
fn hold_vring_enable(
    front: &UnixStream,
    msg: &Message,
    payload: &[u8],
    deferred: &mut Vec<(u32, u32)>,
) -> io::Result<()> {
    let index = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
    let num = u32::from_le_bytes([payload[4], payload[5], payload[6], payload[7]]);
    tracing::debug!(
        index,
        num,
        "holding SET_VRING_ENABLE sent before SET_FEATURES"
    );
    match deferred.iter_mut().find(|(i, _)| *i == index) {
        Some(e) => e.1 = num,
        None => deferred.push((index, num)),
    }
    if msg.flags & FLAG_NEED_REPLY != 0 {
        let mut reply = [0u8; HDR_LEN + 8];
        reply[..4].copy_from_slice(&msg.request.to_le_bytes());
        reply[4..8].copy_from_slice(&(FLAG_VERSION | FLAG_REPLY).to_le_bytes());
        reply[8..12].copy_from_slice(&8u32.to_le_bytes());
        let mut w = front;
        w.write_all(&reply)?;
    }
    Ok(())
}

/// Sends the message on to the daemon, descriptors with its first byte.
fn forward(back: &UnixStream, msg: &Message, hdr: &[u8], payload: &[u8]) -> io::Result<()> {
    let raw: Vec<RawFd> = msg.files.iter().map(|f| f.as_raw_fd()).collect();
    let bufs: [&[u8]; 2] = [hdr, payload];
    let total = hdr.len() + payload.len();
    let sent = back
        .send_with_fds(&bufs, &raw)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    if sent < total {
        // The descriptors went with the first byte; push the rest as plain data.
        let mut rest = Vec::with_capacity(total);
        rest.extend_from_slice(hdr);
        rest.extend_from_slice(payload);
        let mut w = back;
        w.write_all(&rest[sent..])?;
    }
    Ok(())
}

/// Replays the held SET_VRING_ENABLE state of each ring, right after SET_FEATURES.
fn replay_vring_enables(back: &UnixStream, deferred: &mut Vec<(u32, u32)>) -> io::Result<()> {
    for (index, num) in deferred.drain(..) {
        tracing::debug!(index, num, "replaying SET_VRING_ENABLE");
        let mut msg = [0u8; HDR_LEN + 8];
        msg[..4].copy_from_slice(&SET_VRING_ENABLE.to_le_bytes());
        msg[4..8].copy_from_slice(&FLAG_VERSION.to_le_bytes());
        msg[8..12].copy_from_slice(&8u32.to_le_bytes());
        msg[12..16].copy_from_slice(&index.to_le_bytes());
        msg[16..20].copy_from_slice(&num.to_le_bytes());
        let mut w = back;
        w.write_all(&msg)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(request: u32, flags: u32, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&request.to_le_bytes());
        m.extend_from_slice(&(flags | FLAG_VERSION).to_le_bytes());
        m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        m.extend_from_slice(payload);
        m
    }

    fn read_msg(s: &mut UnixStream) -> (u32, u32, Vec<u8>) {
        let mut hdr = [0u8; HDR_LEN];
        s.read_exact(&mut hdr).unwrap();
        let field = |i: usize| u32::from_le_bytes(hdr[i..i + 4].try_into().unwrap());
        let mut payload = vec![0u8; field(8) as usize];
        s.read_exact(&mut payload).unwrap();
        (field(0), field(4), payload)
    }

    fn vring_state(index: u32, num: u32) -> Vec<u8> {
        [index.to_le_bytes(), num.to_le_bytes()].concat()
    }

    #[test]
    fn early_vring_enable_is_held_and_replayed_after_set_features() {
        let dir = tempfile::tempdir().unwrap();
        let outer = dir.path().join("front.sock");
        let inner = dir.path().join("back.sock");
        let daemon = UnixListener::bind(&inner).unwrap();
        let relay = relay_one(&outer, inner).unwrap();
        let mut front = UnixStream::connect(&outer).unwrap();
        let (mut back, _) = daemon.accept().unwrap();
        back.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        front
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();

        // GET_FEATURES passes straight through.
        front.write_all(&msg(1, 0, &[])).unwrap();
        assert_eq!(read_msg(&mut back).0, 1);
        // Early enables: held; the one asking for a reply is acked by the relay.
        front
            .write_all(&msg(SET_VRING_ENABLE, 0, &vring_state(0, 1)))
            .unwrap();
        front
            .write_all(&msg(SET_VRING_ENABLE, FLAG_NEED_REPLY, &vring_state(1, 1)))
            .unwrap();
        let (req, flags, payload) = read_msg(&mut front);
        assert_eq!((req, flags & FLAG_REPLY), (SET_VRING_ENABLE, FLAG_REPLY));
        assert_eq!(payload, 0u64.to_le_bytes());
        // A message with a file descriptor keeps it (SET_VRING_KICK = 12).
        let (a, _b) = UnixStream::pair().unwrap();
        let hdr_and_payload = msg(12, 0, &0u64.to_le_bytes());
        front
            .send_with_fds(&[&hdr_and_payload[..]], &[a.as_raw_fd()])
            .unwrap();
        let mut buf = [0u8; HDR_LEN + 8];
        let mut fds = [-1; 4];
        let mut iov = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        // SAFETY: the iovec points at `buf`.
        let (n, nfds) = unsafe { back.recv_with_fds(&mut iov, &mut fds) }.unwrap();
        assert_eq!((n, nfds), (HDR_LEN + 8, 1));
        // SAFETY: the received descriptor is ours.
        drop(unsafe { File::from_raw_fd(fds[0]) });
        assert_eq!(u32::from_le_bytes(buf[..4].try_into().unwrap()), 12);
        // SET_FEATURES with PROTOCOL_FEATURES: forwarded, then the held states replayed.
        front
            .write_all(&msg(SET_FEATURES, 0, &PROTOCOL_FEATURES_BIT.to_le_bytes()))
            .unwrap();
        assert_eq!(read_msg(&mut back).0, SET_FEATURES);
        let mut replayed = vec![read_msg(&mut back), read_msg(&mut back)];
        replayed.sort_by_key(|m| m.2.clone());
        for (i, (req, flags, payload)) in replayed.into_iter().enumerate() {
            assert_eq!(req, SET_VRING_ENABLE);
            assert_eq!(flags & FLAG_NEED_REPLY, 0);
            assert_eq!(payload, vring_state(i as u32, 1));
        }
        // Later enables pass straight through.
        front
            .write_all(&msg(SET_VRING_ENABLE, 0, &vring_state(0, 0)))
            .unwrap();
        assert_eq!(read_msg(&mut back).2, vring_state(0, 0));
        drop(front);
        let mut rest = Vec::new();
        let _ = back.read_to_end(&mut rest);
        assert!(rest.is_empty());
        relay.join().unwrap();
    }
}
