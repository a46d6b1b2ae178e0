// SPDX-License-Identifier: Apache-2.0
//! Who may connect to a listening Unix socket: the backends' vhost-user sockets and the VMM's
//! API socket.
//!
//! A socket is created with mode 0600 (owner only; `--socket-mode` widens it), and every
//! accepted connection's peer credentials (`SO_PEERCRED`, taken by the kernel at `connect`)
//! are checked against the allowed uids: root, the process's own (effective) uid, and any
//! `--allow-uid`. A refused peer is logged with its pid, uid and command and closed before
//! a single byte is read from it. The file mode keeps other users from connecting at all;
//! the credential check also covers a widened mode, a socket passed in by a supervisor, and
//! the moment between `bind` and `chmod`.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

/// Mode of a new socket unless widened.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;

/// Socket file mode and the uids allowed to connect besides root and the process's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketAccess {
    /// Permission bits of the socket file.
    pub mode: u32,
    /// Further uids allowed to connect.
    pub allow_uids: Vec<u32>,
}

impl Default for SocketAccess {
    fn default() -> Self {
        Self {
            mode: DEFAULT_SOCKET_MODE,
            allow_uids: Vec::new(),
        }
    }
}

/// `--socket-mode` and `--allow-uid`, for a binary's command line.
#[derive(clap::Args, Debug, Clone)]
pub struct SocketAccessArgs {
    /// Permission bits of the listening socket, in octal (0600: only the owner may connect).
    #[arg(long, value_name = "OCTAL", default_value = "0600", value_parser = parse_mode)]
    pub socket_mode: u32,
    /// A uid allowed to connect besides root and this process's own (repeatable).
    #[arg(long, value_name = "UID")]
    pub allow_uid: Vec<u32>,
}

impl SocketAccessArgs {
    /// The access rules these arguments give.
    pub fn access(&self) -> SocketAccess {
        SocketAccess {
            mode: self.socket_mode,
            allow_uids: self.allow_uid.clone(),
        }
    }
}

/// Parse an octal permission mode such as `0600` or `660`.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!(
            "'{s}' is not an octal permission mode (0000 to 0777)"
        )),
    }
}

/// The credentials of a connected peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Process ID at connect time.
    pub pid: i32,
    /// Effective uid at connect time.
    pub uid: u32,
    /// Effective gid at connect time.
    pub gid: u32,
}

impl Peer {
    /// The peer's command name (from /proc), for logs; empty if it already exited.
    pub fn command(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/comm", self.pid))
            .map(|c| c.trim().to_string())
            .unwrap_or_default()
    }
}

/// `SO_PEERCRED` of a connected Unix stream.
pub fn peer(stream: &UnixStream) -> io::Result<Peer> {
    let cred = minihttp::peer_credentials(stream)?;
    Ok(Peer {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

impl SocketAccess {
    /// Whether `uid` may connect: root, this process's effective uid, or an allowed one.
    pub fn allows(&self, uid: u32) -> bool {
        // SAFETY: geteuid has no preconditions.
        let own = unsafe { libc::geteuid() };
        uid == 0 || uid == own || self.allow_uids.contains(&uid)
    }

    /// Bind a listening socket at `path` and give it this mode.
    pub fn bind(&self, path: &Path) -> io::Result<UnixListener> {
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(self.mode))?;
        Ok(listener)
    }

    /// Check an accepted connection: its peer if allowed; otherwise the refusal is logged
    /// (pid, uid, command; `what` names the socket) and `None` returned, and the caller
    /// drops the stream, which closes it.
    pub fn admit(&self, stream: &UnixStream, what: &str) -> Option<Peer> {
        match peer(stream) {
            Ok(p) if self.allows(p.uid) => Some(p),
            Ok(p) => {
                tracing::warn!(
                    socket = what,
                    pid = p.pid,
                    uid = p.uid,
                    command = p.command(),
                    "connection refused: uid {} is not allowed (--allow-uid)",
                    p.uid
                );
                None
            }
            Err(e) => {
                tracing::warn!(
                    socket = what,
                    "connection refused: no peer credentials: {e}"
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileTypeExt;

    use super::*;

    #[test]
    fn modes_parse_as_octal_and_out_of_range_ones_are_refused() {
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert_eq!(parse_mode("0o777"), Ok(0o777));
        assert!(parse_mode("0800").is_err());
        assert!(parse_mode("1777").is_err());
        assert!(parse_mode("rw").is_err());
    }

    #[test]
    fn sockets_get_the_mode_and_root_and_the_owner_are_admitted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let access = SocketAccess::default();
        let listener = access.bind(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let client = UnixStream::connect(&path).unwrap();
        let (server, _) = listener.accept().unwrap();
        let p = access.admit(&server, "test").unwrap();
        assert_eq!(p.pid, std::process::id() as i32);
        // SAFETY: geteuid has no preconditions.
        assert_eq!(p.uid, unsafe { libc::geteuid() });
        drop(client);
        assert!(access.allows(0));
        assert!(!access.allows(65534) || p.uid == 65534);
        let wider = SocketAccess {
            mode: 0o660,
            allow_uids: vec![65534],
        };
        assert!(wider.allows(65534));
        assert!(!wider.allows(4242));
    }
}
