//! The host side of the NIC: a TAP interface (`IFF_TAP | IFF_NO_PI`) and the
//! thread (`e1000-rx`) that reads frames from it into the guest's receive ring.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::nic::{NetSink, MAX_FRAME};
use super::pci::E1000PciDevice;
use super::NetError;
use crate::devices::bus::lock;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// An open TAP interface.
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Opens (or creates) the TAP interface `name`.
    pub fn open(name: &str) -> Result<Self, NetError> {
        let err = |source| NetError::Tap {
            name: name.to_string(),
            source,
        };
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(err(std::io::Error::from_raw_os_error(libc::EINVAL)));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(err)?;
        // SAFETY: ifreq is plain data; zero is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one ifreq, which outlives the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut ifr) };
        if rc < 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        Ok(Self {
            file,
            name: name.to_string(),
        })
    }

    /// Interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A second handle for the reader thread.
    pub fn try_clone(&self) -> std::io::Result<File> {
        self.file.try_clone()
    }
}

impl NetSink for Tap {
    fn send(&mut self, frame: &[u8]) {
        if let Err(e) = self.file.write(frame) {
            tracing::debug!(
                "tap {}: frame of {} bytes dropped: {e}",
                self.name,
                frame.len()
            );
        }
    }
}

/// The reader thread; stopped through its eventfd when dropped.
pub struct RxThread {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl RxThread {
    /// Starts reading `tap` into `dev`.
    pub fn spawn(mut tap: File, dev: Arc<Mutex<E1000PciDevice>>) -> Result<Self, NetError> {
        let stop =
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(NetError::Thread)?;
        let stop2 = stop.try_clone().map_err(NetError::Thread)?;
        let handle = std::thread::Builder::new()
            .name("e1000-rx".into())
            .spawn(move || {
                if let Err(e) = rx_loop(&mut tap, &dev, &stop2) {
                    tracing::error!("e1000-rx stopped: {e}");
                }
            })
            .map_err(NetError::Thread)?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for RxThread {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn rx_loop(
    tap: &mut File,
    dev: &Arc<Mutex<E1000PciDevice>>,
    stop: &EventFd,
) -> std::io::Result<()> {
    let epoll = Epoll::new()?;
    epoll.ctl(
        ControlOperation::Add,
        tap.as_raw_fd(),
        EpollEvent::new(EventSet::IN, 0),
    )?;
    epoll.ctl(
        ControlOperation::Add,
        stop.as_raw_fd(),
        EpollEvent::new(EventSet::IN, 1),
    )?;
    let mut buf = vec![0u8; MAX_FRAME];
    let mut events = [EpollEvent::default(); 2];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if events[..n].iter().any(|e| e.data() == 1) {
            return Ok(());
        }
        loop {
            match tap.read(&mut buf) {
                Ok(0) => break,
                Ok(len) => lock(dev).receive(&buf[..len]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}
