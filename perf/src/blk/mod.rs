// SPDX-License-Identifier: Apache-2.0
//! `vmm-perf backend blk`: 4 KiB random reads through libblkio against
//! our vhost-user-blk, qemu-storage-daemon's vhost-user-blk export, and libblkio's
//! `io_uring` driver on the same file (raw baseline), all in the same run; optionally our
//! backend as it was before adaptive polling ([`Target::OursBefore`]), client and server
//! threads on chosen CPUs, and what an idle backend costs ([`BlkBench::idle_cpu`]).

use std::fs::File;
use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blkio::{Blkio, Blkioq, Completion, ReqFlags};
use serde::Serialize;

use minihttp::ListenAddr;

use crate::cpu::{process_cpu, thread_cpu};
use crate::metrics::Scraper;
use crate::{io_err, stop_child, wait_for_socket, Error, Result};

const BS: usize = 4096;

/// What serves the I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Our `vhost-user-blk` binary, default flags (plus `--ours-arg`s).
    Ours,
    /// Our binary with the `--before-arg`s: its behaviour before adaptive polling and the
    /// automatic kernel submission polling (`--poll-max-us 0 --sqpoll-idle-ms 0`).
    OursBefore,
    /// Our binary with `--uring-restrictions off` (what the io_uring restrictions cost).
    OursUnrestricted,
    /// Ours with `--metrics`, scraped once a second while it serves.
    OursMetrics,
    /// `qemu-storage-daemon --export type=vhost-user-blk`.
    Qsd,
    /// libblkio's `io_uring` driver directly on the file.
    Raw,
}

impl Target {
    /// Short name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Target::Ours => "ours",
            Target::OursBefore => "ours-before",
            Target::OursUnrestricted => "ours-unrestricted",
            Target::OursMetrics => "ours+metrics",
            Target::Qsd => "qsd",
            Target::Raw => "raw-io_uring",
        }
    }
}

/// One measured job.
#[derive(Debug, Clone, Serialize)]
pub struct JobResult {
    /// Target measured.
    pub target: Target,
    /// Requests in flight per queue.
    pub iodepth: usize,
    /// Queues (one client thread each).
    pub queues: usize,
    /// Completed requests per second.
    pub iops: f64,
    /// Median latency in microseconds.
    pub p50_us: f64,
    /// 99th percentile latency in microseconds.
    pub p99_us: f64,
    /// Failed requests.
    pub errors: u64,
    /// CPU time the client's threads used per completed request, in microseconds.
    pub client_cpu_us_per_io: f64,
    /// CPU time the server process (every thread) used per completed request while the
    /// client ran, in microseconds; `None` for raw io_uring, which has no server.
    pub server_cpu_us_per_io: Option<f64>,
}

/// Benchmark settings.
#[derive(Debug, Clone)]
pub struct BlkBench {
    /// Page-cached test file (created if missing or too small).
    pub file: PathBuf,
    /// File size in bytes.
    pub size: u64,
    /// Run time per job.
    pub duration: Duration,
    /// Our backend binary.
    pub ours_bin: PathBuf,
    /// Extra arguments for our backend (e.g. `--poll-us 50`).
    pub ours_args: Vec<String>,
    /// Arguments that give our backend its earlier behaviour ([`Target::OursBefore`]).
    pub before_args: Vec<String>,
    /// qemu-storage-daemon binary.
    pub qsd_bin: PathBuf,
    /// vhost-user clients poll for completions (libblkio poll queues).
    pub client_poll: bool,
    /// qemu-storage-daemon serves its export from an IOThread (adaptive polling) instead of
    /// its main loop.
    pub qsd_iothread: bool,
    /// Directory for sockets.
    pub run_dir: PathBuf,
    /// CPUs of the client threads (queue `i`'s thread on entry `i % len`; empty: anywhere).
    pub client_cpus: Vec<usize>,
    /// CPUs of the servers: our queue `i`'s thread on entry `i % len` (`--queue-affinity`),
    /// qemu-storage-daemon's whole process on all of them (empty: anywhere).
    pub server_cpus: Vec<usize>,
}

impl BlkBench {
    /// Create the test file if needed and pull it into the page cache.
    pub fn prepare_file(&self) -> Result<()> {
        use std::os::unix::fs::FileTypeExt;
        let meta = std::fs::metadata(&self.file).ok();
        let is_bdev = meta
            .as_ref()
            .is_some_and(|m| m.file_type().is_block_device());
        let ok = meta.is_some_and(|m| m.len() >= self.size);
        // Never write to a block device: it is read as it is.
        if !ok && !is_bdev {
            let mut f = File::create(&self.file).map_err(io_err("create test file"))?;
            let mut chunk = vec![0u8; 1 << 20];
            for (i, b) in chunk.iter_mut().enumerate() {
                *b = (i % 253) as u8;
            }
            for _ in 0..self.size >> 20 {
                f.write_all(&chunk).map_err(io_err("fill test file"))?;
            }
        }
        let mut f = File::open(&self.file).map_err(io_err("open test file"))?;
        let mut buf = vec![0u8; 1 << 20];
        while f.read(&mut buf).map_err(io_err("warm page cache"))? > 0 {}
        Ok(())
    }

    /// Run one job against `target`.
    pub fn run(&self, target: Target, iodepth: usize, queues: usize) -> Result<JobResult> {
        let socket = self
            .run_dir
            .join(format!("{}-{queues}.sock", target.name()));
        let _ = std::fs::remove_file(&socket);
        let mut server = self.spawn(target, &socket, queues)?;
        let scraper = (target == Target::OursMetrics).then(|| {
            Scraper::start(
                ListenAddr::Unix(self.metrics_socket(queues)),
                Duration::from_secs(1),
            )
        });
        let server_pid = server.as_ref().map(Child::id);
        let res = self
            .connect(target, &socket, iodepth, queues)
            .and_then(|client| {
                let before = server_pid.and_then(process_cpu);
                let (mut job, client) = client.load(target, self.duration, &self.client_cpus)?;
                let used = server_pid
                    .and_then(process_cpu)
                    .zip(before)
                    .map(|(after, before)| after.saturating_sub(before));
                job.server_cpu_us_per_io = used.map(|u| per_io_us(u, job.iops, self.duration));
                Ok((job, client))
            });
        let scrapes = scraper.map(Scraper::stop);
        if let Some(s) = server.as_mut() {
            stop_child(s, Duration::ZERO);
        }
        let _ = std::fs::remove_file(&socket);
        if scrapes == Some(0) && res.is_ok() {
            return Err(Error::Backend(
                "its metrics endpoint was never scraped".into(),
            ));
        }
        res.map(|(r, _)| r)
    }

    /// Percent of one CPU `target`'s server process uses over `idle` while its frontend
    /// stays connected after a second of load (depth 32, one queue): what an idle backend
    /// costs once its polling has had something to adapt to. `None` for the raw baseline.
    pub fn idle_cpu(&self, target: Target, idle: Duration) -> Result<Option<f64>> {
        let socket = self.run_dir.join(format!("{}-idle.sock", target.name()));
        let _ = std::fs::remove_file(&socket);
        let Some(mut server) = self.spawn(target, &socket, 1)? else {
            return Ok(None);
        };
        let measured = self
            .connect(target, &socket, 32, 1)
            .and_then(|client| client.load(target, Duration::from_secs(1), &self.client_cpus))
            .and_then(|(_, client)| {
                let pid = server.id();
                std::thread::sleep(Duration::from_millis(100));
                let cpu = || {
                    process_cpu(pid)
                        .ok_or_else(|| Error::Backend(format!("no CPU time for process {pid}")))
                };
                let before = cpu()?;
                let start = Instant::now();
                std::thread::sleep(idle);
                let used = cpu()?.saturating_sub(before);
                drop(client);
                Ok(100.0 * used.as_secs_f64() / start.elapsed().as_secs_f64())
            });
        stop_child(&mut server, Duration::ZERO);
        let _ = std::fs::remove_file(&socket);
        measured.map(Some)
    }

    /// Start `target`'s server on `socket` and wait until it listens (`None` for raw).
    fn spawn(&self, target: Target, socket: &Path, queues: usize) -> Result<Option<Child>> {
        let mut server = match target {
            Target::Ours => self.spawn_ours(socket, queues, &[])?,
            Target::OursBefore => self.spawn_ours(socket, queues, &self.before_args)?,
            Target::OursUnrestricted => {
                let off = ["--uring-restrictions".to_string(), "off".to_string()];
                self.spawn_ours(socket, queues, &off)?
            }
            Target::OursMetrics => {
                let endpoint = format!("unix:{}", self.metrics_socket(queues).display());
                self.spawn_ours(socket, queues, &["--metrics".to_string(), endpoint])?
            }
            Target::Qsd => self.spawn_qsd(socket, queues)?,
            Target::Raw => return Ok(None),
        };
        wait_for_socket(socket, Some(&mut server))?;
        Ok(Some(server))
    }

    /// Where [`Target::OursMetrics`] serves its metrics.
    fn metrics_socket(&self, queues: usize) -> PathBuf {
        self.run_dir.join(format!("metrics-{queues}.sock"))
    }

    fn spawn_ours(&self, socket: &Path, queues: usize, extra: &[String]) -> Result<Child> {
        let mut cmd = Command::new(&self.ours_bin);
        if !self.server_cpus.is_empty() {
            let list: Vec<String> = (0..queues)
                .map(|q| format!("{q}@{}", self.server_cpus[q % self.server_cpus.len()]))
                .collect();
            cmd.arg("--queue-affinity").arg(list.join(","));
        }
        cmd.arg("--socket")
            .arg(socket)
            .arg("--path")
            .arg(&self.file)
            .arg("--queues")
            .arg(queues.to_string())
            .args(&self.ours_args)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("VMM_PERF_BACKEND_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .spawn()
            .map_err(io_err(format!("spawn {}", self.ours_bin.display())))
    }

    fn spawn_qsd(&self, socket: &Path, queues: usize) -> Result<Child> {
        let mut cmd = Command::new(&self.qsd_bin);
        let mut export = format!(
            "type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path={},num-queues={queues}",
            socket.display()
        );
        if self.qsd_iothread {
            // An IOThread's event loop busy-polls up to 32 µs (QEMU's default poll-max-ns)
            // before sleeping; the main loop does not poll.
            cmd.arg("--object").arg("iothread,id=iot0");
            export.push_str(",iothread=iot0");
        }
        cmd.arg("--blockdev")
            .arg(format!(
                "file,filename={},aio=io_uring,node-name=n",
                self.file.display()
            ))
            .arg("--export")
            .arg(export)
            .stdin(Stdio::null());
        if !self.server_cpus.is_empty() {
            let cpus = self.server_cpus.clone();
            // SAFETY: the closure runs in the forked child before exec and only makes the
            // sched_setaffinity system call (no allocation, no locks).
            unsafe {
                cmd.pre_exec(move || backends::placement::pin_current_thread(&cpus));
            }
        }
        cmd.spawn().map_err(io_err("spawn qemu-storage-daemon"))
    }

    /// A libblkio client of `target` on `socket` (or of the file, for raw) with `queues`
    /// queues of `iodepth` buffers each.
    fn connect(
        &self,
        target: Target,
        socket: &Path,
        iodepth: usize,
        queues: usize,
    ) -> Result<Client> {
        let mut b = match target {
            Target::Raw => {
                let mut b = Blkio::new("io_uring").map_err(blkio_err("new io_uring"))?;
                b.set_str("path", self.file.to_str().unwrap_or_default())
                    .map_err(blkio_err("path"))?;
                b
            }
            _ => {
                let mut b =
                    Blkio::new("virtio-blk-vhost-user").map_err(blkio_err("new vhost-user"))?;
                b.set_str("path", socket.to_str().unwrap_or_default())
                    .map_err(blkio_err("path"))?;
                b
            }
        };
        // Reads only: a read-only session also matches qemu-storage-daemon's default export.
        b.set_bool("read-only", true)
            .map_err(blkio_err("read-only"))?;
        b.connect().map_err(blkio_err("connect"))?;
        let poll = self.client_poll && target != Target::Raw;
        let (interrupt_queues, poll_queues) = if poll { (0, queues) } else { (queues, 0) };
        b.set_i32("num-queues", interrupt_queues as i32)
            .map_err(blkio_err("num-queues"))?;
        b.set_i32("num-poll-queues", poll_queues as i32)
            .map_err(blkio_err("num-poll-queues"))?;
        let out = b.start().map_err(blkio_err("start"))?;
        let queues = if poll { out.poll_queues } else { out.queues };
        let region = b
            .alloc_mem_region(iodepth * queues.len() * BS)
            .map_err(blkio_err("alloc region"))?;
        b.map_mem_region(&region).map_err(blkio_err("map region"))?;
        Ok(Client {
            base: region.addr,
            queues: queues.into_iter().map(SendQueue).collect(),
            iodepth,
            sectors: self.size / BS as u64,
            _blkio: b,
        })
    }
}

/// A connected libblkio client; dropping it disconnects.
struct Client {
    queues: Vec<SendQueue>,
    base: usize,
    iodepth: usize,
    sectors: u64,
    _blkio: Blkio,
}

impl Client {
    /// Keep every queue `iodepth` deep for `duration`, one thread per queue (queue `i`'s
    /// thread on `cpus[i % len]` if given); the result and the client, for more.
    fn load(
        mut self,
        target: Target,
        duration: Duration,
        cpus: &[usize],
    ) -> Result<(JobResult, Self)> {
        let deadline = Instant::now() + duration;
        let (iodepth, sectors, nqueues) = (self.iodepth, self.sectors, self.queues.len());
        let threads: Vec<_> = self
            .queues
            .drain(..)
            .enumerate()
            .map(|(i, q)| {
                let base = self.base + i * iodepth * BS;
                let cpu = (!cpus.is_empty()).then(|| cpus[i % cpus.len()]);
                std::thread::Builder::new()
                    .name(format!("load-q{i}"))
                    .spawn(move || {
                        if let Some(cpu) = cpu {
                            backends::placement::pin_current_thread(&[cpu])
                                .map_err(io_err("pin load thread"))?;
                        }
                        drive_queue(q, base, iodepth, sectors, deadline, i as u64)
                    })
                    .map_err(io_err("spawn load thread"))
            })
            .collect::<Result<_>>()?;
        let mut lat = Vec::new();
        let (mut done, mut errors, mut client_cpu) = (0u64, 0u64, Duration::ZERO);
        for t in threads {
            let r = t
                .join()
                .map_err(|_| Error::Backend("load thread panicked".into()))??;
            done += r.done;
            errors += r.errors;
            client_cpu += r.cpu;
            lat.extend(r.lat_ns);
            self.queues.push(r.queue);
        }
        lat.sort_unstable();
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                .map_or(0.0, |&ns| ns as f64 / 1000.0)
        };
        let iops = done as f64 / duration.as_secs_f64();
        let result = JobResult {
            target,
            iodepth,
            queues: nqueues,
            iops,
            p50_us: pct(0.50),
            p99_us: pct(0.99),
            errors,
            client_cpu_us_per_io: per_io_us(client_cpu, iops, duration),
            server_cpu_us_per_io: None,
        };
        Ok((result, self))
    }
}

fn blkio_err(context: &str) -> impl FnOnce(blkio::Error) -> Error {
    let context = context.to_string();
    move |e: blkio::Error| Error::Blkio {
        context,
        message: e.message().to_string(),
    }
}

struct SendQueue(Blkioq);
// SAFETY: a Blkioq is used by exactly one thread at a time (moved into its load thread);
// the memory region it references outlives the threads (joined before `b` drops).
unsafe impl Send for SendQueue {}

/// Microseconds of `cpu` per request, at `iops` over `duration`.
fn per_io_us(cpu: Duration, iops: f64, duration: Duration) -> f64 {
    let requests = iops * duration.as_secs_f64();
    if requests > 0.0 {
        cpu.as_secs_f64() * 1e6 / requests
    } else {
        0.0
    }
}

struct QueueResult {
    done: u64,
    errors: u64,
    /// CPU time the queue's thread used.
    cpu: Duration,
    lat_ns: Vec<u32>,
    /// The queue, handed back for more.
    queue: SendQueue,
}

fn drive_queue(
    q: SendQueue,
    base: usize,
    iodepth: usize,
    sectors: u64,
    deadline: Instant,
    seed: u64,
) -> Result<QueueResult> {
    let SendQueue(mut q) = q;
    let cpu_start = thread_cpu();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (seed + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % sectors
    };
    let mut started = vec![Instant::now(); iodepth];
    let submit = |q: &mut Blkioq, slot: usize, off: u64| {
        q.read(
            off * BS as u64,
            (base + slot * BS) as *mut u8,
            BS,
            slot,
            ReqFlags::empty(),
        );
    };
    for (slot, s) in started.iter_mut().enumerate() {
        *s = Instant::now();
        submit(&mut q, slot, next());
    }
    let mut comps: Vec<MaybeUninit<Completion>> =
        (0..iodepth).map(|_| MaybeUninit::uninit()).collect();
    let (mut done, mut errors) = (0u64, 0u64);
    let mut lat_ns = Vec::with_capacity(1 << 20);
    let mut outstanding = iodepth;
    while outstanding > 0 {
        let n = q
            .do_io(&mut comps, 1, Some(&mut Duration::from_secs(5)), None)
            .map_err(|e| Error::Blkio {
                context: "do_io".into(),
                message: e.message().to_string(),
            })?;
        if n == 0 {
            return Err(Error::Backend("no completion within 5 s".into()));
        }
        let now = Instant::now();
        let more = now < deadline;
        for c in &comps[..n] {
            // SAFETY: do_io initialised the first `n` entries.
            let c = unsafe { c.assume_init_ref() };
            let slot = c.user_data;
            if c.ret != 0 {
                errors += 1;
            }
            done += 1;
            let ns = now.duration_since(started[slot]).as_nanos();
            lat_ns.push(ns.min(u128::from(u32::MAX)) as u32);
            if more {
                started[slot] = Instant::now();
                submit(&mut q, slot, next());
            } else {
                outstanding -= 1;
            }
        }
    }
    Ok(QueueResult {
        done,
        errors,
        cpu: thread_cpu().saturating_sub(cpu_start),
        lat_ns,
        queue: SendQueue(q),
    })
}
