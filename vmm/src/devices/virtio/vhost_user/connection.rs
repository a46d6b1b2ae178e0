// SPDX-License-Identifier: Apache-2.0
//! One connection to a vhost-user backend: the socket, the handshake up to the agreed
//! protocol features, and a deadline on every exchange. A device opens one when it is
//! created and, when the backend hangs up and reconnecting is on, its supervisor opens the
//! next ones ([`BackendTarget`] says where and how).

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::PathBuf;

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{
    Error as ProtocolError, Frontend, VhostUserFrontend, VhostUserProtocolFeatures,
    VhostUserVirtioFeatures,
};
use vhost::VhostBackend;

use super::reply_deadline::ReplyDeadline;
use crate::config::ReconnectConfig;
use crate::devices::virtio::{VirtioError, VIRTIO_F_VERSION_1};

/// VHOST_USER_F_PROTOCOL_FEATURES in the feature word.
pub(super) const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// Where a device's backend listens and how to talk to it: everything needed to connect
/// again without the device.
#[derive(Clone, Debug)]
pub struct BackendTarget {
    /// The backend's socket.
    pub socket: PathBuf,
    /// The device's name for logs (`vhost-user-blk0 /path/to/socket`).
    pub name: String,
    /// Queues the device uses (the frontend's limit for queue indexes).
    pub max_queues: u64,
    /// Protocol features the device asks for.
    pub wanted: VhostUserProtocolFeatures,
    /// What to do when the backend hangs up.
    pub reconnect: ReconnectConfig,
}

/// A connected vhost-user backend, negotiated up to the protocol features.
pub struct Connection {
    /// The backend's socket, for error messages.
    pub(super) socket: String,
    /// Bounds every exchange with the backend (it watches a duplicate of the socket).
    deadline: ReplyDeadline,
    /// The protocol connection.
    frontend: Frontend,
    /// Virtio features the backend offers.
    pub(super) backend_features: u64,
    /// Protocol features both sides agreed on.
    pub(super) protocol: VhostUserProtocolFeatures,
}

/// Maps a `vhost` error to the device error naming the socket and message.
pub(super) fn vhost_err(
    socket: &str,
    what: &'static str,
) -> impl FnOnce(vhost::Error) -> VirtioError {
    let socket = socket.to_string();
    move |source| VirtioError::VhostUser {
        socket,
        what,
        source,
    }
}

/// Whether `e` says the backend closed (or reset) the connection.
fn closed_by_peer(e: &vhost::Error) -> bool {
    let vhost::Error::VhostUserProtocol(e) = e else {
        return false;
    };
    match e {
        ProtocolError::Disconnected | ProtocolError::PartialMessage => true,
        ProtocolError::SocketBroken(io) | ProtocolError::SocketError(io) => {
            matches!(io.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET))
        }
        _ => false,
    }
}

impl Connection {
    /// Connects to the backend of `target`, takes ownership, checks VERSION_1 and protocol
    /// features, and agrees on the wanted protocol features (REPLY_ACK turns on need-reply for
    /// every later message). A backend that closes the connection during the handshake is
    /// reported as such: ours does that to a second frontend while it serves one.
    pub fn open(target: &BackendTarget) -> Result<Self, VirtioError> {
        let socket = target.socket.display().to_string();
        let err = |what| vhost_err(&socket, what);
        let mut frontend =
            Frontend::connect(&target.socket, target.max_queues).map_err(err("connect"))?;
        // SAFETY: the frontend's socket is open for the whole call; `start` duplicates it.
        let deadline = ReplyDeadline::start(
            unsafe { BorrowedFd::borrow_raw(frontend.as_raw_fd()) },
            &socket,
        )?;
        let refused = |what: &'static str| {
            let socket = socket.clone();
            move |e: vhost::Error| {
                if closed_by_peer(&e) {
                    VirtioError::Backend {
                        socket,
                        what: "backend closed the connection during the handshake \
                               (already serving another frontend?)"
                            .into(),
                    }
                } else {
                    vhost_err(&socket, what)(e)
                }
            }
        };
        let (backend_features, protocol) = deadline.guard("handshake", || {
            frontend.set_owner().map_err(refused("SET_OWNER"))?;
            let backend_features = frontend.get_features().map_err(refused("GET_FEATURES"))?;
            let lacks = |what: &str| VirtioError::Backend {
                socket: socket.clone(),
                what: format!("backend does not offer {what}"),
            };
            if backend_features & VIRTIO_F_VERSION_1 == 0 {
                return Err(lacks("VIRTIO_F_VERSION_1"));
            }
            if backend_features & PROTOCOL_FEATURES == 0 {
                return Err(lacks("VHOST_USER_F_PROTOCOL_FEATURES"));
            }
            let protocol = frontend
                .get_protocol_features()
                .map_err(refused("GET_PROTOCOL_FEATURES"))?
                & target.wanted;
            frontend
                .set_protocol_features(protocol)
                .map_err(err("SET_PROTOCOL_FEATURES"))?;
            Ok((backend_features, protocol))
        })?;
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        Ok(Self {
            socket,
            deadline,
            frontend,
            backend_features,
            protocol,
        })
    }

    /// Runs a group of messages (`step`, for the error if no answer comes in time) on the
    /// frontend, with the deadline armed.
    pub(super) fn exchange<T>(
        &mut self,
        step: &str,
        f: impl FnOnce(&mut Frontend, &str) -> Result<T, VirtioError>,
    ) -> Result<T, VirtioError> {
        let Self {
            deadline,
            frontend,
            socket,
            ..
        } = self;
        deadline.guard(step, || f(frontend, socket))
    }

    /// GET_QUEUE_NUM when the MQ protocol feature was agreed on, else 1.
    pub(super) fn queue_num(&mut self) -> Result<u64, VirtioError> {
        if !self.protocol.contains(VhostUserProtocolFeatures::MQ) {
            return Ok(1);
        }
        self.exchange("GET_QUEUE_NUM", |f, socket| {
            f.get_queue_num()
                .map_err(vhost_err(socket, "GET_QUEUE_NUM"))
        })
    }

    /// GET_CONFIG of the device's first `N` config bytes (zero-filled past what the backend
    /// sends), or zeros without the CONFIG protocol feature.
    pub(super) fn read_config<const N: usize>(&mut self) -> Result<[u8; N], VirtioError> {
        let mut config = [0u8; N];
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return Ok(config);
        }
        let payload = self.exchange("GET_CONFIG", |f, socket| {
            f.get_config(0, N as u32, VhostUserConfigFlags::empty(), &[0u8; N])
                .map(|(_, payload)| payload)
                .map_err(vhost_err(socket, "GET_CONFIG"))
        })?;
        let n = payload.len().min(N);
        config[..n].copy_from_slice(&payload[..n]);
        Ok(config)
    }

    /// The socket, watched for hangup.
    pub fn hangup_fd(&self) -> RawFd {
        self.frontend.as_raw_fd()
    }
}
