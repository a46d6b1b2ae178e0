// SPDX-License-Identifier: Apache-2.0
//! End-to-end: the emulated e1000 NIC. The guest runs Debian's *generic*
//! kernel (the cloud kernel has no e1000 driver) with its stock `e1000`
//! module; the VMM's NIC is a TAP interface in the lab host, addressed
//! 10.0.2.1; the guest pings it and runs iperf3 both ways against it.
//!
//! Needs the generic kernel image unpacked under `.cache/generic/root`
//! (`apt-get download linux-image-$(cat .cache/images/KERNEL_VERSION | sed s/cloud-//)`,
//! `dpkg-deb -x`); skipped when it is missing.
//!
//! Run: `cargo test -p vmm --test e1000_lab -- --nocapture`.

use std::path::PathBuf;
use std::time::Duration;

use lab::{guest_initramfs, Cpio, Images, LabHost, LAB_GUEST_INITRD};

/// The generic kernel and its e1000 module, if unpacked.
fn generic_kernel() -> Option<(PathBuf, PathBuf)> {
    let root = lab::repo_root().join(".cache/generic/root");
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

#[test]
fn e1000_guest_pings_the_lab_host() {
    if lab::qemu_binary().is_none() {
        eprintln!("SKIP: qemu-system-x86_64 is not installed");
        return;
    }
    let Some((vmlinuz, ko)) = generic_kernel() else {
        eprintln!("SKIP: no generic kernel under .cache/generic/root");
        return;
    };
    let images = Images::ensure_default().unwrap_or_else(|e| panic!("lab images: {e}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut extra = Cpio::new();
    extra
        .add_file("/e1000.ko", std::fs::read(&ko).expect("e1000.ko"), 0o644)
        .expect("cpio");
    let guest = "insmod /e1000.ko\n\
        for i in $(seq 50); do [ -e /sys/class/net/eth0 ] && break; sleep 0.2; done\n\
        echo NIC-DRIVER=$(basename $(readlink /sys/class/net/eth0/device/driver))\n\
        echo NIC-MAC=$(cat /sys/class/net/eth0/address)\n\
        ip addr add 10.0.2.2/24 dev eth0\n\
        ip link set eth0 up\n\
        for i in $(seq 50); do [ \"$(cat /sys/class/net/eth0/carrier)\" = 1 ] && break; sleep 0.2; done\n\
        echo CARRIER=$(cat /sys/class/net/eth0/carrier)\n\
        ping -c 5 -W 3 10.0.2.1\n\
        echo PING-STATUS=$?\n\
        ping -c 3 -s 1400 -W 3 10.0.2.1\n\
        echo PING-BIG-STATUS=$?\n\
        cat /proc/interrupts | grep -i eth0\n\
        iperf3 -c 10.0.2.1 -t 4 -J > /tmp/tx.json 2>&1\n\
        echo IPERF-TX-STATUS=$?\n\
        echo IPERF-TX-BPS=$(grep -A8 '\"sum_received\"' /tmp/tx.json | grep bits_per_second | head -1 | tr -dc '0-9.')\n\
        iperf3 -c 10.0.2.1 -t 4 -R -J > /tmp/rx.json 2>&1\n\
        echo IPERF-RX-STATUS=$?\n\
        echo IPERF-RX-BPS=$(grep -A8 '\"sum_received\"' /tmp/rx.json | grep bits_per_second | head -1 | tr -dc '0-9.')\n";
    let initrd = guest_initramfs(&images, guest, true, extra, &dir.path().join("guest.cpio"))
        .expect("guest initramfs");
    let kernel_name = vmlinuz
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let script = format!(
        "[ -c /dev/net/tun ] || {{ mkdir -p /dev/net; mknod /dev/net/tun c 10 200; }}\n\
         iperf3 -s -D\n\
         RUST_LOG=${{RUST_LOG:-vmm=info}} /lab/bin/vmm run --kernel /lab/bin/{kernel_name} \
           --initramfs {LAB_GUEST_INITRD} --cpus 2 --memory 512M --net tap=tap0,model=e1000 2>&1 &\n\
         VMM=$!\n\
         for i in $(seq 100); do ip link show tap0 >/dev/null 2>&1 && break; sleep 0.1; done\n\
         ip addr add 10.0.2.1/24 dev tap0; ip link set tap0 up\n\
         wait $VMM\n\
         echo VMM-EXIT-STATUS=$?\n"
    );
    let run = LabHost::new(&images)
        .binary(env!("CARGO_BIN_EXE_vmm"), "/lab/bin")
        .binary(&vmlinuz, "/lab/bin")
        .with_guest(&initrd)
        .script(script)
        .timeout(Duration::from_secs(200))
        .run()
        .unwrap_or_else(|e| panic!("lab run: {e}"));
    eprintln!("lab run took {:.1?}", run.duration);
    let c = &run.console;
    // No vhost-user device: private anonymous RAM, as Cloud Hypervisor's default.
    assert_eq!(lab::guest_ram_mode(c).as_deref(), Some("private"), "{c}");
    let value = |key: &str| {
        c.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {key} in output:\n{c}"))
    };
    for l in c
        .lines()
        .filter(|l| l.contains("e1000") || l.contains("bytes from"))
    {
        eprintln!("{l}");
    }
    assert_eq!(value("NIC-DRIVER="), "e1000", "{c}");
    assert_eq!(value("NIC-MAC="), "52:54:00:12:34:56", "{c}");
    assert_eq!(value("CARRIER="), "1", "{c}");
    assert_eq!(value("PING-STATUS="), "0", "{c}");
    assert_eq!(value("PING-BIG-STATUS="), "0", "{c}");
    // TCP both ways: guest → host exercises TSO and checksum insertion.
    assert_eq!(value("IPERF-TX-STATUS="), "0", "{c}");
    assert_eq!(value("IPERF-RX-STATUS="), "0", "{c}");
    let mbps = |k: &str| value(k).parse::<f64>().unwrap_or(0.0) / 1e6;
    let (tx, rx) = (mbps("IPERF-TX-BPS="), mbps("IPERF-RX-BPS="));
    eprintln!("iperf3 (TCG-nested, relative only): guest->host {tx:.1} Mbit/s, host->guest {rx:.1} Mbit/s");
    assert!(tx > 0.0 && rx > 0.0, "{c}");
    assert_eq!(value("GUEST-EXIT-STATUS="), "0", "{c}");
    assert_eq!(value("VMM-EXIT-STATUS="), "0", "{c}");
}
