// SPDX-License-Identifier: Apache-2.0
//! End-to-end tests: the real `vhost-user-blk` binary driven by libblkio's
//! `virtio-blk-vhost-user` driver (an independent vhost-user frontend; no VM).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::mem::MaybeUninit;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};

const MIB: u64 = 1 << 20;

struct Backend {
    child: Child,
    socket: PathBuf,
}

impl Backend {
    fn spawn(dir: &Path, image: &Path, extra: &[&str]) -> Backend {
        Self::spawn_with(dir, image, extra, Stdio::inherit())
    }

    fn spawn_with(dir: &Path, image: &Path, extra: &[&str], stderr: Stdio) -> Backend {
        let socket = dir.join(format!(
            "blk-{}.sock",
            extra.join("").replace(['-', '/', ':', '.'], "")
        ));
        let _ = std::fs::remove_file(&socket);
        let child = Command::new(env!("CARGO_BIN_EXE_vhost-user-blk"))
            .arg("--socket")
            .arg(&socket)
            .arg("--path")
            .arg(image)
            .args(extra)
            .stdin(Stdio::null())
            .stderr(stderr)
            .env("NO_COLOR", "1")
            .spawn()
            .expect("spawn vhost-user-blk");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "backend socket never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
        Backend { child, socket }
    }

    fn sigterm_and_wait(mut self) -> std::process::ExitStatus {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "backend did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A connected blkio instance with one mapped buffer region.
struct Client {
    queues: Vec<Blkioq>,
    region: MemoryRegion,
    _blkio: Blkio,
}

impl Client {
    fn connect(socket: &Path, num_queues: i32) -> Client {
        Self::connect_opts(socket, num_queues, false)
    }

    fn connect_opts(socket: &Path, num_queues: i32, read_only: bool) -> Client {
        let mut b = Blkio::new("virtio-blk-vhost-user").expect("blkio driver");
        b.set_str("path", socket.to_str().unwrap()).unwrap();
        b.set_bool("read-only", read_only).unwrap();
        b.connect().expect("blkio connect");
        b.set_i32("num-queues", num_queues).unwrap();
        let out = b.start().expect("blkio start");
        let region = b.alloc_mem_region(4 * MIB as usize).expect("alloc region");
        b.map_mem_region(&region).expect("map region");
        Client {
            queues: out.queues,
            region,
            _blkio: b,
        }
    }

    fn buf(&mut self, off: usize, len: usize) -> &mut [u8] {
        assert!(off + len <= self.region.len);
        // SAFETY: the region is a live mapping of `region.len` bytes owned by this client.
        unsafe { std::slice::from_raw_parts_mut((self.region.addr + off) as *mut u8, len) }
    }

    fn wait(&mut self, q: usize) -> i32 {
        let mut c = [MaybeUninit::<Completion>::uninit()];
        let n = self.queues[q]
            .do_io(&mut c, 1, Some(&mut Duration::from_secs(10)), None)
            .expect("do_io");
        assert_eq!(n, 1, "request timed out");
        // SAFETY: do_io initialised the first `n` completions.
        unsafe { c[0].assume_init_ref() }.ret
    }

    fn write(&mut self, q: usize, start: u64, off: usize, len: usize) -> i32 {
        let p = (self.region.addr + off) as *const u8;
        self.queues[q].write(start, p, len, 0, ReqFlags::empty());
        self.wait(q)
    }

    fn read(&mut self, q: usize, start: u64, off: usize, len: usize) -> i32 {
        let p = (self.region.addr + off) as *mut u8;
        self.queues[q].read(start, p, len, 0, ReqFlags::empty());
        self.wait(q)
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn image(dir: &Path, size: u64, fill: u8) -> PathBuf {
    let p = dir.join("disk.img");
    let mut f = File::create(&p).unwrap();
    let chunk = vec![fill; MIB as usize];
    for _ in 0..size / MIB {
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().unwrap();
    p
}

#[test]
fn read_write_flush_discard_write_zeroes() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 16 * MIB, 0xaa);
    let be = Backend::spawn(dir.path(), &img, &["--serial", "test-serial"]);
    let mut c = Client::connect(&be.socket, 1);
    assert_eq!(c._blkio.get_u64("capacity").unwrap(), 16 * MIB);

    // Write a pattern at several offsets (single-sector and multi-page), read it back.
    for (i, (start, len)) in [(0u64, 512usize), (4096, 65536), (15 * MIB, 1 << 20)]
        .into_iter()
        .enumerate()
    {
        let pat = pattern(i as u8, len);
        c.buf(0, len).copy_from_slice(&pat);
        assert_eq!(c.write(0, start, 0, len), 0, "write {start}");
        c.buf(2 * MIB as usize, len).fill(0);
        assert_eq!(c.read(0, start, 2 * MIB as usize, len), 0, "read {start}");
        assert_eq!(c.buf(2 * MIB as usize, len), &pat[..], "data at {start}");
        // And the backing file has it too.
        let mut f = File::open(&img).unwrap();
        let mut got = vec![0u8; len];
        f.seek(SeekFrom::Start(start)).unwrap();
        f.read_exact(&mut got).unwrap();
        assert_eq!(got, pat, "file data at {start}");
    }

    // Flush.
    c.queues[0].flush(0, ReqFlags::empty());
    assert_eq!(c.wait(0), 0, "flush");

    // Discard 1 MiB at 8 MiB: a hole appears in the backing file.
    let blocks_before = std::fs::metadata(&img).unwrap().blocks();
    c.queues[0].discard(8 * MIB, MIB, 0, ReqFlags::empty());
    assert_eq!(c.wait(0), 0, "discard");
    let f = File::open(&img).unwrap();
    // SAFETY: lseek on an open fd.
    let hole = unsafe { libc::lseek(f.as_raw_fd(), 8 * MIB as i64, libc::SEEK_HOLE) };
    assert_eq!(hole, 8 * MIB as i64, "SEEK_HOLE finds the discarded range");
    let blocks_after = std::fs::metadata(&img).unwrap().blocks();
    assert!(
        blocks_after + (MIB / 512) <= blocks_before,
        "st_blocks {blocks_before} -> {blocks_after}"
    );
    assert_eq!(c.read(0, 8 * MIB, 0, 4096), 0);
    assert!(
        c.buf(0, 4096).iter().all(|&b| b == 0),
        "discarded range reads zero"
    );

    // Write-zeroes over part of the earlier pattern.
    c.queues[0].write_zeroes(4096, 8192, 0, ReqFlags::empty());
    assert_eq!(c.wait(0), 0, "write zeroes");
    assert_eq!(c.read(0, 0, 0, 16384), 0);
    assert!(c.buf(4096, 8192).iter().all(|&b| b == 0), "zeroed");
    assert_eq!(c.buf(0, 512), &pattern(0, 512)[..], "sector 0 untouched");
    assert_eq!(
        c.buf(12288, 4096),
        &pattern(1, 65536)[8192..12288],
        "tail untouched"
    );

    // Out of range read is rejected, the queue keeps working.
    assert!(c.read(0, 16 * MIB, 0, 4096) < 0, "read past capacity fails");
    assert_eq!(c.read(0, 0, 0, 512), 0);

    assert!(be.sigterm_and_wait().success());
}

#[test]
fn two_queues_share_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 8 * MIB, 0);
    // O_DIRECT (blkio's buffers are page aligned) and a busy-poll window.
    let be = Backend::spawn(
        dir.path(),
        &img,
        &["--queues", "2", "--poll-us", "20", "--direct"],
    );
    let mut c = Client::connect(&be.socket, 2);
    assert_eq!(c.queues.len(), 2);
    for q in 0..2usize {
        let pat = pattern(q as u8 + 7, 8192);
        c.buf(0, 8192).copy_from_slice(&pat);
        assert_eq!(c.write(q, q as u64 * MIB, 0, 8192), 0);
        // Read back through the other queue.
        assert_eq!(c.read(1 - q, q as u64 * MIB, MIB as usize, 8192), 0);
        assert_eq!(c.buf(MIB as usize, 8192), &pat[..]);
    }
    // Queue threads are named blk-q0 / blk-q1.
    let task_dir = format!("/proc/{}/task", be.child.id());
    let mut names: Vec<String> = std::fs::read_dir(task_dir)
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect();
    names.sort();
    assert!(names.contains(&"blk-q0".to_string()), "{names:?}");
    assert!(names.contains(&"blk-q1".to_string()), "{names:?}");
    assert!(be.sigterm_and_wait().success());
}

#[test]
fn readonly_rejects_writes_and_serves_reads() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 4 * MIB, 0x5c);

    // The backend advertises VIRTIO_BLK_F_RO: libblkio refuses to start a read-write session.
    let be = Backend::spawn(dir.path(), &img, &["--readonly"]);
    let mut b = Blkio::new("virtio-blk-vhost-user").unwrap();
    b.set_str("path", be.socket.to_str().unwrap()).unwrap();
    b.connect().unwrap();
    let err = b
        .start()
        .err()
        .expect("start must fail on a read-only device");
    assert_eq!(err.errno().raw_os_error(), libc::EROFS, "{err:?}");
    drop(b);
    drop(be);

    // In a read-only session, writes and discards fail and reads are served. (libblkio fails
    // the writes itself once it knows the device is read-only; the backend's own IOERR answer
    // to writes on a read-only disk is covered by the unit tests.)
    let be = Backend::spawn(dir.path(), &img, &["--readonly"]);
    let mut c = Client::connect_opts(&be.socket, 1, true);
    c.buf(0, 4096).fill(1);
    assert!(
        c.write(0, 0, 0, 4096) < 0,
        "write must fail on a read-only disk"
    );
    c.queues[0].discard(0, 4096, 0, ReqFlags::empty());
    assert!(c.wait(0) < 0, "discard must fail on a read-only disk");
    assert_eq!(c.read(0, 0, 0, 4096), 0);
    assert!(c.buf(0, 4096).iter().all(|&b| b == 0x5c));
    let mut f = OpenOptions::new().read(true).open(&img).unwrap();
    let mut b = [0u8; 1];
    f.read_exact(&mut b).unwrap();
    assert_eq!(b[0], 0x5c, "backing file unchanged");
    assert!(be.sigterm_and_wait().success());
}

#[test]
fn sigterm_exits_zero_after_completing_taken_requests() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 8 * MIB, 0);
    let mut be = Backend::spawn_with(dir.path(), &img, &[], Stdio::piped());
    let mut stderr = be.child.stderr.take().unwrap();
    let mut c = Client::connect(&be.socket, 1);
    assert_eq!(c.read(0, 0, 0, 4096), 0);
    // Submit a batch without reaping it, then SIGTERM. Whatever the backend took must be
    // completed and visible in the used ring when it exits 0; what it did not take yet stays
    // untouched ("stop taking new requests").
    for i in 0..32u64 {
        let p = (c.region.addr + (i as usize) * 4096) as *mut u8;
        c.queues[0].write(i * 4096, p, 4096, i as usize, ReqFlags::empty());
    }
    let mut done: Vec<MaybeUninit<Completion>> = (0..32).map(|_| MaybeUninit::uninit()).collect();
    // Submit without waiting; a fast backend may already have answered some of the batch, and
    // libblkio hands those back from this same call.
    let reaped_at_submit = reap_ok(&mut c, &mut done);
    let st = be.sigterm_and_wait();
    assert_eq!(st.code(), Some(0), "exit status {st:?}");
    let mut log = String::new();
    stderr.read_to_string(&mut log).unwrap();
    let answered: u64 = log
        .lines()
        .rev()
        .find_map(|l| l.split("ok: ").nth(1))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no counters in backend log:\n{log}"));
    let reaped_after_exit = reap_ok(&mut c, &mut done);
    eprintln!(
        "backend answered {answered}, client reaped {reaped_at_submit} at submit and \
         {reaped_after_exit} after exit"
    );
    assert_eq!(
        (reaped_at_submit + reaped_after_exit) as u64,
        answered - 1,
        "every answered request is in the used ring"
    );
}

/// One non-blocking `do_io` on queue 0: submits what is queued and returns how many
/// completions it reaped, asserting that each succeeded.
fn reap_ok(c: &mut Client, done: &mut [MaybeUninit<Completion>]) -> usize {
    let n = c.queues[0].do_io(done, 0, None, None).unwrap_or(0);
    for d in &done[..n] {
        // SAFETY: do_io initialised the first `n` completions.
        assert_eq!(unsafe { d.assume_init_ref() }.ret, 0);
    }
    n
}

#[test]
fn with_once_exits_when_the_frontend_disconnects() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 4 * MIB, 0);
    let mut be = Backend::spawn(dir.path(), &img, &["--once"]);
    {
        let mut c = Client::connect(&be.socket, 1);
        assert_eq!(c.read(0, 0, 0, 4096), 0);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = be.child.try_wait().unwrap() {
            assert!(st.success(), "{st:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "backend kept running after disconnect"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!be.socket.exists(), "socket left behind");
}

#[test]
fn serves_successive_frontends_and_refuses_a_second_one_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 4 * MIB, 0);
    let mut be = Backend::spawn_with(dir.path(), &img, &[], Stdio::piped());
    let mut stderr = be.child.stderr.take().unwrap();
    let data = pattern(7, 8192);
    {
        let mut first = Client::connect(&be.socket, 1);
        first.buf(0, 8192).copy_from_slice(&data);
        assert_eq!(first.write(0, 4096, 0, 8192), 0);
        // A second frontend while the first is served: refused at once, not left waiting.
        let started = Instant::now();
        let mut b = Blkio::new("virtio-blk-vhost-user").unwrap();
        b.set_str("path", be.socket.to_str().unwrap()).unwrap();
        assert!(b.connect().is_err(), "a second frontend was accepted");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refusal took {:?}",
            started.elapsed()
        );
        // The first one is still served.
        assert_eq!(first.read(0, 4096, 8192, 8192), 0);
        assert!(first.buf(8192, 8192) == &data[..], "read back other data");
    }
    // The first frontend is gone: the next ones are served by the same process, and find a
    // fresh device (libblkio negotiates from scratch) over the same data.
    for round in 0..3 {
        let mut next = Client::connect(&be.socket, 1);
        assert_eq!(next.read(0, 4096, 0, 8192), 0, "round {round}");
        assert!(next.buf(0, 8192) == &data[..], "round {round}: other data");
    }
    assert!(be.child.try_wait().unwrap().is_none(), "backend exited");
    assert!(be.sigterm_and_wait().success());
    let mut log = String::new();
    stderr.read_to_string(&mut log).unwrap();
    let refusal = log
        .lines()
        .find(|l| l.contains("refusing a second frontend"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
    assert!(
        refusal.contains("peer=\"pid ") && refusal.contains("serving=\"pid "),
        "the refusal should name both peers: {refusal}"
    );
    assert_eq!(
        log.matches("frontend disconnected; device reset").count(),
        4,
        "{log}"
    );
}

/// Waits up to `limit` for the backend to exit on its own.
fn exit_within(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "backend still running");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn every_thread_runs_under_its_own_seccomp_filter() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 4 * MIB, 0);
    let be = Backend::spawn(dir.path(), &img, &["--queues", "2"]);
    let mut c = Client::connect(&be.socket, 2);
    c.buf(0, 4096).copy_from_slice(&pattern(3, 4096));
    assert_eq!(c.write(0, 0, 0, 4096), 0);
    assert_eq!(c.read(1, 0, 8192, 4096), 0);
    assert_eq!(c.buf(8192, 4096), &pattern(3, 4096)[..]);

    let threads = lab::threads(be.child.id()).unwrap();
    for t in &threads {
        assert_eq!(t.seccomp, 2, "{t:?} runs without a seccomp filter");
        // The process-wide filter and the thread's own (the per-connection thread inherits
        // the main thread's).
        assert!(t.filters >= 2, "{t:?} runs only the process-wide filter");
    }
    let mut names: Vec<&str> = threads
        .iter()
        .map(|t| t.name.as_str())
        // io_uring's workers never run user code; they take their creator's filters anyway.
        .filter(|n| !n.starts_with("iou-"))
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "blk-q0",
            "blk-q1",
            "blk-signal",
            "vhost-user-blk",
            "vu-accept",
            "vu-conn"
        ]
    );
    assert!(be.sigterm_and_wait().success());
}

#[test]
fn a_queue_thread_calling_outside_its_filter_kills_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 4 * MIB, 0);
    let mut be = Backend::spawn(
        dir.path(),
        &img,
        &["--seccomp", "on", "--seccomp-violation", "queue"],
    );
    // The queue thread's first event (the ring starting, at the latest the first request):
    // it opens an inet socket, which its filter forbids. The backend may die while libblkio
    // is still setting up, so the client's errors are expected.
    let mut b = Blkio::new("virtio-blk-vhost-user").unwrap();
    b.set_str("path", be.socket.to_str().unwrap()).unwrap();
    if b.connect().is_ok() {
        if let Ok(mut started) = b.start() {
            let mut buf = vec![0u8; 4096];
            started.queues[0].read(0, buf.as_mut_ptr(), 4096, 0, ReqFlags::empty());
            let mut done = [MaybeUninit::<Completion>::uninit()];
            let _ = started.queues[0].do_io(&mut done, 0, None, None);
        }
    }
    let status = exit_within(&mut be.child, Duration::from_secs(10));
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{status}");
}

#[test]
fn an_unknown_seccomp_mode_is_a_one_line_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-user-blk"))
        .args([
            "--socket",
            "/nonexistent/blk.sock",
            "--path",
            "/nonexistent",
        ])
        .args(["--seccomp", "bogus"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("--seccomp bogus: expected on, log or off"),
        "{err}"
    );
}

#[test]
fn metrics_count_every_request_of_a_client_run_while_being_scraped() {
    use backends::metrics::scrape::scrape;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const BATCH: usize = 16;
    const ROUNDS: usize = 25;
    const LEN: usize = 4096;
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 16 * MIB, 0);
    let metrics = dir.path().join("metrics.sock");
    let addr: minihttp::ListenAddr = format!("unix:{}", metrics.display()).parse().unwrap();
    let be = Backend::spawn(
        dir.path(),
        &img,
        &["--metrics", &format!("unix:{}", metrics.display())],
    );
    let t = Duration::from_secs(5);
    let before = scrape(&addr, t).unwrap();
    assert_eq!(before.sum("iovmm_requests_total", &[]), 0.0);

    // A scraper hammers the endpoint for the whole run.
    let done = AtomicBool::new(false);
    let scrapes = AtomicUsize::new(0);
    let mut c = Client::connect(&be.socket, 1);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                scrape(&addr, t).unwrap();
                scrapes.fetch_add(1, Ordering::Relaxed);
            }
        });
        // Writes in batches of 16, then the same sectors read back and verified.
        for write in [true, false] {
            for round in 0..ROUNDS {
                for i in 0..BATCH {
                    let n = round * BATCH + i;
                    let (start, off) = ((n * LEN) as u64, n * LEN);
                    if write {
                        c.buf(off, LEN).copy_from_slice(&pattern(n as u8, LEN));
                        let p = (c.region.addr + off) as *const u8;
                        c.queues[0].write(start, p, LEN, 0, ReqFlags::empty());
                    } else {
                        let p = (c.region.addr + 2 * MIB as usize + off) as *mut u8;
                        c.queues[0].read(start, p, LEN, 0, ReqFlags::empty());
                    }
                }
                let mut done_io: Vec<_> = (0..BATCH)
                    .map(|_| MaybeUninit::<Completion>::uninit())
                    .collect();
                let mut wait = Duration::from_secs(10);
                let n = c.queues[0]
                    .do_io(&mut done_io, BATCH, Some(&mut wait), None)
                    .unwrap();
                assert_eq!(n, BATCH, "requests timed out");
                for d in &done_io {
                    // SAFETY: do_io initialised all BATCH completions.
                    assert_eq!(unsafe { d.assume_init_ref() }.ret, 0);
                }
            }
        }
        done.store(true, Ordering::Relaxed);
    });
    for n in 0..ROUNDS * BATCH {
        let got = c.buf(2 * MIB as usize + n * LEN, LEN).to_vec();
        assert_eq!(got, pattern(n as u8, LEN), "request {n}");
    }
    let scraped = scrapes.load(Ordering::Relaxed);
    assert!(scraped >= 5, "only {scraped} scrapes during the run");

    let requests = (2 * ROUNDS * BATCH) as f64;
    let bytes = (ROUNDS * BATCH * LEN) as f64;
    let p = scrape(&addr, t).unwrap();
    let q = [("queue", "0")];
    assert_eq!(p.sum("iovmm_requests_total", &q), requests);
    assert_eq!(p.sum("iovmm_request_latency_seconds_count", &q), requests);
    let buckets = p.buckets("iovmm_request_latency_seconds", &q);
    assert_eq!(buckets.last().map(|b| b.1), Some(requests));
    assert_eq!(p.sum("iovmm_bytes_total", &[("dir", "write")]), bytes);
    assert_eq!(p.sum("iovmm_bytes_total", &[("dir", "read")]), bytes);
    assert_eq!(p.sum("iovmm_errors_total", &[]), 0.0);
    assert_eq!(p.sum("iovmm_inflight", &q), 0.0);
    let kicks = p.sum("iovmm_kicks_total", &q);
    let submissions = p.sum("iovmm_uring_submissions_total", &q);
    assert!(kicks >= 1.0 && kicks <= requests, "kicks {kicks}");
    assert!(
        submissions >= 1.0 && submissions <= requests,
        "{submissions}"
    );
    assert!(p.sum("iovmm_notifications_total", &q) >= 1.0);
    assert!(p.sum("process_cpu_seconds_total", &[]) > 0.0);
    drop(c);
    assert!(be.sigterm_and_wait().success());
}

#[test]
fn a_busy_metrics_port_is_a_one_line_error_and_exit_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), MIB, 0);
    for bin in [
        env!("CARGO_BIN_EXE_vhost-user-blk"),
        env!("CARGO_BIN_EXE_vhost-user-net"),
    ] {
        let device = if bin.ends_with("net") {
            ["--tap".to_string(), "nonexistent0".to_string()]
        } else {
            ["--path".to_string(), img.display().to_string()]
        };
        let out = Command::new(bin)
            .args(["--socket", &dir.path().join("x.sock").display().to_string()])
            .args(device)
            .args(["--metrics", &format!("127.0.0.1:{port}")])
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bin}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{bin}: {err}");
        assert!(lines[0].contains(&format!("127.0.0.1:{port}")), "{err}");
        assert!(lines[0].contains("in use"), "{err}");
    }
}

/// CPU time (user + system) process `pid` has used so far, from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name start at field 3 (state); utime and
    // stime are fields 14 and 15, in clock ticks.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// The `requests` counters of the backend's final "queue counters" log lines, summed.
fn logged_requests(log: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains("queue counters"))
        .filter_map(|l| l.split("requests: ").nth(1))
        .filter_map(|rest| rest.split(',').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn an_idle_backend_with_default_polling_uses_almost_no_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 16 * MIB, 0x11);
    let mut be = Backend::spawn_with(dir.path(), &img, &[], Stdio::piped());
    let mut stderr = be.child.stderr.take().unwrap();
    // Read the log as it comes: a full pipe would stall the backend.
    let log = std::thread::spawn(move || {
        let mut log = String::new();
        let _ = stderr.read_to_string(&mut log);
        log
    });
    let mut c = Client::connect(&be.socket, 1);
    // Load: back-to-back reads, each submitted when the previous one completed; the
    // adaptive window grows.
    for i in 0..4000u64 {
        assert_eq!(c.read(0, (i % 4096) * 4096, 0, 4096), 0);
    }
    // Then nothing, with the frontend still connected: the window shrinks and the queue
    // thread sleeps. The benchmark records the figure over 10 s (`vmm-perf backend blk`);
    // the bound here is generous so a loaded machine cannot fail it.
    let pid = be.child.id();
    std::thread::sleep(Duration::from_millis(200));
    let (start, used_before) = (Instant::now(), cpu_time(pid));
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_time(pid) - used_before;
    let share = used.as_secs_f64() / start.elapsed().as_secs_f64();
    eprintln!("idle backend: {used:?} of CPU in {:?}", start.elapsed());
    assert!(
        share <= 0.05,
        "an idle backend used {:.1} % of a CPU",
        share * 100.0
    );
    // Still served after the idle period.
    c.buf(0, 4096).fill(0);
    assert_eq!(c.read(0, 4096, 0, 4096), 0);
    assert!(c.buf(0, 4096).iter().all(|&b| b == 0x11));
    assert!(be.sigterm_and_wait().success());
    assert_eq!(logged_requests(&log.join().unwrap()), 4001);
}

/// The CPUs each thread of process `pid` named `name*` may run on, by thread name.
fn thread_affinities(pid: u32, prefix: &str) -> Vec<(String, Vec<usize>)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap();
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let comm = comm.trim().to_string();
        if comm.starts_with(prefix) {
            let tid: i32 = task.file_name().to_str().unwrap().parse().unwrap();
            found.push((comm, backends::placement::thread_cpus(tid).unwrap()));
        }
    }
    found.sort();
    found
}

#[test]
fn queue_threads_run_on_the_cpus_given_to_them() {
    let cpus = backends::placement::available_cpus().unwrap();
    let (a, b) = (cpus[0], *cpus.last().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 8 * MIB, 0x33);
    let list = format!("0@{b},1@[{a}]");
    let be = Backend::spawn(
        dir.path(),
        &img,
        &["--queues", "2", "--queue-affinity", &list],
    );
    let mut c = Client::connect(&be.socket, 2);
    // Each queue thread takes its CPUs with its first event.
    for q in 0..2 {
        assert_eq!(c.read(q, 0, 0, 4096), 0);
        assert!(c.buf(0, 4096).iter().all(|&x| x == 0x33));
    }
    assert_eq!(
        thread_affinities(be.child.id(), "blk-q"),
        [
            ("blk-q0".to_string(), vec![b]),
            ("blk-q1".to_string(), vec![a])
        ]
    );
    assert!(be.sigterm_and_wait().success());
}

#[test]
fn a_malformed_or_impossible_queue_affinity_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), MIB, 0);
    for (list, needle) in [
        ("0@4000", "host CPU 4000 is not available"),
        ("0@0,0@0", "queue 0 is given twice"),
        ("2@0", "queue 2 does not exist (there are 2)"),
        ("0@[x]", "expected INDEX@CPU"),
        ("0", "expected INDEX@CPU"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_vhost-user-blk"))
            .args(["--socket", dir.path().join("x.sock").to_str().unwrap()])
            .args(["--path", img.to_str().unwrap()])
            .args(["--queues", "2", "--queue-affinity", list])
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{list}: {stderr}");
        let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{list}: {stderr}");
        assert!(lines[0].contains("--queue-affinity"), "{list}: {stderr}");
        assert!(lines[0].contains(needle), "{list}: {stderr}");
        assert!(!dir.path().join("x.sock").exists(), "socket bound anyway");
    }
}
