// SPDX-License-Identifier: Apache-2.0
//! End-to-end: this VMM as the vhost-user-net frontend. In the lab host, the project's
//! `vhost-user-net` backend serves tap0 (10.0.0.1/24); the guest booted by `vmm run --net`
//! configures eth0 10.0.0.2/24, pings the lab host and runs iperf3 (TCP both ways, UDP).
//!
//! Run: `cargo build -p backends && cargo test -p vmm --test vhost_user_net_lab -- --nocapture`.
//! Nested TCG: throughput is for relative comparison only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use lab::{guest_initramfs, Cpio, LabHost, LAB_GUEST_INITRD, LAB_GUEST_KERNEL};

fn our_backend() -> PathBuf {
    let p = lab::repo_root().join("target/debug/vhost-user-net");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build -p backends` first",
        p.display()
    );
    p
}

/// The VMM's log filter in these tests: on exit the virtio-pci transport logs every queue's
/// ring indices at debug level, which tells a missed kick from a missed interrupt if a
/// transfer stalls (each iperf3 run is bounded by `timeout 60`, so a stall ends the guest
/// script instead of the lab run).
const VMM_LOG: &str = "vmm=info,vmm::devices::virtio::transport::pci=debug";

/// Boot a guest running the shell script `guest` with this VMM in a lab host whose tap0
/// (10.0.0.1/24) is served by our backend (`vhost-user-net --socket /tmp/vn.sock --tap tap0
/// {backend_args}`), after the lab-host commands `prelude`, with `--net
/// vhost_user=on,socket=/tmp/vn.sock{net_opts}`. The console ends with the backend's log;
/// the lab script fails unless the guest's script exited 0.
fn run_in_lab(
    images: &lab::Images,
    guest: &str,
    backend_args: &str,
    prelude: &str,
    net_opts: &str,
    timeout_s: u64,
) -> lab::LabRun {
    let script = format!(
        r#"
export NO_COLOR=1
/lab/bin/vhost-user-net --socket /tmp/vn.sock --tap tap0 {backend_args} > /tmp/vn.log 2>&1 &
VN=$!
for i in $(seq 100); do [ -S /tmp/vn.sock ] && break; sleep 0.1; done
ip addr add 10.0.0.1/24 dev tap0
ip link set tap0 up
{prelude}
RUST_LOG=${{RUST_LOG:-{VMM_LOG}}} /lab/bin/vmm run --kernel {LAB_GUEST_KERNEL} \
    --initramfs {LAB_GUEST_INITRD} --cpus 2 --memory 768M \
    --net vhost_user=on,socket=/tmp/vn.sock{net_opts} 2>&1 | tee /tmp/vmm.log
echo VMM-EXIT-STATUS=$?
sleep 1
kill $VN 2>/dev/null
sleep 0.5
echo '--- backend log'
cat /tmp/vn.log
grep -q 'GUEST-EXIT-STATUS=0' /tmp/vmm.log
"#
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let initrd = dir.path().join("g.cpio");
    guest_initramfs(images, guest, true, Cpio::new(), &initrd).expect("guest initramfs");
    let run = LabHost::new(images)
        .memory_mib(3072)
        .binary(env!("CARGO_BIN_EXE_vmm"), "/lab/bin")
        .binary(our_backend(), "/lab/bin")
        .with_guest(&initrd)
        .script(script)
        .timeout(Duration::from_secs(timeout_s))
        .run()
        .unwrap_or_else(|e| panic!("lab run: {e}"));
    eprintln!("lab run took {:.1?}", run.duration);
    run
}

fn iperf_bps(console: &str, key: &str, udp: bool) -> f64 {
    lab::iperf3_bits_per_second(console, key, udp).unwrap_or_else(|e| panic!("{e}:\n{console}"))
}

#[test]
fn vmm_guest_pings_and_runs_iperf3_over_vhost_user_net() {
    let Some(images) = lab::test_images() else {
        return;
    };
    let guest = format!(
        r#"
ip link set eth0 up
ip addr add 10.0.0.2/24 dev eth0
echo GUEST-MAC=$(cat /sys/class/net/eth0/address)
echo GUEST-MTU=$(cat /sys/class/net/eth0/mtu)
{}
echo GUEST-RX-LENGTH-ERRORS=$(cat /sys/class/net/eth0/statistics/rx_length_errors)
"#,
        lab::guest_ping_iperf3("10.0.0.1")
    );
    let run = run_in_lab(
        &images,
        &guest,
        "--mac 52:54:00:aa:bb:01",
        "iperf3 -s -D",
        "",
        300,
    );
    let c = &run.console;
    // The backend's MAC and MTU reach the guest through GET_CONFIG.
    assert_eq!(
        lab::console_value(c, "GUEST-MAC="),
        Some("52:54:00:aa:bb:01"),
        "{c}"
    );
    assert_eq!(lab::console_value(c, "GUEST-MTU="), Some("1500"), "{c}");
    let net = lab::PingIperf3::from_console(c, "").unwrap_or_else(|e| panic!("{e}:\n{c}"));
    // Every received frame was whole when the driver looked at it: a frame's buffers are
    // published together (Linux counts a missing one as a length error).
    assert_eq!(
        lab::console_value(c, "GUEST-RX-LENGTH-ERRORS="),
        Some("0"),
        "{c}"
    );
    eprintln!("RESULT vmm frontend, nested TCG, relative only: {net}");
    for l in c.lines().filter(|l| {
        l.contains("queue counters") || l.contains(" at exit: ") || l.contains(" at reset: ")
    }) {
        eprintln!("{l}");
    }
    assert_eq!(run.status, 0, "lab script failed:\n{c}");
}

/// `ok` of the `rx` or `tx` snapshot in the backend's "queue counters pair=N" log line.
fn pair_ok(console: &str, pair: u16, dir: &str) -> u64 {
    let tag = format!("pair={pair} ");
    let line = console
        .lines()
        .find(|l| l.contains("queue counters") && l.contains(&tag))
        .unwrap_or_else(|| panic!("no counters for pair {pair} in:\n{console}"));
    snapshot_field(line, &format!("{dir}=StatsSnapshot {{"), "ok")
        .unwrap_or_else(|| panic!("no {dir} ok count in {line:?}"))
}

/// `field: N` inside the `{ ... }` that follows `start` in `line`.
fn snapshot_field(line: &str, start: &str, field: &str) -> Option<u64> {
    let body = &line[line.find(start)? + start.len()..];
    let body = &body[..body.find('}')?];
    body.split(',').find_map(|kv| {
        let (k, v) = kv.split_once(':')?;
        (k.trim() == field).then(|| v.trim().parse().ok())?
    })
}

#[test]
fn vmm_guest_uses_two_queue_pairs_with_the_backend_control_queue() {
    let Some(images) = lab::test_images() else {
        return;
    };
    // One iperf3 client per vCPU: the driver maps CPU k to transmit queue k (XPS), and the
    // TAP sends a flow's replies to the queue it came from, so both pairs carry both ways.
    let guest = r#"
ip link set eth0 up
ip addr add 10.0.0.2/24 dev eth0
echo "GUEST-QUEUES=$(ls /sys/class/net/eth0/queues | tr '\n' ' ')"
echo "GUEST-COMBINED=$(ls -d /sys/class/net/eth0/queues/rx-* | wc -l)"
echo "GUEST-XPS=$(cat /sys/class/net/eth0/queues/tx-*/xps_cpus | tr '\n' ' ')"
ping -c 2 -W 5 10.0.0.1
echo PING-STATUS=$?
for dir in TX RX; do
    flag=; [ $dir = RX ] && flag=-R
    timeout 60 taskset 1 iperf3 -c 10.0.0.1 -p 5201 -t 3 -i 0 -P 4 -J $flag > /tmp/a.json &
    A=$!
    timeout 60 taskset 2 iperf3 -c 10.0.0.1 -p 5202 -t 3 -i 0 -P 4 -J $flag > /tmp/b.json &
    B=$!
    wait $A; echo "IPERF-$dir-A-STATUS=$?"
    wait $B; echo "IPERF-$dir-B-STATUS=$?"
    echo "IPERF-$dir-A=$(tr -d '\n' < /tmp/a.json)"
    echo "IPERF-$dir-B=$(tr -d '\n' < /tmp/b.json)"
done
echo "GUEST-VIRTIO-IRQS=$(grep virtio /proc/interrupts | tr -s ' ' | tr '\n' '|')"
"#;
    let run = run_in_lab(
        &images,
        guest,
        "--mac 52:54:00:aa:bb:02 --queues 2",
        "iperf3 -s -D -p 5201\niperf3 -s -D -p 5202",
        ",queues=2",
        240,
    );
    let c = &run.console;
    assert_eq!(
        lab::console_value(c, "GUEST-QUEUES="),
        Some("rx-0 rx-1 tx-0 tx-1"),
        "{c}"
    );
    assert_eq!(lab::console_value(c, "GUEST-COMBINED="), Some("2"), "{c}");
    assert_eq!(
        lab::console_value(c, "PING-STATUS="),
        Some("0"),
        "ping failed:\n{c}"
    );
    for dir in ["TX", "RX"] {
        for client in ["A", "B"] {
            let key = format!("IPERF-{dir}-{client}");
            assert_eq!(
                lab::console_value(c, &format!("{key}-STATUS=")),
                Some("0"),
                "{c}"
            );
            let bps = iperf_bps(c, &format!("{key}="), false);
            eprintln!(
                "RESULT {key}: {:.1} Mbit/s (nested TCG, relative only)",
                bps / 1e6
            );
        }
    }
    for l in c.lines().filter(|l| {
        ["counters", "queue pairs", "GUEST-QUEUES", "GUEST-XPS"]
            .iter()
            .any(|k| l.contains(k))
    }) {
        eprintln!("{l}");
    }
    // The guest asked for both pairs through the backend's control queue...
    let ctrl = c
        .lines()
        .find(|l| l.contains("control queue counters"))
        .unwrap_or_else(|| panic!("no control queue counters:\n{c}"));
    assert!(ctrl.contains("active_pairs=2"), "{ctrl}");
    assert!(
        snapshot_field(ctrl, "ctrl=StatsSnapshot {", "ok").is_some_and(|n| n >= 1),
        "{ctrl}"
    );
    // ...and both pairs carried frames both ways.
    for pair in 0..2 {
        let (rx, tx) = (pair_ok(c, pair, "rx"), pair_ok(c, pair, "tx"));
        eprintln!("pair {pair}: rx ok {rx}, tx ok {tx}");
        assert!(
            rx > 0 && tx > 0,
            "pair {pair} idle (rx {rx}, tx {tx}):\n{c}"
        );
    }
    assert_eq!(run.status, 0, "lab script failed:\n{c}");
}

/// Unbinding the guest's driver resets the device: the VMM stops the rings (GET_VRING_BASE)
/// while the backend holds receive buffers and a TAP read, and the lab host keeps sending
/// to the guest. Bound again, the driver gets fresh rings: no frame may land in a buffer of
/// the old ones or carry one of their heads (Linux: "id N is not a head", a broken queue),
/// and traffic flows again.
#[test]
fn vmm_guest_driver_rebind_restarts_vhost_user_net() {
    let Some(images) = lab::test_images() else {
        return;
    };
    let guest = r#"
ip link set eth0 up
ip addr add 10.0.0.2/24 dev eth0
ping -c 2 -W 5 10.0.0.1 > /dev/null
echo PING-BEFORE-STATUS=$?
PCI=$(basename $(readlink -f /sys/class/net/eth0/device/..))
echo PCI=$PCI
echo $PCI > /sys/bus/pci/drivers/virtio-pci/unbind
[ -e /sys/class/net/eth0 ] && echo STILL-THERE
sleep 2
echo $PCI > /sys/bus/pci/drivers/virtio-pci/bind
for i in $(seq 50); do [ -e /sys/class/net/eth0 ] && break; sleep 0.2; done
ip link set eth0 up
ip addr add 10.0.0.2/24 dev eth0
ping -c 5 -W 5 10.0.0.1 > /dev/null
echo PING-AFTER-STATUS=$?
timeout 60 iperf3 -c 10.0.0.1 -t 3 -i 0 -R > /dev/null
echo IPERF-RX-STATUS=$?
echo "GUEST-RING-ERRORS=$(dmesg | grep -c -e 'is not a head' -e 'unexpected' -e 'rx error')"
echo GUEST-RX-LENGTH-ERRORS=$(cat /sys/class/net/eth0/statistics/rx_length_errors)
"#;
    // Frames for the guest all along, through the reset: pings to its address and, while it
    // has no driver, the ARP requests they cause.
    let run = run_in_lab(
        &images,
        guest,
        "--mac 52:54:00:aa:bb:03",
        "iperf3 -s -D\n(while :; do ping -c 1 -W 1 10.0.0.2 > /dev/null; sleep 0.05; done) &",
        "",
        240,
    );
    let c = &run.console;
    assert!(!c.contains("STILL-THERE"), "unbind left eth0:\n{c}");
    for key in [
        "PING-BEFORE-STATUS=",
        "PING-AFTER-STATUS=",
        "IPERF-RX-STATUS=",
    ] {
        assert_eq!(lab::console_value(c, key), Some("0"), "{key}\n{c}");
    }
    assert_eq!(
        lab::console_value(c, "GUEST-RING-ERRORS="),
        Some("0"),
        "{c}"
    );
    assert_eq!(
        lab::console_value(c, "GUEST-RX-LENGTH-ERRORS="),
        Some("0"),
        "{c}"
    );
    assert_eq!(
        c.matches("data path started").count(),
        2,
        "expected two activations:\n{c}"
    );
    assert_eq!(run.status, 0, "lab script failed:\n{c}");
}
