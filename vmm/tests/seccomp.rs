//! `vmm run`'s threads under their seccomp filters, natively: a VMM with a vhost-user disk
//! (served by this project's `vhost-user-blk`), an in-VMM disk and, as root, an e1000 on a
//! TAP, whose guest need not get far (on a PVM host it runs in KVM's instruction emulator).
//! The in-VMM queue threads start only when a guest driver starts a device: the lab test
//! `seccomp_lab` covers them.

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
    ];
    let mut expected = vec!["vcpu0", "vcpu1", "blk0-mon", "vhost-deadline"];
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
    let deadline = Instant::now() + Duration::from_secs(20);
    let threads = loop {
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
                return;
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
    };
    for t in &threads {
        assert_eq!(t.seccomp, 2, "{t:?} runs without a seccomp filter");
        assert!(t.filters >= 2, "{t:?} runs only the process-wide filter");
    }
    assert!(threads.iter().any(|t| t.name == "vmm"), "{threads:?}");

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
