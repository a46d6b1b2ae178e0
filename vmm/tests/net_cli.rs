// SPDX-License-Identifier: Apache-2.0
//! `vmm run --net vhost_user=on,...,queues=N`: a bad count is a usage error, and a backend
//! that cannot serve N queue pairs with a control queue is refused with a message saying
//! why, before any guest runs. The backend is the project's `vhost-user-net` in link mode
//! (no TAP needed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn vmm(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .output()
        .expect("spawn vmm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn queue_pairs_out_of_range_are_usage_errors() {
    for queues in ["0", "9", "x"] {
        let net = format!("vhost_user=on,socket=/s,queues={queues}");
        let (rc, err) = vmm(&["run", "--kernel", "/nonexistent", "--net", &net]);
        assert_eq!(rc, 2, "{net}: {err}");
        assert!(err.contains("a number from 1 to 8"), "{net}: {err}");
    }
}

/// A link-mode backend with `pairs` queue pairs, killed on drop.
struct Backend(Child);

impl Backend {
    fn start(dir: &Path, pairs: u16) -> (Backend, PathBuf) {
        let bin = lab::repo_root().join("target/debug/vhost-user-net");
        assert!(
            bin.is_file(),
            "{} is missing: run `cargo build -p backends` first",
            bin.display()
        );
        let (a, b) = (dir.join("a.sock"), dir.join("b.sock"));
        let child = Command::new(bin)
            .arg("--link")
            .arg(format!("{},{}", a.display(), b.display()))
            .args(["--queues", &pairs.to_string()])
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn vhost-user-net");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !a.exists() {
            assert!(Instant::now() < deadline, "backend socket never appeared");
            std::thread::sleep(Duration::from_millis(20));
        }
        (Backend(child), a)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the VMM against `sock` with `queues` pairs; `None` when KVM is unusable here.
fn run_against(sock: &Path, queues: u16) -> Option<String> {
    let kernel = lab::repo_root().join(".cache/images/vmlinuz");
    if !kernel.is_file() {
        eprintln!("SKIP: no cached kernel image");
        return None;
    }
    let (rc, err) = vmm(&[
        "run",
        "--kernel",
        kernel.to_str().unwrap_or_default(),
        "--serial",
        "off",
        "--net",
        &format!("vhost_user=on,socket={},queues={queues}", sock.display()),
    ]);
    if err.contains("/dev/kvm") || err.contains("KVM") {
        eprintln!("SKIP: KVM unusable here: {err}");
        return None;
    }
    assert_eq!(rc, 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    Some(err)
}

#[test]
fn single_pair_backend_is_refused_for_two_pairs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_backend, sock) = Backend::start(dir.path(), 1);
    if let Some(err) = run_against(&sock, 2) {
        assert!(
            err.contains("needs a backend offering VIRTIO_NET_F_MQ and VIRTIO_NET_F_CTRL_VQ"),
            "{err}"
        );
    }
}

#[test]
fn backend_with_too_few_queues_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_backend, sock) = Backend::start(dir.path(), 2);
    if let Some(err) = run_against(&sock, 4) {
        assert!(
            err.contains(
                "queues=4 needs 9 virtqueues (with the control queue) but the backend serves 5"
            ),
            "{err}"
        );
    }
}
