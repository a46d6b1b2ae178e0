//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Errors raised by the `vmm` crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or opening a host file failed.
    #[error("{path}: {source}")]
    HostFile {
        /// The file that was accessed.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// A KVM ioctl failed.
    #[error("KVM: {0}")]
    Kvm(#[from] kvm_ioctls::Error),
    /// The io_uring probe failed.
    #[error("io_uring: {0}")]
    IoUring(String),
    /// memfd_create / ftruncate / mmap of a memfd failed.
    #[error("memfd: {0}")]
    Memfd(String),
    /// Serializing a report failed.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Result alias for [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
