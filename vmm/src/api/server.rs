// SPDX-License-Identifier: Apache-2.0
//! The `vmm-api` thread: routes HTTP requests on the API socket to the VMM.
//!
//! Requests are served one at a time, each read within a deadline; `vmm.ping`
//! is answered here (it works while the VM reboots), everything else goes to
//! the VMM's event loop through the [`ApiSender`].

use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use minihttp::{Limits, ListenAddr, Listener, Request, Response};
use vmm_sys_util::eventfd::EventFd;

use super::types::Ping;
use super::{ApiRequest, ApiResponse, ApiSender};
use crate::error::Error;
use crate::seccomp::VmmThread;

/// What a route does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// Version, pid, uptime (answered by the API thread).
    Ping,
    /// [`ApiRequest::Info`].
    Info,
    /// [`ApiRequest::Counters`].
    Counters,
    /// [`ApiRequest::Pause`].
    Pause,
    /// [`ApiRequest::Resume`].
    Resume,
    /// [`ApiRequest::Shutdown`] (`?force=true` or `{"force": true}`).
    Shutdown,
    /// [`ApiRequest::Reboot`].
    Reboot,
}

/// A path, the one method it takes, and what it does.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    /// The path.
    pub path: &'static str,
    /// `GET` or `PUT`.
    pub method: &'static str,
    /// What it does.
    pub endpoint: Endpoint,
}

/// Every route the API serves (the OpenAPI document lists the same ones).
pub const ROUTES: [Route; 7] = [
    route("/api/v1/vmm.ping", "GET", Endpoint::Ping),
    route("/api/v1/vm.info", "GET", Endpoint::Info),
    route("/api/v1/vm.counters", "GET", Endpoint::Counters),
    route("/api/v1/vm.pause", "PUT", Endpoint::Pause),
    route("/api/v1/vm.resume", "PUT", Endpoint::Resume),
    route("/api/v1/vm.shutdown", "PUT", Endpoint::Shutdown),
    route("/api/v1/vm.reboot", "PUT", Endpoint::Reboot),
];

const fn route(path: &'static str, method: &'static str, endpoint: Endpoint) -> Route {
    Route {
        path,
        method,
        endpoint,
    }
}

/// How long a request waits for the VMM (a pause waits for vCPUs and queue threads).
const VMM_DEADLINE: Duration = Duration::from_secs(15);

/// The running API thread; stopped and joined (and its socket removed) when dropped.
pub struct ApiServer {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Listen on `path` now (a path that exists and is not a socket, or a live server's
    /// socket, is an error; a stale socket is replaced) and serve from a thread named
    /// `vmm-api`; `started` is when the VMM started (for `vmm.ping`).
    pub fn start(path: &Path, sender: ApiSender, started: Instant) -> Result<Self, Error> {
        let listener =
            Listener::bind(&ListenAddr::Unix(path.to_path_buf())).map_err(Error::ApiSocket)?;
        let stop = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(Error::Io)?;
        let stop_thread = stop.try_clone().map_err(Error::Io)?;
        let thread = std::thread::Builder::new()
            .name("vmm-api".into())
            .spawn(move || {
                backends::seccomp::install_or_exit(VmmThread::Api);
                let served = minihttp::serve(&listener, Limits::default(), &stop_thread, |req| {
                    handle(req, &sender, started)
                });
                if let Err(e) = served {
                    tracing::error!("API server stopped: {e}");
                }
            })
            .map_err(Error::Io)?;
        tracing::info!("API on {}", path.display());
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answer one request.
pub fn handle(req: &Request, sender: &ApiSender, started: Instant) -> Response {
    let Some(route) = ROUTES.iter().find(|r| r.path == req.path) else {
        return Response::not_found(&req.path);
    };
    if req.method != route.method {
        return Response::method_not_allowed(&req.method, route.method);
    }
    let body = match parse_body(&req.body) {
        Ok(b) => b,
        Err(why) => return Response::error(400, &why),
    };
    let request = match route.endpoint {
        Endpoint::Ping => return json(200, &ping(started)),
        Endpoint::Info => ApiRequest::Info,
        Endpoint::Counters => ApiRequest::Counters,
        Endpoint::Pause => ApiRequest::Pause,
        Endpoint::Resume => ApiRequest::Resume,
        Endpoint::Reboot => ApiRequest::Reboot,
        Endpoint::Shutdown => match force(req, &body) {
            Ok(force) => ApiRequest::Shutdown { force },
            Err(why) => return Response::error(400, &why),
        },
    };
    match sender.call(request, VMM_DEADLINE) {
        Ok(ApiResponse::Info(info)) => json(200, &info),
        Ok(ApiResponse::Counters(c)) => json(200, &c),
        Ok(ApiResponse::Done) => Response::no_content(),
        Err(e) => Response::error(e.status, &e.message),
    }
}

fn ping(started: Instant) -> Ping {
    Ping {
        version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        uptime_seconds: started.elapsed().as_secs_f64(),
    }
}

fn json(status: u16, body: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(b) => Response::json(status, b),
        Err(e) => Response::error(500, &format!("cannot encode the answer: {e}")),
    }
}

/// A request body: nothing, or a JSON object.
fn parse_body(body: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err("the body must be a JSON object".into()),
        Err(e) => Err(format!("malformed JSON body: {e}")),
    }
}

/// `force` from the query (`?force=true|false`) or the body (`{"force": true}`).
fn force(req: &Request, body: &serde_json::Map<String, serde_json::Value>) -> Result<bool, String> {
    let query = match req.query_param("force") {
        None => None,
        Some("true" | "1" | "") => Some(true),
        Some("false" | "0") => Some(false),
        Some(v) => return Err(format!("force={v}: expected true or false")),
    };
    let body = match body.get("force") {
        None => None,
        Some(serde_json::Value::Bool(b)) => Some(*b),
        Some(v) => return Err(format!("\"force\": {v}: expected true or false")),
    };
    Ok(query.or(body).unwrap_or(false))
}

#[cfg(test)]
mod tests;
