// SPDX-License-Identifier: Apache-2.0
//! The client: one request per connection, the response head parsed by `httparse`.

use std::io::{Read, Write};
use std::time::Duration;

use crate::{Error, ListenAddr, Result};

/// Largest response accepted (a metrics page of many queues is well below this).
const MAX_RESPONSE: u64 = 16 << 20;

/// A response received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientResponse {
    /// Status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

impl ClientResponse {
    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Send `method path` with an optional JSON `body` to `addr` and read the whole response,
/// each step within `timeout`.
pub fn request(
    addr: &ListenAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<ClientResponse> {
    let io_err = |source| Error::Io {
        addr: addr.to_string(),
        source,
    };
    let mut stream = addr.connect(timeout).map_err(io_err)?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(io_err)?;
    let body = body.unwrap_or_default();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).map_err(io_err)?;
    stream.write_all(body).map_err(io_err)?;
    stream.flush().map_err(io_err)?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .map_err(io_err)?;
    parse_response(&raw).map_err(|why| Error::BadResponse {
        addr: addr.to_string(),
        why,
    })
}

/// Parse a complete response (head and body up to the end of the connection).
fn parse_response(raw: &[u8]) -> std::result::Result<ClientResponse, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("connection closed inside the head".into()),
        Err(e) => return Err(e.to_string()),
    };
    let status = parsed.code.ok_or("no status code")?;
    let length = parsed
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .map(|h| {
            std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or("bad Content-Length")
        })
        .transpose()?;
    let mut body = raw[head_len..].to_vec();
    if let Some(n) = length {
        if body.len() < n {
            return Err(format!("body of {} bytes, {n} announced", body.len()));
        }
        body.truncate(n);
    }
    Ok(ClientResponse { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_and_truncated_ones_do_not() {
        let ok = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi").unwrap();
        assert_eq!((ok.status, ok.text().as_str()), (200, "hi"));
        let no_len = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!((no_len.status, no_len.body.len()), (204, 0));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhi").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Le").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }
}
