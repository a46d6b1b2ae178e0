// SPDX-License-Identifier: Apache-2.0
//! The comparison matrix: tiers × workloads, and which tiers this build and host can run.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

/// How an I/O path is provided to the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    /// fio/iperf3 on the (lab) host itself: the reference for every ratio.
    Native,
    /// fio on the (lab) host against the lab's NVMe: the reference for `vfio-nvme`.
    NativeNvme,
    /// Our VMM with no I/O device (boot only).
    Vmm,
    /// QEMU with the same kernel/initramfs (boot only; the reference for boot times).
    Qemu,
    /// Guest virtio-blk through our `vhost-user-blk` backend.
    VhostUserBlk,
    /// Guest NVMe driver on the lab's NVMe passed through with VFIO.
    VfioNvme,
    /// Guest virtio-net through our `vhost-user-net` backend over a TAP.
    VhostUserNet,
    /// Devices emulated in the VMM: NVMe (`--disk path=..,model=nvme`) and e1000
    /// (`--net tap=..,model=e1000`, guest on Debian's generic kernel).
    Emulated,
    /// virtio devices served by the VMM process itself: virtio-blk (`--disk path=..`) and
    /// virtio-net (`--net tap=..`, when the VMM has it).
    VirtioInVmm,
}

impl Tier {
    /// Every tier, in report order.
    pub const ALL: [Tier; 9] = [
        Tier::Native,
        Tier::NativeNvme,
        Tier::Vmm,
        Tier::Qemu,
        Tier::VhostUserBlk,
        Tier::VfioNvme,
        Tier::VhostUserNet,
        Tier::Emulated,
        Tier::VirtioInVmm,
    ];

    /// CLI/report name.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Native => "native",
            Tier::NativeNvme => "native-nvme",
            Tier::Vmm => "vmm",
            Tier::Qemu => "qemu",
            Tier::VhostUserBlk => "vhost-user-blk",
            Tier::VfioNvme => "vfio-nvme",
            Tier::VhostUserNet => "vhost-user-net",
            Tier::Emulated => "emulated",
            Tier::VirtioInVmm => "virtio-in-vmm",
        }
    }

    /// The I/O path, in a few words, for the report.
    pub fn path(self) -> &'static str {
        match self {
            Tier::Native => {
                "fio on a page-cached file in the (lab) host's /tmp; iperf3 over its loopback"
            }
            Tier::NativeNvme => "fio with O_DIRECT on the lab's NVMe, in the lab host",
            Tier::Vmm => "our VMM booting a guest without I/O devices",
            Tier::Qemu => "QEMU booting the same kernel and initramfs",
            Tier::VhostUserBlk => "guest virtio-blk → our vhost-user-blk backend process → file",
            Tier::VfioNvme => "the lab's NVMe passed through to the guest with VFIO",
            Tier::VhostUserNet => "guest virtio-net → our vhost-user-net backend process → TAP",
            Tier::Emulated => "NVMe and e1000 emulated in the VMM (every register access exits)",
            Tier::VirtioInVmm => "virtio-blk and virtio-net served by VMM threads → file, TAP",
        }
    }

    /// Parses a CLI name.
    pub fn from_name(s: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.name() == s)
    }

    /// Whether the workload kind makes sense on this tier.
    pub fn runs(self, kind: Kind) -> bool {
        use Kind::*;
        match self {
            Tier::Native => matches!(kind, Block | Net),
            Tier::NativeNvme => kind == Block,
            Tier::Vmm | Tier::Qemu => kind == Boot,
            Tier::VhostUserBlk | Tier::VfioNvme => matches!(kind, Block | Boot),
            Tier::VhostUserNet => matches!(kind, Net | Boot),
            Tier::Emulated | Tier::VirtioInVmm => true,
        }
    }

    /// The tier whose cells are the reference for this tier's ratios.
    pub fn reference(self, kind: Kind) -> Option<Tier> {
        match (self, kind) {
            (Tier::Native | Tier::NativeNvme | Tier::Qemu, _) => None,
            (Tier::VfioNvme, Kind::Block) => Some(Tier::NativeNvme),
            (_, Kind::Boot) => Some(Tier::Qemu),
            _ => Some(Tier::Native),
        }
    }

    /// True for tiers that boot a guest for their I/O workloads.
    pub fn is_guest(self) -> bool {
        !matches!(
            self,
            Tier::Native | Tier::NativeNvme | Tier::Vmm | Tier::Qemu
        )
    }
}

/// What a workload exercises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// fio.
    Block,
    /// iperf3.
    Net,
    /// Guest boot-to-init.
    Boot,
}

/// One column of the matrix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// A built-in fio job.
    Fio {
        /// Report name.
        name: String,
        /// `--rw`.
        rw: String,
        /// `--bs`.
        bs: String,
        /// `--iodepth`.
        iodepth: u32,
        /// `--rwmixread` for mixed jobs.
        rwmixread: Option<u32>,
    },
    /// The user's fio job file (`--fio-job`); `${VMM_PERF_FILE}`, `${VMM_PERF_SIZE}` and
    /// `${VMM_PERF_RUNTIME}` are set in its environment.
    FioJob {
        /// Report name (`fio-job-<file stem>`).
        name: String,
        /// The job file on this machine.
        path: PathBuf,
    },
    /// iperf3 TCP or UDP.
    Iperf {
        /// Report name.
        name: String,
        /// Extra client arguments (`-R`, `-u -b 1G`, or the user's `--iperf-args`).
        args: String,
    },
    /// Guest boot-to-init.
    Boot,
}

impl Workload {
    /// Report name.
    pub fn name(&self) -> &str {
        match self {
            Workload::Fio { name, .. }
            | Workload::FioJob { name, .. }
            | Workload::Iperf { name, .. } => name,
            Workload::Boot => "boot",
        }
    }

    /// Kind.
    pub fn kind(&self) -> Kind {
        match self {
            Workload::Fio { .. } | Workload::FioJob { .. } => Kind::Block,
            Workload::Iperf { .. } => Kind::Net,
            Workload::Boot => Kind::Boot,
        }
    }

    fn fio(name: &str, rw: &str, bs: &str, iodepth: u32, mix: Option<u32>) -> Workload {
        Workload::Fio {
            name: name.into(),
            rw: rw.into(),
            bs: bs.into(),
            iodepth,
            rwmixread: mix,
        }
    }

    fn iperf(name: &str, args: &str) -> Workload {
        Workload::Iperf {
            name: name.into(),
            args: args.into(),
        }
    }

    /// The built-in workloads, in report order.
    pub fn builtin() -> Vec<Workload> {
        vec![
            Workload::fio("randread-4k-qd1", "randread", "4k", 1, None),
            Workload::fio("randread-4k-qd32", "randread", "4k", 32, None),
            Workload::fio("randwrite-4k-qd1", "randwrite", "4k", 1, None),
            Workload::fio("randwrite-4k-qd32", "randwrite", "4k", 32, None),
            Workload::fio("read-128k", "read", "128k", 8, None),
            Workload::fio("write-128k", "write", "128k", 8, None),
            Workload::fio("randrw-70-30-4k-qd32", "randrw", "4k", 32, Some(70)),
            Workload::iperf("tcp-tx", ""),
            Workload::iperf("tcp-rx", "-R"),
            Workload::iperf("udp", "-u -b 1G"),
            Workload::Boot,
        ]
    }
}

/// Whether a tier can run here, and why not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "lowercase")]
pub enum Availability {
    /// It can run.
    Available,
    /// It cannot; the reason says what is missing.
    Missing(String),
}

/// What the probes found: the VMM's `run --help` text and the binaries next to it.
#[derive(Clone, Debug, Default)]
pub struct Probe {
    /// `vmm run --help` output (empty if the VMM is missing).
    pub vmm_run_help: String,
    /// Path of our VMM, if it exists.
    pub vmm: Option<PathBuf>,
    /// Path of `vhost-user-blk`, if it exists.
    pub vhost_user_blk: Option<PathBuf>,
    /// Path of `vhost-user-net`, if it exists.
    pub vhost_user_net: Option<PathBuf>,
    /// Whether the lab runner's QEMU exists (lab mode only).
    pub qemu: bool,
    /// True in lab mode.
    pub lab: bool,
    /// What `vmm run --kernel /nonexistent --net tap=x` printed: says "not built yet" while
    /// in-VMM virtio-net is missing.
    pub net_tap_probe: String,
    /// Debian's generic kernel and its `e1000.ko` (for the e1000 guest), if unpacked.
    pub generic_kernel: Option<(PathBuf, PathBuf)>,
}

/// What `vmm run --net tap=NAME` (in-VMM virtio-net) says. The VMM loads the kernel before it
/// builds NICs, so a real kernel is needed to reach the NIC check (`--kernel /nonexistent`
/// stops at the kernel); if the NIC is built, the guest has no initramfs and panics at once
/// (`panic=-1`), and the probe is stopped after 20 s anyway.
fn probe_net_tap(vmm: &Path) -> String {
    use std::process::Stdio;
    let kernel = lab::repo_root().join(".cache/images/vmlinuz");
    let Ok(mut child) = Command::new(vmm)
        .arg("run")
        .arg("--kernel")
        .arg(&kernel)
        .args(["--memory", "64M", "--cpus", "1", "--cmdline", "panic=-1"])
        .args(["--net", "tap=vmmperfprobe0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    else {
        return String::new();
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    child
        .wait_with_output()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .unwrap_or_default()
}

/// Debian's generic kernel and its `e1000.ko` under `root` (`.cache/generic/root`, unpacked by
/// `scripts/build-images.sh`): the cloud kernel has no e1000 driver.
pub fn generic_kernel(root: &Path) -> Option<(PathBuf, PathBuf)> {
    let boot = std::fs::read_dir(root.join("boot")).ok()?;
    let vmlinuz = boot.flatten().map(|e| e.path()).find(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
    })?;
    let modules = std::fs::read_dir(root.join("lib/modules"))
        .ok()?
        .flatten()
        .next()?
        .path();
    let ko = modules.join("kernel/drivers/net/ethernet/intel/e1000/e1000.ko");
    ko.is_file().then_some((vmlinuz, ko))
}

impl Probe {
    /// Runs the probes for `vmm` and the backend binaries in `bin_dir`.
    pub fn run(vmm: &Path, bin_dir: &Path, lab: bool) -> Probe {
        let exists = |p: PathBuf| p.is_file().then_some(p);
        let help = Command::new(vmm)
            .args(["run", "--help"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let net_tap_probe = probe_net_tap(vmm);
        Probe {
            vmm_run_help: help,
            vmm: exists(vmm.to_path_buf()),
            vhost_user_blk: exists(bin_dir.join("vhost-user-blk")),
            vhost_user_net: exists(bin_dir.join("vhost-user-net")),
            qemu: lab::qemu_binary().is_some(),
            lab,
            net_tap_probe,
            generic_kernel: generic_kernel(&lab::repo_root().join(".cache/generic/root")),
        }
    }

    fn has_option(&self, opt: &str) -> bool {
        self.vmm_run_help
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .any(|w| w == opt)
    }

    /// Decides whether `tier` can run.
    pub fn availability(&self, tier: Tier) -> Availability {
        use Availability::*;
        let need_vmm = || {
            if self.vmm.is_none() {
                Some("our `vmm` binary was not found (build it or pass --vmm)".to_string())
            } else if self.vmm_run_help.is_empty() {
                Some("`vmm run --help` printed nothing".to_string())
            } else {
                None
            }
        };
        let need_qemu = || {
            (self.lab && !self.qemu).then(|| {
                "lab mode needs qemu-system-x86_64 (apt-get install qemu-system-x86)".to_string()
            })
        };
        let missing = |parts: Vec<Option<String>>| {
            let reasons: Vec<String> = parts.into_iter().flatten().collect();
            if reasons.is_empty() {
                Available
            } else {
                Missing(reasons.join("; "))
            }
        };
        match tier {
            Tier::Native => missing(vec![need_qemu()]),
            Tier::NativeNvme => missing(vec![
                need_qemu(),
                (!self.lab).then(|| {
                    "direct mode: no NVMe device is configured for benchmarking (lab mode only)"
                        .to_string()
                }),
            ]),
            Tier::Vmm | Tier::Qemu => missing(vec![need_qemu(), need_vmm()]),
            Tier::VhostUserBlk => missing(vec![
                need_qemu(),
                need_vmm(),
                (!self.has_option("--disk")).then(|| {
                    "`vmm run --help` has no --disk option (branch virtio not merged)".into()
                }),
                self.vhost_user_blk.is_none().then(|| {
                    "no vhost-user-blk binary next to vmm (cargo build -p backends)".into()
                }),
            ]),
            Tier::VfioNvme => missing(vec![
                need_qemu(),
                need_vmm(),
                (!self.has_option("--device")).then(|| {
                    "`vmm run --help` has no --device option (branch vfio not merged)".into()
                }),
                (!self.lab).then(|| {
                    "direct mode: no NVMe device is configured for passthrough (lab mode only)"
                        .into()
                }),
            ]),
            Tier::VhostUserNet => missing(vec![
                need_qemu(),
                need_vmm(),
                (!self.has_option("--net"))
                    .then(|| "`vmm run --help` has no --net option (branch net not merged)".into()),
                self.vhost_user_net
                    .is_none()
                    .then(|| "no vhost-user-net binary next to vmm (branch net not merged)".into()),
            ]),
            Tier::Emulated | Tier::VirtioInVmm => missing(vec![
                need_qemu(),
                need_vmm(),
                (!self.has_option("--disk")).then(|| {
                    "`vmm run --help` has no --disk option (branch emulated not merged)".into()
                }),
            ]),
        }
    }

    /// Decides whether `tier` can run workloads of `kind`: the tier's own needs, then those of
    /// the kind's device (the e1000 guest kernel, the in-VMM virtio-net).
    pub fn availability_for(&self, tier: Tier, kind: Kind) -> Availability {
        let a = self.availability(tier);
        if a != Availability::Available || kind != Kind::Net {
            return a;
        }
        match tier {
            Tier::Emulated if self.generic_kernel.is_none() => Availability::Missing(
                "e1000 needs Debian's generic kernel under .cache/generic/root (scripts/build-images.sh)"
                    .into(),
            ),
            Tier::VirtioInVmm if self.net_tap_probe.contains("not built yet") => {
                Availability::Missing(
                    "in-VMM virtio-net (`--net tap=NAME`) is not built yet (`vmm run` says so)"
                        .into(),
                )
            }
            _ => a,
        }
    }
}

/// One cell of the plan.
#[derive(Clone, Debug, Serialize)]
pub struct PlannedCell {
    /// Tier.
    pub tier: Tier,
    /// Workload.
    pub workload: Workload,
}

/// The plan: the cells to run and the tiers that cannot run.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// Cells of available tiers, in run order.
    pub cells: Vec<PlannedCell>,
    /// Tiers that cannot run, with the reason; their cells are reported as missing.
    pub missing: Vec<(Tier, String)>,
    /// Cells of missing tiers (reported, not run).
    pub missing_cells: Vec<PlannedCell>,
}

/// Builds the plan from the chosen tiers and workloads and an availability function (per tier
/// and workload kind: a tier may run its block cells and miss its net ones). A tier with some
/// missing cells is listed in [`Plan::missing`] with the reasons, prefixed by the kinds.
pub fn plan(
    tiers: &[Tier],
    workloads: &[Workload],
    availability: impl Fn(Tier, Kind) -> Availability,
) -> Plan {
    let mut p = Plan {
        cells: Vec::new(),
        missing: Vec::new(),
        missing_cells: Vec::new(),
    };
    for &tier in tiers {
        let cells: Vec<PlannedCell> = workloads
            .iter()
            .filter(|w| tier.runs(w.kind()))
            .map(|w| PlannedCell {
                tier,
                workload: w.clone(),
            })
            .collect();
        let mut reasons: Vec<(Kind, String)> = Vec::new();
        let total = cells.len();
        for c in cells {
            let kind = c.workload.kind();
            match availability(tier, kind) {
                Availability::Available => p.cells.push(c),
                Availability::Missing(reason) => {
                    if !reasons.iter().any(|(k, _)| *k == kind) {
                        reasons.push((kind, reason));
                    }
                    p.missing_cells.push(c);
                }
            }
        }
        let missing = p.missing_cells.iter().filter(|c| c.tier == tier).count();
        if missing == 0 {
            continue;
        }
        let reason = if missing == total {
            let mut r: Vec<String> = reasons.into_iter().map(|(_, r)| r).collect();
            r.dedup();
            r.join("; ")
        } else {
            reasons
                .into_iter()
                .map(|(k, r)| format!("{} cells: {r}", kind_name(k)))
                .collect::<Vec<_>>()
                .join("; ")
        };
        p.missing.push((tier, reason));
    }
    p
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Block => "block",
        Kind::Net => "net",
        Kind::Boot => "boot",
    }
}
