//! `vmm-perf backend net`: our vhost-user-net backend without a VM, against raw io_uring on
//! the same TAP in the same run.
//!
//! The load generator is this process playing the guest's virtio-net driver over the
//! vhost-user socket ([`driver`]: memfd guest memory, split rings laid out by [`ring`],
//! kick/call eventfds). Transmit: pre-built frames ([`frame`]) kept in flight through the
//! backend into a TAP inside a fresh network namespace ([`netns`]), where the kernel counts
//! them on the TAP and drops them. Receive: an `AF_PACKET` sender in the namespace
//! ([`inject`]) floods the TAP; the generator counts what the backend puts in its receive
//! buffers. Reference ([`raw`]): this process writes the same buffers to, and reads from, the
//! same TAP with io_uring.

pub mod driver;
pub mod frame;
pub mod inject;
pub mod netns;
pub mod raw;
pub mod ring;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Serialize;

use crate::{io_err, stop_child, wait_for_socket, Result};
use frame::FrameKind;
use netns::{SinkTap, TapCounters};

/// Frames and bytes moved in some time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Counts {
    /// Frames.
    pub frames: u64,
    /// Ethernet bytes (no virtio header, no FCS).
    pub bytes: u64,
    /// Wall-clock time.
    pub seconds: f64,
}

impl Counts {
    /// Million frames per second.
    pub fn mpps(&self) -> f64 {
        self.frames as f64 / self.seconds.max(1e-9) / 1e6
    }

    /// Gigabits per second of Ethernet frame bytes.
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds.max(1e-9) / 1e9
    }
}

/// Who moves the frames between this process and the TAP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// Our vhost-user-net backend, driven over vhost-user.
    Ours,
    /// io_uring on the TAP from this process.
    Raw,
}

/// Direction, from the guest's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Guest → TAP.
    Tx,
    /// TAP → guest.
    Rx,
}

/// One measured phase.
#[derive(Debug, Clone, Serialize)]
pub struct NetRun {
    /// Backend or raw.
    pub path: Path,
    /// Transmit or receive.
    pub direction: Direction,
    /// Frame shape.
    pub frame: FrameKind,
    /// Repetition (0-based).
    pub rep: usize,
    /// What the generator (or raw loop) counted.
    pub counts: Counts,
    /// Million frames per second.
    pub mpps: f64,
    /// Gbit/s of Ethernet frame bytes.
    pub gbps: f64,
    /// The TAP's counters over the phase.
    pub tap: TapCounters,
    /// Frames the `AF_PACKET` sender got into the stack (receive only).
    pub injected: Option<u64>,
}

impl NetRun {
    fn new(
        path: Path,
        direction: Direction,
        frame: FrameKind,
        rep: usize,
        counts: Counts,
        tap: TapCounters,
        injected: Option<u64>,
    ) -> NetRun {
        NetRun {
            path,
            direction,
            frame,
            rep,
            counts,
            mpps: counts.mpps(),
            gbps: counts.gbps(),
            tap,
            injected,
        }
    }
}

/// Benchmark settings.
#[derive(Debug, Clone)]
pub struct NetBench {
    /// Our `vhost-user-net` binary.
    pub backend_bin: PathBuf,
    /// Extra backend arguments (e.g. `--poll-us 50`).
    pub backend_args: Vec<String>,
    /// Time per phase.
    pub duration: Duration,
    /// Virtqueue size (both queues; also the raw writer's slot count).
    pub queue_size: u16,
    /// Frames refilled per kick / writes per `io_uring_enter`; raw reads in flight.
    pub batch: u16,
    /// Negotiate VIRTIO_RING_F_EVENT_IDX.
    pub event_idx: bool,
    /// Also measure receive.
    pub rx: bool,
    /// Directory for the vhost-user socket.
    pub run_dir: PathBuf,
}

impl NetBench {
    /// Our backend on `tap`: transmit, then (with `rx`) receive, in one vhost-user session.
    pub fn run_ours(&self, tap: &SinkTap, kind: FrameKind, rep: usize) -> Result<Vec<NetRun>> {
        let socket = self.run_dir.join("net.sock");
        let _ = std::fs::remove_file(&socket);
        let mut child = Command::new(&self.backend_bin)
            .arg("--socket")
            .arg(&socket)
            .arg("--tap")
            .arg(tap.name())
            .arg("--queue-size")
            .arg(self.queue_size.to_string())
            .args(&self.backend_args)
            .env(
                "RUST_LOG",
                std::env::var("VMM_PERF_BACKEND_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .spawn()
            .map_err(io_err(format!("spawn {}", self.backend_bin.display())))?;
        let res = wait_for_socket(&socket, Some(&mut child)).and_then(|()| {
            let mem = driver::NetMem::new(self.queue_size, kind)?;
            let mut drv = driver::Driver::connect(&socket, mem, self.event_idx)?;
            let mut runs = Vec::new();
            let before = tap.counters()?;
            let tx = drv.transmit(self.duration, self.batch)?;
            let tap_tx = tap.counters()?.since(&before);
            runs.push(NetRun::new(
                Path::Ours,
                Direction::Tx,
                kind,
                rep,
                tx,
                tap_tx,
                None,
            ));
            if self.rx {
                let inj = inject::Injector::start(tap.ifindex()?, kind)?;
                let before = tap.counters()?;
                let rx = drv.receive(self.duration, self.batch);
                let tap_rx = tap.counters()?.since(&before);
                let injected = inj.stop()?;
                runs.push(NetRun::new(
                    Path::Ours,
                    Direction::Rx,
                    kind,
                    rep,
                    rx?,
                    tap_rx,
                    Some(injected),
                ));
            }
            Ok(runs)
        });
        stop_child(&mut child, Duration::from_secs(2));
        let _ = std::fs::remove_file(&socket);
        res
    }

    /// The reference on `tap`: raw io_uring writes of the same buffers, then reads.
    pub fn run_raw(&self, tap: &SinkTap, kind: FrameKind, rep: usize) -> Result<Vec<NetRun>> {
        let mem = driver::NetMem::new(self.queue_size, kind)?;
        let q = tap.attach(driver::wanted_features(self.event_idx))?;
        let mut runs = Vec::new();
        let before = tap.counters()?;
        let tx = raw::transmit(&q, &mem, self.duration, self.batch)?;
        let tap_tx = tap.counters()?.since(&before);
        runs.push(NetRun::new(
            Path::Raw,
            Direction::Tx,
            kind,
            rep,
            tx,
            tap_tx,
            None,
        ));
        if self.rx {
            let inj = inject::Injector::start(tap.ifindex()?, kind)?;
            let before = tap.counters()?;
            let rx = raw::receive(&q, self.duration, self.batch);
            let tap_rx = tap.counters()?.since(&before);
            let injected = inj.stop()?;
            runs.push(NetRun::new(
                Path::Raw,
                Direction::Rx,
                kind,
                rep,
                rx?,
                tap_rx,
                Some(injected),
            ));
        }
        Ok(runs)
    }
}

/// The median run (by frame rate) of `path`/`direction`/`frame` among `runs`.
pub fn median(
    runs: &[NetRun],
    path: Path,
    direction: Direction,
    frame: FrameKind,
) -> Option<&NetRun> {
    let mut v: Vec<&NetRun> = runs
        .iter()
        .filter(|r| r.path == path && r.direction == direction && r.frame == frame)
        .collect();
    v.sort_by(|a, b| a.mpps.total_cmp(&b.mpps));
    v.get(v.len() / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_median() {
        let c = Counts {
            frames: 2_000_000,
            bytes: 2_000_000 * 64,
            seconds: 2.0,
        };
        assert!((c.mpps() - 1.0).abs() < 1e-9);
        assert!((c.gbps() - 0.512).abs() < 1e-9);
        let run = |mpps_frames: u64, rep| {
            NetRun::new(
                Path::Ours,
                Direction::Tx,
                FrameKind::Small,
                rep,
                Counts {
                    frames: mpps_frames,
                    bytes: 0,
                    seconds: 1.0,
                },
                TapCounters::default(),
                None,
            )
        };
        let runs = vec![run(3, 0), run(1, 1), run(2, 2)];
        let m = median(&runs, Path::Ours, Direction::Tx, FrameKind::Small).unwrap();
        assert_eq!(m.rep, 2);
        assert!(median(&runs, Path::Raw, Direction::Tx, FrameKind::Small).is_none());
    }
}
