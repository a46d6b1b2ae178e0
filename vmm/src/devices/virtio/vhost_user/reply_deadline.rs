// SPDX-License-Identifier: Apache-2.0
//! A deadline on vhost-user exchanges.
//!
//! The `vhost` crate's frontend blocks in `recv` until the backend answers, and retries a
//! socket timeout (`EAGAIN`) rather than returning it, so `SO_RCVTIMEO` cannot bound it. A
//! backend that accepted the connection (or merely listens: the kernel completes `connect`
//! from the backlog) but never answers would hang `vmm run`, or a vCPU thread writing
//! DRIVER_OK, forever. [`ReplyDeadline`] arms a deadline around each group of messages; a
//! small thread shuts the socket down when it passes, which turns the blocked `recv` into an
//! error (and the device's hangup monitor then sees the backend as lost).

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::devices::virtio::VirtioError;
use crate::seccomp::VmmThread;

/// How long a backend may take to answer one group of messages (a handshake, an
/// activation, a reset) before the connection is given up.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Default)]
struct State {
    deadline: Option<Instant>,
    fired: bool,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// A duplicate of the connection's socket: `shutdown` acts on the socket, and the
    /// duplicate cannot be closed and reused under the thread.
    socket: OwnedFd,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Shuts a vhost-user connection down when an armed exchange outlives [`REPLY_TIMEOUT`].
pub struct ReplyDeadline {
    shared: Arc<Shared>,
    socket: String,
    limit: Duration,
    /// Joined on drop, so that its duplicate of the socket is closed when the connection is
    /// (a backend serves the next frontend only once the previous one has hung up).
    watcher: Option<std::thread::JoinHandle<()>>,
}

impl ReplyDeadline {
    /// Watch the connection `fd` to the backend at `socket` (named in errors) with the
    /// default limit.
    pub fn start(fd: BorrowedFd<'_>, socket: &str) -> Result<Self, VirtioError> {
        Self::with_limit(fd, socket, REPLY_TIMEOUT)
    }

    fn with_limit(fd: BorrowedFd<'_>, socket: &str, limit: Duration) -> Result<Self, VirtioError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            socket: fd.try_clone_to_owned().map_err(VirtioError::Io)?,
        });
        let watched = shared.clone();
        let watcher = std::thread::Builder::new()
            .name("vhost-deadline".into())
            .spawn(move || {
                backends::seccomp::install_or_exit(VmmThread::Deadline);
                watch(&watched)
            })
            .map_err(VirtioError::Io)?;
        Ok(Self {
            shared,
            socket: socket.to_string(),
            limit,
            watcher: Some(watcher),
        })
    }

    /// Run `exchange` with the deadline armed. If the deadline passed meanwhile, the socket
    /// was shut down and the error names the step that got no answer.
    pub fn guard<T>(
        &self,
        step: &str,
        exchange: impl FnOnce() -> Result<T, VirtioError>,
    ) -> Result<T, VirtioError> {
        {
            let mut st = self.shared.lock();
            st.deadline = Some(Instant::now() + self.limit);
            st.fired = false;
        }
        self.shared.wake.notify_one();
        let result = exchange();
        let fired = {
            let mut st = self.shared.lock();
            st.deadline = None;
            st.fired
        };
        match result {
            Err(e) if fired => Err(VirtioError::Backend {
                socket: self.socket.clone(),
                what: format!(
                    "{step}: no answer within {} s; connection shut down ({e})",
                    self.limit.as_secs()
                ),
            }),
            other => other,
        }
    }
}

impl Drop for ReplyDeadline {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
    }
}

/// The watcher thread: sleeps until armed, then until the deadline or a disarm.
fn watch(shared: &Shared) {
    let mut st = shared.lock();
    while !st.closed {
        st = match st.deadline {
            None => shared.wake.wait(st).unwrap_or_else(|p| p.into_inner()),
            Some(deadline) => {
                let now = Instant::now();
                if now >= deadline {
                    // SAFETY: plain syscall on a descriptor this thread owns (a duplicate).
                    unsafe { libc::shutdown(shared.socket.as_raw_fd(), libc::SHUT_RDWR) };
                    tracing::warn!(
                        "vhost-user backend gave no answer in time; connection shut down"
                    );
                    st.fired = true;
                    st.deadline = None;
                    continue;
                }
                shared
                    .wake
                    .wait_timeout(st, deadline - now)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0)
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn an_exchange_without_answer_fails_after_the_limit() {
        let (mut ours, _silent_backend) = UnixStream::pair().unwrap();
        let deadline =
            ReplyDeadline::with_limit(ours.as_fd(), "/test.sock", Duration::from_millis(200))
                .unwrap();
        let start = Instant::now();
        let err = deadline
            .guard("GET_FEATURES", || {
                let mut buf = [0u8; 12];
                match ours.read(&mut buf) {
                    Ok(0) => Err(VirtioError::Backend {
                        socket: "/test.sock".into(),
                        what: "disconnected".into(),
                    }),
                    Ok(_) => Ok(()),
                    Err(e) => Err(VirtioError::Io(e)),
                }
            })
            .unwrap_err()
            .to_string();
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert!(err.contains("GET_FEATURES: no answer within"), "{err}");
        assert!(err.contains("/test.sock"), "{err}");
    }

    #[test]
    fn answered_exchanges_are_untouched_and_the_socket_stays_usable() {
        let (mut ours, mut backend) = UnixStream::pair().unwrap();
        let deadline =
            ReplyDeadline::with_limit(ours.as_fd(), "/test.sock", Duration::from_millis(100))
                .unwrap();
        for round in 0..3u8 {
            backend.write_all(&[round]).unwrap();
            let got = deadline
                .guard("GET_CONFIG", || {
                    let mut b = [0u8; 1];
                    ours.read_exact(&mut b).map_err(VirtioError::Io)?;
                    Ok(b[0])
                })
                .unwrap();
            assert_eq!(got, round);
        }
        // Disarmed: waiting past the limit between exchanges does not shut the socket down.
        std::thread::sleep(Duration::from_millis(250));
        ours.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        backend.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"x");
    }
}
