// SPDX-License-Identifier: Apache-2.0
//! The net benchmark's load generator really moves frames through our vhost-user-net backend:
//! a short, untimed run per frame size whose counts must agree with the TAP's own counters.
//! Needs root and /dev/net/tun (skips otherwise) and `target/debug/vhost-user-net`
//! (`cargo build -p backends`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use perf::net::driver::Completion;
use perf::net::frame::FrameKind;
use perf::net::netns::{self, Netns, SinkTap};
use perf::net::{Direction, NetBench, NetRun, Path};

fn bench(run_dir: &std::path::Path) -> NetBench {
    let backend_bin = lab::repo_root().join("target/debug/vhost-user-net");
    assert!(
        backend_bin.is_file(),
        "{} is missing: run `cargo build -p backends` first",
        backend_bin.display()
    );
    NetBench {
        backend_bin,
        backend_args: Vec::new(),
        duration: Duration::from_millis(300),
        queue_size: 64,
        batch: 8,
        event_idx: true,
        completion: Completion::Interrupts,
        rx: true,
        run_dir: run_dir.to_path_buf(),
    }
}

fn check_tx(r: &NetRun, kind: FrameKind) {
    let len = kind.frame_len() as u64;
    assert!(r.counts.frames > 0, "{r:?}");
    assert_eq!(r.counts.bytes, r.counts.frames * len, "{r:?}");
    // Every frame the backend returned as used arrived at the TAP's kernel side, whole.
    assert_eq!(r.tap.rx_packets, r.counts.frames, "{r:?}");
    assert_eq!(r.tap.rx_bytes, r.counts.bytes, "{r:?}");
    assert_eq!(r.tap.rx_dropped, 0, "{r:?}");
}

fn check_rx(r: &NetRun, kind: FrameKind) {
    let len = kind.frame_len() as u64;
    assert!(r.counts.frames > 0, "{r:?}");
    // Frames come back whole (64 KiB TSO frames as one GSO frame over several buffers).
    assert_eq!(r.counts.bytes, r.counts.frames * len, "{r:?}");
    // Read from the TAP no fewer than were delivered; sent no fewer than were read.
    assert!(r.tap.tx_packets >= r.counts.frames, "{r:?}");
    assert!(r.injected.unwrap_or(0) >= r.tap.tx_packets, "{r:?}");
}

/// A sink TAP named `tap` in a private network namespace of this test thread (so parallel
/// tests cannot interfere) and the benchmark settings; `None` (after saying why) where the
/// host cannot have them.
struct Setup {
    tap: SinkTap,
    _ns: Netns,
    bench: NetBench,
    _dir: tempfile::TempDir,
}

fn setup(tap: &str) -> Option<Setup> {
    if let Some(why) = netns::preflight() {
        eprintln!("SKIP: {why}");
        return None;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let bench = bench(dir.path());
    let ns = Netns::enter().expect("network namespace");
    Some(Setup {
        tap: SinkTap::create(tap).expect("TAP"),
        _ns: ns,
        bench,
        _dir: dir,
    })
}

#[test]
fn generator_frames_reach_the_tap_and_come_back() {
    let Some(Setup { tap, bench, .. }) = &setup("vptest0") else {
        return;
    };
    for kind in FrameKind::ALL {
        let runs = bench
            .run_ours(tap, kind, 0, Path::Ours)
            .expect("our backend");
        assert_eq!(runs.len(), 2);
        for r in &runs {
            assert_eq!(r.path, Path::Ours);
            match r.direction {
                Direction::Tx => check_tx(r, kind),
                Direction::Rx => check_rx(r, kind),
            }
            // The generator sleeps until notified: a backend that never signalled would leave
            // it to its 100 ms timeouts.
            assert!(r.counts.notifications > 0, "{r:?}");
            // CPU per frame: the backend process's own share (it moved every frame) and the
            // generator's on top of it.
            let (total, device) = (
                r.cpu_ns_per_frame.unwrap(),
                r.device_cpu_ns_per_frame.unwrap(),
            );
            assert!(device > 0.0 && total > device, "{r:?}");
        }
    }
    // With --metrics, scraped every second: the same frames, labelled as such.
    let runs = bench
        .run_ours(tap, FrameKind::Small, 0, Path::OursMetrics)
        .expect("ours with metrics");
    assert!(runs.iter().all(|r| r.path == Path::OursMetrics), "{runs:?}");
    check_tx(&runs[0], FrameKind::Small);
    check_rx(&runs[1], FrameKind::Small);
    let runs = bench.run_raw(tap, FrameKind::Tso, 0).expect("raw");
    check_tx(&runs[0], FrameKind::Tso);
    check_rx(&runs[1], FrameKind::Tso);
    // Raw has no generator: its one thread is the frame mover.
    for r in &runs {
        assert!(r.cpu_ns_per_frame.unwrap() > 0.0, "{r:?}");
        assert_eq!(r.cpu_ns_per_frame, r.device_cpu_ns_per_frame, "{r:?}");
    }
}

#[test]
fn a_polling_generator_gets_every_frame_back_without_notifications() {
    let Some(mut s) = setup("vptest1") else {
        return;
    };
    s.bench.completion = Completion::Poll;
    let Setup { tap, bench, .. } = &mut s;
    // Without EVENT_IDX too: then the avail ring's NO_INTERRUPT flag does the asking.
    for event_idx in [true, false] {
        bench.event_idx = event_idx;
        for kind in [FrameKind::Small, FrameKind::Tso] {
            let runs = bench
                .run_ours(tap, kind, 0, Path::Ours)
                .expect("our backend");
            assert_eq!(runs.len(), 2);
            check_tx(&runs[0], kind);
            check_rx(&runs[1], kind);
            for r in &runs {
                assert_eq!(r.counts.notifications, 0, "event_idx {event_idx}: {r:?}");
            }
        }
    }
}
