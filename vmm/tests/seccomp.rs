// SPDX-License-Identifier: Apache-2.0
//! `vmm run`'s threads under their seccomp filters, natively: a VMM with a vhost-user disk
//! (served by this project's `vhost-user-blk`), an in-VMM disk and, as root, an e1000 on a
//! TAP, whose guest need not get far (on a PVM host it runs in KVM's instruction emulator).
//! The VMM also serves its API and metrics, which are used (pause, resume, counters, a
//! scrape, a reboot that builds the VM again in-process) under the filters. The in-VMM queue
//! threads start only when a guest driver starts a device: the lab test `seccomp_lab` covers
//! them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn debug_binary(name: &str) -> PathBuf {
    let p = lab::repo_root().join("target/debug").join(name);
    assert!(p.is_file(), "{} is missing: run `cargo build`", p.display());
    p
}

/// `vhost-user-blk` serving `image` on `socket`, once the socket exists.
fn backend(image: &Path, socket: &Path) -> Process {
    let child = Command::new(debug_binary("vhost-user-blk"))
        .arg("--socket")
        .arg(socket)
        .arg("--path")
        .arg(image)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "backend socket never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    Process(child)
}

/// Whether this process may create TAP interfaces.
fn may_create_taps() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn every_vmm_thread_runs_under_its_own_filter() {
    let images = lab::repo_root().join(".cache/images");
    if !images.join("vmlinuz").is_file() {
        eprintln!("SKIP: no cached kernel image (scripts/build-images.sh)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let socket = dir.path().join("blk.sock");
    let _backend = backend(&image, &socket);
    let tap = format!("sctest{}", std::process::id() % 100_000);
    let api = dir.path().join("api.sock");
    let metrics = dir.path().join("metrics.sock");
    let mut args = vec![
        "run".to_string(),
        "--kernel".into(),
        images.join("vmlinuz").display().to_string(),
        "--initramfs".into(),
        images.join("guest-base.cpio").display().to_string(),
        "--serial".into(),
        "off".into(),
        "--cpus".into(),
        "2".into(),
        "--disk".into(),
        format!("vhost_user=on,socket={}", socket.display()),
        "--disk".into(),
        format!("path={}", image.display()),
        "--api-socket".into(),
        api.display().to_string(),
        "--metrics".into(),
        format!("unix:{}", metrics.display()),
    ];
    let mut expected = vec![
        "vcpu0",
        "vcpu1",
        "blk0-mon",
        "vhost-deadline",
        "vmm-api",
        "metrics",
    ];
    if may_create_taps() {
        args.extend(["--net".into(), format!("tap={tap},model=e1000")]);
        expected.push("e1000-rx");
    } else {
        eprintln!("not root: no e1000 (its receive thread is checked in the lab)");
    }
    let mut vmm = Process(
        Command::new(env!("CARGO_BIN_EXE_vmm"))
            .args(&args)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = vmm.0.id();
    let threads = wait_for_threads(&mut vmm, &expected);
    let Some(threads) = threads else { return };
    check_filters(&threads);

    // The API and the metrics endpoint, used under their threads' filters and the event
    // loop's: a reboot builds the VM again on the (confined) main thread.
    for cmd in ["ping", "info", "counters", "pause", "resume", "reboot"] {
        remote(&api, cmd);
    }
    let addr: minihttp::ListenAddr = format!("unix:{}", metrics.display()).parse().unwrap();
    let scraped = backends::metrics::scrape::scrape(&addr, Duration::from_secs(5)).unwrap();
    assert!(scraped.sum("process_cpu_seconds_total", &[]) > 0.0);
    // The event loop of the VM built again answers `info`.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info = remote(&api, "info");
        if info.contains("(boot 2)") {
            break;
        }
        assert!(Instant::now() < deadline, "no second boot: {info}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let Some(threads) = wait_for_threads(&mut vmm, &expected) else {
        panic!("vmm stopped after the reboot")
    };
    check_filters(&threads);

    // SIGTERM: the event loop stops the vCPUs and the devices under the main thread's filter.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = vmm.0.wait().unwrap();
    let mut err = String::new();
    vmm.0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{err}");
    assert!(err.contains("stopped by signal 15"), "{err}");
}

/// `vmm remote --api-socket API CMD`'s output; it must succeed.
fn remote(api: &Path, cmd: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(["remote", "--api-socket"])
        .arg(api)
        .arg(cmd)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "vmm remote {cmd}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Every thread under a seccomp filter, and under its own on top of the process-wide one.
fn check_filters(threads: &[lab::ThreadStatus]) {
    for t in threads {
        assert_eq!(t.seccomp, 2, "{t:?} runs without a seccomp filter");
        assert!(t.filters >= 2, "{t:?} runs only the process-wide filter");
    }
    assert!(threads.iter().any(|t| t.name == "vmm"), "{threads:?}");
}

/// The VMM's threads once every one of `expected` runs (`None`: KVM cannot run it here).
fn wait_for_threads(vmm: &mut Process, expected: &[&str]) -> Option<Vec<lab::ThreadStatus>> {
    let pid = vmm.0.id();
    let deadline = Instant::now() + Duration::from_secs(20);
    Some(loop {
        if let Some(status) = vmm.0.try_wait().unwrap() {
            let mut err = String::new();
            vmm.0
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            if err.contains("/dev/kvm") || err.contains("KVM") {
                eprintln!("SKIP: KVM unusable here: {err}");
                return None;
            }
            panic!("vmm exited early ({status}): {err}");
        }
        let threads = lab::threads(pid).unwrap();
        if expected
            .iter()
            .all(|n| threads.iter().any(|t| t.name == *n))
        {
            break threads;
        }
        assert!(
            Instant::now() < deadline,
            "threads {expected:?} not all in {threads:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    })
}
