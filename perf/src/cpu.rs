// SPDX-License-Identifier: Apache-2.0
//! CPU time the benchmarks charge to a thread or a process.

use std::time::Duration;

/// CPU time (user + system) the calling thread has used.
pub fn thread_cpu() -> Duration {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_usec).unwrap_or(0) * 1000,
        )
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time (user + system, every thread including io_uring's submission threads) of
/// process `pid`, from `/proc/PID/stat`; `None` once it is gone or the file is malformed.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&stat, clock_ticks_per_second())
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1)
}

/// utime + stime of a `/proc/PID/stat` line: fields 14 and 15, counted from the fields
/// after the parenthesised command name (which may hold spaces and parentheses).
fn parse_stat_cpu(stat: &str, hz: u64) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000) / hz,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_is_utime_plus_stime_past_an_awkward_name() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(parse_stat_cpu(stat, 100), Some(Duration::from_secs(3)));
        assert_eq!(parse_stat_cpu("42 (x) S 1 2", 100), None);
        assert_eq!(parse_stat_cpu("no parenthesis", 100), None);
    }

    #[test]
    fn this_thread_and_process_accumulate_cpu() {
        let (t0, p0) = (thread_cpu(), process_cpu(std::process::id()).unwrap());
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(60) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(thread_cpu() > t0, "a spinning thread uses CPU");
        assert!(process_cpu(std::process::id()).unwrap() >= p0);
    }
}
