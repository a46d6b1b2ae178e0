// SPDX-License-Identifier: Apache-2.0
//! End-to-end VFIO passthrough in the lab host: the lab's emulated NVMe is
//! bound to vfio-pci with scripts/vfio-bind.sh, passed to a guest with
//! `vmm run --device`, driven by the guest's stock nvme driver (fio with
//! crc32c verification, a dd pattern), and given back to `nvme` afterwards.
//! The pattern is then looked for in the NVMe's backing image on this host.

use std::time::Duration;

use lab::{guest_initramfs, Cpio, FioReport, LabHost, LAB_GUEST_INITRD, LAB_GUEST_KERNEL};

const BACKING_SIZE: u64 = 128 << 20;
/// Where the guest writes the dd pattern (beyond fio's 16 MiB verify and 64 MiB read range).
const PATTERN_OFFSET: usize = 96 << 20;
/// Seconds (lab clock) before a still-running VMM is dumped and killed.
const WATCHDOG_SECS: u32 = 150;

fn pattern() -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as u8
        })
        .collect()
}

/// Bytes fio writes and verifies on the passed-through namespace.
const VERIFY_BYTES: u64 = 16 << 20;

/// Runs in the guest: waits for the passed-through controller, verifies data and measures
/// random reads with fio (one process, two jobs), writes the pattern, reports MSI-X counts.
fn guest_script() -> String {
    let fio = lab::guest_fio(
        "--filename=/dev/nvme0n1 --bs=4k --iodepth=32 --ioengine=libaio --direct=1",
        &[
            (
                "verify",
                format!("--rw=randwrite --size={VERIFY_BYTES} --verify=crc32c"),
            ),
            (
                "randread",
                "--rw=randread --size=64M --runtime=3 --time_based".to_string(),
            ),
        ],
    );
    format!(
        r#"
i=0
while [ ! -b /dev/nvme0n1 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
if [ ! -b /dev/nvme0n1 ]; then echo "GUEST-NVME=missing"; dmesg | grep -i -e nvme -e pci | tail -40; exit 1; fi
echo "GUEST-NVME=present"
{fio}
dd if=/pattern.bin of=/dev/nvme0n1 bs=4096 seek=24576 oflag=direct conv=fsync 2>/tmp/dd.err
echo "DD-EXIT=$?"
tail -1 /tmp/dd.err
grep nvme /proc/interrupts
awk '/nvme/ {{ for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i }} END {{ print "NVME-IRQ-TOTAL=" s+0 }}' /proc/interrupts
"#
    )
}

/// Runs in the lab host.
fn lab_script() -> String {
    format!(
        r#"
bdf=
for d in /sys/bus/pci/devices/*; do
    [ "$(cat $d/class)" = 0x010802 ] && bdf=$(basename $d)
done
[ -n "$bdf" ] || {{ echo "no NVMe controller"; exit 20; }}
dev=/sys/bus/pci/devices/$bdf
echo "NVME-BDF=$bdf"
# Reference for the guest's number, same run: the lab host's own nvme driver on the same device.
if command -v fio >/dev/null; then
    fio --name=hostread --filename=/dev/nvme0n1 --rw=randread --bs=4k --iodepth=32 \
        --ioengine=libaio --direct=1 --size=64M --runtime=5 --time_based --output-format=terse \
        | awk -F';' '/^3;/ {{ print "HOST-READ-IOPS=" $8 }}'
fi
echo "REFUSED-WHILE-NVME: $(/lab/bin/vmm run --kernel {kernel} --device path=$dev 2>&1)"
/lab/bin/vfio-bind.sh $bdf || exit 21
RUST_LOG=${{RUST_LOG:-vfio=debug,vmm=info,vfio_ioctls=warn}} /lab/bin/vmm run --kernel {kernel} --initramfs {initrd} \
    --cpus 2 --memory 1G --device path=$dev 2>&1 &
pid=$!
# A hung VMM must fail the test with evidence, not hit the lab timeout.
(
    sleep {watchdog}
    kill -0 $pid 2>/dev/null || exit 0
    echo "VMM-WATCHDOG: still running after {watchdog} s"
    for t in /proc/$pid/task/*; do
        echo "task $(cat $t/comm) wchan=$(cat $t/wchan) syscall=$(cut -d' ' -f1 $t/syscall)"
        cat $t/stack
    done
    kill $pid
) &
wait $pid
echo "VMM-EXIT-STATUS=$?"
/lab/bin/vfio-unbind.sh $bdf || exit 22
i=0
while [ ! -b /dev/nvme0n1 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
echo "DRIVER-AFTER=$(basename $(readlink $dev/driver))"
test -b /dev/nvme0n1 && echo "HOST-NVME-BACK=yes"
"#,
        kernel = LAB_GUEST_KERNEL,
        initrd = LAB_GUEST_INITRD,
        watchdog = WATCHDOG_SECS,
    )
}

#[test]
fn nvme_passthrough_verifies_data_fires_msix_and_rebinds() {
    let Some(images) = lab::test_images() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let backing = dir.path().join("nvme.img");
    std::fs::File::create(&backing)
        .and_then(|f| f.set_len(BACKING_SIZE))
        .expect("backing image");
    let pattern = pattern();
    let mut extra = Cpio::new();
    extra
        .add_file("/pattern.bin", pattern.clone(), 0o644)
        .expect("pattern");
    let initrd = guest_initramfs(
        &images,
        &guest_script(),
        true,
        extra,
        &dir.path().join("guest.cpio"),
    )
    .expect("guest initramfs");
    let scripts = lab::repo_root().join("scripts");
    let lab = LabHost::new(&images)
        .memory_mib(3072)
        .nvme(&backing)
        .binary(env!("CARGO_BIN_EXE_vmm"), "/lab/bin")
        .file(scripts.join("vfio-bind.sh"), "/lab/bin/vfio-bind.sh")
        .file(scripts.join("vfio-unbind.sh"), "/lab/bin/vfio-unbind.sh")
        .with_guest(&initrd)
        .script(lab_script())
        .timeout(Duration::from_secs(240));
    // A lab fault (nested SVM under TCG) is retried by the test runner (.config/nextest.toml).
    let run = lab.run().unwrap_or_else(|e| panic!("lab run: {e}"));
    let c = &run.console;
    // No vhost-user device: private anonymous RAM, as Cloud Hypervisor's default.
    assert_eq!(lab::guest_ram_mode(c).as_deref(), Some("private"), "{c}");
    eprintln!("lab run took {:.1?}", run.duration);
    for l in c.lines().filter(|l| {
        [
            "GUEST-NVME=",
            "FIO-",
            "DD-EXIT=",
            "GUEST-EXIT-STATUS=",
            "NVME-IRQ",
            "nvme",
            "VMM-",
            "DRIVER-AFTER",
            "vfio-",
        ]
        .iter()
        .any(|k| l.contains(k))
    }) {
        eprintln!("  | {l}");
    }
    assert_eq!(run.status, 0, "lab script failed:\n{c}");
    let refused = lab::console_value(c, "REFUSED-WHILE-NVME:").unwrap_or_default();
    assert!(
        refused.contains("is bound to nvme, not vfio-pci") && refused.contains("vfio-bind.sh"),
        "vmm must refuse a device still bound to nvme:\n{c}"
    );
    assert_eq!(lab::console_value(c, "GUEST-NVME="), Some("present"), "{c}");
    let fio = FioReport::from_console(c).unwrap_or_else(|e| panic!("{e}:\n{c}"));
    fio.verified("verify", VERIFY_BYTES)
        .unwrap_or_else(|e| panic!("{e}:\n{c}"));
    let irqs: u64 = lab::console_value(c, "NVME-IRQ-TOTAL=")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no interrupt count:\n{c}"));
    assert!(irqs > 0, "no nvme MSI-X interrupts in the guest:\n{c}");
    assert_eq!(
        lab::console_value(c, "VMM-EXIT-STATUS="),
        Some("0"),
        "vmm did not exit 0:\n{c}"
    );
    assert_eq!(lab::console_value(c, "DRIVER-AFTER="), Some("nvme"), "{c}");
    assert_eq!(lab::console_value(c, "HOST-NVME-BACK="), Some("yes"), "{c}");
    let iops = fio.job("randread").map_or(0.0, |j| j.read_iops);
    assert!(iops > 0.0, "no randread result:\n{c}");
    let host_iops: Option<f64> =
        lab::console_value(c, "HOST-READ-IOPS=").and_then(|v| v.parse().ok());
    eprintln!(
        "VFIO NVMe, 4k randread qd32 (lab, relative only): guest via passthrough {iops} IOPS; \
         lab host's own nvme driver {host_iops:?} IOPS (ratio {:.2}); guest nvme interrupts {irqs}",
        host_iops.map_or(f64::NAN, |h| iops / h)
    );

    // From outside the lab: the guest's dd reached the emulated NVMe's backing file.
    let image = std::fs::read(&backing).expect("read backing image");
    assert!(
        image[PATTERN_OFFSET..PATTERN_OFFSET + pattern.len()] == pattern[..],
        "pattern not found at {PATTERN_OFFSET:#x} in the NVMe backing image"
    );
}

/// Two NVMe controllers behind one conventional PCI bridge share an IOMMU
/// group: passing one through while the other is still on `nvme` must be
/// refused with the group, the other device and its driver named.
#[test]
fn group_with_a_device_on_a_host_driver_is_refused() {
    let Some(images) = lab::test_images() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lab = LabHost::new(&images)
        .binary(env!("CARGO_BIN_EXE_vmm"), "/lab/bin")
        .file(
            lab::repo_root().join("scripts/vfio-bind.sh"),
            "/lab/bin/vfio-bind.sh",
        )
        .file(
            lab::repo_root().join("scripts/vfio-unbind.sh"),
            "/lab/bin/vfio-unbind.sh",
        )
        .qemu_arg("-device")
        .qemu_arg("pci-bridge,id=br1,chassis_nr=1");
    for i in 1..=2 {
        let img = dir.path().join(format!("nv{i}.img"));
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(16 << 20))
            .expect("image");
        lab = lab
            .qemu_arg("-drive")
            .qemu_arg(format!(
                "file={},if=none,id=nv{i},format=raw",
                img.display()
            ))
            .qemu_arg("-device")
            .qemu_arg(format!("nvme,serial=grp{i},drive=nv{i},bus=br1,addr={i}"));
    }
    let script = r#"
set -- $(for d in /sys/bus/pci/devices/*; do [ "$(cat $d/class)" = 0x010802 ] && basename $d; done)
[ $# -eq 2 ] || { echo "expected 2 NVMe controllers, found $#"; exit 20; }
a=$1; b=$2
ga=$(basename $(readlink /sys/bus/pci/devices/$a/iommu_group))
gb=$(basename $(readlink /sys/bus/pci/devices/$b/iommu_group))
echo "GROUPS=$ga,$gb"
[ "$ga" = "$gb" ] || exit 21
echo "OTHER=$b"
/lab/bin/vfio-bind.sh $a 2>&1 || exit 22
echo "NOT-VIABLE: $(/lab/bin/vmm run --kernel /lab/bin/vfio-bind.sh --memory 64M --device path=/sys/bus/pci/devices/$a 2>&1)"
/lab/bin/vfio-bind.sh $b 2>&1 || exit 23
# Both on vfio-pci: the device checks pass and the garbage kernel is what fails.
echo "BOTH-BOUND: $(/lab/bin/vmm run --kernel /lab/bin/vfio-bind.sh --memory 64M --device path=/sys/bus/pci/devices/$a --device path=/sys/bus/pci/devices/$b 2>&1)"
/lab/bin/vfio-unbind.sh $a && /lab/bin/vfio-unbind.sh $b || exit 24
echo "DRIVERS-AFTER=$(basename $(readlink /sys/bus/pci/devices/$a/driver)),$(basename $(readlink /sys/bus/pci/devices/$b/driver))"
"#;
    let run = lab
        .script(script)
        .timeout(Duration::from_secs(300))
        .run()
        .unwrap_or_else(|e| panic!("lab run: {e}"));
    let c = &run.console;
    assert_eq!(run.status, 0, "lab script failed:\n{c}");
    for l in c.lines().filter(|l| {
        [
            "GROUPS=",
            "NOT-VIABLE:",
            "BOTH-BOUND:",
            "vfio-",
            "DRIVERS-AFTER=",
        ]
        .iter()
        .any(|k| l.contains(k))
    }) {
        eprintln!("  | {l}");
    }
    let other = lab::console_value(c, "OTHER=").expect("OTHER=");
    let group = lab::console_value(c, "GROUPS=")
        .and_then(|g| g.split(',').next())
        .expect("GROUPS=");
    let refused = lab::console_value(c, "NOT-VIABLE:").unwrap_or_default();
    assert!(
        refused.contains(&format!("IOMMU group {group} of "))
            && refused.contains(&format!(
                "is not viable: {other} is bound to nvme (run `scripts/vfio-bind.sh {other}` too)"
            )),
        "{c}"
    );
    let both = lab::console_value(c, "BOTH-BOUND:").unwrap_or_default();
    assert!(
        both.starts_with("vmm: error:") && !both.contains("viable") && !both.contains("vfio-pci"),
        "with the whole group on vfio-pci only the kernel should fail:\n{c}"
    );
    assert_eq!(
        lab::console_value(c, "DRIVERS-AFTER="),
        Some("nvme,nvme"),
        "{c}"
    );
}
