// SPDX-License-Identifier: Apache-2.0
//! Unit tests for the parsers, PVM detection and classification on fake host trees.

use std::fs;
use std::path::Path;

use super::host::{kconfig_value, parse_cpu_flags, parse_meminfo_hugepages, virt_extension};
use super::probes::{KvmInfo, REQUIRED_CAPS};
use super::*;

const CPUINFO_PVM: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\n\
flags\t\t: fpu vme de pse tsc msr pae cx16 hypervisor avx2\n\nprocessor\t: 1\n\
vendor_id\t: GenuineIntel\nflags\t\t: fpu vme de pse tsc msr pae cx16 hypervisor avx2\n";
const CPUINFO_AMD: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\n\
flags\t\t: fpu vme svm npt lm\n";

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    if let Some(dir) = p.parent() {
        fs::create_dir_all(dir).unwrap();
    }
    fs::write(p, text).unwrap();
}

fn kvm_info(all_caps: bool) -> KvmInfo {
    KvmInfo {
        api_version: 12,
        caps: REQUIRED_CAPS
            .iter()
            .enumerate()
            .map(|(i, (_, n))| (*n, all_caps || i != 1))
            .collect(),
        max_vcpus: 1024,
        nr_vcpus: 2,
        create_vm: Ok(()),
    }
}

/// The build machine: PVM built in, no vmx/svm, no IOMMU, no hugepages.
fn pvm_tree() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    write(r, "proc/cpuinfo", CPUINFO_PVM);
    write(r, "proc/sys/kernel/osrelease", "6.18.44-fc\n");
    write(
        r,
        "boot/config-6.18.44-fc",
        "CONFIG_KVM=y\n# CONFIG_KVM_INTEL is not set\nCONFIG_KVM_PVM=y\n# CONFIG_VFIO is not set\n",
    );
    write(r, "sys/module/kvm_pvm/parameters/pvm_native", "Y\n");
    write(r, "sys/module/kvm/parameters/halt_poll_ns", "200000\n");
    write(
        r,
        "proc/meminfo",
        "MemTotal: 1 kB\nHugePages_Total:       0\nHugePages_Free:        0\nHugepagesize:       2048 kB\n",
    );
    t
}

/// A lab host: AMD with svm, kvm_amd (nested, npt), one IOMMU group with remapping.
fn lab_tree() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    write(r, "proc/cpuinfo", CPUINFO_AMD);
    write(r, "sys/module/kvm_amd/parameters/nested", "1\n");
    write(r, "sys/module/kvm_amd/parameters/npt", "Y\n");
    fs::create_dir_all(r.join("sys/kernel/iommu_groups/0/devices")).unwrap();
    fs::create_dir_all(r.join("sys/class/iommu/dmar0/intel-iommu")).unwrap();
    write(r, "sys/class/iommu/dmar0/intel-iommu/ecap", "f00f5e\n");
    write(
        r,
        "proc/interrupts",
        "           CPU0\n 24:  1  IR-PCI-MSI-0000:00:02.0  0-edge  nvme0q0\n",
    );
    write(
        r,
        "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages",
        "512\n",
    );
    write(
        r,
        "sys/kernel/mm/transparent_hugepage/shmem_enabled",
        "always within_size [advise] never deny force\n",
    );
    t
}

#[test]
fn shmem_thp_never_warns_with_the_fix() {
    let t = pvm_tree();
    write(
        t.path(),
        "sys/kernel/mm/transparent_hugepage/shmem_enabled",
        "always within_size advise [never] deny force\n",
    );
    let c = checks::shmem_thp(&HostRoot::new(t.path()));
    assert_eq!(c.status, Status::Warn);
    assert!(c.detail.contains("shmem_enabled=never"), "{}", c.detail);
    let fix = c.fix.unwrap();
    assert!(
        fix.contains("echo advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled"),
        "{fix}"
    );
    assert!(fix.contains("hugepages=on"), "{fix}");
}

#[test]
fn cpu_flags_union_and_extension() {
    let flags = parse_cpu_flags(CPUINFO_PVM);
    assert!(flags.contains("hypervisor") && flags.contains("cx16"));
    assert_eq!(virt_extension(&flags), None);
    assert_eq!(
        virt_extension(&parse_cpu_flags(CPUINFO_AMD)),
        Some(CpuVendor::Amd)
    );
    let intel = "flags : fpu vmx ept\n";
    assert_eq!(
        virt_extension(&parse_cpu_flags(intel)),
        Some(CpuVendor::Intel)
    );
    // `vmx flags` (a separate cpuinfo key on Intel) must not count as the flag list.
    assert_eq!(
        virt_extension(&parse_cpu_flags("vmx flags\t: vnmi ept\n")),
        None
    );
}

#[test]
fn meminfo_hugepages() {
    let m = "MemTotal: 10 kB\nHugePages_Total:     512\nHugePages_Free:      500\n\
             HugePages_Rsvd: 0\nHugepagesize:       2048 kB\n";
    assert_eq!(
        parse_meminfo_hugepages(m),
        Some(host::HugePages {
            total: 512,
            free: 500,
            size_kib: 2048
        })
    );
    assert_eq!(parse_meminfo_hugepages("MemTotal: 10 kB\n"), None);
}

#[test]
fn kconfig_values() {
    let c = "CONFIG_KVM_PVM=y\n# CONFIG_KVM_PVM_DEBUG is not set\n# CONFIG_VFIO is not set\n\
             CONFIG_TUN=m\nCONFIG_LOCALVERSION=\"-x\"\n";
    assert_eq!(kconfig_value(c, "KVM_PVM").as_deref(), Some("y"));
    assert_eq!(kconfig_value(c, "KVM_PVM_DEBUG").as_deref(), Some("n"));
    assert_eq!(kconfig_value(c, "VFIO").as_deref(), Some("n"));
    assert_eq!(kconfig_value(c, "TUN").as_deref(), Some("m"));
    assert_eq!(kconfig_value(c, "LOCALVERSION").as_deref(), Some("-x"));
    assert_eq!(kconfig_value(c, "KVM"), None);
}

#[test]
fn pvm_detected_from_fake_root() {
    let t = pvm_tree();
    let facts = HostFacts::gather(&HostRoot::new(t.path()));
    assert_eq!(facts.virt_extension(), None);
    assert!(facts.is_guest());
    assert_eq!(facts.vendor_module, None);
    assert_eq!(facts.pvm_signals.len(), 2, "{:?}", facts.pvm_signals);
    assert!(facts.pvm_signals[1].contains("/boot/config-6.18.44-fc"));
    assert_eq!(
        classify_kvm(&facts, Some(&kvm_info(true))),
        KvmKind::Software {
            backend: SoftwareKvm::Pvm
        }
    );
    assert_eq!(classify_kvm(&facts, None), KvmKind::Unavailable);
}

#[test]
fn pvm_detected_from_config_alone_or_missing_flags() {
    let t = pvm_tree();
    fs::remove_dir_all(t.path().join("sys/module/kvm_pvm")).unwrap();
    let facts = HostFacts::gather(&HostRoot::new(t.path()));
    assert_eq!(facts.pvm_signals.len(), 1);
    let info = kvm_info(true);
    assert_eq!(
        classify_kvm(&facts, Some(&info)),
        KvmKind::Software {
            backend: SoftwareKvm::Pvm
        }
    );
    // No config either: KVM answers without vmx/svm -> still software.
    fs::remove_file(t.path().join("boot/config-6.18.44-fc")).unwrap();
    let facts = HostFacts::gather(&HostRoot::new(t.path()));
    assert!(facts.pvm_signals.is_empty());
    assert_eq!(
        classify_kvm(&facts, Some(&info)),
        KvmKind::Software {
            backend: SoftwareKvm::Unknown
        }
    );
}

#[test]
fn hardware_detected_and_api_version_required() {
    let t = lab_tree();
    let facts = HostFacts::gather(&HostRoot::new(t.path()));
    assert_eq!(facts.vendor_module, Some(CpuVendor::Amd));
    let mut info = kvm_info(true);
    assert_eq!(
        classify_kvm(&facts, Some(&info)),
        KvmKind::Hardware {
            vendor: CpuVendor::Amd
        }
    );
    info.api_version = 11;
    assert_eq!(classify_kvm(&facts, Some(&info)), KvmKind::Unavailable);
}

#[test]
fn lab_tree_vendor_vfio_and_hugepage_checks() {
    let t = lab_tree();
    let root = HostRoot::new(t.path());
    let facts = HostFacts::gather(&root);
    let kind = classify_kvm(&facts, Some(&kvm_info(true)));
    let v = checks::vendor_module(&root, &facts, kind);
    assert!(v.iter().all(|c| c.status == Status::Pass), "{v:?}");
    assert!(v[2].detail.contains("npt=1"));
    let vfio = checks::vfio(&root, &facts);
    let get = |n: &str| vfio.iter().find(|c| c.name == n).unwrap().clone();
    assert_eq!(get("iommu-groups").status, Status::Pass);
    assert!(get("iommu-groups").detail.starts_with("1 IOMMU groups"));
    assert_eq!(get("irq-remapping").status, Status::Pass);
    assert_eq!(get("vfio-container").status, Status::Warn);
    assert_eq!(checks::hugepages(&root).status, Status::Pass);
    // The lab host advises shmem THP, as a tuned host does.
    let thp = checks::shmem_thp(&root);
    assert_eq!(thp.status, Status::Pass, "{thp:?}");
    assert!(
        thp.detail.contains("shmem_enabled=advise"),
        "{}",
        thp.detail
    );

    // Remapping capable (ECAP bit 3) but no IR-* chips: WARN that says why.
    fs::write(t.path().join("proc/interrupts"), " 24: 1 PCI-MSI nvme\n").unwrap();
    let ir = checks::vfio(&root, &facts).pop().unwrap();
    assert_eq!(ir.status, Status::Warn);
    assert!(ir.detail.contains("ECAP.IR"), "{}", ir.detail);
}

#[test]
fn pvm_tree_report_without_kvm_device() {
    let t = pvm_tree();
    let report = check_host_at(&HostRoot::new(t.path()));
    assert_eq!(report.kvm, KvmKind::Unavailable);
    assert!(!report.direct_boot);
    assert_eq!(report.exit_code(), 1);
    assert!(
        report.verdict.contains("use lab mode"),
        "{}",
        report.verdict
    );
    let dev = report.get("kvm-device").unwrap();
    assert_eq!(dev.status, Status::Fail);
    assert!(dev.fix.as_deref().unwrap().contains("modprobe kvm_intel"));
    assert_eq!(report.get("cpu-virt").unwrap().status, Status::Fail);
    let irq = report.get("irq-remapping").unwrap();
    assert!(irq.detail.contains("CONFIG_IRQ_REMAP") || irq.detail.contains("cannot determine"));
    assert_eq!(report.get("hugepages").unwrap().status, Status::Warn);
    let thp = report.get("shmem-thp").unwrap();
    assert_eq!(thp.status, Status::Warn, "no THP files in this tree");
    assert!(thp.fix.as_deref().unwrap().contains("hugepages=on"));
    let vfio = report.get("vfio-container").unwrap();
    assert!(
        vfio.detail.contains("without CONFIG_VFIO"),
        "{}",
        vfio.detail
    );
}

#[test]
fn verdict_names_missing_caps() {
    let v = verdict(
        KvmKind::Hardware {
            vendor: CpuVendor::Intel,
        },
        Some(&kvm_info(false)),
        false,
    );
    assert!(v.contains("KVM_CAP_IRQFD") && v.contains("lab mode"), "{v}");
}

#[test]
fn json_shape_and_text_alignment() {
    let kind = serde_json::to_value(KvmKind::Software {
        backend: SoftwareKvm::Pvm,
    })
    .unwrap();
    assert_eq!(
        kind,
        serde_json::json!({"kind": "software", "backend": "pvm"})
    );
    let report = HostReport {
        checks: vec![
            Check::pass("a", "one"),
            Check::warn("longer-name", "two", "do x"),
        ],
        kvm: KvmKind::Unavailable,
        direct_boot: false,
        verdict: "use lab mode".into(),
    };
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["checks"][1]["status"], "WARN");
    assert_eq!(json["checks"][0]["fix"], serde_json::Value::Null);
    let text = report.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "[PASS] a:           one");
    assert_eq!(lines[1], "[WARN] longer-name: two");
    assert_eq!(lines[2], "                    fix: do x");
    assert_eq!(lines[3], "verdict: use lab mode");
}

#[test]
fn seccomp_is_reported_with_the_process_mode() {
    use super::probes::SeccompInfo;
    let ok = checks::seccomp(&Ok(SeccompInfo {
        mode: 0,
        kill_process: true,
    }));
    assert_eq!(ok.status, Status::Pass);
    assert!(ok.detail.contains("SECCOMP_RET_KILL_PROCESS") && ok.detail.ends_with("Seccomp: 0"));
    let old = checks::seccomp(&Ok(SeccompInfo {
        mode: 0,
        kill_process: false,
    }));
    assert_eq!(old.status, Status::Warn);
    let none = checks::seccomp(&Err(std::io::Error::from_raw_os_error(libc::EINVAL)));
    assert_eq!(none.status, Status::Warn);
    assert!(none.fix.unwrap().contains("CONFIG_SECCOMP_FILTER"));
    // This host: the kernel answers.
    let here = super::probes::probe_seccomp().unwrap();
    assert!(here.mode == 0 || here.mode == 2, "mode {}", here.mode);
}

#[test]
fn cpu_pressure_passes_with_psi_and_warns_without() {
    let t = pvm_tree();
    let root = HostRoot::new(t.path());
    let none = checks::cpu_pressure(&root);
    assert_eq!(
        none.status,
        Status::Warn,
        "no proc/pressure/cpu in this tree"
    );
    assert!(none.fix.unwrap().contains("psi=1"));
    write(
        t.path(),
        "proc/pressure/cpu",
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=12\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
    );
    assert_eq!(checks::cpu_pressure(&root).status, Status::Pass);
}
