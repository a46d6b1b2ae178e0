// SPDX-License-Identifier: Apache-2.0
//! `vmm-perf boot`: guest boot-to-init and VMM memory, contenders booted in alternation:
//! ours with private RAM and with a vhost-user disk on shared RAM, QEMU q35 and microvm, and
//! Cloud Hypervisor with `shared=off` and `shared=on` where its binary is given.

use std::path::PathBuf;

use clap::Parser;
use perf::boot::{self, BootBench, BootRun, Contender, Mode};
use perf::provenance::{Provenance, BENCH_SCHEMA_VERSION};
use perf::{Error, Result};

use crate::{parse_mode, sibling_binary, write_json};

#[derive(Parser)]
pub struct BootArgs {
    /// Boots per contender (alternating: each round boots every contender once).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Contenders, comma-separated: ours (no device, private RAM), ours-vhost-user (a
    /// vhost-user-blk disk, shared RAM), qemu (q35), qemu-microvm, ch and ch-shared (Cloud
    /// Hypervisor with shared=off / shared=on; need --ch-bin) [default: ours,
    /// ours-vhost-user, qemu, qemu-microvm, and ch, ch-shared with --ch-bin].
    #[arg(long, value_delimiter = ',')]
    contenders: Vec<String>,
    /// Cloud Hypervisor binary (built from its source; not needed by CI).
    #[arg(long)]
    ch_bin: Option<PathBuf>,
    /// The contender the others' boot times are divided by [default: ch with --ch-bin,
    /// else qemu].
    #[arg(long)]
    reference: Option<String>,
    /// Our vhost-user-blk binary (default: next to this binary).
    #[arg(long)]
    backend_bin: Option<PathBuf>,
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

fn contender(name: &str) -> Result<Contender> {
    Contender::from_name(name).ok_or_else(|| Error::Usage(format!("unknown contender {name}")))
}

/// Boots every contender `repeat` times, prints the medians, writes the JSON report.
pub fn boot(a: BootArgs) -> Result<()> {
    let provenance = Provenance::capture(BENCH_SCHEMA_VERSION);
    let vmm = a.vmm.clone().unwrap_or_else(|| sibling_binary("vmm"));
    let mode = parse_mode(a.mode.as_deref(), &vmm)?;
    let contenders: Vec<Contender> = if a.contenders.is_empty() {
        Contender::ALL
            .into_iter()
            .filter(|c| a.ch_bin.is_some() || !c.is_ch())
            .collect()
    } else {
        a.contenders
            .iter()
            .map(|n| contender(n))
            .collect::<Result<_>>()?
    };
    let reference = match &a.reference {
        Some(name) => contender(name)?,
        None if a.ch_bin.is_some() => Contender::Ch,
        None => Contender::Qemu,
    };
    eprintln!(
        "boot benchmark: {} rounds of {} contenders, {mode:?} mode",
        a.repeat,
        contenders.len()
    );
    let run = BootRun {
        bench: BootBench {
            vmm,
            repeat: a.repeat,
            cpus: a.cpus,
            memory_mib: a.memory_mib,
            mode,
        },
        contenders: contenders.clone(),
        backend: a
            .backend_bin
            .clone()
            .unwrap_or_else(|| sibling_binary("vhost-user-blk")),
        ch: a.ch_bin.clone(),
    };
    let (samples, raw) = run.run()?;
    let (summaries, table) = boot::report(&samples, &contenders, reference);
    print!("{table}");
    let r = reference.name();
    println!("x {r}: median boot-to-init divided by {r}'s (< 1: faster)");
    println!("overhead = resident memory that is not guest RAM (the guest RAM mapping: our memfd, or the anonymous mapping of exactly the guest's RAM size)");
    if mode == Mode::Lab {
        println!("lab mode: nested KVM under TCG, times are relative only");
    }
    let failures: usize = summaries.iter().map(|s| s.failed).sum();
    let report = serde_json::json!({
        "benchmark": "guest boot-to-init, alternating contenders",
        "mode": mode,
        "cpus": a.cpus,
        "memory_mib": a.memory_mib,
        "reference": r,
        "summaries": summaries,
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
