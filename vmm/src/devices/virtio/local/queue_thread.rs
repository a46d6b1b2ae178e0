//! The queue thread both in-VMM devices run: it sleeps in epoll on each
//! served queue's kick eventfd (a KVM ioeventfd on the notify address) and
//! io_uring completion eventfd, plus a stop eventfd; it processes a queue
//! when the guest kicks it or a request completes, and drains and returns on
//! stop. Used-buffer interrupts go to each queue's call eventfd, which the
//! transport binds to the MSI-X vector's GSI (irqfd).

use std::os::fd::{AsRawFd, RawFd};
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::{QueueState, VirtioError};
use crate::seccomp::VmmThread;
use backends::seccomp;

/// The queues one thread serves, in the order of their kick eventfds.
pub(super) trait QueueWorker: Send + 'static {
    /// Per served queue: the eventfd its request engine signals on completions.
    fn completion_fds(&self) -> Vec<RawFd>;
    /// Processes the queues whose flag in `ready` is set (kicked or completed).
    fn process(&mut self, ready: &[bool]) -> Result<(), VirtioError>;
    /// Finishes what is in flight before the thread returns.
    fn drain(&mut self) -> Result<(), VirtioError>;
}

/// A running queue thread, stopped through its eventfd (and joined) by
/// [`QueueThread::stop`] or when dropped.
pub(super) struct QueueThread {
    name: String,
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl QueueThread {
    /// Starts thread `thread` serving `worker`, woken by `kicks`; `name`
    /// prefixes its logs.
    pub(super) fn spawn<W: QueueWorker>(
        thread: String,
        name: String,
        mut worker: W,
        kicks: Vec<EventFd>,
    ) -> Result<Self, VirtioError> {
        let stop = new_eventfd()?;
        let stop2 = stop.try_clone().map_err(VirtioError::Io)?;
        let log_name = name.clone();
        let handle = std::thread::Builder::new()
            .name(thread)
            .spawn(move || {
                seccomp::install_or_exit(VmmThread::Queue);
                seccomp::violation_point(VmmThread::Queue);
                if let Err(e) = serve(&mut worker, &kicks, &stop2) {
                    tracing::error!("{log_name}: stopped: {e}");
                }
            })
            .map_err(VirtioError::Io)?;
        Ok(Self {
            name,
            stop,
            handle: Some(handle),
        })
    }

    /// Tells the thread to drain and return, and joins it.
    pub(super) fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        let Some(handle) = self.handle.take() else {
            return;
        };
        if let Err(e) = self.stop.write(1) {
            tracing::warn!("{}: stop: {e}", self.name);
        }
        if handle.join().is_err() {
            tracing::error!("{}: queue thread panicked", self.name);
        }
    }
}

impl Drop for QueueThread {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// The thread body: process on kick and on completion, drain and return on stop.
fn serve<W: QueueWorker>(
    worker: &mut W,
    kicks: &[EventFd],
    stop: &EventFd,
) -> Result<(), VirtioError> {
    let n = kicks.len();
    let (completion, stop_token) = (n as u64, 2 * n as u64);
    let epoll = Epoll::new().map_err(VirtioError::Io)?;
    let sources = kicks
        .iter()
        .map(AsRawFd::as_raw_fd)
        .chain(worker.completion_fds())
        .chain([stop.as_raw_fd()]);
    for (token, fd) in sources.enumerate() {
        let event = EpollEvent::new(EventSet::IN, token as u64);
        epoll
            .ctl(ControlOperation::Add, fd, event)
            .map_err(VirtioError::Io)?;
    }
    // Buffers made available before the thread started (or before a reset).
    worker.process(&vec![true; n])?;
    let mut events = vec![EpollEvent::default(); 2 * n + 1];
    let mut ready = vec![false; n];
    loop {
        let count = match epoll.wait(-1, &mut events) {
            Ok(count) => count,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(VirtioError::Io(e)),
        };
        ready.fill(false);
        for ev in &events[..count] {
            let token = ev.data();
            if token >= stop_token {
                return worker.drain();
            }
            let queue = (token % completion) as usize;
            if token < completion {
                let _ = kicks[queue].read();
            }
            ready[queue] = true;
        }
        if ready.contains(&true) {
            worker.process(&ready)?;
        }
    }
}

/// A `virtio_queue::Queue` set up from the transport's registers of queue `i`.
pub(super) fn ready_queue(
    i: usize,
    q: &QueueState,
    event_idx: bool,
    mem: &GuestMemoryMmap,
) -> Result<Queue, VirtioError> {
    let bad = |len| VirtioError::BadRing {
        queue: i,
        addr: q.desc,
        len,
    };
    let mut queue = Queue::new(q.max_size).map_err(|_| bad(0))?;
    queue.set_size(q.size);
    queue.set_desc_table_address(Some(q.desc as u32), Some((q.desc >> 32) as u32));
    queue.set_avail_ring_address(Some(q.avail as u32), Some((q.avail >> 32) as u32));
    queue.set_used_ring_address(Some(q.used as u32), Some((q.used >> 32) as u32));
    queue.set_event_idx(event_idx);
    queue.set_ready(true);
    if !queue.is_valid(mem) {
        return Err(bad(q.ring_lengths().0));
    }
    Ok(queue)
}

/// A duplicate of queue `i`'s eventfd in `evts` (the transport's kicks or calls).
pub(super) fn dup_eventfd(evts: &[EventFd], i: usize) -> Result<EventFd, VirtioError> {
    evts.get(i)
        .ok_or(VirtioError::MissingEventfd { queue: i })?
        .try_clone()
        .map_err(VirtioError::Io)
}

/// Wraps a request-engine error of queue `queue`.
pub(super) fn engine_err(queue: usize) -> impl Fn(backends::Error) -> VirtioError {
    move |source| VirtioError::Engine { queue, source }
}

fn new_eventfd() -> Result<EventFd, VirtioError> {
    EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(VirtioError::Io)
}
