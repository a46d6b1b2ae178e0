//! End-to-end: this VMM as the vhost-user-net frontend. In the lab host, the project's
//! `vhost-user-net` backend serves tap0 (10.0.0.1/24); the guest booted by `vmm run --net`
//! configures eth0 10.0.0.2/24, pings the lab host and runs iperf3 (TCP both ways, UDP).
//!
//! Run: `cargo build -p backends && cargo test -p vmm --test vhost_user_net_lab -- --nocapture`.
//! Nested TCG: throughput is for relative comparison only.

use std::path::PathBuf;
use std::time::Duration;

use lab::{guest_initramfs, Cpio, Images, LabHost, LAB_GUEST_INITRD, LAB_GUEST_KERNEL};

fn images() -> Option<Images> {
    if lab::qemu_binary().is_none() {
        eprintln!("SKIP: qemu-system-x86_64 is not installed");
        return None;
    }
    Some(Images::ensure_default().unwrap_or_else(|e| panic!("lab images: {e}")))
}

fn our_backend() -> PathBuf {
    let p = lab::repo_root().join("target/debug/vhost-user-net");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build -p backends` first",
        p.display()
    );
    p
}

fn value<'a>(console: &'a str, key: &str) -> Option<&'a str> {
    console
        .lines()
        .find_map(|l| l.find(key).map(|i| l[i + key.len()..].trim()))
}

fn iperf_bps(console: &str, key: &str, udp: bool) -> f64 {
    let raw = value(console, key).unwrap_or_else(|| panic!("no {key} in console:\n{console}"));
    let json: serde_json::Value =
        serde_json::from_str(raw).unwrap_or_else(|e| panic!("{key} is not JSON ({e}): {raw}"));
    assert!(json.get("error").is_none(), "{key} iperf3 error: {json}");
    let sum = if udp {
        &json["end"]["sum"]
    } else {
        &json["end"]["sum_received"]
    };
    let bps = sum["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("{key}: no bits_per_second in {json}"));
    assert!(bps > 0.0, "{key}: zero throughput: {json}");
    bps
}

#[test]
fn vmm_guest_pings_and_runs_iperf3_over_vhost_user_net() {
    let Some(images) = images() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let guest = r#"
ip link set eth0 up
ip addr add 10.0.0.2/24 dev eth0
echo GUEST-MAC=$(cat /sys/class/net/eth0/address)
echo GUEST-MTU=$(cat /sys/class/net/eth0/mtu)
ping -c 3 -W 5 10.0.0.1
echo PING-STATUS=$?
echo "IPERF-TCP=$(iperf3 -c 10.0.0.1 -t 3 -i 0 -J | tr -d '\n')"
echo "IPERF-TCPR=$(iperf3 -c 10.0.0.1 -t 3 -i 0 -J -R | tr -d '\n')"
echo "IPERF-UDP=$(iperf3 -c 10.0.0.1 -t 3 -i 0 -J -u -b 50M | tr -d '\n')"
"#;
    let initrd = guest_initramfs(
        &images,
        guest,
        true,
        Cpio::new(),
        &dir.path().join("g.cpio"),
    )
    .expect("guest initramfs");
    let script = format!(
        r#"
export NO_COLOR=1
/lab/bin/vhost-user-net --socket /tmp/vn.sock --tap tap0 --mac 52:54:00:aa:bb:01 > /tmp/vn.log 2>&1 &
VN=$!
for i in $(seq 100); do [ -S /tmp/vn.sock ] && break; sleep 0.1; done
ip addr add 10.0.0.1/24 dev tap0
ip link set tap0 up
iperf3 -s -D
RUST_LOG=${{RUST_LOG:-vmm=info}} /lab/bin/vmm run --kernel {LAB_GUEST_KERNEL} \
    --initramfs {LAB_GUEST_INITRD} --cpus 2 --memory 768M \
    --net vhost_user=on,socket=/tmp/vn.sock 2>&1 | tee /tmp/vmm.log
echo VMM-EXIT-STATUS=$?
sleep 1
kill $VN 2>/dev/null
sleep 0.5
echo '--- backend log'
cat /tmp/vn.log
grep -q 'GUEST-EXIT-STATUS=0' /tmp/vmm.log
"#
    );
    let run = LabHost::new(&images)
        .memory_mib(3072)
        .binary(env!("CARGO_BIN_EXE_vmm"), "/lab/bin")
        .binary(our_backend(), "/lab/bin")
        .with_guest(&initrd)
        .script(script)
        .timeout(Duration::from_secs(400))
        .run()
        .unwrap_or_else(|e| panic!("lab run: {e}"));
    eprintln!("lab run took {:.1?}", run.duration);
    let c = &run.console;
    // The backend's MAC and MTU reach the guest through GET_CONFIG.
    assert_eq!(value(c, "GUEST-MAC="), Some("52:54:00:aa:bb:01"), "{c}");
    assert_eq!(value(c, "GUEST-MTU="), Some("1500"), "{c}");
    assert_eq!(value(c, "PING-STATUS="), Some("0"), "ping failed:\n{c}");
    let tx = iperf_bps(c, "IPERF-TCP=", false);
    let rx = iperf_bps(c, "IPERF-TCPR=", false);
    let udp = iperf_bps(c, "IPERF-UDP=", true);
    eprintln!(
        "RESULT vmm frontend, nested TCG, relative only: TCP guest->host {:.1} Mbit/s, \
         host->guest {:.1} Mbit/s, UDP {:.1} Mbit/s",
        tx / 1e6,
        rx / 1e6,
        udp / 1e6
    );
    for l in c.lines().filter(|l| l.contains("queue counters")) {
        eprintln!("{l}");
    }
    assert_eq!(run.status, 0, "lab script failed:\n{c}");
}
