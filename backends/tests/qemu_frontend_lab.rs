// SPDX-License-Identifier: Apache-2.0
//! Interop: our `vhost-user-blk` backend driven by programs nobody here wrote.
//!
//! Inside the lab host (nested SVM, see `docs/lab.md`) the backend serves a raw file to
//! QEMU as the vhost-user *frontend* (`vhost-user-blk-pci`); a stock Debian guest kernel's
//! `virtio_blk` driver is the client and fio (with crc32c verification) plus busybox dd are the
//! workloads. Bytes the guest writes are checked in the backing file after QEMU exits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;
use std::time::Duration;

use lab::{
    guest_initramfs, Cpio, FioReport, LabHost, LabRun, GUEST_EXIT_MARKER, KILL_WITH_IO_IN_FLIGHT,
};

static SERIAL: Mutex<()> = Mutex::new(());

const DISK_MIB: u64 = 256;
/// Where the guest writes the known pattern (outside fio's first 64 MiB).
const PATTERN_OFFSET: u64 = 200 << 20;
const PATTERN_LEN: usize = 64 << 10;
/// Bytes each fio job writes (then verifies) inside its 64 MiB region. TCG-nested, writing all
/// 64 MiB (16384 4 KiB writes + verify reads, 512 at 128 KiB) took the run to 92 s; these
/// keep it under ~90 s on a loaded 2-core machine.
const FIO_IO_4K: u64 = 16 << 20;
const FIO_IO_128K: u64 = 32 << 20;

/// The read-write test's fio: 16 MiB of 4 KiB writes at depth 32, then 32 MiB of 128 KiB
/// writes at depth 1, within the first 64 MiB, each verified.
fn rw_fio() -> String {
    lab::guest_fio(
        "--filename=/dev/vda --rw=randwrite --ioengine=libaio --direct=1 --size=64M \
         --verify=crc32c --do_verify=1",
        &[
            ("4k", format!("--bs=4k --iodepth=32 --io_size={FIO_IO_4K}")),
            (
                "128k",
                format!("--bs=128k --iodepth=1 --io_size={FIO_IO_128K}"),
            ),
        ],
    )
}

/// A deterministic, non-repeating-per-block pattern (xorshift), so misplaced blocks show.
fn pattern() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..PATTERN_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// QEMU boots the guest with its default firmware, SeaBIOS, whose own virtio-blk driver reads
/// the disk (polling the used ring, no EVENT_IDX) before the guest kernel's `virtio_blk` resets
/// the device and takes over with a new ring. Both are clients under test. SeaBIOS never
/// reached the kernel while the backend advertised size_max 1 MiB x seg_max 128: it computes
/// `(u16)(size_max * seg_max / 512)` = 0 sectors per request and sent zero-length reads
/// forever (see `blk::SIZE_MAX`).
///
/// Runs the backend (extra args `backend_args`) and nested QEMU as its frontend in one lab boot.
/// `prefill` runs in the lab before the backend starts, `after` once QEMU and the backend are
/// gone. The backing file is `/lab/disk.img`, the pattern `/lab/pattern.bin`.
fn run_with_qemu_frontend(
    guest_script: &str,
    backend_args: &str,
    prefill: &str,
    after: &str,
) -> Option<LabRun> {
    let images = lab::test_images()?;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut extra = Cpio::new();
    extra
        .add_file("/pattern.bin", pattern(), 0o644)
        .expect("pattern in guest cpio");
    let initrd = guest_initramfs(
        &images,
        guest_script,
        true,
        extra,
        &dir.path().join("guest.cpio"),
    )
    .expect("guest initramfs");
    let script = format!(
        r#"
# khugepaged in the TCG lab kernel soft-locked a CPU for minutes collapsing QEMU's guest RAM.
echo never > /sys/kernel/mm/transparent_hugepage/enabled
echo never > /sys/kernel/mm/transparent_hugepage/defrag
echo THP=$(cat /sys/kernel/mm/transparent_hugepage/enabled)
dd if=/dev/zero of=/lab/disk.img bs=1M count=0 seek={DISK_MIB} 2>/dev/null
{prefill}
/lab/bin/vhost-user-blk --socket /tmp/vu.sock --path /lab/disk.img --queues 2 {backend_args} \
    2>/lab/backend.log &
BPID=$!
i=0
while [ ! -S /tmp/vu.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
t0=$(cut -d' ' -f1 /proc/uptime)
# The guest's console goes straight to the lab console (a file shown at the end left the lab
# console silent for the whole nested run, which a slow run could take past the limit).
timeout 150 qemu-system-x86_64 -enable-kvm -cpu host -machine q35,memory-backend=mem -smp 2 -m 512 \
    -object memory-backend-memfd,id=mem,size=512M,share=on \
    -chardev socket,id=vu0,path=/tmp/vu.sock -device vhost-user-blk-pci,chardev=vu0,num-queues=2 \
    -nic none -display none -monitor none -serial stdio -no-reboot \
    -kernel {kernel} -initrd {initrd} -append "console=ttyS0 panic=-1 quiet" </dev/null 2>&1
echo QEMU-EXIT-STATUS=$?
t1=$(cut -d' ' -f1 /proc/uptime)
echo "NESTED-QEMU-SECONDS=$(awk "BEGIN {{ print $t1 - $t0 }}")"
if kill -TERM $BPID 2>/dev/null; then echo BACKEND-WAS-RUNNING=1; else echo BACKEND-WAS-RUNNING=0; fi
wait $BPID
echo BACKEND-EXIT-STATUS=$?
echo '--- backend log (tail) ---'
tail -n 15 /lab/backend.log
echo '--- end backend log ---'
{after}
"#,
        kernel = lab::LAB_GUEST_KERNEL,
        initrd = lab::LAB_GUEST_INITRD,
    );
    let run = LabHost::new(&images)
        .memory_mib(3072)
        .binary(env!("CARGO_BIN_EXE_vhost-user-blk"), "/lab/bin")
        .bytes("/lab/pattern.bin", pattern(), 0o644)
        .with_guest(&initrd)
        .script(script)
        .timeout(Duration::from_secs(240))
        .run()
        .unwrap_or_else(|e| panic!("lab run: {e}"));
    let bios = value(&run.console, "GUEST-BIOS=").unwrap_or_default();
    assert!(
        bios.contains("SeaBIOS"),
        "the guest should boot with QEMU's default firmware (SeaBIOS), got {bios:?}:\n{}",
        run.console
    );
    eprintln!(
        "TIMING lab wall {:.1?}; nested QEMU run {} s (lab clock)",
        run.duration,
        value(&run.console, "NESTED-QEMU-SECONDS=").unwrap_or_default()
    );
    Some(run)
}

/// The text after `key` on the first console line that contains it.
fn value(console: &str, key: &str) -> Option<String> {
    console.lines().find_map(|l| {
        let at = l.find(key)?;
        Some(l[at + key.len()..].trim().to_string())
    })
}

fn int(console: &str, key: &str) -> i64 {
    value(console, key)
        .and_then(|v| v.split_whitespace().next().map(str::to_owned))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no integer {key} on the console:\n{console}"))
}

/// Guest side of the read-write test: geometry, two verified fio jobs ([`rw_fio`], in place of
/// `FIO_JOBS`), a dd pattern.
const RW_GUEST: &str = r#"
echo VDA-SECTORS=$(cat /sys/block/vda/size)
echo VDA-MQ=$(ls /sys/block/vda/mq | wc -l)
echo VDA-RO=$(cat /sys/block/vda/ro)
FIO_JOBS
dd if=/pattern.bin of=/dev/vda bs=4096 seek=$((PATTERN_OFFSET / 4096)) conv=fsync 2>/dev/null
echo DD-WRITE-STATUS=$?
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/vda of=/tmp/back.bin bs=4096 skip=$((PATTERN_OFFSET / 4096)) count=PATTERN_BLOCKS 2>/dev/null
cmp /tmp/back.bin /pattern.bin
echo GUEST-READBACK-CMP=$?
echo GUEST-IOERR-LINES=$(dmesg | grep -ci 'i/o error')
"#;

/// Which firmware booted the guest (SMBIOS type 0, as the guest kernel sees it).
const BIOS_LINE: &str =
    "echo GUEST-BIOS=$(cat /sys/class/dmi/id/bios_vendor) $(cat /sys/class/dmi/id/bios_version)\n";

fn guest_script(template: &str) -> String {
    format!("{BIOS_LINE}{template}")
        .replace("PATTERN_OFFSET", &PATTERN_OFFSET.to_string())
        .replace("PATTERN_BLOCKS", &(PATTERN_LEN / 4096).to_string())
        .replace("FIO_JOBS", &rw_fio())
}

#[test]
fn qemu_guest_fio_verify_and_dd_pattern_reach_backing_file() {
    let after = format!(
        "dd if=/lab/disk.img of=/lab/region.bin bs=4096 skip={} count={} 2>/dev/null\n\
         cmp /lab/region.bin /lab/pattern.bin\necho BACKING-CMP=$?\n\
         echo BACKING-SIZE=$(wc -c < /lab/disk.img)\n",
        PATTERN_OFFSET / 4096,
        PATTERN_LEN / 4096
    );
    let Some(run) = run_with_qemu_frontend(&guest_script(RW_GUEST), "", "", &after) else {
        return;
    };
    let c = &run.console;
    assert_eq!(run.status, 0, "lab script failed:\n{c}");
    assert_eq!(int(c, GUEST_EXIT_MARKER), 0, "guest script failed:\n{c}");
    assert_eq!(int(c, "QEMU-EXIT-STATUS="), 0, "QEMU failed:\n{c}");
    assert_eq!(int(c, "VDA-SECTORS="), (DISK_MIB << 20) as i64 / 512, "{c}");
    assert_eq!(int(c, "VDA-MQ="), 2, "guest should see 2 queues:\n{c}");
    assert_eq!(int(c, "VDA-RO="), 0, "{c}");

    let report = FioReport::from_console(c).unwrap_or_else(|e| panic!("{e}:\n{c}"));
    for (name, io) in [("4k", FIO_IO_4K), ("128k", FIO_IO_128K)] {
        let job = report
            .verified(name, io)
            .unwrap_or_else(|e| panic!("{e}:\n{c}"));
        assert_eq!(
            job.write_bytes, io,
            "fio {name} should write {io} bytes: {job:?}"
        );
        assert_eq!(
            job.read_bytes, io,
            "fio {name} verify phase should read back all it wrote: {job:?}"
        );
        eprintln!("FIO (TCG-nested, relative only) randwrite bs={name}: {job}");
    }
    assert_eq!(int(c, "DD-WRITE-STATUS="), 0, "{c}");
    assert_eq!(int(c, "GUEST-READBACK-CMP="), 0, "{c}");
    assert_eq!(
        int(c, "GUEST-IOERR-LINES="),
        0,
        "guest logged I/O errors:\n{c}"
    );
    assert_eq!(
        int(c, "BACKING-CMP="),
        0,
        "backing file differs from what the guest wrote:\n{c}"
    );
    assert_eq!(int(c, "BACKING-SIZE="), (DISK_MIB << 20) as i64, "{c}");
    assert_eq!(int(c, "BACKEND-EXIT-STATUS="), 0, "backend exit:\n{c}");
}

/// Guest side of the read-only test: a write must fail, a read must return the prefilled data.
const RO_GUEST: &str = r#"
echo VDA-RO=$(cat /sys/block/vda/ro)
dd if=/pattern.bin of=/dev/vda bs=4096 seek=$((PATTERN_OFFSET / 4096)) conv=fsync 2>/tmp/dd.err
echo RO-WRITE-STATUS=$?
cat /tmp/dd.err
echo 3 > /proc/sys/vm/drop_caches
dd if=/dev/vda of=/tmp/r.bin bs=4096 count=PATTERN_BLOCKS 2>/dev/null
echo RO-READ-STATUS=$?
cmp /tmp/r.bin /pattern.bin
echo RO-READ-CMP=$?
dmesg | tail -n 5
echo GUEST-IOERR-LINES=$(dmesg | grep -ci 'i/o error')
"#;

#[test]
fn readonly_backend_refuses_guest_writes_and_serves_reads() {
    // The pattern is at offset 0 of the backing file before the backend starts.
    let prefill = "dd if=/lab/pattern.bin of=/lab/disk.img conv=notrunc 2>/dev/null";
    let after = format!(
        "dd if=/lab/disk.img of=/lab/region.bin bs=4096 skip={} count={} 2>/dev/null\n\
         dd if=/dev/zero of=/lab/zero.bin bs=4096 count={} 2>/dev/null\n\
         cmp /lab/region.bin /lab/zero.bin\necho UNTOUCHED-CMP=$?\n",
        PATTERN_OFFSET / 4096,
        PATTERN_LEN / 4096,
        PATTERN_LEN / 4096
    );
    let Some(run) = run_with_qemu_frontend(&guest_script(RO_GUEST), "--readonly", prefill, &after)
    else {
        return;
    };
    let c = &run.console;
    assert_eq!(run.status, 0, "lab script failed:\n{c}");
    assert_eq!(int(c, GUEST_EXIT_MARKER), 0, "guest script failed:\n{c}");
    assert_eq!(int(c, "QEMU-EXIT-STATUS="), 0, "QEMU failed:\n{c}");
    assert_eq!(
        int(c, "VDA-RO="),
        1,
        "guest should see a read-only disk:\n{c}"
    );
    assert_ne!(int(c, "RO-WRITE-STATUS="), 0, "write should fail:\n{c}");
    assert_eq!(int(c, "RO-READ-STATUS="), 0, "read should work:\n{c}");
    assert_eq!(int(c, "RO-READ-CMP="), 0, "read returned wrong data:\n{c}");
    assert_eq!(
        int(c, "UNTOUCHED-CMP="),
        0,
        "backing file was written:\n{c}"
    );
    assert_eq!(int(c, "BACKEND-EXIT-STATUS="), 0, "backend exit:\n{c}");
    eprintln!(
        "read-only: guest dmesg I/O error lines: {} (the guest kernel refuses writes to a \
         read-only disk before any request reaches the backend)",
        int(c, "GUEST-IOERR-LINES=")
    );
}

/// Seconds the guest keeps starting verified fio rounds while the backend is killed.
const RESTART_FIO_SECONDS: u32 = 45;
/// Bytes each round writes (then verifies), 4 KiB at a time at depth 32 in 64 MiB.
const RESTART_ROUND_BYTES: u64 = 8 << 20;

/// Lab shell: start the backend (appending to `/lab/backend.log`) and wait for its socket. It
/// serves the lab host's emulated NVMe disk with O_DIRECT, throttled to 400 operations per
/// second: on a page-cache file each request is answered within microseconds and a kill almost
/// never finds one in flight; on the throttled disk requests wait in the device.
const START_BACKEND: &str = r#"
start_backend() {
    rm -f /tmp/vu.sock
    RUST_LOG=info /lab/bin/vhost-user-blk --socket /tmp/vu.sock --path /dev/nvme0n1 --direct \
        --queues 2 >>/lab/backend.log 2>&1 &
    BPID=$!
    i=0
    while [ ! -S /tmp/vu.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
}
"#;

/// A random number of seconds in `[from, from + span)`, with one decimal (busybox awk).
fn random_seconds(from: f64, span: f64) -> String {
    format!(
        "$(awk -v r=$$$RANDOM 'BEGIN {{ srand(r); printf \"%.1f\", {from} + rand() * {span} }}')"
    )
}

#[test]
fn qemu_reconnects_to_a_killed_backend_under_fio_verify() {
    let Some(images) = lab::test_images() else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let guest = format!(
        "{}echo GUEST-IOERR-LINES=$(dmesg | grep -ci 'i/o error')\n\
         dmesg | grep -i -E 'i/o error|virtio_blk|blk_update' | tail -n 5\n",
        lab::guest_fio_rounds(
            &format!(
                "--filename=/dev/vda --rw=randwrite --bs=4k --iodepth=32 --ioengine=libaio \
                 --direct=1 --size=64M --io_size={RESTART_ROUND_BYTES} --verify=crc32c \
                 --do_verify=1 --verify_fatal=1"
            ),
            RESTART_FIO_SECONDS
        )
    );
    let initrd = guest_initramfs(
        &images,
        &guest,
        true,
        Cpio::new(),
        &dir.path().join("guest.cpio"),
    )
    .expect("guest initramfs");
    let script = format!(
        r#"
echo never > /sys/kernel/mm/transparent_hugepage/enabled
echo never > /sys/kernel/mm/transparent_hugepage/defrag
for i in $(seq 50); do [ -b /dev/nvme0n1 ] && break; sleep 0.1; done
{START_BACKEND}
{KILL_WITH_IO_IN_FLIGHT}
start_backend
: > /tmp/guest.log
tail -f /tmp/guest.log &
TAIL=$!
# QEMU reconnects to the backend socket every second once it is lost (reconnect=1).
timeout 400 qemu-system-x86_64 -enable-kvm -cpu host -machine q35,memory-backend=mem -smp 2 -m 512 \
    -object memory-backend-memfd,id=mem,size=512M,share=on \
    -chardev socket,id=vu0,path=/tmp/vu.sock,reconnect=1 \
    -device vhost-user-blk-pci,chardev=vu0,num-queues=2 \
    -nic none -display none -monitor none -serial file:/tmp/guest.log -no-reboot \
    -kernel {kernel} -initrd {initrd} -append "console=ttyS0 panic=-1 quiet" </dev/null \
    >/tmp/qemu.log 2>&1 &
QEMU=$!
i=0
while ! grep -q FIO-START /tmp/guest.log && kill -0 $QEMU 2>/dev/null && [ $i -lt 1800 ]; do
    sleep 0.1; i=$((i+1))
done
for k in 1 2; do
    sleep {first}
    kill_with_io_in_flight
    echo BACKEND-KILLED=$k
    sleep {gap}
    start_backend
    echo BACKEND-RESTARTED=$k
done
wait $QEMU
echo QEMU-EXIT-STATUS=$?
sleep 1
kill $TAIL
kill -TERM $BPID
wait $BPID
echo BACKEND-EXIT-STATUS=$?
echo RESUBMITTING-STARTS=$(awk '/waiting for a frontend/ {{p++}} /resubmitted=[1-9]/ {{hit[p] = 1}} END {{n = 0; for (k in hit) n++; print n}}' /lab/backend.log)
echo "RESUBMITTED-TOTAL=$(grep -o 'resubmitted=[0-9]*' /lab/backend.log | awk -F= '{{s += $2}} END {{print s + 0}}')"
grep -E 'resubmitted=|inflight|refus|ERROR|WARN' /lab/backend.log | tail -n 30
tail -n 5 /tmp/qemu.log
"#,
        first = random_seconds(4.0, 10.0),
        gap = random_seconds(0.5, 2.5),
        kernel = lab::LAB_GUEST_KERNEL,
        initrd = lab::LAB_GUEST_INITRD,
    );
    let nvme = dir.path().join("nvme.img");
    std::fs::File::create(&nvme)
        .and_then(|f| f.set_len(64 << 20))
        .expect("NVMe backing file");
    let run = LabHost::new(&images)
        .memory_mib(3072)
        .nvme(&nvme)
        .nvme_iops(400)
        .binary(env!("CARGO_BIN_EXE_vhost-user-blk"), "/lab/bin")
        .with_guest(&initrd)
        .script(script)
        .timeout(Duration::from_secs(420))
        .run()
        .unwrap_or_else(|e| panic!("lab run: {e}"));
    let c = &run.console;
    eprintln!("TIMING lab wall {:.1?}", run.duration);
    assert_eq!(run.status, 0, "lab script failed:\n{c}");
    assert_eq!(int(c, GUEST_EXIT_MARKER), 0, "guest script failed:\n{c}");
    assert_eq!(int(c, "QEMU-EXIT-STATUS="), 0, "QEMU failed:\n{c}");
    assert!(
        c.contains("BACKEND-RESTARTED=2"),
        "not restarted twice:\n{c}"
    );
    let rounds = lab::FioRounds::from_console(c).unwrap_or_else(|e| panic!("{e}:\n{c}"));
    rounds
        .all_verified(RESTART_ROUND_BYTES)
        .unwrap_or_else(|e| panic!("{e}:\n{c}"));
    assert!(
        rounds.seconds >= u64::from(RESTART_FIO_SECONDS),
        "fio ran {} s:\n{c}",
        rounds.seconds
    );
    assert_eq!(int(c, "GUEST-IOERR-LINES="), 0, "guest I/O errors:\n{c}");
    assert_eq!(int(c, "BACKEND-EXIT-STATUS="), 0, "backend exit:\n{c}");
    eprintln!(
        "{} verified rounds in {} s; backend starts that resubmitted requests: {} ({} in all)",
        rounds.statuses.len(),
        rounds.seconds,
        int(c, "RESUBMITTING-STARTS="),
        int(c, "RESUBMITTED-TOTAL=")
    );
    for l in c
        .lines()
        .filter(|l| l.contains("inflight") || l.contains("resubmitted="))
    {
        eprintln!("{l}");
    }
}
