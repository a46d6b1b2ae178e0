// SPDX-License-Identifier: Apache-2.0
//! The JSON bodies of the API (the OpenAPI document's schemas): what the
//! server sends and `vmm remote` reads.

use serde::{Deserialize, Serialize};

/// `GET /api/v1/vmm.ping`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Ping {
    /// The VMM's version.
    pub version: String,
    /// Its process id.
    pub pid: u32,
    /// Seconds since it started.
    pub uptime_seconds: f64,
}

/// The VM's state.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum VmState {
    /// The vCPUs run.
    Running,
    /// The vCPUs are parked and in-VMM queue threads take no requests.
    Paused,
    /// The power button was pressed: the guest is shutting down.
    Shutdown,
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// `GET /api/v1/vm.info`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VmInfo {
    /// Running, Paused or Shutdown.
    pub state: VmState,
    /// How many times the VM booted in this process (1, then one more per `vm.reboot`).
    pub boots: u32,
    /// The configuration the VM runs with.
    pub config: ConfigInfo,
    /// Every device, with its status.
    pub devices: Vec<DeviceInfo>,
}

/// The effective configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConfigInfo {
    /// vCPUs.
    pub cpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Whether RAM is on huge pages.
    pub hugepages: bool,
    /// Kernel image.
    pub kernel: String,
    /// Initramfs, if any.
    pub initramfs: Option<String>,
    /// Kernel command line.
    pub cmdline: String,
    /// Serial console (`stdio`, `file=PATH`, `off`).
    pub serial: String,
}

/// One device.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DeviceInfo {
    /// Its name in logs (`vhost-user-blk0 /tmp/vu.sock`, `nvme0`, ...).
    pub name: String,
    /// What the guest sees: `virtio-blk`, `virtio-net`, `nvme`, `e1000`, `vfio`.
    pub kind: String,
    /// Who serves it: `vhost-user`, `in-vmm`, `emulated`, `passthrough`.
    pub tier: String,
    /// The vhost-user backend's socket, or the disk file, TAP or host device.
    pub backend: Option<String>,
    /// Queues (virtio devices).
    pub queues: Option<u16>,
    /// The driver's side: `active`, `reset` (not started) or `needs-reset` (virtio devices).
    pub driver: Option<String>,
    /// The backend connection: `connected`, `reconnecting` or `needs-reset` (vhost-user).
    pub connection: Option<String>,
    /// The backend's metrics address, if configured (vhost-user).
    pub metrics: Option<String>,
}

/// `GET /api/v1/vm.counters`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct VmCounters {
    /// Per device.
    pub devices: Vec<DeviceCounters>,
}

/// The counters of one device.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DeviceCounters {
    /// Its name.
    pub name: String,
    /// Who serves it (see [`DeviceInfo::tier`]).
    pub tier: String,
    /// Where its vhost-user backend serves the per-queue metrics (the VMM does not see that
    /// data path), if configured.
    pub metrics: Option<String>,
    /// Queues the VMM serves itself.
    pub queues: Vec<QueueCounters>,
    /// Device-wide counters (emulated devices; queue notifies that reached the VMM).
    pub counters: std::collections::BTreeMap<String, u64>,
}

/// The counters of one queue the VMM serves.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueCounters {
    /// Queue label (`0`, `rx0`, `tx0`).
    pub queue: String,
    /// Requests taken.
    pub requests: u64,
    /// Bytes moved into guest buffers.
    pub bytes_read: u64,
    /// Bytes taken from guest buffers.
    pub bytes_written: u64,
    /// Requests answered with an error or dropped.
    pub errors: u64,
    /// Used-buffer notifications sent.
    pub notifications: u64,
    /// Kicks received through the queue's KVM ioeventfd.
    pub kicks: u64,
    /// Requests in flight.
    pub inflight: u64,
}

/// An error body: `{"error": "..."}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}
