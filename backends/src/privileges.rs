// SPDX-License-Identifier: Apache-2.0
//! Dropping what a process no longer needs once it is set up: switch to an unprivileged
//! user and group (`--user`, `--group`), drop every capability (effective, permitted,
//! inheritable, ambient and the bounding set), and set `PR_SET_NO_NEW_PRIVS` so no later
//! `execve` can gain any.
//!
//! Capabilities and the bounding set belong to each thread: [`drop_privileges`] must run
//! before the process starts its other threads, which inherit the dropped state. The uid
//! and gid switches are process-wide (the C library applies them to every thread).

use std::ffi::CString;

use crate::{Error, Result};

/// `--user` and `--group`, for a binary's command line.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PrivilegeArgs {
    /// User (name or uid) to switch to once set up; its primary group too, unless --group.
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Group (name or gid) to switch to once set up.
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
}

/// A resolved identity to switch to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Identity {
    /// Switch to this uid.
    pub uid: Option<u32>,
    /// Switch to this gid (and only this group).
    pub gid: Option<u32>,
}

impl PrivilegeArgs {
    /// Look the names up (before any set-up, so a typo fails at once).
    pub fn resolve(&self) -> Result<Identity> {
        let mut id = Identity::default();
        if let Some(user) = &self.user {
            let (uid, gid) = lookup_user(user)?;
            id.uid = Some(uid);
            id.gid = Some(gid);
        }
        if let Some(group) = &self.group {
            id.gid = Some(lookup_group(group)?);
        }
        Ok(id)
    }
}

fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Privileges(format!("bad name {s:?}")))
}

/// `(uid, primary gid)` of user `name` (or of a numeric uid).
pub fn lookup_user(name: &str) -> Result<(u32, u32)> {
    let c = cstring(name)?;
    let mut pwd: libc::passwd = unsafe_zeroed_passwd();
    let mut buf = vec![0 as libc::c_char; 16 << 10];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r writes into `pwd` and `buf` (of the given length) only.
    let rc = unsafe {
        libc::getpwnam_r(
            c.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc == 0 && !found.is_null() {
        return Ok((pwd.pw_uid, pwd.pw_gid));
    }
    match name.parse::<u32>() {
        Ok(uid) => {
            // SAFETY: getpwuid_r as above.
            let rc =
                unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
            let gid = if rc == 0 && !found.is_null() {
                pwd.pw_gid
            } else {
                uid
            };
            Ok((uid, gid))
        }
        Err(_) => Err(Error::Privileges(format!("--user {name}: no such user"))),
    }
}

/// The gid of group `name` (or a numeric gid).
pub fn lookup_group(name: &str) -> Result<u32> {
    let c = cstring(name)?;
    // SAFETY: group is plain data; getgrnam_r fills it.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 << 10];
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r writes into `grp` and `buf` (of the given length) only.
    let rc = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    if rc == 0 && !found.is_null() {
        return Ok(grp.gr_gid);
    }
    name.parse::<u32>()
        .map_err(|_| Error::Privileges(format!("--group {name}: no such group")))
}

fn unsafe_zeroed_passwd() -> libc::passwd {
    // SAFETY: passwd is plain data (integers and pointers); all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

fn os(what: &str) -> Error {
    Error::Privileges(format!("{what}: {}", std::io::Error::last_os_error()))
}

/// Switch to `id`, drop every capability and set no-new-privs. Call from the main thread
/// before any other thread is started.
pub fn drop_privileges(id: Identity) -> Result<()> {
    // The bounding set needs CAP_SETPCAP to shrink: before giving up root.
    drop_bounding_set();
    if let Some(gid) = id.gid {
        // SAFETY: setgroups reads one gid; setresgid takes plain integers.
        if unsafe { libc::setgroups(1, &gid) } != 0 {
            return Err(os("setgroups"));
        }
        // SAFETY: as above.
        if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
            return Err(os("setresgid"));
        }
    }
    if let Some(uid) = id.uid {
        // SAFETY: setresuid takes plain integers.
        if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
            return Err(os("setresuid"));
        }
    }
    drop_capabilities()?;
    no_new_privs()?;
    tracing::info!(uid = ?id.uid, gid = ?id.gid, "privileges dropped: no capabilities, no new privileges");
    Ok(())
}

/// `PR_SET_NO_NEW_PRIVS`: no `execve` from this process or its children gains privileges
/// (setuid/setgid bits and file capabilities are ignored). Process-wide once set.
pub fn no_new_privs() -> Result<()> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(os("PR_SET_NO_NEW_PRIVS"));
    }
    Ok(())
}

/// Remove every capability from this thread's bounding set (best effort: without
/// CAP_SETPCAP, as an unprivileged user, there is nothing to remove anyway).
fn drop_bounding_set() {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<libc::c_ulong>().ok())
        .unwrap_or(63);
    for cap in 0..=last {
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
    }
}

/// Clear the effective, permitted, inheritable and ambient sets of this thread.
fn drop_capabilities() -> Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let data = [Data::default(); 2];
    // SAFETY: capset reads one header and two data words (version 3).
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(os("capset"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_groups_resolve_by_name_and_number() {
        assert_eq!(lookup_user("root").unwrap(), (0, 0));
        assert_eq!(lookup_user("0").unwrap().0, 0);
        assert_eq!(lookup_user("4242").unwrap().0, 4242);
        assert_eq!(lookup_group("root").unwrap(), 0);
        let e = lookup_user("nosuchuser-iovmm").unwrap_err().to_string();
        assert_eq!(e, "--user nosuchuser-iovmm: no such user");
        let e = lookup_group("nosuchgroup-iovmm").unwrap_err().to_string();
        assert_eq!(e, "--group nosuchgroup-iovmm: no such group");
    }
}
