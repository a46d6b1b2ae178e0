// SPDX-License-Identifier: Apache-2.0
//! Seccomp filters for the project's three binaries (`vmm`, `vhost-user-blk`,
//! `vhost-user-net`): the `--seccomp on|log|off` mode, the tables that say what each kind of
//! thread may call ([`Allowed`]), and their installation.
//!
//! With `on` (the default) a syscall outside the calling thread's table kills the whole
//! process (`SECCOMP_RET_KILL_PROCESS`; the kernel logs an `audit: type=1326` line naming the
//! thread and the syscall number). With `log` it is allowed and logged the same way, which is
//! how a missing entry is found (`scripts/seccomp-audit.sh` names the syscalls); `off` installs
//! nothing.
//!
//! Filters stack: a thread runs every filter it inherited and its own, and the strictest answer
//! wins. Each binary installs a process-wide baseline first, on its only thread, so that every
//! thread (any a library starts too) inherits it: the union of every thread's table and the
//! set-up. Each thread then adds the narrow filter of its kind where it starts, before it reads
//! a guest ring, a vhost-user message or a guest exit. A thread that starts other threads after
//! its own filter is installed passes that filter on, so its table includes theirs (each table
//! says where).
//!
//! The tables: [`groups`] (what every thread, every spawning thread and every request-engine
//! queue thread needs), [`blk`] and [`net`] for the two backends, and `vmm::seccomp`.
//! io_uring operations do not pass through seccomp: the rings are restricted to their opcodes
//! separately.

pub mod blk;
pub mod groups;
pub mod net;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use crate::{Error, Result};

/// `--seccomp`: what a filter does with a syscall outside the thread's table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Kill the process (`SECCOMP_RET_KILL_PROCESS`).
    #[default]
    On,
    /// Allow the syscall and have the kernel log it (`SECCOMP_RET_LOG`).
    Log,
    /// Install no filter.
    Off,
}

impl FromStr for Mode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "on" => Ok(Self::On),
            "log" => Ok(Self::Log),
            "off" => Ok(Self::Off),
            _ => Err(Error::InvalidConfig(format!(
                "--seccomp {s}: expected on, log or off"
            ))),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::On => "on",
            Self::Log => "log",
            Self::Off => "off",
        })
    }
}

static MODE: OnceLock<Mode> = OnceLock::new();

/// Sets the process's mode, once, from its command line. A process that never sets it (a
/// test, a library user) installs no filter.
pub fn set_mode(mode: Mode) {
    if MODE.set(mode).is_err() {
        tracing::warn!("seccomp mode already set; {mode} ignored");
    }
}

/// The process's mode ([`Mode::Off`] until [`set_mode`]).
pub fn mode() -> Mode {
    MODE.get().copied().unwrap_or(Mode::Off)
}

/// One condition on a syscall argument: `(args[arg] & mask) == value`, on the low 32 bits
/// (every argument the tables check is an `int` or an ioctl request number).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ArgCheck {
    arg: u8,
    mask: u32,
    value: u32,
}

/// Which calls of one syscall are allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Args {
    /// Any arguments.
    Any,
    /// Those meeting every check of at least one of these rules.
    OneOf(Vec<Vec<ArgCheck>>),
}

/// What one kind of thread may call: syscalls, some only with given arguments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowed {
    calls: BTreeMap<i64, Args>,
}

impl Allowed {
    /// Nothing allowed.
    pub fn new() -> Self {
        Self::default()
    }

    /// `calls` with any arguments.
    pub fn calls(mut self, calls: &[i64]) -> Self {
        for &nr in calls {
            self.calls.insert(nr, Args::Any);
        }
        self
    }

    /// `call` when its argument `arg` equals one of `values`.
    pub fn call_if(self, call: i64, arg: u8, values: &[u64]) -> Self {
        self.call_when(call, arg, u32::MAX, values)
    }

    /// `call` when its argument `arg` masked with `mask` equals one of `values`.
    pub fn call_when(mut self, call: i64, arg: u8, mask: u32, values: &[u64]) -> Self {
        let rules = values.iter().map(|&v| {
            vec![ArgCheck {
                arg,
                mask,
                value: v as u32,
            }]
        });
        self.add(call, Args::OneOf(rules.collect()));
        self
    }

    /// `ioctl` with one of `requests`.
    pub fn ioctls(self, requests: &[u64]) -> Self {
        self.call_if(libc::SYS_ioctl, 1, requests)
    }

    /// `ioctl` with a request of one of these families (the "type" byte, bits 8–15 of the
    /// request number: `0xae` for KVM): for a set-up that issues many of a driver's requests.
    pub fn ioctl_families(self, types: &[u32]) -> Self {
        let values: Vec<u64> = types.iter().map(|&t| u64::from(t) << 8).collect();
        self.call_when(libc::SYS_ioctl, 1, 0xff00, &values)
    }

    /// Also everything `other` allows.
    pub fn with(mut self, other: Allowed) -> Self {
        for (nr, args) in other.calls {
            self.add(nr, args);
        }
        self
    }

    fn add(&mut self, nr: i64, args: Args) {
        if matches!(&args, Args::OneOf(rules) if rules.is_empty()) {
            return;
        }
        let merged = match (self.calls.remove(&nr), args) {
            (None, args) => args,
            (Some(Args::Any), _) | (_, Args::Any) => Args::Any,
            (Some(Args::OneOf(mut a)), Args::OneOf(b)) => {
                for rule in b {
                    if !a.contains(&rule) {
                        a.push(rule);
                    }
                }
                Args::OneOf(a)
            }
        };
        self.calls.insert(nr, merged);
    }

    /// Whether `call` is allowed with any arguments.
    pub fn allows_any(&self, call: i64) -> bool {
        self.calls.get(&call) == Some(&Args::Any)
    }

    /// Whether `call` is allowed when its argument `arg` is `value` (and nothing else is
    /// checked).
    pub fn allows_with(&self, call: i64, arg: u8, value: u64) -> bool {
        match self.calls.get(&call) {
            None => false,
            Some(Args::Any) => true,
            Some(Args::OneOf(rules)) => rules.iter().any(|rule| {
                rule.iter()
                    .all(|c| c.arg == arg && (value as u32) & c.mask == c.value)
            }),
        }
    }

    /// Whether `ioctl` with `request` is allowed.
    pub fn allows_ioctl(&self, request: u64) -> bool {
        self.allows_with(libc::SYS_ioctl, 1, request)
    }

    /// The syscall numbers with an entry.
    pub fn syscalls(&self) -> impl Iterator<Item = i64> + '_ {
        self.calls.keys().copied()
    }

    /// The BPF program: allow what the table allows, `mismatch` for the rest.
    pub fn program(
        &self,
        mismatch: SeccompAction,
    ) -> std::result::Result<BpfProgram, BackendError> {
        let mut rules = BTreeMap::new();
        for (&nr, args) in &self.calls {
            let chain = match args {
                Args::Any => Vec::new(),
                Args::OneOf(alternatives) => alternatives
                    .iter()
                    .map(|checks| {
                        let conds = checks
                            .iter()
                            .map(|c| {
                                let op = if c.mask == u32::MAX {
                                    SeccompCmpOp::Eq
                                } else {
                                    SeccompCmpOp::MaskedEq(u64::from(c.mask))
                                };
                                SeccompCondition::new(
                                    c.arg,
                                    SeccompCmpArgLen::Dword,
                                    op,
                                    u64::from(c.value),
                                )
                            })
                            .collect::<std::result::Result<Vec<_>, _>>()?;
                        SeccompRule::new(conds)
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()?,
            };
            rules.insert(nr, chain);
        }
        let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)?;
        filter.try_into()
    }
}

/// A kind of thread and its table.
pub trait ThreadKind: Copy + fmt::Debug {
    /// The kind's name (in logs, and for `--seccomp-violation`).
    fn name(self) -> &'static str;
    /// What a thread of this kind may call.
    fn allowed(self) -> Allowed;
}

/// Installs the filter of `kind` on the calling thread, per the process's [`mode`].
pub fn install(kind: impl ThreadKind) -> Result<()> {
    let mismatch = match mode() {
        Mode::Off => return Ok(()),
        Mode::On => SeccompAction::KillProcess,
        Mode::Log => SeccompAction::Log,
    };
    let err = |e: seccompiler::Error| Error::Seccomp {
        thread: kind.name(),
        source: e,
    };
    let program = kind
        .allowed()
        .program(mismatch)
        .map_err(|e| err(e.into()))?;
    seccompiler::apply_filter(&program).map_err(err)?;
    tracing::debug!(thread = kind.name(), mode = %mode(), "seccomp filter installed");
    Ok(())
}

/// Installs the process-wide filter `kind` on the process's only thread, first settling what
/// glibc would otherwise look up later from a thread whose filter forbids it: the number of
/// malloc arenas, which it derives from `/sys/devices/system/cpu/online` when a thread first
/// needs a new arena. It is set to glibc's own default, 8 per CPU.
pub fn install_process(kind: impl ThreadKind) -> Result<()> {
    if mode() != Mode::Off {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        let arenas = libc::c_int::try_from(8 * cpus).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets an allocator parameter.
        if unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) } != 1 {
            tracing::warn!("mallopt(M_ARENA_MAX, {arenas}) failed");
        }
    }
    install(kind)
}

/// [`install`] in a thread that has nobody to hand an error to: a thread must not run without
/// its filter, so failing to install it ends the process (exit status 1).
pub fn install_or_exit(kind: impl ThreadKind) {
    if let Err(e) = install(kind) {
        tracing::error!("{e}; exiting");
        std::process::exit(1);
    }
}

static VIOLATION: OnceLock<String> = OnceLock::new();
static VIOLATED: AtomicBool = AtomicBool::new(false);

/// Fault injection for tests (`--seccomp-violation KIND`): the first thread of kind `kind` to
/// reach its [`violation_point`] makes a syscall its table forbids.
pub fn inject_violation(kind: &str) {
    let _ = VIOLATION.set(kind.to_string());
}

/// Where a thread of `kind` makes the injected forbidden call, once per process: it opens an
/// inet socket, as a compromised queue thread reaching for the network would. With the filter
/// on, the process dies of SIGSYS here.
pub fn violation_point(kind: impl ThreadKind) {
    if VIOLATION.get().map(String::as_str) != Some(kind.name())
        || VIOLATED.swap(true, Ordering::Relaxed)
    {
        return;
    }
    tracing::warn!(
        thread = kind.name(),
        "fault injection: calling socket(AF_INET), which this thread's filter forbids"
    );
    // SAFETY: plain syscall; a returned descriptor (filter off or logging) is closed at once.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd >= 0 {
            libc::close(fd);
        }
    }
}

#[cfg(test)]
mod tests;
