// SPDX-License-Identifier: Apache-2.0
//! A small HTTP/1.1 server and client for the operator's side of the project: the VMM's API
//! socket (`vmm run --api-socket`, `vmm remote`) and the `GET /metrics` endpoint of the VMM and
//! of every backend (`--metrics ADDR`).
//!
//! Why this and not a framework: requests are parsed by `httparse` (the parser under hyper,
//! no dependencies, no unsafe surprises), and the rest is the few rules an operator socket
//! needs and that small servers such as `tiny_http` do not let us set: one request per
//! connection, served in turn on one named thread; a deadline for reading each request, so a
//! client that sends nothing holds the server for at most that long; a cap on the header and the
//! body (413 past it, before the body is read); 400 with a JSON `{"error": ...}` for anything
//! malformed. No async runtime, no thread pool, no TLS.
//!
//! * [`ListenAddr`] — where to listen or connect: `127.0.0.1:PORT` or `unix:PATH`;
//! * [`server`] — [`Listener`] and [`serve`]: the loop that reads a request, calls the
//!   handler and writes its [`Response`];
//! * [`client`] — one request over TCP or a Unix socket, the response parsed by `httparse`.

mod addr;
pub mod client;
pub mod server;

pub use addr::ListenAddr;
pub use server::{serve, Limits, Listener, Request, Response};

/// Errors of the HTTP server and client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An address that is neither `HOST:PORT` nor `unix:PATH`.
    #[error("{0:?} is not an address: use 127.0.0.1:PORT or unix:PATH")]
    BadAddr(String),
    /// Something that is not a socket is in the way of a Unix socket path.
    #[error("{0} exists and is not a socket")]
    NotASocket(String),
    /// A live server already listens on the Unix socket path.
    #[error("{0} is in use by another process")]
    SocketInUse(String),
    /// Binding or listening failed (a busy port, a missing directory, ...).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Connecting, sending or receiving failed.
    #[error("{addr}: {source}")]
    Io {
        /// The peer address.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The peer's answer is not an HTTP response.
    #[error("{addr}: malformed HTTP response: {why}")]
    BadResponse {
        /// The peer address.
        addr: String,
        /// What was wrong.
        why: String,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
