//! KVM state: the VM, its vCPUs, interrupt routing, and why the guest stopped.

pub mod cpuid;
pub mod exit;
pub mod interrupts;
pub mod regs;
pub mod vcpu;
pub mod vm;
