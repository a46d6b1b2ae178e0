// SPDX-License-Identifier: Apache-2.0
//! End-to-end VFIO passthrough of a NIC: the lab host gets two NICs on one
//! QEMU hub; the first is bound to vfio-pci and passed to a guest with
//! `vmm run --device`, the second keeps an address in the lab host. The
//! guest's stock driver brings the link up, pings the lab host and runs
//! iperf3 against it; afterwards the NIC goes back to its host driver.
//!
//! The passed-through NIC is a `virtio-net-pci` with `iommu_platform=on`: the
//! Debian cloud kernel has no e1000/e1000e driver (the generic
//! `linux-image-amd64` has them), and a virtio device only sends its DMA
//! through the (emulated) IOMMU when it offers VIRTIO_F_ACCESS_PLATFORM.

use std::time::Duration;

use lab::{
    guest_initramfs, Cpio, Images, LabHost, LabNic, NicBackend, LAB_GUEST_INITRD, LAB_GUEST_KERNEL,
};

const PASS_MAC: &str = "52:54:00:00:00:10";
const LAB_MAC: &str = "52:54:00:00:00:11";

const GUEST_SCRIPT: &str = r#"
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo "GUEST-MAC=$(cat /sys/class/net/eth0/address)"
echo "GUEST-DRIVER=$(basename $(readlink /sys/class/net/eth0/device/driver))"
ip addr add 10.0.3.2/24 dev eth0
ip link set eth0 up
i=0
while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != 1 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
echo "GUEST-CARRIER=$(cat /sys/class/net/eth0/carrier)"
ping -c 3 -W 5 10.0.3.1 > /tmp/ping.txt 2>&1
echo "PING-EXIT=$?"
cat /tmp/ping.txt
iperf3 -c 10.0.3.1 -t 3 -J > /tmp/iperf.json 2>&1
echo "IPERF-EXIT=$?"
echo "IPERF-BPS=$(grep -A8 '"sum_received"' /tmp/iperf.json | awk -F: '/bits_per_second/ { gsub(/[ ,]/, "", $2); print $2; exit }')"
grep -e virtio /proc/interrupts
awk '/virtio/ { for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i } END { print "NIC-IRQ-TOTAL=" s+0 }' /proc/interrupts
"#;

fn lab_script() -> String {
    format!(
        r#"
pass=; labif=
for n in /sys/class/net/*; do
    case "$(cat $n/address)" in
        {PASS_MAC}) pass=$(basename $(readlink -f $n/device/..)) ;;
        {LAB_MAC}) labif=$(basename $n) ;;
    esac
done
[ -n "$pass" ] && [ -n "$labif" ] || {{ echo "NICs not found"; ip link; exit 20; }}
echo "PASS-BDF=$pass HOST-DRIVER=$(basename $(readlink /sys/bus/pci/devices/$pass/driver))"
ip addr add 10.0.3.1/24 dev $labif
ip link set $labif up
iperf3 -s -1 -B 10.0.3.1 > /tmp/iperf-server.txt 2>&1 &
/lab/bin/vfio-bind.sh $pass || exit 21
RUST_LOG=${{RUST_LOG:-vmm=info,vfio=info,vfio_ioctls=warn}} timeout 200 /lab/bin/vmm run \
    --kernel {LAB_GUEST_KERNEL} --initramfs {LAB_GUEST_INITRD} --cpus 2 --memory 1G \
    --device path=/sys/bus/pci/devices/$pass 2>&1
echo "VMM-EXIT-STATUS=$?"
/lab/bin/vfio-unbind.sh $pass || exit 22
sleep 1
echo "DRIVER-AFTER=$(basename $(readlink /sys/bus/pci/devices/$pass/driver))"
"#
    )
}

fn value<'a>(console: &'a str, key: &str) -> &'a str {
    console
        .lines()
        .find_map(|l| l.split_once(key).map(|(_, v)| v.trim()))
        .unwrap_or_else(|| panic!("no {key} in:\n{console}"))
}

#[test]
fn nic_passthrough_links_pings_and_carries_iperf3() {
    if lab::qemu_binary().is_none() {
        eprintln!("SKIP: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)");
        return;
    }
    let images = Images::ensure_default().unwrap_or_else(|e| panic!("lab images: {e}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let initrd = guest_initramfs(
        &images,
        GUEST_SCRIPT,
        true,
        Cpio::new(),
        &dir.path().join("guest.cpio"),
    )
    .expect("guest initramfs");
    let scripts = lab::repo_root().join("scripts");
    let nic = |mac: &str, model: &str| LabNic {
        model: model.into(),
        backend: NicBackend::Hub(0),
        mac: Some(mac.into()),
    };
    let run = LabHost::new(&images)
        .memory_mib(3072)
        .nic(nic(
            PASS_MAC,
            "virtio-net-pci,disable-legacy=on,iommu_platform=on",
        ))
        .nic(nic(LAB_MAC, "virtio-net-pci"))
        .binary(env!("CARGO_BIN_EXE_vmm"), "/lab/bin")
        .file(scripts.join("vfio-bind.sh"), "/lab/bin/vfio-bind.sh")
        .file(scripts.join("vfio-unbind.sh"), "/lab/bin/vfio-unbind.sh")
        .with_guest(&initrd)
        .script(lab_script())
        .timeout(Duration::from_secs(200))
        .run()
        .unwrap_or_else(|e| panic!("lab run: {e}"));
    let c = &run.console;
    assert_eq!(value(c, "GUEST-MAC="), PASS_MAC, "{c}");
    assert_eq!(value(c, "GUEST-DRIVER="), "virtio_net", "{c}");
    assert_eq!(value(c, "GUEST-CARRIER="), "1", "{c}");
    assert_eq!(value(c, "PING-EXIT="), "0", "{c}");
    assert_eq!(value(c, "IPERF-EXIT="), "0", "{c}");
    let bps: f64 = value(c, "IPERF-BPS=").parse().unwrap_or(0.0);
    assert!(bps > 0.0, "no iperf3 throughput:\n{c}");
    let irqs: u64 = value(c, "NIC-IRQ-TOTAL=").parse().unwrap_or(0);
    assert!(irqs > 0, "no MSI-X interrupts counted in the guest:\n{c}");
    assert_eq!(value(c, "VMM-EXIT-STATUS="), "0", "{c}");
    assert_eq!(value(c, "DRIVER-AFTER="), "virtio-pci", "{c}");
    eprintln!(
        "passed-through NIC: iperf3 guest->lab {:.1} Mbit/s (TCG-nested, relative only)",
        bps / 1e6
    );
}
