// SPDX-License-Identifier: Apache-2.0
//! A process's threads as `/proc/PID/task/*/status` describes them: for tests that check
//! every thread of a VMM or backend runs under its seccomp filter.

use std::path::Path;

/// One thread's name and seccomp state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadStatus {
    /// Thread id.
    pub tid: u32,
    /// `Name:` (the thread's comm, at most 15 bytes).
    pub name: String,
    /// `Seccomp:`: 0 none, 1 strict, 2 filter.
    pub seccomp: u32,
    /// `Seccomp_filters:`: how many filters the thread runs (inherited and its own).
    pub filters: u32,
}

/// The threads of process `pid`, in thread id order. Threads that end while they are read
/// are left out.
pub fn threads(pid: u32) -> std::io::Result<Vec<ThreadStatus>> {
    let dir = Path::new("/proc").join(pid.to_string()).join("task");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        out.push(parse_status(tid, &status));
    }
    out.sort_by_key(|t| t.tid);
    Ok(out)
}

/// The fields of a `status` file that [`ThreadStatus`] keeps.
pub fn parse_status(tid: u32, status: &str) -> ThreadStatus {
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
            .unwrap_or_default()
    };
    ThreadStatus {
        tid,
        name: field("Name:").to_string(),
        seccomp: field("Seccomp:").parse().unwrap_or(0),
        filters: field("Seccomp_filters:").parse().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read() {
        let s = "Name:\tblk-q0\nUmask:\t0022\nState:\tS (sleeping)\nSeccomp:\t2\n\
                 Seccomp_filters:\t2\nSpeculation_Store_Bypass:\tthread vulnerable\n";
        assert_eq!(
            parse_status(7, s),
            ThreadStatus {
                tid: 7,
                name: "blk-q0".into(),
                seccomp: 2,
                filters: 2
            }
        );
        let own = threads(std::process::id()).unwrap();
        assert!(own.iter().any(|t| t.tid == std::process::id()));
    }
}
