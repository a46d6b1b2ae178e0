// SPDX-License-Identifier: Apache-2.0
//! Guest boot-to-init benchmark: our VMM against QEMU (`q35` and the minimal `microvm`
//! machine) and, where its binary is given, Cloud Hypervisor, with the same kernel,
//! initramfs, vCPUs and memory, measured in the same run, plus the VMM's own resident
//! memory beside the guest's. Each figure carries the guest RAM's mode (private or shared)
//! and the host's transparent-huge-page settings, which decide how fast RAM faults in.
//!
//! One shell script does the measuring so that every VMM is timed by the same clock in the
//! same place: directly on a host with hardware KVM, or inside the lab host otherwise.

mod contenders;
mod report;

pub use contenders::{BootRun, Contender};
pub use report::{report, Summary};

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

/// Where the guests run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// On this host's KVM.
    Direct,
    /// Inside the TCG lab host (nested KVM): relative numbers only.
    Lab,
}

/// Picks direct mode when `vmm check` says stock Linux can boot here.
pub fn detect_mode(vmm: &Path) -> Mode {
    match Command::new(vmm).arg("check").output() {
        Ok(o) if o.status.success() => Mode::Direct,
        _ => Mode::Lab,
    }
}

/// Benchmark parameters.
pub struct BootBench {
    /// Our `vmm` binary.
    pub vmm: PathBuf,
    /// Boots per VMM.
    pub repeat: usize,
    /// vCPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Direct or lab.
    pub mode: Mode,
}

/// One boot of one VMM.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BootSample {
    /// "ours" or "qemu".
    pub vmm: String,
    /// Seconds from VMM launch to the guest's /init marker on the console.
    pub to_init_s: f64,
    /// Seconds from VMM launch to VMM exit after the guest powered off.
    pub total_s: f64,
    /// VMM exit status.
    pub status: i32,
    /// Resident memory of the VMM process at guest init (VmRSS), KiB.
    pub rss_total_kib: u64,
    /// The part of it that is guest RAM, KiB: a `memfd:guest-ram` mapping (our shared RAM),
    /// or an anonymous mapping exactly the guest's RAM size (private RAM, ours and the
    /// others'); 0 where neither is found.
    pub rss_guest_ram_kib: u64,
    /// Guest RAM mode as the script was told (`private`, `shared`; empty if not given).
    #[serde(default)]
    pub memory: String,
    /// The host's transparent-huge-page policy for anonymous memory during the run.
    #[serde(default)]
    pub thp_anon: String,
    /// The same for shmem (memfd) memory.
    #[serde(default)]
    pub thp_shmem: String,
}

const QEMU: &str = "qemu-system-x86_64";

/// The shell function `measure NAME CMD...` used by [`script`]: runs CMD with its console on a
/// FIFO, prints `BOOT-INIT name=NAME t0= t= rss= guestram= mem=` when the guest's init marker
/// appears and `BOOT-END name=NAME t0= t= status=` when CMD exits ([`parse`] reads them).
/// `$MEM_MODE` is reported as `mem=`; `$RAM_KIB`, the guest's RAM size, finds a private RAM
/// mapping among the anonymous ones. [`host_line`] reports the host's THP settings.
pub fn measure_fn() -> String {
    format!(
        r#"now() {{ cut -d' ' -f1 /proc/uptime; }}
measure() {{
  name=$1; shift
  fifo=${{W:-/tmp}}/boot.fifo
  rm -f "$fifo"; mkfifo "$fifo"
  t0=$(now)
  "$@" > "$fifo" 2>&1 &
  pid=$!
  while IFS= read -r line; do
    case "$line" in *"{marker}"*)
      t1=$(now)
      rss=$(awk '/^VmRSS:/ {{ print $2 }}' /proc/$pid/status)
      ram=$(awk -v ram="${{RAM_KIB:-0}}" '/^[0-9a-f]+-[0-9a-f]+ / {{ g = ($0 ~ /memfd:guest-ram/); anon = (NF == 5) }} /^Size:/ && anon && $2 == ram {{ g = 1 }} g && /^Rss:/ {{ s += $2 }} END {{ print s + 0 }}' /proc/$pid/smaps)
      echo "BOOT-INIT name=$name t0=$t0 t=$t1 rss=$rss guestram=$ram mem=${{MEM_MODE:-}}";;
    esac
  done < "$fifo"
  wait $pid; st=$?
  echo "BOOT-END name=$name t0=$t0 t=$(now) status=$st"
}}
"#,
        marker = lab::GUEST_BOOT_MARKER
    )
}

/// Our VMM's boot command line (for `measure`).
pub fn ours_cmd(b: &BootBench, vmm_bin: &str, kernel: &str, initrd: &str) -> String {
    format!(
        "{vmm_bin} run --kernel {kernel} --initramfs {initrd} --cpus {} --memory {}M --cmdline \"console=ttyS0 panic=-1 quiet\"",
        b.cpus, b.memory_mib
    )
}

/// QEMU's boot command line with the same kernel, initramfs, vCPUs and memory.
pub fn qemu_cmd(b: &BootBench, kernel: &str, initrd: &str) -> String {
    format!(
        "{QEMU} -enable-kvm -cpu host -machine q35 -smp {} -m {} -nic none -display none -monitor none -serial stdio -no-reboot -kernel {kernel} -initrd {initrd} -append \"console=ttyS0 panic=-1 quiet\"",
        b.cpus, b.memory_mib
    )
}

/// A shell line printing `BOOT-HOST thp= shmem_thp=`: the host's transparent-huge-page
/// policies (`never`, `madvise`, `always`, `advise`, …; `none` without THP).
pub fn host_line() -> String {
    let policy = |file: &str| {
        format!(
            "$(sed -n 's/.*\\[\\(.*\\)\\].*/\\1/p' /sys/kernel/mm/transparent_hugepage/{file} 2>/dev/null | grep . || echo none)"
        )
    };
    format!(
        "echo \"BOOT-HOST thp={} shmem_thp={}\"\n",
        policy("enabled"),
        policy("shmem_enabled")
    )
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key))
}

fn num(line: &str, key: &str) -> Option<f64> {
    field(line, key)?.trim_end_matches(':').parse().ok()
}

/// Parses the script's `BOOT-INIT`/`BOOT-END` lines into samples; a boot that
/// never reached init is reported with `to_init_s` = NaN and its status.
pub fn parse(output: &str) -> Vec<BootSample> {
    let mut samples = Vec::new();
    let mut pending: Option<BootSample> = None;
    let (mut thp_anon, mut thp_shmem) = (String::new(), String::new());
    for line in output.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("BOOT-HOST ") {
            thp_anon = field(rest, "thp=").unwrap_or_default().to_string();
            thp_shmem = field(rest, "shmem_thp=").unwrap_or_default().to_string();
        } else if let Some(rest) = line.strip_prefix("BOOT-INIT ") {
            let (Some(name), Some(t0), Some(t)) =
                (field(rest, "name="), num(rest, "t0="), num(rest, "t="))
            else {
                continue;
            };
            let kib = |k: &str| num(rest, k).unwrap_or(0.0) as u64;
            let rss_total_kib = kib("rss=");
            pending = Some(BootSample {
                vmm: name.to_string(),
                to_init_s: t - t0,
                total_s: f64::NAN,
                status: -1,
                rss_total_kib,
                rss_guest_ram_kib: kib("guestram=").min(rss_total_kib),
                memory: field(rest, "mem=").unwrap_or_default().to_string(),
                thp_anon: thp_anon.clone(),
                thp_shmem: thp_shmem.clone(),
            });
        } else if let Some(rest) = line.strip_prefix("BOOT-END ") {
            let (Some(name), Some(t0), Some(t)) =
                (field(rest, "name="), num(rest, "t0="), num(rest, "t="))
            else {
                continue;
            };
            let mut s = match pending.take() {
                Some(s) if s.vmm == name => s,
                _ => BootSample {
                    vmm: name.to_string(),
                    to_init_s: f64::NAN,
                    total_s: 0.0,
                    status: -1,
                    rss_total_kib: 0,
                    rss_guest_ram_kib: 0,
                    memory: String::new(),
                    thp_anon: thp_anon.clone(),
                    thp_shmem: thp_shmem.clone(),
                },
            };
            s.total_s = t - t0;
            s.status = num(rest, "status=").map_or(-1, |v| v as i32);
            samples.push(s);
        }
    }
    samples
}

/// Median of the finite values.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_and_failed_boots() {
        let out = "noise\n\
            BOOT-HOST thp=always shmem_thp=advise\n\
            BOOT-INIT name=ours t0=10.00 t=11.25 rss=71680 guestram=65536 mem=private\n\
            BOOT-END name=ours t0=10.00 t=11.60 status=0\n\
            BOOT-END name=qemu t0=12.00 t=12.10 status=1\n";
        let s = parse(out);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].memory, "private");
        assert_eq!(
            (s[0].thp_anon.as_str(), s[0].thp_shmem.as_str()),
            ("always", "advise")
        );
        assert_eq!(s[1].thp_shmem, "advise");
        assert!((s[0].to_init_s - 1.25).abs() < 1e-9);
        assert!((s[0].total_s - 1.6).abs() < 1e-9);
        assert_eq!(s[0].rss_total_kib, 71680);
        assert_eq!(s[0].rss_guest_ram_kib, 65536);
        assert_eq!(s[0].status, 0);
        assert!(s[1].to_init_s.is_nan());
        assert_eq!(s[1].status, 1);
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, f64::NAN, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![f64::NAN]), None);
    }
}
