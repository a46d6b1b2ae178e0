// SPDX-License-Identifier: Apache-2.0
//! Bad operator input on any host (no guest boots): `--api-socket` on a path
//! that is not a socket, `--metrics` on a busy port, `vmm remote` without a
//! VMM. Each ends with one line and exit status 1, never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

fn vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .output()
        .expect("spawn vmm")
}

/// Exactly one line on stderr, starting with `prefix` and containing `needle`; status 1.
fn assert_one_line(out: &Output, prefix: &str, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line:\n{stderr}");
    assert!(lines[0].starts_with(prefix), "{stderr}");
    assert!(
        lines[0].contains(needle),
        "stderr lacks {needle:?}:\n{stderr}"
    );
}

#[test]
fn api_socket_on_a_path_that_is_not_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, b"precious").unwrap();
    let path = file.to_str().unwrap();
    let out = vmm(&["run", "--kernel", "/nonexistent", "--api-socket", path]);
    assert_one_line(
        &out,
        "vmm: error: --api-socket: ",
        "exists and is not a socket",
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"precious",
        "the file was touched"
    );
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let out = vmm(&[
        "run",
        "--kernel",
        "/nonexistent",
        "--api-socket",
        sub.to_str().unwrap(),
    ]);
    assert_one_line(
        &out,
        "vmm: error: --api-socket: ",
        "exists and is not a socket",
    );
}

#[test]
fn api_socket_is_removed_when_the_vmm_fails_later() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    // A stale socket is replaced; the VM then fails on its kernel.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let out = vmm(&[
        "run",
        "--kernel",
        "/nonexistent/vmlinuz",
        "--api-socket",
        sock.to_str().unwrap(),
    ]);
    assert_one_line(&out, "vmm: error: ", "cannot read kernel");
    assert!(!sock.exists(), "the API socket outlived the VMM");
}

#[test]
fn metrics_on_a_busy_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = vmm(&["run", "--kernel", "/nonexistent", "--metrics", &addr]);
    assert_one_line(&out, "vmm: error: --metrics: ", "in use");
    let out = vmm(&["run", "--kernel", "/nonexistent", "--metrics", "9100"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap rejects a malformed address"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("127.0.0.1:PORT or unix:PATH"), "{stderr}");
}

#[test]
fn remote_without_a_vmm() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let out = vmm(&["remote", "--api-socket", sock.to_str().unwrap(), "info"]);
    assert_one_line(&out, "vmm remote: ", "none.sock");
}
