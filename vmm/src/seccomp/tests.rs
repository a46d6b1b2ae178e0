// SPDX-License-Identifier: Apache-2.0
use backends::seccomp::ThreadKind;
use seccompiler::SeccompAction;

use super::ioctls::KVM_RUN;
use super::VmmThread;
use super::*;

const KINDS: [VmmThread; 8] = [
    VmmThread::Main,
    VmmThread::Api,
    VmmThread::Metrics,
    VmmThread::Vcpu,
    VmmThread::Queue,
    VmmThread::Monitor,
    VmmThread::Deadline,
    VmmThread::E1000Rx,
];

/// Every syscall (and argument set) of `narrow` is allowed by `wide`.
fn covers(wide: &Allowed, narrow: &Allowed) -> bool {
    wide.clone().with(narrow.clone()) == *wide
}

#[test]
fn every_table_compiles_and_the_process_filter_covers_every_thread() {
    let process = VmmThread::Process.allowed();
    process.program(SeccompAction::KillProcess).unwrap();
    for kind in KINDS {
        kind.allowed().program(SeccompAction::KillProcess).unwrap();
        assert!(covers(&process, &kind.allowed()), "{kind:?}");
    }
}

#[test]
fn threads_started_under_a_filter_find_what_they_need_in_it() {
    // In-VMM queue threads start from a vCPU at DRIVER_OK; deadline threads from a monitor
    // when it reconnects.
    assert!(covers(
        &VmmThread::Vcpu.allowed(),
        &VmmThread::Queue.allowed()
    ));
    assert!(covers(
        &VmmThread::Monitor.allowed(),
        &VmmThread::Deadline.allowed()
    ));
    for starter in [VmmThread::Vcpu, VmmThread::Monitor, VmmThread::Process] {
        assert!(covers(&starter.allowed(), &spawner()), "{starter:?}");
    }
}

#[test]
fn only_set_up_opens_files_and_only_vcpus_run_the_guest() {
    // The event loop builds the VM again at `vm.reboot`: it holds the set-up, checked below.
    let threads = KINDS.into_iter().filter(|&k| k != VmmThread::Main);
    for kind in threads.clone() {
        let allowed = kind.allowed();
        for nr in [libc::SYS_execve, libc::SYS_ptrace, libc::SYS_memfd_create] {
            assert!(allowed.syscalls().all(|n| n != nr), "{kind:?} {nr}");
        }
        // At most reading (queue threads, and the vCPUs that start them, read /proc/stat and
        // /proc/pressure/cpu).
        for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_CREAT] {
            assert!(
                !allowed.allows_with(libc::SYS_openat, 2, flags as u64),
                "{kind:?} {flags}"
            );
        }
        assert_eq!(
            allowed.allows_ioctl(KVM_RUN()),
            kind == VmmThread::Vcpu,
            "{kind:?}"
        );
    }
    // Reconnecting needs a socket; nothing else opens one after set-up.
    for kind in threads {
        assert_eq!(
            kind.allowed()
                .allows_with(libc::SYS_socket, 0, libc::AF_UNIX as u64),
            kind == VmmThread::Monitor,
            "{kind:?}"
        );
    }
    // The event loop never starts a program or traces one, even while it rebuilds the VM.
    let main = VmmThread::Main.allowed();
    assert!(main
        .syscalls()
        .all(|n| n != libc::SYS_execve && n != libc::SYS_ptrace));
    assert!(covers(&main, &set_up()));
    for started in [VmmThread::Vcpu, VmmThread::Monitor, VmmThread::E1000Rx] {
        assert!(covers(&main, &started.allowed()), "{started:?}");
    }
    // The API and metrics threads reach neither KVM nor a device.
    for kind in [VmmThread::Api, VmmThread::Metrics] {
        assert!(!kind.allowed().allows_ioctl(0xae01), "{kind:?}"); // KVM_CREATE_VM
        assert!(
            !kind.allowed().allows_with(libc::SYS_openat, 2, 0),
            "{kind:?}"
        );
    }
    let queue = VmmThread::Queue.allowed();
    assert!(!queue.allows_ioctl(KVM_RUN()) && !queue.allows_ioctl(libc::TUNSETOFFLOAD));
    // The set-up's ioctl families do not reach the threads.
    assert!(!VmmThread::Vcpu.allowed().allows_ioctl(0xae01)); // KVM_CREATE_VM
    assert!(VmmThread::Process.allowed().allows_ioctl(0xae01));
}
