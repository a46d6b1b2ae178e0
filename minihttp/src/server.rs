// SPDX-License-Identifier: Apache-2.0
//! The server: a [`Listener`] on a TCP port or a Unix socket, and [`serve`], which takes one
//! connection at a time, reads one request under a deadline and within size limits, calls the
//! handler and writes its response with `Connection: close`.

use std::io::{self, Read, Write};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::addr::Stream;
use crate::{Error, ListenAddr, Result};

/// How much a client may send and for how long.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Time to receive a whole request (head and body) after the connection is accepted.
    pub read_deadline: Duration,
    /// Time to hand the response to the kernel (a client that does not read is dropped).
    pub write_deadline: Duration,
    /// Largest request head (request line and headers).
    pub max_head: usize,
    /// Largest request body (413 past it).
    pub max_body: usize,
}

impl Default for Limits {
    /// 2 s to send a request, 2 s to take the response, 16 KiB of head, 64 KiB of body.
    fn default() -> Self {
        Self {
            read_deadline: Duration::from_secs(2),
            write_deadline: Duration::from_secs(2),
            max_head: 16 << 10,
            max_body: 64 << 10,
        }
    }
}

/// A parsed request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The path without the query (`/api/v1/vm.info`).
    pub path: String,
    /// The query string after `?`, if any (`force=true`).
    pub query: Option<String>,
    /// The body (empty without one).
    pub body: Vec<u8>,
}

impl Request {
    /// The value of query parameter `key` (`Some("")` for a bare `key`).
    pub fn query_param(&self, key: &str) -> Option<&str> {
        self.query.as_deref()?.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == key).then_some(v)
        })
    }
}

/// A response to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type` (omitted for an empty body).
    pub content_type: &'static str,
    /// Extra headers (`Allow` of a 405).
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// `status` with a JSON `body`.
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// `status` with a plain-text or other `content_type` body.
    pub fn with_type(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// 204 No Content.
    pub fn no_content() -> Self {
        Self::json(204, Vec::new())
    }

    /// `status` with `{"error": message}`.
    pub fn error(status: u16, message: &str) -> Self {
        Self::json(status, serde_json::json!({ "error": message }).to_string())
    }

    /// 404 for a path nothing serves.
    pub fn not_found(path: &str) -> Self {
        Self::error(404, &format!("no such endpoint: {path}"))
    }

    /// 405 naming the method the path takes.
    pub fn method_not_allowed(method: &str, allowed: &str) -> Self {
        let mut r = Self::error(405, &format!("{method} not allowed here; use {allowed}"));
        r.headers.push(("Allow", allowed.to_string()));
        r
    }

    fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        if !self.body.is_empty() {
            head.push_str(&format!("Content-Type: {}\r\n", self.content_type));
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n",
            self.body.len()
        ));
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        out.write_all(head.as_bytes())?;
        out.write_all(&self.body)?;
        out.flush()
    }
}

/// The reason phrase of the statuses this crate's users send.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A listening socket.
#[derive(Debug)]
pub enum Listener {
    /// A TCP port.
    Tcp(TcpListener),
    /// A Unix socket; its path is removed when the listener is dropped (if it is still ours).
    Unix {
        /// The listening socket.
        listener: UnixListener,
        /// Its path.
        path: PathBuf,
        /// The inode bound, so that only our own socket is removed.
        inode: u64,
    },
}

impl Listener {
    /// Listen on `addr`. A Unix socket is created mode 0600 (owner only); a socket file left by
    /// a process that is gone is replaced; a path that is not a socket, or a socket a live
    /// server answers on, is refused. Call before other threads create files: the process
    /// umask is narrowed while the socket is bound.
    pub fn bind(addr: &ListenAddr) -> Result<Self> {
        let bind_err = |source| Error::Bind {
            addr: addr.to_string(),
            source,
        };
        match addr {
            ListenAddr::Tcp(a) => TcpListener::bind(a).map(Self::Tcp).map_err(bind_err),
            ListenAddr::Unix(path) => {
                clear_stale_socket(path)?;
                // SAFETY: umask only changes this process's file-creation mask.
                let old = unsafe { libc::umask(0o177) };
                let bound = UnixListener::bind(path);
                // SAFETY: as above, restoring the previous mask.
                unsafe { libc::umask(old) };
                let listener = bound.map_err(bind_err)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(bind_err)?;
                let inode = std::fs::metadata(path).map_err(bind_err)?.ino();
                Ok(Self::Unix {
                    listener,
                    path: path.clone(),
                    inode,
                })
            }
        }
    }

    /// The address actually bound (the port the kernel chose for `127.0.0.1:0`).
    pub fn local_addr(&self) -> io::Result<ListenAddr> {
        Ok(match self {
            Self::Tcp(l) => ListenAddr::Tcp(l.local_addr()?),
            Self::Unix { path, .. } => ListenAddr::Unix(path.clone()),
        })
    }

    fn accept(&self) -> io::Result<Stream> {
        match self {
            Self::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
            Self::Unix { listener, .. } => listener.accept().map(|(s, _)| Stream::Unix(s)),
        }
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Self::Tcp(l) => l.as_raw_fd(),
            Self::Unix { listener, .. } => listener.as_raw_fd(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Self::Unix { path, inode, .. } = self {
            if std::fs::metadata(&*path).is_ok_and(|m| m.ino() == *inode) {
                let _ = std::fs::remove_file(&*path);
            }
        }
    }
}

/// Remove a socket left at `path` by a process that is gone; refuse anything else there.
fn clear_stale_socket(path: &Path) -> Result<()> {
    let shown = path.display().to_string();
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(Error::NotASocket(shown));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(Error::SocketInUse(shown));
    }
    std::fs::remove_file(path).map_err(|source| Error::Bind {
        addr: format!("unix:{shown}"),
        source,
    })
}

/// Serve connections on `listener` one at a time until `stop` is written: read a request
/// within `limits`, answer it with `handler`'s response (or with 400/408/413/431 when the
/// request is not acceptable), close the connection.
pub fn serve(
    listener: &Listener,
    limits: Limits,
    stop: &EventFd,
    mut handler: impl FnMut(&Request) -> Response,
) -> io::Result<()> {
    loop {
        if !wait_readable(listener.as_raw_fd(), stop.as_raw_fd())? {
            return Ok(());
        }
        let mut stream = match listener.accept() {
            Ok(s) => s,
            Err(e) if retryable(&e) => continue,
            Err(e) => {
                tracing::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let response = match read_request(&mut stream, &limits) {
            Ok(req) => {
                tracing::debug!(method = req.method, path = req.path, "request");
                handler(&req)
            }
            Err(Reject::Closed) => continue,
            Err(Reject::Status(status, why)) => {
                tracing::debug!(status, "request refused: {why}");
                Response::error(status, &why)
            }
        };
        if let Err(e) = stream
            .set_write_timeout(Some(limits.write_deadline))
            .and_then(|()| response.write_to(&mut stream))
        {
            tracing::debug!("response not delivered: {e}");
        }
        linger(&mut stream);
    }
}

/// Close gently: stop sending, then read and drop what the client still sends (at most
/// 1 MiB, until it pauses for 100 ms), so that unread request bytes do not make the kernel
/// reset the connection before the client has read the response (a 413 or 431 leaves bytes
/// unread).
fn linger(stream: &mut Stream) {
    if stream.shutdown_write().is_err()
        || stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .is_err()
    {
        return;
    }
    let mut sink = [0u8; 4096];
    let mut left = 1usize << 20;
    while left > 0 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

fn retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::ConnectionAborted
    )
}

/// Wait until `listen` has a connection (`true`) or `stop` is readable (`false`).
fn wait_readable(listen: RawFd, stop: RawFd) -> io::Result<bool> {
    let mut fds = [
        libc::pollfd {
            fd: listen,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: two valid pollfds for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 {
            return Ok(false);
        }
        if fds[0].revents != 0 {
            return Ok(true);
        }
    }
}

/// Why a request gets no handler call.
enum Reject {
    /// The client closed before sending anything: nothing to answer.
    Closed,
    /// Answer with this status and message.
    Status(u16, String),
}

/// Read one request from `stream`: the head up to `max_head` bytes, then a body of at most
/// `max_body` bytes, all before `read_deadline`.
fn read_request(stream: &mut Stream, limits: &Limits) -> std::result::Result<Request, Reject> {
    let deadline = Instant::now() + limits.read_deadline;
    let mut buf = Vec::with_capacity(1024);
    let head_len = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if buf.len() > limits.max_head {
            return Err(Reject::Status(431, "request head too large".into()));
        }
        if read_some(stream, &mut buf, deadline)? == 0 {
            return Err(if buf.is_empty() {
                Reject::Closed
            } else {
                Reject::Status(400, "connection closed inside the request head".into())
            });
        }
    };
    let (mut req, length) = parse_head(&buf[..head_len])?;
    if length > limits.max_body {
        return Err(Reject::Status(
            413,
            format!("body of {length} bytes exceeds {} bytes", limits.max_body),
        ));
    }
    let mut body = buf.split_off(head_len);
    while body.len() < length {
        if read_some(stream, &mut body, deadline)? == 0 {
            return Err(Reject::Status(
                400,
                "connection closed inside the body".into(),
            ));
        }
    }
    body.truncate(length);
    req.body = body;
    Ok(req)
}

/// Parse a complete request head; returns the request (no body yet) and the body length.
fn parse_head(head: &[u8]) -> std::result::Result<(Request, usize), Reject> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(Reject::Status(400, "incomplete request head".into()))
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Reject::Status(431, "more than 32 headers".into()))
        }
        Err(e) => return Err(Reject::Status(400, format!("malformed HTTP request: {e}"))),
    }
    let bad = |why: &str| Reject::Status(400, why.to_string());
    let mut length: Option<usize> = None;
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad("chunked bodies are not accepted; send Content-Length"));
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| bad("bad Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(bad("conflicting Content-Length headers"));
            }
            length = Some(n);
        }
    }
    let target = parsed.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    };
    let req = Request {
        method: parsed.method.unwrap_or("").to_string(),
        path,
        query,
        body: Vec::new(),
    };
    Ok((req, length.unwrap_or(0)))
}

/// Read what is there (at most 4 KiB) into `buf` before `deadline`; 0 at end of stream.
fn read_some(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> std::result::Result<usize, Reject> {
    let timeout = || Reject::Status(408, "request not received in time".into());
    let left = deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(timeout)?;
    stream
        .set_read_timeout(Some(left))
        .map_err(|e| Reject::Status(500, e.to_string()))?;
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timeout())
            }
            // A reset connection has nobody to answer.
            Err(_) => return Err(Reject::Closed),
        }
    }
}

#[cfg(test)]
mod tests;
