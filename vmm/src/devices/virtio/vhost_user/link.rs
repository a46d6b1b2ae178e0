// SPDX-License-Identifier: Apache-2.0
//! What every vhost-user device shares: its backend [`Connection`], activation by the guest
//! driver (features, memory table, inflight region, vrings with their kick/call/err
//! eventfds), orderly teardown, and the replay of that setup on a new connection after the
//! backend was lost.
//!
//! The inflight region (`VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`) is asked for at the first
//! DRIVER_OK and kept until the driver resets the device: every start, including the one on a
//! restarted backend, hands it over, so the backend resubmits what its predecessor had taken
//! and not answered.

use std::fs::File;
use std::os::fd::AsRawFd;

use vhost::vhost_user::message::VhostUserInflight;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::connection::{vhost_err, BackendTarget, Connection, PROTOCOL_FEATURES};
use crate::devices::virtio::{Activation, BackendState, QueueState, VirtioError};

/// Why a new connection did not take over a lost backend's device.
#[derive(Debug, thiserror::Error)]
pub enum ReconnectError {
    /// The backend serves another device (other features, queues or configuration): the
    /// device gives up.
    #[error("{0}")]
    Refused(String),
    /// The exchange failed (the backend went away again): the next attempt may succeed.
    #[error(transparent)]
    Lost(#[from] VirtioError),
}

/// What the driver set up at DRIVER_OK, kept to replay it on a new connection.
struct Active {
    acked_features: u64,
    queues: Vec<QueueState>,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    mem: GuestMemoryMmap,
}

impl Active {
    fn new(act: &Activation<'_>) -> Result<Self, VirtioError> {
        let dup = |fds: &[EventFd]| -> Result<Vec<EventFd>, VirtioError> {
            fds.iter()
                .map(|e| e.try_clone().map_err(VirtioError::Io))
                .collect()
        };
        Ok(Self {
            acked_features: act.acked_features,
            queues: act.queues.to_vec(),
            kicks: dup(act.kicks)?,
            calls: dup(act.calls)?,
            mem: act.mem.clone(),
        })
    }
}

/// Where a started ring's backend begins taking requests (`SET_VRING_BASE`).
#[derive(Clone, Copy)]
enum Base {
    /// A ring the driver just set up: its start.
    Zero,
    /// A ring a lost backend served: the driver's used index, read from guest memory (a
    /// dead backend cannot be asked); with the inflight region the backend resumes after the
    /// requests it resubmits.
    GuestUsed,
}

/// A vhost-user device's backend link.
pub(super) struct VhostUserLink {
    /// Device name for logs (`vhost-user-blk0 /path/to/socket`).
    pub(super) name: String,
    target: BackendTarget,
    /// The current connection.
    pub(super) conn: Connection,
    /// The backend went away; nothing is sent until a new connection takes over.
    lost: bool,
    started: Vec<bool>,
    errs: Vec<EventFd>,
    active: Option<Active>,
    /// The region from GET_INFLIGHT_FD, kept until the driver resets the device.
    inflight: Option<(VhostUserInflight, File)>,
}

impl VhostUserLink {
    /// Connects to `target`'s backend.
    pub(super) fn connect(target: BackendTarget) -> Result<Self, VirtioError> {
        let conn = Connection::open(&target)?;
        if !conn
            .protocol
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
        {
            tracing::warn!(
                "{}: the backend does not track in-flight requests (INFLIGHT_SHMFD): \
                 requests in flight when it dies may be lost or answered twice",
                target.name
            );
        }
        Ok(Self {
            name: target.name.clone(),
            target,
            conn,
            lost: false,
            started: Vec::new(),
            errs: Vec::new(),
            active: None,
            inflight: None,
        })
    }

    /// The connection's state, as the API reports it (the transport's DEVICE_NEEDS_RESET
    /// tells a reconnect given up from one under way).
    pub(super) fn state(&self) -> BackendState {
        match (self.lost, self.target.reconnect.enabled) {
            (false, _) => BackendState::Connected,
            (true, true) => BackendState::Reconnecting,
            (true, false) => BackendState::NeedsReset,
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

    /// Whether the backend is away (reconnecting, or given up).
    pub(super) fn lost(&self) -> bool {
        self.lost
    }

    /// Where and how to reconnect, if reconnecting is on.
    pub(super) fn reconnect_target(&self) -> Option<BackendTarget> {
        self.target.reconnect.enabled.then(|| self.target.clone())
    }

    /// DRIVER_OK: acked features (+ protocol features), the memory table, the inflight
    /// region, then every ready queue's rings and eventfds. With the backend away the setup
    /// is kept and sent when a new connection takes over.
    pub(super) fn activate(&mut self, act: &Activation<'_>) -> Result<(), VirtioError> {
        self.active = Some(Active::new(act)?);
        if self.lost {
            tracing::info!(
                "{}: the backend is away; the data path starts when it is back",
                self.name
            );
            return Ok(());
        }
        self.start(Base::Zero)
    }

    /// Sends the kept setup to the current connection.
    fn start(&mut self, base: Base) -> Result<(), VirtioError> {
        let Self {
            conn,
            active,
            inflight,
            errs,
            started,
            ..
        } = self;
        let Some(active) = active else {
            return Ok(());
        };
        let features = (active.acked_features & conn.backend_features) | PROTOCOL_FEATURES;
        let track = conn
            .protocol
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD);
        conn.exchange("activation", |f, socket| {
            let err = |what| vhost_err(socket, what);
            f.set_features(features).map_err(err("SET_FEATURES"))?;
            let regions = active
                .mem
                .iter()
                .map(VhostUserMemoryRegionInfo::from_guest_region)
                .collect::<Result<Vec<_>, _>>()
                .map_err(err("memory regions"))?;
            f.set_mem_table(&regions).map_err(err("SET_MEM_TABLE"))?;
            if track {
                share_inflight(f, socket, inflight, active)?;
            }
            for (i, q) in active.queues.iter().enumerate() {
                if q.ready && start_queue(f, socket, errs, i, active, base)? {
                    if let Some(s) = started.get_mut(i) {
                        *s = true;
                    }
                }
            }
            Ok(())
        })
    }

    /// Device reset or VMM exit: stop every started ring (GET_VRING_BASE) and forget the
    /// driver's setup and the inflight region (the next DRIVER_OK asks for a fresh one).
    pub(super) fn reset(&mut self) {
        self.active = None;
        self.inflight = None;
        let Self {
            conn,
            name,
            started,
            lost,
            ..
        } = self;
        for (i, was_started) in started.iter_mut().enumerate() {
            if !std::mem::take(was_started) || *lost {
                continue;
            }
            let stopped = conn.exchange("reset", |f, socket| {
                // GET_VRING_BASE stops the ring even if disabling it failed.
                if let Err(e) = f.set_vring_enable(i, false) {
                    tracing::warn!("{name}: queue {i}: SET_VRING_ENABLE 0: {e}");
                }
                f.get_vring_base(i)
                    .map_err(vhost_err(socket, "GET_VRING_BASE"))
            });
            match stopped {
                Ok(base) => tracing::debug!("{name}: queue {i} stopped at {base}"),
                Err(e) => tracing::warn!("{name}: queue {i}: {e}"),
            }
        }
    }

    /// The backend hung up: nothing is sent until [`VhostUserLink::resume`].
    pub(super) fn connection_lost(&mut self) {
        self.lost = true;
        self.started.iter_mut().for_each(|s| *s = false);
    }

    /// A new connection `conn` to a backend that serves the same device (checked by the
    /// caller) takes over: replay the driver's setup, if any, with every ring resuming at the
    /// driver's used index, then kick every started queue once (kicks written while the
    /// backend was away wait in their eventfds too).
    pub(super) fn resume(&mut self, conn: Connection) -> Result<(), VirtioError> {
        self.conn = conn;
        self.lost = false;
        if let Err(e) = self.start(Base::GuestUsed) {
            self.connection_lost();
            return Err(e);
        }
        if let Some(active) = &self.active {
            for (i, kick) in active.kicks.iter().enumerate() {
                if self.started.get(i).copied().unwrap_or(false) {
                    if let Err(e) = kick.write(1) {
                        tracing::warn!("{}: queue {i}: kick: {e}", self.name);
                    }
                }
            }
        }
        Ok(())
    }
}

/// GET_INFLIGHT_FD at the first start (for the device's queues at their largest size), then
/// SET_INFLIGHT_FD of that region at every start.
fn share_inflight(
    f: &mut Frontend,
    socket: &str,
    inflight: &mut Option<(VhostUserInflight, File)>,
    active: &Active,
) -> Result<(), VirtioError> {
    if inflight.is_none() {
        let request = VhostUserInflight {
            mmap_size: 0,
            mmap_offset: 0,
            num_queues: u16::try_from(active.queues.len()).unwrap_or(u16::MAX),
            queue_size: active.queues.first().map_or(0, |q| q.max_size),
        };
        let region = f
            .get_inflight_fd(&request)
            .map_err(vhost_err(socket, "GET_INFLIGHT_FD"))?;
        *inflight = Some(region);
    }
    if let Some((region, file)) = inflight.as_ref() {
        f.set_inflight_fd(region, file.as_raw_fd())
            .map_err(vhost_err(socket, "SET_INFLIGHT_FD"))?;
    }
    Ok(())
}

/// Hands queue `i`'s size, ring addresses, base and eventfds to the backend and enables it;
/// `false` if the queue has no eventfds (nothing was sent).
fn start_queue(
    f: &mut Frontend,
    socket: &str,
    errs: &[EventFd],
    i: usize,
    active: &Active,
    base: Base,
) -> Result<bool, VirtioError> {
    let Some(q) = active.queues.get(i) else {
        return Ok(false);
    };
    let mem = &active.mem;
    let (dl, al, ul) = q.ring_lengths();
    let data = VringConfigData {
        queue_max_size: q.max_size,
        queue_size: q.size,
        flags: 0,
        desc_table_addr: host_addr(mem, i, q.desc, dl)?,
        used_ring_addr: host_addr(mem, i, q.used, ul)?,
        avail_ring_addr: host_addr(mem, i, q.avail, al)?,
        log_addr: None,
    };
    let (Some(kick), Some(call), Some(errfd)) =
        (active.kicks.get(i), active.calls.get(i), errs.get(i))
    else {
        return Ok(false);
    };
    let base = match base {
        Base::Zero => 0,
        Base::GuestUsed => guest_used_idx(mem, i, q)?,
    };
    let e = |what| vhost_err(socket, what);
    f.set_vring_num(i, q.size).map_err(e("SET_VRING_NUM"))?;
    f.set_vring_addr(i, &data).map_err(e("SET_VRING_ADDR"))?;
    f.set_vring_base(i, base).map_err(e("SET_VRING_BASE"))?;
    f.set_vring_kick(i, kick).map_err(e("SET_VRING_KICK"))?;
    f.set_vring_call(i, call).map_err(e("SET_VRING_CALL"))?;
    f.set_vring_err(i, errfd).map_err(e("SET_VRING_ERR"))?;
    f.set_vring_enable(i, true).map_err(e("SET_VRING_ENABLE"))?;
    Ok(true)
}

/// The used index the driver sees on queue `i` (`used->idx`, in guest memory).
fn guest_used_idx(mem: &GuestMemoryMmap, i: usize, q: &QueueState) -> Result<u16, VirtioError> {
    let bad = || VirtioError::BadRing {
        queue: i,
        addr: q.used,
        len: 4,
    };
    let addr = q.used.checked_add(2).ok_or_else(bad)?;
    mem.read_obj::<u16>(GuestAddress(addr))
        .map(u16::from_le)
        .map_err(|_| bad())
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
