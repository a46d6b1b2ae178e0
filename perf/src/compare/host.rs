// SPDX-License-Identifier: Apache-2.0
//! The host description stored in `results.json`: CPU, kernel, `vmm check --json`.

use std::path::Path;
use std::process::Command;

use crate::boot::Mode;

/// `vmm check --json` (with its exit code), the CPU model and count, the kernel and the mode.
pub fn host_info(vmm: &Path, mode: Mode) -> serde_json::Value {
    let check = Command::new(vmm).args(["check", "--json"]).output();
    let (check_json, check_exit) = match check {
        Ok(o) => (
            serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap_or_else(|e| {
                serde_json::json!({ "error": format!("not JSON: {e}"),
                    "stdout": String::from_utf8_lossy(&o.stdout) })
            }),
            o.status.code(),
        ),
        Err(e) => (serde_json::json!({ "error": e.to_string() }), None),
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    serde_json::json!({
        "mode": mode,
        "cpu_model": cpu,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": kernel,
        "vmm": vmm.display().to_string(),
        "vmm_check_exit": check_exit,
        "vmm_check": check_json,
    })
}

/// One sentence on the host for the report.
pub fn host_sentence(h: &serde_json::Value) -> String {
    if !h.is_object() {
        return "Host: not recorded.".into();
    }
    let g = |k: &str| {
        h.get(k).map_or(String::new(), |v| {
            v.as_str().map_or(v.to_string(), str::to_string)
        })
    };
    format!(
        "Host: {} ({} CPUs), kernel {}; `vmm check` exit {}.",
        g("cpu_model"),
        g("cpus"),
        g("kernel"),
        g("vmm_check_exit"),
    )
}
