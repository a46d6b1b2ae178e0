// SPDX-License-Identifier: Apache-2.0
//! End-to-end: a guest inside the lab host drives a disk whose requests are
//! served inside the VMM: virtio-blk on VMM queue threads (`--disk path=..`)
//! or the emulated NVMe controller (`--disk path=..,model=nvme`).
//!
//! Run: `cargo test -p vmm --test emulated_disk_lab -- --nocapture --test-threads=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;
use std::time::Duration;

use lab::{guest_initramfs, Cpio, FioReport, LabHost, LabRun, LAB_GUEST_INITRD, LAB_GUEST_KERNEL};

static SERIAL: Mutex<()> = Mutex::new(());

const VMM_IN_LAB: &str = "/lab/bin/vmm";
const DISK_MIB: u64 = 64;
/// Where the pattern goes on the disk (4 KiB blocks) and its length.
const PATTERN_BLOCK: u64 = 256;
const PATTERN_LEN: usize = 1 << 20;
/// fio works on [FIO_OFFSET_MIB, FIO_OFFSET_MIB + FIO_MIB) so the pattern survives.
const FIO_OFFSET_MIB: u64 = 8;
const FIO_MIB: u64 = 32;
/// fio's jobs (name, options), run one after another on that range with verification.
const FIO_JOBS: [(&str, &str); 2] = [
    ("rw4k", "--rw=randwrite --bs=4k --iodepth=32"),
    ("rw128k", "--rw=randwrite --bs=128k --iodepth=1"),
];

/// Deterministic, incompressible-looking bytes.
fn pattern() -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..PATTERN_LEN)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
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

/// The guest script: size, pattern write + readback, fio verify on a separate
/// range, then an md5 of that range (compared with the lab's view of the file).
fn guest_script(dev: &str) -> String {
    let name = dev.trim_start_matches("/dev/");
    let mut s = format!(
        "echo GUEST-READY\n\
         echo SECTORS=$(cat /sys/block/{name}/size)\n\
         echo QUEUES=$(ls /sys/block/{name}/mq | wc -l)\n\
         dd if=/pattern.bin of={dev} bs=4096 seek={PATTERN_BLOCK} conv=fsync 2>&1\n\
         echo 3 > /proc/sys/vm/drop_caches\n\
         dd if={dev} of=/tmp/rb bs=4096 skip={PATTERN_BLOCK} count=256 2>&1\n\
         if cmp /tmp/rb /pattern.bin; then echo GUEST-CMP=equal; else echo GUEST-CMP=differs; fi\n"
    );
    s.push_str(&lab::guest_fio(
        &format!(
            "--filename={dev} --ioengine=libaio --direct=1 --offset={FIO_OFFSET_MIB}M \
             --size={FIO_MIB}M --verify=crc32c --do_verify=1"
        ),
        &FIO_JOBS,
    ));
    s.push_str(&format!(
        "sync; echo 3 > /proc/sys/vm/drop_caches\n\
         echo GUEST-MD5=$(dd if={dev} bs=1M skip={FIO_OFFSET_MIB} count={FIO_MIB} 2>/dev/null | md5sum | cut -d' ' -f1)\n"
    ));
    s
}

fn run(disk_opts: &str, script: &str, tools: bool) -> Option<Outcome> {
    let images = lab::test_images()?;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut extra = Cpio::new();
    extra
        .add_file("/pattern.bin", pattern(), 0o644)
        .expect("pattern");
    let initrd = guest_initramfs(
        &images,
        script,
        tools,
        extra,
        &dir.path().join("guest.cpio"),
    )
    .expect("guest initramfs");
    let script = format!(
        "dd if=/dev/zero of=/tmp/disk.img bs=1M count={DISK_MIB} 2>/dev/null\n\
         dd if=/dev/zero of=/tmp/disk2.img bs=1M count=0 seek={DISK_MIB} 2>/dev/null\n\
         RUST_LOG=${{RUST_LOG:-vmm=info}} {VMM_IN_LAB} run --kernel {LAB_GUEST_KERNEL} \
           --initramfs {LAB_GUEST_INITRD} --cpus 2 --memory 512M \
           --disk path=/tmp/disk.img{disk_opts} 2>&1\n\
         echo VMM-EXIT-STATUS=$?\n\
         dd if=/tmp/disk.img of=/tmp/readback bs=4096 skip={PATTERN_BLOCK} count={count} 2>/dev/null\n\
         if cmp /tmp/readback /lab/pattern.bin; then echo LAB-CMP=equal; else echo LAB-CMP=differs; fi\n\
         echo LAB-MD5=$(dd if=/tmp/disk.img bs=1M skip={FIO_OFFSET_MIB} count={FIO_MIB} 2>/dev/null | md5sum | cut -d' ' -f1)\n",
        count = PATTERN_LEN / 4096,
    );
    let run: LabRun = LabHost::new(&images)
        .binary(env!("CARGO_BIN_EXE_vmm"), "/lab/bin")
        .bytes("/lab/pattern.bin", pattern(), 0o644)
        .with_guest(&initrd)
        .script(script)
        .timeout(Duration::from_secs(300))
        .run()
        .unwrap_or_else(|e| panic!("lab run: {e}"));
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

fn check(out: &Outcome, queues: &str, label: &str) {
    let c = &out.console;
    // No vhost-user device: private anonymous RAM, as Cloud Hypervisor's default.
    assert_eq!(lab::guest_ram_mode(c).as_deref(), Some("private"), "{c}");
    assert_eq!(out.value("SECTORS="), (DISK_MIB * 2048).to_string(), "{c}");
    assert_eq!(out.value("QUEUES="), queues, "{c}");
    assert_eq!(out.value("GUEST-CMP="), "equal", "{c}");
    assert_eq!(out.value("LAB-CMP="), "equal", "{c}");
    let report = FioReport::from_console(c).unwrap_or_else(|e| panic!("{e}:\n{c}"));
    for (name, _) in FIO_JOBS {
        let job = report
            .verified(name, FIO_MIB << 20)
            .unwrap_or_else(|e| panic!("{e}:\n{c}"));
        eprintln!("{label} fio {name} (TCG-nested, relative only): {job}");
    }
    // What fio left on the disk, seen by the guest and in the backing file.
    assert_eq!(out.value("GUEST-MD5="), out.value("LAB-MD5="), "{c}");
    assert_eq!(out.value("GUEST-EXIT-STATUS="), "0", "{c}");
    assert_eq!(out.vmm_status, 0, "{c}");
}

#[test]
fn in_vmm_virtio_blk_fio_verify() {
    let Some(out) = run(",queues=2,queue_size=128", &guest_script("/dev/vda"), true) else {
        return;
    };
    let c = &out.console;
    for l in c.lines().filter(|l| l.contains("stopped")) {
        eprintln!("{l}");
    }
    check(&out, "2", "in-VMM virtio-blk");
    assert!(c.contains("data path started"), "{c}");
    // The queue threads ran the shared engine and were stopped at exit.
    assert_eq!(c.matches("queue 0 stopped").count(), 1, "{c}");
    assert_eq!(c.matches("queue 1 stopped").count(), 1, "{c}");
    assert!(
        c.contains("stopped; 0 queue notifies went through the VMM"),
        "{c}"
    );
}

#[test]
fn emulated_nvme_fio_verify() {
    let script = format!(
        "echo NVME-MODEL=$(cat /sys/class/nvme/nvme0/model | tr ' ' _)\n{}",
        guest_script("/dev/nvme0n1")
    );
    let Some(out) = run(",model=nvme", &script, true) else {
        return;
    };
    let c = &out.console;
    for l in c
        .lines()
        .filter(|l| l.contains("nvme0") || l.contains("nvme:"))
    {
        eprintln!("{l}");
    }
    assert!(
        out.value("NVME-MODEL=").starts_with("vmm_emulated_NVMe"),
        "{c}"
    );
    check(&out, "2", "emulated NVMe");
    // Only the guest's stock driver talked to it: no hostile-guest paths hit.
    assert!(c.contains("bad_doorbells: 0"), "{c}");
}

/// Unbinding the guest driver resets the device, which stops and joins the
/// queue threads; binding it again starts new ones on the same data.
#[test]
fn in_vmm_virtio_blk_driver_rebind_restarts_queue_threads() {
    let script = format!(
        "echo GUEST-READY\n\
         dd if=/pattern.bin of=/dev/vda bs=4096 seek={PATTERN_BLOCK} conv=fsync 2>&1\n\
         PCI=$(basename $(dirname $(readlink -f /sys/block/vda/device)))\n\
         echo $PCI > /sys/bus/pci/drivers/virtio-pci/unbind\n\
         [ -e /sys/block/vda ] && echo STILL-THERE\n\
         echo $PCI > /sys/bus/pci/drivers/virtio-pci/bind\n\
         for i in $(seq 50); do [ -b /dev/vda ] && break; sleep 0.2; done\n\
         echo 3 > /proc/sys/vm/drop_caches\n\
         dd if=/dev/vda of=/tmp/rb bs=4096 skip={PATTERN_BLOCK} count=256 2>&1\n\
         if cmp /tmp/rb /pattern.bin; then echo GUEST-CMP=equal; else echo GUEST-CMP=differs; fi\n"
    );
    let Some(out) = run(",queues=2", &script, false) else {
        return;
    };
    let c = &out.console;
    assert!(
        !c.contains("STILL-THERE"),
        "unbind did not remove vda:\n{c}"
    );
    assert_eq!(out.value("GUEST-CMP="), "equal", "{c}");
    assert_eq!(out.value("LAB-CMP="), "equal", "{c}");
    assert_eq!(c.matches("data path started").count(), 2, "{c}");
    // Stopped once by the reset, once at VMM exit.
    assert_eq!(c.matches("queue 0 stopped").count(), 2, "{c}");
    assert_eq!(c.matches("queue 1 stopped").count(), 2, "{c}");
    assert_eq!(out.value("GUEST-EXIT-STATUS="), "0", "{c}");
    assert_eq!(out.vmm_status, 0, "{c}");
}
