// SPDX-License-Identifier: Apache-2.0
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
//!
//! With `--link` ([`link`]) it measures guest-to-guest forwarding instead: our
//! `vhost-user-net --link` switch against DPDK testpmd's ([`testpmd`]), same clients.

pub mod driver;
pub mod frame;
pub mod inject;
pub mod link;
pub mod netns;
pub mod raw;
pub mod ring;
pub mod testpmd;
pub mod wake;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Serialize;

use crate::cpu::{process_cpu, thread_cpu};
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
    /// Used-buffer notifications the device sent (call eventfd writes; 0 for raw).
    pub notifications: u64,
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
    /// The same with its io_urings unrestricted (`--uring-restrictions off`).
    OursUnrestricted,
    /// Ours with `--metrics`, scraped once a second while it serves.
    OursMetrics,
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
    /// CPU time per frame in ns: backend process + generator thread (ours), the raw
    /// thread (raw). Machine-noise independent, unlike the rates.
    pub cpu_ns_per_frame: Option<f64>,
    /// CPU time per frame in ns of the frame mover alone: the backend process (ours, without
    /// the generator, which plays the guest's driver and in a VM runs on the guest's vCPU),
    /// the raw thread (raw).
    pub device_cpu_ns_per_frame: Option<f64>,
}

impl NetRun {
    fn new(path: Path, direction: Direction, frame: FrameKind, rep: usize, phase: Phase) -> NetRun {
        let Phase {
            counts,
            tap,
            injected,
            cpu,
        } = phase;
        let per_frame = |c: Duration| c.as_nanos() as f64 / counts.frames.max(1) as f64;
        NetRun {
            cpu_ns_per_frame: cpu.map(|c| per_frame(c.total)),
            device_cpu_ns_per_frame: cpu.map(|c| per_frame(c.device)),
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

/// What one phase measured.
struct Phase {
    counts: Counts,
    tap: TapCounters,
    injected: Option<u64>,
    cpu: Option<CpuUse>,
}

/// CPU time one phase used on our side.
#[derive(Debug, Clone, Copy)]
struct CpuUse {
    /// Backend process + generator thread (ours), the raw thread (raw).
    total: Duration,
    /// The backend process (ours), the raw thread (raw).
    device: Duration,
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
    /// How the generator learns of used buffers (interrupts or polling).
    pub completion: driver::Completion,
    /// Also measure receive.
    pub rx: bool,
    /// Directory for the vhost-user socket.
    pub run_dir: PathBuf,
}

impl NetBench {
    /// Our backend on `tap` (`path` says which variant of ours): transmit, then (with `rx`)
    /// receive, in one vhost-user session. [`Path::OursMetrics`] serves `--metrics`, scraped
    /// once a second meanwhile; [`Path::OursUnrestricted`] runs with `--uring-restrictions off`.
    pub fn run_ours(
        &self,
        tap: &SinkTap,
        kind: FrameKind,
        rep: usize,
        path: Path,
    ) -> Result<Vec<NetRun>> {
        let metrics = path == Path::OursMetrics;
        let extra: &[&str] = match path {
            Path::OursUnrestricted => &["--uring-restrictions", "off"],
            _ => &[],
        };
        let socket = self.run_dir.join("net.sock");
        let _ = std::fs::remove_file(&socket);
        tap.wait_free()?;
        let endpoint = self.run_dir.join("net-metrics.sock");
        let metrics_arg = metrics.then(|| format!("unix:{}", endpoint.display()));
        let mut child = Command::new(&self.backend_bin)
            .arg("--socket")
            .arg(&socket)
            .arg("--tap")
            .arg(tap.name())
            .arg("--queue-size")
            .arg(self.queue_size.to_string())
            .args(metrics_arg.iter().flat_map(|m| ["--metrics", m.as_str()]))
            .args(&self.backend_args)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("VMM_PERF_BACKEND_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .spawn()
            .map_err(io_err(format!("spawn {}", self.backend_bin.display())))?;
        let pid = child.id();
        let scraper = metrics.then(|| {
            crate::metrics::Scraper::start(
                minihttp::ListenAddr::Unix(endpoint),
                Duration::from_secs(1),
            )
        });
        let res = wait_for_socket(&socket, Some(&mut child)).and_then(|()| {
            let mem = driver::NetMem::new(self.queue_size, kind)?;
            let mut drv = driver::Driver::connect(&socket, mem, self.event_idx, self.completion)?;
            let mut runs = Vec::new();
            let before = tap.counters()?;
            let cpu = CpuMeter::start(Some(pid));
            let tx = drv.transmit(self.duration, self.batch)?;
            let cpu = cpu.used();
            let tap_tx = tap.counters()?.since(&before);
            runs.push(NetRun::new(
                path,
                Direction::Tx,
                kind,
                rep,
                Phase {
                    counts: tx,
                    tap: tap_tx,
                    injected: None,
                    cpu,
                },
            ));
            if self.rx {
                let inj = inject::Injector::start(tap.ifindex()?, kind)?;
                let before = tap.counters()?;
                let cpu = CpuMeter::start(Some(pid));
                let rx = drv.receive(self.duration, self.batch);
                let cpu = cpu.used();
                let tap_rx = tap.counters()?.since(&before);
                let injected = inj.stop()?;
                runs.push(NetRun::new(
                    path,
                    Direction::Rx,
                    kind,
                    rep,
                    Phase {
                        counts: rx?,
                        tap: tap_rx,
                        injected: Some(injected),
                        cpu,
                    },
                ));
            }
            Ok(runs)
        });
        let scrapes = scraper.map(crate::metrics::Scraper::stop);
        stop_child(&mut child, Duration::from_secs(2));
        if scrapes == Some(0) && res.is_ok() {
            return Err(crate::Error::Backend(
                "its metrics endpoint was never scraped".into(),
            ));
        }
        let _ = std::fs::remove_file(&socket);
        res
    }

    /// The reference on `tap`: raw io_uring writes of the same buffers, then reads.
    pub fn run_raw(&self, tap: &SinkTap, kind: FrameKind, rep: usize) -> Result<Vec<NetRun>> {
        let mem = driver::NetMem::new(self.queue_size, kind)?;
        let q = tap.attach(driver::wanted_features(self.event_idx))?;
        let mut runs = Vec::new();
        let before = tap.counters()?;
        let cpu = CpuMeter::start(None);
        let tx = raw::transmit(&q, &mem, self.duration, self.batch)?;
        let cpu = cpu.used();
        let tap_tx = tap.counters()?.since(&before);
        runs.push(NetRun::new(
            Path::Raw,
            Direction::Tx,
            kind,
            rep,
            Phase {
                counts: tx,
                tap: tap_tx,
                injected: None,
                cpu,
            },
        ));
        if self.rx {
            let inj = inject::Injector::start(tap.ifindex()?, kind)?;
            let before = tap.counters()?;
            let cpu = CpuMeter::start(None);
            let rx = raw::receive(&q, self.duration, self.batch);
            let cpu = cpu.used();
            let tap_rx = tap.counters()?.since(&before);
            let injected = inj.stop()?;
            runs.push(NetRun::new(
                Path::Raw,
                Direction::Rx,
                kind,
                rep,
                Phase {
                    counts: rx?,
                    tap: tap_rx,
                    injected: Some(injected),
                    cpu,
                },
            ));
        }
        Ok(runs)
    }
}

/// CPU used since `start` by this thread and (if given) process `pid`.
struct CpuMeter {
    pid: Option<u32>,
    thread: Duration,
    process: Option<Duration>,
}

impl CpuMeter {
    fn start(pid: Option<u32>) -> CpuMeter {
        CpuMeter {
            pid,
            thread: thread_cpu(),
            process: pid.and_then(process_cpu),
        }
    }

    fn used(&self) -> Option<CpuUse> {
        let thread = thread_cpu().saturating_sub(self.thread);
        match (self.pid, self.process) {
            (None, _) => Some(CpuUse {
                total: thread,
                device: thread,
            }),
            (Some(pid), Some(before)) => {
                let backend = process_cpu(pid)?.saturating_sub(before);
                Some(CpuUse {
                    total: thread + backend,
                    device: backend,
                })
            }
            (Some(_), None) => None,
        }
    }
}

/// The median run (by frame rate) of `path`/`direction`/`frame` among `runs`.
pub fn median(
    runs: &[NetRun],
    path: Path,
    direction: Direction,
    frame: FrameKind,
) -> Option<&NetRun> {
    median_by_rate(
        runs.iter()
            .filter(|r| r.path == path && r.direction == direction && r.frame == frame),
        |r| r.mpps,
    )
}

/// The median of `runs` by `rate` (the upper one of an even count).
pub fn median_by_rate<'a, T>(
    runs: impl IntoIterator<Item = &'a T>,
    rate: impl Fn(&T) -> f64,
) -> Option<&'a T> {
    let mut v: Vec<&T> = runs.into_iter().collect();
    v.sort_by(|a, b| rate(a).total_cmp(&rate(b)));
    v.get(v.len() / 2).copied()
}

fn median_of(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

/// Median over repetitions of ours/raw frame rate, each ratio taken between the two runs of
/// the same repetition (measured back to back, so they share the machine's load then).
pub fn paired_ratio(runs: &[NetRun], direction: Direction, frame: FrameKind) -> Option<f64> {
    paired_ratio_of(runs, Path::Ours, Path::Raw, direction, frame)
}

/// [`paired_ratio`] of `num` over `den` (e.g. ours with metrics over ours).
pub fn paired_ratio_of(
    runs: &[NetRun],
    num: Path,
    den: Path,
    direction: Direction,
    frame: FrameKind,
) -> Option<f64> {
    let of = |path, rep| {
        runs.iter().find(|r| {
            r.path == path && r.direction == direction && r.frame == frame && r.rep == rep
        })
    };
    let ratios = runs
        .iter()
        .filter(|r| r.path == num && r.direction == direction && r.frame == frame)
        .filter_map(|o| of(den, o.rep).map(|r| (o, r)))
        .filter(|(_, r)| r.mpps > 0.0)
        .map(|(o, r)| o.mpps / r.mpps)
        .collect();
    median_of(ratios)
}

/// Median over all repetitions of `path`/`direction`/`frame` of a per-frame CPU figure
/// (`cpu`: [`NetRun::cpu_ns_per_frame`] or [`NetRun::device_cpu_ns_per_frame`]).
pub fn median_cpu(
    runs: &[NetRun],
    path: Path,
    direction: Direction,
    frame: FrameKind,
    cpu: fn(&NetRun) -> Option<f64>,
) -> Option<f64> {
    median_of(
        runs.iter()
            .filter(|r| r.path == path && r.direction == direction && r.frame == frame)
            .filter_map(cpu)
            .collect(),
    )
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
            notifications: 0,
        };
        assert!((c.mpps() - 1.0).abs() < 1e-9);
        assert!((c.gbps() - 0.512).abs() < 1e-9);
        let run = |mpps_frames: u64, rep| {
            NetRun::new(
                Path::Ours,
                Direction::Tx,
                FrameKind::Small,
                rep,
                Phase {
                    counts: Counts {
                        frames: mpps_frames,
                        bytes: 0,
                        seconds: 1.0,
                        notifications: 0,
                    },
                    tap: TapCounters::default(),
                    injected: None,
                    cpu: None,
                },
            )
        };
        let mut runs = vec![run(3, 0), run(1, 1), run(2, 2)];
        let m = median(&runs, Path::Ours, Direction::Tx, FrameKind::Small).unwrap();
        assert_eq!(m.rep, 2);
        assert!(median(&runs, Path::Raw, Direction::Tx, FrameKind::Small).is_none());
        assert!(paired_ratio(&runs, Direction::Tx, FrameKind::Small).is_none());
        // Raw runs at 6, 1 and 4 frames/s: per-repetition ratios 0.5, 1, 0.5.
        for (frames, rep) in [(6, 0), (1, 1), (4, 2)] {
            let mut r = run(frames, rep);
            r.path = Path::Raw;
            runs.push(r);
        }
        assert_eq!(
            paired_ratio(&runs, Direction::Tx, FrameKind::Small),
            Some(0.5)
        );
    }

    #[test]
    fn cpu_per_frame_splits_the_frame_mover_from_the_generator() {
        let run = |frames: u64, total_ms: u64, device_ms: u64| {
            NetRun::new(
                Path::Ours,
                Direction::Rx,
                FrameKind::Tso,
                0,
                Phase {
                    counts: Counts {
                        frames,
                        ..Counts::default()
                    },
                    tap: TapCounters::default(),
                    injected: None,
                    cpu: Some(CpuUse {
                        total: Duration::from_millis(total_ms),
                        device: Duration::from_millis(device_ms),
                    }),
                },
            )
        };
        // 1000 frames in 20 ms of CPU, 15 of them the backend's: 20 and 15 µs per frame.
        let runs = [run(1000, 20, 15), run(1000, 30, 24), run(2000, 30, 20)];
        assert_eq!(runs[0].cpu_ns_per_frame, Some(20_000.0));
        assert_eq!(runs[0].device_cpu_ns_per_frame, Some(15_000.0));
        let median = |cpu| median_cpu(&runs, Path::Ours, Direction::Rx, FrameKind::Tso, cpu);
        assert_eq!(median(|r| r.cpu_ns_per_frame), Some(20_000.0));
        assert_eq!(median(|r| r.device_cpu_ns_per_frame), Some(15_000.0));
        assert_eq!(
            median_cpu(&runs, Path::Raw, Direction::Rx, FrameKind::Tso, |r| r
                .cpu_ns_per_frame),
            None
        );
    }
}
