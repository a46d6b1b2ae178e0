// SPDX-License-Identifier: Apache-2.0
//! How a guest stops, and the one-shot signal that carries it to the main loop.

use std::fmt;
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::lock;

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// ACPI S5: the guest powered itself off.
    PowerOff,
    /// The guest asked for a reset (reboot, or a panic with `panic=N`).
    Reset(&'static str),
    /// The guest kernel panicked (seen on the console before the reset).
    Panic(String),
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault {
        /// Index of the vCPU.
        cpu: usize,
    },
    /// KVM could not run a vCPU.
    VcpuError {
        /// Index of the vCPU.
        cpu: usize,
        /// What went wrong.
        detail: String,
    },
    /// The VMM received SIGTERM or SIGINT.
    Signal(i32),
    /// The API stopped the VM at once (`vm.shutdown?force=true`).
    Stopped,
}

impl GuestExit {
    /// The process exit code that reports this outcome.
    ///
    /// 0 power-off (or a forced API shutdown); 2 reset/reboot; 3 kernel panic;
    /// 4 triple fault or vCPU error; 128+N terminated by signal N. (1 is a VMM
    /// error.)
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::PowerOff | Self::Stopped => 0,
            Self::Reset(_) => 2,
            Self::Panic(_) => 3,
            Self::TripleFault { .. } | Self::VcpuError { .. } => 4,
            Self::Signal(n) => 128 + n,
        }
    }
}

impl fmt::Display for GuestExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PowerOff => write!(f, "guest powered off"),
            Self::Reset(how) => write!(f, "guest requested a reset ({how}); the VM was stopped"),
            Self::Panic(msg) => write!(f, "guest kernel panicked: {msg}"),
            Self::TripleFault { cpu } => write!(f, "vCPU {cpu} triple-faulted (KVM_EXIT_SHUTDOWN)"),
            Self::VcpuError { cpu, detail } => write!(f, "vCPU {cpu} failed: {detail}"),
            Self::Signal(n) => write!(f, "stopped by signal {n}"),
            Self::Stopped => write!(f, "stopped through the API (vm.shutdown, force)"),
        }
    }
}

/// The first stop request wins; the eventfd wakes the main loop.
pub struct ExitSignal {
    reason: Mutex<Option<GuestExit>>,
    evt: EventFd,
}

impl ExitSignal {
    /// A signal with nothing requested yet.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        })
    }

    /// Requests a stop; later requests are ignored.
    pub fn request(&self, why: GuestExit) {
        let mut reason = lock(&self.reason);
        if reason.is_none() {
            tracing::debug!("stop requested: {why}");
            *reason = Some(why);
            if let Err(e) = self.evt.write(1) {
                tracing::error!("cannot wake the main loop: {e}");
            }
        }
    }

    /// The stop reason, once requested.
    pub fn reason(&self) -> Option<GuestExit> {
        lock(&self.reason).clone()
    }

    /// The eventfd that becomes readable on the first request.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_request_wins() {
        let s = ExitSignal::new().unwrap();
        s.request(GuestExit::PowerOff);
        s.request(GuestExit::TripleFault { cpu: 1 });
        assert_eq!(s.reason(), Some(GuestExit::PowerOff));
        assert_eq!(s.eventfd().read().unwrap(), 1);
        assert_eq!(GuestExit::PowerOff.exit_code(), 0);
        assert_ne!(GuestExit::Panic("x".into()).exit_code(), 0);
        assert_ne!(GuestExit::TripleFault { cpu: 0 }.exit_code(), 0);
    }
}
