// SPDX-License-Identifier: Apache-2.0
//! End-to-end in the lab host: `vhost-user-net` on a TAP, QEMU as the vhost-user frontend
//! (interop), a Linux guest pinging the lab host and running iperf3 (TCP both ways, UDP)
//! against an iperf3 server on the TAP side.
//!
//! The lab is nested TCG: throughput numbers are printed for relative comparison only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;
use std::time::Duration;

use lab::{guest_initramfs, Cpio, LabHost, GUEST_EXIT_MARKER};

static SERIAL: Mutex<()> = Mutex::new(());

const MAC: &str = "52:54:00:12:34:56";

/// Lab script: start the backend on tap0 (10.0.0.1/24), an iperf3 server, then the guest
/// under QEMU with a vhost-user netdev (`device_props` appended to its `virtio-net-pci`);
/// dump the backend log afterwards.
fn lab_script(
    backend_args: &str,
    device_props: &str,
    guest_mem_mib: u32,
    reference: bool,
) -> String {
    let reference = if reference {
        // The same guest under QEMU's own virtio-net over a TAP (no vhost), measured in the
        // same lab run as the reference; its console lines are prefixed with `REF: ` by a shell
        // loop, line by line (busybox sed holds its output until QEMU exits, a silence that
        // could outlast `lab::SILENCE_LIMIT`).
        format!(
            r#"
printf '#!/bin/sh\nip addr add 10.0.0.1/24 dev $1\nip link set $1 up\n' > /lab/ifup
chmod +x /lab/ifup
timeout 600 qemu-system-x86_64 -enable-kvm -cpu host -machine q35 -smp 2 -m {guest_mem_mib} \
    -netdev tap,id=n0,ifname=tapref,script=/lab/ifup,downscript=no,vhost=off \
    -device virtio-net-pci,netdev=n0,mac={MAC},romfile= \
    -nic none -display none -monitor none -serial stdio -no-reboot \
    -kernel {kernel} -initrd {initrd} -append "console=ttyS0 panic=-1 quiet tsc=reliable" </dev/null \
    | while IFS= read -r line || [ -n "$line" ]; do printf 'REF: %s\n' "$line"; done
"#,
            kernel = lab::LAB_GUEST_KERNEL,
            initrd = lab::LAB_GUEST_INITRD,
        )
    } else {
        String::new()
    };
    format!(
        r#"
export NO_COLOR=1
RUST_LOG=info /lab/bin/vhost-user-net --socket /tmp/vn.sock --tap tap0 --mac {MAC} {backend_args} 2>/lab/vn.log &
VN=$!
for i in $(seq 100); do [ -S /tmp/vn.sock ] && break; sleep 0.1; done
ip addr add 10.0.0.1/24 dev tap0
ip link set tap0 up
ip link show tap0
iperf3 -s -D
timeout 600 qemu-system-x86_64 -enable-kvm -cpu host -machine q35 -smp 2 -m {guest_mem_mib} \
    -object memory-backend-memfd,id=mem,size={guest_mem_mib}M,share=on -numa node,memdev=mem \
    -chardev socket,id=c0,path=/tmp/vn.sock -netdev vhost-user,id=n0,chardev=c0 \
    -device virtio-net-pci,netdev=n0,mac={MAC},romfile={device_props} \
    -nic none -display none -monitor none -serial stdio -no-reboot \
    -kernel {kernel} -initrd {initrd} -append "console=ttyS0 panic=-1 quiet tsc=reliable" </dev/null \
    | tee /lab/guest.log
sleep 1
kill $VN 2>/dev/null
sleep 0.5
# The backend leaves its TAP (persistent, for a restarted backend to reattach): remove it, or
# its route to 10.0.0.0/24 would take the reference guest's traffic.
ip link del tap0 2>/dev/null
echo VN-LOG-BEGIN
cat /lab/vn.log
echo VN-LOG-END
{reference}
grep -q '{marker}0' /lab/guest.log
"#,
        kernel = lab::LAB_GUEST_KERNEL,
        initrd = lab::LAB_GUEST_INITRD,
        marker = GUEST_EXIT_MARKER,
    )
}

fn run_lab(
    guest_script: &str,
    backend_args: &str,
    device_props: &str,
    reference: bool,
) -> Option<lab::LabRun> {
    let images = lab::test_images()?;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let initrd = guest_initramfs(
        &images,
        guest_script,
        true,
        Cpio::new(),
        &dir.path().join("guest.cpio"),
    )
    .expect("guest initramfs");
    let run = LabHost::new(&images)
        .memory_mib(3072)
        .binary(env!("CARGO_BIN_EXE_vhost-user-net"), "/lab/bin")
        .with_guest(&initrd)
        .script(lab_script(backend_args, device_props, 768, reference))
        .timeout(Duration::from_secs(240))
        .run()
        .unwrap_or_else(|e| panic!("lab run: {e}"));
    eprintln!("lab run took {:.1?}", run.duration);
    Some(run)
}

const GUEST_NET: &str = r#"
ip link set eth0 up
ip addr add 10.0.0.2/24 dev eth0
ip link show eth0
"#;

/// virtio-net offload feature bits: CSUM, GUEST_CSUM, GUEST_TSO4, GUEST_TSO6, HOST_TSO4,
/// HOST_TSO6.
const OFFLOAD_BITS: [u32; 6] = [0, 1, 7, 8, 11, 12];

/// The features the driver acked last, from the backend's log.
fn acked_features(console: &str) -> u64 {
    let key = "driver features acked features=0x";
    let hex = console
        .lines()
        .rev()
        .find_map(|l| l.find(key).map(|i| &l[i + key.len()..]))
        .unwrap_or_else(|| panic!("no acked features in the backend log:\n{console}"));
    let hex: String = hex.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    u64::from_str_radix(&hex, 16).unwrap_or_else(|e| panic!("acked features {hex}: {e}"))
}

/// The results of the guest's [`lab::guest_ping_iperf3`] run whose console lines follow
/// `prefix`, printed with `label`; a failed ping or iperf3 run fails the test.
fn ping_and_iperf_results(c: &str, prefix: &str, label: &str) -> lab::PingIperf3 {
    let r = lab::PingIperf3::from_console(c, prefix).unwrap_or_else(|e| panic!("{e}:\n{c}"));
    eprintln!("RESULT {label}, nested TCG, relative only: {r}");
    r
}

#[test]
fn qemu_guest_pings_and_runs_iperf3_over_vhost_user_net() {
    let script = format!("{GUEST_NET}{}", lab::guest_ping_iperf3("10.0.0.1"));
    let Some(run) = run_lab(&script, "", "", true) else {
        return;
    };
    let c = &run.console;
    let acked = acked_features(c);
    for bit in OFFLOAD_BITS {
        assert!(
            acked & (1 << bit) != 0,
            "offload bit {bit} not negotiated: {acked:#x}"
        );
    }
    let ours = ping_and_iperf_results(c, "", "offloads on");
    // Same guest, QEMU's own virtio-net on a TAP, same lab run: ratios, not absolutes.
    if lab::console_value(c, "REF: PING-STATUS=").is_some() {
        let r = ping_and_iperf_results(c, "REF: ", "reference QEMU virtio-net (tap, vhost=off)");
        eprintln!(
            "RESULT ratio ours/ref: TCP guest->host {:.2}, host->guest {:.2}, UDP {:.2}",
            ours.tcp_out / r.tcp_out,
            ours.tcp_in / r.tcp_in,
            ours.udp / r.udp
        );
    } else {
        eprintln!("no reference run output");
    }
    for l in c.lines().filter(|l| l.contains("queue counters")) {
        eprintln!("{l}");
    }
    assert_eq!(run.status, 0, "lab script failed:\n{c}");
}

/// The guest's offloads off: QEMU's virtio-net offers no checksum or TSO feature, so frames
/// cross the backend fully formed (no GSO, checksums computed by the guest), TUNSETOFFLOAD 0.
#[test]
fn qemu_guest_with_offloads_off_pings_and_runs_iperf3() {
    let script = format!("{GUEST_NET}{}", lab::guest_ping_iperf3("10.0.0.1"));
    let props = ",csum=off,guest_csum=off,host_tso4=off,host_tso6=off,guest_tso4=off,\
                 guest_tso6=off,host_ecn=off,guest_ecn=off,host_ufo=off,guest_ufo=off";
    let Some(run) = run_lab(&script, "", props, false) else {
        return;
    };
    let c = &run.console;
    let acked = acked_features(c);
    for bit in OFFLOAD_BITS {
        assert!(
            acked & (1 << bit) == 0,
            "offload bit {bit} negotiated: {acked:#x}"
        );
    }
    ping_and_iperf_results(c, "", "offloads off");
    assert_eq!(run.status, 0, "lab script failed:\n{c}");
}

#[test]
fn qemu_guest_jumbo_frames_mtu_9000() {
    let script = format!(
        r#"{GUEST_NET}
ip link set eth0 mtu 9000
ip link show eth0 | grep -o 'mtu [0-9]*' | sed 's/^/GUEST-/'
ping -c 3 -W 5 -s 8000 10.0.0.1
echo PING-STATUS=$?
"#
    );
    let Some(run) = run_lab(&script, "--mtu 9000", "", false) else {
        return;
    };
    let c = &run.console;
    assert_eq!(lab::console_value(c, "GUEST-mtu "), Some("9000"), "{c}");
    assert_eq!(
        lab::console_value(c, "PING-STATUS="),
        Some("0"),
        "jumbo ping failed:\n{c}"
    );
    assert_eq!(run.status, 0, "lab script failed:\n{c}");
}

/// Link mode: two QEMU guests on one `vhost-user-net --link A,B` (no TAP): B pings A and runs
/// iperf3 against it (TCP both ways, UDP).
#[test]
fn link_mode_two_qemu_guests_ping_and_iperf3() {
    let Some(images) = lab::test_images() else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let guest = r#"
ip link set eth0 up
case $(cat /sys/class/net/eth0/address) in
*:01)
    ip addr add 10.0.1.1/24 dev eth0
    echo ROLE=A
    timeout 200 sh -c 'for i in 1 2 3; do iperf3 -s -1 >/dev/null 2>&1; done'
    ;;
*)
    ip addr add 10.0.1.2/24 dev eth0
    echo ROLE=B
    for i in $(seq 120); do ping -c 1 -W 2 10.0.1.1 >/dev/null 2>&1 && break; sleep 1; done
    ping -c 3 -W 5 10.0.1.1
    echo PING-STATUS=$?
    run() {
        key=$1; shift
        for t in 1 2 3 4 5 6; do
            out=$(iperf3 -c 10.0.1.1 -t 3 -i 0 -J "$@" | tr -d '\n')
            case "$out" in *'"error"'*) sleep 1 ;; *) break ;; esac
        done
        echo "$key=$out"
    }
    run IPERF-TCP
    run IPERF-TCPR -R
    run IPERF-UDP -u -b 20M
    ;;
esac
"#;
    let dir = tempfile::tempdir().expect("tempdir");
    let initrd = guest_initramfs(
        &images,
        guest,
        true,
        Cpio::new(),
        &dir.path().join("g.cpio"),
    )
    .expect("guest initramfs");
    let qemu = |name: &str, mac: &str| {
        format!(
            "timeout 600 qemu-system-x86_64 -enable-kvm -cpu host -machine q35 -smp 1 -m 512 \
             -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
             -chardev socket,id=c0,path=/tmp/{name}.sock -netdev vhost-user,id=n0,chardev=c0 \
             -device virtio-net-pci,netdev=n0,mac={mac},romfile= \
             -nic none -display none -monitor none -serial stdio -no-reboot \
             -kernel {kernel} -initrd {initrd} -append 'console=ttyS0 panic=-1 quiet tsc=reliable' \
             </dev/null >/lab/{name}.log 2>&1 &",
            kernel = lab::LAB_GUEST_KERNEL,
            initrd = lab::LAB_GUEST_INITRD,
        )
    };
    let script = format!(
        r#"
export NO_COLOR=1
echo 512 > /proc/sys/net/unix/max_dgram_qlen
/lab/bin/vhost-user-net --link /tmp/a.sock,/tmp/b.sock --mac 52:54:00:00:00:01 2>/lab/vn.log &
VN=$!
for i in $(seq 100); do [ -S /tmp/a.sock ] && [ -S /tmp/b.sock ] && break; sleep 0.1; done
{qa}
QA=$!
{qb}
QB=$!
wait $QA
echo QA-STATUS=$?
wait $QB
echo QB-STATUS=$?
dmesg | tail -5
sleep 1
kill $VN 2>/dev/null
sleep 0.5
sed 's/^/A: /' /lab/a.log
sed 's/^/B: /' /lab/b.log
echo VN-LOG-BEGIN
cat /lab/vn.log
echo VN-LOG-END
grep -q '{marker}0' /lab/a.log && grep -q '{marker}0' /lab/b.log
"#,
        qa = qemu("a", "52:54:00:00:00:01"),
        qb = qemu("b", "52:54:00:00:00:02"),
        marker = GUEST_EXIT_MARKER,
    );
    let run = LabHost::new(&images)
        .memory_mib(4096)
        .binary(env!("CARGO_BIN_EXE_vhost-user-net"), "/lab/bin")
        .with_guest(&initrd)
        .script(script)
        .timeout(Duration::from_secs(240))
        .run()
        .unwrap_or_else(|e| panic!("lab run: {e}"));
    eprintln!("lab run took {:.1?}", run.duration);
    let c = &run.console;
    ping_and_iperf_results(c, "", "link mode (TCP B->A, A->B, UDP B->A)");
    for l in c.lines().filter(|l| l.contains("queue counters")) {
        eprintln!("{l}");
    }
    assert_eq!(run.status, 0, "lab script failed:\n{c}");
}
