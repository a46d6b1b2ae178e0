// SPDX-License-Identifier: Apache-2.0
//! Reading a metrics page back: fetch `GET /metrics` and parse the Prometheus text format's
//! sample lines (`name{label="value",...} number`), for tests and for `vmm-perf`.

use std::time::Duration;

use minihttp::ListenAddr;

use crate::{Error, Result};

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name with its suffix (`iovmm_requests_total`, `..._bucket`).
    pub name: String,
    /// Labels in the order written.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of label `key`.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed page.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    /// Parse a page; comment lines and lines that do not parse are skipped.
    pub fn parse(text: &str) -> Self {
        Self(text.lines().filter_map(parse_line).collect())
    }

    /// Samples named `name` whose labels include every `(key, value)` of `labels`.
    pub fn select<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.0
            .iter()
            .filter(move |s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
    }

    /// The sum of the samples [`Samples::select`] picks (0 if none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.select(name, labels).map(|s| s.value).sum()
    }

    /// The `(device, queue)` pairs that have `name` samples, in page order.
    pub fn queues(&self, name: &str) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for s in self.select(name, &[]) {
            if let (Some(d), Some(q)) = (s.label("device"), s.label("queue")) {
                if !out.iter().any(|(od, oq)| od == d && oq == q) {
                    out.push((d.to_string(), q.to_string()));
                }
            }
        }
        out
    }

    /// The `(upper bound, cumulative count)` buckets of histogram `name` for `labels`, in
    /// ascending order, `+Inf` as infinity.
    pub fn buckets(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
        let bucket = format!("{name}_bucket");
        let mut out: Vec<(f64, f64)> = self
            .select(&bucket, labels)
            .filter_map(|s| Some((parse_number(s.label("le")?)?, s.value)))
            .collect();
        out.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }
}

/// Fetch and parse the page at `addr`.
pub fn scrape(addr: &ListenAddr, timeout: Duration) -> Result<Samples> {
    let r = minihttp::client::request(addr, "GET", "/metrics", None, timeout)
        .map_err(|e| Error::Metrics(e.to_string()))?;
    if r.status != 200 {
        return Err(Error::Metrics(format!(
            "{addr}: GET /metrics answered {}",
            r.status
        )));
    }
    Ok(Samples::parse(&r.text()))
}

/// A value as the format writes it (`+Inf`, `-Inf`, `NaN` included).
fn parse_number(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let (labels, rest) = if line[name_end..].starts_with('{') {
        parse_labels(&line[name_end + 1..])?
    } else {
        (Vec::new(), &line[name_end..])
    };
    let value = parse_number(rest.split_whitespace().next()?)?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Labels up to the closing brace, and what follows it.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        let mut value = String::new();
        let mut chars = s[eq + 1..].strip_prefix('"')?.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key, value));
        s = &s[eq + 2 + end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_lines_parse_with_labels_escapes_and_infinities() {
        let page = "# HELP x_total X.\n# TYPE x_total counter\n\
            x_total{device=\"blk0\",queue=\"0\"} 12\n\
            x_total{device=\"b\\\"q\\\\\",queue=\"1\"} 3.5\n\
            plain 7\n\
            h_bucket{device=\"blk0\",queue=\"0\",le=\"0.001\"} 4\n\
            h_bucket{device=\"blk0\",queue=\"0\",le=\"+Inf\"} 5\n\
            broken{device=\"x} 1\n\
            \n";
        let s = Samples::parse(page);
        assert_eq!(s.0.len(), 5, "{s:?}");
        assert_eq!(s.sum("x_total", &[("device", "blk0")]), 12.0);
        assert_eq!(s.sum("x_total", &[]), 15.5);
        assert_eq!(s.0[1].label("device"), Some("b\"q\\"));
        assert_eq!(s.sum("plain", &[]), 7.0);
        assert_eq!(
            s.buckets("h", &[("queue", "0")]),
            [(0.001, 4.0), (f64::INFINITY, 5.0)]
        );
        assert_eq!(
            s.queues("x_total"),
            [("blk0".into(), "0".into()), ("b\"q\\".into(), "1".into())]
        );
    }
}
