//! The queue side of the engine: one small trait over "a split virtqueue plus its guest
//! memory and call eventfd", implemented for vhost-user-backend vrings and for a plain
//! in-process [`virtio_queue::Queue`] (in-VMM tier, tests).

use std::sync::Arc;

use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemory, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::{Error, Result};

/// What the engine needs from a virtqueue.
pub trait VirtQueue {
    /// Guest memory type.
    type Mem: GuestMemory + Send + Sync + 'static;

    /// Current guest memory snapshot; in-flight requests keep it alive.
    fn memory(&self) -> Arc<Self::Mem>;
    /// Pop the next available chain.
    fn pop(&mut self, mem: &Arc<Self::Mem>) -> Option<DescriptorChain<Arc<Self::Mem>>>;
    /// Pop up to `max` available chains, handing each to `f`; returns how many were popped.
    fn pop_batch(
        &mut self,
        mem: &Arc<Self::Mem>,
        max: usize,
        mut f: impl FnMut(DescriptorChain<Arc<Self::Mem>>),
    ) -> usize {
        let mut n = 0;
        while n < max {
            let Some(chain) = self.pop(mem) else { break };
            f(chain);
            n += 1;
        }
        n
    }
    /// Put `(head, len)` entries on the used ring; returns how many were rejected
    /// (for example a head index past the queue size).
    fn add_used(&mut self, used: &[(u16, u32)]) -> usize;
    /// Disable driver notifications (no-op with EVENT_IDX).
    fn disable_notification(&mut self) -> Result<()>;
    /// Re-enable notifications; `true` if new buffers arrived meanwhile.
    fn enable_notification(&mut self) -> Result<bool>;
    /// Whether the driver wants an interrupt for the used entries added so far
    /// (EVENT_IDX `used_event`, or `VRING_AVAIL_F_NO_INTERRUPT`).
    fn needs_notification(&mut self) -> Result<bool>;
    /// Signal the driver (call eventfd / irqfd).
    fn signal(&mut self) -> Result<()>;
}

/// Guest memory as vhost-user-backend hands it out.
pub type VhostMem = GuestMemoryMmap<()>;

/// [`VirtQueue`] over a vhost-user-backend [`VringRwLock`].
pub struct VringQueue<'a> {
    vring: &'a VringRwLock<GuestMemoryAtomic<VhostMem>>,
    mem: &'a GuestMemoryAtomic<VhostMem>,
}

impl<'a> VringQueue<'a> {
    /// Wrap `vring`; `mem` is the backend's view of guest memory.
    pub fn new(
        vring: &'a VringRwLock<GuestMemoryAtomic<VhostMem>>,
        mem: &'a GuestMemoryAtomic<VhostMem>,
    ) -> Self {
        Self { vring, mem }
    }
}

impl VirtQueue for VringQueue<'_> {
    type Mem = VhostMem;

    fn memory(&self) -> Arc<VhostMem> {
        self.mem.memory().into_inner()
    }

    fn pop(&mut self, mem: &Arc<VhostMem>) -> Option<DescriptorChain<Arc<VhostMem>>> {
        let mut state = self.vring.get_mut();
        let q = state.get_queue_mut();
        let chain = q.pop_descriptor_chain(mem.clone());
        if let Some(c) = &chain {
            tracing::trace!(
                head = c.head_index(),
                next_avail = q.next_avail(),
                next_used = q.next_used(),
                avail_idx = ?q.avail_idx(&**mem, std::sync::atomic::Ordering::Acquire).ok(),
                used_idx = ?q.used_idx(&**mem, std::sync::atomic::Ordering::Acquire).ok(),
                size = q.size(),
                ready = q.ready(),
                event_idx = q.event_idx_enabled(),
                desc = format_args!("{:#x}", q.desc_table()),
                avail = format_args!("{:#x}", q.avail_ring()),
                used = format_args!("{:#x}", q.used_ring()),
                "popped"
            );
        }
        chain
    }

    /// One vring lock and one read of the avail index for the whole batch.
    fn pop_batch(
        &mut self,
        mem: &Arc<VhostMem>,
        max: usize,
        mut f: impl FnMut(DescriptorChain<Arc<VhostMem>>),
    ) -> usize {
        let mut state = self.vring.get_mut();
        match state.get_queue_mut().iter(mem.clone()) {
            Ok(iter) => iter.take(max).map(&mut f).count(),
            Err(e) => {
                tracing::debug!("queue not poppable: {e}");
                0
            }
        }
    }

    fn add_used(&mut self, used: &[(u16, u32)]) -> usize {
        let mem = self.mem.memory();
        let mut state = self.vring.get_mut();
        let q = state.get_queue_mut();
        let rejected = used
            .iter()
            .filter(|(h, l)| q.add_used(&*mem, *h, *l).is_err())
            .count();
        tracing::trace!(
            ?used,
            next_used = q.next_used(),
            used_idx = ?q.used_idx(&*mem, std::sync::atomic::Ordering::Acquire).ok(),
            "added used"
        );
        rejected
    }

    fn disable_notification(&mut self) -> Result<()> {
        Ok(self.vring.disable_notification()?)
    }

    fn enable_notification(&mut self) -> Result<bool> {
        Ok(self.vring.enable_notification()?)
    }

    fn needs_notification(&mut self) -> Result<bool> {
        Ok(self.vring.needs_notification()?)
    }

    fn signal(&mut self) -> Result<()> {
        self.vring.signal_used_queue().map_err(Error::Signal)
    }
}

/// [`VirtQueue`] over an in-process queue: for the in-VMM virtio tier and for tests.
pub struct LocalQueue<M: GuestMemory> {
    /// The queue state.
    pub queue: Queue,
    /// Guest memory.
    pub mem: Arc<M>,
    /// Interrupt eventfd (irqfd); `None` counts signals only.
    pub call: Option<EventFd>,
    /// Number of times the driver was signalled.
    pub signals: u64,
}

impl<M: GuestMemory> LocalQueue<M> {
    /// Wrap a ready queue.
    pub fn new(queue: Queue, mem: Arc<M>, call: Option<EventFd>) -> Self {
        Self {
            queue,
            mem,
            call,
            signals: 0,
        }
    }
}

impl<M: GuestMemory + Send + Sync + 'static> VirtQueue for LocalQueue<M> {
    type Mem = M;

    fn memory(&self) -> Arc<M> {
        self.mem.clone()
    }

    fn pop(&mut self, mem: &Arc<M>) -> Option<DescriptorChain<Arc<M>>> {
        self.queue.pop_descriptor_chain(mem.clone())
    }

    fn add_used(&mut self, used: &[(u16, u32)]) -> usize {
        used.iter()
            .filter(|(h, l)| self.queue.add_used(&*self.mem, *h, *l).is_err())
            .count()
    }

    fn disable_notification(&mut self) -> Result<()> {
        Ok(self.queue.disable_notification(&*self.mem)?)
    }

    fn enable_notification(&mut self) -> Result<bool> {
        Ok(self.queue.enable_notification(&*self.mem)?)
    }

    fn needs_notification(&mut self) -> Result<bool> {
        Ok(self.queue.needs_notification(&*self.mem)?)
    }

    fn signal(&mut self) -> Result<()> {
        self.signals += 1;
        match &self.call {
            Some(evt) => evt.write(1).map_err(Error::Signal),
            None => Ok(()),
        }
    }
}
