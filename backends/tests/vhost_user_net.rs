// SPDX-License-Identifier: Apache-2.0
//! The real `vhost-user-net` binary natively, in link mode (two sockets wired back to back, no
//! TAP), with a frontend from the `vhost` crate that connects and negotiates: its threads and
//! their seccomp filters, and its command line.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;

/// A running `vhost-user-net --link A,B`, killed when dropped.
struct LinkBackend(Child);

impl LinkBackend {
    fn spawn(a: &Path, b: &Path, extra: &[&str]) -> LinkBackend {
        let child = Command::new(env!("CARGO_BIN_EXE_vhost-user-net"))
            .arg("--link")
            .arg(format!("{},{}", a.display(), b.display()))
            .args(extra)
            .stdin(Stdio::null())
            .env("NO_COLOR", "1")
            .spawn()
            .expect("spawn vhost-user-net");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(a.exists() && b.exists()) {
            assert!(Instant::now() < deadline, "backend sockets never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
        LinkBackend(child)
    }
}

impl Drop for LinkBackend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until process `pid` has threads named `names` (all of them), for at most 10 s.
fn wait_for_threads(pid: u32, names: &[&str]) -> Vec<lab::ThreadStatus> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let threads = lab::threads(pid).unwrap();
        if names.iter().all(|n| threads.iter().any(|t| t.name == *n)) {
            return threads;
        }
        assert!(
            Instant::now() < deadline,
            "threads {names:?} not all in {threads:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The threads of a link backend started with `extra`, once a frontend negotiated on A; every
/// one must be under its own filter.
fn link_threads_under_filters(extra: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let metrics = format!("unix:{}", dir.path().join("metrics.sock").display());
    let mut args = vec!["--metrics", &metrics];
    args.extend(extra);
    let be = LinkBackend::spawn(&a, &b, &args);
    // A frontend on A: the relay and the per-connection threads start.
    let mut front = Frontend::connect(&a, 3).unwrap();
    front.set_owner().unwrap();
    let features = front.get_features().unwrap();
    assert_ne!(features & (1 << 32), 0, "VIRTIO_F_VERSION_1 offered");
    front.get_protocol_features().unwrap();

    let threads = wait_for_threads(
        be.0.id(),
        &[
            "vu-relay",
            "vu-relay-reply",
            "vu-conn",
            "vu-accept",
            "metrics",
        ],
    );
    for t in &threads {
        assert_eq!(t.seccomp, 2, "{t:?} runs without a seccomp filter");
        assert!(t.filters >= 2, "{t:?} runs only the process-wide filter");
    }
    let mut names: Vec<String> = threads.into_iter().map(|t| t.name).collect();
    names.sort_unstable();
    names
}

#[test]
fn every_thread_runs_under_its_own_seccomp_filter() {
    let common = [
        "metrics",
        "net-dev0",
        "net-dev1",
        "net-signal",
        "vhost-user-net",
        "vu-accept",
        "vu-accept",
        "vu-conn",
        "vu-relay",
        "vu-relay-reply",
    ];
    for (extra, queues) in [
        (&[][..], ["sw-a-q0", "sw-b-q0"]),
        (&["--link-via", "socketpair"][..], ["net-q0", "net-q0"]),
    ] {
        let mut expected: Vec<String> = common
            .iter()
            .chain(&queues)
            .map(|s| s.to_string())
            .collect();
        expected.sort_unstable();
        assert_eq!(link_threads_under_filters(extra), expected, "{extra:?}");
    }
}

#[test]
fn a_switch_queue_thread_calling_outside_its_filter_kills_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    // The switch's queue threads run once at start (each learns its rings): the first one
    // opens an inet socket, which its filter forbids.
    let mut be = LinkBackend::spawn(&a, &b, &["--seccomp-violation", "switch"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = be.0.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "backend still running");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{status}");
}

#[test]
fn an_unknown_seccomp_mode_is_a_one_line_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-user-net"))
        .args(["--link", "/nonexistent/a.sock,/nonexistent/b.sock"])
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
