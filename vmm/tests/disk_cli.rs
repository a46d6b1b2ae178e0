// SPDX-License-Identifier: Apache-2.0
//! `vmm run --disk`: parse errors, an unreachable backend and a backend that never answers
//! fail with a message naming the problem, before any guest runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

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
fn malformed_disks_are_usage_errors() {
    for (disk, msg) in [
        ("vhost_user=on", "missing option 'socket'"),
        ("socket=/s", "vhost_user=on"),
        ("vhost_user=on,socket=/s,queue_size=100", "power of two"),
        ("vhost_user=on,socket=/s,queues=0", "'queues'"),
        (
            "vhost_user=on,socket=/s,cache=none",
            "unknown option 'cache=none'",
        ),
    ] {
        let (rc, err) = vmm(&["run", "--kernel", "/nonexistent", "--disk", disk]);
        assert_eq!(rc, 2, "{disk}: {err}");
        assert!(err.contains(msg), "{disk}: {err}");
    }
}

/// Runs the VMM with a vhost-user disk at `sock`; expects exit 1 and returns stderr, or
/// `None` where the test cannot run (no cached kernel, KVM unusable).
fn run_against(sock: &std::path::Path) -> Option<String> {
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
        "--disk",
        &format!("vhost_user=on,socket={}", sock.display()),
    ]);
    if err.contains("/dev/kvm") || err.contains("KVM") {
        eprintln!("SKIP: KVM unusable here: {err}");
        return None;
    }
    assert_eq!(rc, 1, "{err}");
    Some(err)
}

#[test]
fn unreachable_backend_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("nobody.sock");
    let Some(err) = run_against(&sock) else {
        return;
    };
    assert!(
        err.contains(&format!("vhost-user {}: connect", sock.display())),
        "{err}"
    );
}

#[test]
fn backend_that_never_answers_is_given_up_after_the_reply_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("silent.sock");
    // Listens but never accepts: the kernel completes the VMM's connect from the backlog and
    // nobody ever reads its SET_OWNER / GET_FEATURES.
    let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
    let Some(err) = run_against(&sock) else {
        return;
    };
    assert!(
        err.contains(&format!(
            "vhost-user {}: handshake: no answer within",
            sock.display()
        )),
        "{err}"
    );
}

#[test]
fn a_backend_serving_another_frontend_is_reported_in_one_line() {
    let backend = lab::repo_root().join("target/debug/vhost-user-blk");
    assert!(
        backend.is_file(),
        "{} is missing: run `cargo build -p backends` first",
        backend.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("busy.sock");
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(1 << 20))
        .expect("disk image");
    let mut child = Command::new(&backend)
        .args(["--socket", sock.to_str().unwrap()])
        .args(["--path", disk.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("spawn vhost-user-blk");
    let t0 = std::time::Instant::now();
    while !sock.exists() && t0.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Another frontend holds the backend (its connection is all it takes).
    let _first = std::os::unix::net::UnixStream::connect(&sock).expect("first frontend");
    std::thread::sleep(std::time::Duration::from_millis(100));
    let err = run_against(&sock);
    let _ = child.kill();
    let _ = child.wait();
    let Some(err) = err else {
        return;
    };
    let lines: Vec<_> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains(
            "backend closed the connection during the handshake (already serving another frontend?)"
        ),
        "{err}"
    );
}
