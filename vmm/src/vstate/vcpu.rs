// SPDX-License-Identifier: Apache-2.0
//! vCPU threads: configure each vCPU for the 64-bit boot protocol and run it,
//! dispatching port and MMIO exits to the buses.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, RwLock};
use std::thread::JoinHandle;

use backends::placement::Affinity;
use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::exit::{ExitSignal, GuestExit};
use super::vcpus::VcpuControl;
use super::{cpuid, regs};
use crate::devices::bus::Bus;
use crate::seccomp::VmmThread;

/// Signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Handler for [`kick_signal`]: its only job is to interrupt KVM_RUN.
pub extern "C" fn on_kick_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Errors while creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// KVM_CREATE_VCPU or KVM_GET_SUPPORTED_CPUID failed.
    #[error("{what}: {source}")]
    Kvm {
        /// The operation.
        what: &'static str,
        /// The KVM error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Register setup failed.
    #[error("vCPU {index}: {source}")]
    Regs {
        /// vCPU index.
        index: u8,
        /// The cause.
        #[source]
        source: regs::RegsError,
    },
    /// The thread could not be spawned.
    #[error("cannot spawn vCPU thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// A bus change requested by a device while a bus lock was held (a BAR moved
/// during an ECAM write); run by the same vCPU once it has released the lock.
pub type DeferredBusOp = Box<dyn FnOnce(&IoBuses) + Send>;

/// The port-I/O and MMIO buses every vCPU dispatches to. Locked for writing
/// only when a device moves (a PCI BAR is reprogrammed).
#[derive(Default)]
pub struct IoBuses {
    /// Port I/O.
    pub pio: RwLock<Bus>,
    /// Memory-mapped I/O.
    pub mmio: RwLock<Bus>,
    deferred: std::sync::Mutex<Vec<DeferredBusOp>>,
    has_deferred: AtomicBool,
}

impl IoBuses {
    /// Queues `op` to run after the current exit is dispatched (outside any bus lock).
    pub fn defer(&self, op: DeferredBusOp) {
        crate::devices::bus::lock(&self.deferred).push(op);
        self.has_deferred.store(true, Ordering::Release);
    }

    /// Runs the queued bus changes; called with no bus lock held.
    pub fn run_deferred(&self) {
        if !self.has_deferred.swap(false, Ordering::AcqRel) {
            return;
        }
        let ops = std::mem::take(&mut *crate::devices::bus::lock(&self.deferred));
        for op in ops {
            op(self);
        }
    }
}

/// A configured vCPU, ready to run on its own thread.
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
}

/// The CPUID KVM supports on this host.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, VcpuError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| VcpuError::Kvm {
            what: "KVM_GET_SUPPORTED_CPUID",
            source,
        })
}

impl Vcpu {
    /// Creates vCPU `index` of `count` and sets CPUID, MSRs, FPU, LAPIC and
    /// (for all of them; APs are reset by INIT/SIPI anyway) long-mode registers.
    pub fn new(
        vm: &VmFd,
        base_cpuid: &CpuId,
        index: u8,
        count: u8,
        mem: &GuestMemoryMmap,
        entry: GuestAddress,
        tsc_deadline: bool,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Kvm {
                what: "KVM_CREATE_VCPU",
                source,
            })?;
        let mut cpuid = base_cpuid.clone();
        cpuid::patch_for_vcpu(&mut cpuid, index, count, tsc_deadline);
        let set_cpuid = |fd: &VcpuFd| {
            fd.set_cpuid2(&cpuid).map_err(|source| VcpuError::Kvm {
                what: "KVM_SET_CPUID2",
                source,
            })
        };
        set_cpuid(&fd)?;
        // KVM derives CPUID.(0xD,0).EBX (the XSAVE size for the enabled
        // features) from XCR0 when CPUID is set, but does not refresh it when
        // the guest later enables AVX, so Linux reads a size that disagrees
        // with its features. Enable every supported user feature (allowed
        // only once CPUID is set) and set CPUID again to recompute the size.
        if let Some(xcr0) = cpuid::supported_xcr0(&cpuid) {
            let mut xcrs = kvm_bindings::kvm_xcrs {
                nr_xcrs: 1,
                ..Default::default()
            };
            xcrs.xcrs[0].value = xcr0;
            fd.set_xcrs(&xcrs).map_err(|source| VcpuError::Kvm {
                what: "KVM_SET_XCRS",
                source,
            })?;
            set_cpuid(&fd)?;
        }
        let wrap = |source| VcpuError::Regs { index, source };
        regs::setup_msrs(&fd).map_err(wrap)?;
        regs::setup_fpu(&fd).map_err(wrap)?;
        regs::setup_lapic(&fd).map_err(wrap)?;
        if index == 0 {
            regs::setup_long_mode(&fd, mem).map_err(wrap)?;
            regs::setup_entry_regs(&fd, entry).map_err(wrap)?;
        }
        Ok(Self { index, fd })
    }

    /// Runs the vCPU on a thread named `vcpuN`, on the host CPUs `affinity` gives it (if
    /// any), until `control` says stop or the guest stops (parking it while `control` says
    /// pause); the outcome goes to `exit`. The thread installs its seccomp filter, then waits
    /// at `gate` until every other thread has its own.
    pub fn spawn(
        self,
        buses: Arc<IoBuses>,
        exit: Arc<ExitSignal>,
        control: Arc<VcpuControl>,
        affinity: Affinity,
        gate: Arc<Barrier>,
    ) -> Result<JoinHandle<()>, VcpuError> {
        let name = format!("vcpu{}", self.index);
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                affinity.pin_current(usize::from(self.index), &name);
                backends::seccomp::install_or_exit(VmmThread::Vcpu);
                gate.wait();
                self.run(&buses, &exit, &control);
                control.finished();
            })
            .map_err(VcpuError::Spawn)
    }

    fn run(mut self, buses: &IoBuses, exit: &ExitSignal, control: &VcpuControl) {
        if let Err(e) = vmm_sys_util::signal::unblock_signal(kick_signal()) {
            tracing::warn!("vcpu{}: cannot unblock the kick signal: {e}", self.index);
        }
        let cpu = usize::from(self.index);
        while !control.stopping() {
            let outcome = match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    if !read_lock(&buses.pio).read(port.into(), data) {
                        tracing::trace!("vcpu{cpu}: unhandled port read at {port:#x}");
                    }
                    None
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    if !read_lock(&buses.pio).write(port.into(), data) {
                        tracing::trace!("vcpu{cpu}: unhandled port write at {port:#x}: {data:x?}");
                    }
                    None
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !read_lock(&buses.mmio).read(addr, data) {
                        tracing::trace!("vcpu{cpu}: unhandled MMIO read at {addr:#x}");
                    }
                    None
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    if !read_lock(&buses.mmio).write(addr, data) {
                        tracing::trace!("vcpu{cpu}: unhandled MMIO write at {addr:#x}");
                    }
                    None
                }
                Ok(VcpuExit::Shutdown) => Some(GuestExit::TripleFault { cpu }),
                Ok(VcpuExit::SystemEvent(kind, _)) => Some(match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => GuestExit::PowerOff,
                    KVM_SYSTEM_EVENT_RESET => GuestExit::Reset("KVM system event"),
                    KVM_SYSTEM_EVENT_CRASH => GuestExit::Panic("KVM crash event".into()),
                    other => GuestExit::VcpuError {
                        cpu,
                        detail: format!("unknown system event {other}"),
                    },
                }),
                Ok(VcpuExit::FailEntry(reason, _)) => Some(GuestExit::VcpuError {
                    cpu,
                    detail: format!("KVM_EXIT_FAIL_ENTRY, hardware reason {reason:#x}"),
                }),
                Ok(VcpuExit::InternalError) => Some(GuestExit::VcpuError {
                    cpu,
                    detail: "KVM_EXIT_INTERNAL_ERROR (emulation failure; on a PVM or \
                             software-KVM host use lab mode, see `vmm check`)"
                        .into(),
                }),
                Ok(VcpuExit::Hlt) => None,
                Ok(other) => {
                    tracing::debug!("vcpu{cpu}: ignoring exit {other:?}");
                    None
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
                Err(e) => Some(GuestExit::VcpuError {
                    cpu,
                    detail: format!("KVM_RUN: {e}"),
                }),
            };
            buses.run_deferred();
            if let Some(why) = outcome {
                exit.request(why);
                break;
            }
            control.park_if_paused(|| {
                // Tell a kvmclock guest the pause was the host's doing (no
                // soft-lockup reports once it runs again).
                let _ = self.fd.kvmclock_ctrl();
            });
        }
        tracing::debug!("vcpu{cpu} stopped");
    }
}

fn read_lock(bus: &RwLock<Bus>) -> std::sync::RwLockReadGuard<'_, Bus> {
    bus.read().unwrap_or_else(|p| p.into_inner())
}
