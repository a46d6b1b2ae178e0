// SPDX-License-Identifier: Apache-2.0
//! `vmm-perf boot`'s race in the lab host, once per contender CI can run: our VMM on private
//! RAM, with a vhost-user disk on shared RAM, and QEMU's microvm machine. Times are not
//! judged here (benchmarks do that); that every contender boots, exits 0 and reports how its
//! RAM was mapped under which huge-page settings is.

use std::path::PathBuf;

use perf::boot::{report, BootBench, BootRun, Contender, Mode};

/// A debug binary of the workspace (`cargo build --workspace`).
fn built(name: &str) -> PathBuf {
    let p = lab::repo_root().join("target/debug").join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace` first",
        p.display()
    );
    p
}

#[test]
fn every_contender_ci_can_run_boots_and_says_how_its_ram_is_mapped() {
    if lab::test_images().is_none() {
        return;
    }
    let contenders = vec![
        Contender::Ours,
        Contender::OursVhostUser,
        Contender::QemuMicrovm,
    ];
    let run = BootRun {
        bench: BootBench {
            vmm: built("vmm"),
            repeat: 1,
            cpus: 2,
            memory_mib: 512,
            mode: Mode::Lab,
        },
        contenders: contenders.clone(),
        backend: built("vhost-user-blk"),
        ch: None,
    };
    let (samples, raw) = run.run().unwrap_or_else(|e| panic!("boot race: {e}"));
    let (summaries, table) = report(&samples, &contenders, Contender::QemuMicrovm);
    eprintln!("{table}");
    for s in &summaries {
        assert_eq!((s.boots, s.failed), (1, 0), "{}:\n{raw}", s.vmm);
        // The lab host advises shmem THP (lab::HOST_TUNING) and has THP for anonymous memory.
        assert_eq!(s.thp, "anon=always shmem=advise", "{}:\n{raw}", s.vmm);
    }
    let sample = |name: &str| samples.iter().find(|s| s.vmm == name).unwrap();
    assert_eq!(sample("ours").memory, "private");
    assert_eq!(sample("ours-vhost-user").memory, "shared");
    assert_eq!(sample("qemu-microvm").memory, "private");
    // Our guest RAM was found among the mappings, private or memfd.
    for name in ["ours", "ours-vhost-user"] {
        let s = sample(name);
        assert!(
            s.rss_guest_ram_kib > 0 && s.rss_guest_ram_kib <= s.rss_total_kib,
            "{name}: {s:?}"
        );
    }
}
