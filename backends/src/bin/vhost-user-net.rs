// SPDX-License-Identifier: Apache-2.0
//! `vhost-user-net`: serve a TAP interface to a vhost-user frontend, or (`--link A,B`) wire
//! two frontends back to back with no TAP: through the in-process switch (default; frames are
//! copied from one guest's memory into the other's, see `backends::net::switch`), or through
//! a pair of datagram sockets (`--link-via socketpair`, two system calls per frame).
//!
//! Each socket serves successive frontend connections, one at a time (a second frontend is
//! refused); the TAP is made persistent so that a restarted backend reattaches to the same
//! interface. `--once` exits 0 once every socket's first frontend disconnected. SIGTERM/SIGINT
//! exit 0 after logging the counters.
//!
//! Every thread runs under a seccomp filter (`--seccomp`, `backends::seccomp::net`): the
//! process-wide one once the process is set up and runs unprivileged, before it starts a
//! thread; each thread's own before it serves.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use std::time::Duration;

use backends::access::SocketAccessArgs;
use backends::engine::{TuningArgs, DEFAULT_BATCH};
use backends::metrics::{Exporter, MetricsListener, QueueMetrics};
use backends::net::switch::{self, RingReader, SwitchOptions, SwitchPort};
use backends::net::{parse_mac, NetBackend, NetOptions, Port, DEFAULT_MTU};
use backends::placement::Affinity;
use backends::privileges::{drop_privileges, PrivilegeArgs};
use backends::seccomp::{self, net::NetThread};
use backends::server::{ServeFilters, Server};
use backends::Error;
use clap::Parser;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

/// vhost-user-net backend over a TAP (io_uring, one thread per queue pair).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// vhost-user socket path to listen on (with --tap).
    #[arg(long, required_unless_present = "link", requires = "tap")]
    socket: Option<PathBuf>,
    /// TAP interface to create (or attach to if it exists).
    #[arg(long, conflicts_with = "link")]
    tap: Option<String>,
    /// Link mode: two vhost-user sockets SOCKET_A,SOCKET_B whose guests are wired to each
    /// other (A's transmit → B's receive and back, queue pair N to queue pair N); no TAP.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["socket", "tap"])]
    link: Option<Vec<PathBuf>>,
    /// How --link carries frames: `switch` copies each frame from one guest's memory into the
    /// other's in this process (offloads pass through); `socketpair` sends it through a
    /// datagram socket pair (two system calls per frame, no offloads).
    #[arg(long, value_enum, default_value_t = LinkVia::Switch, requires = "link")]
    link_via: LinkVia,
    /// Ring reader of the switch: our own batched reader (`own`) or virtio-queue's
    /// (`virtio-queue`, to compare the two).
    #[arg(long, value_enum, default_value_t = RingReader::Own, requires = "link")]
    ring_reader: RingReader,
    /// MAC address offered to the guest (aa:bb:cc:dd:ee:ff); in link mode the last byte
    /// is incremented for the second guest.
    #[arg(long)]
    mac: Option<String>,
    /// MTU offered to the guest and set on the TAP.
    #[arg(long, default_value_t = DEFAULT_MTU)]
    mtu: u16,
    /// Number of queue pairs.
    #[arg(long, default_value_t = 1)]
    queues: u16,
    /// Maximum queue size.
    #[arg(long, default_value_t = 256)]
    queue_size: u16,
    /// Polling of the queue pairs and batching of the transmit queues.
    #[command(flatten)]
    tuning: TuningArgs,
    /// Pin each queue pair's thread to host CPUs: PAIR@CPU entries (0@2,1@3), or CPU
    /// lists and ranges (0@[2,3],1@[4-5]).
    #[arg(long)]
    queue_affinity: Option<String>,
    /// Serve the socket directly, without the relay that holds back `SET_VRING_ENABLE` sent
    /// before `SET_FEATURES` (QEMU's vhost-user netdev does that; see `backends::vhost_shim`).
    #[arg(long)]
    no_relay: bool,
    /// Exit when the first frontend (of each socket) disconnects instead of waiting for the
    /// next one.
    #[arg(long)]
    once: bool,
    /// Who may connect to the socket(s).
    #[command(flatten)]
    access: SocketAccessArgs,
    /// Who to run as once the TAP is open and the sockets bound. Without privileges from
    /// the start, --tap needs a TAP created beforehand for that user
    /// (`ip tuntap add dev NAME mode tap user USER`, plus `multi_queue` for --queues > 1).
    #[command(flatten)]
    privileges: PrivilegeArgs,
    /// Restrict each queue's io_urings to the operations they submit (off only to measure
    /// what that costs).
    #[arg(long, default_value = "on", value_parser = backends::engine::parse_on_off, action = clap::ArgAction::Set)]
    uring_restrictions: bool,
    /// Serve the queues' metrics (Prometheus text) at GET /metrics on 127.0.0.1:PORT or
    /// unix:PATH.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<minihttp::ListenAddr>,
    /// Seccomp filters: `on` (a syscall outside a thread's filter kills the process), `log`
    /// (it is allowed and logged by the kernel) or `off`.
    #[arg(long, value_name = "on|log|off", default_value = "on")]
    seccomp: String,
    /// Fault injection for tests: the first thread of this kind (`queue`, `switch`) to handle
    /// an event makes a syscall its filter forbids.
    #[arg(long, value_name = "KIND", hide = true)]
    seccomp_violation: Option<String>,
}

/// The carrier of `--link`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LinkVia {
    /// The in-process switch.
    Switch,
    /// A datagram socket pair per queue pair and direction.
    Socketpair,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Err(e) = run(args) {
        tracing::error!("{e}");
        std::process::exit(1);
    }
}

/// Block SIGTERM/SIGINT in this thread (and every thread spawned later); a dedicated thread
/// takes them with `sigwait`.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it, pthread_sigmask
    // only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// A datagram socket pair `(sender, receiver)`; the sender is non-blocking.
fn wire() -> Result<(OwnedFd, OwnedFd), Error> {
    let mut fds = [0i32; 2];
    // SAFETY: socketpair fills two fds on success; both are wrapped at once.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(Error::EventFd(std::io::Error::last_os_error()));
    }
    // SAFETY: fresh descriptors owned by nobody else.
    let (tx, rx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let size: libc::c_int = 4 << 20;
    for (s, opt) in [(&tx, libc::SO_SNDBUF), (&rx, libc::SO_RCVBUF)] {
        // SAFETY: setsockopt reads one int; fcntl changes flags of our own fd.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
    // SAFETY: F_GETFL/F_SETFL on our own descriptor.
    let rc = unsafe {
        let fl = libc::fcntl(tx.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(tx.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK)
    };
    if rc < 0 {
        return Err(Error::EventFd(std::io::Error::last_os_error()));
    }
    Ok((tx, rx))
}

/// Per queue pair, two one-way wires: A's `(tx, rx)` ends and B's.
#[allow(clippy::type_complexity)]
fn link_sockets(pairs: u16) -> Result<(Vec<(OwnedFd, OwnedFd)>, Vec<(OwnedFd, OwnedFd)>), Error> {
    let mut a = Vec::new();
    let mut b = Vec::new();
    for _ in 0..pairs {
        let (a_tx, b_rx) = wire()?;
        let (b_tx, a_rx) = wire()?;
        a.push((a_tx, a_rx));
        b.push((b_tx, b_rx));
    }
    Ok((a, b))
}

/// A device: on a TAP (or a socket pair), or one end of the switch.
#[derive(Clone)]
enum Backend {
    Net(Arc<NetBackend>),
    Switch(Arc<SwitchPort>),
}

impl Backend {
    fn stats(&self) -> &[backends::net::PairStats] {
        match self {
            Backend::Net(b) => b.stats(),
            Backend::Switch(b) => b.stats(),
        }
    }

    fn ctrl_stats(&self) -> Option<Arc<backends::engine::QueueStats>> {
        match self {
            Backend::Net(b) => b.ctrl_stats(),
            Backend::Switch(b) => b.ctrl_stats(),
        }
    }

    fn log_stats(&self) {
        match self {
            Backend::Net(b) => b.log_stats(),
            Backend::Switch(b) => b.log_stats(),
        }
    }
}

/// A device and the socket it listens on.
type Device = (Backend, PathBuf);

fn run(args: Args) -> Result<(), Error> {
    seccomp::set_mode(args.seccomp.parse()?);
    if let Some(kind) = &args.seccomp_violation {
        seccomp::inject_violation(kind);
    }
    let sigset = block_signals();
    let identity = args.privileges.resolve()?;
    backends::engine::set_restrictions(args.uring_restrictions);
    // Listen first: a busy port fails before anything else is set up.
    let metrics_listener = args
        .metrics
        .as_ref()
        .map(MetricsListener::bind)
        .transpose()?;
    let exporter = Arc::new(Exporter::default());
    let devices = create_devices(&args)?;
    let servers: Vec<Arc<Server>> = devices
        .iter()
        .map(|(_, socket)| Server::bind_with(socket, args.access.access()).map(Arc::new))
        .collect::<Result<_, _>>()?;
    // Set up: TAP queues open, sockets bound. The threads started from here on inherit no
    // privileges.
    drop_privileges(identity)?;
    seccomp::install_process(NetThread::Process)?;
    let _metrics = metrics_listener
        .map(|l| l.serve(exporter.clone(), NetThread::Metrics))
        .transpose()?;
    if args.metrics.is_some() {
        export_queues(&exporter, &devices);
    }
    spawn_signal_thread(sigset, &devices, &servers)?;

    let (no_relay, once) = (args.no_relay, args.once);
    let threads: Vec<_> = devices
        .into_iter()
        .zip(servers)
        .enumerate()
        .map(|(i, ((backend, _), server))| {
            std::thread::Builder::new()
                .name(format!("net-dev{i}"))
                .spawn(move || serve(backend, &server, no_relay, once))
                .map_err(|e| Error::VhostUser(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    seccomp::install(NetThread::Main)?;
    let mut result = Ok(());
    for t in threads {
        let r = t
            .join()
            .unwrap_or_else(|_| Err(Error::VhostUser("device thread panicked".into())));
        if result.is_ok() {
            result = r;
        }
    }
    result?;
    // Exit rather than drop the daemons (their drop joins the worker threads).
    std::process::exit(0);
}

/// Export every queue of `devices`, labelled with their sockets.
fn export_queues(exporter: &Exporter, devices: &[Device]) {
    let mut queues = Vec::new();
    for (backend, socket) in devices {
        let device = socket.display().to_string();
        for (pair, s) in backend.stats().iter().enumerate() {
            queues.push(QueueMetrics::new(
                &device,
                format!("rx{pair}"),
                &s.rx,
                false,
            ));
            queues.push(QueueMetrics::new(&device, format!("tx{pair}"), &s.tx, true));
        }
        if let Some(ctrl) = backend.ctrl_stats() {
            queues.push(QueueMetrics::new(&device, "ctrl", &ctrl, false));
        }
    }
    exporter.set_queues(queues);
}

/// The devices `args` ask for: one on a TAP, or two joined by a link.
fn create_devices(args: &Args) -> Result<Vec<Device>, Error> {
    let mac = match &args.mac {
        Some(m) => Some(parse_mac(m).ok_or_else(|| Error::InvalidConfig(format!("bad MAC {m}")))?),
        None => None,
    };
    let affinity = match &args.queue_affinity {
        Some(list) => {
            let affinity = Affinity::parse(list, "queue pair")?;
            affinity.check(usize::from(args.queues), "queue pair")?;
            affinity
        }
        None => Affinity::default(),
    };
    let opts = |port: Port, mac: Option<[u8; 6]>| NetOptions {
        port,
        mac,
        mtu: args.mtu,
        queue_pairs: args.queues,
        queue_size: args.queue_size,
        tuning: args.tuning.tuning(DEFAULT_BATCH),
        affinity: affinity.clone(),
    };
    let mut devices: Vec<Device> = Vec::new();
    match (&args.link, &args.socket, &args.tap) {
        (Some(link), _, _) if link.len() != 2 => {
            return Err(Error::InvalidConfig(
                "--link takes exactly two sockets: SOCKET_A,SOCKET_B".into(),
            ))
        }
        (Some(link), _, _) if args.link_via == LinkVia::Switch => {
            let tuning = args.tuning.tuning(DEFAULT_BATCH);
            let (a, b) = switch::switch(SwitchOptions {
                macs: [mac, next_mac(mac)],
                mtu: args.mtu,
                queue_pairs: args.queues,
                queue_size: args.queue_size,
                batch: tuning.batch,
                poll_max: Duration::from_micros(args.tuning.poll_max_us),
                reader: args.ring_reader,
            })?;
            devices.push((Backend::Switch(a), link[0].clone()));
            devices.push((Backend::Switch(b), link[1].clone()));
            tracing::info!(a = %link[0].display(), b = %link[1].display(), reader = ?args.ring_reader, "link mode: in-process switch");
        }
        (Some(link), _, _) => {
            let (a, b) = link_sockets(args.queues)?;
            devices.push((
                Backend::Net(Arc::new(NetBackend::new(opts(Port::Link(a), mac))?)),
                link[0].clone(),
            ));
            devices.push((
                Backend::Net(Arc::new(NetBackend::new(opts(
                    Port::Link(b),
                    next_mac(mac),
                ))?)),
                link[1].clone(),
            ));
            tracing::info!(a = %link[0].display(), b = %link[1].display(), "link mode: socket pairs");
        }
        (None, Some(socket), Some(tap)) => {
            devices.push((
                Backend::Net(Arc::new(NetBackend::new(opts(
                    Port::Tap(tap.clone()),
                    mac,
                ))?)),
                socket.clone(),
            ));
            tracing::info!(tap, queues = args.queues, mtu = args.mtu, "TAP ready");
        }
        _ => {
            return Err(Error::InvalidConfig(
                "need --socket and --tap, or --link".into(),
            ))
        }
    }
    Ok(devices)
}

/// The second guest's MAC in link mode: the first one's, last byte incremented.
fn next_mac(mac: Option<[u8; 6]>) -> Option<[u8; 6]> {
    mac.map(|mut m| {
        m[5] = m[5].wrapping_add(1);
        m
    })
}

/// A thread (`net-signal`) that waits for SIGTERM/SIGINT, logs the counters,
/// removes the sockets and exits.
fn spawn_signal_thread(
    sigset: libc::sigset_t,
    devices: &[Device],
    servers: &[Arc<Server>],
) -> Result<(), Error> {
    let backends: Vec<_> = devices.iter().map(|(b, _)| b.clone()).collect();
    let servers = servers.to_vec();
    std::thread::Builder::new()
        .name("net-signal".into())
        .spawn(move || {
            seccomp::install_or_exit(NetThread::Signal);
            let mut sig = 0;
            // SAFETY: `sigset` is an initialised signal set and `sig` a valid out pointer.
            while unsafe { libc::sigwait(&sigset, &mut sig) } != 0 {}
            tracing::info!(signal = sig, "shutting down");
            for backend in &backends {
                backend.log_stats();
            }
            for server in &servers {
                server.remove_socket();
            }
            std::process::exit(0);
        })
        .map_err(|e| Error::VhostUser(e.to_string()))?;
    Ok(())
}

/// Serve one device's frontends on `server` (each through the relay unless `no_relay`).
fn serve(backend: Backend, server: &Server, no_relay: bool, once: bool) -> Result<(), Error> {
    let served = match &backend {
        Backend::Net(net) => {
            let daemon = daemon(net.clone())?;
            for (q, handler) in daemon.get_epoll_handlers().iter().enumerate() {
                let (tx, rx) = net.completion_fds(q).map_err(Error::EventFd)?;
                let ev = u64::from(net.tx_completion_event());
                for (fd, data) in [(&tx, ev), (&rx, ev + 1)] {
                    handler
                        .register_listener(fd.as_raw_fd(), EventSet::IN, data)
                        .map_err(Error::EventFd)?;
                }
                // The epoll set holds the registrations; keep the duplicates open for the
                // process life.
                std::mem::forget(tx);
                std::mem::forget(rx);
            }
            run_daemon(daemon, server, no_relay, once)
        }
        Backend::Switch(port) => {
            let daemon = daemon(port.clone())?;
            for (q, handler) in daemon.get_epoll_handlers().iter().enumerate() {
                let wake = port
                    .wake_fd(q)
                    .ok_or_else(|| Error::VhostUser(format!("no wake-up eventfd for pair {q}")))?;
                handler
                    .register_listener(wake.as_raw_fd(), EventSet::IN, u64::from(port.wake_event()))
                    .map_err(Error::EventFd)?;
                // The worker runs once now and learns its vrings, which the other side's
                // queue threads fill.
                wake.write(1).map_err(Error::EventFd)?;
            }
            run_daemon(daemon, server, no_relay, once)
        }
    };
    backend.log_stats();
    server.remove_socket();
    served
}

/// A daemon for `backend` with empty guest memory.
fn daemon<T>(backend: Arc<T>) -> Result<VhostUserDaemon<Arc<T>>, Error>
where
    T: VhostUserBackend<Bitmap = (), Vring = backends::engine::Vring> + 'static,
{
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    // The daemon's name is that of its per-connection thread.
    VhostUserDaemon::new("vu-conn".into(), backend, mem)
        .map_err(|e| Error::VhostUser(e.to_string()))
}

/// Serve frontends with `daemon` until `once` says stop.
fn run_daemon<T>(
    mut daemon: VhostUserDaemon<Arc<T>>,
    server: &Server,
    no_relay: bool,
    once: bool,
) -> Result<(), Error>
where
    T: VhostUserBackend<Bitmap = (), Vring = backends::engine::Vring> + 'static,
{
    let filters = ServeFilters {
        accept: NetThread::Accept,
        control: NetThread::Control,
    };
    let served = if no_relay {
        server.serve(&mut daemon, once, Ok, filters)
    } else {
        server.serve(&mut daemon, once, backends::vhost_shim::relay, filters)
    };
    // The daemon's drop joins its worker threads; the process exits right after anyway.
    std::mem::forget(daemon);
    served
}
