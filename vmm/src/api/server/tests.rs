// SPDX-License-Identifier: Apache-2.0
//! The API over its real socket, against a stand-in for the VMM's event loop
//! that applies the same state rules ([`VmState::admits`]); and the OpenAPI
//! document checked against the routes and the bodies, both ways.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use yaml_rust2::{Yaml, YamlLoader};

use super::*;
use crate::api::types::{
    ConfigInfo, DeviceCounters, DeviceInfo, QueueCounters, VmCounters, VmInfo, VmState,
};
use crate::api::{control_channel, ApiReceiver, ApiReply};

const T: Duration = Duration::from_secs(10);

fn sample_info(state: VmState) -> VmInfo {
    VmInfo {
        state,
        boots: 1,
        config: ConfigInfo {
            cpus: 2,
            memory_mib: 512,
            hugepages: false,
            kernel: "/k".into(),
            initramfs: Some("/i".into()),
            cmdline: "console=ttyS0".into(),
            serial: "stdio".into(),
        },
        devices: vec![DeviceInfo {
            name: "vhost-user-blk0".into(),
            kind: "virtio-blk".into(),
            tier: "vhost-user".into(),
            backend: Some("/tmp/vu.sock".into()),
            queues: Some(1),
            driver: Some("active".into()),
            connection: Some("connected".into()),
            metrics: Some("127.0.0.1:9101".into()),
        }],
    }
}

fn sample_counters() -> VmCounters {
    VmCounters {
        devices: vec![DeviceCounters {
            name: "blk0".into(),
            tier: "in-vmm".into(),
            queues: vec![QueueCounters {
                queue: "0".into(),
                requests: 5,
                ..QueueCounters::default()
            }],
            ..DeviceCounters::default()
        }],
    }
}

/// What the VMM's event loop does with a request, in miniature.
fn answer(state: &mut VmState, request: &ApiRequest) -> ApiReply {
    state.admits(request)?;
    Ok(match request {
        ApiRequest::Info => ApiResponse::Info(Box::new(sample_info(*state))),
        ApiRequest::Counters => ApiResponse::Counters(sample_counters()),
        ApiRequest::Pause => {
            *state = VmState::Paused;
            ApiResponse::Done
        }
        ApiRequest::Resume => {
            *state = VmState::Running;
            ApiResponse::Done
        }
        ApiRequest::Shutdown { force: false } => {
            *state = VmState::Shutdown;
            ApiResponse::Done
        }
        ApiRequest::Shutdown { force: true } | ApiRequest::Reboot => ApiResponse::Done,
    })
}

/// The API server on a socket in a temporary directory, and a stand-in VMM.
struct Rig {
    path: PathBuf,
    server: Option<ApiServer>,
    done: Arc<AtomicBool>,
    vmm: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let (sender, receiver) = control_channel().unwrap();
        let server = ApiServer::start(&path, sender, Instant::now()).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let vmm_done = done.clone();
        let vmm = std::thread::spawn(move || stand_in_vmm(&receiver, &vmm_done));
        Self {
            path,
            server: Some(server),
            done,
            vmm: Some(vmm),
            _dir: dir,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> (u16, String) {
        let addr = ListenAddr::Unix(self.path.clone());
        let r = minihttp::client::request(&addr, method, path, body, T).unwrap();
        (r.status, r.text())
    }

    fn raw(&self, bytes: &[u8]) -> String {
        let mut s = UnixStream::connect(&self.path).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s.write_all(bytes).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        drop(self.server.take());
        self.done.store(true, Ordering::Relaxed);
        if let Some(v) = self.vmm.take() {
            v.join().unwrap();
        }
    }
}

fn stand_in_vmm(receiver: &ApiReceiver, done: &AtomicBool) {
    let mut state = VmState::Running;
    while !done.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: receiver.eventfd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        if unsafe { libc::poll(&mut pfd, 1, 20) } <= 0 {
            continue;
        }
        for m in receiver.drain() {
            let _ = m.reply.send(answer(&mut state, &m.request));
        }
    }
}

fn error_message(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["error"].as_str().unwrap().to_string()
}

const V1: &str = "/api/v1";

#[test]
fn endpoints_answer_and_transitions_are_checked() {
    let rig = Rig::start();
    let mode = std::fs::metadata(&rig.path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the socket is private");
    let (status, body) = rig.call("GET", &format!("{V1}/vmm.ping"), None);
    assert_eq!(status, 200);
    let ping: crate::api::types::Ping = serde_json::from_str(&body).unwrap();
    assert_eq!(ping.pid, std::process::id());
    let (status, body) = rig.call("GET", &format!("{V1}/vm.info"), None);
    assert_eq!(status, 200);
    let info: VmInfo = serde_json::from_str(&body).unwrap();
    assert_eq!(info.state, VmState::Running);
    let (status, body) = rig.call("GET", &format!("{V1}/vm.counters"), None);
    assert_eq!(
        (status, serde_json::from_str(&body).ok()),
        (200, Some(sample_counters()))
    );

    let put = |what: &str, body: Option<&[u8]>| rig.call("PUT", &format!("{V1}/{what}"), body);
    assert_eq!(put("vm.pause", None).0, 204);
    let (status, body) = put("vm.pause", None);
    assert_eq!(status, 409, "pause while paused");
    assert!(error_message(&body).contains("already paused"));
    let (status, body) = put("vm.shutdown", None);
    assert_eq!(status, 409, "a paused guest cannot see the button");
    assert!(error_message(&body).contains("force"), "{body}");
    assert_eq!(put("vm.resume", Some(b"{}")).0, 204);
    assert_eq!(put("vm.resume", None).0, 409, "resume while running");
    assert_eq!(put("vm.shutdown", None).0, 204);
    assert_eq!(put("vm.shutdown", Some(b"{\"force\": false}")).0, 409);
    assert_eq!(put("vm.shutdown?force=true", None).0, 204);
    assert_eq!(put("vm.shutdown", Some(b"{\"force\": true}")).0, 204);
    assert_eq!(put("vm.reboot", None).0, 204);
}

#[test]
fn bad_requests_get_the_documented_errors() {
    let rig = Rig::start();
    let put = |what: &str, body: Option<&[u8]>| rig.call("PUT", &format!("{V1}/{what}"), body);
    // 404: unknown path; 405: wrong method, with Allow.
    assert_eq!(rig.call("GET", "/api/v1/vm.nope", None).0, 404);
    assert_eq!(rig.call("GET", "/", None).0, 404);
    assert_eq!(rig.call("GET", &format!("{V1}/vm.pause"), None).0, 405);
    assert_eq!(rig.call("DELETE", &format!("{V1}/vm.info"), None).0, 405);
    let raw = rig.raw(b"PUT /api/v1/vm.info HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert!(
        raw.starts_with("HTTP/1.1 405 ") && raw.contains("\r\nAllow: GET\r\n"),
        "{raw}"
    );
    // 400: malformed JSON, a body that is not an object, a bad force value.
    for (what, body) in [
        ("vm.pause", &b"{not json"[..]),
        ("vm.pause", b"[1, 2]"),
        ("vm.shutdown", b"{\"force\": \"yes\"}"),
        ("vm.shutdown?force=maybe", b""),
    ] {
        let (status, text) = put(what, Some(body));
        assert_eq!(status, 400, "{what} {body:?}: {text}");
        assert!(!error_message(&text).is_empty());
    }
    // 400: malformed HTTP.
    let raw = rig.raw(b"PUT /api/v1/vm.pause HTTP/1.1\r\nContent-Length: -1\r\n\r\n");
    assert!(raw.starts_with("HTTP/1.1 400 "), "{raw}");
    let raw = rig.raw(b"\x00\x01\x02 garbage\r\n\r\n");
    assert!(raw.starts_with("HTTP/1.1 400 "), "{raw}");
    // 413: a body over 64 KiB, refused from its head.
    let raw = rig.raw(b"PUT /api/v1/vm.pause HTTP/1.1\r\nContent-Length: 65537\r\n\r\n");
    assert!(raw.starts_with("HTTP/1.1 413 "), "{raw}");
    let big = vec![b' '; (64 << 10) + 1];
    assert_eq!(put("vm.pause", Some(&big)).0, 413);
    // None of it changed the VM: it still pauses once.
    assert_eq!(put("vm.pause", None).0, 204);
    assert_eq!(put("vm.pause", None).0, 409);
}

#[test]
fn a_slow_client_does_not_stall_the_others() {
    let rig = Rig::start();
    // Two clients that connect and send half a request, then nothing.
    let mut slow: Vec<UnixStream> = (0..2)
        .map(|_| {
            let mut s = UnixStream::connect(&rig.path).unwrap();
            s.write_all(b"GET /api/v1/vm.in").unwrap();
            s
        })
        .collect();
    let start = Instant::now();
    let (status, _) = rig.call("GET", &format!("{V1}/vm.info"), None);
    let waited = start.elapsed();
    assert_eq!(status, 200);
    // Each slow client holds the server for the read deadline (2 s) at most.
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    for s in &mut slow {
        let mut out = String::new();
        s.set_read_timeout(Some(T)).unwrap();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    }
}

#[test]
fn an_existing_path_that_is_not_a_socket_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    std::fs::write(&path, b"keep me").unwrap();
    let (sender, _receiver) = control_channel().unwrap();
    let e = ApiServer::start(&path, sender, Instant::now())
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        format!(
            "--api-socket: {} exists and is not a socket",
            path.display()
        )
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    let (sender, _receiver) = control_channel().unwrap();
    let missing = dir.path().join("no/such/dir/api.sock");
    let e = ApiServer::start(&missing, sender, Instant::now())
        .err()
        .unwrap();
    assert!(
        e.to_string().starts_with("--api-socket: cannot listen on"),
        "{e}"
    );
}

/// The OpenAPI document beside the server.
fn openapi() -> Yaml {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api/openapi.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}

/// `(path, method)` pairs of the document (paths relative to its `/api/v1` server).
fn documented_operations(doc: &Yaml) -> BTreeSet<(String, String)> {
    let base = doc["servers"][0]["url"].as_str().unwrap();
    let base = base.strip_prefix("http://localhost").unwrap();
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_hash().unwrap() {
        for (method, _) in item.as_hash().unwrap() {
            let path = format!("{base}{}", path.as_str().unwrap());
            ops.insert((path, method.as_str().unwrap().to_uppercase()));
        }
    }
    ops
}

#[test]
fn the_openapi_document_and_the_routes_agree_both_ways() {
    let doc = openapi();
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    let documented = documented_operations(&doc);
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.path.to_string(), r.method.to_string()))
        .collect();
    assert_eq!(documented, served, "document vs routes");
    // Every documented operation answers (none is 404 or 405), with a documented status.
    let rig = Rig::start();
    for (path, method) in &documented {
        let (status, _) = rig.call(method, path, None);
        let op = &doc["paths"][&path["/api/v1".len()..]][method.to_lowercase().as_str()];
        let statuses: Vec<&str> = op["responses"]
            .as_hash()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert!(
            statuses.contains(&status.to_string().as_str()),
            "{method} {path} answered {status}, documented {statuses:?}"
        );
    }
}

/// The properties a schema lists, and those it requires.
fn schema_fields(doc: &Yaml, name: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let schema = &doc["components"]["schemas"][name];
    let props = schema["properties"].as_hash().unwrap();
    let names = props
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    let required = schema["required"]
        .as_vec()
        .map(|v| v.iter().map(|r| r.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    (names, required)
}

fn json_fields(value: &impl serde::Serialize) -> BTreeSet<String> {
    let v = serde_json::to_value(value).unwrap();
    v.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn the_openapi_schemas_match_the_bodies_sent() {
    let doc = openapi();
    let info = sample_info(VmState::Running);
    let counters = sample_counters();
    let ping = crate::api::types::Ping {
        version: "0".into(),
        pid: 1,
        uptime_seconds: 0.0,
    };
    let error = crate::api::types::ErrorBody { error: "x".into() };
    let bodies = [
        ("Ping", json_fields(&ping)),
        ("VmInfo", json_fields(&info)),
        ("ConfigInfo", json_fields(&info.config)),
        ("DeviceInfo", json_fields(&info.devices[0])),
        ("VmCounters", json_fields(&counters)),
        ("DeviceCounters", json_fields(&counters.devices[0])),
        ("QueueCounters", json_fields(&counters.devices[0].queues[0])),
        ("Error", json_fields(&error)),
    ];
    for (name, fields) in bodies {
        let (props, required) = schema_fields(&doc, name);
        assert_eq!(props, fields, "schema {name}: documented vs sent");
        assert_eq!(
            required, fields,
            "schema {name}: every field is always sent"
        );
    }
    let states: Vec<&str> = doc["components"]["schemas"]["VmState"]["enum"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for s in [VmState::Running, VmState::Paused, VmState::Shutdown] {
        assert!(states.contains(&s.to_string().as_str()));
    }
}
