// SPDX-License-Identifier: Apache-2.0
//! The queue thread both in-VMM devices run: it sleeps in epoll on each
//! served queue's kick eventfd (a KVM ioeventfd on the notify address) and
//! io_uring completion eventfd, plus a stop eventfd and a pause gate; it
//! processes a queue when the guest kicks it or a request completes, and
//! drains and returns on stop. Paused (`vm.pause`), it finishes what it had
//! taken and then watches only the gate and stop: kicks wait in their
//! eventfds until it resumes. Used-buffer interrupts go to each queue's call
//! eventfd, which the transport binds to the MSI-X vector's GSI (irqfd).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use backends::engine::histogram::bump;
use backends::engine::QueueStats;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::pause::{PauseGate, ACK_TIMEOUT};
use crate::devices::virtio::{QueueState, VirtioError};
use crate::seccomp::VmmThread;
use backends::seccomp;

/// The queues one thread serves, in the order of their kick eventfds.
pub(super) trait QueueWorker: Send + 'static {
    /// Per served queue: the eventfd its request engine signals on completions.
    fn completion_fds(&self) -> Vec<RawFd>;
    /// Processes the queues whose flag in `ready` is set (kicked or completed); `kicked`
    /// says which of them the driver kicked.
    fn process(&mut self, ready: &[bool], kicked: &[bool]) -> Result<(), VirtioError>;
    /// Finishes what is in flight before the thread returns.
    fn drain(&mut self) -> Result<(), VirtioError>;
    /// Finishes what is in flight and takes nothing new until the next `process`.
    fn settle(&mut self) -> Result<(), VirtioError>;
}

/// A running queue thread, stopped through its eventfd (and joined) by
/// [`QueueThread::stop`] or when dropped.
pub(super) struct QueueThread {
    name: String,
    stop: EventFd,
    gate: Arc<PauseGate>,
    handle: Option<JoinHandle<()>>,
}

impl QueueThread {
    /// Starts thread `thread` serving `worker`, woken by `kicks` (whose
    /// counts go to the queues' `stats`, in the same order); `name` prefixes
    /// its logs.
    pub(super) fn spawn<W: QueueWorker>(
        thread: String,
        name: String,
        mut worker: W,
        kicks: Vec<EventFd>,
        stats: Vec<Arc<QueueStats>>,
    ) -> Result<Self, VirtioError> {
        let stop = new_eventfd()?;
        let stop2 = stop.try_clone().map_err(VirtioError::Io)?;
        let gate = Arc::new(PauseGate::new().map_err(VirtioError::Io)?);
        let gate2 = gate.clone();
        let log_name = name.clone();
        let handle = std::thread::Builder::new()
            .name(thread)
            .spawn(move || {
                seccomp::install_or_exit(VmmThread::Queue);
                seccomp::violation_point(VmmThread::Queue);
                let sources = Sources {
                    kicks: &kicks,
                    stats: &stats,
                    stop: &stop2,
                    gate: &gate2,
                };
                if let Err(e) = serve(&mut worker, &sources) {
                    tracing::error!("{log_name}: stopped: {e}");
                }
                gate2.close();
            })
            .map_err(VirtioError::Io)?;
        Ok(Self {
            name,
            stop,
            gate,
            handle: Some(handle),
        })
    }

    /// Stops taking new requests once those taken are answered; `false` if
    /// the thread did not confirm in time.
    pub(super) fn pause(&self) -> bool {
        self.gate.request(true, ACK_TIMEOUT)
    }

    /// Serves the queues again (kicks that came meanwhile included).
    pub(super) fn resume(&self) -> bool {
        self.gate.request(false, ACK_TIMEOUT)
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

/// What a queue thread waits on.
struct Sources<'a> {
    /// Per queue: its kick eventfd.
    kicks: &'a [EventFd],
    /// Per queue: its counters.
    stats: &'a [Arc<QueueStats>],
    stop: &'a EventFd,
    gate: &'a PauseGate,
}

/// Adds (`on`) or removes the kick and completion eventfds (tokens `0..2n`).
fn watch_queues(epoll: &Epoll, fds: &[RawFd], on: bool) -> Result<(), VirtioError> {
    for (token, &fd) in fds.iter().enumerate() {
        let (op, event) = if on {
            (
                ControlOperation::Add,
                EpollEvent::new(EventSet::IN, token as u64),
            )
        } else {
            (ControlOperation::Delete, EpollEvent::default())
        };
        epoll.ctl(op, fd, event).map_err(VirtioError::Io)?;
    }
    Ok(())
}

/// The thread body: process on kick and on completion, settle and wait on
/// pause, drain and return on stop.
fn serve<W: QueueWorker>(worker: &mut W, src: &Sources<'_>) -> Result<(), VirtioError> {
    let n = src.kicks.len();
    let (completion, stop_token, gate_token) = (n as u64, 2 * n as u64, 2 * n as u64 + 1);
    let epoll = Epoll::new().map_err(VirtioError::Io)?;
    let queue_fds: Vec<RawFd> = src
        .kicks
        .iter()
        .map(AsRawFd::as_raw_fd)
        .chain(worker.completion_fds())
        .collect();
    watch_queues(&epoll, &queue_fds, true)?;
    for (token, fd) in [
        (stop_token, src.stop.as_raw_fd()),
        (gate_token, src.gate.eventfd().as_raw_fd()),
    ] {
        let event = EpollEvent::new(EventSet::IN, token);
        epoll
            .ctl(ControlOperation::Add, fd, event)
            .map_err(VirtioError::Io)?;
    }
    // Buffers made available before the thread started (or before a reset).
    worker.process(&vec![true; n], &vec![false; n])?;
    let mut paused = false;
    let mut events = vec![EpollEvent::default(); 2 * n + 2];
    let mut ready = vec![false; n];
    let mut kicked = vec![false; n];
    loop {
        let count = match epoll.wait(-1, &mut events) {
            Ok(count) => count,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(VirtioError::Io(e)),
        };
        ready.fill(false);
        kicked.fill(false);
        for ev in &events[..count] {
            let token = ev.data();
            if token == stop_token {
                return worker.drain();
            }
            if token == gate_token {
                let want = src.gate.wanted();
                if want != paused {
                    if want {
                        worker.settle()?;
                    }
                    watch_queues(&epoll, &queue_fds, !want)?;
                    paused = want;
                    // Resumed: whatever was made available meanwhile.
                    ready.fill(!paused);
                }
                src.gate.acknowledge(paused);
                continue;
            }
            if paused {
                continue; // an event reported before the queues were unwatched
            }
            let queue = (token % completion) as usize;
            if token < completion {
                if let (Ok(kicks), Some(stats)) = (src.kicks[queue].read(), src.stats.get(queue)) {
                    bump(&stats.kicks, kicks);
                }
                kicked[queue] = true;
            }
            ready[queue] = true;
        }
        if !paused && ready.contains(&true) {
            worker.process(&ready, &kicked)?;
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use super::*;

    /// What the thread did, in order.
    #[derive(Default)]
    struct Log(Mutex<Vec<&'static str>>, AtomicUsize);

    struct Fake(Arc<Log>);

    impl QueueWorker for Fake {
        fn completion_fds(&self) -> Vec<RawFd> {
            Vec::new()
        }
        fn process(&mut self, _ready: &[bool], _kicked: &[bool]) -> Result<(), VirtioError> {
            self.0 .0.lock().unwrap().push("process");
            self.0 .1.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn drain(&mut self) -> Result<(), VirtioError> {
            self.0 .0.lock().unwrap().push("drain");
            Ok(())
        }
        fn settle(&mut self) -> Result<(), VirtioError> {
            self.0 .0.lock().unwrap().push("settle");
            Ok(())
        }
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn a_paused_thread_settles_and_serves_kicks_only_after_resuming() {
        let log = Arc::new(Log::default());
        let kick = new_eventfd().unwrap();
        let stats = Arc::new(QueueStats::default());
        let t = QueueThread::spawn(
            "test-q0".into(),
            "test".into(),
            Fake(log.clone()),
            vec![kick.try_clone().unwrap()],
            vec![stats.clone()],
        )
        .unwrap();
        let processed = || log.1.load(Ordering::SeqCst);
        wait_for("first pass", || processed() == 1);
        kick.write(2).unwrap();
        wait_for("kick served", || processed() == 2);
        assert_eq!(
            stats.kicks.load(Ordering::Relaxed),
            2,
            "the eventfd's count"
        );

        assert!(t.pause());
        kick.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(processed(), 2, "a kick was served while paused");
        assert!(t.resume());
        wait_for("the kick that came while paused", || processed() >= 3);
        t.stop();
        let log = log.0.lock().unwrap().clone();
        assert_eq!(log[..3], ["process", "process", "settle"]);
        assert_eq!(log.last(), Some(&"drain"));
        assert_eq!(stats.kicks.load(Ordering::Relaxed), 3);
    }
}
