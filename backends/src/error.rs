// SPDX-License-Identifier: Apache-2.0
//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Faults found in guest-supplied data. They are answered to the guest (status byte or a
/// zero-length used entry) and counted; they never stop the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GuestFault {
    /// The chain ended on a descriptor that still had `NEXT` set (a loop, a `next` index past
    /// the table, an unreadable or nested indirect table), or had no descriptor at all.
    #[error("descriptor chain is truncated or loops")]
    BrokenChain,
    /// More descriptors than the engine accepts for one request.
    #[error("descriptor chain too long")]
    ChainTooLong,
    /// A device-readable descriptor followed a device-writable one.
    #[error("readable descriptor after a writable one")]
    ReadableAfterWritable,
    /// A descriptor's address range is not (entirely) inside guest memory.
    #[error("descriptor outside guest memory")]
    OutOfBounds,
    /// A request needs more I/O segments than advertised (`seg_max`).
    #[error("too many segments")]
    TooManySegments,
}

/// Errors of the `backends` crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Creating or registering the io_uring instance failed.
    #[error("io_uring setup: {0}")]
    UringSetup(#[source] io::Error),
    /// Restricting or enabling a ring (`IORING_REGISTER_RESTRICTIONS`, `ENABLE_RINGS`) failed.
    #[error("io_uring restrictions: {0}")]
    UringRestrict(#[source] io::Error),
    /// In-flight requests did not complete in time when a ring was stopped.
    #[error("{inflight} request(s) still in flight after {secs} s")]
    SettleTimeout {
        /// Requests left in flight.
        inflight: usize,
        /// How long was waited.
        secs: u64,
    },
    /// `io_uring_enter` failed.
    #[error("io_uring submit: {0}")]
    UringSubmit(#[source] io::Error),
    /// A virtqueue operation failed (for example the used ring is outside guest memory).
    #[error("virtqueue: {0}")]
    Queue(#[from] virtio_queue::Error),
    /// Signalling the driver (call eventfd) failed.
    #[error("signal used queue: {0}")]
    Signal(#[source] io::Error),
    /// Creating or using an eventfd failed.
    #[error("eventfd: {0}")]
    EventFd(#[source] io::Error),
    /// Opening the backing file failed.
    #[error("open {path}: {source}")]
    Open {
        /// Backing file path.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
    /// Reading the size of the backing file or block device failed.
    #[error("size of {path}: {source}")]
    DiskSize {
        /// Backing file path.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
    /// A command line or configuration value is unusable.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A TAP operation failed.
    #[error("tap {name}: {op}: {source}")]
    Tap {
        /// Interface name.
        name: String,
        /// What was attempted.
        op: &'static str,
        /// OS error.
        source: io::Error,
    },
    /// A lock was poisoned by a panicking thread.
    #[error("{0} lock poisoned")]
    Poisoned(&'static str),
    /// The vhost-user daemon failed.
    #[error("vhost-user: {0}")]
    VhostUser(String),
    /// A thread's seccomp filter could not be built or installed.
    #[error(
        "seccomp filter of the {thread} thread: {source} (--seccomp off runs without filters)"
    )]
    Seccomp {
        /// The thread kind.
        thread: &'static str,
        /// What failed.
        #[source]
        source: seccompiler::Error,
    },
    /// Dropping privileges (user, group, capabilities, no-new-privs) failed.
    #[error("{0}")]
    Privileges(String),
    /// The metrics endpoint could not be served or read.
    #[error("metrics: {0}")]
    Metrics(String),
    /// `--queue-affinity` is malformed or names what does not exist.
    #[error("--queue-affinity: {0}")]
    Affinity(#[from] crate::placement::AffinityError),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
