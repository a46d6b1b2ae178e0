// SPDX-License-Identifier: Apache-2.0
//! `vmm check`: host validation in the spirit of `virt-host-validate`.
//!
//! Each check is a [`Check`] line (PASS / WARN / FAIL, detail, fix). The report also
//! classifies `/dev/kvm` ([`KvmKind`]) and decides whether this host can boot a stock
//! Linux guest directly ([`HostReport::direct_boot`]) or needs lab mode.
//!
//! File-based probes read below a [`HostRoot`] so tests can run them on a fake tree.

mod checks;
pub mod host;
pub mod probes;

use std::fmt;

use serde::Serialize;

pub use host::{CpuVendor, HostFacts, HostRoot};
use probes::KvmInfo;

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// Works as the VMM needs.
    Pass,
    /// Optional feature missing or degraded.
    Warn,
    /// Required feature missing.
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Short stable name (e.g. `kvm-device`, `KVM_CAP_IRQFD`).
    pub name: String,
    /// Outcome.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// How to fix it; `None` when the check passed.
    pub fix: Option<String>,
}

impl Check {
    fn pass(name: &str, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Pass,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            status: Status::Warn,
            fix: Some(fix.into()),
            ..Self::pass(name, detail)
        }
    }

    fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            status: Status::Fail,
            ..Self::warn(name, detail, fix)
        }
    }
}

/// Software implementations behind `/dev/kvm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SoftwareKvm {
    /// PVM: pagetable-based virtualization without VT-x/AMD-V (`kvm_pvm`).
    Pvm,
    /// KVM answers but nothing hardware-backed is visible.
    Unknown,
}

/// What backs `/dev/kvm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KvmKind {
    /// VT-x or AMD-V through `kvm_intel` / `kvm_amd`.
    Hardware {
        /// CPU vendor of the extension.
        vendor: CpuVendor,
    },
    /// Software virtualization: runs only enlightened guests at speed.
    Software {
        /// Which implementation.
        backend: SoftwareKvm,
    },
    /// `/dev/kvm` missing, not openable, or not answering API version 12.
    Unavailable,
}

/// The result of [`check_host`].
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    /// All checks in display order.
    pub checks: Vec<Check>,
    /// What backs `/dev/kvm`.
    pub kvm: KvmKind,
    /// Hardware-backed KVM with every required capability: stock Linux boots directly.
    pub direct_boot: bool,
    /// One-line conclusion; says "use lab mode" when `direct_boot` is false.
    pub verdict: String,
}

impl HostReport {
    /// Process exit code for `vmm check`: 0 when direct boot works, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        if self.direct_boot {
            0
        } else {
            1
        }
    }

    /// The first check called `name`.
    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

impl fmt::Display for HostReport {
    /// Aligned `[PASS] name: detail` lines, indented `fix:` lines, then the verdict.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0) + 1;
        let indent = " ".repeat("[PASS] ".len() + width + 1);
        for c in &self.checks {
            let label = format!("{}:", c.name);
            writeln!(f, "[{}] {label:<width$} {}", c.status, c.detail)?;
            if let Some(fix) = &c.fix {
                writeln!(f, "{indent}fix: {fix}")?;
            }
        }
        write!(f, "verdict: {}", self.verdict)
    }
}

/// Fix text pointing at lab mode.
pub const LAB_MODE_FIX: &str = "use lab mode: run the VMM inside the lab host \
     (QEMU TCG with nested SVM + intel-iommu, kvm_amd and vfio-pci loaded there)";

/// Validates the real host (root `/`).
pub fn check_host() -> HostReport {
    check_host_at(&HostRoot::new("/"))
}

/// Validates the host whose procfs/sysfs/devfs live below `root`. The io_uring and
/// memfd probes always run against the running kernel.
pub fn check_host_at(root: &HostRoot) -> HostReport {
    let facts = HostFacts::gather(root);
    let kvm_path = root.path("dev/kvm");
    let kvm_probe = probes::probe_kvm(&kvm_path);
    if let Err(e) = &kvm_probe {
        tracing::info!(error = %e, "KVM probe failed");
    }
    let kvm_info = kvm_probe.as_ref().ok();
    let kind = classify_kvm(&facts, kvm_info);
    let direct_boot = matches!(kind, KvmKind::Hardware { .. })
        && kvm_info.is_some_and(|k| k.complete() && k.create_vm.is_ok());

    let mut out = Vec::new();
    out.push(checks::cpu_virt(&facts));
    checks::kvm(&mut out, &kvm_path, &kvm_probe, &facts);
    out.push(checks::kvm_backend(&facts, kind));
    out.extend(checks::vendor_module(root, &facts, kind));
    out.push(checks::io_uring(root));
    out.extend(checks::vfio(root, &facts));
    out.push(checks::hugepages(root));
    out.push(checks::shmem_thp(root));
    out.push(checks::cpu_pressure(root));
    out.push(checks::memfd());
    out.push(checks::seccomp(&probes::probe_seccomp()));
    out.extend(checks::net(root, &facts));

    let verdict = verdict(kind, kvm_info, direct_boot);
    HostReport {
        checks: out,
        kvm: kind,
        direct_boot,
        verdict,
    }
}

/// Decides what backs `/dev/kvm` from file facts and the ioctl probe (`None` when
/// `/dev/kvm` could not be opened).
pub fn classify_kvm(facts: &HostFacts, kvm: Option<&KvmInfo>) -> KvmKind {
    if kvm
        .filter(|k| k.api_version == probes::KVM_API_VERSION)
        .is_none()
    {
        return KvmKind::Unavailable;
    }
    let ext = facts.virt_extension();
    let vendor_live = facts.vendor_module.is_some() && facts.vendor_module == ext;
    let pvm_module = facts.pvm_signals.iter().any(|s| s.contains("kvm_pvm"));
    match ext {
        // A loaded kvm_intel/kvm_amd on a CPU with the matching flag serves /dev/kvm
        // (KVM allows one vendor module at a time).
        Some(vendor) if vendor_live => KvmKind::Hardware { vendor },
        _ if pvm_module => KvmKind::Software {
            backend: SoftwareKvm::Pvm,
        },
        Some(vendor) => KvmKind::Hardware { vendor },
        // No vmx/svm but /dev/kvm answers: software. CONFIG_KVM_PVM names it.
        None if !facts.pvm_signals.is_empty() => KvmKind::Software {
            backend: SoftwareKvm::Pvm,
        },
        None => KvmKind::Software {
            backend: SoftwareKvm::Unknown,
        },
    }
}

fn verdict(kind: KvmKind, kvm: Option<&KvmInfo>, direct_boot: bool) -> String {
    const LAB: &str = "use lab mode (QEMU TCG lab host with nested SVM + intel-iommu) \
                       to boot stock Linux guests";
    if direct_boot {
        let vendor = match kind {
            KvmKind::Hardware { vendor } => vendor.module(),
            _ => "?",
        };
        return format!(
            "direct mode OK: hardware-backed KVM ({vendor}) with API 12 and all required \
             capabilities; the VMM can boot stock Linux here"
        );
    }
    let reason = match (kind, kvm) {
        (
            KvmKind::Software {
                backend: SoftwareKvm::Pvm,
            },
            _,
        ) => "/dev/kvm is PVM software virtualization (no VT-x/AMD-V); a stock Linux guest \
             cannot boot on it"
            .to_string(),
        (KvmKind::Software { .. }, _) => {
            "/dev/kvm is not hardware-backed (no vmx/svm, no kvm_intel/kvm_amd)".to_string()
        }
        (KvmKind::Unavailable, _) => "/dev/kvm is not usable".to_string(),
        (KvmKind::Hardware { .. }, Some(k)) => {
            let mut missing: Vec<String> = k
                .caps
                .iter()
                .filter(|(_, ok)| !ok)
                .map(|(n, _)| n.to_string())
                .collect();
            if k.api_version != probes::KVM_API_VERSION {
                missing.push(format!("API version 12 (got {})", k.api_version));
            }
            if let Err(e) = &k.create_vm {
                missing.push(format!("KVM_CREATE_VM ({e})"));
            }
            format!("hardware KVM lacks {}", missing.join(", "))
        }
        (KvmKind::Hardware { .. }, None) => "/dev/kvm is not usable".to_string(),
    };
    format!("no direct boot: {reason}; {LAB}")
}

#[cfg(test)]
mod tests;
