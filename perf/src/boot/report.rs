// SPDX-License-Identifier: Apache-2.0
//! The boot race's summary: per contender the median boot-to-init time, its ratio to a
//! reference contender of the same run, resident memory, and how its guest RAM was mapped
//! under which transparent-huge-page settings.

use std::fmt::Write as _;

use serde::Serialize;

use super::{median, BootSample, Contender};

/// One contender's medians.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Contender name.
    pub vmm: String,
    /// Boots that reached init and exited 0.
    pub boots: usize,
    /// Boots that failed.
    pub failed: usize,
    /// Median seconds from launch to the guest's init.
    pub to_init_s: Option<f64>,
    /// Median seconds from launch to exit.
    pub total_s: Option<f64>,
    /// Median `to_init_s` divided by the reference's.
    pub to_init_ratio: Option<f64>,
    /// Median VMM resident memory at init, MiB.
    pub rss_mib: Option<f64>,
    /// Median resident memory that is not guest RAM, MiB (`None` where the guest RAM
    /// mapping was not found).
    pub overhead_mib: Option<f64>,
    /// Guest RAM mode.
    pub memory: String,
    /// THP policy for anonymous memory / for shmem, as the run found them.
    pub thp: String,
}

/// Summaries of `contenders` (in that order) with ratios to `reference`, and the table
/// printed for them.
pub fn report(
    samples: &[BootSample],
    contenders: &[Contender],
    reference: Contender,
) -> (Vec<Summary>, String) {
    fn of<'a>(samples: &'a [BootSample], name: &'a str) -> impl Iterator<Item = &'a BootSample> {
        samples.iter().filter(move |s| s.vmm == name)
    }
    let ok = |s: &&BootSample| s.status == 0 && s.to_init_s.is_finite();
    let med = |name: &str, f: fn(&BootSample) -> f64| {
        median(of(samples, name).filter(ok).map(f).collect())
    };
    let reference_s = med(reference.name(), |s| s.to_init_s);
    let mut out = Vec::new();
    for c in contenders {
        let name = c.name();
        let first = of(samples, name).next();
        let ram_found = of(samples, name)
            .filter(ok)
            .all(|s| s.rss_guest_ram_kib > 0);
        let to_init_s = med(name, |s| s.to_init_s);
        out.push(Summary {
            vmm: name.to_string(),
            boots: of(samples, name).filter(ok).count(),
            failed: of(samples, name).filter(|s| !ok(s)).count(),
            to_init_s,
            total_s: med(name, |s| s.total_s),
            to_init_ratio: to_init_s.zip(reference_s).map(|(t, r)| t / r),
            rss_mib: med(name, |s| s.rss_total_kib as f64 / 1024.0),
            overhead_mib: ram_found
                .then(|| {
                    med(name, |s| {
                        (s.rss_total_kib - s.rss_guest_ram_kib) as f64 / 1024.0
                    })
                })
                .flatten(),
            memory: c.memory().to_string(),
            thp: first.map_or_else(String::new, |s| {
                format!("anon={} shmem={}", s.thp_anon, s.thp_shmem)
            }),
        });
    }
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    let mut table = format!(
        "{:<16} {:>5} {:>6} {:>11} {:>9} {:>10} {:>9} {:>13} {:<8} thp\n",
        "vmm",
        "boots",
        "failed",
        "to-init(s)",
        "total(s)",
        format!("x {}", reference.name()),
        "rss(MiB)",
        "overhead(MiB)",
        "memory"
    );
    for s in &out {
        let _ = writeln!(
            table,
            "{:<16} {:>5} {:>6} {:>11} {:>9} {:>10} {:>9} {:>13} {:<8} {}",
            s.vmm,
            s.boots,
            s.failed,
            fmt(s.to_init_s),
            fmt(s.total_s),
            fmt(s.to_init_ratio),
            fmt(s.rss_mib),
            fmt(s.overhead_mib),
            s.memory,
            s.thp
        );
    }
    (out, table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(vmm: &str, t: f64, rss: u64, ram: u64) -> BootSample {
        BootSample {
            vmm: vmm.into(),
            to_init_s: t,
            total_s: t + 0.5,
            status: 0,
            rss_total_kib: rss,
            rss_guest_ram_kib: ram,
            memory: String::new(),
            thp_anon: "always".into(),
            thp_shmem: "advise".into(),
        }
    }

    #[test]
    fn medians_and_ratios_to_the_reference() {
        let mut samples = vec![
            sample("ours", 4.0, 80 * 1024, 70 * 1024),
            sample("ours", 5.0, 82 * 1024, 70 * 1024),
            sample("ours", 6.0, 84 * 1024, 70 * 1024),
            sample("ch", 5.0, 90 * 1024, 0),
            sample("ch", 5.0, 90 * 1024, 0),
        ];
        let mut failed = sample("ch", f64::NAN, 0, 0);
        failed.status = 1;
        samples.push(failed);
        let (sums, table) = report(&samples, &[Contender::Ours, Contender::Ch], Contender::Ch);
        assert_eq!((sums[0].boots, sums[0].failed), (3, 0));
        assert_eq!((sums[1].boots, sums[1].failed), (2, 1));
        assert_eq!(sums[0].to_init_s, Some(5.0));
        assert_eq!(sums[0].to_init_ratio, Some(1.0));
        assert_eq!(sums[0].overhead_mib, Some(12.0));
        assert_eq!(sums[1].overhead_mib, None, "guest RAM not found");
        assert_eq!(sums[0].thp, "anon=always shmem=advise");
        assert_eq!(sums[0].memory, "private");
        assert!(table.contains("x ch"), "{table}");
    }
}
