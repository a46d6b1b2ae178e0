// SPDX-License-Identifier: Apache-2.0
//! The crate's single error type.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while building lab images or running a lab host.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A filesystem or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path involved.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `scripts/build-images.sh` failed or did not produce an expected image.
    #[error("building lab images failed: {0}")]
    BuildImages(String),
    /// `qemu-system-x86_64` is not installed (or `LAB_QEMU` points nowhere).
    #[error("qemu-system-x86_64 not found in PATH (install qemu-system-x86)")]
    QemuMissing,
    /// A path given for an archive entry is not usable (empty, or contains `..`).
    #[error("invalid archive path {0:?}")]
    InvalidPath(PathBuf),
    /// `ldd` could not resolve the libraries of a binary.
    #[error("ldd {binary:?}: {reason}")]
    Ldd {
        /// The binary being inspected.
        binary: PathBuf,
        /// Why it failed (e.g. a library that is "not found").
        reason: String,
    },
    /// The lab did not finish in time; QEMU was killed.
    #[error("lab run timed out after {timeout:?}; last console lines:\n{tail}")]
    Timeout {
        /// The configured timeout.
        timeout: Duration,
        /// The last console lines.
        tail: String,
    },
    /// The lab host did not print its boot marker in time (its own kernel hung while booting,
    /// a fault of the emulation); QEMU was killed without waiting for the run's timeout.
    #[error("the lab host did not finish booting within {after:?}; last console lines:\n{tail}")]
    BootStalled {
        /// The boot deadline.
        after: Duration,
        /// The last console lines.
        tail: String,
    },
    /// The lab host's own kernel reported a soft lockup of a nested VMM's vCPU thread (stuck in
    /// `KVM_RUN`: TCG's nested SVM stopped delivering exits); QEMU was killed at once.
    #[error("the lab host kernel stalled in a nested VMM's KVM_RUN; last console lines:\n{tail}")]
    LabHostStalled {
        /// The last console lines.
        tail: String,
    },
    /// The console printed nothing for the run's silence limit (a nested guest whose vCPUs
    /// stopped running, or a script step that hangs); QEMU was killed without waiting for the
    /// timeout.
    #[error("the lab console was silent for {after:?}; last console lines:\n{tail}")]
    Silent {
        /// The silence limit.
        after: Duration,
        /// The last console lines.
        tail: String,
    },
    /// A nested guest's kernel reported one of its CPUs stuck for at least
    /// [`GUEST_STALL`](crate::GUEST_STALL) (a vCPU that stopped running under the lab's nested
    /// virtualization, or a guest that hangs); QEMU was killed without waiting for the timeout.
    #[error("a nested guest's CPU has been stuck for {stuck:?}; last console lines:\n{tail}")]
    GuestStalled {
        /// How long the guest said its CPU had been stuck.
        stuck: Duration,
        /// The last console lines.
        tail: String,
    },
    /// QEMU exited without the lab printing `LAB-EXIT-STATUS=N`.
    #[error(
        "lab ended without LAB-EXIT-STATUS marker ({qemu_status}); last console lines:\n{tail}"
    )]
    NoExitMarker {
        /// How QEMU exited.
        qemu_status: String,
        /// The last console lines, followed by QEMU's own stderr.
        tail: String,
    },
}

impl LabError {
    /// Wraps an I/O error with context.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        LabError::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether the run was given up because the lab stopped making progress (a boot that
    /// hangs, a stalled nested VMM or guest CPU, a silent console) rather than failing.
    pub fn is_stall(&self) -> bool {
        matches!(
            self,
            LabError::BootStalled { .. }
                | LabError::LabHostStalled { .. }
                | LabError::GuestStalled { .. }
                | LabError::Silent { .. }
        )
    }
}

/// Shorthand for `Result<T, LabError>`.
pub type Result<T> = std::result::Result<T, LabError>;
