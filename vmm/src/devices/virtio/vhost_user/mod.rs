//! The vhost-user tier: virtio devices whose queues an external backend
//! process serves. The VMM only sets up the connection (`link`), shares guest
//! RAM and the kick/call eventfds, and watches the backend (`monitor`,
//! `reply_deadline`); the data path never enters the VMM.

pub mod blk;
pub mod link;
pub mod monitor;
pub mod net;
pub mod reply_deadline;

pub use blk::VhostUserBlk;
pub use net::VhostUserNet;
