// SPDX-License-Identifier: Apache-2.0
//! The vhost-user tier: virtio devices whose queues an external backend
//! process serves. The VMM only sets up the connection (`connection`, `link`),
//! shares guest RAM and the kick/call eventfds, and watches the backend
//! (`supervisor`, `reply_deadline`): when it hangs up, the supervisor
//! reconnects and replays the setup (see `docs/vhost-user-recovery.md`). The
//! data path never enters the VMM.

pub mod blk;
pub mod connection;
pub mod link;
pub mod net;
pub mod reply_deadline;
pub mod supervisor;

pub use blk::VhostUserBlk;
pub use connection::{BackendTarget, Connection};
pub use link::ReconnectError;
pub use net::VhostUserNet;
