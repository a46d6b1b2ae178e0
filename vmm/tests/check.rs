// SPDX-License-Identifier: Apache-2.0
//! Runs the real `vmm check` binary and checks its report against what this host's
//! /proc/cpuinfo and /dev/kvm say.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{self, OpenOptions};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .output()
        .expect("run vmm");
    (
        out.status.code(),
        String::from_utf8(out.stdout).expect("utf-8 stdout"),
    )
}

fn has_virt_flag() -> bool {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").expect("read /proc/cpuinfo");
    cpuinfo
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim() == "flags")
        .any(|(_, v)| v.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

fn kvm_opens() -> bool {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn status(report: &Value, name: &str) -> String {
    report["checks"]
        .as_array()
        .expect("checks array")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}"))["status"]
        .as_str()
        .expect("status string")
        .to_string()
}

#[test]
fn json_report_matches_this_host() {
    let (code, stdout) = run(&["check", "--json"]);
    let report: Value = serde_json::from_str(&stdout).expect("valid JSON report");
    let direct = report["direct_boot"].as_bool().expect("direct_boot bool");
    let kind = report["kvm"]["kind"].as_str().expect("kvm.kind");
    let verdict = report["verdict"].as_str().expect("verdict");

    // The exit code is the contract scripts rely on.
    assert_eq!(code, Some(if direct { 0 } else { 1 }), "{verdict}");
    if !direct {
        assert!(verdict.contains("lab mode"), "{verdict}");
    }

    match (has_virt_flag(), kvm_opens()) {
        (false, true) => {
            // The build machines: /dev/kvm works but is not hardware-backed.
            assert_eq!(kind, "software", "{report}");
            if Path::new("/sys/module/kvm_pvm").exists() {
                assert_eq!(report["kvm"]["backend"], "pvm", "{report}");
            }
            assert!(!direct);
            assert_eq!(code, Some(1));
            assert_eq!(status(&report, "cpu-virt"), "FAIL");
            assert_eq!(status(&report, "kvm-device"), "PASS");
            assert_eq!(status(&report, "kvm-backend"), "FAIL");
        }
        (true, true) => {
            // A hardware KVM host (e.g. the lab host): stock Linux boots directly.
            assert_eq!(kind, "hardware", "{report}");
            assert!(direct, "{report}");
            assert_eq!(code, Some(0));
            assert_eq!(status(&report, "kvm-backend"), "PASS");
        }
        (_, false) => {
            assert_eq!(kind, "unavailable", "{report}");
            assert_eq!(status(&report, "kvm-device"), "FAIL");
            assert_eq!(code, Some(1));
        }
    }
    // Probes that work on every machine class this project runs on.
    assert_eq!(status(&report, "memfd-shared"), "PASS");
}

#[test]
fn text_report_and_help() {
    let (code, stdout) = run(&["check"]);
    assert!(matches!(code, Some(0 | 1)));
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines
        .iter()
        .any(|l| l.starts_with("[PASS] ") || l.starts_with("[FAIL] ")));
    assert!(lines.last().is_some_and(|l| l.starts_with("verdict: ")));
    // Every fix line is indented and follows a non-PASS line.
    for w in lines.windows(2) {
        if w[1].trim_start().starts_with("fix: ") {
            assert!(w[1].starts_with(' '));
            assert!(!w[0].starts_with("[PASS]"), "{}", w[0]);
        }
    }
    let (code, help) = run(&["check", "--help"]);
    assert_eq!(code, Some(0));
    assert!(
        help.contains("Exit status") && help.contains("lab mode"),
        "{help}"
    );
}
