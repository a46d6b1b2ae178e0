//! End-to-end: this VMM as the vhost-user-net frontend. In the lab host, the project's
//! `vhost-user-net` backend serves tap0 (10.0.0.1/24); the guest booted by `vmm run --net`
//! configures eth0 10.0.0.2/24, pings the lab host and runs iperf3 (TCP both ways, UDP).
//!
//! Run: `cargo build -p backends && cargo test -p vmm --test vhost_user_net_lab -- --nocapture`.
//! Nested TCG: throughput is for relative comparison only.

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
const VMM_LOG: &str = "vmm=info,vmm::devices::virtio::pci=debug";

fn iperf_bps(console: &str, key: &str, udp: bool) -> f64 {
    lab::iperf3_bits_per_second(console, key, udp).unwrap_or_else(|e| panic!("{e}:\n{console}"))
}

#[test]
fn vmm_guest_pings_and_runs_iperf3_over_vhost_user_net() {
    let Some(images) = lab::test_images() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
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
/lab/bin/vhost-user-net --socket /tmp/vn.sock --tap tap0 --mac 52:54:00:aa:bb:01 > /tmp/vn.log 2>&1 &
VN=$!
for i in $(seq 100); do [ -S /tmp/vn.sock ] && break; sleep 0.1; done
ip addr add 10.0.0.1/24 dev tap0
ip link set tap0 up
iperf3 -s -D
RUST_LOG=${{RUST_LOG:-{VMM_LOG}}} /lab/bin/vmm run --kernel {LAB_GUEST_KERNEL} \
    --initramfs {LAB_GUEST_INITRD} --cpus 2 --memory 768M \
    --net vhost_user=on,socket=/tmp/vn.sock 2>&1 | tee /tmp/vmm.log
echo VMM-EXIT-STATUS=$?
sleep 1
kill $VN 2>/dev/null
sleep 0.5
echo '--- backend log'
cat /tmp/vn.log
grep -q 'GUEST-EXIT-STATUS=0' /tmp/vmm.log
"#
    );
    let run = LabHost::new(&images)
        .memory_mib(3072)
        .binary(env!("CARGO_BIN_EXE_vmm"), "/lab/bin")
        .binary(our_backend(), "/lab/bin")
        .with_guest(&initrd)
        .script(script)
        .timeout(Duration::from_secs(300))
        .run()
        .unwrap_or_else(|e| panic!("lab run: {e}"));
    eprintln!("lab run took {:.1?}", run.duration);
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
    let dir = tempfile::tempdir().expect("tempdir");
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
    let initrd = guest_initramfs(
        &images,
        guest,
        true,
        Cpio::new(),
        &dir.path().join("g.cpio"),
    )
    .expect("guest initramfs");
    let script = format!(
        r#"
export NO_COLOR=1
/lab/bin/vhost-user-net --socket /tmp/vn.sock --tap tap0 --mac 52:54:00:aa:bb:02 --queues 2 > /tmp/vn.log 2>&1 &
VN=$!
for i in $(seq 100); do [ -S /tmp/vn.sock ] && break; sleep 0.1; done
ip addr add 10.0.0.1/24 dev tap0
ip link set tap0 up
iperf3 -s -D -p 5201
iperf3 -s -D -p 5202
RUST_LOG=${{RUST_LOG:-{VMM_LOG}}} /lab/bin/vmm run --kernel {LAB_GUEST_KERNEL} \
    --initramfs {LAB_GUEST_INITRD} --cpus 2 --memory 768M \
    --net vhost_user=on,socket=/tmp/vn.sock,queues=2 2>&1 | tee /tmp/vmm.log
echo VMM-EXIT-STATUS=$?
sleep 1
kill $VN 2>/dev/null
sleep 0.5
echo '--- backend log'
cat /tmp/vn.log
grep -q 'GUEST-EXIT-STATUS=0' /tmp/vmm.log
"#
    );
    let run = LabHost::new(&images)
        .memory_mib(3072)
        .binary(env!("CARGO_BIN_EXE_vmm"), "/lab/bin")
        .binary(our_backend(), "/lab/bin")
        .with_guest(&initrd)
        .script(script)
        .timeout(Duration::from_secs(240))
        .run()
        .unwrap_or_else(|e| panic!("lab run: {e}"));
    eprintln!("lab run took {:.1?}", run.duration);
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
