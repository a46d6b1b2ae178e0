// SPDX-License-Identifier: Apache-2.0
//! Extraction of per-run output from a console stream.
//!
//! The generated scripts print, for every run:
//! `===CELL-BEGIN id===` when it starts, and the raw output base64-encoded between
//! `===JSON-BEGIN id===` and `===JSON-END id===`. Base64 survives the serial consoles (no
//! `\r` or control characters); kernel messages interleaved into the block are skipped
//! because they are not base64. Boot runs print `perf::boot`'s `BOOT-INIT`/`BOOT-END` lines.

use base64::Engine;

/// Something the stream told us.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// A run started.
    Started(String),
    /// A run's raw output (decoded); `Err` if the payload was not valid base64.
    Raw(String, Result<Vec<u8>, String>),
    /// A `BOOT-INIT` or `BOOT-END` line of [`crate::boot::measure_fn`] (from the tag on).
    Boot(String),
    /// The VMM's and backends' counters at a run's beginning or end.
    Counters(super::counters::CountersLine),
}

/// Line-at-a-time marker parser.
#[derive(Debug, Default)]
pub struct Collector {
    current: Option<(String, String)>,
}

fn marker<'a>(line: &'a str, tag: &str) -> Option<&'a str> {
    let i = line.find(tag)?;
    line[i + tag.len()..].trim().strip_suffix("===")
}

impl Collector {
    /// Feeds one console line; returns what it completed.
    pub fn line(&mut self, line: &str) -> Option<Event> {
        let line = line.trim_end_matches(['\r', '\n']);
        if let Some(id) = marker(line, "===JSON-BEGIN ") {
            self.current = Some((id.to_string(), String::new()));
            return None;
        }
        if let Some(id) = marker(line, "===JSON-END ") {
            let (cur, payload) = self.current.take()?;
            if cur != id {
                return Some(Event::Raw(
                    id.to_string(),
                    Err(format!("output of {id} interleaved with {cur}")),
                ));
            }
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(payload.as_bytes())
                .map_err(|e| format!("raw output damaged on the console (base64: {e})"));
            return Some(Event::Raw(cur, decoded));
        }
        if let Some(c) = super::counters::parse_line(line) {
            return Some(Event::Counters(c));
        }
        if let Some((_, payload)) = self.current.as_mut() {
            let t = line.trim();
            if !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
            {
                payload.push_str(t);
            }
            return None;
        }
        if let Some(id) = marker(line, "===CELL-BEGIN ") {
            return Some(Event::Started(id.to_string()));
        }
        if let Some(i) = line.find("BOOT-END ").or_else(|| line.find("BOOT-INIT ")) {
            return Some(Event::Boot(line[i..].to_string()));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_raw_output_through_console_noise() {
        let mut c = Collector::default();
        assert_eq!(
            c.line("===CELL-BEGIN native.udp.1==="),
            Some(Event::Started("native.udp.1".into()))
        );
        assert_eq!(c.line("===JSON-BEGIN native.udp.1==="), None);
        assert_eq!(c.line("eyJh"), None);
        assert_eq!(c.line("[   12.3] random: crng init done"), None);
        assert_eq!(c.line("IjoxfQ==\r"), None);
        assert_eq!(
            c.line("===JSON-END native.udp.1==="),
            Some(Event::Raw("native.udp.1".into(), Ok(b"{\"a\":1}".to_vec())))
        );
        assert!(matches!(
            c.line("BOOT-END name=vmm.boot.1 t0=1 t=2 status=0"),
            Some(Event::Boot(_))
        ));
    }

    #[test]
    fn counters_lines_are_events_even_between_runs() {
        let mut c = Collector::default();
        let ev = c.line("===COUNTERS begin vhost-user-blk.read-128k.1 requests=1 notifications=2 kicks=3 submissions=4 submitted=5 cpu=0.5000===\r");
        let Some(Event::Counters(l)) = ev else {
            panic!("{ev:?}");
        };
        assert_eq!(
            (l.end, l.id.as_str()),
            (false, "vhost-user-blk.read-128k.1")
        );
        assert_eq!((l.totals.kicks, l.totals.cpu_seconds), (3.0, 0.5));
    }

    #[test]
    fn damaged_payload_is_an_error() {
        let mut c = Collector::default();
        c.line("===JSON-BEGIN x===");
        c.line("abc");
        assert!(matches!(
            c.line("===JSON-END x==="),
            Some(Event::Raw(_, Err(_)))
        ));
    }
}
