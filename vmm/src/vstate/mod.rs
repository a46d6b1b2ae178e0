// SPDX-License-Identifier: Apache-2.0
//! KVM state: the VM, its vCPUs (one by one, and as the running group that
//! pauses and stops together), interrupt routing, and why the guest stopped.

pub mod cpuid;
pub mod exit;
pub mod interrupts;
pub mod regs;
pub mod vcpu;
pub mod vcpus;
pub mod vm;
