// SPDX-License-Identifier: Apache-2.0
//! End-to-end: two guests booted by this VMM, wired to each other by the project's
//! `vhost-user-net --link` (the in-process switch), in one lab host. Guest B pings guest A and
//! moves a fixed number of bytes to it and back with iperf3 (TCP); guest A also has a NIC on
//! the TAP path (`vhost-user-net --tap`, the lab host at the other end), measured in the same
//! run, so the two throughputs are recorded side by side.
//!
//! Run: `cargo build -p backends && cargo test -p vmm --test vhost_user_net_link_lab -- --nocapture`.
//! Nested TCG: throughput is for relative comparison only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use lab::{guest_initramfs, Cpio, LabHost, LAB_GUEST_INITRD, LAB_GUEST_KERNEL};

/// Bytes each iperf3 transfer moves (`-n`).
const BYTES: u64 = 16 << 20;

fn our_backend() -> PathBuf {
    let p = lab::repo_root().join("target/debug/vhost-user-net");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build -p backends` first",
        p.display()
    );
    p
}

/// The guests' script: A (MAC ...:01) serves iperf3 on the link after measuring its TAP NIC
/// against the lab host; B (MAC ...:02) pings A and runs its transfers when A's server is up.
fn guest_script() -> String {
    format!(
        r#"
iperf() {{
    key=$1; shift
    for t in $(seq 40); do
        out=$(timeout 60 iperf3 -i 0 -J "$@" | tr -d '\n')
        case "$out" in *'"error"'*|'') sleep 1 ;; *) break ;; esac
    done
    echo "$key=$out"
}}
# The NICs by MAC: ...:01 and ...:02 on the link, ...:10 on the TAP path.
for i in /sys/class/net/eth*; do
    case $(cat $i/address) in
    *:01|*:02) LINK=$(basename $i) ;;
    *:10) TAPNIC=$(basename $i) ;;
    esac
done
ip link set $LINK up
case $(cat /sys/class/net/$LINK/address) in
*:01)
    ip addr add 10.0.1.1/24 dev $LINK
    # B's byte-exact transfer over the link (its stdin held open: busybox nc ends at EOF).
    ( sleep 600 | nc -l -p 5300 > /tmp/rx.bin ) &
    ip link set $TAPNIC up
    ip addr add 10.0.0.2/24 dev $TAPNIC
    ping -c 2 -W 5 10.0.0.1 > /dev/null
    echo TAP-PING-STATUS=$?
    iperf TAP-TCP -c 10.0.0.1 -n {BYTES}
    iperf TAP-TCPR -c 10.0.0.1 -n {BYTES} -R
    timeout 240 sh -c 'for i in 1 2; do iperf3 -s -1 > /dev/null 2>&1; done'
    for i in $(seq 120); do [ "$(wc -c < /tmp/rx.bin)" -ge {BYTES} ] && break; sleep 1; done
    echo LINK-NC-RX="$(wc -c < /tmp/rx.bin) $(md5sum < /tmp/rx.bin | cut -d' ' -f1)"
    ;;
*)
    ip addr add 10.0.1.2/24 dev $LINK
    for i in $(seq 120); do ping -c 1 -W 2 10.0.1.1 > /dev/null 2>&1 && break; sleep 1; done
    ping -c 3 -W 5 10.0.1.1
    echo LINK-PING-STATUS=$?
    iperf LINK-TCP -c 10.0.1.1 -n {BYTES}
    iperf LINK-TCPR -c 10.0.1.1 -n {BYTES} -R
    dd if=/dev/urandom of=/tmp/tx.bin bs=64k count=$(({BYTES} / 65536)) 2>/dev/null
    echo LINK-NC-TX="$(wc -c < /tmp/tx.bin) $(md5sum < /tmp/tx.bin | cut -d' ' -f1)"
    for t in $(seq 30); do nc 10.0.1.1 5300 < /tmp/tx.bin && break; sleep 1; done
    echo GUEST-RX-LENGTH-ERRORS=$(cat /sys/class/net/$LINK/statistics/rx_length_errors)
    ;;
esac
"#
    )
}

/// `end.sum_sent.bytes` and `end.sum_received.bytes` of the iperf3 JSON report at `key`.
fn iperf_bytes(console: &str, key: &str) -> (u64, u64) {
    let raw = lab::console_value(console, key).unwrap_or_else(|| panic!("no {key}:\n{console}"));
    let json: serde_json::Value =
        serde_json::from_str(raw).unwrap_or_else(|e| panic!("{key} is not JSON ({e}): {raw}"));
    let bytes = |sum: &str| json["end"][sum]["bytes"].as_u64().unwrap_or(0);
    (bytes("sum_sent"), bytes("sum_received"))
}

#[test]
fn two_vmm_guests_linked_by_the_switch_ping_and_move_bytes_both_ways() {
    let Some(images) = lab::test_images() else {
        return;
    };
    let vmm = |name: &str, nets: &str| {
        format!(
            "RUST_LOG=vmm=info /lab/bin/vmm run --kernel {LAB_GUEST_KERNEL} \
             --initramfs {LAB_GUEST_INITRD} --cpus 1 --memory 512M {nets} \
             > /tmp/{name}.log 2>&1 &"
        )
    };
    let script = format!(
        r#"
export NO_COLOR=1
RUST_LOG=info /lab/bin/vhost-user-net --link /tmp/a.sock,/tmp/b.sock --mac 52:54:00:00:00:01 > /tmp/sw.log 2>&1 &
SW=$!
RUST_LOG=info /lab/bin/vhost-user-net --socket /tmp/t.sock --tap tap0 --mac 52:54:00:00:00:10 > /tmp/tap.log 2>&1 &
TAP=$!
for i in $(seq 100); do [ -S /tmp/a.sock ] && [ -S /tmp/b.sock ] && [ -S /tmp/t.sock ] && break; sleep 0.1; done
ip addr add 10.0.0.1/24 dev tap0
ip link set tap0 up
iperf3 -s -D
{a}
A=$!
{b}
B=$!
wait $A
echo VMM-A-STATUS=$?
wait $B
echo VMM-B-STATUS=$?
kill $SW $TAP 2>/dev/null
sleep 0.5
sed 's/^/A: /' /tmp/a.log
sed 's/^/B: /' /tmp/b.log
echo '--- switch log'
cat /tmp/sw.log
grep -q 'GUEST-EXIT-STATUS=0' /tmp/a.log && grep -q 'GUEST-EXIT-STATUS=0' /tmp/b.log
"#,
        a = vmm(
            "a",
            "--net vhost_user=on,socket=/tmp/a.sock --net vhost_user=on,socket=/tmp/t.sock"
        ),
        b = vmm("b", "--net vhost_user=on,socket=/tmp/b.sock"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let initrd = dir.path().join("g.cpio");
    guest_initramfs(&images, &guest_script(), true, Cpio::new(), &initrd).expect("initramfs");
    let run = LabHost::new(&images)
        .memory_mib(3072)
        .binary(env!("CARGO_BIN_EXE_vmm"), "/lab/bin")
        .binary(our_backend(), "/lab/bin")
        .with_guest(&initrd)
        .script(script)
        .timeout(Duration::from_secs(600))
        .run()
        .unwrap_or_else(|e| panic!("lab run: {e}"));
    eprintln!("lab run took {:.1?}", run.duration);
    let c = &run.console;
    for key in ["LINK-PING-STATUS=", "TAP-PING-STATUS="] {
        assert_eq!(lab::console_value(c, key), Some("0"), "{key}\n{c}");
    }
    // Every iperf3 transfer completed: all its bytes sent, and received (iperf3's receiver
    // count stops when the client's end-of-test message arrives, before the last segments
    // are read, so it is not byte-exact).
    for key in ["LINK-TCP=", "LINK-TCPR=", "TAP-TCP=", "TAP-TCPR="] {
        let (sent, received) = iperf_bytes(c, key);
        assert_eq!(sent, BYTES, "{key}\n{c}");
        assert!(received > 0, "{key}\n{c}");
    }
    // 16 MiB of random bytes through the switch, B -> A: the same bytes arrived.
    let tx = lab::console_value(c, "LINK-NC-TX=").unwrap_or_else(|| panic!("no LINK-NC-TX:\n{c}"));
    assert!(tx.starts_with(&format!("{BYTES} ")), "{tx}\n{c}");
    assert_eq!(lab::console_value(c, "LINK-NC-RX="), Some(tx), "{c}");
    assert_eq!(
        lab::console_value(c, "GUEST-RX-LENGTH-ERRORS="),
        Some("0"),
        "{c}"
    );
    let mbps = |key: &str| {
        lab::iperf3_bits_per_second(c, key, false).unwrap_or_else(|e| panic!("{e}:\n{c}")) / 1e6
    };
    eprintln!(
        "RESULT nested TCG, relative only: guest B -> guest A through the switch {:.1} Mbit/s, \
         A -> B {:.1} Mbit/s; guest A -> lab host through the TAP path {:.1} Mbit/s, \
         lab host -> A {:.1} Mbit/s",
        mbps("LINK-TCP="),
        mbps("LINK-TCPR="),
        mbps("TAP-TCP="),
        mbps("TAP-TCPR="),
    );
    for l in c.lines().filter(|l| l.contains("queue counters")) {
        eprintln!("{l}");
    }
    assert_eq!(run.status, 0, "lab script failed:\n{c}");
}
