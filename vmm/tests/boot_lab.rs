// SPDX-License-Identifier: Apache-2.0
//! End-to-end: `vmm run` boots a stock Debian kernel inside the lab host (or
//! directly, where `vmm check` says hardware KVM works) and the guest reports
//! what it sees.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use lab::{guest_initramfs, Cpio, LabHost, LAB_GUEST_INITRD, LAB_GUEST_KERNEL};

static SERIAL: Mutex<()> = Mutex::new(());

const VMM_IN_LAB: &str = "/lab/bin/vmm";

/// Where the VMM can boot Linux: directly on hardware KVM, else inside the lab.
fn direct_mode() -> bool {
    Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(["check", "--json"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Output of one guest boot: the VMM's exit status and everything printed.
struct GuestRun {
    vmm_status: i32,
    output: String,
}

/// The kernel image format to boot.
#[derive(Clone, Copy, PartialEq)]
enum KernelFormat {
    /// Debian's vmlinuz.
    BzImage,
    /// The same kernel as an ELF vmlinux (extracted by scripts/build-images.sh).
    Elf,
}

const LAB_GUEST_VMLINUX: &str = "/lab/vmlinux";

/// Boots the guest with `guest_script` as its /test.sh and `vmm_args`.
fn boot_guest(guest_script: &str, vmm_args: &str) -> Option<GuestRun> {
    boot_guest_with(KernelFormat::BzImage, guest_script, vmm_args)
}

fn boot_guest_with(format: KernelFormat, guest_script: &str, vmm_args: &str) -> Option<GuestRun> {
    let images = lab::test_images()?;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let initrd = guest_initramfs(
        &images,
        guest_script,
        false,
        Cpio::new(),
        &dir.path().join("guest.cpio"),
    )
    .expect("guest initramfs");
    if direct_mode() {
        let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
            .arg("run")
            .arg("--kernel")
            .arg(match format {
                KernelFormat::BzImage => images.kernel.clone(),
                KernelFormat::Elf => images.kernel.with_file_name("vmlinux"),
            })
            .arg("--initramfs")
            .arg(&initrd)
            .args(vmm_args.split_whitespace())
            .output()
            .expect("spawn vmm");
        return Some(GuestRun {
            vmm_status: out.status.code().unwrap_or(-1),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    let kernel = match format {
        KernelFormat::BzImage => LAB_GUEST_KERNEL,
        KernelFormat::Elf => LAB_GUEST_VMLINUX,
    };
    let script = format!(
        "RUST_LOG=${{RUST_LOG:-vmm=debug}} {VMM_IN_LAB} run --kernel {kernel} --initramfs {LAB_GUEST_INITRD} {vmm_args} 2>&1\n\
         echo VMM-EXIT-STATUS=$?\n"
    );
    let mut lab = LabHost::new(&images)
        .binary(env!("CARGO_BIN_EXE_vmm"), "/lab/bin")
        .with_guest(&initrd);
    if format == KernelFormat::Elf {
        lab = lab.file(images.kernel.with_file_name("vmlinux"), LAB_GUEST_VMLINUX);
    }
    let run = lab
        .script(script)
        .timeout(Duration::from_secs(150))
        .run()
        .unwrap_or_else(|e| panic!("lab run: {e}"));
    let status = run
        .console
        .lines()
        .find_map(|l| l.trim().strip_prefix("VMM-EXIT-STATUS="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no VMM exit status on the lab console:\n{}", run.console));
    eprintln!("lab run took {:.1?}", run.duration);
    Some(GuestRun {
        vmm_status: status,
        output: run.console,
    })
}

#[test]
fn boots_two_vcpus_and_powers_off() {
    let script = "grep -c ^processor /proc/cpuinfo | sed 's/^/CPUS=/'\n\
                  grep MemTotal /proc/meminfo | awk '{print \"MEMKB=\" $2}'\n\
                  echo GUEST-MARKER-7f3a\n";
    let Some(run) = boot_guest(script, "--cpus 2 --memory 512M") else {
        return;
    };
    let out = &run.output;
    assert!(out.contains("GUEST-MARKER-7f3a"), "no marker:\n{out}");
    let value = |key: &str| -> u64 {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in output:\n{out}"))
    };
    assert_eq!(value("CPUS="), 2, "{out}");
    let mem_kib = value("MEMKB=");
    // MemTotal excludes what the kernel reserves for itself: expect 400–512 MiB.
    assert!(
        (400 * 1024..=512 * 1024).contains(&mem_kib),
        "MemTotal {mem_kib} kB is not consistent with 512 MiB:\n{out}"
    );
    assert_eq!(
        run.vmm_status, 0,
        "vmm did not exit 0 after poweroff:\n{out}"
    );
}

#[test]
fn boots_an_elf_vmlinux() {
    let Some(run) = boot_guest_with(KernelFormat::Elf, "echo ELF-GUEST-UP\n", "--cpus 2") else {
        return;
    };
    assert!(run.output.contains("ELF-GUEST-UP"), "{}", run.output);
    assert_eq!(run.vmm_status, 0, "{}", run.output);
}

#[test]
fn guest_panic_makes_vmm_fail_with_a_message() {
    // Writing 'c' to sysrq-trigger crashes the kernel; panic=-1 reboots at once.
    let script = "echo 1 > /proc/sys/kernel/sysrq\necho c > /proc/sysrq-trigger\nsleep 5\n";
    let Some(run) = boot_guest(script, "--cpus 1 --memory 256M") else {
        return;
    };
    assert_eq!(
        run.vmm_status, 3,
        "expected the panic exit code:\n{}",
        run.output
    );
    assert!(
        run.output
            .contains("vmm: guest kernel panicked: Kernel panic - not syncing"),
        "no panic message from vmm:\n{}",
        run.output
    );
}

#[test]
fn check_inside_the_lab_reports_hardware_svm_and_vfio() {
    let Some(images) = lab::test_images() else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let run = LabHost::new(&images)
        .binary(env!("CARGO_BIN_EXE_vmm"), "/lab/bin")
        .script(format!(
            "{VMM_IN_LAB} check\necho CHECK-STATUS=$?\n\
             echo CHECK-JSON=$({VMM_IN_LAB} check --json | tr -d '\\n')\n"
        ))
        .timeout(Duration::from_secs(120))
        .run()
        .unwrap_or_else(|e| panic!("lab run: {e}"));
    let console = &run.console;
    let line = |key: &str| {
        console
            .lines()
            .find_map(|l| l.trim().strip_prefix(key).map(str::to_owned))
            .unwrap_or_else(|| panic!("no {key} in:\n{console}"))
    };
    assert_eq!(
        line("CHECK-STATUS="),
        "0",
        "direct boot should be possible:\n{console}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&line("CHECK-JSON=")).expect("check --json output");
    assert_eq!(report["direct_boot"], true, "{report:#}");
    assert_eq!(report["kvm"]["kind"], "hardware", "{report:#}");
    assert_eq!(report["kvm"]["vendor"], "amd", "{report:#}");
    let status = |name: &str| {
        report["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == name))
            .map(|c| c["status"].as_str().unwrap_or_default().to_string())
            .unwrap_or_else(|| panic!("no check {name} in {report:#}"))
    };
    assert_eq!(status("cpu-virt"), "PASS");
    assert_eq!(status("vfio-container"), "PASS");
    assert_eq!(status("iommu-groups"), "PASS");
    // Debian's kernel reports CPU pressure: the busy-polling gate works in the lab.
    assert_eq!(status("cpu-pressure"), "PASS");
}
