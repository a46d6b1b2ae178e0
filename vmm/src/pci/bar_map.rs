// SPDX-License-Identifier: Apache-2.0
//! Keeping a trapped memory BAR's MMIO-bus range in step with what the guest
//! programs (BAR address, memory decode in the command register).

use std::sync::{Mutex, Weak};

use super::config::{Bar, PciConfig, COMMAND_MEMORY, COMMAND_REG};
use crate::devices::bus::BusDevice;
use crate::vstate::vcpu::IoBuses;

/// Where one BAR of device `D` is mapped on the MMIO bus.
pub struct BarMapping<D> {
    mapped: Option<u64>,
    dev: Weak<Mutex<D>>,
    name: &'static str,
}

impl<D: BusDevice + 'static> BarMapping<D> {
    /// Not mapped yet; `dev` is the device itself, `name` is for logs.
    pub fn new(dev: Weak<Mutex<D>>, name: &'static str) -> Self {
        Self {
            mapped: None,
            dev,
            name,
        }
    }

    /// Maps, moves or unmaps `bar` after the command register or the BAR
    /// changed; `defer` when called under a bus lock (a config write).
    /// Returns `(old, new)` addresses when the mapping changed.
    pub fn update(
        &mut self,
        config: &PciConfig,
        bar: &Bar,
        buses: &IoBuses,
        defer: bool,
    ) -> Option<(Option<u64>, Option<u64>)> {
        let addr = config.bar_addr(bar);
        let size = bar.size;
        let decode = config.read(COMMAND_REG) & COMMAND_MEMORY != 0;
        let valid = addr != 0 && addr.checked_add(size).is_some();
        let want = (decode && valid).then_some(addr);
        if want == self.mapped {
            return None;
        }
        let old = self.mapped.take();
        self.mapped = want;
        let me = self.dev.clone();
        let name = self.name;
        let op = move |buses: &IoBuses| {
            let mut mmio = buses.mmio.write().unwrap_or_else(|p| p.into_inner());
            if let Some(old) = old {
                mmio.remove(old);
            }
            if let (Some(new), Some(dev)) = (want, me.upgrade()) {
                if let Err(e) = mmio.insert(dev, new, size) {
                    tracing::warn!("{name} BAR at {new:#x} not mapped: {e}");
                }
            }
        };
        if defer {
            buses.defer(Box::new(op));
        } else {
            op(buses);
        }
        Some((old, want))
    }
}
