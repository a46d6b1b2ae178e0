// SPDX-License-Identifier: Apache-2.0
//! The host side of the NIC: a TAP interface for plain frames
//! ([`Tap::open_plain`], the type the virtio-net backends use too) as the
//! NIC's transmit sink, and the thread (`e1000-rx`) that reads frames from it
//! into the guest's receive ring (and stops reading while the VM is paused).

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
use crate::devices::pause::{PauseGate, ACK_TIMEOUT};
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
    gate: Arc<PauseGate>,
    handle: Option<JoinHandle<()>>,
}

impl RxThread {
    /// Starts reading `tap` into `dev`.
    pub fn spawn(mut tap: Tap, dev: Arc<Mutex<E1000PciDevice>>) -> Result<Self, NetError> {
        let stop =
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(NetError::Thread)?;
        let stop2 = stop.try_clone().map_err(NetError::Thread)?;
        let gate = Arc::new(PauseGate::new().map_err(NetError::Thread)?);
        let gate2 = gate.clone();
        let handle = std::thread::Builder::new()
            .name("e1000-rx".into())
            .spawn(move || {
                backends::seccomp::install_or_exit(VmmThread::E1000Rx);
                if let Err(e) = rx_loop(&mut tap, &dev, &stop2, &gate2) {
                    tracing::error!("e1000-rx stopped: {e}");
                }
                gate2.close();
            })
            .map_err(NetError::Thread)?;
        Ok(Self {
            stop,
            gate,
            handle: Some(handle),
        })
    }

    /// Stops (`true`) or resumes reading the TAP; frames wait in the TAP's
    /// queue meanwhile. `false` if the thread did not confirm in time.
    pub fn set_paused(&self, paused: bool) -> bool {
        self.gate.request(paused, ACK_TIMEOUT)
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
    tap: &mut Tap,
    dev: &Arc<Mutex<E1000PciDevice>>,
    stop: &EventFd,
    gate: &PauseGate,
) -> std::io::Result<()> {
    const TAP: u64 = 0;
    const STOP: u64 = 1;
    const GATE: u64 = 2;
    let epoll = Epoll::new()?;
    for (fd, token) in [
        (tap.as_raw_fd(), TAP),
        (stop.as_raw_fd(), STOP),
        (gate.eventfd().as_raw_fd(), GATE),
    ] {
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )?;
    }
    let mut buf = vec![0u8; MAX_FRAME];
    let mut events = [EpollEvent::default(); 3];
    let mut paused = false;
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if events[..n].iter().any(|e| e.data() == STOP) {
            return Ok(());
        }
        if events[..n].iter().any(|e| e.data() == GATE) {
            let want = gate.wanted();
            if want != paused {
                let (op, ev) = if want {
                    (ControlOperation::Delete, EpollEvent::default())
                } else {
                    (ControlOperation::Add, EpollEvent::new(EventSet::IN, TAP))
                };
                epoll.ctl(op, tap.as_raw_fd(), ev)?;
                paused = want;
            }
            gate.acknowledge(paused);
        }
        if paused {
            continue;
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
