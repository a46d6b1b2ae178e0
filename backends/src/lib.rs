//! Virtio request engine shared by the vhost-user backends and the in-VMM virtio tier,
//! plus the virtio-blk device logic.
//!
//! * [`engine`] — queue walking, descriptor validation, io_uring submission/completion,
//!   EVENT_IDX-aware notification, batching and an optional busy-poll window.
//! * [`blk`] — virtio-blk request parsing/execution and the `vhost-user-blk` backend.

pub mod blk;
pub mod engine;
mod error;

pub use error::{Error, GuestFault, Result};
