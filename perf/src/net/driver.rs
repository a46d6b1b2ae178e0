// SPDX-License-Identifier: Apache-2.0
//! The load generator's virtio-net driver: guest memory in a memfd, handed to the backend
//! over vhost-user (`vhost` crate frontend), one receive and one transmit split queue laid
//! out in it, kick eventfds written and call eventfds read as a guest's virtio-net would.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use backends::net::VNET_HDR_LEN;
use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap,
    MmapRegion,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::frame::{self, FrameKind};
use super::ring::{DriverRing, RingLayout};
use super::Counts;
use crate::{io_err, Error, Result};

/// Size of one receive buffer (one descriptor); MRG_RXBUF spreads bigger frames over several.
pub const RX_BUF_LEN: u32 = 4096;
/// Give up when the backend makes no progress for this long.
const STALL: Duration = Duration::from_secs(5);

const RX_QUEUE: usize = 0;
const TX_QUEUE: usize = 1;

fn bit(b: u32) -> u64 {
    1u64 << b
}

/// The features the driver asks for (acked = these ∩ offered).
pub fn wanted_features(event_idx: bool) -> u64 {
    let mut f = bit(VIRTIO_F_VERSION_1)
        | bit(VIRTIO_NET_F_CSUM)
        | bit(VIRTIO_NET_F_GUEST_CSUM)
        | bit(VIRTIO_NET_F_HOST_TSO4)
        | bit(VIRTIO_NET_F_GUEST_TSO4)
        | bit(VIRTIO_NET_F_MRG_RXBUF);
    if event_idx {
        f |= bit(VIRTIO_RING_F_EVENT_IDX);
    }
    f
}

/// Guest memory of one run: rings of both queues, the receive buffers and `queue_size`
/// transmit slots, each holding a copy of the frame (virtio header + frame).
pub struct NetMem {
    mem: GuestMemoryMmap,
    /// Receive queue layout.
    pub rx: RingLayout,
    /// Transmit queue layout.
    pub tx: RingLayout,
    rx_bufs: GuestAddress,
    tx_bufs: GuestAddress,
    tx_slot: u64,
    wire_len: usize,
}

impl NetMem {
    /// Lay out memory for queues of `queue_size` and fill every transmit slot with `kind`.
    pub fn new(queue_size: u16, kind: FrameKind) -> Result<NetMem> {
        let (rx, next) = RingLayout::new(GuestAddress(0), queue_size)?;
        let (tx, next) = RingLayout::new(next, queue_size)?;
        let n = u64::from(queue_size);
        let rx_bufs = next;
        let tx_bufs = GuestAddress(rx_bufs.0 + n * u64::from(RX_BUF_LEN));
        let wire = frame::build(kind);
        let tx_slot = (wire.len() as u64).div_ceil(4096) * 4096;
        let size = tx_bufs.0 + n * tx_slot;
        let mem = memfd_memory(size)?;
        for i in 0..n {
            mem.write_slice(&wire, GuestAddress(tx_bufs.0 + i * tx_slot))
                .map_err(|e| Error::Backend(format!("fill frames: {e}")))?;
        }
        Ok(NetMem {
            mem,
            rx,
            tx,
            rx_bufs,
            tx_bufs,
            tx_slot,
            wire_len: wire.len(),
        })
    }

    /// Guest address of transmit slot `i` (`wire_len` bytes of virtio header + frame).
    pub fn tx_slot(&self, i: u16) -> GuestAddress {
        GuestAddress(self.tx_bufs.0 + u64::from(i) * self.tx_slot)
    }

    /// Length of one transmit slot's contents.
    pub fn wire_len(&self) -> usize {
        self.wire_len
    }

    fn rx_buf(&self, i: u16) -> GuestAddress {
        GuestAddress(self.rx_bufs.0 + u64::from(i) * u64::from(RX_BUF_LEN))
    }

    /// Host address of `len` bytes at `addr`, checked to lie in the mapping.
    pub fn host_ptr(&self, addr: GuestAddress, len: usize) -> Result<*mut u8> {
        let s = self
            .mem
            .get_slice(addr, len)
            .map_err(|e| Error::Backend(format!("guest address {:#x}: {e}", addr.0)))?;
        Ok(s.ptr_guard_mut().as_ptr())
    }
}

/// One memfd mapped `MAP_SHARED` at guest address 0 (what a vhost-user backend can map).
fn memfd_memory(size: u64) -> Result<GuestMemoryMmap> {
    // SAFETY: valid NUL-terminated name and flags.
    let fd = unsafe { libc::memfd_create(c"vmm-perf-net".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io_err("memfd_create")(std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(io_err("size guest memory"))?;
    let len = usize::try_from(size).map_err(|_| Error::Usage("guest memory too big".into()))?;
    let region = MmapRegion::build(
        Some(FileOffset::new(file, 0)),
        len,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED,
    )
    .map_err(|e| Error::Backend(format!("map guest memory: {e}")))?;
    let region = GuestRegionMmap::new(region, GuestAddress(0))
        .ok_or_else(|| Error::Backend("guest memory region".into()))?;
    GuestMemoryMmap::from_regions(vec![region])
        .map_err(|e| Error::Backend(format!("guest memory: {e}")))
}

struct Queue {
    ring: DriverRing,
    kick: EventFd,
    call: EventFd,
}

impl Queue {
    fn kick(&self) -> Result<()> {
        self.kick.write(1).map_err(io_err("kick"))
    }

    /// Notifications the backend sent since the last call (the call eventfd's counter).
    fn take_signals(&self) -> u64 {
        self.call.read().unwrap_or(0)
    }

    /// Sleep until the backend signals the call eventfd or `timeout` passes; returns the
    /// notifications consumed.
    fn wait_call(&self, timeout: Duration) -> Result<u64> {
        let mut pfd = libc::pollfd {
            fd: self.call.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(io_err("poll call eventfd")(e));
            }
        }
        Ok(self.take_signals())
    }
}

/// How the driver learns that the device used buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Ask for used-buffer notifications and sleep on the call eventfd, as Linux's
    /// virtio-net does (transmit: once 3/4 of the frames in flight are done).
    Interrupts,
    /// Never ask for notifications and spin on the used ring, as a DPDK virtio PMD in a
    /// guest does: the notification cost drops out, and a CPU spins for the driver.
    Poll,
}

/// A virtio-net device behind a vhost-user socket, driven by this process.
pub struct Driver {
    frontend: Frontend,
    mem: NetMem,
    rx: Queue,
    tx: Queue,
    socket: String,
    completion: Completion,
}

fn verr(name: &str, what: &'static str) -> impl FnOnce(vhost::Error) -> Error {
    let name = name.to_string();
    move |e| Error::Backend(format!("{name}: {what}: {e}"))
}

/// SET_OWNER, then features: the backend must offer VERSION_1, CSUM, MRG_RXBUF and protocol
/// features; REPLY_ACK when offered. Returns the negotiated virtio features.
fn negotiate(frontend: &mut Frontend, name: &str, event_idx: bool) -> Result<u64> {
    frontend.set_owner().map_err(verr(name, "SET_OWNER"))?;
    let offered = frontend
        .get_features()
        .map_err(verr(name, "GET_FEATURES"))?;
    let protocol_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    let required = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_NET_F_MRG_RXBUF) | bit(VIRTIO_NET_F_CSUM);
    if offered & required != required || offered & protocol_bit == 0 {
        return Err(Error::Backend(format!(
            "{name}: backend offers {offered:#x}; needs VERSION_1, CSUM, MRG_RXBUF and protocol features"
        )));
    }
    let protocol = frontend
        .get_protocol_features()
        .map_err(verr(name, "GET_PROTOCOL_FEATURES"))?
        & VhostUserProtocolFeatures::REPLY_ACK;
    frontend
        .set_protocol_features(protocol)
        .map_err(verr(name, "SET_PROTOCOL_FEATURES"))?;
    if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
        frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    }
    let features = offered & wanted_features(event_idx);
    frontend
        .set_features(features | protocol_bit)
        .map_err(verr(name, "SET_FEATURES"))?;
    Ok(features)
}

/// Hands the guest memory to the backend.
fn set_mem_table(frontend: &mut Frontend, name: &str, mem: &NetMem) -> Result<()> {
    let regions = mem
        .mem
        .iter()
        .map(VhostUserMemoryRegionInfo::from_guest_region)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(verr(name, "memory regions"))?;
    frontend
        .set_mem_table(&regions)
        .map_err(verr(name, "SET_MEM_TABLE"))?;
    Ok(())
}

/// Sets up and enables queue `index` on the ring at `layout`, with fresh kick and call
/// eventfds.
fn start_queue(
    frontend: &mut Frontend,
    name: &str,
    mem: &NetMem,
    index: usize,
    layout: RingLayout,
    event_idx: bool,
) -> Result<Queue> {
    let ring = DriverRing::new(&mem.mem, layout, event_idx)?;
    let efd = || EventFd::new(EFD_NONBLOCK).map_err(io_err("eventfd"));
    let q = Queue {
        ring,
        kick: efd()?,
        call: efd()?,
    };
    let host = |addr: GuestAddress, len: u64| -> Result<u64> {
        Ok(mem.host_ptr(addr, usize::try_from(len).unwrap_or(usize::MAX))? as u64)
    };
    let (dl, al, ul) = layout.lengths();
    let data = VringConfigData {
        queue_max_size: layout.size,
        queue_size: layout.size,
        flags: 0,
        desc_table_addr: host(layout.desc, dl)?,
        used_ring_addr: host(layout.used, ul)?,
        avail_ring_addr: host(layout.avail, al)?,
        log_addr: None,
    };
    frontend
        .set_vring_num(index, layout.size)
        .map_err(verr(name, "SET_VRING_NUM"))?;
    frontend
        .set_vring_addr(index, &data)
        .map_err(verr(name, "SET_VRING_ADDR"))?;
    frontend
        .set_vring_base(index, 0)
        .map_err(verr(name, "SET_VRING_BASE"))?;
    frontend
        .set_vring_kick(index, &q.kick)
        .map_err(verr(name, "SET_VRING_KICK"))?;
    frontend
        .set_vring_call(index, &q.call)
        .map_err(verr(name, "SET_VRING_CALL"))?;
    frontend
        .set_vring_enable(index, true)
        .map_err(verr(name, "SET_VRING_ENABLE"))?;
    Ok(q)
}

/// Moves the used transmit descriptors back to `free`; returns how many. A polling driver
/// re-suppresses notifications after progress.
fn reclaim(q: &mut Queue, m: &GuestMemoryMmap, free: &mut Vec<u16>, poll: bool) -> Result<u16> {
    let mut reclaimed = 0u16;
    while let Some((id, _)) = q.ring.pop_used(m)? {
        free.push(id);
        reclaimed += 1;
    }
    if poll && reclaimed > 0 {
        q.ring.suppress_interrupts(m)?;
    }
    Ok(reclaimed)
}

/// Puts free frames back on the ring, `batch` at a time while a whole batch is free, and
/// kicks if the backend asks for it.
fn refill(q: &mut Queue, m: &GuestMemoryMmap, free: &mut Vec<u16>, batch: u16) -> Result<()> {
    while free.len() >= usize::from(batch) {
        for _ in 0..batch {
            if let Some(id) = free.pop() {
                q.ring.push(m, id)?;
            }
        }
    }
    if q.ring.publish(m)? {
        q.kick()?;
    }
    Ok(())
}

/// What the receive loop has counted; `remaining` is the buffers still to come for the
/// current frame (MRG_RXBUF).
#[derive(Default)]
struct RxCount {
    frames: u64,
    bytes: u64,
    remaining: u16,
}

impl RxCount {
    /// Counts one used receive buffer `id` of `len` bytes; the first buffer of a frame
    /// carries the virtio header with the frame's buffer count.
    fn entry(&mut self, mem: &NetMem, socket: &str, id: u16, len: u32) -> Result<()> {
        if len > RX_BUF_LEN {
            return Err(Error::Backend(format!(
                "{socket}: rx used length {len} > buffer {RX_BUF_LEN}"
            )));
        }
        let mut len = u64::from(len);
        if self.remaining == 0 {
            if len < VNET_HDR_LEN as u64 {
                return Err(Error::Backend(format!(
                    "{socket}: rx frame of {len} bytes has no virtio header"
                )));
            }
            let nb = mem
                .mem
                .read_obj::<u16>(GuestAddress(mem.rx_buf(id).0 + 10))
                .map_err(|e| Error::Backend(e.to_string()))?;
            self.remaining = u16::from_le(nb).max(1);
            len -= VNET_HDR_LEN as u64;
        }
        self.bytes += len;
        self.remaining -= 1;
        if self.remaining == 0 {
            self.frames += 1;
        }
        Ok(())
    }
}

impl Driver {
    /// Connect to the backend at `socket`, negotiate, hand over `mem` and start both queues.
    pub fn connect(
        socket: &Path,
        mem: NetMem,
        event_idx: bool,
        completion: Completion,
    ) -> Result<Driver> {
        let name = socket.display().to_string();
        let mut frontend = Frontend::connect(socket, 2).map_err(verr(&name, "connect"))?;
        let features = negotiate(&mut frontend, &name, event_idx)?;
        set_mem_table(&mut frontend, &name, &mem)?;
        let ev = features & bit(VIRTIO_RING_F_EVENT_IDX) != 0;
        let rx = start_queue(&mut frontend, &name, &mem, RX_QUEUE, mem.rx, ev)?;
        let tx = start_queue(&mut frontend, &name, &mem, TX_QUEUE, mem.tx, ev)?;
        Ok(Driver {
            frontend,
            mem,
            rx,
            tx,
            socket: name,
            completion,
        })
    }

    /// Transmit for `duration`: keep the ring full of frames, reclaim used descriptors and
    /// refill `batch` at a time (one kick per batch when the backend asks for it); then wait
    /// for every frame in flight. Counts are used entries returned by the backend.
    pub fn transmit(&mut self, duration: Duration, batch: u16) -> Result<Counts> {
        let poll = self.completion == Completion::Poll;
        let m = &self.mem.mem;
        let size = self.mem.tx.size;
        let batch = batch.clamp(1, size);
        let frame_len = (self.mem.wire_len - VNET_HDR_LEN) as u64;
        let q = &mut self.tx;
        for i in 0..size {
            q.ring
                .set_desc(m, i, self.mem.tx_slot(i), self.mem.wire_len as u32, false)?;
        }
        if poll {
            q.ring.suppress_interrupts(m)?;
        }
        let mut free: Vec<u16> = (0..size).rev().collect();
        let mut done = 0u64;
        let _ = q.take_signals();
        let mut notifications = 0u64;
        let start = Instant::now();
        let deadline = start + duration;
        let mut last_progress = start;
        loop {
            let reclaimed = reclaim(q, m, &mut free, poll)?;
            done += u64::from(reclaimed);
            let now = Instant::now();
            let stopping = now >= deadline;
            if !stopping {
                refill(q, m, &mut free, batch)?;
            }
            let outstanding = size - free.len() as u16;
            if stopping && outstanding == 0 {
                break;
            }
            if reclaimed > 0 {
                last_progress = now;
                continue;
            }
            if now.duration_since(last_progress) > STALL {
                return Err(Error::Backend(format!(
                    "{}: transmit stalled with {outstanding} frames in flight",
                    self.socket
                )));
            }
            if poll {
                std::hint::spin_loop();
                continue;
            }
            // Sleep until 3/4 of the frames in flight completed (Linux's
            // `virtqueue_enable_cb_delayed`), at least a batch to refill; all when stopping.
            let want = if stopping {
                outstanding
            } else {
                (outstanding - outstanding / 4)
                    .max(batch - free.len() as u16)
                    .min(outstanding)
            };
            q.ring.arm_interrupt(m, want)?;
            if !q.ring.has_used(m)? {
                notifications += q.wait_call(Duration::from_millis(100))?;
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        Ok(Counts {
            frames: done,
            bytes: done * frame_len,
            seconds,
            notifications: notifications + q.take_signals(),
        })
    }

    /// Receive for `duration`: post every buffer, count the frames (MRG_RXBUF: `num_buffers`
    /// entries each) and bytes the backend delivers, repost buffers `batch` at a time.
    pub fn receive(&mut self, duration: Duration, batch: u16) -> Result<Counts> {
        let poll = self.completion == Completion::Poll;
        let m = &self.mem.mem;
        let size = self.mem.rx.size;
        let batch = batch.clamp(1, size);
        let q = &mut self.rx;
        for i in 0..size {
            q.ring
                .set_desc(m, i, self.mem.rx_buf(i), RX_BUF_LEN, true)?;
            q.ring.push(m, i)?;
        }
        if poll {
            q.ring.suppress_interrupts(m)?;
        }
        let _ = q.take_signals();
        let mut notifications = 0u64;
        q.ring.publish(m)?;
        q.kick()?;
        let mut count = RxCount::default();
        let start = Instant::now();
        let deadline = start + duration;
        let mut now = start;
        while now < deadline {
            let mut got = 0u32;
            while let Some((id, len)) = q.ring.pop_used(m)? {
                got += 1;
                count.entry(&self.mem, &self.socket, id, len)?;
                q.ring.push(m, id)?;
                if q.ring.unpublished() >= batch && q.ring.publish(m)? {
                    q.kick()?;
                }
            }
            if poll && got > 0 {
                q.ring.suppress_interrupts(m)?;
            }
            if got == 0 {
                if q.ring.publish(m)? {
                    q.kick()?;
                }
                if poll {
                    std::hint::spin_loop();
                } else {
                    q.ring.arm_interrupt(m, 1)?;
                }
                if !poll && !q.ring.has_used(m)? {
                    let left = deadline.saturating_duration_since(Instant::now());
                    notifications += q.wait_call(left.min(Duration::from_millis(100)))?;
                }
            }
            now = Instant::now();
        }
        Ok(Counts {
            frames: count.frames,
            bytes: count.bytes,
            seconds: start.elapsed().as_secs_f64(),
            notifications: notifications + q.take_signals(),
        })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Stop both rings before the memory goes away; the socket closes with `frontend`.
        for i in [RX_QUEUE, TX_QUEUE] {
            let _ = self.frontend.set_vring_enable(i, false);
            let _ = self.frontend.get_vring_base(i);
        }
    }
}
