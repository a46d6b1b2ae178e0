// SPDX-License-Identifier: Apache-2.0
//! The benchmark's own network namespace and its sink TAP.
//!
//! [`Netns::enter`] moves the calling thread into a fresh, unnamed network namespace
//! (`unshare(CLONE_NEWNET)`); threads and processes it starts afterwards inherit it, so the
//! backend opens the TAP by name in there. The namespace dies with its last user: nothing is
//! left behind if the benchmark is killed. [`SinkTap`] is a persistent single-queue TAP in it
//! (so our backend and the raw writer can attach one after the other), up, without addresses
//! and with IPv6 off: frames written to it are counted (`rx_*`) and dropped by the kernel as
//! addressed to another host.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use backends::net::Tap;
use serde::Serialize;

use crate::{io_err, Error, Result};

/// Why the benchmark cannot run here, if it cannot (root and `/dev/net/tun` are needed).
pub fn preflight() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (creates a network namespace and a TAP): run it with sudo".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing (load the tun module: modprobe tun)".into());
    }
    None
}

/// The calling thread's stay in a fresh network namespace; dropping it returns the thread
/// to the namespace it came from.
pub struct Netns {
    orig: File,
}

impl Netns {
    /// Move the calling thread into a new network namespace.
    pub fn enter() -> Result<Netns> {
        let orig = File::open("/proc/thread-self/ns/net")
            .map_err(io_err("open /proc/thread-self/ns/net"))?;
        // SAFETY: unshare only changes this thread's namespace membership.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(io_err("unshare(CLONE_NEWNET)")(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Netns { orig })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // SAFETY: setns with a namespace fd we opened; affects this thread only.
        if unsafe { libc::setns(self.orig.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            tracing::warn!(
                "cannot return to the original network namespace: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Interface counters of the TAP (the kernel's view: `rx` = frames written into the TAP by
/// its user, `tx` = frames the kernel queued for its user to read).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TapCounters {
    /// Frames written to the TAP that the kernel took.
    pub rx_packets: u64,
    /// Their bytes (Ethernet frames, no virtio header).
    pub rx_bytes: u64,
    /// Frames written to the TAP that the kernel dropped.
    pub rx_dropped: u64,
    /// Frames read from the TAP by its user.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Frames the kernel dropped because the TAP's queue was full.
    pub tx_dropped: u64,
}

impl TapCounters {
    /// Counter increase from `before` to `self`.
    pub fn since(&self, before: &TapCounters) -> TapCounters {
        TapCounters {
            rx_packets: self.rx_packets.wrapping_sub(before.rx_packets),
            rx_bytes: self.rx_bytes.wrapping_sub(before.rx_bytes),
            rx_dropped: self.rx_dropped.wrapping_sub(before.rx_dropped),
            tx_packets: self.tx_packets.wrapping_sub(before.tx_packets),
            tx_bytes: self.tx_bytes.wrapping_sub(before.tx_bytes),
            tx_dropped: self.tx_dropped.wrapping_sub(before.tx_dropped),
        }
    }
}

/// Parse the line of interface `name` in `/proc/net/dev` format.
fn parse_net_dev(text: &str, name: &str) -> Option<TapCounters> {
    let line = text.lines().find_map(|l| {
        let (dev, rest) = l.split_once(':')?;
        (dev.trim() == name).then_some(rest)
    })?;
    let v: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    // rx: bytes packets errs drop fifo frame compressed multicast; tx: bytes packets errs drop …
    if v.len() < 12 {
        return None;
    }
    Some(TapCounters {
        rx_bytes: v[0],
        rx_packets: v[1],
        rx_dropped: v[3],
        tx_bytes: v[8],
        tx_packets: v[9],
        tx_dropped: v[11],
    })
}

/// A persistent TAP in the benchmark's namespace; removed on drop.
pub struct SinkTap {
    name: String,
}

fn ioctl_err(what: &str) -> Error {
    io_err(what.to_string())(std::io::Error::last_os_error())
}

impl SinkTap {
    /// Create TAP `name` (single queue, vnet header), make it persistent, switch IPv6 off on
    /// it and bring it up. Call from a thread inside the benchmark's namespace.
    pub fn create(name: &str) -> Result<SinkTap> {
        let tap = Tap::open(name, false).map_err(|e| Error::Backend(format!("TAP: {e}")))?;
        // SAFETY: TUNSETPERSIST takes an int by value; the fd is a live TAP queue.
        if unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } != 0 {
            return Err(ioctl_err("TUNSETPERSIST"));
        }
        let sink = SinkTap {
            name: name.to_string(),
        };
        drop(tap);
        // No IPv6 autoconfiguration: no router solicitations or MLD reports out of the TAP.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
        sink.set_up()?;
        Ok(sink)
    }

    /// Interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn set_up(&self) -> Result<()> {
        // SAFETY: plain socket creation; wrapped at once.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(ioctl_err("socket"));
        }
        // SAFETY: a fresh descriptor owned by nothing else.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ifreq is plain data (all-zero is valid).
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(self.name.bytes()) {
            *d = s as libc::c_char;
        }
        // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write one `struct ifreq`.
        unsafe {
            if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) != 0 {
                return Err(ioctl_err("SIOCGIFFLAGS"));
            }
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) != 0 {
                return Err(ioctl_err("SIOCSIFFLAGS"));
            }
        }
        Ok(())
    }

    /// Open a queue of the TAP, waiting up to 3 s while another user still holds it (a
    /// process's io_uring with a read outstanding on the TAP is torn down asynchronously
    /// after the process exits).
    fn open_queue(&self) -> Result<Tap> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            match Tap::open(&self.name, false) {
                Ok(tap) => return Ok(tap),
                Err(backends::Error::Tap { source, .. })
                    if source.raw_os_error() == Some(libc::EBUSY)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(Error::Backend(format!("TAP: {e}"))),
            }
        }
    }

    /// Wait until nobody is attached to the TAP (before starting a backend on it).
    pub fn wait_free(&self) -> Result<()> {
        self.open_queue().map(drop)
    }

    /// Attach one queue with a 12-byte vnet header and the TUN offloads that `features`
    /// (virtio-net feature bits) imply — what our backend does when the driver acks them.
    pub fn attach(&self, features: u64) -> Result<Tap> {
        let tap = self.open_queue()?;
        tap.set_offload(features)
            .map_err(|e| Error::Backend(format!("TAP: {e}")))?;
        Ok(tap)
    }

    /// Interface index.
    pub fn ifindex(&self) -> Result<u32> {
        let name = std::ffi::CString::new(self.name.as_str())
            .map_err(|_| Error::Usage(format!("bad interface name {:?}", self.name)))?;
        // SAFETY: a valid NUL-terminated name.
        match unsafe { libc::if_nametoindex(name.as_ptr()) } {
            0 => Err(ioctl_err("if_nametoindex")),
            i => Ok(i),
        }
    }

    /// Current counters (`/proc/thread-self/net/dev`: this thread's namespace).
    pub fn counters(&self) -> Result<TapCounters> {
        let text = std::fs::read_to_string("/proc/thread-self/net/dev")
            .map_err(io_err("read /proc/thread-self/net/dev"))?;
        parse_net_dev(&text, &self.name)
            .ok_or_else(|| Error::Backend(format!("{} not in /proc/net/dev", self.name)))
    }
}

impl Drop for SinkTap {
    fn drop(&mut self) {
        match self.open_queue() {
            // SAFETY: TUNSETPERSIST takes an int by value; the fd is a live TAP queue.
            Ok(tap) => unsafe {
                libc::ioctl(tap.as_raw_fd(), libc::TUNSETPERSIST, 0 as libc::c_ulong);
            },
            Err(e) => tracing::warn!("removing {}: {e}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0
vperf0: 6400 100 0 2 0 0 0 0 1514 1 0 7 0 0 0 0
";
        let c = parse_net_dev(text, "vperf0").unwrap();
        assert_eq!(
            c,
            TapCounters {
                rx_bytes: 6400,
                rx_packets: 100,
                rx_dropped: 2,
                tx_bytes: 1514,
                tx_packets: 1,
                tx_dropped: 7,
            }
        );
        assert!(parse_net_dev(text, "vperf").is_none());
        let later = TapCounters {
            rx_packets: 150,
            ..c
        };
        assert_eq!(later.since(&c).rx_packets, 50);
    }
}
