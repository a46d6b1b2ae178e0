// SPDX-License-Identifier: Apache-2.0
//! The checked-in example report (`docs/example-report/`) is exactly what `vmm-perf report`
//! renders from its `results.json`: report.md, every chart and results.csv, byte for byte, and
//! nothing else sits beside them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use perf::compare::results::{ResultSet, SCHEMA_VERSION};

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/example-report")
}

fn files(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// The first line where `a` and `b` differ, for the failure message.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    let (a, b) = (String::from_utf8_lossy(a), String::from_utf8_lossy(b));
    a.lines()
        .zip(b.lines())
        .enumerate()
        .find(|(_, (x, y))| x != y)
        .map_or("(one is a prefix of the other)".into(), |(i, (x, y))| {
            format!("line {}:\n  checked in: {x}\n  rendered:   {y}", i + 1)
        })
}

#[test]
fn the_example_report_renders_byte_for_byte_from_its_results_json() {
    let example = example_dir();
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_vmm-perf"))
        .arg("report")
        .arg(example.join("results.json"))
        .arg("--out")
        .arg(out.path())
        .status()
        .expect("run vmm-perf report");
    assert!(status.success(), "vmm-perf report: {status}");

    let rendered = files(out.path());
    let mut checked_in = files(&example);
    assert!(checked_in.remove("results.json"));
    assert_eq!(
        checked_in, rendered,
        "docs/example-report holds exactly results.json and what `vmm-perf report` renders from it"
    );
    for f in &rendered {
        let (want, got) = (
            std::fs::read(example.join(f)).unwrap(),
            std::fs::read(out.path().join(f)).unwrap(),
        );
        assert!(
            want == got,
            "{f} differs from a fresh render; regenerate it with \
             `vmm-perf report docs/example-report/results.json`\n{}",
            first_difference(&want, &got)
        );
    }
}

#[test]
fn the_example_is_a_full_clean_run_of_the_current_schema() {
    let text = std::fs::read_to_string(example_dir().join("results.json")).unwrap();
    let set: ResultSet = serde_json::from_str(&text).unwrap();
    let p = &set.provenance;
    assert_eq!(p.schema_version, SCHEMA_VERSION);
    let commit = p.commit.as_deref().unwrap_or_default();
    assert!(
        commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit()),
        "{p:?}"
    );
    assert_eq!(p.dirty, Some(false), "made from committed code");
    assert!(
        p.command_line.get(1).is_some_and(|c| c == "compare"),
        "{p:?}"
    );
    assert!(set.wall_clock_s.is_some() && set.started_utc.is_some());
    // Every tier of the default matrix ran; every cell has a result.
    let tiers: BTreeSet<&str> = set.cells.iter().map(|c| c.tier.as_str()).collect();
    assert_eq!(tiers.len(), perf::compare::Tier::ALL.len(), "{tiers:?}");
    assert!(set.missing_tiers.is_empty(), "{:?}", set.missing_tiers);
    assert!(
        set.cells.iter().all(|c| c.runs_ok > 0),
        "{:?}",
        set.cells
            .iter()
            .filter(|c| c.runs_ok == 0)
            .map(|c| (&c.tier, &c.workload))
            .collect::<Vec<_>>()
    );
}
