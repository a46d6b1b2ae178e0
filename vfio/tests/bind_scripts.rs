// SPDX-License-Identifier: Apache-2.0
//! scripts/vfio-bind.sh against a fake sysfs/proc tree (dry run: checks only,
//! nothing is written), so the refusal rules are tested without hardware.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Fake {
    dir: tempfile::TempDir,
}

const BDF: &str = "0000:00:04.0";

impl Fake {
    /// One PCI device bound to `nvme` with a namespace block device `nvme0n1`.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let dev = r.join("sys/devices/pci0000:00").join(BDF);
        for d in [
            "sys/bus/pci/devices",
            "sys/bus/pci/drivers/nvme",
            "sys/class/block",
            "sys/class/net",
            "sys/class/tty/console",
            "proc",
        ] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        fs::create_dir_all(dev.join("nvme/nvme0/nvme0n1/holders")).unwrap();
        symlink(r.join("sys/bus/pci/drivers/nvme"), dev.join("driver")).unwrap();
        fs::create_dir_all(r.join("sys/kernel/iommu_groups/3/devices")).unwrap();
        symlink(r.join("sys/kernel/iommu_groups/3"), dev.join("iommu_group")).unwrap();
        symlink(&dev, r.join("sys/bus/pci/devices").join(BDF)).unwrap();
        symlink(
            dev.join("nvme/nvme0/nvme0n1"),
            r.join("sys/class/block/nvme0n1"),
        )
        .unwrap();
        fs::write(r.join("sys/class/tty/console/active"), "ttyS0\n").unwrap();
        fs::write(r.join("proc/mounts"), "proc /proc proc rw 0 0\n").unwrap();
        fs::write(r.join("proc/swaps"), "Filename Type Size Used Priority\n").unwrap();
        Self { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn dev(&self) -> PathBuf {
        self.root().join("sys/devices/pci0000:00").join(BDF)
    }

    fn bind(&self, arg: &str) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/vfio-bind.sh");
        Command::new("sh")
            .arg(script)
            .arg(arg)
            .env("SYSFS", self.root().join("sys"))
            .env("PROC", self.root().join("proc"))
            .env("VFIO_STATE_DIR", self.root().join("state"))
            .env("VFIO_BIND_DRY_RUN", "1")
            .output()
            .unwrap()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn idle_device_would_be_bound() {
    let f = Fake::new();
    let o = f.bind("00:04.0");
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("would bind 0000:00:04.0 (nvme -> vfio-pci)"),
        "{}",
        text(&o)
    );
}

#[test]
fn mounted_namespace_is_refused() {
    let f = Fake::new();
    fs::write(
        f.root().join("proc/mounts"),
        "/dev/nvme0n1p1 /data ext4 rw 0 0\n",
    )
    .unwrap();
    let o = f.bind(BDF);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("refusing, /dev/nvme0n1 is mounted"),
        "{}",
        text(&o)
    );
}

#[test]
fn swap_and_holders_are_refused() {
    let f = Fake::new();
    fs::write(
        f.root().join("proc/swaps"),
        "Filename\n/dev/nvme0n1 partition 1 0 -2\n",
    )
    .unwrap();
    assert!(text(&f.bind(BDF)).contains("in use as swap"));
    let f = Fake::new();
    fs::create_dir_all(f.dev().join("nvme/nvme0/nvme0n1/holders/dm-0")).unwrap();
    assert!(text(&f.bind(BDF)).contains("held by dm-0"));
}

#[test]
fn console_device_is_refused() {
    let f = Fake::new();
    fs::create_dir_all(f.dev().join("tty/ttyS4")).unwrap();
    symlink(
        f.dev().join("tty/ttyS4"),
        f.root().join("sys/class/tty/ttyS4"),
    )
    .unwrap();
    fs::write(
        f.root().join("sys/class/tty/console/active"),
        "tty0 ttyS4\n",
    )
    .unwrap();
    let o = f.bind(BDF);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("provides the console ttyS4"),
        "{}",
        text(&o)
    );
}

#[test]
fn no_iommu_is_refused() {
    let f = Fake::new();
    fs::remove_file(f.dev().join("iommu_group")).unwrap();
    let o = f.bind(BDF);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("no IOMMU group") && text(&o).contains("intel_iommu=on"),
        "{}",
        text(&o)
    );
}

#[test]
fn bad_addresses() {
    let f = Fake::new();
    assert!(text(&f.bind("nonsense")).contains("is not a PCI address"));
    assert!(text(&f.bind("0000:00:09.0")).contains("no such PCI device"));
}
