// SPDX-License-Identifier: Apache-2.0
//! `vmm-perf backend net --link`: frames from guest A to guest B through a switch between two
//! vhost-user sockets, no VM. Switches: our `vhost-user-net --link A,B` (the in-process
//! switch) and DPDK testpmd's two `net_vhost` ports io-forwarding (the reference). Clients:
//! this process's own virtio-net driver on both sides ([`super::driver`]: A transmits, B
//! receives, as in `backend net`), or testpmd `net_virtio_user` clients (`txonly` on A,
//! `rxonly` on B) — the same clients for both switches. The rate is what B received.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::driver::{Completion, Driver, NetMem};
use super::frame::FrameKind;
use super::testpmd::{Role, Testpmd, CLIENT_QUEUE_SIZE};
use crate::{io_err, stop_child, wait_for_socket, Error, Result};

/// Who switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Switch {
    /// Our `vhost-user-net --link`.
    Ours,
    /// The same with virtio-queue's ring reader (`--ring-reader virtio-queue`): the A/B of
    /// our own batched reader.
    OursVirtioQueue,
    /// testpmd, two `net_vhost` ports, io forwarding.
    Dpdk,
}

/// Who sends on A and receives on B.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Clients {
    /// This process's virtio-net driver.
    VmmPerf,
    /// testpmd `net_virtio_user` (`txonly` / `rxonly`).
    Testpmd,
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct LinkRun {
    /// Switch.
    pub switch: Switch,
    /// Clients.
    pub clients: Clients,
    /// Frame shape.
    pub frame: FrameKind,
    /// Repetition (0-based).
    pub rep: usize,
    /// Frames A's client handed to the switch.
    pub sent: u64,
    /// Frames B's client received.
    pub received: u64,
    /// Measured interval.
    pub seconds: f64,
    /// Million frames per second received by B.
    pub mpps: f64,
    /// Gbit/s of Ethernet frame bytes received by B.
    pub gbps: f64,
    /// CPU time (user + system) of our switch process per frame A's client handed over, in
    /// ns: less noisy than the rates on a shared machine (ours only).
    pub switch_cpu_ns_per_frame: Option<f64>,
}

impl LinkRun {
    fn new(key: (Switch, Clients, FrameKind, usize), sent: u64, received: u64, s: f64) -> Self {
        let (switch, clients, frame, rep) = key;
        let mpps = received as f64 / s.max(1e-9) / 1e6;
        LinkRun {
            switch,
            clients,
            frame,
            rep,
            sent,
            received,
            seconds: s,
            mpps,
            gbps: mpps * 1e6 * frame.frame_len() as f64 * 8.0 / 1e9,
            switch_cpu_ns_per_frame: None,
        }
    }
}

/// Settings of the link benchmark.
#[derive(Debug, Clone)]
pub struct LinkBench {
    /// Our `vhost-user-net`.
    pub backend_bin: PathBuf,
    /// Extra arguments for it.
    pub backend_args: Vec<String>,
    /// `dpdk-testpmd`, if it is installed.
    pub testpmd: Option<PathBuf>,
    /// Time per run.
    pub duration: Duration,
    /// Virtqueue size of our own clients.
    pub queue_size: u16,
    /// Frames refilled per kick by our own clients.
    pub batch: u16,
    /// Our own clients negotiate EVENT_IDX.
    pub event_idx: bool,
    /// How our own clients learn of used buffers.
    pub completion: Completion,
    /// Directory for sockets and testpmd logs.
    pub run_dir: PathBuf,
}

/// A running switch.
enum Running {
    Ours(std::process::Child),
    Dpdk(Testpmd),
}

impl Running {
    fn stop(self) {
        match self {
            Running::Ours(mut c) => stop_child(&mut c, Duration::from_millis(200)),
            Running::Dpdk(t) => {
                let _ = t.quit();
            }
        }
    }
}

impl LinkBench {
    fn sockets(&self) -> (PathBuf, PathBuf) {
        (self.run_dir.join("a.sock"), self.run_dir.join("b.sock"))
    }

    /// Start `switch` on the two sockets.
    fn start_switch(&self, switch: Switch) -> Result<Running> {
        let (a, b) = self.sockets();
        for s in [&a, &b] {
            let _ = std::fs::remove_file(s);
        }
        let running = match switch {
            Switch::Ours | Switch::OursVirtioQueue => {
                let reader = if switch == Switch::Ours {
                    "own"
                } else {
                    "virtio-queue"
                };
                let child = Command::new(&self.backend_bin)
                    .arg("--link")
                    .arg(format!("{},{}", a.display(), b.display()))
                    .args(["--queue-size", &CLIENT_QUEUE_SIZE.to_string()])
                    .args(["--ring-reader", reader])
                    .args(&self.backend_args)
                    .env(
                        "RUST_LOG",
                        std::env::var("VMM_PERF_BACKEND_LOG").unwrap_or_else(|_| "warn".into()),
                    )
                    .stdin(Stdio::null())
                    .spawn()
                    .map_err(io_err(format!("spawn {}", self.backend_bin.display())))?;
                Running::Ours(child)
            }
            Switch::Dpdk => {
                let bin = self.testpmd()?;
                let role = Role::Switch {
                    a: a.clone(),
                    b: b.clone(),
                };
                Running::Dpdk(Testpmd::start(bin, &role, "switch", &self.run_dir)?)
            }
        };
        for s in [&a, &b] {
            if let Err(e) = wait_for_socket(s, None) {
                running.stop();
                return Err(e);
            }
        }
        // testpmd's vhost ports take a moment past their sockets to be ready.
        std::thread::sleep(Duration::from_millis(500));
        Ok(running)
    }

    fn testpmd(&self) -> Result<&Path> {
        self.testpmd
            .as_deref()
            .ok_or_else(|| Error::Unavailable("dpdk-testpmd is not installed".into()))
    }

    /// One run of `frame` through `switch` with `clients`; a run whose testpmd client could
    /// not connect (on a loaded machine its vhost-user handshake can fail with EINTR, which
    /// virtio-user does not retry) is tried twice more.
    pub fn run(
        &self,
        switch: Switch,
        clients: Clients,
        frame: FrameKind,
        rep: usize,
    ) -> Result<LinkRun> {
        let mut tries = 0;
        loop {
            match self.run_once(switch, clients, frame, rep) {
                Err(e) if clients == Clients::Testpmd && tries < 2 => {
                    eprintln!("  {e}: trying again");
                    tries += 1;
                }
                r => return r,
            }
        }
    }

    fn run_once(
        &self,
        switch: Switch,
        clients: Clients,
        frame: FrameKind,
        rep: usize,
    ) -> Result<LinkRun> {
        let running = self.start_switch(switch)?;
        let key = (switch, clients, frame, rep);
        let pid = match &running {
            Running::Ours(child) => Some(child.id()),
            Running::Dpdk(_) => None,
        };
        let cpu_before = pid.and_then(crate::cpu::process_cpu);
        let result = match clients {
            Clients::VmmPerf => self.own_clients(frame),
            Clients::Testpmd => self.testpmd_clients(frame),
        };
        let cpu = pid
            .and_then(crate::cpu::process_cpu)
            .zip(cpu_before)
            .map(|(after, before)| after.saturating_sub(before));
        running.stop();
        let (sent, received, seconds) = result?;
        let mut run = LinkRun::new(key, sent, received, seconds);
        // The switch's CPU time covers the whole run (testpmd clients: their warm-up too,
        // whose frames are not counted; the figure is for our own clients).
        run.switch_cpu_ns_per_frame = cpu
            .filter(|_| clients == Clients::VmmPerf)
            .map(|c| c.as_nanos() as f64 / sent.max(1) as f64);
        Ok(run)
    }

    /// Our driver on both sockets: B receives while A transmits for the run's duration.
    fn own_clients(&self, frame: FrameKind) -> Result<(u64, u64, f64)> {
        let (a, b) = self.sockets();
        let connect = |socket: &Path| -> Result<Driver> {
            let mem = NetMem::new(self.queue_size, frame)?;
            Driver::connect(socket, mem, self.event_idx, self.completion)
        };
        let mut sink = connect(&b)?;
        let mut sender = connect(&a)?;
        let (batch, listen) = (self.batch, self.duration + Duration::from_millis(300));
        let receiver = std::thread::Builder::new()
            .name("link-sink".into())
            .spawn(move || {
                let counts = sink.receive(listen, batch);
                drop(sink);
                counts
            })
            .map_err(io_err("spawn the sink thread"))?;
        std::thread::sleep(Duration::from_millis(50));
        let sent = sender.transmit(self.duration, self.batch);
        drop(sender);
        let received = receiver
            .join()
            .map_err(|_| Error::Backend("sink thread panicked".into()))??;
        let sent = sent?;
        Ok((sent.frames, received.frames, sent.seconds))
    }

    /// testpmd `rxonly` on B, `txonly` on A; counters read from both after a second of warm-up
    /// and again after the run's duration.
    fn testpmd_clients(&self, frame: FrameKind) -> Result<(u64, u64, f64)> {
        let (a, b) = self.sockets();
        let bin = self.testpmd()?;
        let mut sink = Testpmd::start(bin, &Role::Sink { socket: b }, "sink", &self.run_dir)?;
        std::thread::sleep(Duration::from_secs(1));
        let role = Role::Sender {
            socket: a,
            frame_len: frame.frame_len(),
        };
        let mut sender = match Testpmd::start(bin, &role, "sender", &self.run_dir) {
            Ok(s) => s,
            Err(e) => {
                let _ = sink.quit();
                return Err(e);
            }
        };
        // Warm up, zero both counters, run, ask for them; the answers come with the output
        // at exit, the times are taken here.
        std::thread::sleep(Duration::from_secs(1));
        let asked = sink
            .clear_counters()
            .and_then(|()| sender.clear_counters())
            .and_then(|()| {
                let t0 = Instant::now();
                std::thread::sleep(self.duration);
                sink.ask_counters()?;
                sender.ask_counters()?;
                Ok(t0.elapsed().as_secs_f64())
            });
        let sent = sender.quit();
        let received = sink.quit();
        let seconds = asked?;
        let last = |answers: Result<Vec<(u64, u64)>>, who: &str| -> Result<(u64, u64)> {
            answers?.last().copied().ok_or_else(|| {
                Error::Backend(format!(
                    "testpmd {who}: no port statistics in {}",
                    self.run_dir.display()
                ))
            })
        };
        let (_, tx) = last(sent, "sender")?;
        let (rx, _) = last(received, "sink")?;
        Ok((tx, rx, seconds))
    }
}

impl LinkBench {
    /// Every cell for every frame size, `repeat` times (the order of the cells alternates
    /// between repetitions); prints each run as it ends.
    pub fn run_matrix(&self, frames: &[FrameKind], repeat: usize) -> Result<Vec<LinkRun>> {
        let mut runs = Vec::new();
        for rep in 0..repeat {
            for &frame in frames {
                let mut cells = vec![
                    (Switch::Ours, Clients::VmmPerf),
                    (Switch::OursVirtioQueue, Clients::VmmPerf),
                ];
                // testpmd's txonly sends single-segment frames: 64 and 1514 bytes.
                if self.testpmd.is_some() && frame != FrameKind::Tso {
                    cells.extend([
                        (Switch::Ours, Clients::Testpmd),
                        (Switch::Dpdk, Clients::Testpmd),
                    ]);
                }
                if rep % 2 == 1 {
                    cells.reverse();
                }
                for (switch, clients) in cells {
                    let r = self.run(switch, clients, frame, rep)?;
                    println!(
                        "run {rep} {:<8} {switch:?}/{clients:?}: {:.3} Mpps received ({:.2} Gbit/s), {:.3} Mpps sent{}",
                        frame.name(),
                        r.mpps,
                        r.gbps,
                        r.sent as f64 / r.seconds.max(1e-9) / 1e6,
                        r.switch_cpu_ns_per_frame
                            .map_or(String::new(), |ns| format!(", switch CPU {ns:.0} ns/frame"))
                    );
                    runs.push(r);
                }
            }
        }
        Ok(runs)
    }
}

/// The median run (by received rate) of `switch`/`clients`/`frame`.
pub fn median(
    runs: &[LinkRun],
    switch: Switch,
    clients: Clients,
    frame: FrameKind,
) -> Option<&LinkRun> {
    super::median_by_rate(
        runs.iter()
            .filter(|r| r.switch == switch && r.clients == clients && r.frame == frame),
        |r| r.mpps,
    )
}

/// Median over repetitions of ours/DPDK received rates with testpmd clients, each ratio taken
/// within one repetition.
pub fn ratio_to_dpdk(runs: &[LinkRun], frame: FrameKind) -> Option<f64> {
    let of = |switch, rep| {
        runs.iter().find(|r| {
            r.switch == switch && r.clients == Clients::Testpmd && r.frame == frame && r.rep == rep
        })
    };
    let mut ratios: Vec<f64> = runs
        .iter()
        .filter(|r| r.switch == Switch::Ours && r.clients == Clients::Testpmd && r.frame == frame)
        .filter_map(|o| of(Switch::Dpdk, o.rep).map(|d| (o, d)))
        .filter(|(_, d)| d.mpps > 0.0)
        .map(|(o, d)| o.mpps / d.mpps)
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios.get(ratios.len() / 2).copied()
}

/// The Markdown table of the medians: per frame, each switch/clients combination's received
/// Mpps (Gbit/s), and ours/DPDK with testpmd clients.
pub fn table(runs: &[LinkRun], frames: &[FrameKind]) -> String {
    let cell = |r: Option<&LinkRun>| {
        r.map_or("-".to_string(), |r| {
            format!(
                "{:.3} ({:.2}; sent {:.3})",
                r.mpps,
                r.gbps,
                r.sent as f64 / r.seconds.max(1e-9) / 1e6
            )
        })
    };
    let cpu = |switch: Switch, f: FrameKind| {
        let mut v: Vec<f64> = runs
            .iter()
            .filter(|r| r.switch == switch && r.frame == f)
            .filter_map(|r| r.switch_cpu_ns_per_frame)
            .collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let mut out = String::from(
        "| frame | ours, vmm-perf clients | ours with virtio-queue's reader, vmm-perf clients | switch CPU ns/frame: ours / virtio-queue's | ours, testpmd clients | DPDK testpmd switch, testpmd clients | ours / DPDK |\n|---|---|---|---|---|---|---|\n",
    );
    let num = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
    for &f in frames {
        let m = |s, c| median(runs, s, c, f);
        out.push_str(&format!(
            "| {} | {} | {} | {} / {} | {} | {} | **{}** |\n",
            f.name(),
            cell(m(Switch::Ours, Clients::VmmPerf)),
            cell(m(Switch::OursVirtioQueue, Clients::VmmPerf)),
            num(cpu(Switch::Ours, f)),
            num(cpu(Switch::OursVirtioQueue, f)),
            cell(m(Switch::Ours, Clients::Testpmd)),
            cell(m(Switch::Dpdk, Clients::Testpmd)),
            ratio_to_dpdk(runs, f).map_or("-".into(), |r| format!("{r:.2}")),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(switch: Switch, rep: usize, received: u64) -> LinkRun {
        LinkRun::new(
            (switch, Clients::Testpmd, FrameKind::Small, rep),
            received,
            received,
            1.0,
        )
    }

    #[test]
    fn rates_medians_and_ratios() {
        let r = run(Switch::Ours, 0, 2_000_000);
        assert!((r.mpps - 2.0).abs() < 1e-9);
        assert!((r.gbps - 2.0 * 64.0 * 8.0 / 1000.0).abs() < 1e-9);
        let runs = [
            run(Switch::Ours, 0, 3),
            run(Switch::Dpdk, 0, 6),
            run(Switch::Ours, 1, 1),
            run(Switch::Dpdk, 1, 1),
            run(Switch::Ours, 2, 2),
            run(Switch::Dpdk, 2, 8),
        ];
        // Per-repetition ratios 0.5, 1, 0.25: the median is 0.5.
        assert_eq!(ratio_to_dpdk(&runs, FrameKind::Small), Some(0.5));
        let m = median(&runs, Switch::Ours, Clients::Testpmd, FrameKind::Small).unwrap();
        assert_eq!(m.received, 2);
        assert!(ratio_to_dpdk(&runs, FrameKind::Mtu).is_none());
    }
}
