// SPDX-License-Identifier: Apache-2.0
//! A thread per vhost-user device that notices the backend hanging up and, with reconnecting
//! on, connects again every `reconnect_ms` until a backend listens (then the device checks
//! it serves the same device and replays its setup) or `reconnect_timeout_s` passed (then
//! the device is marked DEVICE_NEEDS_RESET). With reconnecting off, a hangup marks the
//! device DEVICE_NEEDS_RESET at once. None of this runs on a vCPU thread: connecting (and
//! waiting) happens without the device lock, which is taken only to hand a new connection
//! over.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use super::connection::{BackendTarget, Connection};
use super::link::ReconnectError;
use crate::devices::bus::lock;
use crate::devices::virtio::{VirtioError, VirtioPciDevice};
use crate::seccomp::VmmThread;

/// Watches a device's backend connection, reconnects it, or reports it lost.
pub struct Supervisor {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Supervisor {
    /// Starts a thread named `name` for the device, if it has a backend connection.
    pub fn spawn(
        dev: &Arc<Mutex<VirtioPciDevice>>,
        name: String,
    ) -> Result<Option<Self>, VirtioError> {
        let Some(fd) = lock(dev).hangup_fd() else {
            return Ok(None);
        };
        let stop = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(VirtioError::Io)?;
        let stop_fd = stop.try_clone().map_err(VirtioError::Io)?;
        let dev = dev.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                backends::seccomp::install_or_exit(VmmThread::Monitor);
                supervise(&dev, fd, &stop_fd)
            })
            .map_err(VirtioError::Io)?;
        Ok(Some(Self {
            stop,
            thread: Some(thread),
        }))
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What waiting on the backend's socket ended with.
#[derive(Debug, PartialEq, Eq)]
enum Wait {
    /// The supervisor is being stopped.
    Stop,
    /// The socket hung up.
    Hangup,
    /// The time ran out.
    Timeout,
}

/// Polls `fd` for a hangup (if given) and `stop`, for `timeout` (forever if `None`).
fn wait(fd: Option<RawFd>, stop: &EventFd, timeout: Option<Duration>) -> Wait {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut fds = [
        libc::pollfd {
            fd: stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: fd.unwrap_or(-1),
            events: libc::POLLRDHUP,
            revents: 0,
        },
    ];
    loop {
        let ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                i32::try_from(left.as_millis()).unwrap_or(i32::MAX)
            }
        };
        // SAFETY: two valid pollfds (a negative fd is ignored); both descriptors outlive the
        // call (the device and the supervisor are dropped after the thread is joined).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Wait::Stop;
        }
        if fds[0].revents != 0 {
            return Wait::Stop;
        }
        let hup = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
        if fds[1].revents & hup != 0 {
            return Wait::Hangup;
        }
        if n == 0 {
            return Wait::Timeout;
        }
    }
}

/// The thread: watch, and on each hangup reconnect (or give the device up).
fn supervise(dev: &Arc<Mutex<VirtioPciDevice>>, mut fd: RawFd, stop: &EventFd) {
    loop {
        if wait(Some(fd), stop, None) != Wait::Hangup {
            return;
        }
        let Some(target) = lock(dev).backend_lost() else {
            return;
        };
        match reconnect(dev, &target, stop) {
            Some(new_fd) => fd = new_fd,
            None => return,
        }
    }
}

/// Connects every `reconnect.interval` until a backend takes the device over (its socket is
/// returned) or the device gives up (`None`, also when the supervisor is stopped).
fn reconnect(
    dev: &Arc<Mutex<VirtioPciDevice>>,
    target: &BackendTarget,
    stop: &EventFd,
) -> Option<RawFd> {
    let policy = target.reconnect;
    let started = Instant::now();
    let mut attempts = 0u32;
    loop {
        if wait(None, stop, Some(policy.interval)) == Wait::Stop {
            return None;
        }
        attempts += 1;
        let failed = match Connection::open(target) {
            Ok(conn) => {
                let fd = conn.hangup_fd();
                let mut d = lock(dev);
                match d.reconnected(conn) {
                    Ok(()) => {
                        tracing::info!(
                            "{}: reconnected after {:.1} s ({attempts} attempt(s)); setup \
                             replayed",
                            target.name,
                            started.elapsed().as_secs_f64()
                        );
                        return Some(fd);
                    }
                    Err(ReconnectError::Refused(why)) => {
                        d.give_up(&format!("reconnect refused: {why}"));
                        return None;
                    }
                    Err(ReconnectError::Lost(e)) => e,
                }
            }
            Err(e) => e,
        };
        tracing::debug!("{}: reconnect attempt {attempts}: {failed}", target.name);
        if started.elapsed() >= policy.timeout {
            lock(dev).give_up(&format!(
                "backend did not come back within {} s ({failed})",
                policy.timeout.as_secs()
            ));
            return None;
        }
    }
}
