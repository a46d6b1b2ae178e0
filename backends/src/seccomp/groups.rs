// SPDX-License-Identifier: Apache-2.0
//! Groups of syscalls the thread tables of every binary are built from.

use libc::{
    SYS_accept4, SYS_brk, SYS_clock_gettime, SYS_clock_nanosleep, SYS_clone, SYS_clone3, SYS_close,
    SYS_epoll_ctl, SYS_epoll_pwait, SYS_epoll_wait, SYS_exit, SYS_exit_group, SYS_fcntl, SYS_fstat,
    SYS_ftruncate, SYS_futex, SYS_geteuid, SYS_getpid, SYS_getrandom, SYS_getrusage,
    SYS_getsockopt, SYS_gettid, SYS_gettimeofday, SYS_io_uring_enter, SYS_io_uring_register,
    SYS_io_uring_setup, SYS_lseek, SYS_madvise, SYS_memfd_create, SYS_mmap, SYS_mprotect,
    SYS_mremap, SYS_munmap, SYS_nanosleep, SYS_newfstatat, SYS_openat, SYS_poll, SYS_ppoll,
    SYS_prctl, SYS_read, SYS_recvfrom, SYS_recvmsg, SYS_restart_syscall, SYS_rseq,
    SYS_rt_sigaction, SYS_rt_sigprocmask, SYS_rt_sigreturn, SYS_rt_sigtimedwait,
    SYS_sched_getaffinity, SYS_sched_yield, SYS_seccomp, SYS_sendmsg, SYS_sendto,
    SYS_set_robust_list, SYS_setsockopt, SYS_shutdown, SYS_sigaltstack, SYS_statx, SYS_tgkill,
    SYS_unlink, SYS_write,
};

use super::Allowed;

/// What every thread does whatever its job: allocate and free memory, take and wait on locks,
/// log to stderr, read the clock, sleep, close what it drops, and end.
pub fn thread_basics() -> Allowed {
    Allowed::new()
        // The allocator, and a thread's stack freed when it ends.
        .calls(&[
            SYS_brk,
            SYS_mmap,
            SYS_munmap,
            SYS_mremap,
            SYS_mprotect,
            SYS_madvise,
        ])
        // Mutexes, condvars, channels, joins.
        .calls(&[SYS_futex, SYS_sched_yield])
        // Logs (tracing writes to stderr); also every eventfd signal.
        .calls(&[SYS_write])
        // Clock reads fall back to syscalls where the vDSO cannot serve them (a TSC the kernel
        // does not trust, as in the lab), and sleeps.
        .calls(&[
            SYS_clock_gettime,
            SYS_gettimeofday,
            SYS_clock_nanosleep,
            SYS_nanosleep,
        ])
        // Returning from a signal handler, the signal mask, Rust's stack-overflow handler
        // stack (freed when the thread ends), a wait restarted after a signal.
        .calls(&[
            SYS_rt_sigreturn,
            SYS_rt_sigprocmask,
            SYS_sigaltstack,
            SYS_restart_syscall,
        ])
        // Rust's HashMap seeds (once per thread); glibc sizes its malloc arenas by the CPUs
        // the process may run on.
        .calls(&[SYS_getrandom, SYS_sched_getaffinity])
        // Closing what a thread drops (a debug build first checks the descriptor is open).
        .calls(&[SYS_close])
        .call_if(SYS_fcntl, 1, &[libc::F_GETFD as u64])
        .calls(&[SYS_exit, SYS_exit_group])
        // abort() after a panic while panicking: raise(SIGABRT) on itself.
        .calls(&[SYS_getpid, SYS_gettid])
        .call_if(SYS_tgkill, 2, &[libc::SIGABRT as u64])
}

/// A thread that starts threads after its own filter is installed passes the filter on, so the
/// start of a thread must pass it: glibc's `pthread_create` (clone3; clone only where the
/// kernel lacks clone3, and then only for threads; the first one in a process installs glibc's
/// handlers for thread cancellation and `set*id`, signals 32 and 33), the new thread's robust
/// futex list and rseq area, its name (Rust std sets it from the thread), and its own filter
/// on top.
pub fn spawner() -> Allowed {
    Allowed::new()
        .calls(&[SYS_clone3])
        .call_if(SYS_rt_sigaction, 0, &[GLIBC_SIGCANCEL, GLIBC_SIGSETXID])
        .call_when(
            SYS_clone,
            0,
            libc::CLONE_THREAD as u32,
            &[libc::CLONE_THREAD as u64],
        )
        .calls(&[SYS_set_robust_list, SYS_rseq])
        .call_if(
            SYS_prctl,
            0,
            &[libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64],
        )
        .call_if(SYS_seccomp, 0, &[u64::from(libc::SECCOMP_SET_MODE_FILTER)])
}

/// The real-time signals glibc keeps for itself (below `SIGRTMIN` as glibc reports it).
const GLIBC_SIGCANCEL: u64 = 32;
const GLIBC_SIGSETXID: u64 = 33;

/// A queue thread running the request engine (`backends::engine`): sleep on the kick and
/// completion eventfds, read and write eventfds, submit and reap io_uring operations (a
/// bounded wait when settling: `io_uring_enter` with a timeout). The I/O itself goes through
/// the ring, which seccomp does not see.
///
/// Automatic SQPOLL rebuilds the thread's ring at run time (`Engine::govern_sqpoll`): a new
/// ring is set up disabled, given its file and eventfd, restricted and enabled
/// ([`uring_rebuild`]); the decision samples the host's idle CPU time from `/proc/stat`. Adaptive
/// busy-polling samples the host's CPU pressure from `/proc/pressure/cpu`.
pub fn engine() -> Allowed {
    Allowed::new()
        .calls(&[SYS_epoll_wait, SYS_epoll_pwait])
        .calls(&[SYS_read, SYS_write])
        .calls(&[SYS_io_uring_enter])
        .with(uring_rebuild())
        .with(read_proc_file())
}

/// Creating a ring the way `engine::ring::new_ring` does: `io_uring_setup`, then only the
/// registrations it makes (files, eventfd, restrictions, enabling the rings). A ring so
/// restricted accepts no registration once it runs.
pub fn uring_rebuild() -> Allowed {
    Allowed::new().calls(&[SYS_io_uring_setup]).call_if(
        SYS_io_uring_register,
        1,
        &[
            IORING_REGISTER_FILES,
            IORING_REGISTER_EVENTFD,
            IORING_REGISTER_RESTRICTIONS,
            IORING_REGISTER_ENABLE_RINGS,
        ],
    )
}

/// `io_uring_register` opcodes (linux/io_uring.h).
const IORING_REGISTER_FILES: u64 = 2;
const IORING_REGISTER_EVENTFD: u64 = 4;
const IORING_REGISTER_RESTRICTIONS: u64 = 11;
const IORING_REGISTER_ENABLE_RINGS: u64 = 12;

/// Reading an existing file whole (`std::fs::read_to_string`: open read-only, size it, read,
/// close), for `/proc` and `/sys` entries read at run time.
pub fn read_proc_file() -> Allowed {
    Allowed::new()
        .call_when(SYS_openat, 2, READ_ONLY_MASK, &[libc::O_RDONLY as u64])
        .calls(&[SYS_read, SYS_fstat, SYS_statx, SYS_newfstatat, SYS_lseek])
}

/// A `minihttp` server thread (the metrics endpoint, the VMM's API): wait for a connection or
/// the stop eventfd, accept it, read the request and write the response under socket timeouts,
/// shut the connection down gently; the listening socket's file is removed when the thread
/// ends. A Unix connection's peer is admitted by its uid (root, or this process's effective
/// uid). The process's CPU time is one of the metrics.
pub fn http_server() -> Allowed {
    Allowed::new()
        .calls(&[SYS_poll, SYS_ppoll, SYS_accept4])
        .call_if(SYS_getsockopt, 2, &[libc::SO_PEERCRED as u64])
        .calls(&[SYS_geteuid])
        .calls(&[SYS_read, SYS_write, SYS_recvfrom, SYS_sendto])
        .call_if(SYS_setsockopt, 1, &[libc::SOL_SOCKET as u64])
        .call_if(SYS_shutdown, 1, &[libc::SHUT_WR as u64])
        .calls(&[SYS_getrusage])
        .with(socket_removal())
}

/// The vhost-user backend side of one frontend connection (vhost-user-backend's per-connection
/// thread): messages and the descriptors they carry, guest memory regions mapped and
/// unmapped, kick eventfds added to and removed from the queue threads' epoll sets, rings
/// stopped (which waits for their in-flight io_uring operations), the inflight region created
/// (a sealed memfd), the connection shut down at its end.
pub fn vhost_user_backend() -> Allowed {
    Allowed::new()
        .calls(&[SYS_recvmsg, SYS_sendmsg, SYS_recvfrom, SYS_sendto, SYS_read])
        .calls(&[SYS_epoll_ctl])
        .calls(&[SYS_io_uring_enter])
        .call_if(
            SYS_memfd_create,
            1,
            &[u64::from(libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)],
        )
        .calls(&[SYS_ftruncate, SYS_fstat, SYS_newfstatat, SYS_statx])
        .call_if(
            SYS_fcntl,
            1,
            &[
                libc::F_ADD_SEALS as u64,
                libc::F_DUPFD_CLOEXEC as u64,
                libc::F_GETFL as u64,
                libc::F_SETFL as u64,
            ],
        )
        .call_if(SYS_shutdown, 1, &[libc::SHUT_RDWR as u64])
}

/// Accepting frontend connections: the peer's credentials (checked) and command name (from
/// `/proc/PID/comm`, read-only) for the log, whether the served one hung up, a duplicate of
/// the accepted connection to watch it.
pub fn accept() -> Allowed {
    Allowed::new()
        .calls(&[SYS_accept4])
        // The peer is admitted by its uid (root, or this process's effective uid).
        .call_if(SYS_getsockopt, 2, &[libc::SO_PEERCRED as u64])
        .calls(&[SYS_geteuid])
        .call_when(SYS_openat, 2, READ_ONLY_MASK, &[libc::O_RDONLY as u64])
        .calls(&[SYS_read, SYS_fstat, SYS_statx, SYS_poll])
        .call_if(SYS_fcntl, 1, &[libc::F_DUPFD_CLOEXEC as u64])
}

/// `openat` flags that make an open anything but reading an existing file.
const READ_ONLY_MASK: u32 = (libc::O_ACCMODE | libc::O_CREAT | libc::O_TRUNC) as u32;

/// A thread that waits for SIGTERM/SIGINT (`sigwait`), then removes the socket and exits the
/// process.
pub fn signal_waiter() -> Allowed {
    Allowed::new()
        .calls(&[SYS_rt_sigtimedwait])
        .with(socket_removal())
}

/// Removing the listening socket at exit, if it is still the one this process bound.
pub fn socket_removal() -> Allowed {
    Allowed::new().calls(&[SYS_statx, SYS_newfstatat, SYS_unlink])
}
