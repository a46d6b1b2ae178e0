//! `vmm-perf boot`: guest boot-to-init and VMM memory, ours against QEMU.

use std::path::PathBuf;

use clap::Parser;
use perf::boot::{self, BootBench, BootSample, Mode};
use perf::provenance::{Provenance, BENCH_SCHEMA_VERSION};
use perf::{Error, Result};

use crate::{parse_mode, sibling_binary, write_json};

#[derive(Parser)]
pub struct BootArgs {
    /// Boots per VMM.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// vCPUs per guest.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 512)]
    memory_mib: u32,
    /// Our `vmm` binary (default: next to this binary).
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// direct or lab (default: what `vmm check` allows).
    #[arg(long)]
    mode: Option<String>,
    /// JSON report path.
    #[arg(long, default_value = "perf-boot.json")]
    json: PathBuf,
}

/// Median of `f` over the samples of one VMM (`ours` or `qemu`).
fn median_of(samples: &[BootSample], vmm: &str, f: impl Fn(&BootSample) -> f64) -> Option<f64> {
    boot::median(samples.iter().filter(|s| s.vmm == vmm).map(f).collect())
}

/// Resident memory that is not guest RAM, KiB.
fn overhead_kib(s: &BootSample) -> f64 {
    s.rss_total_kib.saturating_sub(s.rss_guest_ram_kib) as f64
}

/// Boots both VMMs, prints the medians, writes the JSON report.
pub fn boot(a: BootArgs) -> Result<()> {
    let provenance = Provenance::capture(BENCH_SCHEMA_VERSION);
    let vmm = a.vmm.clone().unwrap_or_else(|| sibling_binary("vmm"));
    let mode = parse_mode(a.mode.as_deref(), &vmm)?;
    eprintln!("boot benchmark: {} boots per VMM, {mode:?} mode", a.repeat);
    let bench = BootBench {
        vmm,
        repeat: a.repeat,
        cpus: a.cpus,
        memory_mib: a.memory_mib,
        mode,
    };
    let (samples, raw) = bench.run()?;
    let failures = samples
        .iter()
        .filter(|s| s.status != 0 || s.to_init_s.is_nan())
        .count();
    print_table(&samples);
    let ratio = median_of(&samples, "ours", |s| s.to_init_s)
        .zip(median_of(&samples, "qemu", |s| s.to_init_s))
        .map(|(o, q)| o / q);
    println!(
        "boot-to-init ours/qemu = {} (median; < 1 means ours is faster); failed boots: {failures}",
        ratio.map_or("-".into(), |r| format!("{r:.2}"))
    );
    println!("overhead = resident memory that is not guest RAM (ours: VmRSS minus the memfd guest-RAM mapping; QEMU's anonymous RAM cannot be told apart, so its overhead column includes guest RAM)");
    if mode == Mode::Lab {
        println!("lab mode: nested KVM under TCG, times are relative only");
    }
    let report = serde_json::json!({
        "benchmark": "guest boot-to-init, ours vs QEMU",
        "mode": mode,
        "cpus": a.cpus,
        "memory_mib": a.memory_mib,
        "median_to_init_ratio_ours_over_qemu": ratio,
        "ours_overhead_rss_mib_median": median_of(&samples, "ours", overhead_kib).map(|k| k / 1024.0),
        "samples": samples,
        "raw_output": raw,
    });
    write_json(&a.json, &provenance, report)?;
    if failures > 0 {
        return Err(Error::Backend(format!(
            "{failures} boots failed (see {})",
            a.json.display()
        )));
    }
    Ok(())
}

/// One line per VMM: boots, median boot-to-init, total, resident memory and its overhead.
fn print_table(samples: &[BootSample]) {
    println!(
        "{:<6} {:>6} {:>12} {:>12} {:>14} {:>14}",
        "vmm", "boots", "to-init(s)", "total(s)", "rss(MiB)", "overhead(MiB)"
    );
    let fmt =
        |v: Option<f64>, scale: f64| v.map_or("-".to_string(), |v| format!("{:.2}", v / scale));
    for name in ["ours", "qemu"] {
        let n = samples.iter().filter(|s| s.vmm == name).count();
        println!(
            "{:<6} {:>6} {:>12} {:>12} {:>14} {:>14}",
            name,
            n,
            fmt(median_of(samples, name, |s| s.to_init_s), 1.0),
            fmt(median_of(samples, name, |s| s.total_s), 1.0),
            fmt(median_of(samples, name, |s| s.rss_total_kib as f64), 1024.0),
            fmt(median_of(samples, name, overhead_kib), 1024.0),
        );
    }
}
