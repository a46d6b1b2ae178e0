// SPDX-License-Identifier: Apache-2.0
//! `vmm-perf top` against a real backend's metrics endpoint: the table lists its queue and its
//! process; an endpoint nobody serves is reported, not fatal. Needs `target/debug/vhost-user-blk`
//! (`cargo build -p backends`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn top_lists_the_queues_and_processes_it_reaches() {
    let backend = lab::repo_root().join("target/debug/vhost-user-blk");
    assert!(
        backend.is_file(),
        "{} is missing: run `cargo build -p backends` first",
        backend.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let metrics = dir.path().join("m.sock");
    let mut child = Command::new(&backend)
        .arg("--socket")
        .arg(dir.path().join("vu.sock"))
        .arg("--path")
        .arg(&img)
        .arg("--queues")
        .arg("2")
        .arg("--metrics")
        .arg(format!("unix:{}", metrics.display()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !metrics.exists() {
        assert!(Instant::now() < deadline, "no metrics socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_vmm-perf"))
        .arg("top")
        .arg("--metrics")
        .arg(format!("unix:{},127.0.0.1:1", metrics.display()))
        .args(["--count", "2", "--interval", "0.2"])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let endpoint = format!("unix:{}", metrics.display());
    let socket = dir.path().join("vu.sock").display().to_string();
    // Two refreshes, each with the header, both queues (idle) and the process.
    assert_eq!(text.matches("ENDPOINT").count(), 2, "{text}");
    for q in ["0", "1"] {
        let row = format!("{endpoint}  {socket}  {q}");
        assert_eq!(text.matches(&row).count(), 2, "no row {row:?} in:\n{text}");
    }
    assert_eq!(text.matches("(process)").count(), 2, "{text}");
    assert!(
        text.contains("cpu "),
        "the second refresh has a CPU share:\n{text}"
    );
    assert_eq!(
        text.matches("unreachable: 127.0.0.1:1").count(),
        2,
        "{text}"
    );
}
