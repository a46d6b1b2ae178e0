//! Benchmarks for the VMM project. [`blk`] drives vhost-user-blk backends (ours,
//! qemu-storage-daemon) and a raw io_uring baseline with libblkio as the client;
//! [`boot`] times guest boot-to-init against QEMU.

pub mod blk;
pub mod boot;
pub mod compare;

/// Errors of the `perf` crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// libblkio reported an error.
    #[error("blkio ({context}): {message}")]
    Blkio {
        /// What was being done.
        context: String,
        /// libblkio's message.
        message: String,
    },
    /// Starting or talking to a backend process failed.
    #[error("backend {0}")]
    Backend(String),
    /// Writing the report or a chart failed.
    #[error("report: {0}")]
    Report(String),
    /// The command line asked for something impossible.
    #[error("{0}")]
    Usage(String),
    /// File or process I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// OS error.
        source: std::io::Error,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}
