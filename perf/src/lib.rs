// SPDX-License-Identifier: Apache-2.0
//! Benchmarks for the VMM project. [`blk`] drives vhost-user-blk backends (ours,
//! qemu-storage-daemon) and a raw io_uring baseline with libblkio as the client;
//! [`net`] drives our vhost-user-net backend with the project's own virtio-net load
//! generator against raw io_uring on the same TAP; [`boot`] times guest boot-to-init
//! against QEMU; [`cpu`] charges CPU time to threads and processes; [`idle`] keeps idle CPUs polling while a backend benchmark runs;
//! [`metrics`] reads the processes' `/metrics` endpoints (scraping during runs, `top`);
//! [`provenance`] stamps every result file with its commit, command line and schema version.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

pub mod blk;
pub mod boot;
pub mod compare;
pub mod cpu;
pub mod idle;
pub mod metrics;
pub mod net;
pub mod provenance;

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
    /// A lab host run failed.
    #[error("lab: {0}")]
    Lab(#[from] lab::LabError),
    /// Writing the report or a chart failed.
    #[error("report: {0}")]
    Report(String),
    /// The load generator's virtqueue (bad layout, or the device returned a bad entry).
    #[error("virtqueue: {0}")]
    Ring(#[from] net::ring::RingError),
    /// The benchmark cannot run on this host (and why).
    #[error("cannot run here: {0}")]
    Unavailable(String),
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

/// Wait until a backend listens on `socket`; fails if `server` exits first or after 10 s.
pub(crate) fn wait_for_socket(socket: &Path, mut server: Option<&mut Child>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if let Some(Ok(Some(st))) = server.as_mut().map(|s| s.try_wait()) {
            return Err(Error::Backend(format!("exited before listening: {st}")));
        }
        if Instant::now() > deadline {
            return Err(Error::Backend(format!(
                "socket {} did not appear",
                socket.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Give a backend `grace` to exit on its own (its frontend has disconnected), then SIGTERM
/// it, and reap it.
pub(crate) fn stop_child(child: &mut Child, grace: Duration) {
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: kill(2) on our own, not yet reaped, child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}
