// SPDX-License-Identifier: Apache-2.0
//! End-to-end in the lab host: backends killed, upgraded or replaced under a running guest of
//! this VMM, which reconnects (`docs/vhost-user-recovery.md`).
//!
//! * `vhost-user-blk` killed with SIGKILL three times at random moments of a 60 s
//!   randwrite/crc32c-verify fio run and restarted after 0.5–3 s: every round verified, no I/O
//!   error in the guest, and at least one restarted backend resubmitted requests its
//!   predecessor had in flight. The backend serves an emulated NVMe disk of the lab host with
//!   O_DIRECT, throttled to [`NVME_IOPS`]: on a page-cache file each request is answered within
//!   microseconds and a kill almost never finds one in flight; on the throttled disk requests
//!   wait in the device, as on a slow disk, and every kill finds some.
//! * The upgrade path: SIGTERM to the debug build, the release build started on the same
//!   socket, under fio; then a backend with a larger disk, which the VMM refuses (one line
//!   naming the difference) and reports to the guest as DEVICE_NEEDS_RESET.
//! * `vhost-user-net` killed twice during a 30 s iperf3 TCP transfer from the guest: iperf3
//!   completes, and the guest sees no device reset.
//!
//! Run: `cargo build -p backends && cargo build --release -p backends && cargo test -p vmm
//! --test vhost_user_reconnect_lab -- --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use lab::{
    guest_initramfs, Cpio, FioRounds, LabHost, LabRun, KILL_WITH_IO_IN_FLIGHT, LAB_GUEST_INITRD,
    LAB_GUEST_KERNEL,
};

static SERIAL: Mutex<()> = Mutex::new(());

/// One of this project's backend binaries, in profile `profile` (`debug` or `release`).
fn backend(profile: &str, name: &str) -> PathBuf {
    let p = lab::repo_root().join(format!("target/{profile}/{name}"));
    let flag = if profile == "release" {
        " --release"
    } else {
        ""
    };
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build{flag} -p backends` first",
        p.display()
    );
    p
}

/// Bytes each fio round writes, then verifies: 4 KiB at a time at depth 32 within 64 MiB.
const ROUND_BYTES: u64 = 8 << 20;

/// Guest shell: fio rounds for `seconds` on /dev/vda, then the guest's I/O error count.
fn fio_guest(seconds: u32, after: &str) -> String {
    format!(
        "{}echo GUEST-IOERR-LINES=$(dmesg | grep -ci 'i/o error')\n\
         dmesg | grep -i -E 'i/o error|virtio_blk|blk_update' | tail -n 5\n{after}",
        lab::guest_fio_rounds(
            &format!(
                "--filename=/dev/vda --rw=randwrite --bs=4k --iodepth=32 --ioengine=libaio \
                 --direct=1 --size=64M --io_size={ROUND_BYTES} --verify=crc32c \
                 --do_verify=1 --verify_fatal=1"
            ),
            seconds
        )
    )
}

/// A random number of seconds in `[from, from + span)`, one decimal (busybox awk).
fn random_seconds(from: f64, span: f64) -> String {
    format!(
        "$(awk -v r=$$$RANDOM 'BEGIN {{ srand(r); printf \"%.1f\", {from} + rand() * {span} }}')"
    )
}

/// Lab shell: `start_backend BINARY [ARGS]` starts a blk backend on /tmp/vu.sock, appending to
/// /tmp/backend.log, and waits for its socket; `BPID` is its pid.
const START_BLK: &str = r#"
start_backend() {
    bin=$1; shift
    rm -f /tmp/vu.sock
    RUST_LOG=info $bin --socket /tmp/vu.sock --queues 2 "$@" >>/tmp/backend.log 2>&1 &
    BPID=$!
    i=0
    while [ ! -S /tmp/vu.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
}
wait_for() {
    i=0
    while ! grep -q "$1" /tmp/vmm.log && kill -0 $VMM 2>/dev/null && [ $i -lt 3000 ]; do
        sleep 0.1; i=$((i+1))
    done
}
"#;

/// The lab host's emulated NVMe disk (64 MiB), which the blk backends serve with `--direct`.
const NVME: &str = "/dev/nvme0n1 --direct";
/// The NVMe disk's operations per second (QEMU throttling).
const NVME_IOPS: u32 = 400;

/// Boots a guest running `guest` with this VMM's `--disk vhost_user=on,socket=/tmp/vu.sock`
/// in a lab host with a 64 MiB emulated NVMe disk that ran `before` (`start_backend` is
/// defined) and runs `during` while the VMM runs (`wait_for TEXT` waits for the VMM's
/// console to show it). The console ends with the backend's log summary.
fn run_blk(guest: &str, before: &str, during: &str, binaries: &[PathBuf]) -> Option<LabRun> {
    let images = lab::test_images()?;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let initrd = dir.path().join("g.cpio");
    guest_initramfs(&images, guest, true, Cpio::new(), &initrd).expect("guest initramfs");
    let nvme = dir.path().join("nvme.img");
    std::fs::File::create(&nvme)
        .and_then(|f| f.set_len(64 << 20))
        .expect("NVMe backing file");
    let script = format!(
        r#"
export NO_COLOR=1
echo never > /sys/kernel/mm/transparent_hugepage/enabled
for i in $(seq 50); do [ -b /dev/nvme0n1 ] && break; sleep 0.1; done
{START_BLK}
{KILL_WITH_IO_IN_FLIGHT}
{before}
: > /tmp/vmm.log
{{ RUST_LOG=vmm=info /lab/bin/vmm run --kernel {LAB_GUEST_KERNEL} --initramfs {LAB_GUEST_INITRD} \
    --cpus 2 --memory 512M --disk vhost_user=on,socket=/tmp/vu.sock; \
    echo VMM-EXIT-STATUS=$?; }} 2>&1 | tee -a /tmp/vmm.log &
VMM=$!
{during}
wait $VMM
kill -TERM $BPID 2>/dev/null; wait $BPID
echo BACKEND-EXIT-STATUS=$?
# Backend processes (each logs "waiting for a frontend" once) that resubmitted requests.
echo "RESUBMITTING-STARTS=$(awk '/waiting for a frontend/ {{p++}} /resubmitted=[1-9]/ {{hit[p] = 1}} END {{n = 0; for (k in hit) n++; print n}}' /tmp/backend.log)"
echo "RESUBMITTED-TOTAL=$(grep -o 'resubmitted=[0-9]*' /tmp/backend.log | awk -F= '{{s += $2}} END {{print s + 0}}')"
grep -E 'resubmitted=|refus|shutting down|not every queue|fdatasync|ERROR' /tmp/backend.log | tail -n 20
grep -q 'GUEST-EXIT-STATUS=0' /tmp/vmm.log
"#
    );
    let mut host = LabHost::new(&images)
        .memory_mib(3072)
        .nvme(&nvme)
        .nvme_iops(NVME_IOPS)
        .binary(env!("CARGO_BIN_EXE_vmm"), "/lab/bin")
        .binary(backend("debug", "vhost-user-blk"), "/lab/bin")
        .with_guest(&initrd)
        .script(script)
        .timeout(Duration::from_secs(420));
    for b in binaries {
        host = host.binary(b, "/lab/release");
    }
    let run = host.run().unwrap_or_else(|e| panic!("lab run: {e}"));
    eprintln!("lab run took {:.1?}", run.duration);
    Some(run)
}

fn value<'a>(c: &'a str, key: &str) -> &'a str {
    lab::console_value(c, key).unwrap_or_else(|| panic!("no {key} on the console:\n{c}"))
}

/// fio's rounds all verified, for at least `seconds`, with no I/O error in the guest.
fn check_fio(c: &str, seconds: u64) -> FioRounds {
    let rounds = FioRounds::from_console(c).unwrap_or_else(|e| panic!("{e}:\n{c}"));
    rounds
        .all_verified(ROUND_BYTES)
        .unwrap_or_else(|e| panic!("{e}:\n{c}"));
    assert!(
        rounds.seconds >= seconds,
        "fio ran {} s:\n{c}",
        rounds.seconds
    );
    assert_eq!(
        value(c, "GUEST-IOERR-LINES="),
        "0",
        "guest I/O errors:\n{c}"
    );
    rounds
}

#[test]
fn fio_verify_survives_three_kills_of_the_blk_backend() {
    let during = format!(
        r#"
wait_for FIO-START
for k in 1 2 3; do
    sleep {pause}
    kill_with_io_in_flight
    echo BACKEND-KILLED=$k
    sleep {gap}
    start_backend /lab/bin/vhost-user-blk --path {NVME}
    echo BACKEND-RESTARTED=$k
done
"#,
        pause = random_seconds(5.0, 10.0),
        gap = random_seconds(0.5, 2.5),
    );
    let Some(run) = run_blk(
        &fio_guest(60, ""),
        &format!("start_backend /lab/bin/vhost-user-blk --path {NVME}"),
        &during,
        &[],
    ) else {
        return;
    };
    let c = &run.console;
    assert_eq!(run.status, 0, "lab script failed:\n{c}");
    assert!(c.contains("BACKEND-RESTARTED=3"), "{c}");
    let rounds = check_fio(c, 60);
    assert_eq!(c.matches("reconnected after").count(), 3, "{c}");
    assert!(!c.contains("DEVICE_NEEDS_RESET"), "{c}");
    // Each kill waits for requests in flight on the disk; a request may still complete between
    // that check and the kill, so at least one successor (the issue's bar) must resubmit.
    let starts: u32 = value(c, "RESUBMITTING-STARTS=").parse().unwrap();
    assert!(
        starts >= 1,
        "no restarted backend had requests to resubmit:\n{c}"
    );
    assert_eq!(value(c, "VMM-EXIT-STATUS="), "0", "{c}");
    eprintln!(
        "{} rounds verified in {} s; {starts} restart(s) resubmitted {} request(s) in all",
        rounds.statuses.len(),
        rounds.seconds,
        value(c, "RESUBMITTED-TOTAL=")
    );
    for l in c.lines().filter(|l| {
        l.contains("resubmitted=") || l.contains("reconnected after") || l.contains("KILLED")
    }) {
        eprintln!("{l}");
    }
}

#[test]
fn sigterm_upgrade_to_the_release_build_then_a_resized_disk_is_refused() {
    // After fio, the guest waits for the disk to shrink to nothing: the VMM refused the
    // resized backend and marked the device (Linux re-reads the capacity on that interrupt).
    let after = "echo FIO-DONE\n\
        i=0; while [ \"$(cat /sys/block/vda/size)\" != 0 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done\n\
        echo VDA-SIZE-AFTER=$(cat /sys/block/vda/size)\n";
    let during = format!(
        r#"
wait_for FIO-START
sleep {pause}
kill -TERM $BPID; wait $BPID
echo OLD-BACKEND-EXIT-STATUS=$?
start_backend /lab/release/vhost-user-blk --path {NVME}
echo UPGRADED
wait_for FIO-DONE
dd if=/dev/zero of=/tmp/bigger.img bs=1M count=0 seek=128 2>/dev/null
kill -9 $BPID; wait $BPID 2>/dev/null
start_backend /lab/release/vhost-user-blk --path /tmp/bigger.img
echo RESIZED-BACKEND-STARTED
"#,
        pause = random_seconds(5.0, 10.0),
    );
    let Some(run) = run_blk(
        &fio_guest(30, after),
        &format!("start_backend /lab/bin/vhost-user-blk --path {NVME}"),
        &during,
        &[backend("release", "vhost-user-blk")],
    ) else {
        return;
    };
    let c = &run.console;
    assert_eq!(run.status, 0, "lab script failed:\n{c}");
    assert_eq!(value(c, "OLD-BACKEND-EXIT-STATUS="), "0", "{c}");
    assert!(c.contains("UPGRADED"), "{c}");
    check_fio(c, 30);
    // The old process drained its queues and flushed the disk before it exited.
    assert!(
        c.contains("shutting down: draining in-flight requests"),
        "{c}"
    );
    // The refusal is one line naming the difference, and the guest was told.
    let refusal = c
        .lines()
        .find(|l| l.contains("reconnect refused"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{c}"));
    assert!(
        refusal.contains("capacity 131072 -> 262144 sectors")
            && refusal.contains("DEVICE_NEEDS_RESET"),
        "{refusal}"
    );
    assert_eq!(value(c, "VDA-SIZE-AFTER="), "0", "{c}");
    assert_eq!(value(c, "VMM-EXIT-STATUS="), "0", "{c}");
}

#[test]
fn iperf3_runs_through_two_kills_of_the_net_backend() {
    let Some(images) = lab::test_images() else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let guest = r#"
ip link set eth0 up
ip addr add 10.0.0.2/24 dev eth0
ping -c 2 -W 5 10.0.0.1 >/dev/null
echo PING-STATUS=$?
echo IPERF-START
echo "IPERF-TCP=$(timeout 120 iperf3 -c 10.0.0.1 -t 30 -i 0 -J | tr -d '\n')"
echo GUEST-CARRIER=$(cat /sys/class/net/eth0/carrier)
echo GUEST-RX-LENGTH-ERRORS=$(cat /sys/class/net/eth0/statistics/rx_length_errors)
echo GUEST-NET-ERRORS=$(dmesg | grep -i virtio_net | grep -ciE 'reset|error|fail')
"#;
    let dir = tempfile::tempdir().expect("tempdir");
    let initrd = dir.path().join("g.cpio");
    guest_initramfs(&images, guest, true, Cpio::new(), &initrd).expect("guest initramfs");
    let script = format!(
        r#"
export NO_COLOR=1
start_backend() {{
    rm -f /tmp/vn.sock
    RUST_LOG=info /lab/bin/vhost-user-net --socket /tmp/vn.sock --tap tap0 \
        --mac 52:54:00:aa:bb:03 >>/tmp/vn.log 2>&1 &
    BPID=$!
    i=0
    while [ ! -S /tmp/vn.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
}}
start_backend
ip addr add 10.0.0.1/24 dev tap0
ip link set tap0 up
iperf3 -s -D
: > /tmp/vmm.log
{{ RUST_LOG=vmm=info /lab/bin/vmm run --kernel {LAB_GUEST_KERNEL} --initramfs {LAB_GUEST_INITRD} \
    --cpus 2 --memory 768M --net vhost_user=on,socket=/tmp/vn.sock; \
    echo VMM-EXIT-STATUS=$?; }} 2>&1 | tee -a /tmp/vmm.log &
VMM=$!
i=0
while ! grep -q IPERF-START /tmp/vmm.log && kill -0 $VMM 2>/dev/null && [ $i -lt 3000 ]; do
    sleep 0.1; i=$((i+1))
done
for k in 1 2; do
    sleep {pause}
    kill -9 $BPID; wait $BPID 2>/dev/null
    echo BACKEND-KILLED=$k
    sleep {gap}
    start_backend
    echo BACKEND-RESTARTED=$k
done
wait $VMM
echo TAP-ADDRESS=$(ip -4 -o addr show dev tap0 | awk '{{print $4}}')
kill -TERM $BPID; wait $BPID
grep -E 'resubmitted=|reserved=|refus|ERROR' /tmp/vn.log | tail -n 10
grep -q 'GUEST-EXIT-STATUS=0' /tmp/vmm.log
"#,
        pause = random_seconds(4.0, 6.0),
        gap = random_seconds(0.5, 2.5),
    );
    let run = LabHost::new(&images)
        .memory_mib(3072)
        .binary(env!("CARGO_BIN_EXE_vmm"), "/lab/bin")
        .binary(backend("debug", "vhost-user-net"), "/lab/bin")
        .with_guest(&initrd)
        .script(script)
        .timeout(Duration::from_secs(360))
        .run()
        .unwrap_or_else(|e| panic!("lab run: {e}"));
    eprintln!("lab run took {:.1?}", run.duration);
    let c = &run.console;
    assert_eq!(run.status, 0, "lab script failed:\n{c}");
    assert_eq!(value(c, "PING-STATUS="), "0", "{c}");
    assert!(c.contains("BACKEND-RESTARTED=2"), "{c}");
    let bps = lab::iperf3_bits_per_second(c, "IPERF-TCP=", false)
        .unwrap_or_else(|e| panic!("iperf3 did not complete: {e}:\n{c}"));
    assert_eq!(c.matches("reconnected after").count(), 2, "{c}");
    assert!(!c.contains("DEVICE_NEEDS_RESET"), "{c}");
    // The TAP outlived both backends with its address; the guest's link never went down.
    assert_eq!(value(c, "TAP-ADDRESS="), "10.0.0.1/24", "{c}");
    assert_eq!(value(c, "GUEST-CARRIER="), "1", "{c}");
    assert_eq!(value(c, "GUEST-NET-ERRORS="), "0", "{c}");
    assert_eq!(value(c, "GUEST-RX-LENGTH-ERRORS="), "0", "{c}");
    eprintln!(
        "iperf3 through two backend kills (nested TCG, relative only): {:.1} Mbit/s",
        bps / 1e6
    );
}
