// SPDX-License-Identifier: Apache-2.0
//! MSI-X for the VMM's emulated PCI functions: the shared table, PBA and
//! capability of the `pci` crate, plus the KVM side, one GSI per vector whose
//! MSI route follows the guest's table entry. Each device decides how a
//! vector fires (virtio: irqfds bound to [`MsixRoutes::gsi`]; NVMe:
//! KVM_SIGNAL_MSI with the entry's message).

use std::sync::Arc;

pub use ::pci::msix::{MsixCapability, MsixTable, CTRL_ENABLE, CTRL_FUNCTION_MASK, MSIX_CAP_ID};

use crate::vstate::interrupts::{InterruptError, IrqRouting};

/// One KVM GSI per vector, routed to the vector's current message.
pub struct MsixRoutes {
    routing: Arc<IrqRouting>,
    gsis: Vec<u32>,
}

impl MsixRoutes {
    /// Allocates `vectors` GSIs.
    pub fn new(routing: Arc<IrqRouting>, vectors: u16) -> Result<Self, InterruptError> {
        let mut gsis = Vec::new();
        for _ in 0..vectors {
            match routing.allocate_gsi() {
                Ok(g) => gsis.push(g),
                Err(e) => {
                    for g in gsis {
                        let _ = routing.release_gsi(g);
                    }
                    return Err(e);
                }
            }
        }
        Ok(Self { routing, gsis })
    }

    /// The GSI of `vector`.
    pub fn gsi(&self, vector: u16) -> Option<u32> {
        self.gsis.get(usize::from(vector)).copied()
    }

    /// Points the vector's GSI at the entry's message.
    pub fn update(&self, table: &MsixTable, vector: u16) {
        if let (Some(gsi), Some(e)) = (self.gsi(vector), table.entry(vector)) {
            if let Err(e) = self.routing.set_msi_route(gsi, e.msg) {
                tracing::warn!("MSI-X vector {vector}: cannot route GSI {gsi}: {e}");
            }
        }
    }

    /// The routing table (for irqfd registration).
    pub fn routing(&self) -> &IrqRouting {
        &self.routing
    }
}

impl Drop for MsixRoutes {
    fn drop(&mut self) {
        for &g in &self.gsis {
            let _ = self.routing.release_gsi(g);
        }
    }
}
