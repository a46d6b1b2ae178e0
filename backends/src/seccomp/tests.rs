// SPDX-License-Identifier: Apache-2.0
use std::ffi::CString;

use seccompiler::SeccompAction;

use super::blk::BlkThread;
use super::net::NetThread;
use super::*;

#[test]
fn modes_parse_and_a_bad_one_is_named_in_one_line() {
    assert_eq!("on".parse::<Mode>().unwrap(), Mode::On);
    assert_eq!("log".parse::<Mode>().unwrap(), Mode::Log);
    assert_eq!("off".parse::<Mode>().unwrap(), Mode::Off);
    assert_eq!(Mode::default(), Mode::On);
    let err = "bogus".parse::<Mode>().unwrap_err().to_string();
    assert_eq!(
        err,
        "invalid configuration: --seccomp bogus: expected on, log or off"
    );
}

#[test]
fn any_arguments_win_over_conditions_and_conditions_add_up() {
    let nr = libc::SYS_fcntl;
    let a = Allowed::new().call_if(nr, 1, &[1]).call_if(nr, 1, &[2, 1]);
    assert!(a.allows_with(nr, 1, 1) && a.allows_with(nr, 1, 2));
    assert!(!a.allows_with(nr, 1, 3) && !a.allows_any(nr));
    let b = a.clone().with(Allowed::new().calls(&[nr]));
    assert!(b.allows_any(nr));
    let c = Allowed::new().calls(&[nr]).call_if(nr, 1, &[5]);
    assert!(c.allows_any(nr));
    // No values allows nothing (not "any arguments").
    let d = Allowed::new().ioctls(&[]);
    assert_eq!(d.syscalls().count(), 0);
    let masked = Allowed::new().call_when(nr, 2, 0xf0, &[0x10]);
    assert!(masked.allows_with(nr, 2, 0x1f) && !masked.allows_with(nr, 2, 0x2f));
}

fn blk_kinds() -> [BlkThread; 4] {
    [
        BlkThread::Control,
        BlkThread::Accept,
        BlkThread::Queue,
        BlkThread::Signal,
    ]
}

fn net_kinds() -> [NetThread; 6] {
    [
        NetThread::Main,
        NetThread::Control,
        NetThread::Accept,
        NetThread::Relay,
        NetThread::Queue,
        NetThread::Signal,
    ]
}

/// Every syscall (and argument set) of `narrow` is allowed by `wide`.
fn covers(wide: &Allowed, narrow: &Allowed) -> bool {
    wide.clone().with(narrow.clone()) == *wide
}

#[test]
fn every_table_compiles_and_the_process_filter_covers_every_thread() {
    for kind in blk_kinds() {
        kind.allowed().program(SeccompAction::KillProcess).unwrap();
        assert!(
            covers(&BlkThread::Process.allowed(), &kind.allowed()),
            "{kind:?}"
        );
    }
    for kind in net_kinds() {
        kind.allowed().program(SeccompAction::KillProcess).unwrap();
        assert!(
            covers(&NetThread::Process.allowed(), &kind.allowed()),
            "{kind:?}"
        );
    }
    BlkThread::Process
        .allowed()
        .program(SeccompAction::Log)
        .unwrap();
    NetThread::Process
        .allowed()
        .program(SeccompAction::Log)
        .unwrap();
}

#[test]
fn threads_started_under_a_filter_find_what_they_need_in_it() {
    // vhost-user-net's relay threads start from the device thread after it installed Control.
    assert!(covers(
        &NetThread::Control.allowed(),
        &NetThread::Relay.allowed()
    ));
    // Every kind can start threads under the process filter, and install its own.
    let start = groups::spawner();
    assert!(covers(&BlkThread::Process.allowed(), &start));
    assert!(covers(&NetThread::Process.allowed(), &start));
}

#[test]
fn queue_threads_cannot_open_files_sockets_or_start_programs() {
    for queue in [BlkThread::Queue.allowed(), NetThread::Queue.allowed()] {
        // Only read-only opens: `/proc/stat` for the automatic SQPOLL decision and
        // `/proc/pressure/cpu` for the busy-polling gate.
        let read_only = libc::O_RDONLY | libc::O_CLOEXEC;
        assert!(queue.allows_with(libc::SYS_openat, 2, read_only as u64));
        for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_CREAT] {
            assert!(
                !queue.allows_with(libc::SYS_openat, 2, flags as u64),
                "{flags}"
            );
        }
        for nr in [
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_execve,
            libc::SYS_clone3,
            libc::SYS_ptrace,
            libc::SYS_mount,
        ] {
            assert!(queue.syscalls().all(|n| n != nr), "{nr}");
        }
    }
    assert!(NetThread::Queue.allowed().allows_ioctl(libc::TUNSETQUEUE));
    assert!(!NetThread::Queue.allowed().allows_ioctl(libc::TUNSETIFF));
    assert!(!BlkThread::Queue.allowed().allows_ioctl(libc::TUNSETQUEUE));
}

/// Runs `f` on a new thread under `allowed`, with EPERM for what it does not allow (not
/// KILL_PROCESS, which would end the test binary).
fn under_filter<T: Send + 'static>(allowed: Allowed, f: impl FnOnce() -> T + Send + 'static) -> T {
    let program = allowed
        .program(SeccompAction::Errno(libc::EPERM as u32))
        .unwrap();
    std::thread::spawn(move || {
        seccompiler::apply_filter(&program).unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn errno_of(rc: i64) -> i32 {
    if rc < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    } else {
        0
    }
}

#[test]
fn an_installed_table_checks_syscall_numbers_and_arguments() {
    let allowed = groups::thread_basics().ioctls(&[libc::FIONREAD]).call_when(
        libc::SYS_openat,
        2,
        (libc::O_ACCMODE | libc::O_CREAT) as u32,
        &[libc::O_RDONLY as u64],
    );
    let (ioctl_ok, ioctl_other, read_only, create, getppid) = under_filter(allowed, || {
        let mut n: libc::c_int = 0;
        let path = CString::new("/proc/self/status").unwrap();
        let tmp = CString::new("/tmp/seccomp-test-never-created").unwrap();
        // SAFETY: plain syscalls on an invalid descriptor or with valid C strings; descriptors
        // returned are closed.
        unsafe {
            let a = errno_of(libc::ioctl(-1, libc::FIONREAD, &mut n).into());
            let b = errno_of(libc::ioctl(-1, libc::FIONBIO, &mut n).into());
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            let c = errno_of(fd.into());
            libc::close(fd);
            let d =
                errno_of(libc::open(tmp.as_ptr(), libc::O_WRONLY | libc::O_CREAT, 0o600).into());
            let e = errno_of(libc::syscall(libc::SYS_getppid));
            (a, b, c, d, e)
        }
    });
    assert_eq!(ioctl_ok, libc::EBADF, "allowed request reaches the kernel");
    assert_eq!(ioctl_other, libc::EPERM, "other requests are refused");
    assert_eq!(read_only, 0, "a read-only open is allowed");
    assert_eq!(create, libc::EPERM, "creating a file is refused");
    assert_eq!(
        getppid,
        libc::EPERM,
        "a syscall outside the table is refused"
    );
}

#[test]
fn a_thread_can_start_threads_that_add_their_own_filter() {
    let parent = groups::thread_basics().with(groups::spawner());
    let child = groups::thread_basics().calls(&[libc::SYS_getppid]);
    let child_program = child
        .program(SeccompAction::Errno(libc::EPERM as u32))
        .unwrap();
    let (both_allow, only_child_allows) = under_filter(parent, move || {
        std::thread::Builder::new()
            .name("child".into())
            .spawn(move || {
                seccompiler::apply_filter(&child_program).unwrap();
                // SAFETY: plain syscalls without arguments.
                unsafe {
                    (
                        errno_of(libc::syscall(libc::SYS_gettid)),
                        // Allowed by the child's filter but not by the inherited one.
                        errno_of(libc::syscall(libc::SYS_getppid)),
                    )
                }
            })
            .unwrap()
            .join()
            .unwrap()
    });
    assert_eq!(both_allow, 0);
    assert_eq!(
        only_child_allows,
        libc::EPERM,
        "the inherited filter still applies"
    );
}

#[test]
fn a_queue_thread_rebuilds_its_ring_with_sqpoll_under_its_filter() {
    use std::os::fd::AsRawFd;

    use io_uring::opcode;
    use vmm_sys_util::eventfd::EventFd;

    use crate::engine::{new_ring, HostIdle, RingSpec};

    let file = tempfile::tempfile().unwrap();
    let eventfd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let (fd, efd) = (file.as_raw_fd(), eventfd.as_raw_fd());
    for (name, queue) in [
        ("blk", BlkThread::Queue.allowed()),
        ("net", NetThread::Queue.allowed()),
    ] {
        // What `Engine::govern_sqpoll` does at run time: sample the host's idle CPU time,
        // then build a restricted ring with kernel submission polling.
        let (idle, ring) = under_filter(queue, move || {
            let mut host = HostIdle::new();
            host.sample();
            let idle = host.sample();
            let ring = new_ring(&RingSpec {
                sq_entries: 8,
                cq_entries: Some(16),
                sqpoll_idle_ms: Some(10),
                file: fd,
                eventfd: efd,
                opcodes: &[opcode::Read::CODE, opcode::AsyncCancel::CODE],
                flags: io_uring::squeue::Flags::empty(),
            })
            .map(drop)
            .map_err(|e| e.to_string());
            (idle, ring)
        });
        assert!((0.0..=f64::from(u16::MAX)).contains(&idle), "{name} {idle}");
        assert_eq!(ring, Ok(()), "{name}");
    }
}
