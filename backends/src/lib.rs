// SPDX-License-Identifier: Apache-2.0
//! Virtio request engine shared by the vhost-user backends and the in-VMM virtio tier,
//! plus the virtio-blk device logic.
//!
//! * [`engine`] — queue walking, descriptor validation, io_uring submission/completion,
//!   EVENT_IDX-aware notification, batching and an optional busy-poll window.
//! * [`blk`] — virtio-blk request parsing/execution and the `vhost-user-blk` backend.
//! * [`net`] — virtio-net transmit/receive over a TAP and the `vhost-user-net` backend.
//! * [`metrics`] — the queues' counters in the Prometheus text format on `--metrics ADDR`.
//! * [`inflight`] — vhost-user inflight I/O tracking (`VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`):
//!   the shared region in which the engines record what they took, so that a restarted
//!   backend resubmits it.
//! * [`server`] — successive frontend connections on one socket, one at a time.
//! * [`vhost_shim`] — the relay that lets QEMU's vhost-user netdev talk to the daemon.
//! * [`seccomp`] — the `--seccomp` mode and the seccomp filters of every thread kind.
//!
//! The backends run on `vhost-user-backend` 0.24 with patches (the inflight messages
//! reach [`vhost_user_backend::VhostUserBackend`], a daemon serves successive
//! connections, a start hook on each vring worker thread), carried in `third_party/vhost-user-backend` (see its `PATCHES.md`) until
//! they are upstream. How a backend restart is recovered: `docs/vhost-user-recovery.md`.

pub mod access;
pub mod blk;
pub mod engine;
mod error;
pub mod inflight;
pub mod metrics;
pub mod net;
pub mod placement;
pub mod privileges;
pub mod seccomp;
pub mod server;
pub mod vhost_shim;

pub use error::{Error, GuestFault, Result};

/// Set the calling thread's name (vhost-user-backend names its workers `vring_worker`).
pub(crate) fn name_thread(name: &str) {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from `buf`.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr()) };
}
