// SPDX-License-Identifier: Apache-2.0
//! CPU placement: which host CPUs a queue thread (or a vCPU thread of the VMM) may run
//! on. A backend that polls earns its keep on the cores chosen for it; this is how they
//! are chosen.
//!
//! [`Affinity`] is an index → host CPUs map written as Cloud Hypervisor writes its
//! `affinity=` and `queue_affinity=` lists: `0@[2],1@[3]`, with CPU lists and ranges
//! (`0@[2,3],1@[4-7]`), optionally in brackets (`[0@[2],1@[3]]`); a single CPU needs no
//! brackets (`0@2,1@3`).

use std::fmt;
use std::io;

/// Errors in an affinity list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AffinityError {
    /// The text is not a list of `INDEX@CPUS` entries.
    #[error(
        "'{0}': expected INDEX@CPU or INDEX@[CPU,...] entries, e.g. 0@2,1@3 or [0@[2],1@[3-4]]"
    )]
    Syntax(String),
    /// An index appears twice.
    #[error("{what} {index} is given twice")]
    Duplicate {
        /// What the index numbers.
        what: &'static str,
        /// The index.
        index: u16,
    },
    /// An index past the configured count.
    #[error("{what} {index} does not exist (there are {count})")]
    NoSuchIndex {
        /// What the index numbers.
        what: &'static str,
        /// The index.
        index: u16,
        /// How many there are.
        count: usize,
    },
    /// A host CPU this process may not run on (offline, absent, or outside its cpuset).
    #[error("host CPU {cpu} is not available (this process may run on CPUs {available})")]
    CpuUnavailable {
        /// The CPU.
        cpu: usize,
        /// The CPUs that are, as a list (`0-3,6`).
        available: String,
    },
}

/// Host CPUs per index: a queue's or a vCPU's thread runs only there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Affinity {
    entries: Vec<(u16, Vec<usize>)>,
}

impl Affinity {
    /// Parse an affinity list (see the [module docs](self)); `what` names the indices in
    /// errors ("queue", "vCPU"). Each index may appear once.
    pub fn parse(s: &str, what: &'static str) -> Result<Self, AffinityError> {
        let syntax = || AffinityError::Syntax(s.to_string());
        let body = s.trim();
        let body = match body.strip_prefix('[') {
            Some(inner) => inner.strip_suffix(']').ok_or_else(syntax)?,
            None => body,
        };
        let mut entries: Vec<(u16, Vec<usize>)> = Vec::new();
        for item in split_top_level(body).ok_or_else(syntax)? {
            let (index, cpus) = item.split_once('@').ok_or_else(syntax)?;
            let index: u16 = index.trim().parse().map_err(|_| syntax())?;
            let cpus = cpus.trim();
            let cpus = match cpus.strip_prefix('[') {
                Some(inner) => inner.strip_suffix(']').ok_or_else(syntax)?,
                None => cpus,
            };
            let cpus = parse_cpu_list(cpus).ok_or_else(syntax)?;
            if entries.iter().any(|(i, _)| *i == index) {
                return Err(AffinityError::Duplicate { what, index });
            }
            entries.push((index, cpus));
        }
        if entries.is_empty() {
            return Err(syntax());
        }
        Ok(Self { entries })
    }

    /// Check that every index is below `count` and every CPU is one this process may run
    /// on; `what` names the indices in errors.
    pub fn check(&self, count: usize, what: &'static str) -> Result<(), AffinityError> {
        let available = available_cpus().unwrap_or_default();
        for (index, cpus) in &self.entries {
            if usize::from(*index) >= count {
                return Err(AffinityError::NoSuchIndex {
                    what,
                    index: *index,
                    count,
                });
            }
            if let Some(&cpu) = cpus.iter().find(|c| !available.contains(c)) {
                return Err(AffinityError::CpuUnavailable {
                    cpu,
                    available: format_cpu_list(&available),
                });
            }
        }
        Ok(())
    }

    /// The host CPUs of `index`, if the list names it.
    pub fn cpus(&self, index: usize) -> Option<&[usize]> {
        self.entries
            .iter()
            .find(|(i, _)| usize::from(*i) == index)
            .map(|(_, cpus)| cpus.as_slice())
    }

    /// Whether the list names no index.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Pin the calling thread to the CPUs of `index` (no change if the list does not name
    /// it); `name` goes into the log line.
    pub fn pin_current(&self, index: usize, name: &str) {
        let Some(cpus) = self.cpus(index) else {
            return;
        };
        match pin_current_thread(cpus) {
            Ok(()) => tracing::info!(thread = name, cpus = %format_cpu_list(cpus), "pinned"),
            Err(e) => tracing::error!(thread = name, "cannot pin to CPUs {cpus:?}: {e}"),
        }
    }
}

impl fmt::Display for Affinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self
            .entries
            .iter()
            .map(|(i, cpus)| format!("{i}@[{}]", format_cpu_list(cpus)))
            .collect();
        write!(f, "[{}]", items.join(","))
    }
}

impl std::str::FromStr for Affinity {
    type Err = AffinityError;

    /// [`Affinity::parse`] with indices called queues (the backends' `--queue-affinity`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s, "queue")
    }
}

/// Split `s` at the commas that are not inside brackets; `None` if brackets do not pair.
pub fn split_top_level(s: &str) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => {
                depth -= 1;
                if depth < 0 {
                    return None;
                }
            }
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return None;
    }
    parts.push(&s[start..]);
    Some(parts)
}

/// `2,3,5-7` → `[2, 3, 5, 6, 7]` (sorted, no duplicates); `None` if malformed or empty.
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                if a > b || b - a > 4096 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    (!cpus.is_empty()).then_some(cpus)
}

/// `[0, 1, 2, 5]` → `0-2,5`.
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    out.join(",")
}

/// The CPUs thread `tid` may run on (0: the calling thread).
pub fn thread_cpus(tid: i32) -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO initialises it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_getaffinity(tid, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let max = 8 * std::mem::size_of_val(&set);
    // SAFETY: CPU_ISSET reads a bit of an initialised set, below its size.
    Ok((0..max)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// The CPUs this process may run on.
pub fn available_cpus() -> io::Result<Vec<usize>> {
    thread_cpus(0)
}

/// Let the calling thread run only on `cpus`.
pub fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO initialises it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let max = 8 * std::mem::size_of_val(&set);
    for &cpu in cpus {
        if cpu >= max {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: `cpu` is below the set's size.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed; 0 names the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_in_every_spelling() {
        let a = Affinity::parse("0@2,1@3", "queue").unwrap();
        assert_eq!(
            (a.cpus(0), a.cpus(1), a.cpus(2)),
            (Some(&[2][..]), Some(&[3][..]), None)
        );
        let b = Affinity::parse("[0@[2],1@[3]]", "vCPU").unwrap();
        assert_eq!(a, b);
        let c = Affinity::parse("[0@[0,2],1@[1-3,5]]", "vCPU").unwrap();
        assert_eq!(c.cpus(1), Some(&[1, 2, 3, 5][..]));
        assert_eq!(c.to_string(), "[0@[0,2],1@[1-3,5]]");
        assert_eq!(format_cpu_list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
    }

    #[test]
    fn malformed_lists_are_refused_with_what_is_wrong() {
        for bad in [
            "", "0", "0@", "@1", "x@1", "0@x", "0@[1", "[0@1", "0@[3-1]", "0@[]", "0@1,,1@2",
            "-1@2", "0@-1",
        ] {
            assert!(
                matches!(Affinity::parse(bad, "queue"), Err(AffinityError::Syntax(_))),
                "{bad:?} accepted"
            );
        }
        assert_eq!(
            Affinity::parse("0@1,1@2,0@3", "vCPU"),
            Err(AffinityError::Duplicate {
                what: "vCPU",
                index: 0
            })
        );
    }

    #[test]
    fn indices_and_cpus_are_checked_against_the_host() {
        let available = available_cpus().unwrap();
        assert!(!available.is_empty());
        let first = available[0];
        let ok = Affinity::parse(&format!("0@{first},1@{first}"), "queue").unwrap();
        ok.check(2, "queue").unwrap();
        assert_eq!(
            ok.check(1, "queue"),
            Err(AffinityError::NoSuchIndex {
                what: "queue",
                index: 1,
                count: 1
            })
        );
        let absent = available.last().unwrap() + 1000;
        let err = Affinity::parse(&format!("0@{absent}"), "queue")
            .unwrap()
            .check(1, "queue")
            .unwrap_err();
        assert!(matches!(err, AffinityError::CpuUnavailable { cpu, .. } if cpu == absent));
        assert!(err.to_string().contains("not available"), "{err}");
    }

    #[test]
    fn a_pinned_thread_reports_its_cpus() {
        let available = available_cpus().unwrap();
        let last = *available.last().unwrap();
        let seen = std::thread::spawn(move || {
            pin_current_thread(&[last]).unwrap();
            thread_cpus(0).unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(seen, [last]);
        assert_eq!(
            available_cpus().unwrap(),
            available,
            "only that thread moved"
        );
    }
}
