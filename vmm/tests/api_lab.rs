// SPDX-License-Identifier: Apache-2.0
//! End-to-end: a VM inside the lab host driven through its API socket with
//! `vmm remote`, as an operator would, in one boot of the lab (CI budget):
//!
//! 1. `info` shows Running and the configuration; `pause` stops a guest loop
//!    that prints every 100 ms for 3 s while `info` says Paused (and a second
//!    `pause` is refused); `resume` lets it go on;
//! 2. `counters` read twice during a guest fio run on an in-VMM disk increase;
//! 3. a 5 s pause during a guest `fio --verify` on a vhost-user-blk disk: the
//!    backend's metrics show no new request while paused, fio finishes with
//!    every block verified;
//! 4. `reboot` boots the guest again (the in-VMM disk keeps what the first
//!    boot wrote, the vhost-user disk connects again), then `shutdown` presses
//!    the power button and the VMM exits 0 within 10 s.
//!
//! Run: `cargo build -p backends && cargo test -p vmm --test api_lab -- --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use lab::{guest_initramfs, Cpio, FioReport, LabHost, LAB_GUEST_INITRD, LAB_GUEST_KERNEL};

/// The guest: ticks until the lab says `next`, fio on the in-VMM disk (vdb), fio with
/// verification on the vhost-user disk (vda), then waits for the power button. A second boot
/// (vdb carries the first boot's mark) only says so and waits.
const GUEST: &str = r#"io() { awk '{print $1 + $5}' /sys/block/$1/stat; }
wait_io() { b=$(io $1); for i in $(seq 1200); do [ $(io $1) -gt $((b + 8)) ] && return 0; sleep 0.05; done; return 1; }
if dd if=/dev/vdb bs=512 count=1 2>/dev/null | grep -q BOOTED-ONCE; then
    echo GUEST-SECOND-BOOT
    sleep 600
    exit 0
fi
echo BOOTED-ONCE | dd of=/dev/vdb bs=512 count=1 conv=sync,fsync 2>/dev/null
( i=0; while :; do i=$((i + 1)); echo "T$i"; sleep 0.1; done ) &
TICKER=$!
echo GUEST-READY
read -r go
kill $TICKER
fio --name=counters --filename=/dev/vdb --rw=randread --bs=4k --ioengine=libaio --iodepth=4 \
    --direct=1 --time_based --runtime=8 --offset=1M --size=16M >/dev/null 2>/tmp/f1.err &
F=$!
wait_io vdb && echo GUEST-FIO-COUNTERS
st=0; wait $F || st=$?
echo GUEST-FIO-COUNTERS-STATUS=$st
fio --output-format=terse --terse-version=3 --filename=/dev/vda --ioengine=libaio --direct=1 \
    --verify=crc32c --do_verify=1 --name=paused-verify --rw=randwrite --bs=64k --iodepth=16 \
    --size=48M >/tmp/fio.terse 2>/tmp/fio.err &
F=$!
wait_io vda && echo GUEST-FIO-RUNNING
st=0; wait $F || st=$?
echo FIO-STATUS=$st
grep '^3;' /tmp/fio.terse | cut -d';' -f3,5,6,8,47,48,49 | sed 's/^/FIO-JOB=/'
cat /tmp/fio.err
echo GUEST-ROUND1-DONE
sleep 600
"#;

/// The lab side: backend, VMM, and `vmm remote` at each guest marker.
const LAB: &str = r#"dd if=/dev/zero of=/tmp/vu.img bs=1M count=64 2>/dev/null
dd if=/dev/zero of=/tmp/local.img bs=1M count=32 2>/dev/null
/lab/bin/vhost-user-blk --socket /tmp/vu.sock --path /tmp/vu.img --metrics 127.0.0.1:9101 \
    >/tmp/backend.log 2>&1 &
BACKEND=$!
for i in $(seq 100); do [ -S /tmp/vu.sock ] && break; sleep 0.1; done
R="/lab/bin/vmm remote --api-socket /tmp/api.sock"
mkfifo /tmp/vmm.in
exec 3<>/tmp/vmm.in
( RUST_LOG=vmm=info /lab/bin/vmm run --kernel /lab/vmlinuz --initramfs /lab/guest.cpio \
    --cmdline "console=ttyS0 panic=-1 quiet" --cpus 2 --memory 512M \
    --disk vhost_user=on,socket=/tmp/vu.sock,metrics=127.0.0.1:9101 \
    --disk path=/tmp/local.img --api-socket /tmp/api.sock --metrics 127.0.0.1:9100 <&3
  echo VMM-EXIT-STATUS=$? ) 2>&1 | tee /tmp/vmm.log &
VMM=$!
wait_for() { for i in $(seq 3000); do grep -q "$1" /tmp/vmm.log && return 0
    kill -0 $VMM 2>/dev/null || break; sleep 0.1; done
    echo "LAB-GAVE-UP waiting for $1"; return 1; }
ticks() { grep -c '^T[0-9]' /tmp/vmm.log; }
scrape() { wget -q -O - "http://127.0.0.1:$1/metrics" | grep "^$2" | awk '{s += $2} END {print s + 0}'; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }

wait_for GUEST-READY || exit 1
$R ping
echo LAB-INFO-1; $R info
sleep 1
n0=$(ticks)
$R pause && echo LAB-PAUSED
n1=$(ticks)
sleep 3
n2=$(ticks)
echo LAB-INFO-PAUSED; $R info | head -n 1
$R pause; echo LAB-PAUSE-AGAIN-STATUS=$?
$R resume && echo LAB-RESUMED
sleep 2
n3=$(ticks)
echo "LAB-TICKS before=$n0 paused=$n1 paused3s=$n2 resumed2s=$n3"
echo next >&3

wait_for GUEST-FIO-COUNTERS || exit 1
echo LAB-COUNTERS-1; $R counters
sleep 2
echo LAB-COUNTERS-2; $R counters
echo "LAB-VMM-METRICS requests=$(scrape 9100 'iovmm_requests_total{device="blk1"') latency=$(scrape 9100 'iovmm_request_latency_seconds_count{device="blk1"')"

wait_for GUEST-FIO-RUNNING || exit 1
b0=$(scrape 9101 iovmm_requests_total)
$R pause && echo LAB-PAUSED-2
sleep 1
b1=$(scrape 9101 iovmm_requests_total)
sleep 2
b2=$(scrape 9101 iovmm_requests_total)
echo LAB-INFO-PAUSED-2; $R info | head -n 1
sleep 2
$R resume && echo LAB-RESUMED-2
sleep 2
b3=$(scrape 9101 iovmm_requests_total)
echo "LAB-BACKEND-REQUESTS before=$b0 paused1s=$b1 paused3s=$b2 resumed2s=$b3"

wait_for GUEST-ROUND1-DONE || exit 1
$R reboot && echo LAB-REBOOTING
wait_for GUEST-SECOND-BOOT || exit 1
echo LAB-INFO-2; $R info
t0=$(uptime_s)
$R shutdown && echo LAB-SHUTDOWN-SENT
wait $VMM
t1=$(uptime_s)
echo "LAB-SHUTDOWN-SECONDS=$(echo "$t0 $t1" | awk '{printf "%.1f", $2 - $1}')"
kill $BACKEND; wait $BACKEND
grep -c 'frontend connected' /tmp/backend.log | sed 's/^/LAB-BACKEND-CONNECTIONS=/'
"#;

/// `key` followed by `name=value` pairs on one console line.
fn pairs(console: &str, key: &str) -> Vec<(String, f64)> {
    let line = console
        .lines()
        .find_map(|l| l.split_once(key).map(|(_, v)| v.to_string()))
        .unwrap_or_else(|| panic!("no {key} line:\n{console}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(f64::NAN)))
        .collect()
}

/// The text between `from` and the next `LAB-` marker line.
fn section<'a>(console: &'a str, from: &str) -> &'a str {
    let start = console
        .find(from)
        .unwrap_or_else(|| panic!("no {from}:\n{console}"));
    let rest = &console[start + from.len()..];
    let end = rest.find("\nLAB-").unwrap_or(rest.len());
    &rest[..end]
}

/// The REQUESTS column of `device`'s queue `0` in a `vmm remote counters` table.
fn table_requests(table: &str, device: &str) -> u64 {
    table
        .lines()
        .find_map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            (cells.first() == Some(&device) && cells.get(1) == Some(&"0"))
                .then(|| cells[2].parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no {device} row in:\n{table}"))
}

#[test]
fn an_operator_drives_a_running_vm_through_its_api() {
    let Some(images) = lab::test_images() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let initrd = guest_initramfs(
        &images,
        GUEST,
        true,
        Cpio::new(),
        &dir.path().join("g.cpio"),
    )
    .unwrap();
    let backend = lab::repo_root().join("target/debug/vhost-user-blk");
    assert!(backend.is_file(), "run `cargo build -p backends` first");
    let run = LabHost::new(&images)
        .binary(env!("CARGO_BIN_EXE_vmm"), "/lab/bin")
        .binary(backend, "/lab/bin")
        .with_guest(&initrd)
        .script(LAB)
        .timeout(Duration::from_secs(600))
        .run()
        .unwrap_or_else(|e| panic!("lab run: {e}"));
    let c = &run.console;
    let saved = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("api_lab.console");
    let _ = std::fs::write(&saved, c);
    eprintln!(
        "lab run took {:.1?}; console in {}",
        run.duration,
        saved.display()
    );
    assert_eq!(run.status, 0, "lab script failed:\n{c}");
    assert!(
        c.contains(LAB_GUEST_KERNEL) && c.contains(LAB_GUEST_INITRD),
        "{c}"
    );

    // 1. Info, then a pause the guest's 100 ms loop feels, then a resume.
    let info = section(c, "LAB-INFO-1");
    for line in [
        "state      Running (boot 1)",
        "cpus       2",
        "memory     512 MiB",
        "kernel     /lab/vmlinuz",
    ] {
        assert!(info.contains(line), "info lacks {line:?}:\n{info}");
    }
    let row = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} row:\n{info}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        row("vhost-user-blk0"),
        [
            "vhost-user-blk0",
            "virtio-blk",
            "vhost-user",
            "1",
            "active",
            "connected",
            "/tmp/vu.sock"
        ]
    );
    assert_eq!(
        row("blk1"),
        [
            "blk1",
            "virtio-blk",
            "in-vmm",
            "1",
            "active",
            "-",
            "/tmp/local.img"
        ]
    );
    assert!(
        section(c, "LAB-INFO-PAUSED").contains("state      Paused (boot 1)"),
        "{c}"
    );
    assert!(c.contains("already paused (the VM is Paused)"), "{c}");
    assert_eq!(lab::console_value(c, "LAB-PAUSE-AGAIN-STATUS="), Some("1"));
    let t: Vec<f64> = pairs(c, "LAB-TICKS").iter().map(|p| p.1).collect();
    let (before, paused, paused3s, resumed2s) = (t[0], t[1], t[2], t[3]);
    eprintln!("guest ticks: {t:?}");
    assert!(before >= 3.0, "the loop was not running: {t:?}");
    assert!(
        paused3s - paused <= 1.0,
        "the guest ran while paused: {t:?}"
    );
    assert!(resumed2s - paused3s >= 5.0, "the loop did not go on: {t:?}");

    // 2. Counters of the in-VMM disk grow during fio; the VMM's metrics agree.
    let first = table_requests(section(c, "LAB-COUNTERS-1"), "blk1");
    let second = table_requests(section(c, "LAB-COUNTERS-2"), "blk1");
    eprintln!("in-VMM disk requests: {first} then {second}");
    assert!(second > first && first > 0, "{first} -> {second}");
    assert!(
        section(c, "LAB-COUNTERS-1").contains("metrics at 127.0.0.1:9101"),
        "{c}"
    );
    let m = pairs(c, "LAB-VMM-METRICS");
    assert!(m[0].1 >= second as f64 && m[1].1 > 0.0, "{m:?}");
    assert_eq!(
        lab::console_value(c, "GUEST-FIO-COUNTERS-STATUS="),
        Some("0")
    );

    // 3. Paused during fio --verify on the vhost-user disk: nothing new reaches the
    // backend while paused, and every block verifies.
    let b: Vec<f64> = pairs(c, "LAB-BACKEND-REQUESTS")
        .iter()
        .map(|p| p.1)
        .collect();
    eprintln!("backend requests around the pause: {b:?}");
    assert!(b[0] > 0.0, "fio had not started: {b:?}");
    assert_eq!(
        b[1], b[2],
        "requests reached the backend while paused: {b:?}"
    );
    assert!(b[3] > b[2], "fio did not go on after the resume: {b:?}");
    assert!(section(c, "LAB-INFO-PAUSED-2").contains("Paused"), "{c}");
    let report = FioReport::from_console(c).unwrap_or_else(|e| panic!("{e}:\n{c}"));
    let job = report
        .verified("paused-verify", 48 << 20)
        .unwrap_or_else(|e| panic!("{e}:\n{c}"));
    eprintln!("fio across the pause: {job}");

    // 4. Reboot, then shutdown through the power button.
    let info = section(c, "LAB-INFO-2");
    assert!(info.contains("state      Running (boot 2)"), "{info}");
    assert!(info.contains("connected"), "{info}");
    assert!(
        c.contains("GUEST-POWER-BUTTON"),
        "the guest saw no button:\n{c}"
    );
    assert_eq!(lab::console_value(c, "VMM-EXIT-STATUS="), Some("0"), "{c}");
    let secs: f64 = lab::console_value(c, "LAB-SHUTDOWN-SECONDS=")
        .unwrap()
        .parse()
        .unwrap();
    eprintln!("shutdown took {secs} s");
    assert!(secs <= 10.0, "shutdown took {secs} s");
    assert_eq!(
        lab::console_value(c, "LAB-BACKEND-CONNECTIONS="),
        Some("2"),
        "{c}"
    );
}
