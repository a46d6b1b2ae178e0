// SPDX-License-Identifier: Apache-2.0
//! Where a result file came from: the source commit (and whether the tree differed from it),
//! the exact command line and the version of the file's layout. Every JSON result `vmm-perf`
//! writes carries these fields at its top level; UTC clock helpers for file names and reports.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Layout version of the JSON files of `vmm-perf backend blk|net` and `vmm-perf boot`: 2 added
/// the provenance fields (files without them are version 1).
pub const BENCH_SCHEMA_VERSION: u32 = 2;

/// The fields every `vmm-perf` result file carries at its top level.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// Version of the file's layout; files written before it was recorded read as 1.
    #[serde(default = "unversioned")]
    pub schema_version: u32,
    /// `git rev-parse HEAD` of the source tree this binary was built in, when git could tell.
    #[serde(default)]
    pub commit: Option<String>,
    /// Whether tracked files of that tree differed from `commit` when the run started.
    #[serde(default)]
    pub dirty: Option<bool>,
    /// The command line, one argument per entry, as the process received it.
    #[serde(default)]
    pub command_line: Vec<String>,
}

fn unversioned() -> u32 {
    1
}

impl Provenance {
    /// Records this process's command line and the state of its source tree.
    pub fn capture(schema_version: u32) -> Provenance {
        let root = lab::repo_root();
        let git = |args: &[&str]| {
            Command::new("git")
                .arg("-C")
                .arg(&root)
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let commit = git(&["rev-parse", "HEAD"]).filter(|c| !c.is_empty());
        let dirty = commit
            .as_ref()
            .and_then(|_| git(&["status", "--porcelain", "--untracked-files=no"]))
            .map(|s| !s.is_empty());
        Provenance {
            schema_version,
            commit,
            dirty,
            command_line: std::env::args_os()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
        }
    }

    /// The command line as one shell-quoted string (plain words stay unquoted).
    pub fn command(&self) -> String {
        self.command_line
            .iter()
            .map(|a| shell_word(a))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `abc123…` with `(clean tree)` or `(uncommitted changes)`, or `unknown`.
    pub fn source(&self) -> String {
        match (&self.commit, self.dirty) {
            (Some(c), Some(false)) => format!("`{c}` (clean tree)"),
            (Some(c), Some(true)) => format!("`{c}` with uncommitted changes"),
            (Some(c), None) => format!("`{c}`"),
            (None, _) => "unknown (no git checkout)".into(),
        }
    }

    /// These fields as a JSON object, to merge into a result document.
    pub fn json_fields(&self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        }
    }
}

/// `doc` (a JSON object) with the provenance fields added at its top level.
pub fn stamped(p: &Provenance, doc: serde_json::Value) -> serde_json::Value {
    let mut out = p.json_fields();
    if let serde_json::Value::Object(fields) = doc {
        out.extend(fields);
    }
    serde_json::Value::Object(out)
}

fn shell_word(a: &str) -> String {
    let plain = !a.is_empty()
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=,:@+%".contains(&b));
    if plain {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

/// Seconds since the Unix epoch, now.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64
}

/// (year, month, day, hour, minute, second) in UTC of `secs` since the epoch.
fn civil(secs: i64) -> (i64, i64, i64, i64, i64, i64) {
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// UTC `YYYY-MM-DDTHH-MM-SSZ` of `secs` (file-name safe).
pub fn file_stamp(secs: i64) -> String {
    let (y, m, d, hh, mm, ss) = civil(secs);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}-{mm:02}-{ss:02}Z")
}

/// UTC `YYYY-MM-DD HH:MM:SS` of `secs`, for reports.
pub fn utc(secs: i64) -> String {
    let (y, m, d, hh, mm, ss) = civil(secs);
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02}")
}

/// Now as [`file_stamp`].
pub fn timestamp() -> String {
    file_stamp(now_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_is_utc_and_file_name_safe() {
        let t = timestamp();
        assert_eq!(t.len(), "2026-11-25T12-00-54Z".len(), "{t}");
        assert!(t.ends_with('Z') && !t.contains(':'), "{t}");
        let year: i32 = t[..4].parse().expect("year");
        assert!(year >= 2024, "{t}");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(file_stamp(1_795_607_362), "2026-11-25T11-49-22Z");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
    }

    #[test]
    fn capture_records_the_command_line_and_this_checkout() {
        let p = Provenance::capture(7);
        assert_eq!(p.schema_version, 7);
        assert!(!p.command_line.is_empty());
        // The tests run inside the repository's git checkout.
        let commit = p.commit.as_deref().unwrap_or_default();
        assert_eq!(commit.len(), 40, "{p:?}");
        assert!(commit.bytes().all(|b| b.is_ascii_hexdigit()), "{commit}");
        assert!(p.dirty.is_some());
    }

    #[test]
    fn command_quotes_only_what_needs_it() {
        let p = Provenance {
            command_line: vec![
                "target/release/vmm-perf".into(),
                "compare".into(),
                "--tiers=native,vmm".into(),
                "--iperf-args".into(),
                "-P 4".into(),
                "it's".into(),
            ],
            ..Provenance::default()
        };
        assert_eq!(
            p.command(),
            "target/release/vmm-perf compare --tiers=native,vmm --iperf-args '-P 4' 'it'\\''s'"
        );
    }

    #[test]
    fn unversioned_files_read_as_version_1_and_stamping_adds_the_fields() {
        let p: Provenance = serde_json::from_str("{}").expect("empty");
        assert_eq!(p.schema_version, 1);
        assert_eq!(p.commit, None);
        let doc = stamped(
            &Provenance::capture(2),
            serde_json::json!({ "benchmark": "x" }),
        );
        assert_eq!(doc["schema_version"], 2);
        assert!(doc["command_line"]
            .as_array()
            .is_some_and(|a| !a.is_empty()));
        assert_eq!(doc["benchmark"], "x");
    }
}
