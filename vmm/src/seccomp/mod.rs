// SPDX-License-Identifier: Apache-2.0
//! What each thread of `vmm run` may call (the framework and the groups shared with the
//! backends are `backends::seccomp`).
//!
//! | thread | kind | started by |
//! |---|---|---|
//! | `vmm` (main) | [`VmmThread::Process`] from the start, [`VmmThread::Main`] once the first VM's vCPUs run | — |
//! | `vmm-api` (`--api-socket`) | [`VmmThread::Api`] | `main`, at start |
//! | `metrics` (`--metrics`) | [`VmmThread::Metrics`] | `main`, at start |
//! | `vcpuN` | [`VmmThread::Vcpu`] | `main`, after set-up (again after each reboot) |
//! | `blk-qN`, `net-q0` (in-VMM virtio queues) | [`VmmThread::Queue`] | a vCPU, at DRIVER_OK |
//! | `blkN-mon`, `vu-netN-mon` (vhost-user backend supervisor) | [`VmmThread::Monitor`] | `main`, at set-up |
//! | `vhost-deadline` (one per backend connection) | [`VmmThread::Deadline`] | `main` at set-up, a monitor on reconnect |
//! | `e1000-rx` | [`VmmThread::E1000Rx`] | `main`, at set-up |
//!
//! The vCPU threads run the devices' register handlers, and with them everything a guest
//! can set off by writing a register: DRIVER_OK starts a device's data path (vhost-user
//! messages to its backend, or in-VMM io_urings and queue threads, which start under the vCPU's
//! filter), BAR moves remap ioeventfds and passed-through regions, MSI-X writes change
//! interrupt routes, emulated NVMe commands read and write the disk. Their table is the
//! widest after the set-up's; it still has no `open` (but read-only, of `/proc/stat` and
//! `/proc/pressure/cpu`),
//! `socket`, `connect` or `execve`.
//!
//! `vm.reboot` builds the VM again in-process, on the main thread, after its own filter is
//! installed: the event loop's table therefore holds the set-up's and that of every thread the
//! VM starts, and `Main` differs from `Process` only by the API and metrics threads' few
//! extra calls. The narrow filters are the other threads'. A thread's filter is
//! installed once: filters stack, and the kernel bounds their total size.

mod ioctls;

use std::sync::atomic::{AtomicBool, Ordering};

use backends::seccomp::groups::{engine, http_server, spawner, thread_basics};
use backends::seccomp::{Allowed, ThreadKind};
use libc::{
    SYS_access, SYS_bind, SYS_chmod, SYS_connect, SYS_epoll_create1, SYS_epoll_ctl,
    SYS_epoll_pwait, SYS_epoll_wait, SYS_eventfd2, SYS_fallocate, SYS_fchmodat, SYS_fcntl,
    SYS_fdatasync, SYS_fstat, SYS_ftruncate, SYS_getdents64, SYS_getpid, SYS_getsockname,
    SYS_io_uring_enter, SYS_io_uring_register, SYS_io_uring_setup, SYS_listen, SYS_lseek,
    SYS_memfd_create, SYS_newfstatat, SYS_openat, SYS_poll, SYS_pread64, SYS_pwrite64, SYS_read,
    SYS_readlink, SYS_readlinkat, SYS_recvfrom, SYS_recvmsg, SYS_rt_sigaction,
    SYS_sched_setaffinity, SYS_sendmsg, SYS_sendto, SYS_setsockopt, SYS_shutdown, SYS_signalfd4,
    SYS_socket, SYS_statfs, SYS_statx, SYS_tgkill, SYS_umask, SYS_unlink, SYS_write,
};

use self::ioctls::*;
use crate::vstate::vcpu::kick_signal;

/// A thread kind of `vmm run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmmThread {
    /// The whole process, installed on its only thread before anything else: every kind
    /// below and the set-up (the API socket and the metrics endpoint, KVM, guest memory, the
    /// kernel, devices and their host files, TAPs, backend connections, VFIO).
    Process,
    /// The event loop (exit events, signals, stdin for the serial console, API requests), the
    /// teardown, and the set-up again at each `vm.reboot`.
    Main,
    /// Serves the API socket; requests go to the event loop through a channel.
    Api,
    /// Serves the in-VMM queues' counters (`--metrics`).
    Metrics,
    /// A vCPU: `KVM_RUN` and the devices' register handlers.
    Vcpu,
    /// An in-VMM virtio queue thread (request engine).
    Queue,
    /// Watches a vhost-user backend's connection and reconnects it.
    Monitor,
    /// Shuts a vhost-user connection down when its backend does not answer in time.
    Deadline,
    /// Reads frames from an e1000's TAP into the guest.
    E1000Rx,
}

impl ThreadKind for VmmThread {
    fn name(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Main => "main",
            Self::Api => "api",
            Self::Metrics => "metrics",
            Self::Vcpu => "vcpu",
            Self::Queue => "queue",
            Self::Monitor => "monitor",
            Self::Deadline => "deadline",
            Self::E1000Rx => "e1000-rx",
        }
    }

    fn allowed(self) -> Allowed {
        match self {
            Self::Process => [
                Self::Main,
                Self::Api,
                Self::Metrics,
                Self::Vcpu,
                Self::Queue,
                Self::Monitor,
                Self::Deadline,
                Self::E1000Rx,
            ]
            .into_iter()
            .fold(set_up(), |all, kind| all.with(kind.allowed())),
            // A reboot builds the VM again from this thread, and the threads it starts run its
            // filter under their own.
            Self::Main => [
                Self::Vcpu,
                Self::Queue,
                Self::Monitor,
                Self::Deadline,
                Self::E1000Rx,
            ]
            .into_iter()
            .fold(main().with(set_up()), |all, kind| all.with(kind.allowed())),
            // `vmm.ping` reports the process id.
            Self::Api => thread_basics().with(http_server()).calls(&[SYS_getpid]),
            Self::Metrics => thread_basics().with(http_server()),
            Self::Vcpu => vcpu(),
            Self::Queue => thread_basics()
                .with(engine())
                .calls(&[SYS_epoll_create1, SYS_epoll_ctl]),
            Self::Monitor => monitor(),
            Self::Deadline => thread_basics().call_if(SYS_shutdown, 1, &[libc::SHUT_RDWR as u64]),
            Self::E1000Rx => thread_basics()
                .calls(&[
                    SYS_epoll_create1,
                    SYS_epoll_ctl,
                    SYS_epoll_wait,
                    SYS_epoll_pwait,
                ])
                .calls(&[SYS_read]),
        }
    }
}

/// A vhost-user frontend's exchanges with its backend: messages, with the descriptors of
/// guest memory, eventfds and the inflight region.
fn vhost_user_frontend() -> Allowed {
    Allowed::new().calls(&[SYS_sendmsg, SYS_recvmsg, SYS_sendto, SYS_recvfrom, SYS_read])
}

/// The event loop, and the teardown once it returns: vCPUs kicked out of `KVM_RUN` and
/// joined, devices stopped (vhost-user rings stopped through their backends, queue threads
/// joined, passed-through devices' interrupts, BAR slots and DMA mappings removed, the devices
/// reset and their VFIO groups released).
fn main() -> Allowed {
    thread_basics()
        .calls(&[
            SYS_epoll_create1,
            SYS_epoll_ctl,
            SYS_epoll_wait,
            SYS_epoll_pwait,
        ])
        .calls(&[SYS_read])
        .call_if(SYS_tgkill, 2, &[kick_signal() as u64])
        .with(vhost_user_frontend())
        .ioctls(&[
            KVM_IRQFD(),
            KVM_IOEVENTFD(),
            KVM_SET_GSI_ROUTING(),
            KVM_SET_USER_MEMORY_REGION(),
            KVM_SET_DEVICE_ATTR(),
            VFIO_DEVICE_SET_IRQS(),
            VFIO_DEVICE_RESET(),
            VFIO_IOMMU_UNMAP_DMA(),
            VFIO_GROUP_UNSET_CONTAINER(),
        ])
        // vfio-ioctls finds a device's group again from its sysfs path when releasing it.
        .calls(&[SYS_readlink, SYS_readlinkat])
}

/// `KVM_RUN`, and what the devices' register handlers do (see the module documentation).
fn vcpu() -> Allowed {
    thread_basics()
        .ioctls(&[
            KVM_RUN(),
            // Parked by `vm.pause`: tells a kvmclock guest the pause was the host's.
            KVM_KVMCLOCK_CTRL(),
            // BAR moves and MSI-X: ioeventfds, irqfds, routes, passed-through BAR slots.
            KVM_IOEVENTFD(),
            KVM_IRQFD(),
            KVM_SET_GSI_ROUTING(),
            KVM_SET_USER_MEMORY_REGION(),
            // A passed-through device's MSI/MSI-X enabled or disabled.
            VFIO_DEVICE_SET_IRQS(),
            // The emulated NVMe completes a command inside its doorbell's exit and raises
            // its MSI-X vector there.
            KVM_SIGNAL_MSI(),
            // The in-VMM virtio-net's offloads at DRIVER_OK and reset.
            libc::TUNSETOFFLOAD,
        ])
        // Passed-through config space and BARs that are not mapped: region reads and writes.
        // Emulated NVMe: reads, writes, flushes (FUA writes too) and deallocation (hole
        // punching).
        .calls(&[SYS_pread64, SYS_pwrite64, SYS_fdatasync])
        // The serial console's file, capped (`max_size`): emptied when full.
        .calls(&[SYS_ftruncate])
        .call_if(
            SYS_fallocate,
            1,
            &[(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u64],
        )
        // vhost-user: DRIVER_OK, reset and config reads are exchanges with the backend.
        .with(vhost_user_frontend())
        // In-VMM virtio: DRIVER_OK creates the queues' io_urings and starts their threads,
        // which start under this filter and need what `Queue` needs; reset joins them.
        .calls(&[SYS_io_uring_setup, SYS_io_uring_register, SYS_eventfd2])
        .with(spawner())
        .with(VmmThread::Queue.allowed())
        // DRIVER_OK keeps duplicates of the queues' eventfds.
        .call_if(SYS_fcntl, 1, &[libc::F_DUPFD_CLOEXEC as u64])
        // MSI-X vector masking and re-routing: whether a call eventfd has a signal pending
        // (a zero-timeout poll).
        .calls(&[SYS_poll])
}

/// Watches the backend socket for a hangup; reconnecting opens a new connection (a new
/// deadline thread, which starts under this filter), replays the device's setup over it, and
/// kicks the queues or raises the config interrupt.
fn monitor() -> Allowed {
    thread_basics()
        .calls(&[SYS_poll])
        .call_if(SYS_socket, 0, &[libc::AF_UNIX as u64])
        .calls(&[SYS_connect])
        .with(vhost_user_frontend())
        .call_if(SYS_fcntl, 1, &[libc::F_DUPFD_CLOEXEC as u64])
        .with(spawner())
        .with(VmmThread::Deadline.allowed())
}

/// What only the set-up does: read the kernel, initramfs and host files (`/proc/meminfo`,
/// sysfs for VFIO), open `/dev/kvm` and create the VM and vCPUs, create and map guest memory,
/// open disks, TAPs and VFIO devices (their ioctl families), connect to backends, create
/// eventfds, epoll sets, the signalfd and io_urings, install the vCPU kick handler, start the
/// threads.
fn set_up() -> Allowed {
    Allowed::new()
        .calls(&[SYS_openat, SYS_read, SYS_pread64, SYS_lseek])
        .calls(&[SYS_fstat, SYS_newfstatat, SYS_statx, SYS_statfs, SYS_access])
        .calls(&[SYS_readlink, SYS_readlinkat, SYS_getdents64])
        .ioctl_families(&SET_UP_FAMILIES)
        .calls(&[SYS_memfd_create, SYS_ftruncate, SYS_fcntl])
        .call_if(SYS_socket, 0, &[libc::AF_UNIX as u64, libc::AF_INET as u64])
        .calls(&[SYS_connect])
        // An in-VMM virtio-net sets its TAP's MTU through an inet socket.
        .ioctls(&[libc::SIOCSIFMTU])
        .calls(&[
            SYS_eventfd2,
            SYS_epoll_create1,
            SYS_epoll_ctl,
            SYS_signalfd4,
        ])
        .calls(&[
            SYS_io_uring_setup,
            SYS_io_uring_register,
            SYS_io_uring_enter,
        ])
        .call_if(SYS_rt_sigaction, 0, &[kick_signal() as u64])
        .calls(&[SYS_write])
        .with(spawner())
        // The API socket (created mode 0600 under a narrowed umask, a stale one replaced) and
        // the metrics endpoint (a Unix socket, or TCP on loopback); their addresses.
        .calls(&[SYS_bind, SYS_listen, SYS_getsockname, SYS_umask])
        .calls(&[SYS_chmod, SYS_fchmodat, SYS_unlink])
        .call_if(SYS_setsockopt, 1, &[libc::SOL_SOCKET as u64])
        // vCPU placement (`--cpus affinity=`) is taken by each vCPU thread before its filter.
        .calls(&[SYS_sched_setaffinity])
}

/// Installs the event loop's filter ([`VmmThread::Main`]) on the calling thread, the first
/// time only: a reboot runs the event loop again on the same thread, already confined.
pub fn confine_event_loop() -> backends::Result<()> {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    backends::seccomp::install(VmmThread::Main)
}

#[cfg(test)]
mod tests;
