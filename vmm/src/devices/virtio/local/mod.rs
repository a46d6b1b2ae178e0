// SPDX-License-Identifier: Apache-2.0
//! The in-VMM tier: virtio devices whose queues VMM threads serve with the
//! `backends` crate's request engine (the same handlers the vhost-user
//! backends run), without a second process.

pub mod blk;
pub mod net;
mod queue_thread;

pub use blk::InVmmBlk;
pub use net::InVmmNet;
