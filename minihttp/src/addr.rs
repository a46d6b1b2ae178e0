// SPDX-License-Identifier: Apache-2.0
//! Addresses (`127.0.0.1:PORT` or `unix:PATH`) and the stream a connection uses.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::Error;

/// Where a server listens or a client connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address, `HOST:PORT` (`127.0.0.1:9100`, `[::1]:9100`, `localhost:9100`).
    Tcp(SocketAddr),
    /// A Unix socket, `unix:PATH`.
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(Error::BadAddr(s.into()));
            }
            return Ok(Self::Unix(path.into()));
        }
        s.to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .map(Self::Tcp)
            .ok_or_else(|| Error::BadAddr(s.into()))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "{a}"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl ListenAddr {
    /// Connect to this address (a client), giving up after `timeout`.
    pub fn connect(&self, timeout: Duration) -> io::Result<Stream> {
        match self {
            Self::Tcp(a) => TcpStream::connect_timeout(a, timeout).map(Stream::Tcp),
            Self::Unix(p) => UnixStream::connect(p).map(Stream::Unix),
        }
    }
}

/// One connection, over TCP or a Unix socket.
#[derive(Debug)]
pub enum Stream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix socket connection.
    Unix(UnixStream),
}

impl Stream {
    /// Bound the next reads (`None`: block).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.set_read_timeout(t),
            Self::Unix(s) => s.set_read_timeout(t),
        }
    }

    /// Bound the next writes (`None`: block).
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.set_write_timeout(t),
            Self::Unix(s) => s.set_write_timeout(t),
        }
    }

    /// Stop sending (the peer reads EOF after what was written).
    pub fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Self::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Self::Tcp(s) => s.as_raw_fd(),
            Self::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.read(buf),
            Self::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.write(buf),
            Self::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.flush(),
            Self::Unix(s) => s.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_print() {
        let tcp: ListenAddr = "127.0.0.1:9100".parse().unwrap();
        assert_eq!(tcp, ListenAddr::Tcp("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(tcp.to_string(), "127.0.0.1:9100");
        let unix: ListenAddr = "unix:/run/vmm.metrics".parse().unwrap();
        assert_eq!(unix, ListenAddr::Unix("/run/vmm.metrics".into()));
        assert_eq!(unix.to_string(), "unix:/run/vmm.metrics");
        for bad in ["", "unix:", "9100", "127.0.0.1", "localhost:port", "/tmp/x"] {
            assert!(
                matches!(bad.parse::<ListenAddr>(), Err(Error::BadAddr(_))),
                "{bad:?} accepted"
            );
        }
    }
}
