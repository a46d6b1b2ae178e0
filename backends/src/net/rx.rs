//! Receive: frames read from the TAP through io_uring into a per-queue bounce buffer, then
//! copied into the driver's receive chains (several with MRG_RXBUF, `num_buffers` filled in).
//!
//! A read is only submitted while a receive chain is reserved, so nothing is taken from the
//! TAP when the driver has posted no buffers (frames then queue in the TAP, and the kernel
//! drops them past its queue length). When buffers run out, notifications are re-enabled and
//! the next kick resumes. The bounce buffer is allocated once per queue: no per-frame heap
//! allocation.
//!
//! Why not the per-chain [`Engine`](crate::engine::Engine): with MRG_RXBUF one frame spans
//! a number of chains that is only known once the frame has arrived; the engine maps one
//! chain to one operation.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use io_uring::{opcode, types, IoUring};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{has, ETH_HLEN, RX_BUF_LEN, VNET_HDR_LEN};
use crate::engine::{DescChain, Dir, QueueStats, VirtQueue};
use crate::{Error, Result};

const WARN_BUDGET: u32 = 16;
/// Frames moved per call before yielding to the other queue of the thread.
const BATCH: usize = 64;
const READ_TAG: u64 = 1;
const CANCEL_TAG: u64 = 2;

/// The receive side of one queue pair.
pub struct RxPath {
    ring: IoUring,
    fd: RawFd,
    buf: Box<[u8]>,
    completion: EventFd,
    reading: bool,
    /// Whether the queue pair is in use (VIRTIO_NET_CTRL_MQ); an inactive queue takes no
    /// frames and no buffers.
    active: bool,
    /// Length of a frame (with header) waiting in `buf` for receive buffers.
    pending: Option<usize>,
    held: Vec<DescChain>,
    nheld: usize,
    held_room: u64,
    max_chains: usize,
    used: Vec<(u16, u32)>,
    features: Arc<AtomicU64>,
    stats: Arc<QueueStats>,
    warned: u32,
}

impl RxPath {
    /// Receive from `fd` (kept open by the owner) for a queue of at most `queue_size` entries.
    pub fn new(
        fd: RawFd,
        queue_size: u16,
        features: Arc<AtomicU64>,
        stats: Arc<QueueStats>,
    ) -> Result<Self> {
        let ring = IoUring::builder().build(4).map_err(Error::UringSetup)?;
        let completion = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
        ring.submitter()
            .register_eventfd(completion.as_raw_fd())
            .map_err(Error::UringSetup)?;
        Ok(Self {
            ring,
            fd,
            buf: vec![0u8; RX_BUF_LEN].into_boxed_slice(),
            completion,
            reading: false,
            active: true,
            pending: None,
            held: Vec::new(),
            nheld: 0,
            held_room: 0,
            max_chains: usize::from(queue_size.max(1)),
            used: Vec::with_capacity(usize::from(queue_size.max(1))),
            features,
            stats,
            warned: 0,
        })
    }

    /// Eventfd signalled when a read completes; call [`RxPath::process`] when readable.
    pub fn completion_fd(&self) -> &EventFd {
        &self.completion
    }

    /// Counters of this receive queue.
    pub fn stats(&self) -> &Arc<QueueStats> {
        &self.stats
    }

    /// Whether a read is outstanding on the TAP.
    pub fn reading(&self) -> bool {
        self.reading
    }

    /// Start or stop receiving (virtio 1.2 §5.1.6.5.5: no frames on receive queues past the
    /// active pairs). Stopping drops a frame that waits for buffers (an outstanding read is
    /// left to finish, its frame dropped); starting wakes the queue's thread through the
    /// completion eventfd so it resumes at once.
    pub fn set_active(&mut self, active: bool) -> Result<()> {
        if active == self.active {
            return Ok(());
        }
        self.active = active;
        if active {
            self.completion.write(1).map_err(Error::EventFd)?;
        } else if self.pending.take().is_some() {
            QueueStats::inc(&self.stats.dropped);
        }
        Ok(())
    }

    fn fault(&mut self, head: u16, why: &dyn std::fmt::Display) {
        QueueStats::inc(&self.stats.guest_faults);
        if self.warned < WARN_BUDGET {
            self.warned += 1;
            tracing::warn!(head, "rx: {why}");
        } else {
            tracing::debug!(head, "rx: {why}");
        }
    }

    /// Pop one usable receive chain into `held`; bad chains go back with length 0.
    fn pop_one<Q: VirtQueue>(&mut self, q: &mut Q, mem: &Arc<Q::Mem>) -> bool {
        loop {
            let Some(chain) = q.pop(mem) else {
                return false;
            };
            if self.held.len() <= self.nheld {
                self.held.push(DescChain::default());
            }
            let c = &mut self.held[self.nheld];
            c.reset_from(chain);
            let head = c.head();
            QueueStats::inc(&self.stats.requests);
            let problem: Option<String> = if let Some(f) = c.fault() {
                Some(f.to_string())
            } else if c.readable_len() != 0 {
                Some("device-readable descriptor in an rx chain".into())
            } else if c.writable_len() < VNET_HDR_LEN as u64 {
                Some(format!("rx buffer of {} bytes too small", c.writable_len()))
            } else {
                None
            };
            if let Some(p) = problem {
                self.fault(head, &p);
                QueueStats::inc(&self.stats.dropped);
                self.used.push((head, 0));
                continue;
            }
            self.held_room += c.writable_len();
            self.nheld += 1;
            return true;
        }
    }

    /// Give every held chain back with length 0.
    fn release_held(&mut self) {
        for c in &self.held[..self.nheld] {
            self.used.push((c.head(), 0));
        }
        self.nheld = 0;
        self.held_room = 0;
    }

    /// Copy the pending frame of `n` bytes into receive chains. `false`: not enough buffers
    /// yet (the frame stays pending).
    fn place<Q: VirtQueue>(&mut self, q: &mut Q, mem: &Arc<Q::Mem>, n: usize) -> bool {
        let need = n as u64;
        let mrg = has(
            self.features.load(Ordering::Relaxed),
            VIRTIO_NET_F_MRG_RXBUF,
        );
        if self.nheld == 0 && !self.pop_one(q, mem) {
            return false;
        }
        if !mrg {
            if self.held[0].writable_len() < need {
                let (head, room) = (self.held[0].head(), self.held[0].writable_len());
                self.fault(
                    head,
                    &format!("frame of {n} bytes does not fit a {room}-byte buffer"),
                );
                QueueStats::inc(&self.stats.dropped);
                self.release_held();
                return true;
            }
        } else {
            while self.held_room < need {
                if self.nheld >= self.max_chains {
                    let head = self.held[0].head();
                    self.fault(
                        head,
                        &format!("{} buffers cannot hold a {n}-byte frame", self.nheld),
                    );
                    QueueStats::inc(&self.stats.dropped);
                    self.release_held();
                    return true;
                }
                if !self.pop_one(q, mem) {
                    return false;
                }
            }
        }
        let nbuf = u16::try_from(self.nheld).unwrap_or(u16::MAX);
        self.buf[10..12].copy_from_slice(&nbuf.to_le_bytes());
        let mem = &**mem;
        let mut off = 0usize;
        for i in 0..self.nheld {
            let c = &self.held[i];
            let take = (n - off).min(usize::try_from(c.writable_len()).unwrap_or(usize::MAX));
            let head = c.head();
            match c.write_at(mem, Dir::Writable, 0, &self.buf[off..off + take]) {
                Ok(()) => self.used.push((head, take as u32)),
                Err(f) => {
                    self.fault(head, &f);
                    self.used.push((head, 0));
                }
            }
            off += take;
        }
        self.nheld = 0;
        self.held_room = 0;
        QueueStats::inc(&self.stats.ok);
        true
    }

    fn reap(&mut self) {
        let Some(cqe) = self.ring.completion().next() else {
            return;
        };
        if cqe.user_data() != READ_TAG {
            return;
        }
        self.reading = false;
        let res = cqe.result();
        if res < 0 {
            if res != -libc::EAGAIN && res != -libc::EINTR {
                QueueStats::inc(&self.stats.io_errors);
                if self.warned < WARN_BUDGET {
                    self.warned += 1;
                    tracing::warn!("rx read failed: {}", crate::engine::errno(res));
                }
            }
            return;
        }
        let n = res as usize;
        if !(VNET_HDR_LEN + ETH_HLEN..RX_BUF_LEN).contains(&n) {
            QueueStats::inc(&self.stats.dropped);
            tracing::debug!(n, "rx: runt or oversized frame from the TAP dropped");
            return;
        }
        self.pending = Some(n);
    }

    fn submit_read(&mut self) -> Result<()> {
        let sqe = opcode::Read::new(types::Fd(self.fd), self.buf.as_mut_ptr(), RX_BUF_LEN as u32)
            .build()
            .user_data(READ_TAG);
        // SAFETY: `buf` lives as long as `self` and is not touched until the read completes
        // (`reading`); `Drop` cancels and waits for an outstanding read.
        unsafe { self.ring.submission().push(&sqe) }
            .map_err(|_| Error::UringSubmit(std::io::Error::other("rx submission queue full")))?;
        self.reading = true;
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(Error::UringSubmit(e)),
            }
        }
    }

    /// Move frames from the TAP into `q` until the TAP is empty (a read is outstanding) or
    /// the driver has no buffers left; signal the driver once. Call on every kick of the
    /// receive queue and every completion eventfd event. An inactive queue only reaps an
    /// outstanding read (dropping its frame).
    pub fn process<Q: VirtQueue>(&mut self, q: &mut Q) -> Result<()> {
        let _ = self.completion.read();
        if !self.active {
            if self.reading {
                self.reap();
            }
            if self.pending.take().is_some() {
                QueueStats::inc(&self.stats.dropped);
            }
            return self.flush(q);
        }
        q.disable_notification()?;
        let mut moved = 0usize;
        loop {
            let mem = q.memory();
            loop {
                if self.reading {
                    self.reap();
                }
                if let Some(n) = self.pending {
                    if !self.place(q, &mem, n) {
                        break; // waiting for receive buffers
                    }
                    self.pending = None;
                    moved += 1;
                }
                if self.reading {
                    break; // the TAP is empty: the completion eventfd wakes us
                }
                if moved >= BATCH {
                    // Yield to the transmit queue of this thread; come back at once.
                    let _ = self.completion.write(1);
                    break;
                }
                if self.nheld == 0 && !self.pop_one(q, &mem) {
                    break; // no receive buffers: wait for a kick
                }
                self.submit_read()?;
            }
            self.flush(q)?;
            let waiting_for_buffers = self.pending.is_some() || (!self.reading && self.nheld == 0);
            if waiting_for_buffers && moved < BATCH && q.enable_notification()? {
                q.disable_notification()?;
                continue; // buffers were posted meanwhile
            }
            return Ok(());
        }
    }

    fn flush<Q: VirtQueue>(&mut self, q: &mut Q) -> Result<()> {
        if self.used.is_empty() {
            return Ok(());
        }
        let rejected = q.add_used(&self.used);
        if rejected > 0 {
            self.stats
                .used_rejected
                .fetch_add(rejected as u64, Ordering::Relaxed);
        }
        self.used.clear();
        if q.needs_notification()? {
            QueueStats::inc(&self.stats.notifications);
            q.signal()?;
        }
        Ok(())
    }
}

impl Drop for RxPath {
    fn drop(&mut self) {
        if !self.reading {
            return;
        }
        let cancel = opcode::AsyncCancel::new(READ_TAG)
            .build()
            .user_data(CANCEL_TAG);
        // SAFETY: the cancel SQE carries no buffers.
        if unsafe { self.ring.submission().push(&cancel) }.is_err() {
            return;
        }
        // Wait until the read is gone before `buf` is freed.
        for _ in 0..16 {
            if self.ring.submit_and_wait(1).is_err() {
                break;
            }
            for cqe in self.ring.completion() {
                if cqe.user_data() == READ_TAG {
                    self.reading = false;
                }
            }
            if !self.reading {
                return;
            }
        }
        // Could not confirm the cancellation: leak the buffer rather than free it under
        // the kernel.
        std::mem::forget(std::mem::take(&mut self.buf));
    }
}
