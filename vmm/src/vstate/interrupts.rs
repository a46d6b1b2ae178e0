// SPDX-License-Identifier: Apache-2.0
//! KVM GSI routing: the legacy IOAPIC/PIC pins plus MSI routes that devices
//! program through their MSI/MSI-X capabilities. Each MSI vector gets its own
//! GSI; an irqfd on that GSI lets a backend interrupt the guest without the VMM.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::lock;
use crate::pci::MsiMessage;

/// Number of IOAPIC pins; GSIs below this are the legacy lines.
pub const IOAPIC_PINS: u32 = 24;

/// Errors from interrupt routing.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    /// All GSIs are in use.
    #[error("no free GSI left (KVM allows {0} routes)")]
    Exhausted(u32),
    /// KVM rejected the routing table or an irqfd.
    #[error("KVM interrupt routing: {0}")]
    Kvm(#[from] kvm_ioctls::Error),
    /// Building the routing table failed.
    #[error("routing table too large")]
    Table,
}

struct RoutingState {
    msi: BTreeMap<u32, MsiMessage>,
    free: Vec<u32>,
    next: u32,
}

/// The VM's GSI routing table.
pub struct IrqRouting {
    vm: Arc<VmFd>,
    max_routes: u32,
    state: Mutex<RoutingState>,
}

impl IrqRouting {
    /// Routing for `vm` with the legacy pins installed.
    pub fn new(vm: Arc<VmFd>) -> Result<Self, InterruptError> {
        let max = vm.check_extension_int(kvm_ioctls::Cap::IrqRouting);
        let routing = Self {
            vm,
            max_routes: u32::try_from(max).unwrap_or(0).max(IOAPIC_PINS + 1),
            state: Mutex::new(RoutingState {
                msi: BTreeMap::new(),
                free: Vec::new(),
                next: IOAPIC_PINS,
            }),
        };
        routing.commit(&lock(&routing.state))?;
        Ok(routing)
    }

    /// Reserves a GSI for an MSI vector.
    pub fn allocate_gsi(&self) -> Result<u32, InterruptError> {
        let mut st = lock(&self.state);
        if let Some(gsi) = st.free.pop() {
            return Ok(gsi);
        }
        if st.next >= self.max_routes {
            return Err(InterruptError::Exhausted(self.max_routes));
        }
        st.next += 1;
        Ok(st.next - 1)
    }

    /// Points `gsi` at `msg` (installing or updating the route).
    pub fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> Result<(), InterruptError> {
        let mut st = lock(&self.state);
        if st.msi.get(&gsi) == Some(&msg) {
            return Ok(());
        }
        st.msi.insert(gsi, msg);
        self.commit(&st)
    }

    /// Removes the route of `gsi` and returns the GSI to the pool.
    pub fn release_gsi(&self, gsi: u32) -> Result<(), InterruptError> {
        let mut st = lock(&self.state);
        let had_route = st.msi.remove(&gsi).is_some();
        if gsi >= IOAPIC_PINS && !st.free.contains(&gsi) {
            st.free.push(gsi);
        }
        if had_route {
            self.commit(&st)?;
        }
        Ok(())
    }

    /// Binds `evt` to `gsi`: a write to the eventfd injects the interrupt.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), InterruptError> {
        Ok(self.vm.register_irqfd(evt, gsi)?)
    }

    /// Unbinds `evt` from `gsi`.
    pub fn unregister_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), InterruptError> {
        Ok(self.vm.unregister_irqfd(evt, gsi)?)
    }

    fn commit(&self, st: &RoutingState) -> Result<(), InterruptError> {
        let mut entries = legacy_routes();
        for (&gsi, msg) in &st.msi {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = msg.address_lo;
            e.u.msi.address_hi = msg.address_hi;
            e.u.msi.data = msg.data;
            entries.push(e);
        }
        let table = KvmIrqRouting::from_entries(&entries).map_err(|_| InterruptError::Table)?;
        self.vm.set_gsi_routing(&table)?;
        Ok(())
    }
}

fn irqchip_route(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

/// KVM's default routes: GSI 0–15 to both PICs and the IOAPIC, 16–23 to the IOAPIC.
fn legacy_routes() -> Vec<kvm_irq_routing_entry> {
    let mut v = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        if gsi < 8 {
            v.push(irqchip_route(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
        } else if gsi < 16 {
            v.push(irqchip_route(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
        }
        v.push(irqchip_route(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_table_shape() {
        let r = legacy_routes();
        assert_eq!(r.len(), 16 + 24);
        assert!(r.iter().all(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP));
    }
}
