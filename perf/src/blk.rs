//! `vmm-perf backend blk`: 4 KiB random reads through libblkio against
//! our vhost-user-blk, qemu-storage-daemon's vhost-user-blk export, and libblkio's
//! `io_uring` driver on the same file (raw baseline), all in the same run.

use std::fs::File;
use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blkio::{Blkio, Blkioq, Completion, ReqFlags};
use serde::Serialize;

use crate::{io_err, stop_child, wait_for_socket, Error, Result};

const BS: usize = 4096;

/// What serves the I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Our `vhost-user-blk` binary.
    Ours,
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
    /// qemu-storage-daemon binary.
    pub qsd_bin: PathBuf,
    /// vhost-user clients poll for completions (libblkio poll queues).
    pub client_poll: bool,
    /// qemu-storage-daemon serves its export from an IOThread (adaptive polling) instead of
    /// its main loop.
    pub qsd_iothread: bool,
    /// Directory for sockets.
    pub run_dir: PathBuf,
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
        let mut server = match target {
            Target::Ours => Some(self.spawn_ours(&socket, queues)?),
            Target::Qsd => Some(self.spawn_qsd(&socket, queues)?),
            Target::Raw => None,
        };
        if server.is_some() {
            wait_for_socket(&socket, server.as_mut())?;
        }
        let res = self.drive(target, &socket, iodepth, queues);
        if let Some(mut s) = server {
            stop_child(&mut s, Duration::ZERO);
        }
        let _ = std::fs::remove_file(&socket);
        res
    }

    fn spawn_ours(&self, socket: &Path, queues: usize) -> Result<Child> {
        Command::new(&self.ours_bin)
            .arg("--socket")
            .arg(socket)
            .arg("--path")
            .arg(&self.file)
            .arg("--queues")
            .arg(queues.to_string())
            .args(&self.ours_args)
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
            .stdin(Stdio::null())
            .spawn()
            .map_err(io_err("spawn qemu-storage-daemon"))
    }

    /// One job: a libblkio session on the target, `queues` load threads with `iodepth` reads
    /// in flight each, for the run's duration.
    fn drive(
        &self,
        target: Target,
        socket: &Path,
        iodepth: usize,
        queues: usize,
    ) -> Result<JobResult> {
        let mut b = self.session(target, socket)?;
        let poll = self.client_poll && target != Target::Raw;
        let client_queues = start_queues(&mut b, queues, poll)?;
        let region = b
            .alloc_mem_region(iodepth * queues * BS)
            .map_err(blkio_err("alloc region"))?;
        b.map_mem_region(&region).map_err(blkio_err("map region"))?;
        // The threads are joined before `b` (and the region) drop.
        let mut load = self.load(client_queues, region.addr, iodepth)?;
        load.lat_ns.sort_unstable();
        Ok(JobResult {
            target,
            iodepth,
            queues,
            iops: load.done as f64 / self.duration.as_secs_f64(),
            p50_us: percentile_us(&load.lat_ns, 0.50),
            p99_us: percentile_us(&load.lat_ns, 0.99),
            errors: load.errors,
        })
    }

    /// A connected, read-only libblkio session: `io_uring` on the file, or vhost-user on the
    /// backend's socket.
    fn session(&self, target: Target, socket: &Path) -> Result<Blkio> {
        let (driver, path) = match target {
            Target::Raw => ("io_uring", self.file.as_path()),
            _ => ("virtio-blk-vhost-user", socket),
        };
        let mut b = Blkio::new(driver).map_err(blkio_err(match target {
            Target::Raw => "new io_uring",
            _ => "new vhost-user",
        }))?;
        b.set_str("path", path.to_str().unwrap_or_default())
            .map_err(blkio_err("path"))?;
        // Reads only: a read-only session also matches qemu-storage-daemon's default export.
        b.set_bool("read-only", true)
            .map_err(blkio_err("read-only"))?;
        b.connect().map_err(blkio_err("connect"))?;
        Ok(b)
    }

    /// One load thread per queue, reads into its own part of the region at `base`; their
    /// counts and latencies merged.
    fn load(&self, queues: Vec<Blkioq>, base: usize, iodepth: usize) -> Result<QueueResult> {
        let sectors = self.size / BS as u64;
        let deadline = Instant::now() + self.duration;
        let threads: Vec<_> = queues
            .into_iter()
            .enumerate()
            .map(|(i, q)| {
                let base = base + i * iodepth * BS;
                let q = SendQueue(q);
                std::thread::Builder::new()
                    .name(format!("load-q{i}"))
                    .spawn(move || drive_queue(q, base, iodepth, sectors, deadline, i as u64))
                    .map_err(io_err("spawn load thread"))
            })
            .collect::<Result<_>>()?;
        let mut all = QueueResult {
            done: 0,
            errors: 0,
            lat_ns: Vec::new(),
        };
        for t in threads {
            let r = t
                .join()
                .map_err(|_| Error::Backend("load thread panicked".into()))??;
            all.done += r.done;
            all.errors += r.errors;
            all.lat_ns.extend(r.lat_ns);
        }
        Ok(all)
    }
}

fn blkio_err(context: &str) -> impl FnOnce(blkio::Error) -> Error {
    let context = context.to_string();
    move |e| Error::Blkio {
        context,
        message: e.message().to_string(),
    }
}

/// Starts the session with `queues` interrupt-driven queues, or polled ones with `poll`, and
/// returns them.
fn start_queues(b: &mut Blkio, queues: usize, poll: bool) -> Result<Vec<Blkioq>> {
    let (interrupt_queues, poll_queues) = if poll { (0, queues) } else { (queues, 0) };
    b.set_i32("num-queues", interrupt_queues as i32)
        .map_err(blkio_err("num-queues"))?;
    b.set_i32("num-poll-queues", poll_queues as i32)
        .map_err(blkio_err("num-poll-queues"))?;
    let out = b.start().map_err(blkio_err("start"))?;
    Ok(if poll { out.poll_queues } else { out.queues })
}

/// The `p` quantile of sorted nanosecond latencies, in µs (0 if there are none).
fn percentile_us(sorted_ns: &[u32], p: f64) -> f64 {
    let i = ((sorted_ns.len() as f64 * p) as usize).min(sorted_ns.len().saturating_sub(1));
    sorted_ns.get(i).map_or(0.0, |&ns| f64::from(ns) / 1000.0)
}

struct SendQueue(Blkioq);
// SAFETY: a Blkioq is used by exactly one thread at a time (moved into its load thread);
// the memory region it references outlives the threads (joined before `b` drops).
unsafe impl Send for SendQueue {}

struct QueueResult {
    done: u64,
    errors: u64,
    lat_ns: Vec<u32>,
}

fn drive_queue(
    q: SendQueue,
    base: usize,
    iodepth: usize,
    sectors: u64,
    deadline: Instant,
    seed: u64,
) -> Result<QueueResult> {
    let mut q = q.0;
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
    let mut res = QueueResult {
        done: 0,
        errors: 0,
        lat_ns: Vec::with_capacity(1 << 20),
    };
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
                res.errors += 1;
            }
            res.done += 1;
            let ns = now.duration_since(started[slot]).as_nanos();
            res.lat_ns.push(ns.min(u128::from(u32::MAX)) as u32);
            if more {
                started[slot] = Instant::now();
                submit(&mut q, slot, next());
            } else {
                outstanding -= 1;
            }
        }
    }
    Ok(res)
}
