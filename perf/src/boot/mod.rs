//! Guest boot-to-init benchmark: our VMM against QEMU with the same kernel,
//! initramfs, vCPUs and memory, measured in the same run, plus the VMM's own
//! resident memory beside the guest's.
//!
//! One shell script does the measuring so that both VMMs are timed by the
//! same clock in the same place: directly on a host with hardware KVM, or
//! inside the lab host otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::{io_err, Error, Result};

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
    /// The part of it that is guest RAM, KiB: our memfd mapping
    /// (`memfd:guest-ram` in smaps). QEMU's RAM is anonymous and not
    /// separable this way, so it reads 0 there.
    pub rss_guest_ram_kib: u64,
}

const QEMU: &str = "qemu-system-x86_64";

/// The shell function `measure NAME CMD...` used by [`script`]: runs CMD with its console on a
/// FIFO, prints `BOOT-INIT name=NAME t0= t= rss= guestram=` when the guest's init marker
/// appears and `BOOT-END name=NAME t0= t= status=` when CMD exits ([`parse`] reads them).
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
      ram=$(awk '/^[0-9a-f]+-[0-9a-f]+ / {{ g = ($0 ~ /memfd:guest-ram/) }} g && /^Rss:/ {{ s += $2 }} END {{ print s + 0 }}' /proc/$pid/smaps)
      echo "BOOT-INIT name=$name t0=$t0 t=$t1 rss=$rss guestram=$ram";;
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

/// The measuring script: `vmm_bin`, `kernel` and `initrd` are paths where the
/// script runs.
pub fn script(b: &BootBench, vmm_bin: &str, kernel: &str, initrd: &str) -> String {
    format!(
        "set -u\n{}i=0\nwhile [ $i -lt {} ]; do\n  measure ours {}\n  measure qemu {}\n  i=$((i+1))\ndone\n",
        measure_fn(),
        b.repeat,
        ours_cmd(b, vmm_bin, kernel, initrd),
        qemu_cmd(b, kernel, initrd)
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
    for line in output.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("BOOT-INIT ") {
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

impl BootBench {
    /// Runs the benchmark and returns every sample.
    pub fn run(&self) -> Result<(Vec<BootSample>, String)> {
        let images = lab::Images::ensure_default()
            .map_err(|e| Error::Backend(format!("lab images: {e}")))?;
        let dir = tempfile::tempdir().map_err(io_err("temp dir"))?;
        let initrd = lab::guest_initramfs(
            &images,
            "true\n",
            false,
            lab::Cpio::new(),
            &dir.path().join("guest.cpio"),
        )
        .map_err(|e| Error::Backend(format!("guest initramfs: {e}")))?;
        let output = match self.mode {
            Mode::Direct => {
                let s = script(
                    self,
                    &self.vmm.display().to_string(),
                    &images.kernel.display().to_string(),
                    &initrd.display().to_string(),
                );
                let out = Command::new("sh")
                    .arg("-c")
                    .arg(s)
                    .output()
                    .map_err(io_err("sh"))?;
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
            Mode::Lab => {
                let s = script(
                    self,
                    "/lab/bin/vmm",
                    lab::LAB_GUEST_KERNEL,
                    lab::LAB_GUEST_INITRD,
                );
                let run = lab::LabHost::new(&images)
                    .binary(&self.vmm, "/lab/bin")
                    .with_guest(&initrd)
                    .script(s)
                    .timeout(Duration::from_secs(120 + 60 * self.repeat as u64))
                    .run()?;
                run.console
            }
        };
        Ok((parse(&output), output))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_and_failed_boots() {
        let out = "noise\n\
            BOOT-INIT name=ours t0=10.00 t=11.25 rss=71680 guestram=65536\n\
            BOOT-END name=ours t0=10.00 t=11.60 status=0\n\
            BOOT-END name=qemu t0=12.00 t=12.10 status=1\n";
        let s = parse(out);
        assert_eq!(s.len(), 2);
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
