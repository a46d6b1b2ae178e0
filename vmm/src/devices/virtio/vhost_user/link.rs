//! What every vhost-user device shares: the frontend connection and its
//! negotiation, activation by the guest driver (features, memory table,
//! vrings with their kick/call/err eventfds) and orderly teardown.

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::Path;

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::reply_deadline::ReplyDeadline;
use crate::devices::virtio::{
    Activation, BackendState, QueueState, VirtioError, VIRTIO_F_VERSION_1,
};

/// VHOST_USER_F_PROTOCOL_FEATURES in the feature word.
pub(super) const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// A connected vhost-user backend.
pub(super) struct VhostUserLink {
    /// Device name for logs (`vhost-user-blk0 /path/to/socket`).
    pub(super) name: String,
    /// The backend's socket, for error messages.
    pub(super) socket: String,
    /// Bounds every exchange with the backend (it watches a duplicate of the socket).
    pub(super) deadline: ReplyDeadline,
    /// The protocol connection.
    pub(super) frontend: Frontend,
    /// Virtio features the backend offers.
    pub(super) backend_features: u64,
    /// Protocol features both sides agreed on.
    pub(super) protocol: VhostUserProtocolFeatures,
    /// The backend went away; nothing more is sent.
    pub(super) lost: bool,
    started: Vec<bool>,
    errs: Vec<EventFd>,
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

impl VhostUserLink {
    /// Connects to `path`, takes ownership, checks VERSION_1 and protocol
    /// features, and agrees on `wanted` protocol features (REPLY_ACK turns on
    /// need-reply for every later message).
    pub(super) fn connect(
        path: &Path,
        name: String,
        max_queues: u64,
        wanted: VhostUserProtocolFeatures,
    ) -> Result<Self, VirtioError> {
        let socket = path.display().to_string();
        let err = |what| vhost_err(&socket, what);
        let mut frontend = Frontend::connect(path, max_queues).map_err(err("connect"))?;
        // SAFETY: the frontend's socket is open for the whole call; `start` duplicates it.
        let deadline = ReplyDeadline::start(
            unsafe { BorrowedFd::borrow_raw(frontend.as_raw_fd()) },
            &socket,
        )?;
        let (backend_features, protocol) = deadline.guard("handshake", || {
            frontend.set_owner().map_err(err("SET_OWNER"))?;
            let backend_features = frontend.get_features().map_err(err("GET_FEATURES"))?;
            if backend_features & VIRTIO_F_VERSION_1 == 0 {
                return Err(VirtioError::Backend {
                    socket: socket.clone(),
                    what: "backend does not offer VIRTIO_F_VERSION_1".into(),
                });
            }
            if backend_features & PROTOCOL_FEATURES == 0 {
                return Err(VirtioError::Backend {
                    socket: socket.clone(),
                    what: "backend does not offer VHOST_USER_F_PROTOCOL_FEATURES".into(),
                });
            }
            let protocol = frontend
                .get_protocol_features()
                .map_err(err("GET_PROTOCOL_FEATURES"))?
                & wanted;
            frontend
                .set_protocol_features(protocol)
                .map_err(err("SET_PROTOCOL_FEATURES"))?;
            Ok((backend_features, protocol))
        })?;
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        Ok(Self {
            name,
            socket,
            deadline,
            frontend,
            backend_features,
            protocol,
            lost: false,
            started: Vec::new(),
            errs: Vec::new(),
        })
    }

    /// The connection's state, as the API reports it.
    pub(super) fn state(&self) -> BackendState {
        if self.lost {
            BackendState::NeedsReset
        } else {
            BackendState::Connected
        }
    }

    /// Sizes the per-queue state once the device knows its queue count.
    pub(super) fn set_num_queues(&mut self, n: usize) -> Result<(), VirtioError> {
        self.errs = (0..n)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))
            .collect::<Result<Vec<_>, _>>()
            .map_err(VirtioError::Io)?;
        self.started = vec![false; n];
        Ok(())
    }

    /// DRIVER_OK: acked features (+ protocol features), the memory table,
    /// then every ready queue's rings and eventfds.
    pub(super) fn activate(&mut self, act: &Activation<'_>) -> Result<(), VirtioError> {
        if self.lost {
            return Err(VirtioError::Backend {
                socket: self.socket.clone(),
                what: "backend disconnected".into(),
            });
        }
        let features = (act.acked_features & self.backend_features) | PROTOCOL_FEATURES;
        let Self {
            deadline,
            frontend,
            socket,
            started,
            errs,
            ..
        } = self;
        deadline.guard("activation", || {
            let err = |what| vhost_err(socket, what);
            frontend
                .set_features(features)
                .map_err(err("SET_FEATURES"))?;
            let regions = act
                .mem
                .iter()
                .map(VhostUserMemoryRegionInfo::from_guest_region)
                .collect::<Result<Vec<_>, _>>()
                .map_err(err("memory regions"))?;
            frontend
                .set_mem_table(&regions)
                .map_err(err("SET_MEM_TABLE"))?;
            for (i, q) in act.queues.iter().enumerate() {
                if q.ready && start_queue(frontend, socket, errs, i, act, q)? {
                    if let Some(s) = started.get_mut(i) {
                        *s = true;
                    }
                }
            }
            Ok(())
        })
    }

    /// Device reset or VMM exit: stop every started ring (GET_VRING_BASE).
    pub(super) fn reset(&mut self) {
        let Self {
            deadline,
            frontend,
            socket,
            name,
            started,
            lost,
            ..
        } = self;
        for (i, was_started) in started.iter_mut().enumerate() {
            if !std::mem::take(was_started) || *lost {
                continue;
            }
            let stopped = deadline.guard("reset", || {
                // GET_VRING_BASE stops the ring even if disabling it failed.
                if let Err(e) = frontend.set_vring_enable(i, false) {
                    tracing::warn!("{name}: queue {i}: SET_VRING_ENABLE 0: {e}");
                }
                frontend
                    .get_vring_base(i)
                    .map_err(vhost_err(socket, "GET_VRING_BASE"))
            });
            match stopped {
                Ok(base) => tracing::debug!("{name}: queue {i} stopped at {base}"),
                Err(e) => tracing::warn!("{name}: queue {i}: {e}"),
            }
        }
    }

    /// The socket, watched for hangup.
    pub(super) fn hangup_fd(&self) -> RawFd {
        self.frontend.as_raw_fd()
    }
}

/// GET_CONFIG of the device's first `N` config bytes (zero-filled past what the backend sends).
pub(super) fn read_config<const N: usize>(
    frontend: &mut Frontend,
    socket: &str,
) -> Result<[u8; N], VirtioError> {
    let (_, payload) = frontend
        .get_config(0, N as u32, VhostUserConfigFlags::empty(), &[0u8; N])
        .map_err(vhost_err(socket, "GET_CONFIG"))?;
    let mut config = [0u8; N];
    let n = payload.len().min(N);
    config[..n].copy_from_slice(&payload[..n]);
    Ok(config)
}

/// Hands queue `i`'s size, ring addresses, base and eventfds to the backend and enables it;
/// `false` if the queue has no eventfds (nothing was sent).
fn start_queue(
    f: &mut Frontend,
    socket: &str,
    errs: &[EventFd],
    i: usize,
    act: &Activation<'_>,
    q: &QueueState,
) -> Result<bool, VirtioError> {
    let (dl, al, ul) = q.ring_lengths();
    let data = VringConfigData {
        queue_max_size: q.max_size,
        queue_size: q.size,
        flags: 0,
        desc_table_addr: host_addr(act.mem, i, q.desc, dl)?,
        used_ring_addr: host_addr(act.mem, i, q.used, ul)?,
        avail_ring_addr: host_addr(act.mem, i, q.avail, al)?,
        log_addr: None,
    };
    let (Some(kick), Some(call), Some(errfd)) = (act.kicks.get(i), act.calls.get(i), errs.get(i))
    else {
        return Ok(false);
    };
    let e = |what| vhost_err(socket, what);
    f.set_vring_num(i, q.size).map_err(e("SET_VRING_NUM"))?;
    f.set_vring_addr(i, &data).map_err(e("SET_VRING_ADDR"))?;
    f.set_vring_base(i, 0).map_err(e("SET_VRING_BASE"))?;
    f.set_vring_kick(i, kick).map_err(e("SET_VRING_KICK"))?;
    f.set_vring_call(i, call).map_err(e("SET_VRING_CALL"))?;
    f.set_vring_err(i, errfd).map_err(e("SET_VRING_ERR"))?;
    f.set_vring_enable(i, true).map_err(e("SET_VRING_ENABLE"))?;
    Ok(true)
}

/// Translates a guest ring address to this process's address, checking the
/// whole ring lies in one RAM region.
pub(super) fn host_addr(
    mem: &GuestMemoryMmap,
    queue: usize,
    gpa: u64,
    len: u64,
) -> Result<u64, VirtioError> {
    let bad = || VirtioError::BadRing {
        queue,
        addr: gpa,
        len,
    };
    let region = mem.find_region(GuestAddress(gpa)).ok_or_else(bad)?;
    let off = region.to_region_addr(GuestAddress(gpa)).ok_or_else(bad)?;
    if off.0.checked_add(len).is_none_or(|end| end > region.len()) {
        return Err(bad());
    }
    let ptr = region.get_host_address(off).map_err(|_| bad())?;
    Ok(ptr as u64)
}
