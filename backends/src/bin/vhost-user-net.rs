//! `vhost-user-net`: serve a TAP interface to a vhost-user frontend.
//!
//! One connection per process: the backend exits 0 when the frontend disconnects, and on
//! SIGTERM/SIGINT (after logging its counters).

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backends::net::{parse_mac, NetBackend, NetOptions, DEFAULT_MTU};
use backends::Error;
use clap::Parser;
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{Error as DaemonError, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

/// vhost-user-net backend over a TAP (io_uring, one thread per queue pair).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// vhost-user socket path to listen on.
    #[arg(long)]
    socket: PathBuf,
    /// TAP interface to create (or attach to if it exists).
    #[arg(long)]
    tap: String,
    /// MAC address offered to the guest (aa:bb:cc:dd:ee:ff).
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
    /// Busy-poll window in microseconds after each transmit batch (0 = off).
    #[arg(long, default_value_t = 0)]
    poll_us: u64,
    /// Serve the socket directly, without the relay that drops `SET_VRING_ENABLE` sent
    /// before `SET_FEATURES` (QEMU's vhost-user netdev does that; see `backends::vhost_shim`).
    #[arg(long)]
    no_relay: bool,
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

fn run(args: Args) -> Result<(), Error> {
    let sigset = block_signals();
    let mac = match &args.mac {
        Some(m) => Some(parse_mac(m).ok_or_else(|| Error::InvalidConfig(format!("bad MAC {m}")))?),
        None => None,
    };
    let backend = Arc::new(NetBackend::new(NetOptions {
        tap: args.tap.clone(),
        mac,
        mtu: args.mtu,
        queue_pairs: args.queues,
        queue_size: args.queue_size,
        poll: Duration::from_micros(args.poll_us),
    })?);
    tracing::info!(tap = %args.tap, queues = args.queues, mtu = args.mtu, "TAP ready");

    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let mut daemon = VhostUserDaemon::new("vhost-user-net".into(), backend.clone(), mem)
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

    {
        let backend = backend.clone();
        let socket = args.socket.clone();
        std::thread::Builder::new()
            .name("net-signal".into())
            .spawn(move || {
                let mut sig = 0;
                // SAFETY: `sigset` is an initialised signal set and `sig` a valid out pointer.
                while unsafe { libc::sigwait(&sigset, &mut sig) } != 0 {}
                tracing::info!(signal = sig, "shutting down");
                backend.log_stats();
                let _ = std::fs::remove_file(&socket);
                std::process::exit(0);
            })
            .map_err(|e| Error::VhostUser(e.to_string()))?;
    }

    let listen_path = if args.no_relay {
        args.socket.clone()
    } else {
        let mut inner = args.socket.clone().into_os_string();
        inner.push(".backend");
        let inner = PathBuf::from(inner);
        backends::vhost_shim::relay_one(&args.socket, inner.clone())
            .map_err(|e| Error::VhostUser(format!("relay on {}: {e}", args.socket.display())))?;
        inner
    };
    let mut listener =
        Listener::new(&listen_path, true).map_err(|e| Error::VhostUser(format!("listen: {e}")))?;
    tracing::info!(socket = %args.socket.display(), "waiting for the frontend");
    daemon
        .start(&mut listener)
        .map_err(|e| Error::VhostUser(e.to_string()))?;
    let res = daemon.wait();
    backend.log_stats();
    let _ = std::fs::remove_file(&args.socket);
    let _ = std::fs::remove_file(&listen_path);
    match res {
        Ok(())
        | Err(DaemonError::HandleRequest(
            VhostUserError::Disconnected | VhostUserError::PartialMessage,
        )) => tracing::info!("frontend disconnected; exiting"),
        Err(e) => return Err(Error::VhostUser(e.to_string())),
    }
    // Exit rather than drop the daemon (its drop joins the worker threads).
    std::process::exit(0);
}
