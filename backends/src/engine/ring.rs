// SPDX-License-Identifier: Apache-2.0
//! Every io_uring the backends and the in-VMM devices create, restricted to what it submits.
//!
//! A ring is created disabled (`IORING_SETUP_R_DISABLED`), given its one fixed file and its
//! completion eventfd, then restricted (`IORING_REGISTER_RESTRICTIONS`) before it is enabled:
//! only the opcodes its owner submits, every SQE must name the registered file
//! (`IOSQE_FIXED_FILE` required), only the extra SQE flags the owner uses, and no
//! `io_uring_register` operation at all once enabled. The kernel then answers any other SQE
//! with `-EACCES` and any later registration with `EACCES`: a bug (or an attacker steering a
//! queue thread) cannot turn a disk's or a TAP's ring into one that opens, reads or sends
//! anything else. Firecracker's block engine restricts its ring the same way.
//!
//! [`set_restrictions`] turns this off for the process (rings are then created enabled and
//! unrestricted), for measuring what the restrictions cost.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use io_uring::register::Restriction;
use io_uring::{squeue, IoUring};

use crate::{Error, Result};

static RESTRICT: AtomicBool = AtomicBool::new(true);

/// Restrict the rings created from now on (the default), or not (benchmarking only).
pub fn set_restrictions(on: bool) {
    RESTRICT.store(on, Ordering::Relaxed);
}

/// Whether new rings are restricted.
pub fn restrictions() -> bool {
    RESTRICT.load(Ordering::Relaxed)
}

/// Parse `on` or `off` (command-line switches such as `--uring-restrictions`).
pub fn parse_on_off(s: &str) -> std::result::Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("'{s}': expected on or off")),
    }
}

/// What one ring is and may carry.
#[derive(Debug, Clone, Copy)]
pub struct RingSpec<'a> {
    /// Submission queue entries.
    pub sq_entries: u32,
    /// Completion queue entries (the kernel's default, twice the SQ, when `None`).
    pub cq_entries: Option<u32>,
    /// SQPOLL with this idle time in milliseconds.
    pub sqpoll_idle_ms: Option<u32>,
    /// The one file every operation names ([`super::FIXED_FILE`]).
    pub file: RawFd,
    /// Eventfd signalled on completions.
    pub eventfd: RawFd,
    /// The opcodes the owner submits (`io_uring::opcode::*::CODE`).
    pub opcodes: &'a [u8],
    /// SQE flags the owner uses besides `IOSQE_FIXED_FILE`.
    pub flags: squeue::Flags,
}

/// Create the ring `spec` describes: file and eventfd registered, then (unless turned off
/// with [`set_restrictions`]) restricted and enabled.
pub fn new_ring(spec: &RingSpec<'_>) -> Result<IoUring> {
    build(spec, restrictions())
}

fn build(spec: &RingSpec<'_>, restrict: bool) -> Result<IoUring> {
    let mut builder = IoUring::builder();
    if let Some(cq) = spec.cq_entries {
        builder.setup_cqsize(cq);
    }
    if let Some(idle) = spec.sqpoll_idle_ms {
        builder.setup_sqpoll(idle);
    }
    if restrict {
        builder.setup_r_disabled();
    }
    let ring = builder.build(spec.sq_entries).map_err(Error::UringSetup)?;
    let submitter = ring.submitter();
    // Not `register_eventfd_async`: buffered reads that miss the page cache complete through
    // task_work in the owner's context, which the async variant does not signal.
    submitter
        .register_eventfd(spec.eventfd)
        .map_err(Error::UringSetup)?;
    submitter
        .register_files(&[spec.file])
        .map_err(Error::UringSetup)?;
    if restrict {
        let mut rules: Vec<Restriction> = spec
            .opcodes
            .iter()
            .map(|&op| Restriction::sqe_op(op))
            .collect();
        rules.push(Restriction::sqe_flags_required(
            squeue::Flags::FIXED_FILE.bits(),
        ));
        rules.push(Restriction::sqe_flags_allowed(spec.flags.bits()));
        // No `register_op`: nothing may be registered once the ring runs.
        submitter
            .register_restrictions(&mut rules)
            .map_err(Error::UringRestrict)?;
        submitter
            .register_enable_rings()
            .map_err(Error::UringRestrict)?;
    }
    Ok(ring)
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    use io_uring::{opcode, types};
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::engine::FIXED_FILE;

    fn run_one(ring: &mut IoUring, sqe: &squeue::Entry) -> i32 {
        // SAFETY: the test's buffers outlive the synchronous submit_and_wait below.
        unsafe { ring.submission().push(sqe) }.unwrap();
        ring.submit_and_wait(1).unwrap();
        let cqe = ring.completion().next().unwrap();
        cqe.result()
    }

    #[test]
    fn only_allowed_opcodes_on_the_fixed_file_pass_a_restricted_ring() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"restricted ring").unwrap();
        let other = File::open("/proc/self/status").unwrap();
        let efd = EventFd::new(0).unwrap();
        let spec = RingSpec {
            sq_entries: 4,
            cq_entries: None,
            sqpoll_idle_ms: None,
            file: file.as_raw_fd(),
            eventfd: efd.as_raw_fd(),
            opcodes: &[opcode::Read::CODE],
            flags: squeue::Flags::empty(),
        };
        let mut ring = new_ring(&spec).unwrap();
        let mut buf = [0u8; 10];
        // Allowed: a read of the registered file.
        let read = opcode::Read::new(FIXED_FILE, buf.as_mut_ptr(), 10)
            .offset(0)
            .build();
        assert_eq!(run_one(&mut ring, &read), 10);
        assert_eq!(&buf, b"restricted");
        // Refused: an opcode outside the allow-list (a write, an openat, a no-op).
        let data = *b"overwrite!";
        let write = opcode::Write::new(FIXED_FILE, data.as_ptr(), 10)
            .offset(0)
            .build();
        assert_eq!(run_one(&mut ring, &write), -libc::EACCES);
        let path = c"/etc/hostname";
        let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr())
            .build()
            .flags(squeue::Flags::FIXED_FILE);
        assert_eq!(run_one(&mut ring, &open), -libc::EACCES);
        let nop = opcode::Nop::new().build().flags(squeue::Flags::FIXED_FILE);
        assert_eq!(run_one(&mut ring, &nop), -libc::EACCES);
        // Refused: the allowed opcode on a plain (unregistered) descriptor.
        let plain = opcode::Read::new(types::Fd(other.as_raw_fd()), buf.as_mut_ptr(), 10).build();
        assert_eq!(run_one(&mut ring, &plain), -libc::EACCES);
        // Refused: an SQE flag the owner does not use.
        let linked = opcode::Read::new(FIXED_FILE, buf.as_mut_ptr(), 10)
            .build()
            .flags(squeue::Flags::IO_LINK);
        assert_eq!(run_one(&mut ring, &linked), -libc::EACCES);
        // Refused: registering anything once the ring runs.
        let err = ring
            .submitter()
            .register_files_update(0, &[other.as_raw_fd()])
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EACCES));
        // The file was never written.
        let mut got = [0u8; 15];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut got, 0).unwrap();
        assert_eq!(&got, b"restricted ring");
    }

    #[test]
    fn allowed_extra_flags_pass_and_unrestricted_rings_take_anything() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"0123456789").unwrap();
        let efd = EventFd::new(0).unwrap();
        let mut spec = RingSpec {
            sq_entries: 4,
            cq_entries: Some(8),
            sqpoll_idle_ms: None,
            file: file.as_raw_fd(),
            eventfd: efd.as_raw_fd(),
            opcodes: &[opcode::Read::CODE, opcode::AsyncCancel::CODE],
            flags: squeue::Flags::IO_HARDLINK,
        };
        let mut ring = new_ring(&spec).unwrap();
        let mut buf = [0u8; 4];
        let linked = opcode::Read::new(FIXED_FILE, buf.as_mut_ptr(), 4)
            .build()
            .flags(squeue::Flags::IO_HARDLINK);
        assert_eq!(run_one(&mut ring, &linked), 4);
        // A cancellation names no file; it passes with the required flag set.
        let cancel = opcode::AsyncCancel::new(7)
            .build()
            .flags(squeue::Flags::FIXED_FILE);
        assert_eq!(run_one(&mut ring, &cancel), -libc::ENOENT);
        spec.opcodes = &[];
        let mut open = build(&spec, false).unwrap();
        let nop = opcode::Nop::new().build();
        assert_eq!(run_one(&mut open, &nop), 0);
    }
}
