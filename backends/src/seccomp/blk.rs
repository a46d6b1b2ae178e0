// SPDX-License-Identifier: Apache-2.0
//! What each thread of `vhost-user-blk` may call.
//!
//! | thread | kind | started by |
//! |---|---|---|
//! | `vhost-user-blk` (main) | [`BlkThread::Process`] once set up and unprivileged, then [`BlkThread::Control`] | — |
//! | `vu-conn` (one per frontend connection, vhost-user-backend's) | inherits `Control` | main |
//! | `vu-accept` | [`BlkThread::Accept`] | main, before it installs `Control` |
//! | `blk-qN` (vhost-user-backend's vring workers) | [`BlkThread::Queue`] | main, at set-up |
//! | `blk-signal` | [`BlkThread::Signal`] | main, at set-up |
//! | `metrics` (`--metrics`) | [`BlkThread::Metrics`] | main, at set-up |

use libc::{
    SYS_bind, SYS_epoll_create1, SYS_eventfd2, SYS_fdatasync, SYS_getrusage, SYS_io_uring_register,
    SYS_io_uring_setup, SYS_listen, SYS_lseek, SYS_openat, SYS_sched_setaffinity, SYS_socket,
};

use super::groups::{
    accept, engine, http_server, signal_waiter, socket_removal, spawner, thread_basics,
    vhost_user_backend,
};
use super::{Allowed, ThreadKind};
use crate::blk::BLKGETSIZE64;

/// A thread kind of `vhost-user-blk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkThread {
    /// The whole process, installed on its only thread once the disk is open, the socket bound
    /// and the privileges dropped, before any thread starts: every kind below and the rest of
    /// the set-up (the daemon's worker threads and their epoll sets).
    Process,
    /// Serves frontends one at a time; the crate's per-connection thread that handles the
    /// vhost-user messages is started from it and inherits this filter.
    Control,
    /// Accepts frontend connections.
    Accept,
    /// A queue thread: one virtqueue through the request engine.
    Queue,
    /// On SIGTERM/SIGINT: drains the queues, flushes the disk, exits.
    Signal,
    /// Serves the queues' counters (`--metrics`).
    Metrics,
}

impl ThreadKind for BlkThread {
    fn name(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Control => "control",
            Self::Accept => "accept",
            Self::Queue => "queue",
            Self::Signal => "signal",
            Self::Metrics => "metrics",
        }
    }

    fn allowed(self) -> Allowed {
        let basics = thread_basics();
        match self {
            Self::Process => [
                Self::Control,
                Self::Accept,
                Self::Queue,
                Self::Signal,
                Self::Metrics,
            ]
            .into_iter()
            .fold(set_up(), |all, kind| all.with(kind.allowed())),
            // Starts the per-connection thread, which runs the vhost-user messages under this
            // filter; with `--once`, logs the CPU time and removes the socket at the end.
            Self::Control => basics
                .with(spawner())
                .with(vhost_user_backend())
                .calls(&[SYS_getrusage])
                .with(socket_removal()),
            Self::Accept => basics.with(accept()),
            Self::Queue => basics.with(engine()),
            // `fdatasync` of the disk after draining; CPU time for the last log line.
            Self::Signal => basics
                .with(signal_waiter())
                .calls(&[SYS_fdatasync, SYS_getrusage]),
            Self::Metrics => basics.with(http_server()),
        }
    }
}

/// What only the set-up does once the process filter is on: create the daemon's worker
/// threads, their eventfds and epoll sets (and the metrics thread's stop eventfd). Opening the
/// disk, creating the rings and binding the sockets come before the filter; their entries stay
/// so that the table says what the set-up needs wherever the filter goes.
fn set_up() -> Allowed {
    Allowed::new()
        .calls(&[SYS_openat, SYS_lseek])
        .ioctls(&[BLKGETSIZE64()])
        .calls(&[SYS_io_uring_setup, SYS_io_uring_register])
        .calls(&[SYS_eventfd2, SYS_epoll_create1])
        .call_if(SYS_socket, 0, &[libc::AF_UNIX as u64])
        .calls(&[SYS_bind, SYS_listen])
        .with(spawner())
        // `--queue-affinity`: each queue thread pins itself when it starts, before its own
        // filter.
        .calls(&[SYS_sched_setaffinity])
}
