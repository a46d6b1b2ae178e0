// SPDX-License-Identifier: Apache-2.0
//! Seccomp filters in the lab host, with a guest running:
//!
//! * a `vhost-user-blk` whose queue thread makes a forbidden syscall at its first event
//!   (`--seccomp-violation queue`) dies of SIGSYS; the VMM keeps running, reconnects to a
//!   backend started in its place, and the guest's I/O completes and verifies. Meanwhile every
//!   thread of the VMM, its in-VMM queue threads included, runs under its own filter.
//! * an in-VMM queue thread doing the same takes the whole VMM down with SIGSYS.
//!
//! Every other lab test runs the binaries with their default, `--seccomp on`.
//!
//! Run: `cargo build -p backends && cargo test -p vmm --test seccomp_lab -- --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;
use std::time::Duration;

use lab::{guest_initramfs, Cpio, LabHost, LabRun, LAB_GUEST_INITRD, LAB_GUEST_KERNEL};

static SERIAL: Mutex<()> = Mutex::new(());

/// SIGSYS as a shell reports a process it killed: 128 + 31.
const KILLED_BY_SIGSYS: &str = "159";

/// 1 MiB of deterministic bytes the guest writes and reads back.
fn pattern() -> Vec<u8> {
    (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// Boots a guest running `guest` (with `/pattern.bin`) in the lab, which runs `script`.
fn run(guest: &str, script: &str) -> Option<LabRun> {
    let images = lab::test_images()?;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut extra = Cpio::new();
    extra.add_file("/pattern.bin", pattern(), 0o644).unwrap();
    let initrd = dir.path().join("g.cpio");
    guest_initramfs(&images, guest, false, extra, &initrd).unwrap();
    let backend = lab::repo_root().join("target/debug/vhost-user-blk");
    assert!(
        backend.is_file(),
        "{} is missing: run `cargo build -p backends`",
        backend.display()
    );
    let run = LabHost::new(&images)
        .binary(env!("CARGO_BIN_EXE_vmm"), "/lab/bin")
        .binary(backend, "/lab/bin")
        .with_guest(&initrd)
        .script(script)
        .timeout(Duration::from_secs(300))
        .run()
        .unwrap_or_else(|e| panic!("lab run: {e}"));
    eprintln!("lab run took {:.1?}", run.duration);
    Some(run)
}

fn value<'a>(c: &'a str, key: &str) -> &'a str {
    lab::console_value(c, key).unwrap_or_else(|| panic!("no {key} on the console:\n{c}"))
}

/// The guest writes the pattern to both disks, reads it back, then idles for the lab to look.
const TWO_DISKS_GUEST: &str = "echo GUEST-READY\n\
    dd if=/pattern.bin of=/dev/vda bs=4096 conv=fsync 2>&1\n\
    dd if=/pattern.bin of=/dev/vdb bs=4096 conv=fsync 2>&1\n\
    echo 3 > /proc/sys/vm/drop_caches\n\
    for d in vda vdb; do\n\
      dd if=/dev/$d of=/tmp/rb bs=4096 count=256 2>/dev/null\n\
      if cmp /tmp/rb /pattern.bin; then echo GUEST-CMP-$d=equal; else echo GUEST-CMP-$d=differs; fi\n\
    done\n\
    echo GUEST-IO-DONE\n\
    sleep 5\n";

#[test]
fn a_backend_killed_by_its_filter_leaves_the_vmm_running_under_its_filters() {
    let script = format!(
        r#"
export NO_COLOR=1
dd if=/dev/zero of=/tmp/vu.img bs=1M count=16 2>/dev/null
dd if=/dev/zero of=/tmp/local.img bs=1M count=16 2>/dev/null
start_backend() {{
    rm -f /tmp/vu.sock
    /lab/bin/vhost-user-blk --socket /tmp/vu.sock --path /tmp/vu.img "$@" >>/tmp/backend.log 2>&1 &
    BPID=$!
    i=0
    while [ ! -S /tmp/vu.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
}}
start_backend --seccomp-violation queue
: > /tmp/vmm.log
{{ RUST_LOG=vmm=info /lab/bin/vmm run --kernel {LAB_GUEST_KERNEL} --initramfs {LAB_GUEST_INITRD} \
    --cpus 2 --memory 512M --disk vhost_user=on,socket=/tmp/vu.sock --disk path=/tmp/local.img; \
    echo VMM-EXIT-STATUS=$?; }} 2>&1 | tee -a /tmp/vmm.log &
VMM=$!
wait $BPID
echo BACKEND-EXIT-STATUS=$?
start_backend
i=0
while ! grep -q GUEST-IO-DONE /tmp/vmm.log && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done
VPID=$(pidof vmm)
for t in /proc/$VPID/task/*; do
    echo "VMM-THREAD $(cat $t/comm) $(awk '/^Seccomp:/ {{s = $2}} /^Seccomp_filters:/ {{f = $2}} END {{print s, f}}' $t/status)"
done
wait $VMM
kill -TERM $BPID; wait $BPID
echo BACKEND2-EXIT-STATUS=$?
grep -q 'GUEST-EXIT-STATUS=0' /tmp/vmm.log
"#
    );
    let Some(run) = run(TWO_DISKS_GUEST, &script) else {
        return;
    };
    let c = &run.console;
    assert_eq!(run.status, 0, "lab script failed:\n{c}");
    // The backend died of its filter at its queue thread's first event, and the kernel said why.
    assert_eq!(value(c, "BACKEND-EXIT-STATUS="), KILLED_BY_SIGSYS, "{c}");
    assert!(
        c.lines().any(|l| l.starts_with(lab::SECCOMP_MARKER)
            && l.contains("comm=\"blk-q0\"")
            && l.contains("vhost-user-blk")
            && l.contains("syscall=41")),
        "no audit line for the backend's socket(2):\n{c}"
    );
    // The VMM ran on: reconnected, the guest's data verified on both disks, clean exit.
    assert!(c.contains("reconnected after"), "{c}");
    assert_eq!(value(c, "GUEST-CMP-vda="), "equal", "{c}");
    assert_eq!(value(c, "GUEST-CMP-vdb="), "equal", "{c}");
    assert_eq!(value(c, "VMM-EXIT-STATUS="), "0", "{c}");
    assert_eq!(value(c, "BACKEND2-EXIT-STATUS="), "0", "{c}");
    // Every VMM thread under its own filter, on top of the process-wide one.
    let threads: Vec<(&str, u32, u32)> = c
        .lines()
        .filter_map(|l| {
            let mut f = l.strip_prefix("VMM-THREAD ")?.split_whitespace();
            Some((f.next()?, f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .collect();
    for name in [
        "vmm",
        "vcpu0",
        "vcpu1",
        "blk-q0",
        "blk0-mon",
        "vhost-deadline",
    ] {
        assert!(
            threads.iter().any(|t| t.0 == name),
            "no {name} thread in {threads:?}"
        );
    }
    for t in &threads {
        assert_eq!(t.1, 2, "{t:?} runs without a seccomp filter:\n{c}");
        assert!(t.2 >= 2, "{t:?} runs only the process-wide filter:\n{c}");
    }
}

#[test]
fn a_forbidden_syscall_in_an_in_vmm_queue_thread_kills_the_vmm() {
    let script = format!(
        "dd if=/dev/zero of=/tmp/local.img bs=1M count=16 2>/dev/null\n\
         /lab/bin/vmm run --kernel {LAB_GUEST_KERNEL} --initramfs {LAB_GUEST_INITRD} \
           --cpus 2 --memory 512M --disk path=/tmp/local.img --seccomp-violation queue 2>&1\n\
         echo VMM-EXIT-STATUS=$?\n"
    );
    let Some(run) = run("echo GUEST-READY\nsleep 30\n", &script) else {
        return;
    };
    let c = &run.console;
    assert_eq!(value(c, "VMM-EXIT-STATUS="), KILLED_BY_SIGSYS, "{c}");
    assert!(
        c.lines().any(|l| l.starts_with(lab::SECCOMP_MARKER)
            && l.contains("comm=\"blk-q0\"")
            && l.contains("exe=\"/lab/bin/vmm\"")
            && l.contains("syscall=41")),
        "no audit line for the queue thread's socket(2):\n{c}"
    );
}
