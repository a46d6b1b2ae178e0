// SPDX-License-Identifier: Apache-2.0
//! Read-only host facts from procfs/sysfs/devfs, relative to a root directory so tests
//! can point the probes at a fake tree.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::error::{Error, Result};

/// A filesystem root under which `proc/`, `sys/`, `dev/` and `boot/` are looked up.
#[derive(Debug, Clone)]
pub struct HostRoot {
    root: PathBuf,
}

impl HostRoot {
    /// A root at `root` (`/` for the real host).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Absolute path of `rel` (e.g. `"proc/cpuinfo"`) under this root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Whether `rel` exists under this root.
    pub fn exists(&self, rel: &str) -> bool {
        self.path(rel).exists()
    }

    /// Reads `rel` as a string.
    pub fn read(&self, rel: &str) -> Result<String> {
        let path = self.path(rel);
        fs::read_to_string(&path).map_err(|source| Error::HostFile { path, source })
    }

    /// Reads `rel`, trimmed, or `None` when it cannot be read.
    pub fn read_opt(&self, rel: &str) -> Option<String> {
        self.read(rel).ok().map(|s| s.trim().to_string())
    }

    /// Names of the entries of directory `rel` (sorted); empty when it does not exist.
    pub fn list(&self, rel: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.path(rel))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    fn is_real_root(&self) -> bool {
        self.root == Path::new("/")
    }
}

/// CPU vendor of a hardware virtualization extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuVendor {
    /// Intel VT-x (`vmx`, `kvm_intel`).
    Intel,
    /// AMD-V (`svm`, `kvm_amd`).
    Amd,
}

impl CpuVendor {
    /// KVM vendor module name.
    pub fn module(self) -> &'static str {
        match self {
            CpuVendor::Intel => "kvm_intel",
            CpuVendor::Amd => "kvm_amd",
        }
    }

    /// `/proc/cpuinfo` flag of the extension.
    pub fn flag(self) -> &'static str {
        match self {
            CpuVendor::Intel => "vmx",
            CpuVendor::Amd => "svm",
        }
    }

    /// Module parameter that reports nested paging.
    pub fn paging_param(self) -> &'static str {
        match self {
            CpuVendor::Intel => "ept",
            CpuVendor::Amd => "npt",
        }
    }
}

/// The CPU flags line(s) of a `/proc/cpuinfo` text: the union over all processors.
pub fn parse_cpu_flags(cpuinfo: &str) -> BTreeSet<String> {
    cpuinfo
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim() == "flags")
        .flat_map(|(_, v)| v.split_whitespace().map(str::to_string))
        .collect()
}

/// The virtualization extension advertised by a set of CPU flags.
pub fn virt_extension(flags: &BTreeSet<String>) -> Option<CpuVendor> {
    if flags.contains("vmx") {
        Some(CpuVendor::Intel)
    } else if flags.contains("svm") {
        Some(CpuVendor::Amd)
    } else {
        None
    }
}

/// Hugepage facts from `/proc/meminfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HugePages {
    /// `HugePages_Total`.
    pub total: u64,
    /// `HugePages_Free`.
    pub free: u64,
    /// `Hugepagesize` in KiB.
    pub size_kib: u64,
}

/// Parses the hugepage lines of `/proc/meminfo`; `None` when `HugePages_Total` is missing.
pub fn parse_meminfo_hugepages(meminfo: &str) -> Option<HugePages> {
    let field = |name: &str| -> Option<u64> {
        meminfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            if k.trim() != name {
                return None;
            }
            v.split_whitespace().next()?.parse().ok()
        })
    };
    Some(HugePages {
        total: field("HugePages_Total")?,
        free: field("HugePages_Free").unwrap_or(0),
        size_kib: field("Hugepagesize").unwrap_or(0),
    })
}

/// The value of `CONFIG_<name>` in a kernel config text: `Some("y")`, `Some("m")`, ...,
/// `Some("n")` for `# CONFIG_X is not set`, `None` when absent.
pub fn kconfig_value(config: &str, name: &str) -> Option<String> {
    let key = format!("CONFIG_{name}");
    config.lines().find_map(|l| {
        let l = l.trim();
        if let Some(v) = l.strip_prefix(&key).and_then(|r| r.strip_prefix('=')) {
            return Some(v.trim_matches('"').to_string());
        }
        let rest = l.strip_prefix("# ")?.strip_prefix(&key)?;
        (rest.trim() == "is not set").then(|| "n".to_string())
    })
}

/// A kernel build configuration and where it was read from.
#[derive(Debug, Clone)]
pub struct KernelConfig {
    /// Where the text came from.
    pub source: String,
    /// The config text.
    pub text: String,
}

impl KernelConfig {
    /// Whether `CONFIG_<name>` is `y` or `m`.
    pub fn enabled(&self, name: &str) -> Option<bool> {
        kconfig_value(&self.text, name).map(|v| v == "y" || v == "m")
    }
}

/// Loads the running kernel's config from `boot/config-<release>` or `proc/config.gz`
/// (the latter through `gzip -dc`, only on the real root).
pub fn kernel_config(root: &HostRoot) -> Option<KernelConfig> {
    if let Some(release) = root.read_opt("proc/sys/kernel/osrelease") {
        let rel = format!("boot/config-{release}");
        if let Ok(text) = root.read(&rel) {
            return Some(KernelConfig {
                source: format!("/{rel}"),
                text,
            });
        }
    }
    let gz = root.path("proc/config.gz");
    if root.is_real_root() && gz.exists() {
        match Command::new("gzip").arg("-dc").arg(&gz).output() {
            Ok(out) if out.status.success() => {
                return Some(KernelConfig {
                    source: "/proc/config.gz".into(),
                    text: String::from_utf8_lossy(&out.stdout).into_owned(),
                });
            }
            Ok(out) => tracing::debug!(status = %out.status, "gzip -dc /proc/config.gz failed"),
            Err(e) => tracing::debug!(error = %e, "cannot run gzip for /proc/config.gz"),
        }
    }
    None
}

/// Reads a boolean-ish module parameter (`Y`/`N`/`1`/`0`).
pub fn module_param_bool(root: &HostRoot, module: &str, param: &str) -> Option<bool> {
    let v = root.read_opt(&format!("sys/module/{module}/parameters/{param}"))?;
    match v.as_str() {
        "Y" | "y" | "1" => Some(true),
        "N" | "n" | "0" => Some(false),
        _ => None,
    }
}

/// Everything the checks learn from files (no ioctls).
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// Union of CPU flags.
    pub cpu_flags: BTreeSet<String>,
    /// Whether `/proc/cpuinfo` could be read.
    pub cpuinfo_read: bool,
    /// `vendor_id` of the first CPU.
    pub cpu_vendor_id: Option<String>,
    /// Loaded hardware KVM vendor module, if any.
    pub vendor_module: Option<CpuVendor>,
    /// Evidence that `/dev/kvm` is served by PVM (empty when none).
    pub pvm_signals: Vec<String>,
    /// Kernel build config, when found.
    pub kconfig: Option<KernelConfig>,
}

impl HostFacts {
    /// Gathers the facts under `root`.
    pub fn gather(root: &HostRoot) -> Self {
        let cpuinfo = root.read("proc/cpuinfo");
        if let Err(e) = &cpuinfo {
            tracing::warn!(error = %e, "cannot read cpuinfo");
        }
        let cpuinfo_read = cpuinfo.is_ok();
        let cpuinfo = cpuinfo.unwrap_or_default();
        let cpu_flags = parse_cpu_flags(&cpuinfo);
        let cpu_vendor_id = cpuinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "vendor_id").then(|| v.trim().to_string())
        });
        let vendor_module = [CpuVendor::Intel, CpuVendor::Amd]
            .into_iter()
            .find(|v| root.exists(&format!("sys/module/{}", v.module())));
        let kconfig = kernel_config(root);
        let pvm_signals = pvm_signals(root, kconfig.as_ref());
        tracing::debug!(?vendor_module, ?pvm_signals, "host facts");
        Self {
            cpu_flags,
            cpuinfo_read,
            cpu_vendor_id,
            vendor_module,
            pvm_signals,
            kconfig,
        }
    }

    /// The hardware extension advertised in `/proc/cpuinfo`.
    pub fn virt_extension(&self) -> Option<CpuVendor> {
        virt_extension(&self.cpu_flags)
    }

    /// Whether the CPU reports running under a hypervisor.
    pub fn is_guest(&self) -> bool {
        self.cpu_flags.contains("hypervisor")
    }

    /// The vendor implied by `vendor_id`, for fix texts.
    pub fn cpu_vendor_hint(&self) -> Option<CpuVendor> {
        match self.cpu_vendor_id.as_deref() {
            Some("GenuineIntel") => Some(CpuVendor::Intel),
            Some("AuthenticAMD") | Some("HygonGenuine") => Some(CpuVendor::Amd),
            _ => None,
        }
    }
}

/// Evidence that KVM is provided by PVM (the pagetable-based software virtualization
/// vendor module) rather than VT-x/AMD-V.
pub fn pvm_signals(root: &HostRoot, kconfig: Option<&KernelConfig>) -> Vec<String> {
    let mut signals = Vec::new();
    if root.exists("sys/module/kvm_pvm") {
        signals.push("/sys/module/kvm_pvm present".to_string());
    }
    if let Some(cfg) = kconfig {
        if let Some(v @ ("y" | "m")) = kconfig_value(&cfg.text, "KVM_PVM").as_deref() {
            signals.push(format!("CONFIG_KVM_PVM={v} in {}", cfg.source));
        }
    }
    signals
}
