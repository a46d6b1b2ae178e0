// SPDX-License-Identifier: Apache-2.0
//! The backends without privileges: `vhost-user-blk` started as an unprivileged user serves
//! a libblkio client end to end; `vhost-user-net` drops to `--user` after opening its TAP,
//! or starts unprivileged on a TAP created for its user; both set no-new-privs and hold no
//! capability; their sockets are 0600 and refuse peers of other uids; `--user nosuchuser`
//! is one line and exit 1.
//!
//! Switching uids needs root: those tests print SKIP and return without it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::CString;
use std::io::Read;
use std::mem::MaybeUninit;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use blkio::{Blkio, Completion, ReqFlags};

/// The unprivileged user of these tests (`nobody` on Debian).
const NOBODY: u32 = 65534;
const MIB: usize = 1 << 20;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A backend process, killed when dropped.
struct Proc {
    child: Child,
}

impl Proc {
    /// Start `bin` with `args`, prefixed by `setpriv` to run as [`NOBODY`] when `as_nobody`,
    /// and wait for `socket`.
    fn start(bin: &str, args: &[&str], socket: &Path, as_nobody: bool) -> Proc {
        let mut cmd = if as_nobody {
            // A copy next to the socket: the build tree may sit in a directory (such as
            // /root) that the unprivileged user cannot enter.
            let dir = socket.parent().expect("socket directory");
            let copy = dir.join(Path::new(bin).file_name().expect("binary name"));
            std::fs::copy(bin, &copy).expect("copy the backend binary");
            std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(copy);
            c
        } else {
            Command::new(bin)
        };
        let child = cmd
            .args(args)
            .arg("--socket")
            .arg(socket)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1")
            .spawn()
            .expect("spawn backend");
        let mut p = Proc { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if let Some(st) = p.child.try_wait().unwrap() {
                panic!("backend exited with {st}: {}", p.stderr());
            }
            assert!(Instant::now() < deadline, "backend socket never appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
        // The socket exists once bound; privileges are dropped right after.
        std::thread::sleep(Duration::from_millis(200));
        p
    }

    /// `/proc/PID/status` fields of every thread: `(Uid, CapEff, NoNewPrivs)`.
    fn thread_status(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{}/task", self.child.id())).unwrap() {
            let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                    .unwrap_or_default()
            };
            out.push((field("Uid:"), field("CapEff:"), field("NoNewPrivs:")));
        }
        out
    }

    /// Every thread runs as `uid`, with no capability and no-new-privs set.
    fn assert_unprivileged(&self, uid: u32) {
        let threads = self.thread_status();
        assert!(!threads.is_empty());
        let want_uid = format!("{uid} {uid} {uid} {uid}");
        for (u, cap, nnp) in threads {
            assert_eq!(u, want_uid, "thread uid");
            assert_eq!(cap, "0000000000000000", "thread capabilities");
            assert_eq!(nnp, "1", "no_new_privs");
        }
    }

    /// Kill the process and return what it logged.
    fn stderr(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory `nobody` may enter and write (for sockets and images).
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// What connecting to `path` as [`NOBODY`] led to.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// connect(2) failed with this errno.
    ConnectFailed(i32),
    /// The backend closed the connection at once.
    Closed,
    /// The connection stayed open (the backend waits for messages).
    Open,
}

/// Connect to `path` from a child process running as [`NOBODY`].
fn connect_as_nobody(path: &Path) -> Outcome {
    let cpath = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(cpath.as_bytes()) {
        *d = *s as libc::c_char;
    }
    // SAFETY: the child only makes system calls (no allocation, no locks) and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // SAFETY: async-signal-safe calls on local data, then _exit.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(NOBODY) != 0
                || libc::setuid(NOBODY) != 0
            {
                libc::_exit(99);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) != 0 {
                libc::_exit(10 + *libc::__errno_location());
            }
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN | libc::POLLRDHUP,
                revents: 0,
            };
            if libc::poll(&mut pfd, 1, 2000) == 0 {
                libc::_exit(1); // still open after 2 s
            }
            let mut b = 0u8;
            let n = libc::read(fd, (&mut b as *mut u8).cast(), 1);
            libc::_exit(if n <= 0 { 2 } else { 3 });
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    match libc::WEXITSTATUS(status) {
        1 => Outcome::Open,
        2 => Outcome::Closed,
        c if c >= 10 => Outcome::ConnectFailed(c - 10),
        c => panic!("connect helper exited {c}"),
    }
}

#[test]
fn blk_runs_unprivileged_end_to_end() {
    if !is_root() {
        println!("SKIP: switching to uid {NOBODY} needs root");
        return;
    }
    let dir = shared_dir();
    let img = dir.path().join("disk.img");
    std::fs::write(&img, vec![0xaau8; 8 * MIB]).unwrap();
    std::os::unix::fs::chown(&img, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o600)).unwrap();
    let socket = dir.path().join("blk.sock");
    let be = Proc::start(
        env!("CARGO_BIN_EXE_vhost-user-blk"),
        &["--path", img.to_str().unwrap()],
        &socket,
        true,
    );
    be.assert_unprivileged(NOBODY);
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (NOBODY, 0o600));

    // libblkio as root (allowed by default) writes a pattern and reads it back.
    let mut b = Blkio::new("virtio-blk-vhost-user").unwrap();
    b.set_str("path", socket.to_str().unwrap()).unwrap();
    b.connect().unwrap();
    b.set_i32("num-queues", 1).unwrap();
    let mut out = b.start().unwrap();
    let region = b.alloc_mem_region(2 * MIB).unwrap();
    b.map_mem_region(&region).unwrap();
    // SAFETY: the region is a live mapping of `region.len` bytes owned by this test.
    let buf = unsafe { std::slice::from_raw_parts_mut(region.addr as *mut u8, region.len) };
    let pattern: Vec<u8> = (0..MIB).map(|i| (i * 7 + 3) as u8).collect();
    buf[..MIB].copy_from_slice(&pattern);
    let q = &mut out.queues[0];
    let wait = |q: &mut blkio::Blkioq| {
        let mut c = [MaybeUninit::<Completion>::uninit()];
        let n = q
            .do_io(&mut c, 1, Some(&mut Duration::from_secs(10)), None)
            .unwrap();
        assert_eq!(n, 1, "request timed out");
        // SAFETY: do_io initialised the first `n` completions.
        unsafe { c[0].assume_init_ref() }.ret
    };
    q.write(MIB as u64, buf.as_ptr(), MIB, 0, ReqFlags::empty());
    assert_eq!(wait(q), 0, "write");
    q.flush(0, ReqFlags::empty());
    assert_eq!(wait(q), 0, "flush");
    q.read(
        MIB as u64,
        buf[MIB..].as_mut_ptr(),
        MIB,
        0,
        ReqFlags::empty(),
    );
    assert_eq!(wait(q), 0, "read");
    assert!(buf[MIB..2 * MIB] == pattern[..], "read back differs");
    let on_disk = std::fs::read(&img).unwrap();
    assert!(on_disk[MIB..2 * MIB] == pattern[..], "file differs");
    assert!(on_disk[..MIB].iter().all(|&x| x == 0xaa));
}

#[test]
fn sockets_are_0600_and_refuse_peers_of_other_uids() {
    if !is_root() {
        println!("SKIP: connecting as uid {NOBODY} needs root");
        return;
    }
    let dir = shared_dir();
    let img = dir.path().join("disk.img");
    std::fs::write(&img, vec![0u8; MIB]).unwrap();
    let bin = env!("CARGO_BIN_EXE_vhost-user-blk");
    let path = img.to_str().unwrap();

    // Default: owner only. Another uid cannot even connect.
    let socket = dir.path().join("default.sock");
    let be = Proc::start(bin, &["--path", path], &socket, false);
    assert_eq!(std::fs::metadata(&socket).unwrap().mode() & 0o777, 0o600);
    assert_eq!(
        connect_as_nobody(&socket),
        Outcome::ConnectFailed(libc::EACCES)
    );
    drop(be);

    // A widened mode lets it connect; its credentials are refused, and logged.
    let socket = dir.path().join("wide.sock");
    let mut be = Proc::start(
        bin,
        &["--path", path, "--socket-mode", "0666"],
        &socket,
        false,
    );
    assert_eq!(std::fs::metadata(&socket).unwrap().mode() & 0o777, 0o666);
    assert_eq!(connect_as_nobody(&socket), Outcome::Closed);
    let log = be.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("connection refused"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
    assert!(
        line.contains("uid=65534") && line.contains("pid="),
        "{line}"
    );

    // --allow-uid admits it: the backend waits for its messages.
    let socket = dir.path().join("allowed.sock");
    let _be = Proc::start(
        bin,
        &[
            "--path",
            path,
            "--socket-mode",
            "0666",
            "--allow-uid",
            "65534",
        ],
        &socket,
        false,
    );
    assert_eq!(connect_as_nobody(&socket), Outcome::Open);
}

/// A TAP name unique to this test process.
fn tap_name(tag: &str) -> String {
    format!("sbx{tag}{}", std::process::id() % 100_000)
}

/// Deletes the (persistent) TAP when dropped.
struct TapGuard(String);

impl Drop for TapGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

fn tun_usable() -> Option<&'static str> {
    if !is_root() {
        return Some("needs root");
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun");
    }
    None
}

/// A vhost-user handshake as root: the backend answers GET_FEATURES with virtio-net's.
fn handshake(socket: &Path) -> u64 {
    use vhost::vhost_user::Frontend;
    use vhost::VhostBackend;
    let frontend = Frontend::connect(socket, 1).expect("connect");
    frontend.set_owner().expect("SET_OWNER");
    frontend.get_features().expect("GET_FEATURES")
}

#[test]
fn net_drops_to_user_after_opening_its_tap() {
    if let Some(why) = tun_usable() {
        println!("SKIP: {why}");
        return;
    }
    let tap = tap_name("u");
    let _guard = TapGuard(tap.clone());
    let dir = shared_dir();
    let socket = dir.path().join("net.sock");
    let be = Proc::start(
        env!("CARGO_BIN_EXE_vhost-user-net"),
        &["--tap", &tap, "--user", "nobody"],
        &socket,
        false,
    );
    be.assert_unprivileged(NOBODY);
    assert!(
        Path::new("/sys/class/net").join(&tap).exists(),
        "TAP created"
    );
    let features = handshake(&socket);
    assert_ne!(features & (1 << 32), 0, "VIRTIO_F_VERSION_1 offered");
}

#[test]
fn net_starts_unprivileged_on_a_tap_created_for_its_user() {
    if let Some(why) = tun_usable() {
        println!("SKIP: {why}");
        return;
    }
    let tap = tap_name("p");
    let st = Command::new("ip")
        .args(["tuntap", "add", "dev", &tap, "mode", "tap", "user", "65534"])
        .status()
        .unwrap();
    assert!(st.success(), "ip tuntap add");
    let _guard = TapGuard(tap.clone());
    let dir = shared_dir();
    let socket = dir.path().join("net.sock");
    let be = Proc::start(
        env!("CARGO_BIN_EXE_vhost-user-net"),
        &["--tap", &tap],
        &socket,
        true,
    );
    be.assert_unprivileged(NOBODY);
    let features = handshake(&socket);
    assert_ne!(features & (1 << 32), 0, "VIRTIO_F_VERSION_1 offered");
}

#[test]
fn unknown_user_or_group_is_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("x.sock");
    let socket = socket.to_str().unwrap();
    for (bin, args) in [
        (
            env!("CARGO_BIN_EXE_vhost-user-net"),
            vec![
                "--tap",
                "sbxnone0",
                "--socket",
                socket,
                "--user",
                "nosuchuser",
            ],
        ),
        (
            env!("CARGO_BIN_EXE_vhost-user-blk"),
            vec![
                "--path",
                "/dev/null",
                "--socket",
                socket,
                "--group",
                "nosuchgroup",
            ],
        ),
    ] {
        let out = Command::new(bin)
            .args(&args)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{bin}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains("no such user") || err.contains("no such group"),
            "{err}"
        );
        assert!(
            !Path::new(socket).exists(),
            "nothing set up before the lookup"
        );
    }
}

#[test]
fn uring_restrictions_switch_takes_on_and_off_only() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.img");
    std::fs::write(&img, vec![0u8; MIB]).unwrap();
    let bin = env!("CARGO_BIN_EXE_vhost-user-blk");
    let out = Command::new(bin)
        .args([
            "--uring-restrictions",
            "bogus",
            "--socket",
            "/nonexistent/s",
        ])
        .args(["--path", img.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected on or off"));
    for switch in ["off", "on"] {
        let socket = dir.path().join(format!("{switch}.sock"));
        let path = img.to_str().unwrap();
        let _be = Proc::start(
            bin,
            &["--path", path, "--uring-restrictions", switch],
            &socket,
            false,
        );
        assert_ne!(
            handshake(&socket) & (1 << 32),
            0,
            "--uring-restrictions {switch}"
        );
    }
}
