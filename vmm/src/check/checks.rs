// SPDX-License-Identifier: Apache-2.0
//! Builders that turn facts and probe results into [`Check`] lines.

use std::io::ErrorKind;
use std::path::Path;

use super::host::{self, CpuVendor, HostFacts, HostRoot};
use super::probes::{self, KvmInfo};
use super::{Check, KvmKind, SoftwareKvm, LAB_MODE_FIX};
use crate::error::{Error, Result};

fn firmware_fix(facts: &HostFacts) -> String {
    let ext = match facts.cpu_vendor_hint() {
        Some(CpuVendor::Intel) => "VT-x",
        Some(CpuVendor::Amd) => "AMD-V (SVM)",
        None => "VT-x/AMD-V",
    };
    let nested = if facts.is_guest() {
        " (this host is itself a VM: the outer hypervisor must expose vmx/svm)"
    } else {
        ""
    };
    format!("enable {ext} in firmware{nested}, or {LAB_MODE_FIX}")
}

/// `vmx`/`svm` in `/proc/cpuinfo`.
pub fn cpu_virt(facts: &HostFacts) -> Check {
    const NAME: &str = "cpu-virt";
    if !facts.cpuinfo_read {
        return Check::fail(NAME, "cannot read /proc/cpuinfo", "mount procfs at /proc");
    }
    match facts.virt_extension() {
        Some(v) => Check::pass(NAME, format!("{} flag present", v.flag())),
        None => {
            let guest = if facts.is_guest() {
                " (CPU reports `hypervisor`: running as a guest)"
            } else {
                ""
            };
            Check::fail(
                NAME,
                format!("no vmx/svm in /proc/cpuinfo flags{guest}"),
                firmware_fix(facts),
            )
        }
    }
}

fn kvm_open_fix(e: &Error, facts: &HostFacts) -> String {
    let module = match facts.cpu_vendor_hint() {
        Some(v) => v.module(),
        None => "kvm_intel or kvm_amd",
    };
    match e {
        Error::HostFile { source, .. } if source.kind() == ErrorKind::NotFound => {
            format!("modprobe {module} (needs vmx/svm), or {LAB_MODE_FIX}")
        }
        Error::HostFile { source, .. } if source.kind() == ErrorKind::PermissionDenied => {
            "add the user to the `kvm` group (usermod -aG kvm $USER, then log in again) \
             or fix the node: chown root:kvm /dev/kvm && chmod 660 /dev/kvm"
                .to_string()
        }
        _ => format!(
            "check that /dev/kvm is the KVM character device (10:232) and {module} is loaded"
        ),
    }
}

/// `/dev/kvm` open, API version, capabilities, vCPU limit, VM creation.
pub fn kvm(out: &mut Vec<Check>, path: &Path, probe: &Result<KvmInfo>, facts: &HostFacts) {
    let info = match probe {
        Ok(info) => info,
        Err(e) => {
            out.push(Check::fail(
                "kvm-device",
                e.to_string(),
                kvm_open_fix(e, facts),
            ));
            return;
        }
    };
    out.push(Check::pass(
        "kvm-device",
        format!("{} opened read-write", path.display()),
    ));
    out.push(if info.api_version == probes::KVM_API_VERSION {
        Check::pass("kvm-api", "KVM_GET_API_VERSION = 12")
    } else {
        Check::fail(
            "kvm-api",
            format!("KVM_GET_API_VERSION = {} (expected 12)", info.api_version),
            "the node is not a KVM device or the kernel is unsupported; use a mainline KVM kernel",
        )
    });
    for (name, ok) in &info.caps {
        out.push(if *ok {
            Check::pass(name, "supported")
        } else {
            Check::fail(
                name,
                "not supported",
                format!("use a kernel whose KVM provides {name} (x86 KVM has had it since 2.6.x), or {LAB_MODE_FIX}"),
            )
        });
    }
    let vcpus = format!(
        "KVM_CAP_MAX_VCPUS = {}, KVM_CAP_NR_VCPUS (recommended) = {}",
        info.max_vcpus, info.nr_vcpus
    );
    out.push(if info.max_vcpus >= 2 {
        Check::pass("kvm-max-vcpus", vcpus)
    } else {
        Check::warn(
            "kvm-max-vcpus",
            vcpus,
            "multi-vCPU guests need KVM_CAP_MAX_VCPUS >= 2",
        )
    });
    out.push(match &info.create_vm {
        Ok(()) => Check::pass("kvm-create-vm", "KVM_CREATE_VM works"),
        Err(e) => Check::fail(
            "kvm-create-vm",
            format!("KVM_CREATE_VM failed: {e}"),
            "check dmesg for the vendor module's error (e.g. VT-x locked off by firmware)",
        ),
    });
}

/// Hardware vs software backing of `/dev/kvm`.
pub fn kvm_backend(facts: &HostFacts, kind: KvmKind) -> Check {
    const NAME: &str = "kvm-backend";
    match kind {
        KvmKind::Hardware { vendor } => Check::pass(
            NAME,
            format!(
                "hardware-backed ({} via {})",
                vendor.flag(),
                vendor.module()
            ),
        ),
        KvmKind::Software { backend } => {
            let mut evidence = facts.pvm_signals.clone();
            if facts.virt_extension().is_none() {
                evidence.push("no vmx/svm in /proc/cpuinfo".into());
            }
            if facts.vendor_module.is_none() {
                evidence.push("no kvm_intel/kvm_amd module".into());
            }
            let what = match backend {
                SoftwareKvm::Pvm => "PVM software virtualization",
                SoftwareKvm::Unknown => "software (not hardware-backed)",
            };
            Check::fail(
                NAME,
                format!(
                    "{what} [{}]: only PVM-enlightened guests run at speed; a stock Linux \
                     kernel runs in KVM's instruction emulator and dies with `emulation \
                     failure`, so it cannot boot here",
                    evidence.join("; ")
                ),
                LAB_MODE_FIX,
            )
        }
        KvmKind::Unavailable => Check::fail(
            NAME,
            if facts.pvm_signals.is_empty() {
                "no usable /dev/kvm".to_string()
            } else {
                format!(
                    "no usable /dev/kvm; even when opened it would be PVM software \
                     virtualization [{}], which cannot boot a stock Linux kernel",
                    facts.pvm_signals.join("; ")
                )
            },
            format!("see kvm-device; or {LAB_MODE_FIX}"),
        ),
    }
}

/// Vendor module, nested virtualization, nested paging.
pub fn vendor_module(root: &HostRoot, facts: &HostFacts, kind: KvmKind) -> Vec<Check> {
    let Some(vendor) = facts.vendor_module else {
        let why = match kind {
            KvmKind::Software {
                backend: SoftwareKvm::Pvm,
            } => "none loaded (/dev/kvm is served by kvm_pvm)",
            _ => "neither kvm_intel nor kvm_amd is loaded",
        };
        let na = "not applicable: no hardware KVM vendor module";
        return vec![
            Check::fail(
                "kvm-vendor-module",
                why,
                match facts.virt_extension() {
                    Some(v) => format!("modprobe {}", v.module()),
                    None => firmware_fix(facts),
                },
            ),
            Check::warn(
                "kvm-nested",
                na,
                "only needed to run hypervisors inside guests; lab mode does not need it",
            ),
            Check::warn(
                "kvm-nested-paging",
                na,
                "use lab mode (its kvm_amd runs nested guests)",
            ),
        ];
    };
    let m = vendor.module();
    let mut v = vec![Check::pass("kvm-vendor-module", format!("{m} loaded"))];
    v.push(match host::module_param_bool(root, m, "nested") {
        Some(true) => Check::pass("kvm-nested", format!("{m} nested=1")),
        Some(false) => Check::warn(
            "kvm-nested",
            format!("{m} nested=0 (guests cannot run their own KVM)"),
            format!(
                "modprobe -r {m} && modprobe {m} nested=1 (only needed for hypervisors in guests)"
            ),
        ),
        None => Check::warn(
            "kvm-nested",
            format!("cannot read /sys/module/{m}/parameters/nested"),
            "only needed to run hypervisors inside guests",
        ),
    });
    let p = vendor.paging_param();
    v.push(match host::module_param_bool(root, m, p) {
        Some(true) => Check::pass("kvm-nested-paging", format!("{m} {p}=1")),
        Some(false) => Check::warn(
            "kvm-nested-paging",
            format!("{m} {p}=0: shadow paging, every guest page-table update exits"),
            format!("modprobe -r {m} && modprobe {m} {p}=1 (needs CPU support)"),
        ),
        None => Check::warn(
            "kvm-nested-paging",
            format!("cannot read /sys/module/{m}/parameters/{p}"),
            "check that the CPU supports EPT/NPT",
        ),
    });
    v
}

/// `io_uring_disabled` sysctl and a NOP round trip.
pub fn io_uring(root: &HostRoot) -> Check {
    const NAME: &str = "io-uring";
    let sysctl = root.read_opt("proc/sys/kernel/io_uring_disabled");
    let sysctl_txt = match sysctl.as_deref() {
        Some(v) => format!("io_uring_disabled={v}"),
        None => "io_uring_disabled absent (kernel < 6.6)".into(),
    };
    let fix_sysctl = "sysctl kernel.io_uring_disabled=0 (1 allows only kernel.io_uring_group)";
    if sysctl.as_deref() == Some("2") {
        return Check::fail(
            NAME,
            format!("{sysctl_txt}: disabled for everyone"),
            fix_sysctl,
        );
    }
    match probes::probe_io_uring() {
        Ok(()) => Check::pass(NAME, format!("{sysctl_txt}; probe ring NOP completed")),
        Err(e) => Check::fail(
            NAME,
            format!("{sysctl_txt}; probe failed: {e}"),
            format!("{fix_sysctl}; check seccomp/container policy and RLIMIT_MEMLOCK"),
        ),
    }
}

const IOMMU_FIX: &str = "boot with intel_iommu=on iommu=pt (AMD: amd_iommu=on iommu=pt) and \
                         modprobe vfio-pci, or use lab mode (intel-iommu + vfio-pci in the lab host)";

/// VFIO container, vfio-pci, IOMMU groups, interrupt remapping.
pub fn vfio(root: &HostRoot, facts: &HostFacts) -> Vec<Check> {
    let mut out = Vec::new();
    let no_vfio_cfg = facts
        .kconfig
        .as_ref()
        .and_then(|c| c.enabled("VFIO").map(|on| (on, c.source.clone())))
        .filter(|(on, _)| !on)
        .map(|(_, src)| format!(" (kernel built without CONFIG_VFIO per {src})"))
        .unwrap_or_default();
    out.push(if root.exists("dev/vfio/vfio") {
        Check::pass("vfio-container", "/dev/vfio/vfio present")
    } else {
        Check::warn(
            "vfio-container",
            format!("/dev/vfio/vfio missing{no_vfio_cfg}: no device passthrough"),
            IOMMU_FIX,
        )
    });
    out.push(
        if root.exists("sys/module/vfio_pci") || root.exists("sys/bus/pci/drivers/vfio-pci") {
            Check::pass("vfio-pci", "vfio-pci driver registered")
        } else {
            Check::warn(
                "vfio-pci",
                format!("vfio-pci not loaded{no_vfio_cfg}"),
                "modprobe vfio-pci, or use lab mode",
            )
        },
    );
    let groups = root.list("sys/kernel/iommu_groups").len();
    let iommus = root.list("sys/class/iommu");
    out.push(if groups > 0 {
        Check::pass(
            "iommu-groups",
            format!("{groups} IOMMU groups; IOMMUs: {}", iommus.join(" ")),
        )
    } else {
        Check::warn(
            "iommu-groups",
            "no IOMMU groups in /sys/kernel/iommu_groups (IOMMU off or absent)",
            IOMMU_FIX,
        )
    });
    out.push(irq_remapping(root, facts, &iommus));
    out
}

/// Interrupt remapping, from signals that do not depend on dmesg.
fn irq_remapping(root: &HostRoot, facts: &HostFacts, iommus: &[String]) -> Check {
    const NAME: &str = "irq-remapping";
    let fix = "enable the IOMMU with interrupt remapping (intel_iommu=on, firmware \
               DMAR/IVRS), or use lab mode (intel-iommu,intremap=on)";
    // With remapping active, IRQ chips are named IR-IO-APIC / IR-PCI-MSI.
    let interrupts = root.read_opt("proc/interrupts").unwrap_or_default();
    if interrupts.split_whitespace().any(|t| t.starts_with("IR-")) {
        return Check::pass(NAME, "active (IR-* interrupt chips in /proc/interrupts)");
    }
    // Intel VT-d: ECAP bit 3 is Interrupt Remapping support.
    let ir_capable: Vec<&String> = iommus
        .iter()
        .filter(|i| {
            root.read_opt(&format!("sys/class/iommu/{i}/intel-iommu/ecap"))
                .and_then(|h| u64::from_str_radix(h.trim_start_matches("0x"), 16).ok())
                .is_some_and(|ecap| ecap & (1 << 3) != 0)
        })
        .collect();
    if !ir_capable.is_empty() {
        return Check::warn(
            NAME,
            format!(
                "IOMMU {} supports it (ECAP.IR) but no IR-* chips in /proc/interrupts: \
                 probably disabled (intremap=off?)",
                ir_capable.len()
            ),
            fix,
        );
    }
    if let Some(cfg) = &facts.kconfig {
        if cfg.enabled("IRQ_REMAP") == Some(false) {
            return Check::warn(
                NAME,
                format!(
                    "not available: kernel built without CONFIG_IRQ_REMAP ({})",
                    cfg.source
                ),
                fix,
            );
        }
    }
    let why = if iommus.is_empty() {
        "cannot determine: no IOMMU in /sys/class/iommu and no IR-* chips in /proc/interrupts"
    } else {
        "cannot determine: no IR-* chips in /proc/interrupts and no VT-d ECAP.IR bit"
    };
    Check::warn(NAME, why, fix)
}

/// Reserved hugepages from `/proc/meminfo` and `/sys/kernel/mm/hugepages`.
pub fn hugepages(root: &HostRoot) -> Check {
    const NAME: &str = "hugepages";
    let meminfo = root
        .read_opt("proc/meminfo")
        .and_then(|m| host::parse_meminfo_hugepages(&m));
    let pools: Vec<(String, u64)> = root
        .list("sys/kernel/mm/hugepages")
        .into_iter()
        .map(|d| {
            let n = root
                .read_opt(&format!("sys/kernel/mm/hugepages/{d}/nr_hugepages"))
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            (d.trim_start_matches("hugepages-").to_string(), n)
        })
        .collect();
    let pools_txt = pools
        .iter()
        .map(|(size, n)| format!("{size}={n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let total = meminfo.as_ref().map_or(0, |h| h.total);
    let detail = match &meminfo {
        Some(h) => format!(
            "HugePages_Total={} Free={} ({} kB default); pools: {pools_txt}",
            h.total, h.free, h.size_kib
        ),
        None => format!("no HugePages_Total in /proc/meminfo; pools: {pools_txt}"),
    };
    if total > 0 || pools.iter().any(|(_, n)| *n > 0) {
        Check::pass(NAME, detail)
    } else {
        Check::warn(
            NAME,
            format!("none reserved: {detail}"),
            "optional (guest RAM then uses 4 KiB/THP pages): \
             echo 1024 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
        )
    }
}

/// Whether shared (memfd) guest RAM, which vhost-user devices need, gets transparent huge
/// pages: `shmem_enabled` must be `advise` (the VMM advises every mapping), `always` or
/// `within_size`. Without them every fault maps 4 KiB, and a guest boots up to 2× slower
/// under nested paging; hugetlbfs (`--memory ...,hugepages=on`) is the other way.
pub fn shmem_thp(root: &HostRoot) -> Check {
    const NAME: &str = "shmem-thp";
    const FIX: &str = "echo advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled                        (or reserve hugepages and run with --memory SIZE,hugepages=on)";
    let Some(text) = root.read_opt("sys/kernel/mm/transparent_hugepage/shmem_enabled") else {
        return Check::warn(
            NAME,
            "no transparent huge pages for shmem (kernel without CONFIG_TRANSPARENT_HUGEPAGE):              shared guest RAM (vhost-user) is mapped in 4 KiB pages",
            "reserve hugepages and run with --memory SIZE,hugepages=on",
        );
    };
    let policy = crate::memory::selected_policy(&text).unwrap_or_else(|| text.trim().into());
    match policy.as_str() {
        "advise" | "always" | "within_size" | "force" => Check::pass(
            NAME,
            format!("shmem_enabled={policy}: shared guest RAM (vhost-user) gets huge pages"),
        ),
        _ => Check::warn(
            NAME,
            format!(
                "shmem_enabled={policy}: shared guest RAM (vhost-user) is mapped in 4 KiB                  pages, which slows guests (boot up to 2x under nested paging); private RAM                  is not affected"
            ),
            FIX,
        ),
    }
}

/// Pressure stall information for the CPU (`/proc/pressure/cpu`): adaptive busy-polling
/// (the in-VMM queues and both backends) pauses while it shows the CPUs contended.
pub fn cpu_pressure(root: &HostRoot) -> Check {
    const NAME: &str = "cpu-pressure";
    match root.read_opt("proc/pressure/cpu") {
        Some(text) if text.starts_with("some ") => Check::pass(
            NAME,
            "PSI available: adaptive busy-polling pauses while tasks wait for a CPU",
        ),
        _ => Check::warn(
            NAME,
            "no CPU pressure information (kernel without CONFIG_PSI, or booted with psi=0): \
             adaptive busy-polling keeps polling even when it holds a CPU others need",
            "boot with psi=1; or give backends --poll-max-us 0 where CPUs are scarce",
        ),
    }
}

/// memfd_create + MAP_SHARED, needed for vhost-user guest memory.
pub fn memfd() -> Check {
    match probes::probe_memfd() {
        Ok(()) => Check::pass(
            "memfd-shared",
            "memfd_create + MAP_SHARED write visible through the fd",
        ),
        Err(e) => Check::fail(
            "memfd-shared",
            e.to_string(),
            "vhost-user needs memfd-backed shared guest memory: use a kernel with \
             CONFIG_MEMFD_CREATE and allow memfd_create/mmap in seccomp",
        ),
    }
}

/// Seccomp filters with `SECCOMP_RET_KILL_PROCESS`, for sandboxing the VMM's and the
/// backends' threads.
pub fn seccomp(probe: &std::io::Result<probes::SeccompInfo>) -> Check {
    const NAME: &str = "seccomp";
    const FIX: &str = "use a kernel built with CONFIG_SECCOMP and CONFIG_SECCOMP_FILTER (4.14 or \
                       later), and a container runtime that allows the seccomp() system call";
    match probe {
        Ok(info) if info.kill_process => Check::pass(
            NAME,
            format!(
                "seccomp filters available (SECCOMP_RET_KILL_PROCESS); this process: Seccomp: {}",
                info.mode
            ),
        ),
        Ok(info) => Check::warn(
            NAME,
            format!(
                "seccomp present (mode {}) but SECCOMP_RET_KILL_PROCESS is not available",
                info.mode
            ),
            FIX,
        ),
        Err(e) => Check::warn(NAME, format!("seccomp unavailable: {e}"), FIX),
    }
}

/// TUN and vhost-net.
pub fn net(root: &HostRoot, facts: &HostFacts) -> Vec<Check> {
    let tun_path = root.path("dev/net/tun");
    let tun = match probes::open_rw(&tun_path) {
        Ok(()) => Check::pass("tun", "/dev/net/tun opened read-write"),
        Err(e) => Check::warn(
            "tun",
            e.to_string(),
            "modprobe tun; mknod /dev/net/tun c 10 200; TAP networking needs it",
        ),
    };
    let no_vhost_cfg = facts
        .kconfig
        .as_ref()
        .filter(|c| c.enabled("VHOST_NET") == Some(false))
        .map(|c| format!(" (kernel built without CONFIG_VHOST_NET per {})", c.source))
        .unwrap_or_default();
    let vhost = if root.exists("dev/vhost-net") {
        Check::pass("vhost-net", "/dev/vhost-net present")
    } else {
        Check::warn(
            "vhost-net",
            format!("/dev/vhost-net missing{no_vhost_cfg} (optional: in-kernel net backend)"),
            "modprobe vhost_net; vhost-user-net backends do not need it",
        )
    };
    vec![tun, vhost]
}
