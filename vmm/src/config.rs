// SPDX-License-Identifier: Apache-2.0
//! Validated VM configuration and the parsers for its command-line syntax.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use backends::placement::{Affinity, AffinityError};
use minihttp::ListenAddr;

mod cpus;

pub use cpus::CpusConfig;

/// One mebibyte.
pub const MIB: u64 = 1 << 20;
/// One gibibyte.
pub const GIB: u64 = 1 << 30;

/// Errors in user-supplied configuration values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A size string could not be parsed.
    #[error("invalid size '{0}': expected a number with an optional K, M, G or T suffix (e.g. 512M, 2G)")]
    BadSize(String),
    /// A size was zero.
    #[error("size must be greater than zero")]
    ZeroSize,
    /// An unknown `key=value` option was given.
    #[error("unknown option '{0}'")]
    UnknownOption(String),
    /// An option value was not one of the accepted values.
    #[error("invalid value '{value}' for '{key}': expected {expected}")]
    BadValue {
        /// The option name.
        key: String,
        /// The rejected value.
        value: String,
        /// What would have been accepted.
        expected: &'static str,
    },
    /// A `--device` specification was not understood.
    #[error("invalid device '{0}': expected path=/sys/bus/pci/devices/DDDD:BB:DD.F")]
    BadDevice(String),
    /// A serial console specification was not understood.
    #[error("invalid serial '{0}': expected stdio, file=PATH[,max_size=SIZE] or off")]
    BadSerial(String),
    /// A required option is missing.
    #[error("missing option '{0}'")]
    MissingOption(&'static str),
    /// A NIC names neither a vhost-user socket nor a TAP.
    #[error("--net needs vhost_user=on,socket=PATH or tap=NAME")]
    NetKind,
    /// A disk names neither a vhost-user socket nor a backing file.
    #[error("--disk needs vhost_user=on,socket=PATH or path=FILE")]
    DiskNotVhostUser,
    /// Options of two disk kinds were mixed.
    #[error("--disk: {0}")]
    DiskConflict(&'static str),
    /// A vCPU placement list is malformed or names what does not exist.
    #[error("--cpus affinity: {0}")]
    Affinity(#[from] AffinityError),
}

/// Parses a byte size such as `512M`, `2G`, `4096` (bytes) or `1.5G`.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::BadSize(s.to_string());
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => MIB,
                'G' => GIB,
                'T' => 1u64 << 40,
                _ => return Err(bad()),
            };
            (&t[..i], mult)
        }
        Some(_) => (t, 1),
        None => return Err(bad()),
    };
    if num.is_empty() || num.starts_with(['-', '+']) {
        return Err(bad());
    }
    let bytes = if let Ok(n) = num.parse::<u64>() {
        n.checked_mul(mult).ok_or_else(bad)?
    } else {
        let f: f64 = num.parse().map_err(|_| bad())?;
        let b = f * mult as f64;
        if !b.is_finite() || b < 0.0 || b > u64::MAX as f64 {
            return Err(bad());
        }
        b as u64
    };
    if bytes == 0 {
        return Err(ConfigError::ZeroSize);
    }
    Ok(bytes)
}

/// Guest memory: `SIZE[,hugepages=on|off][,shared=on|off]`, the size also as `size=SIZE`
/// (Cloud Hypervisor's spelling).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Guest RAM in bytes.
    pub size: u64,
    /// Back guest RAM with 2 MiB hugetlb pages.
    pub hugepages: bool,
    /// Map guest RAM from a file a vhost-user backend can map too (`Some(true)`), as
    /// private anonymous memory (`Some(false)`), or decide from the devices (`None`:
    /// shared exactly when a vhost-user device is configured).
    pub shared: Option<bool>,
}

impl FromStr for MemoryConfig {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut size = None;
        let mut hugepages = false;
        let mut shared = None;
        for (i, opt) in s.split(',').enumerate() {
            let (key, value) = opt.split_once('=').unwrap_or((opt, ""));
            match key {
                "size" => size = Some(parse_size(value)?),
                "hugepages" => hugepages = parse_on_off(key, value)?,
                "shared" => shared = Some(parse_on_off(key, value)?),
                _ if i == 0 => size = Some(parse_size(opt)?),
                _ => return Err(ConfigError::UnknownOption(opt.to_string())),
            }
        }
        Ok(Self {
            size: size.ok_or(ConfigError::MissingOption("size"))?,
            hugepages,
            shared,
        })
    }
}

/// Parses `on`/`off` (also `true`/`false`, `1`/`0`).
pub fn parse_on_off(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        _ => Err(ConfigError::BadValue {
            key: key.to_string(),
            value: value.to_string(),
            expected: "on or off",
        }),
    }
}

/// Default cap of a serial log file (`--serial file=PATH`): 64 MiB.
pub const DEFAULT_SERIAL_MAX_SIZE: u64 = 64 << 20;
/// Smallest `max_size` of a serial log file.
pub const MIN_SERIAL_MAX_SIZE: u64 = 4096;

/// Where the guest's 8250 serial console goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialConfig {
    /// The VMM's standard output (and standard input to the guest).
    Stdio,
    /// Appended to a file, which is truncated (with a marker line) before it would grow
    /// past `max_size` bytes.
    File {
        /// The log file.
        path: PathBuf,
        /// Largest size of the file.
        max_size: u64,
    },
    /// No serial port.
    Off,
}

impl FromStr for SerialConfig {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdio" => Ok(Self::Stdio),
            "off" => Ok(Self::Off),
            _ => {
                let bad = || ConfigError::BadSerial(s.to_string());
                let spec = s.strip_prefix("file=").ok_or_else(bad)?;
                let (path, max_size) = match spec.rsplit_once(",max_size=") {
                    Some((path, size)) => (path, parse_size(size)?),
                    None => (spec, DEFAULT_SERIAL_MAX_SIZE),
                };
                if path.is_empty() {
                    return Err(bad());
                }
                if max_size < MIN_SERIAL_MAX_SIZE {
                    return Err(ConfigError::BadValue {
                        key: "max_size".into(),
                        value: max_size.to_string(),
                        expected: "at least 4K",
                    });
                }
                Ok(Self::File {
                    path: PathBuf::from(path),
                    max_size,
                })
            }
        }
    }
}

impl fmt::Display for SerialConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stdio => write!(f, "stdio"),
            Self::File { path, max_size } => {
                write!(f, "file={},max_size={max_size}", path.display())
            }
            Self::Off => write!(f, "off"),
        }
    }
}

/// Default virtqueue size of a disk.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;
/// Largest virtqueue size accepted (split ring limit).
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Largest number of queues per disk.
pub const MAX_QUEUES: u16 = 64;
/// Largest number of queue pairs per vhost-user NIC (2N+1 virtqueues with the control queue).
pub const MAX_NET_QUEUE_PAIRS: u16 = 8;

/// What a vhost-user device does when its backend hangs up: `reconnect=on|off` (default on),
/// `reconnect_ms=N` between attempts (default 1000), `reconnect_timeout_s=N` before it gives
/// up and marks the device DEVICE_NEEDS_RESET (default 60).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReconnectConfig {
    /// Reconnect at all (off: a hangup marks the device DEVICE_NEEDS_RESET at once).
    pub enabled: bool,
    /// Time between connection attempts.
    pub interval: Duration,
    /// How long to keep trying.
    pub timeout: Duration,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_millis(1000),
            timeout: Duration::from_secs(60),
        }
    }
}

impl ReconnectConfig {
    /// Applies `key=value` if it is a reconnect option: `Ok(true)` if it was one.
    fn apply(&mut self, key: &str, value: &str) -> Result<bool, ConfigError> {
        let number = |max: u64, expected: &'static str| -> Result<u64, ConfigError> {
            value
                .parse()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| ConfigError::BadValue {
                    key: key.to_string(),
                    value: value.to_string(),
                    expected,
                })
        };
        match key {
            "reconnect" => self.enabled = parse_on_off(key, value)?,
            "reconnect_ms" => {
                self.interval =
                    Duration::from_millis(number(60_000, "milliseconds from 1 to 60000")?)
            }
            "reconnect_timeout_s" => {
                self.timeout = Duration::from_secs(number(86_400, "seconds from 1 to 86400")?)
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// What the guest sees for a file-backed disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DiskModel {
    /// virtio-blk served by queue threads inside the VMM.
    #[default]
    VirtioBlk,
    /// An emulated NVMe controller (every register access traps to the VMM).
    Nvme,
}

/// Where a disk's requests are served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskBackend {
    /// An external vhost-user-blk backend.
    VhostUser {
        /// The backend's socket.
        socket: PathBuf,
        /// What to do when the backend hangs up.
        reconnect: ReconnectConfig,
    },
    /// A file (or block device) opened by the VMM itself.
    File {
        /// The backing file.
        path: PathBuf,
        /// Refuse guest writes.
        readonly: bool,
        /// Device model.
        model: DiskModel,
    },
}

/// A disk: `vhost_user=on,socket=PATH[,queues=N][,queue_size=M][,metrics=ADDR][,reconnect=...]`
/// (see [`ReconnectConfig`]) or
/// `path=FILE[,queues=N][,queue_size=M][,readonly=on][,model=virtio|nvme]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// Who serves the requests.
    pub backend: DiskBackend,
    /// Number of queues (default: as many as a vhost-user backend offers, 1 for files).
    pub queues: Option<u16>,
    /// Virtqueue size (power of two).
    pub queue_size: u16,
    /// Where the vhost-user backend serves its metrics (reported by `vm.counters`).
    pub metrics: Option<ListenAddr>,
}

impl DiskConfig {
    /// The vhost-user socket, if this is a vhost-user disk.
    pub fn socket(&self) -> Option<&std::path::Path> {
        match &self.backend {
            DiskBackend::VhostUser { socket, .. } => Some(socket),
            DiskBackend::File { .. } => None,
        }
    }
}

/// A backend's metrics address, `127.0.0.1:PORT` or `unix:PATH`.
fn parse_metrics(key: &str, value: &str) -> Result<ListenAddr, ConfigError> {
    value.parse().map_err(|_| ConfigError::BadValue {
        key: key.to_string(),
        value: value.to_string(),
        expected: "127.0.0.1:PORT or unix:PATH",
    })
}

fn parse_count(key: &str, value: &str, max: u16, pow2: bool) -> Result<u16, ConfigError> {
    let expected = match (pow2, max) {
        (true, _) => "a power of two from 1 to 32768",
        (false, MAX_NET_QUEUE_PAIRS) => "a number from 1 to 8",
        (false, _) => "a number from 1 to 64",
    };
    let bad = || ConfigError::BadValue {
        key: key.to_string(),
        value: value.to_string(),
        expected,
    };
    let n: u16 = value.parse().map_err(|_| bad())?;
    if n == 0 || n > max || (pow2 && !n.is_power_of_two()) {
        return Err(bad());
    }
    Ok(n)
}

impl FromStr for DiskConfig {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut vhost_user = false;
        let mut socket = None;
        let mut path = None;
        let mut readonly = None;
        let mut model = None;
        let mut queues = None;
        let mut queue_size = DEFAULT_QUEUE_SIZE;
        let mut metrics = None;
        let mut reconnect = ReconnectConfig::default();
        let mut reconnect_given = false;
        for opt in s.split(',').filter(|o| !o.is_empty()) {
            let (key, value) = opt.split_once('=').unwrap_or((opt, ""));
            if reconnect.apply(key, value)? {
                reconnect_given = true;
                continue;
            }
            match key {
                "vhost_user" => vhost_user = parse_on_off(key, value)?,
                "socket" if !value.is_empty() => socket = Some(PathBuf::from(value)),
                "socket" => return Err(ConfigError::MissingOption("socket")),
                "metrics" => metrics = Some(parse_metrics(key, value)?),
                "path" if !value.is_empty() => path = Some(PathBuf::from(value)),
                "path" => return Err(ConfigError::MissingOption("path")),
                "readonly" => readonly = Some(parse_on_off(key, value)?),
                "model" => {
                    model = Some(match value {
                        "virtio" | "virtio-blk" => DiskModel::VirtioBlk,
                        "nvme" => DiskModel::Nvme,
                        _ => {
                            return Err(ConfigError::BadValue {
                                key: key.to_string(),
                                value: value.to_string(),
                                expected: "virtio or nvme",
                            })
                        }
                    })
                }
                "queues" | "num_queues" => {
                    queues = Some(parse_count(key, value, MAX_QUEUES, false)?)
                }
                "queue_size" => queue_size = parse_count(key, value, MAX_QUEUE_SIZE, true)?,
                _ => return Err(ConfigError::UnknownOption(opt.to_string())),
            }
        }
        let backend = match (vhost_user, path) {
            (true, Some(_)) => {
                return Err(ConfigError::DiskConflict(
                    "vhost_user=on and path= are exclusive",
                ))
            }
            (true, None) => {
                if readonly.is_some() || model.is_some() {
                    return Err(ConfigError::DiskConflict(
                        "readonly= and model= apply to path= disks (the backend decides for vhost-user)",
                    ));
                }
                DiskBackend::VhostUser {
                    socket: socket.ok_or(ConfigError::MissingOption("socket"))?,
                    reconnect,
                }
            }
            (false, Some(path)) => {
                if socket.is_some() {
                    return Err(ConfigError::DiskConflict("socket= needs vhost_user=on"));
                }
                if metrics.is_some() {
                    return Err(ConfigError::DiskConflict(
                        "metrics= names a vhost-user backend's endpoint (the VMM's is --metrics)",
                    ));
                }
                if reconnect_given {
                    return Err(ConfigError::DiskConflict(
                        "reconnect options apply to vhost_user disks",
                    ));
                }
                DiskBackend::File {
                    path,
                    readonly: readonly.unwrap_or(false),
                    model: model.unwrap_or_default(),
                }
            }
            (false, None) => return Err(ConfigError::DiskNotVhostUser),
        };
        Ok(Self {
            backend,
            queues,
            queue_size,
            metrics,
        })
    }
}

/// A host PCI device to pass through: `path=/sys/bus/pci/devices/DDDD:BB:DD.F`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceConfig {
    /// The device's sysfs directory.
    pub path: PathBuf,
}

impl FromStr for DeviceConfig {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("path=") {
            Some(p) if !p.is_empty() && !p.contains(',') => Ok(Self {
                path: PathBuf::from(p),
            }),
            _ => Err(ConfigError::BadDevice(s.to_string())),
        }
    }
}

/// A NIC given with `--net`: virtio-net on a vhost-user backend, or a NIC on a
/// TAP interface (in-VMM virtio-net or emulated e1000).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetConfig {
    /// `vhost_user=on,socket=PATH[,...]`.
    VhostUser(VhostUserNetConfig),
    /// `tap=NAME[,mac=MAC][,model=virtio|e1000]`.
    Tap(TapNetConfig),
}

impl FromStr for NetConfig {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let has = |key: &str| s.split(',').any(|o| o.split('=').next() == Some(key));
        match (has("vhost_user"), has("tap")) {
            (true, false) => s.parse().map(Self::VhostUser),
            (false, true) => s.parse().map(Self::Tap),
            _ => Err(ConfigError::NetKind),
        }
    }
}

/// A vhost-user NIC:
/// `vhost_user=on,socket=PATH[,mac=MAC][,queues=N][,queue_size=M][,metrics=ADDR]` and the
/// [`ReconnectConfig`] options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VhostUserNetConfig {
    /// The vhost-user backend's socket.
    pub socket: PathBuf,
    /// MAC address given to the guest (default: the backend's, else the guest picks one).
    pub mac: Option<[u8; 6]>,
    /// Queue pairs (default 1); more than one needs a backend that serves the control
    /// queue (VIRTIO_NET_F_CTRL_VQ with MQ).
    pub queues: Option<u16>,
    /// Virtqueue size (power of two).
    pub queue_size: u16,
    /// Where the backend serves its metrics (reported by `vm.counters`).
    pub metrics: Option<ListenAddr>,
    /// What to do when the backend hangs up.
    pub reconnect: ReconnectConfig,
}

fn parse_mac(key: &str, value: &str) -> Result<[u8; 6], ConfigError> {
    let bad = || ConfigError::BadValue {
        key: key.to_string(),
        value: value.to_string(),
        expected: "a MAC address like 52:54:00:12:34:56",
    };
    let mut mac = [0u8; 6];
    let mut parts = value.split(':');
    for b in &mut mac {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    // A guest NIC needs a unicast, non-zero address.
    if parts.next().is_some() || mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(bad());
    }
    Ok(mac)
}

impl FromStr for VhostUserNetConfig {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut vhost_user = false;
        let mut socket = None;
        let mut mac = None;
        let mut queues = None;
        let mut queue_size = DEFAULT_QUEUE_SIZE;
        let mut metrics = None;
        let mut reconnect = ReconnectConfig::default();
        for opt in s.split(',').filter(|o| !o.is_empty()) {
            let (key, value) = opt.split_once('=').unwrap_or((opt, ""));
            if reconnect.apply(key, value)? {
                continue;
            }
            match key {
                "vhost_user" => vhost_user = parse_on_off(key, value)?,
                "socket" if !value.is_empty() => socket = Some(PathBuf::from(value)),
                "socket" => return Err(ConfigError::MissingOption("socket")),
                "metrics" => metrics = Some(parse_metrics(key, value)?),
                "mac" => mac = Some(parse_mac(key, value)?),
                "queues" | "num_queues" => {
                    queues = Some(parse_count(key, value, MAX_NET_QUEUE_PAIRS, false)?)
                }
                "queue_size" => queue_size = parse_count(key, value, MAX_QUEUE_SIZE, true)?,
                _ => return Err(ConfigError::UnknownOption(opt.to_string())),
            }
        }
        if !vhost_user {
            return Err(ConfigError::NetKind);
        }
        Ok(Self {
            socket: socket.ok_or(ConfigError::MissingOption("socket"))?,
            mac,
            queues,
            queue_size,
            metrics,
            reconnect,
        })
    }
}

/// Everything needed to build and boot a VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Kernel image: bzImage or ELF vmlinux.
    pub kernel: PathBuf,
    /// Optional initramfs.
    pub initramfs: Option<PathBuf>,
    /// Kernel command line (the VMM appends nothing the user did not ask for
    /// beyond what the platform needs).
    pub cmdline: String,
    /// Number of vCPUs.
    pub cpus: u8,
    /// Host CPUs per vCPU thread (empty: anywhere).
    pub vcpu_affinity: Affinity,
    /// Guest memory.
    pub memory: MemoryConfig,
    /// Serial console destination.
    pub serial: SerialConfig,
    /// Disks (vhost-user, in-VMM virtio-blk, emulated NVMe).
    pub disks: Vec<DiskConfig>,
    /// Host PCI devices passed through with VFIO.
    pub devices: Vec<DeviceConfig>,
    /// NICs: vhost-user virtio-net, in-VMM virtio-net or emulated e1000 on a TAP.
    pub nets: Vec<NetConfig>,
}

impl VmConfig {
    /// Whether a device maps guest RAM from another process (a vhost-user disk or NIC):
    /// then the RAM must be shared.
    pub fn needs_shared_memory(&self) -> bool {
        self.disks.iter().any(|d| d.socket().is_some())
            || self
                .nets
                .iter()
                .any(|n| matches!(n, NetConfig::VhostUser(_)))
    }
}

/// A NIC on a TAP interface (in-VMM virtio-net or emulated e1000):
/// `tap=NAME[,mac=52:54:00:xx:xx:xx][,model=virtio|e1000]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TapNetConfig {
    /// TAP interface name (created if missing).
    pub tap: String,
    /// MAC address.
    pub mac: [u8; 6],
    /// The device the guest sees.
    pub model: NicModel,
}

/// The device model of a TAP-backed NIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NicModel {
    /// virtio-net served by threads in the VMM (the default).
    Virtio,
    /// An emulated Intel 82540EM (e1000): every register access traps.
    E1000,
}

impl FromStr for TapNetConfig {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut tap = None;
        let mut mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let mut model = NicModel::Virtio;
        for opt in s.split(',').filter(|o| !o.is_empty()) {
            let (key, value) = opt.split_once('=').unwrap_or((opt, ""));
            match key {
                "tap" if !value.is_empty() && value.len() < 16 => tap = Some(value.to_string()),
                "tap" => {
                    return Err(ConfigError::BadValue {
                        key: key.into(),
                        value: value.into(),
                        expected: "an interface name of 1 to 15 characters",
                    })
                }
                "mac" => mac = parse_mac(key, value)?,
                "model" => {
                    model = match value {
                        "virtio" => NicModel::Virtio,
                        "e1000" => NicModel::E1000,
                        _ => {
                            return Err(ConfigError::BadValue {
                                key: key.into(),
                                value: value.into(),
                                expected: "virtio or e1000",
                            })
                        }
                    }
                }
                _ => return Err(ConfigError::UnknownOption(opt.to_string())),
            }
        }
        Ok(Self {
            tap: tap.ok_or(ConfigError::MissingOption("tap"))?,
            mac,
            model,
        })
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
