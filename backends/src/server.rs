// SPDX-License-Identifier: Apache-2.0
//! Serving a vhost-user socket to one frontend at a time, for as long as the process runs.
//!
//! A backend outlives its frontend connections: when a frontend disconnects (the VMM lost the
//! connection, or a VM is restarted) the device is reset and the next frontend is served by
//! the same process, with the same worker threads, io_urings and backing file. `--once` keeps
//! the older behaviour of exiting at the first disconnect.
//!
//! Only one frontend is served at a time. A second one connecting meanwhile is accepted and
//! closed at once, with a log line naming both peers, so it fails fast with a clear error
//! instead of waiting in the listen backlog; a frontend arriving while the previous connection
//! is already closing (its peer hung up) waits for that connection's reset instead.

use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use vhost::vhost_user::Error as VhostUserError;
use vhost_user_backend::bitmap::BitmapReplace;
use vhost_user_backend::{Error as DaemonError, VhostUserBackend, VhostUserDaemon};
use vm_memory::mmap::NewBitmap;

use crate::access::SocketAccess;
use crate::seccomp::{self, ThreadKind};
use crate::{Error, Result};

/// How long a new frontend waits for a closing connection to be reset before it is refused.
const CLOSING_GRACE: Duration = Duration::from_secs(5);

/// The connection being served, if any.
#[derive(Default)]
struct Served {
    /// A duplicate of the served connection (to see whether its peer already hung up) and the
    /// peer's name.
    current: Option<(UnixStream, String)>,
}

#[derive(Default)]
struct Shared {
    served: Mutex<Served>,
    idle: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Served> {
        self.served.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The seccomp filters of a serving thread and of the accept thread it starts.
#[derive(Clone, Copy, Debug)]
pub struct ServeFilters<K> {
    /// Installed by the accept thread when it starts.
    pub accept: K,
    /// Installed by the serving thread once the accept thread runs, before the first frontend
    /// is served.
    pub control: K,
}

/// A listening vhost-user socket.
pub struct Server {
    path: PathBuf,
    /// Inode of the socket this server bound, so that only that one is removed at exit (a
    /// successor may already have bound a new socket at the same path).
    inode: u64,
    listener: UnixListener,
    /// Who may connect.
    access: SocketAccess,
}

impl Server {
    /// Listen on `path` with the default access (mode 0600; root and this process's uid),
    /// replacing a stale socket left there by a dead process.
    pub fn bind(path: &Path) -> Result<Self> {
        Self::bind_with(path, SocketAccess::default())
    }

    /// Listen on `path` with `access` (socket mode, uids allowed to connect).
    pub fn bind_with(path: &Path, access: SocketAccess) -> Result<Self> {
        let err = |op: &str| {
            let path = path.display().to_string();
            let op = op.to_string();
            move |e: std::io::Error| Error::VhostUser(format!("{op} {path}: {e}"))
        };
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            std::fs::remove_file(path).map_err(err("remove stale socket"))?;
        }
        let listener = access.bind(path).map_err(err("listen on"))?;
        let inode = std::fs::metadata(path).map_err(err("stat"))?.ino();
        Ok(Self {
            path: path.to_path_buf(),
            inode,
            listener,
            access,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remove the socket if it is still the one this server bound.
    pub fn remove_socket(&self) {
        if std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// Serve frontends with `daemon`, one at a time, until the process ends (or, with `once`,
    /// until the first one disconnects). `prepare` turns each accepted connection into the
    /// one the daemon serves (a relay, for instance). The accept thread and the calling thread
    /// confine themselves to `filters` first.
    pub fn serve<T, K>(
        &self,
        daemon: &mut VhostUserDaemon<T>,
        once: bool,
        prepare: impl Fn(UnixStream) -> std::io::Result<UnixStream>,
        filters: ServeFilters<K>,
    ) -> Result<()>
    where
        K: ThreadKind + Send + 'static,
        T: VhostUserBackend + Clone + 'static,
        T::Bitmap: BitmapReplace + NewBitmap + Clone + Send + Sync,
        T::Vring: Clone + Send + Sync,
    {
        let shared = Arc::new(Shared::default());
        let (handover, accepted) = mpsc::sync_channel(0);
        let listener = self
            .listener
            .try_clone()
            .map_err(|e| Error::VhostUser(format!("listener: {e}")))?;
        {
            let shared = shared.clone();
            let access = self.access.clone();
            let what = self.path.display().to_string();
            std::thread::Builder::new()
                .name("vu-accept".into())
                .spawn(move || {
                    seccomp::install_or_exit(filters.accept);
                    accept_loop(&listener, &access, &what, &shared, &handover)
                })
                .map_err(|e| Error::VhostUser(format!("accept thread: {e}")))?;
        }
        seccomp::install(filters.control)?;
        tracing::info!(socket = %self.path.display(), "waiting for a frontend");
        serve_loop(daemon, &shared, &accepted, once, prepare)
    }
}

/// Serve each handed-over connection until it ends.
fn serve_loop<T>(
    daemon: &mut VhostUserDaemon<T>,
    shared: &Shared,
    accepted: &Receiver<(UnixStream, String)>,
    once: bool,
    prepare: impl Fn(UnixStream) -> std::io::Result<UnixStream>,
) -> Result<()>
where
    T: VhostUserBackend + Clone + 'static,
    T::Bitmap: BitmapReplace + NewBitmap + Clone + Send + Sync,
    T::Vring: Clone + Send + Sync,
{
    for (stream, peer) in accepted {
        tracing::info!(peer, "frontend connected");
        let served = prepare(stream)
            .map_err(|e| Error::VhostUser(e.to_string()))
            .and_then(|conn| {
                daemon
                    .start_connection(conn)
                    .map_err(|e| Error::VhostUser(e.to_string()))
            })
            .and_then(|()| match daemon.wait() {
                Ok(())
                | Err(DaemonError::HandleRequest(
                    VhostUserError::Disconnected | VhostUserError::PartialMessage,
                )) => Ok(()),
                Err(e) => Err(Error::VhostUser(e.to_string())),
            });
        match &served {
            Ok(()) => tracing::info!(peer, "frontend disconnected; device reset"),
            Err(e) => tracing::warn!(peer, "frontend connection ended: {e}; device reset"),
        }
        shared.lock().current = None;
        shared.idle.notify_all();
        if once {
            return served;
        }
    }
    Err(Error::VhostUser("accept thread ended".into()))
}

/// Accept every frontend: hand it to the serving loop if none is served (or the served one is
/// closing), refuse it otherwise.
fn accept_loop(
    listener: &UnixListener,
    access: &SocketAccess,
    what: &str,
    shared: &Shared,
    handover: &SyncSender<(UnixStream, String)>,
) {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::error!("accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        // A peer that may not connect is closed before anything is read from it.
        let Some(cred) = access.admit(&stream, what) else {
            continue;
        };
        let peer = format!("pid {} ({})", cred.pid, cred.command());
        let mut served = shared.lock();
        if let Some((current, current_peer)) = &served.current {
            if !hung_up(current) {
                tracing::warn!(
                    peer,
                    serving = current_peer.as_str(),
                    "refusing a second frontend: already serving one"
                );
                continue; // dropping the stream closes it
            }
            let (guard, _) = shared
                .idle
                .wait_timeout_while(served, CLOSING_GRACE, |s| s.current.is_some())
                .unwrap_or_else(|p| p.into_inner());
            served = guard;
            if served.current.is_some() {
                tracing::warn!(
                    peer,
                    "refusing a frontend: the previous connection is stuck"
                );
                continue;
            }
        }
        let Ok(watch) = stream.try_clone() else {
            tracing::error!(peer, "cannot duplicate the connection; refused");
            continue;
        };
        served.current = Some((watch, peer.clone()));
        drop(served);
        if handover.send((stream, peer)).is_err() {
            return; // the serving loop ended (--once)
        }
    }
}

/// Whether the peer of `stream` has closed its end.
fn hung_up(stream: &UnixStream) -> bool {
    let mut pfd = libc::pollfd {
        fd: stream.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}
