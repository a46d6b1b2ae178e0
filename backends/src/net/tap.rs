// SPDX-License-Identifier: Apache-2.0
//! A TAP queue file descriptor: with a virtio-net header (`IFF_VNET_HDR`)
//! for the virtio-net backends, or plain Ethernet frames for an emulated NIC.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use virtio_bindings::virtio_net::*;

use super::{has, VNET_HDR_LEN};
use crate::{Error, Result};

/// One queue of a TAP interface (`IFF_TAP | IFF_NO_PI`, plus `IFF_VNET_HDR`
/// for virtio-net and `IFF_MULTI_QUEUE` when the device has several queue pairs).
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// `struct ifreq` as far as TUNSETIFF / SIOCSIFMTU use it (name + a union of at most 24 bytes).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> Result<IfReq> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(Error::InvalidConfig(format!("bad interface name {name:?}")));
        }
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        Ok(req)
    }
}

fn tap_err<'a>(name: &'a str, op: &'static str) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Tap {
        name: name.to_string(),
        op,
        source,
    }
}

impl Tap {
    /// Create the TAP `name` or attach to an existing one (one more queue when
    /// `multi_queue`), with a 12-byte vnet header. The fd stays blocking: io_uring polls it.
    pub fn open(name: &str, multi_queue: bool) -> Result<Tap> {
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        let tap = Self::create(name, flags, 0)?;
        let hdr = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer.
        let rc = unsafe { libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr) };
        if rc < 0 {
            return Err(tap_err(name, "TUNSETVNETHDRSZ")(io::Error::last_os_error()));
        }
        // Until the driver acks features, offer it plain frames only.
        tap.set_offload(0)?;
        Ok(tap)
    }

    /// Create the TAP `name` or attach to an existing one for plain Ethernet
    /// frames (no virtio-net header), non-blocking: for an emulated NIC that
    /// reads and writes whole frames itself.
    pub fn open_plain(name: &str) -> Result<Tap> {
        Self::create(name, libc::IFF_TAP | libc::IFF_NO_PI, libc::O_NONBLOCK)
    }

    /// Opens /dev/net/tun (with `open_flags` besides read/write) and binds it
    /// to the interface `name` with `TUNSETIFF` `flags`.
    fn create(name: &str, flags: libc::c_int, open_flags: libc::c_int) -> Result<Tap> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(open_flags)
            .open("/dev/net/tun")
            .map_err(tap_err(name, "open /dev/net/tun"))?;
        let mut req = IfReq::new(name)?;
        req.data[..2].copy_from_slice(&(flags as u16).to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is laid out as
        // (and is large enough for); the fd is ours.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            return Err(tap_err(name, "TUNSETIFF")(io::Error::last_os_error()));
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    /// A second handle on the same queue (for a reader thread).
    pub fn try_clone(&self) -> Result<Tap> {
        let file = self.file.try_clone().map_err(tap_err(&self.name, "dup"))?;
        Ok(Tap {
            file,
            name: self.name.clone(),
        })
    }

    /// Keep the interface when its last queue is closed (`TUNSETPERSIST`), or not: a persistent
    /// TAP survives the backend process, and `ip link del` removes it.
    pub fn set_persistent(&self, persistent: bool) -> Result<()> {
        // SAFETY: TUNSETPERSIST takes its argument by value.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETPERSIST,
                libc::c_ulong::from(persistent),
            )
        };
        if rc < 0 {
            return Err(tap_err(&self.name, "TUNSETPERSIST")(
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `TUNSETOFFLOAD` matching the receive offloads the driver accepted
    /// (GUEST_CSUM → TUN_F_CSUM, GUEST_TSO4/6 → TUN_F_TSO4/6, GUEST_ECN → TUN_F_TSO_ECN).
    pub fn set_offload(&self, guest_features: u64) -> Result<()> {
        let flags = tun_offload_flags(guest_features);
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            return Err(tap_err(&self.name, "TUNSETOFFLOAD")(
                io::Error::last_os_error(),
            ));
        }
        tracing::debug!(tap = %self.name, flags, "TAP offloads set");
        Ok(())
    }

    /// Whether the TAP accepts the checksum and TSO offloads (`TUNSETOFFLOAD` with
    /// `TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6`); leaves the offloads off afterwards.
    pub fn offloads_supported(&self) -> bool {
        let all = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(all),
            )
        };
        let ok = rc == 0;
        if let Err(e) = self.set_offload(0) {
            tracing::warn!("{e}");
            return false;
        }
        ok
    }

    /// Attach this queue to the interface or detach it (`TUNSETQUEUE`): the kernel steers
    /// frames only to attached queues. Only for queues opened with `multi_queue`.
    pub fn set_attached(&self, attached: bool) -> Result<()> {
        let mut req = IfReq::new(&self.name)?;
        let flags = if attached {
            libc::IFF_ATTACH_QUEUE
        } else {
            libc::IFF_DETACH_QUEUE
        };
        req.data[..2].copy_from_slice(&(flags as u16).to_ne_bytes());
        // SAFETY: TUNSETQUEUE reads one `struct ifreq` (only its flags), which `req` is laid
        // out as; the fd is ours.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETQUEUE, &mut req) };
        if rc < 0 {
            return Err(tap_err(&self.name, "TUNSETQUEUE")(
                io::Error::last_os_error(),
            ));
        }
        tracing::debug!(tap = %self.name, attached, "TAP queue attach state set");
        Ok(())
    }

    /// Set the interface MTU (`SIOCSIFMTU`).
    pub fn set_mtu(&self, mtu: u16) -> Result<()> {
        let mut req = IfReq::new(&self.name)?;
        req.data[..4].copy_from_slice(&i32::from(mtu).to_ne_bytes());
        // SAFETY: plain socket creation; the fd is wrapped at once.
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if sock < 0 {
            return Err(tap_err(&self.name, "socket")(io::Error::last_os_error()));
        }
        // SAFETY: `sock` is a fresh fd owned by nobody else.
        let sock = unsafe { OwnedFd::from_raw_fd(sock) };
        // SAFETY: SIOCSIFMTU reads one `struct ifreq` (name + int mtu).
        let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU, &mut req) };
        if rc < 0 {
            return Err(tap_err(&self.name, "SIOCSIFMTU")(io::Error::last_os_error()));
        }
        Ok(())
    }
}

/// Reads one frame (with its virtio-net header when opened with [`Tap::open`]).
impl Read for Tap {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

/// Writes one frame (with its virtio-net header when opened with [`Tap::open`]).
impl Write for Tap {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// TUN offload flags for the negotiated guest receive offloads.
pub fn tun_offload_flags(features: u64) -> libc::c_uint {
    let mut flags = 0;
    if has(features, VIRTIO_NET_F_GUEST_CSUM) {
        flags |= libc::TUN_F_CSUM;
        if has(features, VIRTIO_NET_F_GUEST_TSO4) {
            flags |= libc::TUN_F_TSO4;
        }
        if has(features, VIRTIO_NET_F_GUEST_TSO6) {
            flags |= libc::TUN_F_TSO6;
        }
        if has(features, VIRTIO_NET_F_GUEST_ECN)
            && flags & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0
        {
            flags |= libc::TUN_F_TSO_ECN;
        }
    }
    flags
}
