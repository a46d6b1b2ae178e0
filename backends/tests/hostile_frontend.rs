// SPDX-License-Identifier: Apache-2.0
//! A frontend that lies about its memory: found by the `vhost_user` fuzz target. A
//! SET_MEM_TABLE region larger than the file it maps used to be mapped as given, and the
//! backend died of SIGBUS at its first access past the end of the file (SET_VRING_ADDR
//! reads the used index). It is now refused, and the backend serves the next frontend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vhost::vhost_user::Frontend;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};

fn memfd(len: u64) -> File {
    // SAFETY: memfd_create takes a NUL-terminated name; the fd is wrapped at once.
    let fd = unsafe { libc::memfd_create(c"guest".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: a fresh descriptor owned by nobody else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len).unwrap();
    f
}

#[test]
fn a_memory_region_past_the_end_of_its_file_is_refused_without_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let socket = dir.path().join("blk.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vhost-user-blk"))
        .arg("--socket")
        .arg(&socket)
        .arg("--path")
        .arg(&img)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "socket never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }

    // 4 KiB of file behind a 1 MiB region; the rings 512 KiB into it.
    let guest = memfd(4096);
    let uaddr = 0x7f00_0000_0000u64;
    let frontend = Frontend::connect(&socket, 1).unwrap();
    frontend.set_owner().unwrap();
    let features = frontend.get_features().unwrap();
    frontend.set_features(features & (1 << 32)).unwrap();
    let region = VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: 1 << 20,
        userspace_addr: uaddr,
        mmap_offset: 0,
        mmap_handle: guest.as_raw_fd(),
    };
    // The backend refuses the table and ends the connection: later calls may fail.
    let _ = frontend.set_mem_table(&[region]);
    let _ = frontend.set_vring_num(0, 64);
    let _ = frontend.set_vring_addr(
        0,
        &VringConfigData {
            queue_max_size: 64,
            queue_size: 64,
            flags: 0,
            desc_table_addr: uaddr + 0x8_0000,
            used_ring_addr: uaddr + 0x8_2000,
            avail_ring_addr: uaddr + 0x8_1000,
            log_addr: None,
        },
    );
    let _ = frontend.get_features();
    drop(frontend);
    std::thread::sleep(Duration::from_millis(300));
    let status = child.try_wait().unwrap();
    assert!(status.is_none(), "the backend died: {status:?}");

    // And it serves the next frontend.
    let next = Frontend::connect(&socket, 1).unwrap();
    next.set_owner().unwrap();
    assert_eq!(next.get_features().unwrap(), features);
    drop(next);
    let _ = child.kill();
    let _ = child.wait();
}
