// SPDX-License-Identifier: Apache-2.0
//! Virtio devices, in three tiers that share one transport:
//!
//! * [`transport`] — the virtio-pci modern transport the guest driver sees
//!   (common configuration, queue registers, BAR, MSI-X, ioeventfds, irqfds);
//! * [`vhost_user`] — devices whose queues an external vhost-user backend
//!   serves (the frontend link, blk, net, reply deadline, hangup monitor);
//! * [`local`] — devices whose queues VMM threads serve (in-VMM blk and net).
//!
//! This module holds what they share: status bits, errors, the
//! [`VirtioDevice`] trait a device implements and the [`Activation`] it gets.

pub mod local;
pub mod transport;
pub mod vhost_user;

use std::os::fd::RawFd;

use backends::metrics::QueueMetrics;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use transport::{QueueState, VirtioPciDevice};
pub use vhost_user::{BackendTarget, Connection, ReconnectError};

/// Device status bits (virtio 1.x §2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u8 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u8 = 2;
    /// The driver is ready: queues may be used.
    pub const DRIVER_OK: u8 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u8 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u8 = 0x40;
    /// The guest gave up on the device.
    pub const FAILED: u8 = 0x80;
}

/// `VIRTIO_F_VERSION_1`: the device is a modern (1.x) device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// "No MSI-X vector" in the common configuration's vector fields.
pub const NO_VECTOR: u16 = 0xffff;

/// Errors of the virtio devices.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// A vhost-user request failed (socket, protocol or backend error).
    #[error("vhost-user {socket}: {what}: {source}")]
    VhostUser {
        /// The backend's socket path.
        socket: String,
        /// The request that failed.
        what: &'static str,
        /// The protocol error.
        #[source]
        source: vhost::Error,
    },
    /// The backend lacks something this VMM requires.
    #[error("vhost-user {socket}: {what}")]
    Backend {
        /// The backend's socket path.
        socket: String,
        /// What is missing.
        what: String,
    },
    /// A queue's ring addresses are not inside guest RAM.
    #[error("queue {queue}: ring at {addr:#x}+{len:#x} is outside guest RAM")]
    BadRing {
        /// Queue index.
        queue: usize,
        /// Guest-physical address of the ring part.
        addr: u64,
        /// Its length.
        len: u64,
    },
    /// Creating an eventfd or a thread failed.
    #[error("{0}")]
    Io(#[source] std::io::Error),
    /// KVM rejected an ioeventfd.
    #[error("KVM ioeventfd: {0}")]
    Kvm(#[from] kvm_ioctls::Error),
    /// Interrupt routing failed.
    #[error(transparent)]
    Interrupt(#[from] crate::vstate::interrupts::InterruptError),
    /// The backing file of an in-VMM disk could not be opened.
    #[error("disk {path}: {source}")]
    Disk {
        /// The file.
        path: String,
        /// What went wrong.
        #[source]
        source: backends::Error,
    },
    /// The TAP of an in-VMM NIC could not be set up.
    #[error("tap {tap}: {source}")]
    Tap {
        /// The interface name.
        tap: String,
        /// What went wrong.
        #[source]
        source: backends::Error,
    },
    /// The transport has no kick or call eventfd for a queue.
    #[error("queue {queue}: no eventfd")]
    MissingEventfd {
        /// Queue index.
        queue: usize,
    },
    /// The request engine of an in-VMM queue failed.
    #[error("queue {queue}: request engine: {source}")]
    Engine {
        /// Queue index.
        queue: usize,
        /// What went wrong.
        #[source]
        source: backends::Error,
    },
    /// No room for the BAR.
    #[error("no room for a {0:#x}-byte BAR in the 64-bit PCI window")]
    NoBarSpace(u64),
}

/// A driver read of `data.len()` bytes at `offset` in the device-specific
/// configuration `config`: out-of-range (or wrapping) reads return zeros.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = start
        .checked_add(data.len())
        .and_then(|end| config.get(start..end))
    {
        data.copy_from_slice(src);
    }
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct Activation<'a> {
    /// Features the driver acknowledged.
    pub acked_features: u64,
    /// Queue state (only queues with `ready` set are to be started).
    pub queues: &'a [QueueState],
    /// Per queue: the eventfd KVM signals on a notify write.
    pub kicks: &'a [EventFd],
    /// Per queue: the eventfd bound to the queue's MSI-X vector.
    pub calls: &'a [EventFd],
    /// Guest memory.
    pub mem: &'a GuestMemoryMmap,
}

/// The state of a vhost-user device's connection to its backend, as the API
/// reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendState {
    /// The backend is connected.
    Connected,
    /// The backend hung up; the VMM is connecting again.
    Reconnecting,
    /// The backend is gone for good: the device is marked DEVICE_NEEDS_RESET.
    NeedsReset,
}

impl BackendState {
    /// The API's name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Reconnecting => "reconnecting",
            Self::NeedsReset => "needs-reset",
        }
    }
}

/// A virtio device model behind the PCI transport: the transport drives it;
/// a vhost-user backend or VMM threads serve its queues.
pub trait VirtioDevice: Send {
    /// Virtio device ID (2 = block); the PCI device ID is 0x1040 + this.
    fn device_type(&self) -> u16;
    /// Features offered to the guest.
    fn features(&self) -> u64;
    /// Number of queues.
    fn num_queues(&self) -> u16;
    /// Largest queue size the device accepts.
    fn queue_max_size(&self) -> u16;
    /// Reads the device-specific configuration space (out of range reads 0).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the data path (DRIVER_OK).
    fn activate(&mut self, act: Activation<'_>) -> Result<(), VirtioError>;
    /// Stops the data path (device reset by the guest, or VMM exit).
    fn reset(&mut self);
    /// A descriptor whose hangup means the backend is gone (watched by the
    /// device's supervisor thread), if the device has one.
    fn hangup_fd(&self) -> Option<RawFd> {
        None
    }
    /// Where to reconnect when the backend hangs up, if the device does (otherwise a hangup
    /// marks it DEVICE_NEEDS_RESET).
    fn reconnect_target(&self) -> Option<BackendTarget> {
        None
    }
    /// The backend hung up and a reconnect will be tried: stop talking to it, keep everything
    /// the guest sees.
    fn connection_lost(&mut self) {}
    /// A new connection to the backend: check it serves the same device and replay the
    /// setup (the error says why not).
    fn reconnected(&mut self, _conn: Connection) -> Result<(), ReconnectError> {
        Err(ReconnectError::Refused(
            "the device does not reconnect".into(),
        ))
    }
    /// The backend connection is gone for good: stop talking to it.
    fn disconnected(&mut self) {}
    /// The backend connection's state, for a vhost-user device.
    fn backend_state(&self) -> Option<BackendState> {
        None
    }
    /// The backend's metrics address, if the configuration names one.
    fn backend_metrics(&self) -> Option<String> {
        None
    }
    /// The counters of the queues the VMM serves itself (in-VMM devices).
    fn queue_metrics(&self) -> Vec<QueueMetrics> {
        Vec::new()
    }
    /// Stops taking new requests (VMM queue threads finish those they took);
    /// `false` if a thread did not confirm. A vhost-user backend is told nothing.
    fn pause(&mut self) -> bool {
        true
    }
    /// Takes requests again after [`VirtioDevice::pause`].
    fn resume(&mut self) -> bool {
        true
    }
    /// A short name for logs (`vhost-user-blk0 /tmp/vu.sock`).
    fn name(&self) -> String;
}
