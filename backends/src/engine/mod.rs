// SPDX-License-Identifier: Apache-2.0
//! The shared request engine.
//!
//! An [`Engine`] owns one io_uring, with its handler's file registered, and serves one
//! virtqueue ([`VirtQueue`]): it pops up to a batch of available chains ([`Tuning::batch`]),
//! validates each into a [`DescChain`], lets a device-specific [`RequestHandler`] turn it
//! into one io_uring operation (or answer it at once), submits the batch with one
//! `io_uring_enter`, reaps completions, fills the used ring and signals the driver once per
//! batch when EVENT_IDX says it wants it, pass after pass until the queue is empty. Before
//! going back to sleep it busy-polls the avail ring and the completion ring for an adaptive
//! window ([`Poller`]), then re-enables notifications and re-checks the ring so no kick is
//! lost.
//!
//! The same engine serves the vhost-user backends ([`VringQueue`]) and the in-VMM virtio tier
//! ([`LocalQueue`], or any other [`VirtQueue`] implementation).

mod chain;
pub mod histogram;
mod poll;
pub mod pressure;
mod queue;
mod ring;
mod split_ring;
mod split_walk;
mod sqpoll;
mod stats;
mod tuning;
mod worker;

pub use chain::{DescChain, Dir, Seg, MAX_CHAIN_DESCRIPTORS};
pub use poll::{PollPolicy, PollWindow, Polled, Poller, DEFAULT_POLL_MAX, INITIAL_WINDOW};
pub use queue::{BackendMemory, LocalQueue, VhostMem, VirtQueue, Vring, VringQueue, WorkerVrings};
pub use ring::{new_ring, parse_on_off, restrictions, set_restrictions, RingSpec};
pub use split_ring::{compare_with_virtio_queue, RingAddrs, SplitRing};
pub use split_walk::SplitWalk;
pub use sqpoll::{
    EpochLoad, HostIdle, SqpollGovernor, SqpollLoad, SqpollPolicy, DEFAULT_SQPOLL_IDLE, EPOCH,
};
pub use stats::{QueueStats, StatsSnapshot};
pub use tuning::{Tuning, TuningArgs, DEFAULT_BATCH};
pub(crate) use worker::errno;
pub use worker::{Engine, EngineConfig, EngineWork, SETTLE_TIMEOUT};

pub use io_uring::squeue::Entry as Sqe;

use std::os::fd::RawFd;

use io_uring::{opcode, types};
use vm_memory::GuestMemory;

/// The handler's file ([`RequestHandler::file`]) as every operation names it: the engine
/// registers that one file with its io_uring, so submissions skip the per-operation file
/// table lookup and reference counting (`IOSQE_FIXED_FILE`).
pub const FIXED_FILE: types::Fixed = types::Fixed(0);

/// Register `fd` as `ring`'s only fixed file ([`FIXED_FILE`]), on a ring built elsewhere
/// (the benchmark's raw baseline); the engine's own rings come from [`new_ring`].
pub fn register_file(ring: &io_uring::IoUring, fd: RawFd) -> crate::Result<()> {
    ring.submitter()
        .register_files(&[fd])
        .map_err(crate::Error::UringSetup)
}

/// GET_VRING_BASE of ring `index` cannot be answered: `error` (requests that never
/// completed) is logged and returned for the vhost-user handler, which then sends no base
/// and ends the connection, so the frontend sees the failure instead of waiting forever.
pub fn stop_failed(index: usize, error: crate::Error) -> std::io::Error {
    tracing::error!(
        ring = index,
        "GET_VRING_BASE: {error}; answering with an error instead of the ring base"
    );
    std::io::Error::other(error)
}

/// The opcodes [`rw_sqe`] produces.
pub const RW_OPCODES: [u8; 4] = [
    opcode::Read::CODE,
    opcode::Write::CODE,
    opcode::Readv::CODE,
    opcode::Writev::CODE,
];

/// A read or a write of `iov` on [`FIXED_FILE`] at `offset` (ignored by streams such as a
/// TAP), with `RWF_*` flags: plain `READ`/`WRITE` for one buffer, so the kernel does not
/// import an iovec array for the common single-descriptor request, `READV`/`WRITEV`
/// otherwise. `iov` must stay untouched until the operation completes (the slot's `iov` does).
pub fn rw_sqe(iov: &[libc::iovec], offset: u64, rw_flags: i32, write: bool) -> Sqe {
    let fd = FIXED_FILE;
    match (iov, write) {
        ([one], true) => opcode::Write::new(fd, one.iov_base.cast(), one.iov_len as u32)
            .offset(offset)
            .rw_flags(rw_flags)
            .build(),
        ([one], false) => opcode::Read::new(fd, one.iov_base.cast(), one.iov_len as u32)
            .offset(offset)
            .rw_flags(rw_flags)
            .build(),
        (_, true) => opcode::Writev::new(fd, iov.as_ptr(), iov.len() as u32)
            .offset(offset)
            .rw_flags(rw_flags)
            .build(),
        (_, false) => opcode::Readv::new(fd, iov.as_ptr(), iov.len() as u32)
            .offset(offset)
            .rw_flags(rw_flags)
            .build(),
    }
}

/// What a handler decided for one chain.
pub enum Prepared {
    /// Submit this io_uring operation; the engine sets its `user_data`. Any pointers in it
    /// (iovecs) must point into the `iov` vector given to [`RequestHandler::prepare`] or into
    /// guest memory obtained through [`DescChain`].
    Submit(Sqe),
    /// The request is finished; put it on the used ring with this length (0 for chains
    /// whose status could not be written).
    Done(u32),
}

/// Device-specific request logic (virtio-blk, virtio-net, …) plugged into an [`Engine`].
pub trait RequestHandler {
    /// Per-request state kept while the operation is in flight.
    type Req: Default + Send;

    /// The file every operation of this handler works on, kept open by the handler's owner:
    /// the engine registers it, and operations name it as [`FIXED_FILE`].
    fn file(&self) -> RawFd;

    /// Every io_uring opcode [`RequestHandler::prepare`] may submit: the engine's ring refuses
    /// all others ([`new_ring`]).
    fn opcodes(&self) -> &'static [u8];

    /// Parse and validate `chain`. Fill `iov` (cleared, owned by the request slot and kept
    /// stable until completion) and return an operation, or answer the request directly.
    fn prepare<M: GuestMemory>(
        &mut self,
        mem: &M,
        chain: &DescChain,
        req: &mut Self::Req,
        iov: &mut Vec<libc::iovec>,
    ) -> Prepared;

    /// The operation finished with `result` (io_uring `res`: bytes or `-errno`). Write the
    /// device's answer into the chain and return the used length.
    fn complete<M: GuestMemory>(
        &mut self,
        mem: &M,
        chain: &DescChain,
        req: &mut Self::Req,
        result: i32,
    ) -> u32;
}
