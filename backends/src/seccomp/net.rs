// SPDX-License-Identifier: Apache-2.0
//! What each thread of `vhost-user-net` may call.
//!
//! | thread | kind | started by |
//! |---|---|---|
//! | `vhost-user-net` (main) | [`NetThread::Process`] once set up and unprivileged, then [`NetThread::Main`] once the device threads run | — |
//! | `net-devN` (one per socket) | [`NetThread::Control`] once its queue threads run | main |
//! | `vu-conn` (one per frontend connection, vhost-user-backend's) | inherits `Control` | `net-devN` |
//! | `vu-relay`, `vu-relay-reply` (per connection) | [`NetThread::Relay`] | `net-devN` |
//! | `vu-accept` | [`NetThread::Accept`] | `net-devN`, before it installs `Control` |
//! | `net-qN` (vhost-user-backend's vring workers) | [`NetThread::Queue`] | `net-devN`, at set-up |
//! | `sw-a-qN`, `sw-b-qN` (`--link`: the switch's vring workers) | [`NetThread::Switch`] | `net-devN`, at set-up |
//! | `net-signal` | [`NetThread::Signal`] | main, at set-up |
//! | `metrics` (`--metrics`) | [`NetThread::Metrics`] | main, at set-up |

use libc::{
    SYS_bind, SYS_epoll_create1, SYS_epoll_pwait, SYS_epoll_wait, SYS_eventfd2, SYS_fcntl,
    SYS_io_uring_register, SYS_io_uring_setup, SYS_listen, SYS_openat, SYS_read, SYS_recvfrom,
    SYS_recvmsg, SYS_sched_setaffinity, SYS_sendmsg, SYS_sendto, SYS_setsockopt, SYS_shutdown,
    SYS_socket, SYS_socketpair, SYS_write, SIOCSIFMTU, TUNSETIFF, TUNSETOFFLOAD, TUNSETPERSIST,
    TUNSETQUEUE, TUNSETVNETHDRSZ,
};

use super::groups::{
    accept, engine, http_server, signal_waiter, socket_removal, spawner, thread_basics,
    vhost_user_backend,
};
use super::{Allowed, ThreadKind};

/// A thread kind of `vhost-user-net`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetThread {
    /// The whole process, installed on its only thread once the TAP queues (or the link) are
    /// open, the sockets bound and the privileges dropped, before any thread starts: every
    /// kind below and the rest of the set-up (the daemons' worker threads, their epoll sets).
    Process,
    /// The main thread once the device threads run: it waits for them.
    Main,
    /// Serves one socket's frontends one at a time; the crate's per-connection thread that
    /// handles the vhost-user messages, and the relay threads, are started from it.
    Control,
    /// Accepts frontend connections.
    Accept,
    /// Passes one connection's messages between the frontend and the daemon.
    Relay,
    /// A queue thread: one queue pair (and the control queue on the first) through the
    /// request engine.
    Queue,
    /// A queue thread of the in-process switch (`--link`): copies one guest's transmitted
    /// frames into the other guest's receive buffers, in memory both are mapped in; eventfds
    /// only (kicks, wake-ups, interrupts).
    Switch,
    /// On SIGTERM/SIGINT: logs the counters, exits.
    Signal,
    /// Serves the queues' counters (`--metrics`).
    Metrics,
}

impl ThreadKind for NetThread {
    fn name(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Main => "main",
            Self::Control => "control",
            Self::Accept => "accept",
            Self::Relay => "relay",
            Self::Queue => "queue",
            Self::Switch => "switch",
            Self::Signal => "signal",
            Self::Metrics => "metrics",
        }
    }

    fn allowed(self) -> Allowed {
        let basics = thread_basics();
        match self {
            Self::Process => [
                Self::Main,
                Self::Control,
                Self::Accept,
                Self::Relay,
                Self::Queue,
                Self::Switch,
                Self::Signal,
                Self::Metrics,
            ]
            .into_iter()
            .fold(set_up(), |all, kind| all.with(kind.allowed())),
            Self::Main => basics,
            // Acked features set the TAP's offloads and the active queue pairs; each connection
            // gets a socket pair to the relay, whose threads start under this filter.
            Self::Control => basics
                .with(spawner())
                .with(vhost_user_backend())
                .ioctls(&[TUNSETOFFLOAD, TUNSETQUEUE])
                .call_if(SYS_socketpair, 0, &[libc::AF_UNIX as u64])
                .call_if(SYS_fcntl, 1, &[libc::F_DUPFD_CLOEXEC as u64])
                .with(Self::Relay.allowed())
                .with(socket_removal()),
            Self::Accept => basics.with(accept()),
            Self::Relay => basics
                .calls(&[SYS_recvmsg, SYS_sendmsg, SYS_recvfrom, SYS_sendto])
                .calls(&[SYS_read, SYS_write])
                .call_if(SYS_shutdown, 1, &[libc::SHUT_RDWR as u64]),
            // The control queue's VQ_PAIRS_SET attaches and detaches TAP queues.
            Self::Queue => basics.with(engine()).ioctls(&[TUNSETQUEUE]),
            Self::Switch => basics
                .calls(&[SYS_epoll_wait, SYS_epoll_pwait])
                .calls(&[SYS_read, SYS_write]),
            Self::Signal => basics.with(signal_waiter()),
            Self::Metrics => basics.with(http_server()),
        }
    }
}

/// What only the set-up does: open the TAP queues (`/dev/net/tun`, its ioctls, the MTU through
/// an inet socket) or create the link's datagram socket pairs, create the io_urings, their
/// eventfds and the workers' epoll sets, bind and listen on the sockets, start the threads.
fn set_up() -> Allowed {
    Allowed::new()
        .calls(&[SYS_openat])
        .ioctls(&[
            TUNSETIFF,
            TUNSETVNETHDRSZ,
            TUNSETOFFLOAD,
            TUNSETPERSIST,
            TUNSETQUEUE,
            SIOCSIFMTU,
        ])
        .call_if(SYS_socket, 0, &[libc::AF_UNIX as u64, libc::AF_INET as u64])
        .call_if(SYS_socketpair, 0, &[libc::AF_UNIX as u64])
        .call_if(SYS_setsockopt, 1, &[libc::SOL_SOCKET as u64])
        .call_if(SYS_fcntl, 1, &[libc::F_GETFL as u64, libc::F_SETFL as u64])
        .calls(&[SYS_io_uring_setup, SYS_io_uring_register])
        .calls(&[SYS_eventfd2, SYS_epoll_create1])
        .calls(&[SYS_bind, SYS_listen])
        .with(spawner())
        // `--queue-affinity`: each queue thread pins itself when it starts, before its own
        // filter.
        .calls(&[SYS_sched_setaffinity])
}
