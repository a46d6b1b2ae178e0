//! Helpers for tests that read what a lab run printed: image discovery with a printed skip
//! reason, `KEY=value` lines, iperf3 JSON reports.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_iperf_reports() {
        let c =
            "noise\nA: PING-STATUS=0 \nX={\"end\":{\"sum_received\":{\"bits_per_second\":5e6}}}\n\
                 U={\"end\":{\"sum\":{\"bits_per_second\":0}}}\nE={\"error\":\"refused\"}";
        assert_eq!(console_value(c, "PING-STATUS="), Some("0"));
        assert_eq!(console_value(c, "NOPE="), None);
        assert_eq!(iperf3_bits_per_second(c, "X=", false), Ok(5e6));
        assert!(iperf3_bits_per_second(c, "U=", true).is_err());
        assert!(iperf3_bits_per_second(c, "E=", false).is_err());
        assert!(iperf3_bits_per_second(c, "Y=", false).is_err());
    }
}
