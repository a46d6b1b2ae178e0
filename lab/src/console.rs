// SPDX-License-Identifier: Apache-2.0
//! Helpers for tests that read what a lab run printed: image discovery with a printed skip
//! reason, `KEY=value` lines, kernel faults, iperf3 JSON reports and the guest network check
//! that produces them.

use crate::{qemu_binary, Images};

/// The lab images for a test, or `None` (with the reason printed) where the lab cannot exist
/// here because QEMU is not installed.
///
/// # Panics
///
/// If QEMU is installed but the images cannot be found or built: that is a test failure, not
/// a reason to skip.
pub fn test_images() -> Option<Images> {
    if qemu_binary().is_none() {
        eprintln!("SKIP: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)");
        return None;
    }
    Some(Images::ensure_default().unwrap_or_else(|e| panic!("lab images: {e}")))
}

/// The text after the first occurrence of `key` on the first console line that has it,
/// trimmed.
pub fn console_value<'a>(console: &'a str, key: &str) -> Option<&'a str> {
    console
        .lines()
        .find_map(|l| l.split_once(key).map(|(_, v)| v.trim()))
}

/// How the VMM mapped its guest's RAM (`private` or `shared`), from its `guest RAM mapped
/// mode=…` log line (info level, colours or not).
pub fn guest_ram_mode(console: &str) -> Option<String> {
    let line = console.lines().find(|l| l.contains("guest RAM mapped"))?;
    let plain = strip_ansi(line);
    let mode = plain
        .split_whitespace()
        .find_map(|w| w.strip_prefix("mode="))?;
    Some(mode.to_string())
}

/// `text` without ANSI colour sequences (tracing colours its fields).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// Console lines that show a kernel fault (panic, oops, BUG, lockup, RCU stall, the faulting
/// instruction and call trace, a `WARN`), a nested VMM's verdict on stderr (`vmm: …`, which
/// it prints for every exit but a power-off) or a seccomp audit line (a thread called outside
/// its filter), at most `max`.
pub fn fault_lines(console: &str, max: usize) -> Vec<&str> {
    const FAULTS: [&str; 9] = [
        "Kernel panic",
        "BUG:",
        "Oops",
        "RIP:",
        "general protection",
        "soft lockup",
        "rcu: INFO",
        "Call Trace",
        "WARNING: CPU",
    ];
    console
        .lines()
        .filter(|l| {
            FAULTS.iter().any(|f| l.contains(f))
                || l.starts_with("vmm: ")
                || l.contains(": vmm: ")
                || l.starts_with(crate::SECCOMP_MARKER)
        })
        .take(max)
        .collect()
}

/// Received bits per second of the iperf3 `-J` report printed on one line after `key`
/// (UDP: the `sum` the client reports; TCP: `sum_received`). An error report, a missing or
/// zero figure is an `Err` saying why.
pub fn iperf3_bits_per_second(console: &str, key: &str, udp: bool) -> Result<f64, String> {
    let raw = console_value(console, key).ok_or_else(|| format!("no {key} in the console"))?;
    let json: serde_json::Value =
        serde_json::from_str(raw).map_err(|e| format!("{key} is not JSON ({e}): {raw}"))?;
    if let Some(e) = json.get("error") {
        return Err(format!("{key}: iperf3 error {e}"));
    }
    let sum = if udp {
        &json["end"]["sum"]
    } else {
        &json["end"]["sum_received"]
    };
    match sum["bits_per_second"].as_f64() {
        Some(bps) if bps > 0.0 => Ok(bps),
        _ => Err(format!("{key}: no throughput in {json}")),
    }
}

/// Guest shell lines: ping `server`, then iperf3 against it (TCP guest→server, TCP
/// server→guest, UDP at 50 Mbit/s), each bounded by `timeout 60` so that a stalled transfer
/// ends the script (with whatever the test prints afterwards) instead of the lab run. The
/// results are read back by [`PingIperf3::from_console`]; the guest's virtio interrupt
/// counts follow as `GUEST-VIRTIO-IRQS=`.
pub fn guest_ping_iperf3(server: &str) -> String {
    format!(
        r#"
ping -c 3 -W 5 {server}
echo PING-STATUS=$?
echo "IPERF-TCP=$(timeout 60 iperf3 -c {server} -t 3 -i 0 -J | tr -d '\n')"
echo "IPERF-TCPR=$(timeout 60 iperf3 -c {server} -t 3 -i 0 -J -R | tr -d '\n')"
echo "IPERF-UDP=$(timeout 60 iperf3 -c {server} -t 3 -i 0 -J -u -b 50M | tr -d '\n')"
echo "GUEST-VIRTIO-IRQS=$(grep virtio /proc/interrupts | tr -s ' ' | tr '\n' '|')"
"#
    )
}

/// What a guest running [`guest_ping_iperf3`] measured, in bits per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PingIperf3 {
    /// TCP, guest to server.
    pub tcp_out: f64,
    /// TCP, server to guest (`-R`).
    pub tcp_in: f64,
    /// UDP, guest to server.
    pub udp: f64,
}

impl PingIperf3 {
    /// Reads the first `PING-STATUS=`, `IPERF-TCP=`, `IPERF-TCPR=` and `IPERF-UDP=` values
    /// that follow `prefix` on a line ([`console_value`] of `prefix` + key; an empty prefix
    /// takes the first line with the key). A failed ping or a missing, failed or empty iperf3
    /// report is an `Err` saying which.
    pub fn from_console(console: &str, prefix: &str) -> Result<PingIperf3, String> {
        let key = |k: &str| format!("{prefix}{k}");
        let ping = console_value(console, &key("PING-STATUS="));
        if ping != Some("0") {
            return Err(format!("{prefix}ping failed: PING-STATUS={ping:?}"));
        }
        Ok(PingIperf3 {
            tcp_out: iperf3_bits_per_second(console, &key("IPERF-TCP="), false)?,
            tcp_in: iperf3_bits_per_second(console, &key("IPERF-TCPR="), false)?,
            udp: iperf3_bits_per_second(console, &key("IPERF-UDP="), true)?,
        })
    }
}

impl std::fmt::Display for PingIperf3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TCP guest->host {:.1} Mbit/s, host->guest {:.1} Mbit/s, UDP {:.1} Mbit/s",
            self.tcp_out / 1e6,
            self.tcp_in / 1e6,
            self.udp / 1e6
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_ram_mode_is_read_from_the_vmm_log() {
        let log =
            "x\n\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m vmm::memory: guest RAM mapped \
                   \u{1b}[3mmode\u{1b}[0m\u{1b}[2m=\u{1b}[0mprivate mib=512\n";
        assert_eq!(guest_ram_mode(log).as_deref(), Some("private"));
        assert_eq!(guest_ram_mode("no such line"), None);
    }

    #[test]
    fn values_and_iperf_reports() {
        let c =
            "noise\nA: PING-STATUS=0 \nX={\"end\":{\"sum_received\":{\"bits_per_second\":5e6}}}\n\
                 U={\"end\":{\"sum\":{\"bits_per_second\":0}}}\nE={\"error\":\"refused\"}";
        assert_eq!(console_value(c, "PING-STATUS="), Some("0"));
        assert_eq!(console_value(c, "NOPE="), None);
        let faults = "[ 1.0] ok\n[ 2.0] BUG: kernel NULL pointer dereference\n[ 2.1] RIP: 0010:f\n\
                      vmm: guest kernel panicked: Kernel panic - not syncing: x\nVMM-EXIT-STATUS=3\n\
                      2026-12-02T07:45:12Z  INFO vmm: guest powered off\nA: vmm: error: gone\n\
                      LAB-SECCOMP: [ 9.1] audit: type=1326 comm=\"blk-q0\" syscall=41";
        assert_eq!(
            fault_lines(faults, 10),
            [
                "[ 2.0] BUG: kernel NULL pointer dereference",
                "[ 2.1] RIP: 0010:f",
                "vmm: guest kernel panicked: Kernel panic - not syncing: x",
                "A: vmm: error: gone",
                "LAB-SECCOMP: [ 9.1] audit: type=1326 comm=\"blk-q0\" syscall=41"
            ]
        );
        assert_eq!(fault_lines(faults, 1).len(), 1);
        assert_eq!(iperf3_bits_per_second(c, "X=", false), Ok(5e6));
        assert!(iperf3_bits_per_second(c, "U=", true).is_err());
        assert!(iperf3_bits_per_second(c, "E=", false).is_err());
        assert!(iperf3_bits_per_second(c, "Y=", false).is_err());
    }

    #[test]
    fn ping_iperf3_results_are_read_back_with_their_prefix() {
        let script = guest_ping_iperf3("10.9.0.1");
        assert!(script.contains("ping -c 3 -W 5 10.9.0.1\n"));
        assert_eq!(script.matches("timeout 60 iperf3 -c 10.9.0.1 ").count(), 3);
        let tcp =
            |bps: f64| format!("{{\"end\":{{\"sum_received\":{{\"bits_per_second\":{bps}}}}}}}");
        let udp = "{\"end\":{\"sum\":{\"bits_per_second\":3e6}}}";
        let c = format!(
            "PING-STATUS=1\nREF: PING-STATUS=0\nREF: IPERF-TCP={}\nREF: IPERF-TCPR={}\n\
             REF: IPERF-UDP={udp}\n",
            tcp(1e6),
            tcp(2e6)
        );
        let r = PingIperf3::from_console(&c, "REF: ").expect("reference results");
        assert_eq!(
            r,
            PingIperf3 {
                tcp_out: 1e6,
                tcp_in: 2e6,
                udp: 3e6
            }
        );
        assert_eq!(
            r.to_string(),
            "TCP guest->host 1.0 Mbit/s, host->guest 2.0 Mbit/s, UDP 3.0 Mbit/s"
        );
        let failed = PingIperf3::from_console(&c, "").expect_err("ping failed");
        assert!(failed.contains("ping failed"), "{failed}");
        let partial = "PING-STATUS=0\nIPERF-TCP={\"error\":\"x\"}";
        assert!(PingIperf3::from_console(partial, "").is_err());
    }
}
