//! A thread per vhost-user device that notices the backend hanging up and
//! tells the device (DEVICE_NEEDS_RESET + config interrupt); the VMM goes on.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::lock;
use crate::devices::virtio::{VirtioError, VirtioPciDevice};

/// Watches a device's backend connection and reports a hangup to the device.
pub struct HangupMonitor {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl HangupMonitor {
    /// Starts a thread named `name` that polls the device's hangup fd.
    pub fn spawn(
        dev: &Arc<Mutex<VirtioPciDevice>>,
        name: String,
    ) -> Result<Option<Self>, VirtioError> {
        let Some(fd) = lock(dev).hangup_fd() else {
            return Ok(None);
        };
        let stop = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(VirtioError::Io)?;
        let stop_fd = stop.as_raw_fd();
        let dev = dev.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let mut fds = [
                    libc::pollfd {
                        fd,
                        events: libc::POLLRDHUP,
                        revents: 0,
                    },
                    libc::pollfd {
                        fd: stop_fd,
                        events: libc::POLLIN,
                        revents: 0,
                    },
                ];
                loop {
                    // SAFETY: two valid pollfds; both fds outlive this thread
                    // (the device and the monitor are dropped after the join).
                    let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
                    if n < 0 {
                        if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                        {
                            continue;
                        }
                        return;
                    }
                    if fds[1].revents != 0 {
                        return;
                    }
                    let hup = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
                    if fds[0].revents & hup != 0 {
                        lock(&dev).backend_lost();
                        return;
                    }
                }
            })
            .map_err(VirtioError::Io)?;
        Ok(Some(Self {
            stop,
            thread: Some(thread),
        }))
    }
}

impl Drop for HangupMonitor {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
