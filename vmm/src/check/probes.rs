// SPDX-License-Identifier: Apache-2.0
//! Live probes: KVM ioctls, an io_uring NOP round trip, memfd + MAP_SHARED, seccomp.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::Path;

use io_uring::{opcode, IoUring};
use kvm_ioctls::Kvm;

use crate::error::{Error, Result};

pub use crate::vstate::vm::REQUIRED_CAPS;

/// The KVM API version every supported kernel reports.
pub const KVM_API_VERSION: i32 = 12;

/// What `/dev/kvm` answered.
#[derive(Debug, Clone)]
pub struct KvmInfo {
    /// `KVM_GET_API_VERSION`.
    pub api_version: i32,
    /// Each required capability and whether it is present.
    pub caps: Vec<(&'static str, bool)>,
    /// `KVM_CAP_MAX_VCPUS` (falls back to `KVM_CAP_NR_VCPUS`, then 4).
    pub max_vcpus: usize,
    /// `KVM_CAP_NR_VCPUS` (recommended maximum).
    pub nr_vcpus: usize,
    /// `Err` with the reason when `KVM_CREATE_VM` failed.
    pub create_vm: std::result::Result<(), kvm_ioctls::Error>,
}

impl KvmInfo {
    /// API version is 12 and every required capability is present.
    pub fn complete(&self) -> bool {
        self.api_version == KVM_API_VERSION && self.caps.iter().all(|(_, ok)| *ok)
    }
}

/// Opens `path` read-write (as the VMM would) and queries it.
pub fn probe_kvm(path: &Path) -> Result<KvmInfo> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| Error::HostFile {
            path: path.to_path_buf(),
            source,
        })?;
    // SAFETY: `into_raw_fd` hands over an open fd that nothing else owns; `Kvm` takes
    // ownership and closes it on drop.
    let kvm = unsafe { Kvm::from_raw_fd(file.into_raw_fd()) };
    let api_version = kvm.get_api_version();
    let caps = REQUIRED_CAPS
        .iter()
        .map(|(cap, name)| (*name, kvm.check_extension(*cap)))
        .collect();
    let create_vm = kvm.create_vm().map(drop);
    Ok(KvmInfo {
        api_version,
        caps,
        max_vcpus: kvm.get_max_vcpus(),
        nr_vcpus: kvm.get_nr_vcpus(),
        create_vm,
    })
}

/// Creates a ring, submits a NOP and waits for its completion.
pub fn probe_io_uring() -> Result<()> {
    const TAG: u64 = 0x0076_6d6d_636b;
    let err = |what| move |source| Error::IoUring { what, source };
    let mut ring = IoUring::new(4).map_err(err("setup"))?;
    let nop = opcode::Nop::new().build().user_data(TAG);
    // SAFETY: a NOP references no buffers, so nothing must outlive the submission.
    unsafe { ring.submission().push(&nop) }.map_err(|e| err("push")(io::Error::other(e)))?;
    ring.submit_and_wait(1).map_err(err("submit"))?;
    let cqe = ring
        .completion()
        .next()
        .ok_or_else(|| err("completion")(io::Error::other("none after submit_and_wait(1)")))?;
    if cqe.user_data() != TAG {
        return Err(err("completion")(io::Error::other(format!(
            "user_data {:#x}, expected {TAG:#x}",
            cqe.user_data()
        ))));
    }
    if cqe.result() < 0 {
        return Err(err("NOP")(io::Error::from_raw_os_error(-cqe.result())));
    }
    Ok(())
}

/// Creates a memfd, maps it `MAP_SHARED`, writes through the mapping and reads the
/// bytes back through the fd (what vhost-user guest memory needs).
pub fn probe_memfd() -> Result<()> {
    const LEN: usize = 2 * 4096;
    let err = |what| move |source| Error::Memfd { what, source };
    // SAFETY: the name is a valid NUL-terminated string; the result is checked.
    let fd = unsafe { libc::memfd_create(c"vmm-check".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(err("memfd_create")(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = File::from(fd);
    file.set_len(LEN as u64).map_err(err("ftruncate"))?;
    // SAFETY: mapping a fresh LEN-byte region of a file we own; the result is checked.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(err("mmap MAP_SHARED")(io::Error::last_os_error()));
    }
    let pattern = *b"vmm-check-memfd!";
    // SAFETY: `addr` is a live LEN-byte read-write mapping and LEN > pattern.len() + 4096.
    unsafe {
        std::ptr::copy_nonoverlapping(pattern.as_ptr(), addr.cast::<u8>().add(4096), pattern.len());
    }
    let mut back = [0u8; 16];
    let read = std::os::unix::fs::FileExt::read_exact_at(&file, &mut back, 4096);
    // SAFETY: unmapping exactly the region mapped above; nothing references it after.
    let unmapped = unsafe { libc::munmap(addr, LEN) };
    read.map_err(err("pread"))?;
    if unmapped != 0 {
        return Err(err("munmap")(io::Error::last_os_error()));
    }
    if back != pattern {
        return Err(err("read back")(io::Error::other(
            "bytes written through the MAP_SHARED mapping are not visible through the fd",
        )));
    }
    Ok(())
}

/// Opens a character device read-write and closes it again.
pub fn open_rw(path: &Path) -> Result<()> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map(drop)
        .map_err(|source| Error::HostFile {
            path: path.to_path_buf(),
            source,
        })
}

/// What the kernel offers for seccomp filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeccompInfo {
    /// This process's seccomp mode (`PR_GET_SECCOMP`: 0 none, 2 filtered).
    pub mode: i32,
    /// `SECCOMP_RET_KILL_PROCESS` is available (`SECCOMP_GET_ACTION_AVAIL`, Linux 4.14).
    pub kill_process: bool,
}

/// Asks the kernel whether seccomp filters work here (`prctl(PR_GET_SECCOMP)` and
/// `seccomp(SECCOMP_GET_ACTION_AVAIL, SECCOMP_RET_KILL_PROCESS)`).
pub fn probe_seccomp() -> io::Result<SeccompInfo> {
    // SAFETY: prctl with integer arguments only.
    let mode = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
    if mode < 0 {
        return Err(io::Error::last_os_error());
    }
    const SECCOMP_GET_ACTION_AVAIL: libc::c_ulong = 2;
    let action: u32 = libc::SECCOMP_RET_KILL_PROCESS;
    // SAFETY: the operation reads one u32 through the pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_GET_ACTION_AVAIL,
            0,
            &action as *const u32,
        )
    };
    Ok(SeccompInfo {
        mode,
        kill_process: rc == 0,
    })
}
