// SPDX-License-Identifier: Apache-2.0
//! The VMM side of vhost-user reconnect, natively (no guest, no lab): a vhost-user-blk device
//! on the virtio-pci transport, driven through its registers and rings by a minimal split-ring
//! driver in this test, served by this project's `vhost-user-blk` process, which the test
//! kills and restarts. KVM is needed for the transport (ioeventfds, irqfd routes); without a
//! usable `/dev/kvm` the tests print why and pass.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::config::{DiskConfig, MemoryConfig};
use vmm::devices::bus::{lock, BusDevice};
use vmm::devices::virtio::vhost_user::supervisor::Supervisor;
use vmm::devices::virtio::vhost_user::{BackendTarget, Connection, VhostUserBlk};
use vmm::devices::virtio::{status, ReconnectError, VirtioDevice, VirtioPciDevice};
use vmm::memory::{create_guest_ram, RamMode};
use vmm::vstate::interrupts::IrqRouting;
use vmm::vstate::vcpu::IoBuses;
use vmm::vstate::vm::Vm;

const QSIZE: u16 = 16;
const DESC: u64 = 0x1_0000;
const AVAIL: u64 = 0x1_1000;
const USED: u64 = 0x1_2000;
const HDR: u64 = 0x2_0000;
const DATA: u64 = 0x10_0000;
const STATUS: u64 = 0x3_0000;
const SECTOR: u64 = 512;

/// This project's backend binary (built with the workspace).
fn backend_bin() -> PathBuf {
    let p = lab::repo_root().join("target/debug/vhost-user-blk");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build -p backends` first",
        p.display()
    );
    p
}

/// A raw image of `mib` MiB whose sector `n` is filled with the byte `n % 251`.
fn image(dir: &Path, name: &str, mib: u64) -> PathBuf {
    let path = dir.join(name);
    let mut f = File::create(&path).unwrap();
    for n in 0..mib * 2048 {
        f.write_all(&[(n % 251) as u8; SECTOR as usize]).unwrap();
    }
    path
}

/// A running `vhost-user-blk`.
struct Backend {
    child: Child,
}

impl Backend {
    fn start(socket: &Path, disk: &Path) -> Backend {
        let _ = std::fs::remove_file(socket);
        let child = Command::new(backend_bin())
            .args(["--socket", socket.to_str().unwrap()])
            .args(["--path", disk.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn vhost-user-blk");
        let t0 = Instant::now();
        while !socket.exists() {
            assert!(t0.elapsed() < Duration::from_secs(10), "no socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        Backend { child }
    }

    /// SIGKILL, as a crash.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The device under test with what drives it.
struct Rig {
    dev: Arc<Mutex<VirtioPciDevice>>,
    mem: GuestMemoryMmap,
    supervisor: Option<Supervisor>,
    next_avail: u16,
    _vm: Vm,
}

/// Common configuration offsets in the BAR (virtio 1.x §4.1.4.3).
const STATUS_REG: u64 = 0x14;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_ENABLE: u64 = 0x1c;
const NOTIFY: u64 = 0x3000;

impl Rig {
    /// A vhost-user-blk device for `socket` with `disk_opts` (after `vhost_user=on,socket=`),
    /// on the transport, with its supervisor; `None` without a usable KVM.
    fn new(socket: &Path, disk_opts: &str) -> Option<Rig> {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("vmm=debug")
            .try_init();
        let vm = match Vm::new(1) {
            Ok(vm) => vm,
            Err(e) => {
                eprintln!("SKIP: no usable /dev/kvm: {e}");
                return None;
            }
        };
        let ram = create_guest_ram(
            &MemoryConfig {
                size: 64 << 20,
                hugepages: false,
                shared: None,
            },
            RamMode::Shared,
        )
        .unwrap();
        let cfg: DiskConfig = format!("vhost_user=on,socket={}{disk_opts}", socket.display())
            .parse()
            .unwrap();
        let blk = VhostUserBlk::connect(socket, &cfg, 0).unwrap();
        let routing = Arc::new(IrqRouting::new(vm.fd.clone()).unwrap());
        let buses = Arc::new(IoBuses::default());
        let dev = VirtioPciDevice::new(
            Box::new(blk),
            vm.fd.clone(),
            routing,
            buses,
            ram.mem.clone(),
            1 << 32,
        )
        .unwrap();
        let supervisor = Supervisor::spawn(&dev, "test-supervisor".into()).unwrap();
        let mut rig = Rig {
            dev,
            mem: ram.mem,
            supervisor,
            next_avail: 0,
            _vm: vm,
        };
        rig.driver_init();
        Some(rig)
    }

    fn write(&self, offset: u64, data: &[u8]) {
        lock(&self.dev).write(offset, data);
    }

    /// What a guest driver does up to DRIVER_OK, with queue 0 of [`QSIZE`] entries.
    fn driver_init(&mut self) {
        use status::*;
        self.write(STATUS_REG, &[ACKNOWLEDGE | DRIVER]);
        // VIRTIO_F_VERSION_1 (bit 32).
        self.write(0x08, &1u32.to_le_bytes());
        self.write(0x0c, &1u32.to_le_bytes());
        self.write(STATUS_REG, &[ACKNOWLEDGE | DRIVER | FEATURES_OK]);
        self.write(QUEUE_SELECT, &0u16.to_le_bytes());
        self.write(QUEUE_SIZE, &QSIZE.to_le_bytes());
        self.write(0x20, &DESC.to_le_bytes());
        self.write(0x28, &AVAIL.to_le_bytes());
        self.write(0x30, &USED.to_le_bytes());
        self.write(QUEUE_ENABLE, &1u16.to_le_bytes());
        self.write(
            STATUS_REG,
            &[ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK],
        );
        assert!(!lock(&self.dev).needs_reset(), "activation failed");
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }

    /// Puts a one-sector request (`write`: data from DATA to the disk; else disk to DATA) on
    /// the avail ring and kicks. Each request uses descriptors 0..3 of its own slot.
    fn submit(&mut self, write: bool, sector: u64) {
        let slot = u64::from(self.next_avail % (QSIZE / 4));
        let head = (slot * 3) as u16;
        let hdr = HDR + slot * 16;
        let data = DATA + slot * SECTOR;
        let st = STATUS + slot;
        let ty: u32 = if write { 1 } else { 0 };
        self.mem.write_obj(ty, GuestAddress(hdr)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(hdr + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(hdr + 8)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(st)).unwrap();
        let data_flags: u16 = if write { 1 } else { 1 | 2 }; // NEXT (+ WRITE)
        let descs = [
            (hdr, 16u32, 1u16, head + 1),
            (data, SECTOR as u32, data_flags, head + 2),
            (st, 1, 2, 0),
        ];
        for (i, (addr, len, flags, next)) in descs.into_iter().enumerate() {
            let d = DESC + 16 * (u64::from(head) + i as u64);
            self.mem.write_obj(addr, GuestAddress(d)).unwrap();
            self.mem.write_obj(len, GuestAddress(d + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
            self.mem.write_obj(next, GuestAddress(d + 14)).unwrap();
        }
        let pos = u64::from(self.next_avail % QSIZE);
        self.mem
            .write_obj(head, GuestAddress(AVAIL + 4 + 2 * pos))
            .unwrap();
        self.next_avail = self.next_avail.wrapping_add(1);
        self.mem
            .write_obj(self.next_avail, GuestAddress(AVAIL + 2))
            .unwrap();
        // No guest: the notify write reaches the transport, which writes the kick eventfd.
        self.write(NOTIFY, &0u16.to_le_bytes());
    }

    /// Waits until the used index reaches `n` (or fails after `secs`).
    fn wait_used(&self, n: u16, secs: u64) {
        let t0 = Instant::now();
        while self.used_idx() != n {
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "used index {} after {secs} s, expected {n}",
                self.used_idx()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn data(&self, slot: u64) -> Vec<u8> {
        let mut b = vec![0u8; SECTOR as usize];
        self.mem
            .read_slice(&mut b, GuestAddress(DATA + slot * SECTOR))
            .unwrap();
        b
    }

    fn status_byte(&self, slot: u64) -> u8 {
        self.mem.read_obj(GuestAddress(STATUS + slot)).unwrap()
    }

    /// Waits for the device to be marked DEVICE_NEEDS_RESET (or fails after `secs`).
    fn wait_needs_reset(&self, secs: u64) -> Duration {
        let t0 = Instant::now();
        while !lock(&self.dev).needs_reset() {
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "not marked DEVICE_NEEDS_RESET after {secs} s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        t0.elapsed()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.supervisor.take();
        lock(&self.dev).shutdown();
    }
}

fn sector_in_file(path: &Path, sector: u64) -> Vec<u8> {
    let mut f = File::open(path).unwrap();
    f.seek(SeekFrom::Start(sector * SECTOR)).unwrap();
    let mut b = vec![0u8; SECTOR as usize];
    f.read_exact(&mut b).unwrap();
    b
}

#[test]
fn a_killed_backend_is_reconnected_and_requests_sent_meanwhile_complete() {
    let dir = tempfile::tempdir().unwrap();
    let disk = image(dir.path(), "disk.img", 8);
    let socket = dir.path().join("vu.sock");
    let backend = Backend::start(&socket, &disk);
    let Some(mut rig) = Rig::new(&socket, ",reconnect_ms=50,reconnect_timeout_s=20") else {
        return;
    };
    rig.submit(false, 5);
    rig.wait_used(1, 10);
    assert_eq!((rig.data(0), rig.status_byte(0)), (vec![5u8; 512], 0));

    // The backend dies; the device waits quietly for the next one.
    backend.kill();
    std::thread::sleep(Duration::from_millis(300));
    assert!(!lock(&rig.dev).needs_reset(), "marked while reconnecting");
    // A write submitted (and kicked) while no backend is there.
    rig.mem
        .write_slice(&[0xabu8; 512], GuestAddress(DATA + SECTOR))
        .unwrap();
    rig.submit(true, 9);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rig.used_idx(), 1);

    // A new backend process on the same socket: the setup is replayed and the queue kicked.
    let _backend = Backend::start(&socket, &disk);
    rig.wait_used(2, 10);
    assert_eq!(rig.status_byte(1), 0);
    assert_eq!(sector_in_file(&disk, 9), vec![0xab; 512]);
    // And it keeps serving.
    rig.submit(false, 200);
    rig.wait_used(3, 10);
    assert_eq!(rig.data(2), vec![200u8; 512]);
    assert!(!lock(&rig.dev).needs_reset());
}

#[test]
fn a_backend_with_another_capacity_is_refused_and_the_device_needs_reset() {
    let dir = tempfile::tempdir().unwrap();
    let disk = image(dir.path(), "disk.img", 8);
    let bigger = image(dir.path(), "bigger.img", 16);
    let socket = dir.path().join("vu.sock");
    let backend = Backend::start(&socket, &disk);
    let Some(mut rig) = Rig::new(&socket, ",reconnect_ms=50") else {
        return;
    };
    rig.submit(false, 1);
    rig.wait_used(1, 10);
    backend.kill();
    let _other = Backend::start(&socket, &bigger);
    rig.wait_needs_reset(10);
    // The guest sees a zero capacity (Linux re-reads it on the config interrupt).
    let mut capacity = [0u8; 8];
    lock(&rig.dev).read(0x2000, &mut capacity);
    assert_eq!(capacity, [0; 8]);
}

#[test]
fn the_refusal_names_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let disk = image(dir.path(), "disk.img", 8);
    let bigger = image(dir.path(), "bigger.img", 16);
    let socket = dir.path().join("vu.sock");
    let backend = Backend::start(&socket, &disk);
    let cfg: DiskConfig = format!("vhost_user=on,socket={}", socket.display())
        .parse()
        .unwrap();
    let mut blk = VhostUserBlk::connect(&socket, &cfg, 0).unwrap();
    let target: BackendTarget = blk.reconnect_target().expect("reconnects by default");
    backend.kill();
    blk.connection_lost();
    let _other = Backend::start(&socket, &bigger);
    let conn = Connection::open(&target).unwrap();
    match blk.reconnected(conn) {
        Err(ReconnectError::Refused(why)) => {
            assert_eq!(why, "capacity 16384 -> 32768 sectors");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn with_reconnect_off_a_hangup_needs_reset_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let disk = image(dir.path(), "disk.img", 8);
    let socket = dir.path().join("vu.sock");
    let backend = Backend::start(&socket, &disk);
    let Some(mut rig) = Rig::new(&socket, ",reconnect=off") else {
        return;
    };
    rig.submit(false, 1);
    rig.wait_used(1, 10);
    backend.kill();
    let took = rig.wait_needs_reset(5);
    eprintln!("marked DEVICE_NEEDS_RESET {took:?} after the kill");
    // A backend listening again changes nothing.
    let _again = Backend::start(&socket, &disk);
    rig.submit(false, 2);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rig.used_idx(), 1);
}

#[test]
fn a_backend_that_stays_away_is_given_up_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let disk = image(dir.path(), "disk.img", 8);
    let socket = dir.path().join("vu.sock");
    let backend = Backend::start(&socket, &disk);
    let Some(rig) = Rig::new(&socket, ",reconnect_ms=100,reconnect_timeout_s=1") else {
        return;
    };
    backend.kill();
    let took = rig.wait_needs_reset(10);
    assert!(took >= Duration::from_millis(900), "gave up after {took:?}");
}
