// SPDX-License-Identifier: Apache-2.0
//! Bad `vmm run` input: each case must end with a clear one-line error and a
//! non-zero exit, never a panic. These run on any host (no guest boots).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Output};

fn vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .output()
        .expect("spawn vmm")
}

/// Asserts a failed run whose stderr mentions `needle` and shows no panic.
fn assert_fails_with(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "vmm panicked:\n{stderr}");
    assert!(
        stderr.contains(needle),
        "stderr lacks {needle:?}:\n{stderr}"
    );
}

/// Our own errors are exactly one line starting with `vmm: error:`.
fn assert_one_line_error(out: &Output, needle: &str) {
    assert_fails_with(out, needle);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected a one-line error:\n{stderr}");
    assert!(lines[0].starts_with("vmm: error: "), "{stderr}");
}

fn garbage_file(len: usize) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&vec![0xa5; len]).unwrap();
    f
}

#[test]
fn missing_kernel() {
    let out = vmm(&["run", "--kernel", "/nonexistent/vmlinuz"]);
    assert_one_line_error(&out, "cannot read kernel '/nonexistent/vmlinuz'");
}

#[test]
fn missing_initramfs() {
    let k = garbage_file(4096);
    let out = vmm(&[
        "run",
        "--kernel",
        k.path().to_str().unwrap(),
        "--initramfs",
        "/nope.cpio",
    ]);
    assert_one_line_error(&out, "cannot read initramfs '/nope.cpio'");
}

#[test]
fn garbage_kernel() {
    let k = garbage_file(64 * 1024);
    let out = vmm(&[
        "run",
        "--kernel",
        k.path().to_str().unwrap(),
        "--memory",
        "64M",
    ]);
    if kvm_unavailable(&out) {
        return;
    }
    assert_one_line_error(&out, "is neither a bzImage nor an ELF vmlinux");
}

#[test]
fn initramfs_larger_than_guest_memory() {
    let Ok(images) = lab::Images::ensure_default() else {
        panic!("guest images are needed for this test (scripts/build-images.sh)");
    };
    let big = tempfile::NamedTempFile::new().unwrap();
    big.as_file().set_len(256 << 20).unwrap();
    let out = vmm(&[
        "run",
        "--kernel",
        images.kernel.to_str().unwrap(),
        "--initramfs",
        big.path().to_str().unwrap(),
        "--memory",
        "128M",
    ]);
    if kvm_unavailable(&out) {
        return;
    }
    assert_one_line_error(&out, "give the guest more --memory");
}

#[test]
fn unknown_seccomp_mode() {
    let out = vmm(&["run", "--kernel", "/nonexistent", "--seccomp", "bogus"]);
    assert_one_line_error(&out, "--seccomp bogus: expected on, log or off");
}

#[test]
fn zero_cpus() {
    let out = vmm(&["run", "--kernel", "/nonexistent", "--cpus", "0"]);
    assert_one_line_error(&out, "--cpus must be at least 1");
}

#[test]
fn cpus_above_the_kvm_limit() {
    let k = garbage_file(4096);
    let out = vmm(&[
        "run",
        "--kernel",
        k.path().to_str().unwrap(),
        "--cpus",
        "255",
    ]);
    if kvm_unavailable(&out) {
        return;
    }
    assert_one_line_error(&out, "above this host's KVM limit");
    // Beyond what the option type holds at all: rejected by the parser.
    let out = vmm(&["run", "--kernel", "/k", "--cpus", "300"]);
    assert_fails_with(&out, "invalid value '300'");
}

#[test]
fn malformed_or_impossible_vcpu_placement() {
    for (cpus, needle) in [
        ("boot=2,affinity=[0@[0],0@[0]]", "vCPU 0 is given twice"),
        (
            "boot=2,affinity=[0@[4000]]",
            "host CPU 4000 is not available",
        ),
        (
            "boot=1,affinity=[0@[0],1@[0]]",
            "vCPU 1 does not exist (there are 1)",
        ),
        ("boot=2,affinity=[0@[0]", "expected INDEX@CPU"),
        ("boot=2,affinity=[0@[x]]", "expected INDEX@CPU"),
        (
            "boot=2,topology=1:2:1:1",
            "unknown option 'topology=1:2:1:1'",
        ),
        ("boot=two", "invalid value 'two' for 'boot'"),
    ] {
        let out = vmm(&["run", "--kernel", "/nonexistent", "--cpus", cpus]);
        assert_one_line_error(&out, needle);
    }
}

#[test]
fn memory_sizes() {
    let out = vmm(&["run", "--kernel", "/k", "--memory", "0"]);
    assert_fails_with(&out, "size must be greater than zero");
    for bad in ["12X", "lots", "-1G", "1G,hugepages=maybe", "1G,bogus=1"] {
        let out = vmm(&["run", "--kernel", "/k", &format!("--memory={bad}")]);
        assert_fails_with(&out, "invalid value");
        assert_eq!(out.status.code(), Some(2), "{bad}");
    }
}

#[test]
fn memory_larger_than_the_host() {
    let k = garbage_file(4096);
    let out = vmm(&[
        "run",
        "--kernel",
        k.path().to_str().unwrap(),
        "--memory",
        "64T",
    ]);
    assert_one_line_error(&out, "of guest memory requested but the host has only");
}

#[test]
fn unknown_flags_and_serial() {
    let out = vmm(&["run", "--kernel", "/k", "--frobnicate"]);
    assert_fails_with(&out, "unexpected argument '--frobnicate'");
    let out = vmm(&["run", "--kernel", "/k", "--serial", "tcp:1"]);
    assert_fails_with(&out, "invalid serial 'tcp:1'");
    let out = vmm(&["run"]);
    assert_fails_with(&out, "--kernel");
}

/// Cases that need /dev/kvm to get past VM creation print why they stop early.
fn kvm_unavailable(out: &Output) -> bool {
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("cannot open /dev/kvm") {
        eprintln!("SKIP: /dev/kvm cannot be opened on this host: {stderr}");
        return true;
    }
    false
}

/// `vmm run` with a readable (garbage) kernel and the given `--device` options.
fn run_with_devices(devices: &[&str]) -> Output {
    let k = garbage_file(4096);
    let mut args = vec!["run", "--kernel", k.path().to_str().unwrap()];
    for d in devices {
        args.push("--device");
        args.push(d);
    }
    vmm(&args)
}

#[test]
fn device_path_that_does_not_exist() {
    let out = run_with_devices(&["path=/sys/bus/pci/devices/0000:7f:1f.7"]);
    assert_one_line_error(&out, "0000:7f:1f.7: no such PCI device");
}

#[test]
fn device_given_twice() {
    let out = run_with_devices(&[
        "path=/sys/bus/pci/devices/0000:7f:1f.7",
        "path=/sys/bus/pci/devices/0000:7f:1f.7",
    ]);
    assert_one_line_error(&out, "0000:7f:1f.7 is given twice");
}

#[test]
fn device_option_syntax() {
    let out = run_with_devices(&["/sys/bus/pci/devices/0000:00:01.0"]);
    assert_fails_with(&out, "expected path=/sys/bus/pci/devices/DDDD:BB:DD.F");
}

#[test]
fn device_bound_to_a_host_driver_or_no_iommu() {
    // Any PCI device of this host that a host driver (not vfio-pci) owns.
    let Some((bdf, driver, has_group)) = std::fs::read_dir("/sys/bus/pci/devices")
        .into_iter()
        .flatten()
        .flatten()
        .find_map(|e| {
            let drv = std::fs::read_link(e.path().join("driver")).ok()?;
            let drv = drv.file_name()?.to_string_lossy().into_owned();
            let has_group = e.path().join("iommu_group").exists();
            (drv != "vfio-pci")
                .then(|| (e.file_name().to_string_lossy().into_owned(), drv, has_group))
        })
    else {
        eprintln!("SKIP: no PCI device bound to a host driver here");
        return;
    };
    let out = run_with_devices(&[&format!("path=/sys/bus/pci/devices/{bdf}")]);
    if has_group {
        assert_one_line_error(
            &out,
            &format!(
                "{bdf} is bound to {driver}, not vfio-pci: run `scripts/vfio-bind.sh {bdf}` first"
            ),
        );
    } else {
        // The build machines: no IOMMU at all.
        assert_one_line_error(
            &out,
            &format!("{bdf} has no IOMMU group: the host IOMMU is off (boot the host with `intel_iommu=on`"),
        );
        assert_one_line_error(&out, "or use the lab");
    }
}
