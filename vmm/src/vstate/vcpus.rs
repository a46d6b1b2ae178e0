// SPDX-License-Identifier: Apache-2.0
//! The VM's running vCPU threads as a group: started together, paused and
//! resumed together (`vm.pause`: each is kicked out of KVM_RUN and parks until
//! resumed), and stopped together at the end of a run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use backends::placement::Affinity;
use vmm_sys_util::signal::Killable;

use super::exit::ExitSignal;
use super::vcpu::{kick_signal, IoBuses, Vcpu, VcpuError};
use crate::devices::bus::lock;
use crate::error::Error;

/// How long a pause waits for every vCPU to park.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a vCPU that has not parked (or stopped) yet is kicked again: a
/// kick that lands just before KVM_RUN is entered does not interrupt it.
const KICK_INTERVAL: Duration = Duration::from_millis(5);

#[derive(Default)]
struct Parking {
    /// The VMM wants the vCPUs parked.
    paused: bool,
    /// vCPU threads parked now.
    parked: usize,
    /// vCPU threads whose loop ended.
    finished: usize,
}

/// What the VMM tells every vCPU thread, and what they report back.
#[derive(Default)]
pub struct VcpuControl {
    stop: AtomicBool,
    pause: AtomicBool,
    parking: Mutex<Parking>,
    changed: Condvar,
}

impl VcpuControl {
    /// Whether the thread must leave its loop.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Called by a vCPU thread after each exit: parks it while the VM is
    /// paused (`on_park` runs once parked, before waiting).
    pub fn park_if_paused(&self, on_park: impl FnOnce()) {
        if !self.pause.load(Ordering::Acquire) {
            return;
        }
        let mut p = lock(&self.parking);
        if !p.paused || self.stopping() {
            return;
        }
        p.parked += 1;
        self.changed.notify_all();
        on_park();
        while p.paused && !self.stopping() {
            p = self.changed.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        p.parked -= 1;
    }

    /// Called by a vCPU thread when its loop ends.
    pub fn finished(&self) {
        lock(&self.parking).finished += 1;
        self.changed.notify_all();
    }
}

/// The running vCPU threads.
pub struct Vcpus {
    threads: Vec<JoinHandle<()>>,
    control: Arc<VcpuControl>,
}

impl Vcpus {
    /// Runs each of `vcpus` on its own thread (`vcpuN`), pinned as `affinity` says; each
    /// installs its seccomp filter, then waits at `gate` (sized for them and the caller)
    /// before it runs guest code.
    pub fn start(
        vcpus: Vec<Vcpu>,
        buses: &Arc<IoBuses>,
        exit: &Arc<ExitSignal>,
        affinity: &Affinity,
        gate: &Arc<Barrier>,
    ) -> Result<Self, VcpuError> {
        let control = Arc::new(VcpuControl::default());
        let mut group = Self {
            threads: Vec::new(),
            control,
        };
        for v in vcpus {
            let t = v.spawn(
                buses.clone(),
                exit.clone(),
                group.control.clone(),
                affinity.clone(),
                gate.clone(),
            )?;
            group.threads.push(t);
        }
        Ok(group)
    }

    /// Parks every vCPU (out of KVM_RUN, waiting in the VMM); an error if one
    /// did not park within 2 s (the others are resumed then).
    pub fn pause(&self) -> Result<(), Error> {
        lock(&self.control.parking).paused = true;
        self.control.pause.store(true, Ordering::Release);
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        let mut p = lock(&self.control.parking);
        while p.parked + p.finished < self.threads.len() {
            if Instant::now() >= deadline {
                drop(p);
                let stuck = self.threads.iter().position(|t| !t.is_finished());
                self.resume();
                return Err(Error::PauseTimeout(stuck.unwrap_or(0)));
            }
            drop(p);
            self.kick_all();
            p = lock(&self.control.parking);
            p = self
                .control
                .changed
                .wait_timeout(p, KICK_INTERVAL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    /// Lets the parked vCPUs run again.
    pub fn resume(&self) {
        lock(&self.control.parking).paused = false;
        self.control.pause.store(false, Ordering::Release);
        self.control.changed.notify_all();
    }

    /// Tells every vCPU thread to leave its loop (before it entered it: no
    /// guest instruction runs); [`Vcpus::stop`] joins them.
    pub fn request_stop(&self) {
        self.control.stop.store(true, Ordering::Release);
        self.control.changed.notify_all();
    }

    /// Stops every vCPU thread (kicking each out of KVM_RUN until it has seen
    /// the stop flag) and joins them.
    pub fn stop(self) {
        self.request_stop();
        for t in self.threads {
            while !t.is_finished() {
                if let Err(e) = t.kill(kick_signal()) {
                    tracing::debug!("kick failed: {e}");
                }
                std::thread::sleep(KICK_INTERVAL);
            }
            if t.join().is_err() {
                tracing::error!("a vCPU thread panicked");
            }
        }
    }

    fn kick_all(&self) {
        for t in self.threads.iter().filter(|t| !t.is_finished()) {
            if let Err(e) = t.kill(kick_signal()) {
                tracing::debug!("kick failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::vstate::vcpu::on_kick_signal;

    /// Threads that loop as vCPU threads do (an "exit" every millisecond).
    fn fake_vcpus(n: usize, steps: &Arc<AtomicUsize>) -> Vcpus {
        vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick_signal).unwrap();
        let control = Arc::new(VcpuControl::default());
        let threads = (0..n)
            .map(|_| {
                let (c, steps) = (control.clone(), steps.clone());
                std::thread::spawn(move || {
                    while !c.stopping() {
                        steps.fetch_add(1, Ordering::SeqCst);
                        c.park_if_paused(|| {});
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    c.finished();
                })
            })
            .collect();
        Vcpus { threads, control }
    }

    #[test]
    fn pause_parks_every_vcpu_until_resume_and_stop_ends_parked_ones() {
        let steps = Arc::new(AtomicUsize::new(0));
        let vcpus = fake_vcpus(2, &steps);
        vcpus.pause().unwrap();
        assert_eq!(lock(&vcpus.control.parking).parked, 2);
        let frozen = steps.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            steps.load(Ordering::SeqCst),
            frozen,
            "a vCPU ran while paused"
        );
        vcpus.resume();
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            steps.load(Ordering::SeqCst) > frozen + 10,
            "the vCPUs did not run again"
        );
        // Paused again, then stopped: parked threads leave at once.
        vcpus.pause().unwrap();
        let start = Instant::now();
        vcpus.stop();
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}
