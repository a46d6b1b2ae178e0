// SPDX-License-Identifier: Apache-2.0
//! End-to-end: a guest inside the lab host drives a virtio-blk disk whose
//! data path is a vhost-user backend (qemu-storage-daemon, or this project's
//! `vhost-user-blk` when built) running in the lab next to the VMM.
//!
//! Run: `cargo test -p vmm --test vhost_user_blk_lab -- --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use lab::{guest_initramfs, Cpio, FioReport, LabHost, LabRun, LAB_GUEST_INITRD, LAB_GUEST_KERNEL};

static SERIAL: Mutex<()> = Mutex::new(());

const VMM_IN_LAB: &str = "/lab/bin/vmm";
const DISK_MIB: u64 = 64;
/// Where the pattern goes on the disk (bytes) and its length.
const PATTERN_OFFSET: u64 = 1 << 20;
const PATTERN_LEN: usize = 1 << 20;

/// Deterministic, incompressible-looking bytes.
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

/// A vhost-user-blk backend started in the lab, listening on /tmp/vu.sock.
enum Backend {
    /// qemu-storage-daemon (from the lab image).
    Qsd,
    /// This project's backend (`cargo build -p backends`), with extra arguments.
    Ours(&'static str),
}

/// This project's backend binary, built by `cargo build -p backends`.
fn our_backend() -> PathBuf {
    let p = lab::repo_root().join("target/debug/vhost-user-blk");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build -p backends` first",
        p.display()
    );
    p
}

impl Backend {
    fn start_command(&self) -> String {
        match self {
            Backend::Qsd => "qemu-storage-daemon --blockdev driver=file,filename=/tmp/disk.img,node-name=d0 \
                 --export type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=/tmp/vu.sock,writable=on,num-queues=2"
                .to_string(),
            Backend::Ours(extra) => format!(
                "/lab/bin/vhost-user-blk --socket /tmp/vu.sock --path /tmp/disk.img --queues 2 {extra}"
            ),
        }
    }
}

struct Scenario<'a> {
    backend: Backend,
    /// Shell run in the lab after the disk image is created, before the backend starts.
    prepare: &'a str,
    guest_script: &'a str,
    with_tools: bool,
    /// Shell run in the lab while the VMM runs in the background (after the
    /// guest printed GUEST-READY), e.g. to kill the backend.
    during: &'a str,
    /// Extra VMM `--disk` options.
    disk_opts: &'a str,
}

impl<'a> Scenario<'a> {
    /// `guest_script` against `backend`, with nothing else around it.
    fn new(backend: Backend, guest_script: &'a str) -> Self {
        Scenario {
            backend,
            prepare: "",
            guest_script,
            with_tools: false,
            during: "",
            disk_opts: "",
        }
    }
}

struct Outcome {
    vmm_status: i32,
    console: String,
}

impl Outcome {
    fn value(&self, key: &str) -> String {
        self.console
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {key} in output:\n{}", self.console))
    }
}

fn run(sc: Scenario<'_>) -> Option<Outcome> {
    let images = lab::test_images()?;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut extra = Cpio::new();
    extra
        .add_file("/pattern.bin", pattern(), 0o644)
        .expect("pattern");
    let initrd = guest_initramfs(
        &images,
        sc.guest_script,
        sc.with_tools,
        extra,
        &dir.path().join("guest.cpio"),
    )
    .expect("guest initramfs");
    let script = format!(
        "dd if=/dev/zero of=/tmp/disk.img bs=1M count={DISK_MIB} 2>/dev/null\n\
         {prepare}\n\
         {backend} > /tmp/backend.log 2>&1 &\n\
         BACKEND=$!\n\
         for i in $(seq 100); do [ -S /tmp/vu.sock ] && break; sleep 0.1; done\n\
         echo LAB-STEP=backend-listening-$([ -S /tmp/vu.sock ] && echo yes || echo no)\n\
         {{ RUST_LOG=${{RUST_LOG:-vmm=debug}} {VMM_IN_LAB} run --kernel {LAB_GUEST_KERNEL} \
           --initramfs {LAB_GUEST_INITRD} --cpus 2 --memory 512M \
           --disk vhost_user=on,socket=/tmp/vu.sock{opts}; echo VMM-EXIT-STATUS=$?; }} 2>&1 \
           | tee /tmp/vmm.log &\n\
         VMM=$!\n\
         for i in $(seq 600); do grep -q GUEST-READY /tmp/vmm.log && break; \
           kill -0 $VMM 2>/dev/null || break; sleep 0.1; done\n\
         {during}\n\
         wait $VMM\n\
         kill $BACKEND 2>/dev/null; wait $BACKEND 2>/dev/null\n\
         echo '--- backend log'; cat /tmp/backend.log\n\
         dd if=/tmp/disk.img of=/tmp/readback bs=4096 skip={skip} count={count} 2>/dev/null\n\
         if cmp /tmp/readback /lab/pattern.bin; then echo LAB-CMP=equal; else echo LAB-CMP=differs; fi\n",
        backend = sc.backend.start_command(),
        opts = sc.disk_opts,
        prepare = sc.prepare,
        during = sc.during,
        skip = PATTERN_OFFSET / 4096,
        count = PATTERN_LEN / 4096,
    );
    let mut host = LabHost::new(&images)
        .binary(env!("CARGO_BIN_EXE_vmm"), "/lab/bin")
        .bytes("/lab/pattern.bin", pattern(), 0o644)
        .with_guest(&initrd)
        .script(script)
        .timeout(Duration::from_secs(300));
    if let Backend::Ours(_) = &sc.backend {
        host = host.binary(our_backend(), "/lab/bin");
    }
    let run: LabRun = host.run().unwrap_or_else(|e| panic!("lab run: {e}"));
    eprintln!("lab run took {:.1?}", run.duration);
    let out = Outcome {
        vmm_status: 0,
        console: run.console,
    };
    let status = out.value("VMM-EXIT-STATUS=").parse().unwrap_or(-1);
    Some(Outcome {
        vmm_status: status,
        ..out
    })
}

const DD_SCRIPT: &str = "echo GUEST-READY\n\
    echo SECTORS=$(cat /sys/block/vda/size)\n\
    echo MQ=$(ls /sys/block/vda/mq | wc -l)\n\
    echo \"write through\" > /sys/block/vda/cache_type 2>/dev/null\n\
    echo CACHE-TYPE=$(cat /sys/block/vda/cache_type | tr ' ' _)\n\
    echo \"write back\" > /sys/block/vda/cache_type 2>/dev/null\n\
    dd if=/pattern.bin of=/dev/vda bs=4096 seek=256 conv=fsync 2>&1\n\
    echo 3 > /proc/sys/vm/drop_caches\n\
    dd if=/dev/vda of=/tmp/rb bs=4096 skip=256 count=256 2>&1\n\
    if cmp /tmp/rb /pattern.bin; then echo GUEST-CMP=equal; else echo GUEST-CMP=differs; fi\n\
    t0=$(cut -d' ' -f1 /proc/uptime)\n\
    dd if=/dev/zero of=/dev/vda bs=1M count=32 seek=8 conv=fsync 2>/dev/null\n\
    t1=$(cut -d' ' -f1 /proc/uptime)\n\
    echo 3 > /proc/sys/vm/drop_caches\n\
    dd if=/dev/vda of=/dev/null bs=1M count=32 skip=8 2>/dev/null\n\
    t2=$(cut -d' ' -f1 /proc/uptime)\n\
    echo \"$t0 $t1 $t2\" | awk '{printf \"DD-MIBS write=%.1f read=%.1f\\n\", 32/($2-$1+0.001), 32/($3-$2+0.001)}'\n";

/// The data path must never pass through the VMM: every queue notify went
/// to a KVM ioeventfd.
fn check_no_vmm_notifies(c: &str) {
    assert!(
        c.contains("stopped; 0 queue notifies went through the VMM"),
        "queue notifies reached the VMM (or no teardown log):\n{c}"
    );
}

fn check_dd(out: &Outcome) {
    let c = &out.console;
    check_no_vmm_notifies(c);
    // A vhost-user device is configured: shared RAM, chosen without being asked for.
    assert_eq!(lab::guest_ram_mode(c).as_deref(), Some("shared"), "{c}");
    assert_eq!(out.value("SECTORS="), (DISK_MIB * 2048).to_string(), "{c}");
    assert_eq!(out.value("MQ="), "2", "{c}");
    assert_eq!(out.value("GUEST-CMP="), "equal", "{c}");
    assert_eq!(out.value("LAB-CMP="), "equal", "{c}");
    assert_eq!(out.value("GUEST-EXIT-STATUS="), "0", "{c}");
    assert_eq!(out.vmm_status, 0, "{c}");
    // CONFIG_WCE: the writeback byte went to the backend with SET_CONFIG.
    assert_eq!(out.value("CACHE-TYPE="), "write_through", "{c}");
    eprintln!(
        "dd 32 MiB, 1 MiB blocks (TCG-nested, relative only): {}",
        out.value("DD-MIBS")
    );
}

#[test]
fn qsd_disk_size_queues_and_data() {
    let Some(out) = run(Scenario::new(Backend::Qsd, DD_SCRIPT)) else {
        return;
    };
    check_dd(&out);
}

/// randwrite then verify-read at 4 KiB and 128 KiB, iodepth 1 and 32: name, block size, iodepth,
/// MiB written and read back (4k jobs smaller:
/// thousands of nested I/Os at queue depth 1 are what makes the lab slow, not the bytes).
const FIO_JOBS: [(&str, &str, u32, u64); 4] = [
    ("rw4k-qd1", "4k", 1, 8),
    ("rw4k-qd32", "4k", 32, 8),
    ("rw128k-qd1", "128k", 1, 32),
    ("rw128k-qd32", "128k", 32, 32),
];

fn fio_script() -> String {
    let jobs: Vec<_> = FIO_JOBS
        .iter()
        .map(|(name, bs, depth, mib)| {
            let options = format!("--rw=randwrite --bs={bs} --iodepth={depth} --size={mib}M");
            (name, options)
        })
        .collect();
    let common = "--filename=/dev/vda --ioengine=libaio --direct=1 --verify=crc32c --do_verify=1";
    format!("echo GUEST-READY\n{}", lab::guest_fio(common, &jobs))
}

fn check_fio(out: &Outcome) {
    let c = &out.console;
    check_no_vmm_notifies(c);
    let report = FioReport::from_console(c).unwrap_or_else(|e| panic!("{e}:\n{c}"));
    for (name, _, _, mib) in FIO_JOBS {
        let job = report
            .verified(name, mib << 20)
            .unwrap_or_else(|e| panic!("{e}:\n{c}"));
        eprintln!("fio {name} (TCG-nested, relative only): {job}");
    }
    assert_eq!(out.value("GUEST-EXIT-STATUS="), "0", "{c}");
    assert_eq!(out.vmm_status, 0, "{c}");
}

#[test]
fn qsd_fio_verify() {
    let script = fio_script();
    let Some(out) = run(Scenario {
        with_tools: true,
        disk_opts: ",queue_size=128",
        ..Scenario::new(Backend::Qsd, &script)
    }) else {
        return;
    };
    check_fio(&out);
}

const KILL_SCRIPT: &str = "echo GUEST-READY\n\
    echo SECTORS=$(cat /sys/block/vda/size)\n\
    sleep 6\n\
    echo GUEST-STILL-ALIVE\n\
    echo SIZE-AFTER=$(cat /sys/block/vda/size)\n\
    timeout 10 dd if=/dev/vda of=/tmp/after bs=4096 count=1 2>&1\n\
    echo READ-AFTER-STATUS=$? BYTES=$(wc -c < /tmp/after)\n";

fn check_killed(out: &Outcome) {
    let c = &out.console;
    assert_eq!(out.value("SECTORS="), (DISK_MIB * 2048).to_string(), "{c}");
    assert!(
        c.contains("backend disconnected"),
        "no disconnect log:\n{c}"
    );
    assert!(
        c.contains("vhost-user-blk0 /tmp/vu.sock"),
        "device not named:\n{c}"
    );
    assert!(c.contains("GUEST-STILL-ALIVE"), "{c}");
    // The guest was told: the disk shrank to nothing and a read returns at
    // once with no data (not a request that never completes).
    assert_eq!(out.value("SIZE-AFTER="), "0", "{c}");
    let after = out.value("READ-AFTER-STATUS=");
    assert!(after.ends_with("BYTES=0"), "read after loss: {after}\n{c}");
    assert!(
        !after.starts_with("143"),
        "read after loss hung: {after}\n{c}"
    );
    eprintln!("after backend loss: guest read {after}");
    assert_eq!(out.value("GUEST-EXIT-STATUS="), "0", "{c}");
    assert_eq!(out.vmm_status, 0, "{c}");
}

/// With `reconnect=off` (today's behaviour before reconnecting existed), a backend that dies
/// marks the device DEVICE_NEEDS_RESET at once.
#[test]
fn qsd_killed_while_guest_runs_with_reconnect_off() {
    let Some(out) = run(Scenario {
        during: "sleep 1; kill -9 $BACKEND; echo BACKEND-KILLED",
        disk_opts: ",reconnect=off",
        ..Scenario::new(Backend::Qsd, KILL_SCRIPT)
    }) else {
        return;
    };
    check_killed(&out);
}

#[test]
fn ours_disk_size_queues_and_data() {
    let Some(out) = run(Scenario::new(Backend::Ours(""), DD_SCRIPT)) else {
        return;
    };
    check_dd(&out);
}

#[test]
fn ours_fio_verify() {
    let script = fio_script();
    let Some(out) = run(Scenario {
        with_tools: true,
        disk_opts: ",queue_size=128",
        ..Scenario::new(Backend::Ours(""), &script)
    }) else {
        return;
    };
    check_fio(&out);
}

/// The same for our backend. (With reconnecting, the default, the device keeps its state and
/// waits for a backend: `vhost_user_reconnect_lab`.)
#[test]
fn ours_killed_while_guest_runs_with_reconnect_off() {
    let Some(out) = run(Scenario {
        during: "sleep 1; kill -9 $BACKEND; echo BACKEND-KILLED",
        disk_opts: ",reconnect=off",
        ..Scenario::new(Backend::Ours(""), KILL_SCRIPT)
    }) else {
        return;
    };
    check_killed(&out);
}

/// `blkdiscard` in the guest punches a hole in the backing file, and `sync`
/// reaches the backend as a FLUSH (an io_uring fdatasync).
#[test]
fn ours_discard_and_flush_reach_the_file() {
    let script = "echo GUEST-READY\n\
        dd if=/pattern.bin of=/dev/vda bs=4096 seek=2048 conv=fsync 2>&1\n\
        blkdiscard -o 8388608 -l 1048576 /dev/vda\n\
        echo DISCARD-STATUS=$?\n\
        sync\n\
        echo 3 > /proc/sys/vm/drop_caches\n\
        echo GUEST-NONZERO=$(dd if=/dev/vda bs=4096 skip=2048 count=256 2>/dev/null | tr -d '\\000' | wc -c)\n";
    let Some(out) = run(Scenario {
        prepare: "export RUST_LOG=backends=trace,vmm=debug; BLOCKS0=$(stat -c %b /tmp/disk.img)",
        during: "while kill -0 $VMM 2>/dev/null; do sleep 0.2; done\n\
            echo BLOCKS-BEFORE=$BLOCKS0; echo BLOCKS-AFTER=$(stat -c %b /tmp/disk.img)\n\
            echo LAB-NONZERO=$(dd if=/tmp/disk.img bs=4096 skip=2048 count=256 2>/dev/null | tr -d '\\000' | wc -c)",
        ..Scenario::new(Backend::Ours(""), script)
    }) else {
        return;
    };
    let c = &out.console;
    assert_eq!(out.value("DISCARD-STATUS="), "0", "{c}");
    assert_eq!(
        out.value("GUEST-NONZERO="),
        "0",
        "discarded range not zero in the guest:\n{c}"
    );
    assert_eq!(
        out.value("LAB-NONZERO="),
        "0",
        "discarded range not zero in the file:\n{c}"
    );
    let blocks = |k: &str| {
        out.value(k)
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("{k}:\n{c}"))
    };
    // 1 MiB punched out of a fully allocated file: at least 2048 fewer 512-byte blocks.
    assert!(
        blocks("BLOCKS-AFTER=") + 2048 <= blocks("BLOCKS-BEFORE="),
        "no hole punched in the backing file:\n{c}"
    );
    // The backend saw DISCARD (type 11) and FLUSH (type 4) requests.
    let plain = lab::strip_ansi(c);
    assert!(
        plain.contains("ty=11 "),
        "no DISCARD request reached the backend:\n{plain}"
    );
    assert!(
        plain.contains("ty=4 "),
        "no FLUSH request reached the backend:\n{plain}"
    );
    assert_eq!(out.vmm_status, 0, "{c}");
}

/// The pattern is on the disk before the backend starts; the guest reads it,
/// its writes fail, and the file is unchanged afterwards.
#[test]
fn ours_readonly_refuses_writes_and_serves_reads() {
    let script = "echo GUEST-READY\n\
        echo RO=$(cat /sys/block/vda/ro)\n\
        head -c 1048576 /dev/zero > /tmp/zero\n\
        dd if=/tmp/zero of=/dev/vda bs=4096 seek=256 conv=fsync 2>&1\n\
        echo WRITE-STATUS=$?\n\
        echo 3 > /proc/sys/vm/drop_caches\n\
        dd if=/dev/vda of=/tmp/rb bs=4096 skip=256 count=256 2>&1\n\
        echo READ-STATUS=$?\n\
        if cmp /tmp/rb /pattern.bin; then echo GUEST-CMP=equal; else echo GUEST-CMP=differs; fi\n";
    let Some(out) = run(Scenario {
        prepare:
            "dd if=/lab/pattern.bin of=/tmp/disk.img bs=4096 seek=256 conv=notrunc 2>/dev/null",
        ..Scenario::new(Backend::Ours("--readonly"), script)
    }) else {
        return;
    };
    let c = &out.console;
    assert_eq!(out.value("RO="), "1", "{c}");
    assert_ne!(
        out.value("WRITE-STATUS="),
        "0",
        "write to a read-only disk succeeded:\n{c}"
    );
    assert_eq!(out.value("READ-STATUS="), "0", "{c}");
    assert_eq!(out.value("GUEST-CMP="), "equal", "{c}");
    assert_eq!(out.value("LAB-CMP="), "equal", "backing file changed:\n{c}");
    assert_eq!(out.vmm_status, 0, "{c}");
}

/// Unbinding the guest driver resets the device (rings stopped with
/// GET_VRING_BASE); binding it again renegotiates and restarts the data path.
#[test]
fn qsd_driver_rebind_resets_and_restarts() {
    driver_rebind_resets_and_restarts(Backend::Qsd);
}

/// The same with our backend, which must answer what it took before it reports each
/// ring's base and serve the fresh rings afterwards.
#[test]
fn ours_driver_rebind_resets_and_restarts() {
    driver_rebind_resets_and_restarts(Backend::Ours(""));
}

fn driver_rebind_resets_and_restarts(backend: Backend) {
    let script = "echo GUEST-READY\n\
        dd if=/pattern.bin of=/dev/vda bs=4096 seek=256 conv=fsync 2>&1\n\
        PCI=$(basename $(dirname $(readlink -f /sys/block/vda/device)))\n\
        echo PCI=$PCI\n\
        echo $PCI > /sys/bus/pci/drivers/virtio-pci/unbind\n\
        [ -e /sys/block/vda ] && echo STILL-THERE\n\
        echo $PCI > /sys/bus/pci/drivers/virtio-pci/bind\n\
        for i in $(seq 50); do [ -b /dev/vda ] && break; sleep 0.2; done\n\
        dd if=/dev/vda of=/tmp/rb bs=4096 skip=256 count=256 2>&1\n\
        if cmp /tmp/rb /pattern.bin; then echo GUEST-CMP=equal; else echo GUEST-CMP=differs; fi\n";
    let Some(out) = run(Scenario::new(backend, script)) else {
        return;
    };
    let c = &out.console;
    assert!(
        !c.contains("STILL-THERE"),
        "unbind did not remove vda:\n{c}"
    );
    assert_eq!(out.value("GUEST-CMP="), "equal", "{c}");
    assert_eq!(
        c.matches("data path started").count(),
        2,
        "expected two activations:\n{c}"
    );
    assert!(c.contains("stopped at"), "no GET_VRING_BASE on reset:\n{c}");
    assert_eq!(out.value("LAB-CMP="), "equal", "{c}");
    assert_eq!(out.vmm_status, 0, "{c}");
}

/// `--disk` is repeatable: two qemu-storage-daemon exports become vda and vdb,
/// each with its own size, and data goes to the right file.
#[test]
fn qsd_two_disks() {
    let prepare = "dd if=/dev/zero of=/tmp/disk2.img bs=1M count=16 2>/dev/null\n\
        qemu-storage-daemon --blockdev driver=file,filename=/tmp/disk2.img,node-name=d1 \
        --export type=vhost-user-blk,id=e1,node-name=d1,addr.type=unix,addr.path=/tmp/vu2.sock,writable=on \
        > /tmp/backend2.log 2>&1 &\n\
        for i in $(seq 100); do [ -S /tmp/vu2.sock ] && break; sleep 0.1; done";
    let script = "echo GUEST-READY\n\
        echo SECTORS=$(cat /sys/block/vda/size)\n\
        echo SECTORS2=$(cat /sys/block/vdb/size)\n\
        echo MQ2=$(ls /sys/block/vdb/mq | wc -l)\n\
        dd if=/pattern.bin of=/dev/vdb bs=4096 seek=256 conv=fsync 2>&1\n\
        echo 3 > /proc/sys/vm/drop_caches\n\
        dd if=/dev/vdb of=/tmp/rb bs=4096 skip=256 count=256 2>&1\n\
        if cmp /tmp/rb /pattern.bin; then echo GUEST-CMP=equal; else echo GUEST-CMP=differs; fi\n";
    let Some(out) = run(Scenario {
        prepare,
        disk_opts: " --disk vhost_user=on,socket=/tmp/vu2.sock",
        ..Scenario::new(Backend::Qsd, script)
    }) else {
        return;
    };
    let c = &out.console;
    assert_eq!(out.value("SECTORS="), (DISK_MIB * 2048).to_string(), "{c}");
    assert_eq!(out.value("SECTORS2="), (16 * 2048).to_string(), "{c}");
    assert_eq!(out.value("MQ2="), "1", "{c}");
    // The pattern went to disk 2, not disk 1.
    assert_eq!(out.value("GUEST-CMP="), "equal", "{c}");
    assert_eq!(out.value("LAB-CMP="), "differs", "{c}");
    assert!(c.contains("vhost-user-blk1 /tmp/vu2.sock"), "{c}");
    assert_eq!(out.vmm_status, 0, "{c}");
}
