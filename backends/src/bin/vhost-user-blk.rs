// SPDX-License-Identifier: Apache-2.0
//! `vhost-user-blk`: serve a raw file or block device to vhost-user frontends, one at a time.
//!
//! The backend serves successive frontend connections (a frontend that lost its connection,
//! or a VMM reconnecting after this process was restarted, finds it again); a second frontend
//! connecting while one is served is refused. `--once` exits 0 at the first disconnect
//! instead. On SIGTERM/SIGINT it completes every in-flight request, flushes the disk
//! (`fdatasync`) and exits 0: with the frontend's inflight region, a new process started on
//! the same socket takes over where this one stopped.
//!
//! Every thread runs under a seccomp filter (`--seccomp`, `backends::seccomp::blk`): the
//! process-wide one once the process is set up and runs unprivileged, before it starts a
//! thread; each thread's own before it serves.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::access::SocketAccessArgs;
use backends::blk::{BlkBackend, BlkOptions, Disk};
use backends::engine::TuningArgs;
use backends::metrics::{Exporter, MetricsListener, QueueMetrics};
use backends::placement::Affinity;
use backends::privileges::{drop_privileges, PrivilegeArgs};
use backends::seccomp::{self, blk::BlkThread};
use backends::server::{ServeFilters, Server};
use backends::Error;
use clap::Parser;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

/// vhost-user-blk backend (io_uring, one thread per queue).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// vhost-user socket path to listen on.
    #[arg(long)]
    socket: PathBuf,
    /// Raw image file or block device.
    #[arg(long)]
    path: PathBuf,
    /// Number of queues.
    #[arg(long, default_value_t = 1)]
    queues: u16,
    /// Maximum queue size.
    #[arg(long, default_value_t = 256)]
    queue_size: u16,
    /// Export read-only (VIRTIO_BLK_F_RO).
    #[arg(long)]
    readonly: bool,
    /// Open the backing file with O_DIRECT.
    #[arg(long)]
    direct: bool,
    /// Polling and batching of the queues.
    #[command(flatten)]
    tuning: TuningArgs,
    /// Pin each queue's thread to host CPUs: QUEUE@CPU entries (0@2,1@3), or CPU lists
    /// and ranges (0@[2,3],1@[4-5]).
    #[arg(long)]
    queue_affinity: Option<String>,
    /// Serial returned by GET_ID (at most 20 bytes).
    #[arg(long, default_value = "vhost-user-blk")]
    serial: String,
    /// Exit when the first frontend disconnects instead of waiting for the next one.
    #[arg(long)]
    once: bool,
    /// Who may connect to the socket.
    #[command(flatten)]
    access: SocketAccessArgs,
    /// Who to run as once the disk is open and the socket bound.
    #[command(flatten)]
    privileges: PrivilegeArgs,
    /// Restrict each queue's io_uring to the operations it submits (off only to measure
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

/// Block SIGTERM/SIGINT in this thread (and so in every thread spawned later); a dedicated
/// thread takes them with `sigwait`.
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
    seccomp::set_mode(args.seccomp.parse()?);
    if let Some(kind) = &args.seccomp_violation {
        seccomp::inject_violation(kind);
    }
    let affinity = queue_affinity(args.queue_affinity.as_deref(), args.queues)?;
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
    let disk = Disk::open(&args.path, args.readonly, args.direct)?;
    tracing::info!(
        path = %args.path.display(),
        size = disk.size,
        block_device = disk.is_block_device,
        queues = args.queues,
        "opened backing store"
    );
    let backend = Arc::new(BlkBackend::new(
        disk,
        BlkOptions {
            queues: args.queues,
            queue_size: args.queue_size,
            readonly: args.readonly,
            tuning: args.tuning.tuning(backends::blk::DEFAULT_BATCH),
            serial: args.serial.clone(),
            affinity,
        },
    )?);

    // Set up: the disk is open and the socket bound. Nothing else needs privileges, and the
    // threads started from here on (the metrics server's too) inherit none.
    let server = Arc::new(Server::bind_with(&args.socket, args.access.access())?);
    drop_privileges(identity)?;
    seccomp::install_process(BlkThread::Process)?;
    let _metrics = metrics_listener
        .map(|l| l.serve(exporter.clone(), BlkThread::Metrics))
        .transpose()?;
    if args.metrics.is_some() {
        let device = args.socket.display().to_string();
        let queues = backend.stats().iter().enumerate();
        exporter.set_queues(
            queues
                .map(|(q, s)| QueueMetrics::new(&device, q, s, true))
                .collect(),
        );
    }
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    // The daemon's name is that of its per-connection thread.
    let mut daemon = VhostUserDaemon::new("vu-conn".into(), backend.clone(), mem)
        .map_err(|e| Error::VhostUser(e.to_string()))?;
    for (q, handler) in daemon.get_epoll_handlers().iter().enumerate() {
        let fd = backend.completion_fd(q).map_err(Error::EventFd)?;
        handler
            .register_listener(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                EventSet::IN,
                u64::from(backend.completion_event()),
            )
            .map_err(Error::EventFd)?;
        // The epoll set holds the registration; keep the duplicate open for the process life.
        std::mem::forget(fd);
    }

    {
        let backend = backend.clone();
        let server = server.clone();
        std::thread::Builder::new()
            .name("blk-signal".into())
            .spawn(move || {
                seccomp::install_or_exit(BlkThread::Signal);
                wait_for_signal(sigset, &backend, &server)
            })
            .map_err(|e| Error::VhostUser(e.to_string()))?;
    }
    let filters = ServeFilters {
        accept: BlkThread::Accept,
        control: BlkThread::Control,
    };
    let served = server.serve(&mut daemon, args.once, Ok, filters);
    backend.log_stats();
    log_rusage();
    server.remove_socket();
    served?;
    // Exit here rather than dropping the daemon: its drop joins the vring worker threads,
    // and the process is done anyway.
    std::process::exit(0);
}

/// `--queue-affinity`, checked against the queue count and this host's CPUs.
fn queue_affinity(list: Option<&str>, queues: u16) -> Result<Affinity, Error> {
    let Some(list) = list else {
        return Ok(Affinity::default());
    };
    let affinity = Affinity::parse(list, "queue")?;
    affinity.check(usize::from(queues), "queue")?;
    Ok(affinity)
}

/// Log process CPU time and context switches (for benchmarking).
fn log_rusage() {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tracing::info!(
        user_s = secs(ru.ru_utime),
        sys_s = secs(ru.ru_stime),
        voluntary_switches = ru.ru_nvcsw,
        involuntary_switches = ru.ru_nivcsw,
        "process CPU usage"
    );
}

/// Wait for SIGTERM/SIGINT, drain every queue (bounded wait), flush the disk, then exit 0.
fn wait_for_signal(set: libc::sigset_t, backend: &BlkBackend, server: &Server) {
    let mut sig = 0;
    // SAFETY: `set` is an initialised signal set and `sig` a valid out pointer.
    while unsafe { libc::sigwait(&set, &mut sig) } != 0 {}
    tracing::info!(signal = sig, "shutting down: draining in-flight requests");
    backend.begin_shutdown();
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.drained_queues() < backend.stats().len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let drained = backend.drained_queues();
    if drained < backend.stats().len() {
        tracing::warn!(drained, "not every queue drained in time");
    }
    if let Err(e) = backend.sync_disk() {
        tracing::error!("fdatasync of the backing store: {e}");
    }
    backend.log_stats();
    log_rusage();
    server.remove_socket();
    tracing::info!("shut down");
    std::process::exit(0);
}
