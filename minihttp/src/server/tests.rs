// SPDX-License-Identifier: Apache-2.0
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::*;
use crate::client::request;

const T: Duration = Duration::from_secs(5);

/// A server on `addr` answering `PUT /echo` with the body and the query, `GET /` with "root",
/// 404 elsewhere; stopped and joined when dropped.
struct Running {
    addr: ListenAddr,
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    fn start(addr: &ListenAddr, limits: Limits) -> Self {
        let listener = Listener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let stop2 = stop.try_clone().unwrap();
        let thread = std::thread::spawn(move || {
            serve(&listener, limits, &stop2, |req| match req.path.as_str() {
                "/echo" if req.method == "PUT" => {
                    let mut body = req.body.clone();
                    body.extend_from_slice(req.query_param("force").unwrap_or("-").as_bytes());
                    Response::with_type(200, "text/plain", body)
                }
                "/echo" => Response::method_not_allowed(&req.method, "PUT"),
                "/" => Response::with_type(200, "text/plain", "root"),
                p => Response::not_found(p),
            })
            .unwrap();
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Send raw bytes and read the whole answer.
    fn raw(&self, bytes: &[u8]) -> String {
        let mut s = self.addr.connect(T).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s.write_all(bytes).unwrap();
        s.shutdown_write().unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.write(1).unwrap();
        self.thread.take().unwrap().join().unwrap();
    }
}

fn tcp() -> ListenAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn error_of(response: &str) -> String {
    let body = response.split("\r\n\r\n").nth(1).unwrap();
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["error"].as_str().unwrap().to_string()
}

#[test]
fn requests_are_answered_over_tcp_and_unix_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let unix = ListenAddr::Unix(dir.path().join("api.sock"));
    for addr in [tcp(), unix] {
        let s = Running::start(&addr, Limits::default());
        let r = request(&s.addr, "PUT", "/echo?force=true", Some(b"abc"), T).unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "abctrue"));
        let r = request(&s.addr, "GET", "/", None, T).unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "root"));
        let r = request(&s.addr, "GET", "/nope", None, T).unwrap();
        assert_eq!(r.status, 404);
        let r = request(&s.addr, "GET", "/echo", None, T).unwrap();
        assert_eq!(r.status, 405);
        assert!(s
            .raw(b"GET /echo HTTP/1.1\r\n\r\n")
            .contains("\r\nAllow: PUT\r\n"));
    }
}

#[test]
fn malformed_requests_get_400_with_a_json_error() {
    let s = Running::start(&tcp(), Limits::default());
    for bad in [
        &b"NOT HTTP AT ALL\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"PUT /echo HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        b"PUT /echo HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"PUT /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"PUT /echo HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
    ] {
        let out = s.raw(bad);
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
        assert!(!error_of(&out).is_empty());
    }
    // The server keeps serving.
    assert_eq!(request(&s.addr, "GET", "/", None, T).unwrap().status, 200);
}

#[test]
fn oversized_bodies_and_heads_are_refused_before_they_are_read() {
    let s = Running::start(&tcp(), Limits::default());
    // 413 is answered from the head alone: the body is never sent.
    let out = s.raw(b"PUT /echo HTTP/1.1\r\nContent-Length: 65537\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 413 "), "{out}");
    assert!(error_of(&out).contains("65537"));
    let body = vec![b'x'; 64 << 10];
    let r = request(&s.addr, "PUT", "/echo", Some(&body), T).unwrap();
    assert_eq!((r.status, r.body.len()), (200, (64 << 10) + 1));
    let mut head = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..2000 {
        head.extend_from_slice(format!("X-{i}: yyyyyyyy\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    let out = s.raw(&head);
    assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
    let many: String = (0..40).map(|i| format!("X-{i}: y\r\n")).collect();
    let out = s.raw(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes());
    assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
}

#[test]
fn a_slow_client_holds_the_server_for_the_deadline_only() {
    let limits = Limits {
        read_deadline: Duration::from_millis(300),
        ..Limits::default()
    };
    let s = Running::start(&tcp(), limits);
    // Connects and sends half a request line, then nothing.
    let mut slow = s.addr.connect(T).unwrap();
    slow.write_all(b"GET / HT").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let start = Instant::now();
    let r = request(&s.addr, "GET", "/", None, T).unwrap();
    let waited = start.elapsed();
    assert_eq!(r.status, 200);
    assert!(
        waited < Duration::from_secs(2),
        "the second client waited {waited:?}"
    );
    let mut out = String::new();
    slow.set_read_timeout(Some(T)).unwrap();
    slow.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    // A client that connects and closes without a word gets nothing, and breaks nothing.
    drop(s.addr.connect(T).unwrap());
    assert_eq!(request(&s.addr, "GET", "/", None, T).unwrap().status, 200);
}

#[test]
fn unix_sockets_are_private_and_only_stale_ones_are_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let addr = ListenAddr::Unix(path.clone());
    {
        let s = Running::start(&addr, Limits::default());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A live server's socket is not taken over.
        assert!(matches!(Listener::bind(&addr), Err(Error::SocketInUse(_))));
        drop(s);
    }
    assert!(!path.exists(), "socket left behind");
    // A socket whose server is gone is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let s = Running::start(&addr, Limits::default());
    assert_eq!(request(&s.addr, "GET", "/", None, T).unwrap().status, 200);
    drop(s);
    // Anything else is refused.
    std::fs::write(&path, b"data").unwrap();
    let e = Listener::bind(&addr).unwrap_err();
    assert!(matches!(e, Error::NotASocket(_)), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), b"data");
}

#[test]
fn a_busy_port_is_a_bind_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = ListenAddr::Tcp(taken.local_addr().unwrap());
    let e = Listener::bind(&addr).unwrap_err();
    assert!(matches!(e, Error::Bind { .. }), "{e}");
    assert!(e.to_string().contains("in use"), "{e}");
}
