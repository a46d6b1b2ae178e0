//! The host side of the NIC: a TAP interface for plain frames
//! ([`Tap::open_plain`], the type the virtio-net backends use too) as the
//! NIC's transmit sink, and the thread (`e1000-rx`) that reads frames from it
//! into the guest's receive ring.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use backends::net::Tap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::nic::{NetSink, MAX_FRAME};
use super::pci::E1000PciDevice;
use super::NetError;
use crate::devices::bus::lock;
use crate::seccomp::VmmThread;

impl NetSink for Tap {
    fn send(&mut self, frame: &[u8]) {
        if let Err(e) = self.write(frame) {
            tracing::debug!(
                "tap {}: frame of {} bytes dropped: {e}",
                self.name(),
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
    pub fn spawn(mut tap: Tap, dev: Arc<Mutex<E1000PciDevice>>) -> Result<Self, NetError> {
        let stop =
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(NetError::Thread)?;
        let stop2 = stop.try_clone().map_err(NetError::Thread)?;
        let handle = std::thread::Builder::new()
            .name("e1000-rx".into())
            .spawn(move || {
                backends::seccomp::install_or_exit(VmmThread::E1000Rx);
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

fn rx_loop(tap: &mut Tap, dev: &Arc<Mutex<E1000PciDevice>>, stop: &EventFd) -> std::io::Result<()> {
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
