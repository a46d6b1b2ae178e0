// SPDX-License-Identifier: Apache-2.0
//! Boots real lab hosts (TCG QEMU, nested SVM, intel-iommu). Each test takes a few seconds to a
//! minute on 2 cores; runs are serialized so they do not compete for the CPUs.

use std::sync::Mutex;
use std::time::Duration;

use lab::{
    console_value, guest_initramfs, parse_marker, Cpio, FioReport, Images, LabHost,
    GUEST_EXIT_MARKER,
};

static SERIAL: Mutex<()> = Mutex::new(());

/// The images, or `None` (after printing why) when QEMU is not installed at all.
fn images() -> Option<Images> {
    if lab::qemu_binary().is_none() {
        eprintln!("SKIP: qemu-system-x86_64 not installed (apt-get install qemu-system-x86)");
        return None;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    match Images::ensure_default() {
        Ok(i) => Some(i),
        Err(e) => panic!("lab images: {e}"),
    }
}

fn run(lab: LabHost) -> lab::LabRun {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    match lab.run() {
        Ok(r) => {
            eprintln!(
                "lab run: status {} in {:.1?} wall, lab /init done at {:?} lab uptime",
                r.status, r.duration, r.boot_uptime
            );
            r
        }
        Err(e) => panic!("lab run failed: {e}"),
    }
}

/// The lab's KVM is up with VFIO, and `kvm_amd` took its `npt=0` from the kernel command line
/// (shadow paging: see `LAB_CMDLINE`).
#[test]
fn lab_boots_with_kvm_and_shadow_paging() {
    let Some(images) = images() else { return };
    let r = run(LabHost::new(&images).script(
        "test -c /dev/kvm || { echo no /dev/kvm; exit 10; }\n\
         grep -q '^kvm_amd ' /proc/modules || exit 11\n\
         grep -q '^vfio_pci ' /proc/modules || exit 12\n\
         echo \"NPT=$(cat /sys/module/kvm_amd/parameters/npt)\"\n",
    ));
    assert_eq!(r.status, 0, "console:\n{}", r.console);
    assert_eq!(
        console_value(&r.console, "NPT="),
        Some("N"),
        "{}",
        r.console
    );
    assert!(r.boot_uptime.is_some(), "no LAB-BOOT-OK marker");
}

#[test]
fn script_exit_status_is_reported() {
    let Some(images) = images() else { return };
    let r = run(LabHost::new(&images).script("echo about to exit\nexit 7\n"));
    assert_eq!(r.status, 7);
    assert!(r.console.contains("about to exit"));
}

#[test]
fn timeout_kills_lab_and_reports_console_tail() {
    let Some(images) = images() else { return };
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = std::time::Instant::now();
    let err = LabHost::new(&images)
        .timeout(Duration::from_secs(12))
        .script("echo WAITING-FOREVER\nsleep 1000\n")
        .run()
        .expect_err("a sleeping lab must time out");
    assert!(started.elapsed() < Duration::from_secs(25));
    match err {
        lab::LabError::Timeout { tail, .. } => assert!(tail.contains("WAITING-FOREVER"), "{tail}"),
        other => panic!("expected a timeout, got {other}"),
    }
}

#[test]
fn a_lab_that_does_not_boot_in_time_is_given_up_early() {
    let Some(images) = images() else { return };
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = std::time::Instant::now();
    // No lab host boots in a second; the run's own timeout is far away.
    let err = LabHost::new(&images)
        .boot_deadline(Duration::from_secs(1))
        .script("echo NEVER-REACHED\n")
        .run()
        .expect_err("a lab that has not booted must be given up");
    assert!(started.elapsed() < Duration::from_secs(15));
    match err {
        lab::LabError::BootStalled { after, tail } => {
            assert_eq!(after, Duration::from_secs(1));
            assert!(!tail.contains("NEVER-REACHED"), "{tail}");
        }
        other => panic!("expected a boot stall, got {other}"),
    }
}

#[test]
fn a_silent_lab_is_given_up_before_its_timeout() {
    let Some(images) = images() else { return };
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = std::time::Instant::now();
    // A quiet step shorter than the limit is fine; then the console stays silent for good.
    let err = LabHost::new(&images)
        .silence_limit(Duration::from_secs(20))
        .timeout(Duration::from_secs(200))
        .script("echo SPEAKING\nsleep 8\necho STILL-SPEAKING\nsleep 1000\n")
        .run()
        .expect_err("a silent lab must be given up");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(90), "{elapsed:?}");
    match err {
        lab::LabError::Silent { after, tail } => {
            assert_eq!(after, Duration::from_secs(20));
            assert!(tail.contains("STILL-SPEAKING"), "{tail}");
        }
        other => panic!("expected a silent lab, got {other}"),
    }
}

#[test]
fn missing_exit_marker_is_an_error() {
    let Some(images) = images() else { return };
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let err = LabHost::new(&images)
        .script("echo POWERING-OFF-EARLY\npoweroff -f\n")
        .run()
        .expect_err("no marker must be an error");
    match err {
        lab::LabError::NoExitMarker { tail, .. } => {
            assert!(tail.contains("POWERING-OFF-EARLY"), "{tail}")
        }
        other => panic!("expected NoExitMarker, got {other}"),
    }
}

#[test]
fn hub_nics_appear_as_virtio_net() {
    let Some(images) = images() else { return };
    let r = run(LabHost::new(&images)
        .nic(lab::LabNic::virtio(lab::NicBackend::Hub(0)))
        .nic(lab::LabNic::virtio(lab::NicBackend::Hub(0)))
        .script(
            "n=0\n\
             for i in /sys/class/net/*; do\n\
               [ \"$(basename $(readlink $i/device/driver 2>/dev/null) 2>/dev/null)\" = virtio_net ] && n=$((n+1))\n\
             done\n\
             echo VIRTIO-NICS=$n\n",
        ));
    assert_eq!(r.status, 0, "console:\n{}", r.console);
    assert_eq!(
        console_value(&r.console, "VIRTIO-NICS="),
        Some("2"),
        "{}",
        r.console
    );
}

#[test]
fn nvme_rebinds_to_vfio_pci() {
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("nvme.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let script = r#"
set -e
bdf=
for d in /sys/bus/pci/devices/*; do
    [ "$(cat $d/class)" = 0x010802 ] && bdf=$(basename $d)
done
[ -n "$bdf" ] || { echo "no NVMe controller"; exit 20; }
dev=/sys/bus/pci/devices/$bdf
echo "NVME-BDF=$bdf"
echo "DRIVER-BEFORE=$(basename $(readlink $dev/driver))"
test -b /dev/nvme0n1 || exit 21
echo $bdf > $dev/driver/unbind
echo vfio-pci > $dev/driver_override
echo $bdf > /sys/bus/pci/drivers_probe
group=$(basename $(readlink $dev/iommu_group))
echo "DRIVER-AFTER=$(basename $(readlink $dev/driver))"
echo "VFIO-GROUP=$group"
ls -l /dev/vfio
test -c /dev/vfio/$group || exit 22
test ! -e /dev/nvme0n1 || exit 23
"#;
    let r = run(LabHost::new(&images).nvme(&backing).script(script));
    assert_eq!(r.status, 0, "console:\n{}", r.console);
    assert_eq!(console_value(&r.console, "DRIVER-BEFORE="), Some("nvme"));
    assert_eq!(console_value(&r.console, "DRIVER-AFTER="), Some("vfio-pci"));
    let group = console_value(&r.console, "VFIO-GROUP=").expect("no VFIO-GROUP line");
    assert!(group.parse::<u32>().is_ok(), "group {group:?}");
}

#[test]
fn dd_to_nvme_reaches_backing_image() {
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("nvme.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    // 64 KiB of xorshift noise, written at 1 MiB.
    let mut x: u32 = 0x1234_5678;
    let pattern: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let r = run(LabHost::new(&images)
        .nvme(&backing)
        .bytes("/lab/pattern.bin", pattern.clone(), 0o644)
        .script("dd if=/lab/pattern.bin of=/dev/nvme0n1 bs=4096 seek=256 conv=fsync\n"));
    assert_eq!(r.status, 0, "console:\n{}", r.console);
    let image = std::fs::read(&backing).unwrap();
    let at = 1 << 20;
    assert!(
        image[at..at + pattern.len()] == pattern[..],
        "pattern not found at 1 MiB in the backing image"
    );
    assert!(
        image[..at].iter().all(|&b| b == 0),
        "bytes before 1 MiB changed"
    );
}

#[test]
fn nested_qemu_kvm_boots_guest_image() {
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let test_sh = "echo NESTED-GUEST-HELLO\n\
                   n=$(grep -c ^processor /proc/cpuinfo)\n\
                   echo GUEST-CPUS=$n\n\
                   test \"$n\" = 2\n";
    let initrd = guest_initramfs(
        &images,
        test_sh,
        false,
        Cpio::new(),
        &dir.path().join("guest.cpio"),
    )
    .unwrap();
    let script = format!(
        r#"
t0=$(cut -d' ' -f1 /proc/uptime)
timeout 240 qemu-system-x86_64 -enable-kvm -cpu host -machine q35 -smp 2 -m 512 \
    -nic none -display none -monitor none -serial stdio -no-reboot \
    -kernel {kernel} -initrd {initrd} -append "console=ttyS0 panic=-1 quiet" </dev/null \
    | tee /lab/guest.log
t1=$(cut -d' ' -f1 /proc/uptime)
echo "NESTED-QEMU-SECONDS=$(awk "BEGIN {{ print $t1 - $t0 }}")"
grep -q '{marker}0' /lab/guest.log
"#,
        kernel = lab::LAB_GUEST_KERNEL,
        initrd = lab::LAB_GUEST_INITRD,
        marker = GUEST_EXIT_MARKER,
    );
    let r = run(LabHost::new(&images)
        .with_guest(initrd)
        .timeout(Duration::from_secs(240))
        .script(script));
    assert_eq!(r.status, 0, "console:\n{}", r.console);
    assert!(r.console.contains("NESTED-GUEST-HELLO"));
    assert_eq!(console_value(&r.console, "GUEST-CPUS="), Some("2"));
    let guest_status = r
        .console
        .lines()
        .find_map(|l| parse_marker(l, GUEST_EXIT_MARKER));
    assert_eq!(guest_status, Some(0));
    eprintln!(
        "TIMING lab wall {:.1?}; lab boot {:?}; nested QEMU guest run {} s (lab clock); guest /init at {} s (guest clock)",
        r.duration,
        r.boot_uptime,
        console_value(&r.console, "NESTED-QEMU-SECONDS=").unwrap_or("?"),
        console_value(&r.console, "GUEST-BOOT-OK uptime=").unwrap_or("?"),
    );
}

#[test]
fn nested_guest_runs_fio_and_iperf3_from_tools_archive() {
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().unwrap();
    let fio = lab::guest_fio(
        "--filename=/dev/vda --bs=4k --iodepth=16 --ioengine=libaio --direct=1",
        &[("randread", "--rw=randread --runtime=3 --time_based")],
    );
    let test_sh = format!(
        r#"
set -e
{fio}
iperf3 -s -D -1
sleep 1
iperf3 -c 127.0.0.1 -t 2 -f m | awk '/receiver/ {{ print "IPERF3-MBITS=" $7 }}'
"#
    );
    let initrd = guest_initramfs(
        &images,
        &test_sh,
        true,
        Cpio::new(),
        &dir.path().join("guest.cpio"),
    )
    .unwrap();
    let script = format!(
        r#"
dd if=/dev/zero of=/lab/disk.img bs=1M count=64 2>/dev/null
timeout 300 qemu-system-x86_64 -enable-kvm -cpu host -machine q35 -smp 2 -m 768 \
    -nic none -display none -monitor none -serial stdio -no-reboot \
    -drive file=/lab/disk.img,if=virtio,format=raw \
    -kernel {kernel} -initrd {initrd} -append "console=ttyS0 panic=-1 quiet" </dev/null \
    | tee /lab/guest.log
grep -q '{marker}0' /lab/guest.log
"#,
        kernel = lab::LAB_GUEST_KERNEL,
        initrd = lab::LAB_GUEST_INITRD,
        marker = GUEST_EXIT_MARKER,
    );
    let r = run(LabHost::new(&images)
        .memory_mib(3072)
        .with_guest(initrd)
        .timeout(Duration::from_secs(240))
        .script(script));
    assert_eq!(r.status, 0, "console:\n{}", r.console);
    let fio = FioReport::from_console(&r.console)
        .unwrap_or_else(|e| panic!("{e}; console:\n{}", r.console));
    assert_eq!(fio.status, 0, "console:\n{}", r.console);
    let iops = fio.job("randread").expect("no fio result").read_iops;
    let mbits: f64 = console_value(&r.console, "IPERF3-MBITS=")
        .and_then(|v| v.parse().ok())
        .expect("no iperf3 result");
    assert!(iops > 0.0 && mbits > 0.0);
    eprintln!(
        "TIMING nested guest with tools: lab wall {:.1?}; fio 4k randread qd16 {iops} IOPS; iperf3 loopback {mbits} Mbit/s",
        r.duration
    );
}
