// SPDX-License-Identifier: Apache-2.0
//! End-to-end: the in-VMM virtio-net (`vmm run --net tap=tap0`, model=virtio by default).
//! The VMM creates tap0 in the lab host (10.0.2.1/24) and serves the queue pair with its own
//! `net-q0` thread (the backends crate's TX handler and RX path); the guest configures eth0
//! 10.0.2.2/24, pings the lab host and runs iperf3 (TCP both ways, UDP).
//!
//! Run: `cargo test -p vmm --test virtio_net_inproc_lab -- --nocapture`.
//! Nested TCG: throughput is for relative comparison only.

use std::time::Duration;

use lab::{guest_initramfs, Cpio, LabHost, LAB_GUEST_INITRD, LAB_GUEST_KERNEL};

#[test]
fn vmm_guest_pings_and_runs_iperf3_over_in_vmm_virtio_net() {
    let Some(images) = lab::test_images() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let guest = format!(
        r#"
for i in $(seq 50); do [ -e /sys/class/net/eth0 ] && break; sleep 0.2; done
echo NIC-DRIVER=$(basename $(readlink /sys/class/net/eth0/device/driver))
echo NIC-PCI-ID=$(cat /sys/class/net/eth0/device/../vendor):$(cat /sys/class/net/eth0/device/../device)
ip link set eth0 up
ip addr add 10.0.2.2/24 dev eth0
echo GUEST-MAC=$(cat /sys/class/net/eth0/address)
echo GUEST-MTU=$(cat /sys/class/net/eth0/mtu)
echo GUEST-FEATURES=$(cat /sys/class/net/eth0/device/features)
{}
ping -c 3 -s 1400 -W 5 10.0.2.1
echo PING-BIG-STATUS=$?
"#,
        lab::guest_ping_iperf3("10.0.2.1")
    );
    let initrd = guest_initramfs(
        &images,
        &guest,
        true,
        Cpio::new(),
        &dir.path().join("g.cpio"),
    )
    .expect("guest initramfs");
    let script = format!(
        r#"
export NO_COLOR=1
[ -c /dev/net/tun ] || {{ mkdir -p /dev/net; mknod /dev/net/tun c 10 200; }}
iperf3 -s -D
RUST_LOG=${{RUST_LOG:-vmm=info}} /lab/bin/vmm run --kernel {LAB_GUEST_KERNEL} \
    --initramfs {LAB_GUEST_INITRD} --cpus 2 --memory 768M \
    --net tap=tap0,mac=52:54:00:aa:bb:02 > /tmp/vmm.log 2>&1 &
VMM=$!
: > /tmp/threads
for i in $(seq 100); do ip link show tap0 >/dev/null 2>&1 && break; sleep 0.1; done
ip addr add 10.0.2.1/24 dev tap0
ip link set tap0 up
for i in $(seq 300); do
  if grep -q net-q0 /proc/$VMM/task/*/comm 2>/dev/null; then echo NET-THREAD=net-q0 > /tmp/threads; break; fi
  kill -0 $VMM 2>/dev/null || break
  sleep 0.2
done
wait $VMM
echo VMM-EXIT-STATUS=$?
cat /tmp/threads
cat /tmp/vmm.log
grep -q 'GUEST-EXIT-STATUS=0' /tmp/vmm.log
"#
    );
    let run = LabHost::new(&images)
        .memory_mib(3072)
        .binary(env!("CARGO_BIN_EXE_vmm"), "/lab/bin")
        .with_guest(&initrd)
        .script(script)
        .timeout(Duration::from_secs(200))
        .run()
        .unwrap_or_else(|e| panic!("lab run: {e}"));
    eprintln!("lab run took {:.1?}", run.duration);
    let c = &run.console;
    // No vhost-user device: private anonymous RAM, as Cloud Hypervisor's default.
    assert_eq!(lab::guest_ram_mode(c).as_deref(), Some("private"), "{c}");
    assert_eq!(
        lab::console_value(c, "NIC-DRIVER="),
        Some("virtio_net"),
        "{c}"
    );
    assert_eq!(
        lab::console_value(c, "NIC-PCI-ID="),
        Some("0x1af4:0x1041"),
        "{c}"
    );
    assert_eq!(
        lab::console_value(c, "GUEST-MAC="),
        Some("52:54:00:aa:bb:02"),
        "{c}"
    );
    assert_eq!(lab::console_value(c, "GUEST-MTU="), Some("1500"), "{c}");
    assert_eq!(lab::console_value(c, "NET-THREAD="), Some("net-q0"), "{c}");
    assert_eq!(
        lab::console_value(c, "PING-BIG-STATUS="),
        Some("0"),
        "ping -s 1400 failed:\n{c}"
    );
    let net = lab::PingIperf3::from_console(c, "").unwrap_or_else(|e| panic!("{e}:\n{c}"));
    eprintln!("RESULT in-VMM virtio-net, nested TCG, relative only: {net}");
    for l in c
        .lines()
        .filter(|l| l.contains("net0") || l.contains("GUEST-FEATURES"))
    {
        eprintln!("{l}");
    }
    assert_eq!(lab::console_value(c, "VMM-EXIT-STATUS="), Some("0"), "{c}");
    assert_eq!(run.status, 0, "lab script failed:\n{c}");
}
