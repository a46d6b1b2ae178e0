// SPDX-License-Identifier: Apache-2.0
//! In the lab host: vCPU threads and backend queue threads run where `--cpus
//! boot=N,affinity=…` and `--queue-affinity` put them, and guest RAM is shared exactly when
//! a vhost-user device needs it (private RAM forced with `shared=off` is refused). The other
//! tiers' lab tests check that they run on private RAM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use lab::{guest_initramfs, Cpio, LabHost, LAB_GUEST_INITRD, LAB_GUEST_KERNEL};

/// This project's backend binary, built by `cargo build -p backends`.
fn our_backend() -> std::path::PathBuf {
    let p = lab::repo_root().join("target/debug/vhost-user-blk");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build -p backends` first",
        p.display()
    );
    p
}

const GUEST: &str = "dd if=/dev/urandom of=/tmp/p bs=4096 count=64 2>/dev/null\n\
    dd if=/tmp/p of=/dev/vda bs=4096 conv=fsync 2>/dev/null\n\
    echo 3 > /proc/sys/vm/drop_caches\n\
    dd if=/dev/vda of=/tmp/r bs=4096 count=64 2>/dev/null\n\
    if cmp /tmp/p /tmp/r; then echo GUEST-CMP=equal; else echo GUEST-CMP=differs; fi\n\
    echo GUEST-READY\n\
    sleep 3\n";

fn lab_script() -> String {
    format!(
        r#"
export NO_COLOR=1
dd if=/dev/zero of=/tmp/disk.img bs=1M count=16 2>/dev/null
/lab/bin/vhost-user-blk --socket /tmp/vu.sock --path /tmp/disk.img --queue-affinity 0@1 > /tmp/backend.log 2>&1 &
BACKEND=$!
for i in $(seq 100); do [ -S /tmp/vu.sock ] && break; sleep 0.1; done
echo "REFUSED: $(/lab/bin/vmm run --kernel {LAB_GUEST_KERNEL} --memory 512M,shared=off --disk vhost_user=on,socket=/tmp/vu.sock 2>&1)"
/lab/bin/vmm run --kernel {LAB_GUEST_KERNEL} --memory 512M,shared=off --disk vhost_user=on,socket=/tmp/vu.sock >/dev/null 2>&1
echo REFUSED-STATUS=$?
RUST_LOG=${{RUST_LOG:-vmm=info}} /lab/bin/vmm run --kernel {LAB_GUEST_KERNEL} \
    --initramfs {LAB_GUEST_INITRD} --cpus 'boot=2,affinity=[0@[1],1@[0]]' --memory size=512M \
    --disk vhost_user=on,socket=/tmp/vu.sock,num_queues=1 > /tmp/vmm.log 2>&1 &
VMM=$!
for i in $(seq 600); do grep -q GUEST-READY /tmp/vmm.log && break; kill -0 $VMM 2>/dev/null || break; sleep 0.1; done
for t in /proc/$VMM/task/* /proc/$BACKEND/task/*; do
    case "$(cat $t/comm)" in
        vcpu*|blk-q*) echo "AFFINITY $(cat $t/comm)=$(grep Cpus_allowed_list $t/status | cut -f2)";;
    esac
done
echo RAM-MEMFD-MAPPINGS=$(grep -c memfd:guest-ram /proc/$VMM/maps)
wait $VMM
echo VMM-EXIT-STATUS=$?
kill $BACKEND; wait $BACKEND
cat /tmp/vmm.log
"#
    )
}

#[test]
fn pinned_vcpus_and_a_vhost_user_disk_on_shared_ram_chosen_for_it() {
    let Some(images) = lab::test_images() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let initrd = guest_initramfs(
        &images,
        GUEST,
        false,
        Cpio::new(),
        &dir.path().join("g.cpio"),
    )
    .expect("guest initramfs");
    let run = LabHost::new(&images)
        .binary(env!("CARGO_BIN_EXE_vmm"), "/lab/bin")
        .binary(our_backend(), "/lab/bin")
        .with_guest(&initrd)
        .script(lab_script())
        .timeout(Duration::from_secs(240))
        .run()
        .unwrap_or_else(|e| panic!("lab run: {e}"));
    eprintln!("lab run took {:.1?}", run.duration);
    let c = &run.console;
    let value = |key: &str| lab::console_value(c, key).unwrap_or_else(|| panic!("no {key}:\n{c}"));
    // Private RAM forced beside a vhost-user disk: refused before anything starts.
    assert_eq!(value("REFUSED-STATUS="), "1", "{c}");
    assert!(value("REFUSED:").contains("drop shared=off"), "{c}");
    // Shared RAM chosen for the vhost-user disk, which works.
    assert_eq!(lab::guest_ram_mode(c).as_deref(), Some("shared"), "{c}");
    assert_ne!(value("RAM-MEMFD-MAPPINGS="), "0", "{c}");
    assert_eq!(value("GUEST-CMP="), "equal", "{c}");
    assert_eq!(value("GUEST-EXIT-STATUS="), "0", "{c}");
    assert_eq!(value("VMM-EXIT-STATUS="), "0", "{c}");
    // Each vCPU thread and the backend's queue thread on the CPUs given.
    assert_eq!(value("AFFINITY vcpu0="), "1", "{c}");
    assert_eq!(value("AFFINITY vcpu1="), "0", "{c}");
    assert_eq!(value("AFFINITY blk-q0="), "1", "{c}");
}
