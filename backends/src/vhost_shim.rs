// SPDX-License-Identifier: Apache-2.0
//! A message-level relay between a vhost-user frontend and the vhost-user-backend daemon that
//! tolerates one frontend ordering the `vhost` crate refuses.
//!
//! QEMU's vhost-user netdev (7.2) enables the rings of queue pair 0 while realizing the
//! device (`SET_VRING_ENABLE` before `SET_FEATURES`); the `vhost` crate answers that with
//! `InactiveFeature` and drops the connection. QEMU does not repeat the request after
//! `SET_FEATURES` (`vhost_net_start` restores the enable state before `vhost_dev_start`), so
//! the relay holds early ones back (acking them if the frontend asked for a reply) and
//! replays the last state of each ring right after forwarding `SET_FEATURES`. Everything
//! else, including file descriptors in either direction (`GET_INFLIGHT_FD` answers with one),
//! is passed through unchanged.
//!
//! One relay per frontend connection ([`relay`]): the daemon serves the other end of a socket
//! pair, so successive frontends each get a fresh relay.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::seccomp::{self, net::NetThread};

const HDR_LEN: usize = 12;
const SET_FEATURES: u32 = 2;
const SET_VRING_ENABLE: u32 = 18;
const FLAG_VERSION: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
const PROTOCOL_FEATURES_BIT: u64 = 1 << 30;
/// Largest payload accepted (the biggest vhost-user message is far below).
const MAX_PAYLOAD: usize = 4096;
const MAX_FDS: usize = 32;

/// Relay the frontend connection `front`: returns the end of a new socket pair for the daemon
/// to serve; threads pass messages between the two until either side closes.
pub fn relay(front: UnixStream) -> io::Result<UnixStream> {
    let (daemon_end, back) = UnixStream::pair()?;
    let (back_r, front_w) = (back.try_clone()?, front.try_clone()?);
    std::thread::Builder::new()
        .name("vu-relay-reply".into())
        .spawn(move || {
            seccomp::install_or_exit(NetThread::Relay);
            if let Err(e) = replies(&back_r, &front_w) {
                tracing::debug!("vhost-user relay (replies): {e}");
            }
            let _ = front_w.shutdown(Shutdown::Both);
        })?;
    std::thread::Builder::new()
        .name("vu-relay".into())
        .spawn(move || {
            seccomp::install_or_exit(NetThread::Relay);
            if let Err(e) = requests(&front, &back) {
                tracing::warn!("vhost-user relay: {e}");
            }
            let _ = back.shutdown(Shutdown::Both);
            let _ = front.shutdown(Shutdown::Both);
        })?;
    Ok(daemon_end)
}

/// One vhost-user message: header, payload and the descriptors that came with it.
struct Message {
    hdr: [u8; HDR_LEN],
    payload: Vec<u8>,
    files: Vec<File>,
}

impl Message {
    fn field(&self, at: usize) -> u32 {
        u32::from_le_bytes([
            self.hdr[at],
            self.hdr[at + 1],
            self.hdr[at + 2],
            self.hdr[at + 3],
        ])
    }

    fn request(&self) -> u32 {
        self.field(0)
    }

    fn flags(&self) -> u32 {
        self.field(4)
    }

    /// The first `u32` of the payload, and the second.
    fn words(&self) -> Option<(u32, u32)> {
        let p = self.payload.get(..8)?;
        Some((
            u32::from_le_bytes([p[0], p[1], p[2], p[3]]),
            u32::from_le_bytes([p[4], p[5], p[6], p[7]]),
        ))
    }
}

/// Read the next message from `from`; `None` once it closed.
fn read_message(from: &UnixStream) -> io::Result<Option<Message>> {
    let mut hdr = [0u8; HDR_LEN];
    let mut fds = [-1 as RawFd; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: hdr.as_mut_ptr().cast(),
        iov_len: HDR_LEN,
    }];
    // SAFETY: the iovec points at `hdr`, which may hold arbitrary bytes.
    let (n, nfds) = unsafe { from.recv_with_fds(&mut iov, &mut fds) }
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
    let mut reader = from;
    reader.read_exact(&mut hdr[n..])?;
    let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
    if size > MAX_PAYLOAD {
        return Err(io::Error::other(format!(
            "oversized message ({size} bytes)"
        )));
    }
    let mut payload = vec![0u8; size];
    reader.read_exact(&mut payload)?;
    Ok(Some(Message {
        hdr,
        payload,
        files,
    }))
}

/// Write `msg` (its descriptors with the first byte) to `to`.
fn write_message(to: &UnixStream, msg: &Message) -> io::Result<()> {
    let raw: Vec<RawFd> = msg.files.iter().map(|f| f.as_raw_fd()).collect();
    let total = HDR_LEN + msg.payload.len();
    let sent = to
        .send_with_fds(&[&msg.hdr[..], &msg.payload[..]], &raw)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    if sent < total {
        let mut rest = Vec::with_capacity(total);
        rest.extend_from_slice(&msg.hdr);
        rest.extend_from_slice(&msg.payload);
        let mut w = to;
        w.write_all(&rest[sent..])?;
    }
    Ok(())
}

/// `SET_VRING_ENABLE` of ring `index` to `num`, without asking for a reply.
fn vring_enable(index: u32, num: u32) -> Message {
    let mut hdr = [0u8; HDR_LEN];
    hdr[..4].copy_from_slice(&SET_VRING_ENABLE.to_le_bytes());
    hdr[4..8].copy_from_slice(&FLAG_VERSION.to_le_bytes());
    hdr[8..12].copy_from_slice(&8u32.to_le_bytes());
    Message {
        hdr,
        payload: [index.to_le_bytes(), num.to_le_bytes()].concat(),
        files: Vec::new(),
    }
}

/// The daemon's replies, passed through as they are.
fn replies(back: &UnixStream, front: &UnixStream) -> io::Result<()> {
    while let Some(msg) = read_message(back)? {
        write_message(front, &msg)?;
    }
    Ok(())
}

/// The frontend's requests, with early `SET_VRING_ENABLE`s held back until `SET_FEATURES`.
fn requests(front: &UnixStream, back: &UnixStream) -> io::Result<()> {
    let mut features_set = false;
    // (ring index, enable) held back until SET_FEATURES.
    let mut deferred: Vec<(u32, u32)> = Vec::new();
    while let Some(msg) = read_message(front)? {
        let request = msg.request();
        if request == SET_FEATURES && msg.payload.len() >= 8 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&msg.payload[..8]);
            features_set = u64::from_le_bytes(b) & PROTOCOL_FEATURES_BIT != 0;
        }
        if let (SET_VRING_ENABLE, false, Some((index, num))) = (request, features_set, msg.words())
        {
            tracing::debug!(
                index,
                num,
                "holding SET_VRING_ENABLE sent before SET_FEATURES"
            );
            match deferred.iter_mut().find(|(i, _)| *i == index) {
                Some(e) => e.1 = num,
                None => deferred.push((index, num)),
            }
            if msg.flags() & FLAG_NEED_REPLY != 0 {
                let mut reply = [0u8; HDR_LEN + 8];
                reply[..4].copy_from_slice(&request.to_le_bytes());
                reply[4..8].copy_from_slice(&(FLAG_VERSION | FLAG_REPLY).to_le_bytes());
                reply[8..12].copy_from_slice(&8u32.to_le_bytes());
                let mut w = front;
                w.write_all(&reply)?;
            }
            continue;
        }
        write_message(back, &msg)?;
        if request == SET_FEATURES && features_set {
            for (index, num) in deferred.drain(..) {
                tracing::debug!(index, num, "replaying SET_VRING_ENABLE");
                write_message(back, &vring_enable(index, num))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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

    /// Receive one message with its descriptors; returns (request, descriptor count).
    fn recv_with_fd(s: &UnixStream, len: usize) -> (u32, usize) {
        let mut buf = vec![0u8; len];
        let mut fds = [-1; 4];
        let mut iov = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }];
        // SAFETY: the iovec points at `buf`.
        let (n, nfds) = unsafe { s.recv_with_fds(&mut iov, &mut fds) }.unwrap();
        assert_eq!(n, len);
        for &fd in &fds[..nfds] {
            // SAFETY: the received descriptor is ours.
            drop(unsafe { File::from_raw_fd(fd) });
        }
        (u32::from_le_bytes(buf[..4].try_into().unwrap()), nfds)
    }

    #[test]
    fn early_vring_enable_is_held_and_replayed_after_set_features() {
        let (mut front, frontend_side) = UnixStream::pair().unwrap();
        let mut back = relay(frontend_side).unwrap();
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
        // A request with a file descriptor keeps it (SET_VRING_KICK = 12), and so does a
        // reply (GET_INFLIGHT_FD = 31 answers with the region's file).
        let (a, _b) = UnixStream::pair().unwrap();
        let kick = msg(12, 0, &0u64.to_le_bytes());
        front.send_with_fds(&[&kick[..]], &[a.as_raw_fd()]).unwrap();
        assert_eq!(recv_with_fd(&back, HDR_LEN + 8), (12, 1));
        let inflight = msg(31, FLAG_REPLY, &[0u8; 24]);
        back.send_with_fds(&[&inflight[..]], &[a.as_raw_fd()])
            .unwrap();
        assert_eq!(recv_with_fd(&front, HDR_LEN + 24), (31, 1));
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
        // The frontend hangs up: the daemon's end sees it, and the frontend's end closes.
        drop(front);
        let mut rest = Vec::new();
        let _ = back.read_to_end(&mut rest);
        assert!(rest.is_empty());
    }
}
