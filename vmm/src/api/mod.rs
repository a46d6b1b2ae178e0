// SPDX-License-Identifier: Apache-2.0
//! The operator's API: `vmm run --api-socket PATH` serves HTTP/1.1 with JSON
//! bodies on a Unix socket (mode 0600), endpoints named as Cloud Hypervisor
//! names them (`/api/v1/vm.info`, `vm.pause`, ...; `openapi.yaml` beside this
//! file documents them); `vmm remote` is the client.
//!
//! * [`server`] — the `vmm-api` thread: parses requests ([`minihttp`]: one
//!   request per connection, a read deadline, a 64 KiB body cap), answers
//!   `vmm.ping` itself and hands everything else to the VMM's event loop;
//! * this module — the control plane between them: an [`ApiRequest`] with a
//!   reply channel goes through a crossbeam channel, and an eventfd the event
//!   loop polls wakes it; the API thread waits for the reply with a deadline,
//!   so no client can stall the VMM and a busy VMM cannot hold a client forever;
//! * [`types`] — the JSON bodies;
//! * [`client`] — `vmm remote`: requests and human-readable tables.

pub mod client;
pub mod server;
pub mod types;

use std::time::Duration;

use backends::metrics::QueueMetrics;
use crossbeam::channel::{self, Receiver, Sender};
use vmm_sys_util::eventfd::EventFd;

use types::{QueueCounters, VmCounters, VmInfo, VmState};

/// What the API asks the VMM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiRequest {
    /// `vm.info`.
    Info,
    /// `vm.counters`.
    Counters,
    /// `vm.pause`.
    Pause,
    /// `vm.resume`.
    Resume,
    /// `vm.shutdown`: press the power button, or stop at once with `force`.
    Shutdown {
        /// Stop without asking the guest.
        force: bool,
    },
    /// `vm.reboot`.
    Reboot,
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq)]
pub enum ApiResponse {
    /// The VM's state, configuration and devices.
    Info(Box<VmInfo>),
    /// The counters.
    Counters(VmCounters),
    /// Done (204).
    Done,
}

/// A refused or failed request: an HTTP status and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// 409 for an illegal transition, 500 when the VMM failed, 503 when it did not answer.
    pub status: u16,
    /// What happened.
    pub message: String,
}

impl ApiError {
    /// 409: the request does not fit the VM's state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self {
            status: 409,
            message: message.into(),
        }
    }

    /// 500: the VMM tried and failed.
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            status: 500,
            message: message.into(),
        }
    }
}

/// The answer to a request.
pub type ApiReply = Result<ApiResponse, ApiError>;

impl VmState {
    /// Whether `request` is legal in this state: 409 for a transition that is
    /// not (resume while running, pause while paused, a graceful shutdown of a
    /// paused VM, whose guest cannot see the button).
    pub fn admits(self, request: &ApiRequest) -> Result<(), ApiError> {
        use VmState::{Paused, Running, Shutdown};
        let refuse = |why: &str| Err(ApiError::conflict(format!("{why} (the VM is {self})")));
        match (request, self) {
            (ApiRequest::Pause, Running) | (ApiRequest::Resume, Paused) => Ok(()),
            (ApiRequest::Pause, Paused) => refuse("already paused"),
            (ApiRequest::Pause, Shutdown) => refuse("shutting down: cannot pause"),
            (ApiRequest::Resume, _) => refuse("not paused"),
            (ApiRequest::Shutdown { force: false }, Running) => Ok(()),
            (ApiRequest::Shutdown { force: false }, Paused) => {
                refuse("paused: resume it first, or use ?force=true")
            }
            (ApiRequest::Shutdown { force: false }, Shutdown) => refuse("already shutting down"),
            (ApiRequest::Shutdown { force: true }, _)
            | (ApiRequest::Reboot | ApiRequest::Info | ApiRequest::Counters, _) => Ok(()),
        }
    }
}

/// A request and where its reply goes.
pub struct ApiMessage {
    /// The request.
    pub request: ApiRequest,
    /// The reply channel (the API thread waits on its other end).
    pub reply: Sender<ApiReply>,
}

/// The API thread's end of the control plane.
pub struct ApiSender {
    tx: Sender<ApiMessage>,
    wake: EventFd,
}

/// The VMM's end: drained by the event loop when [`ApiReceiver::eventfd`] is readable.
pub struct ApiReceiver {
    rx: Receiver<ApiMessage>,
    wake: EventFd,
}

/// A connected pair of ends.
pub fn control_channel() -> std::io::Result<(ApiSender, ApiReceiver)> {
    let (tx, rx) = channel::unbounded();
    let wake = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
    let sender = ApiSender {
        tx,
        wake: wake.try_clone()?,
    };
    Ok((sender, ApiReceiver { rx, wake }))
}

impl ApiSender {
    /// Send `request` to the VMM and wait up to `timeout` for its reply (503 without one: the
    /// VMM is rebooting, stopping or stuck).
    pub fn call(&self, request: ApiRequest, timeout: Duration) -> ApiReply {
        let (reply, answer) = channel::bounded(1);
        let unavailable = |why: &str| ApiError {
            status: 503,
            message: why.to_string(),
        };
        self.tx
            .send(ApiMessage { request, reply })
            .map_err(|_| unavailable("the VM is gone"))?;
        if let Err(e) = self.wake.write(1) {
            tracing::error!("api: cannot wake the VMM: {e}");
        }
        answer
            .recv_timeout(timeout)
            .map_err(|_| unavailable("the VMM did not answer in time"))?
    }
}

impl ApiReceiver {
    /// The eventfd that becomes readable when requests wait.
    pub fn eventfd(&self) -> &EventFd {
        &self.wake
    }

    /// The waiting requests (consumes the wake-up).
    pub fn drain(&self) -> Vec<ApiMessage> {
        let _ = self.wake.read();
        self.rx.try_iter().collect()
    }
}

impl From<&QueueMetrics> for QueueCounters {
    fn from(m: &QueueMetrics) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &m.stats;
        let errors = [&s.io_errors, &s.unsupported, &s.dropped, &s.used_rejected];
        Self {
            queue: m.queue.clone(),
            requests: s.requests.load(Relaxed),
            bytes_read: s.bytes_read.load(Relaxed),
            bytes_written: s.bytes_written.load(Relaxed),
            errors: errors.iter().map(|c| c.load(Relaxed)).sum(),
            notifications: s.notifications.load(Relaxed),
            kicks: s.kicks.load(Relaxed),
            inflight: s.inflight.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn illegal_transitions_are_conflicts() {
        use ApiRequest::{Counters, Info, Pause, Reboot, Resume};
        use VmState::{Paused, Running};
        let stop = |force| ApiRequest::Shutdown { force };
        let down = VmState::Shutdown;
        let ok = |state: VmState, r: ApiRequest| state.admits(&r).is_ok();
        assert!(ok(Running, Pause) && ok(Paused, Resume));
        assert!(!ok(Paused, Pause) && !ok(Running, Resume) && !ok(down, Resume));
        assert!(!ok(down, Pause));
        assert!(ok(Running, stop(false)));
        assert!(!ok(Paused, stop(false)));
        assert!(!ok(down, stop(false)));
        for state in [Running, Paused, down] {
            assert!(ok(state, stop(true)) && ok(state, Reboot));
            assert!(ok(state, Info) && ok(state, Counters));
        }
        let e = Running.admits(&Resume).unwrap_err();
        assert_eq!(e.status, 409);
        assert!(e.message.contains("Running"), "{}", e.message);
    }

    #[test]
    fn a_request_wakes_the_vmm_and_waits_for_its_reply() {
        let (sender, receiver) = control_channel().unwrap();
        let vmm = std::thread::spawn(move || {
            let mut pfd = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(receiver.eventfd()),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            assert_eq!(unsafe { libc::poll(&mut pfd, 1, 5000) }, 1);
            for m in receiver.drain() {
                assert_eq!(m.request, ApiRequest::Pause);
                m.reply.send(Ok(ApiResponse::Done)).unwrap();
            }
            receiver
        });
        let t = Duration::from_secs(5);
        assert_eq!(sender.call(ApiRequest::Pause, t), Ok(ApiResponse::Done));
        // A VMM that does not answer: 503 after the deadline.
        let receiver = vmm.join().unwrap();
        let e = sender
            .call(ApiRequest::Info, Duration::from_millis(50))
            .unwrap_err();
        assert_eq!(e.status, 503);
        // A VMM that is gone: 503 at once.
        drop(receiver);
        let e = sender.call(ApiRequest::Info, t).unwrap_err();
        assert_eq!(e.status, 503);
    }
}
