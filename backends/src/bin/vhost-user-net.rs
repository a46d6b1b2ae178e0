//! `vhost-user-net`: serve a TAP interface to a vhost-user frontend, or (`--link A,B`) wire
//! two frontends back to back with no TAP.
//!
//! Each socket serves successive frontend connections, one at a time (a second frontend is
//! refused); the TAP is made persistent so that a restarted backend reattaches to the same
//! interface. `--once` exits 0 once every socket's first frontend disconnected. SIGTERM/SIGINT
//! exit 0 after logging the counters.
//!
//! Every thread runs under a seccomp filter (`--seccomp`, `backends::seccomp::net`): the
//! process-wide one from the start, each thread's own before it serves.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use backends::engine::{TuningArgs, DEFAULT_BATCH};
use backends::net::{parse_mac, NetBackend, NetOptions, Port, DEFAULT_MTU};
use backends::seccomp::{self, net::NetThread};
use backends::server::{ServeFilters, Server};
use backends::Error;
use clap::Parser;
use vhost_user_backend::VhostUserDaemon;
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
    /// other (A's transmit → B's receive and back); no TAP, no offloads.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["socket", "tap"])]
    link: Option<Vec<PathBuf>>,
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
    /// Polling and batching of the transmit queues.
    #[command(flatten)]
    tuning: TuningArgs,
    /// Serve the socket directly, without the relay that holds back `SET_VRING_ENABLE` sent
    /// before `SET_FEATURES` (QEMU's vhost-user netdev does that; see `backends::vhost_shim`).
    #[arg(long)]
    no_relay: bool,
    /// Exit when the first frontend (of each socket) disconnects instead of waiting for the
    /// next one.
    #[arg(long)]
    once: bool,
    /// Seccomp filters: `on` (a syscall outside a thread's filter kills the process), `log`
    /// (it is allowed and logged by the kernel) or `off`.
    #[arg(long, value_name = "on|log|off", default_value = "on")]
    seccomp: String,
    /// Fault injection for tests: the first thread of this kind (`queue`) to handle an event
    /// makes a syscall its filter forbids.
    #[arg(long, value_name = "KIND", hide = true)]
    seccomp_violation: Option<String>,
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

/// A device and the socket it listens on.
type Device = (Arc<NetBackend>, PathBuf);

fn run(args: Args) -> Result<(), Error> {
    seccomp::set_mode(args.seccomp.parse()?);
    if let Some(kind) = &args.seccomp_violation {
        seccomp::inject_violation(kind);
    }
    seccomp::install_process(NetThread::Process)?;
    let sigset = block_signals();
    let devices = create_devices(&args)?;
    let servers: Vec<Arc<Server>> = devices
        .iter()
        .map(|(_, socket)| Server::bind(socket).map(Arc::new))
        .collect::<Result<_, _>>()?;
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

/// The devices `args` ask for: one on a TAP, or two joined by a link.
fn create_devices(args: &Args) -> Result<Vec<Device>, Error> {
    let mac = match &args.mac {
        Some(m) => Some(parse_mac(m).ok_or_else(|| Error::InvalidConfig(format!("bad MAC {m}")))?),
        None => None,
    };
    let opts = |port: Port, mac: Option<[u8; 6]>| NetOptions {
        port,
        mac,
        mtu: args.mtu,
        queue_pairs: args.queues,
        queue_size: args.queue_size,
        tuning: args.tuning.tuning(DEFAULT_BATCH),
    };
    let mut devices: Vec<Device> = Vec::new();
    match (&args.link, &args.socket, &args.tap) {
        (Some(link), _, _) if link.len() != 2 => {
            return Err(Error::InvalidConfig(
                "--link takes exactly two sockets: SOCKET_A,SOCKET_B".into(),
            ))
        }
        (Some(link), _, _) => {
            let (a, b) = link_sockets(args.queues)?;
            let mac_b = mac.map(|mut m| {
                m[5] = m[5].wrapping_add(1);
                m
            });
            devices.push((
                Arc::new(NetBackend::new(opts(Port::Link(a), mac))?),
                link[0].clone(),
            ));
            devices.push((
                Arc::new(NetBackend::new(opts(Port::Link(b), mac_b))?),
                link[1].clone(),
            ));
            tracing::info!(a = %link[0].display(), b = %link[1].display(), "link mode");
        }
        (None, Some(socket), Some(tap)) => {
            devices.push((
                Arc::new(NetBackend::new(opts(Port::Tap(tap.clone()), mac))?),
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
fn serve(
    backend: Arc<NetBackend>,
    server: &Server,
    no_relay: bool,
    once: bool,
) -> Result<(), Error> {
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    // The daemon's name is that of its per-connection thread.
    let mut daemon = VhostUserDaemon::new("vu-conn".into(), backend.clone(), mem)
        .map_err(|e| Error::VhostUser(e.to_string()))?;
    for (q, handler) in daemon.get_epoll_handlers().iter().enumerate() {
        let (tx, rx) = backend.completion_fds(q).map_err(Error::EventFd)?;
        let ev = u64::from(backend.tx_completion_event());
        for (fd, data) in [(&tx, ev), (&rx, ev + 1)] {
            handler
                .register_listener(fd.as_raw_fd(), EventSet::IN, data)
                .map_err(Error::EventFd)?;
        }
        // The epoll set holds the registrations; keep the duplicates open for the process life.
        std::mem::forget(tx);
        std::mem::forget(rx);
    }
    let filters = ServeFilters {
        accept: NetThread::Accept,
        control: NetThread::Control,
    };
    let served = if no_relay {
        server.serve(&mut daemon, once, Ok, filters)
    } else {
        server.serve(&mut daemon, once, backends::vhost_shim::relay, filters)
    };
    backend.log_stats();
    server.remove_socket();
    // The daemon's drop joins its worker threads; the process exits right after anyway.
    std::mem::forget(daemon);
    served
}
