// SPDX-License-Identifier: Apache-2.0
//! Hardware-reduced ACPI sleep and reset registers: `poweroff` in the guest
//! writes SLP_TYP=S5|SLP_EN here, `reboot` writes the reset value; and the
//! power button the VMM presses (`vm.shutdown`).

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;
use crate::error::Error;
use crate::layout;
use crate::vstate::exit::{ExitSignal, GuestExit};
use crate::vstate::interrupts::IrqRouting;

/// The ACPI power button. Hardware-reduced ACPI has no fixed power button:
/// the DSDT describes a control-method button (`\_SB_.PWRB`, PNP0C0C) and a
/// Generic Event Device (`\_SB_.GED_`, ACPI0013) whose interrupt is
/// [`layout::GED_GSI`]; its `_EVT` method notifies the button (0x80, pressed),
/// which Linux's button driver reports as KEY_POWER.
pub struct PowerButton {
    irq: EventFd,
}

impl PowerButton {
    /// A button raising GSI [`layout::GED_GSI`] through an irqfd.
    pub fn new(routing: &IrqRouting) -> Result<Self, Error> {
        let irq = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(Error::Io)?;
        routing.register_irqfd(&irq, layout::GED_GSI)?;
        Ok(Self { irq })
    }

    /// Press the button: one edge on the GED's interrupt.
    pub fn press(&self) -> std::io::Result<()> {
        self.irq.write(1)
    }
}

/// The SLP_TYP value the DSDT's `_S5` package advertises.
pub const S5_SLEEP_TYPE: u8 = 5;
const SLP_EN: u8 = 1 << 5;

/// Sleep control (offset 0), sleep status (1) and reset (2) registers.
pub struct AcpiPower {
    exit: Arc<ExitSignal>,
}

impl AcpiPower {
    /// Number of ports starting at [`layout::ACPI_SLEEP_CONTROL_PORT`].
    pub const PORTS: u64 = 3;

    /// Registers that report power-off and reset on `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl BusDevice for AcpiPower {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        tracing::trace!("ACPI power register +{offset}: {value:#x}");
        let port = layout::ACPI_SLEEP_CONTROL_PORT as u64 + offset;
        if port == layout::ACPI_SLEEP_CONTROL_PORT as u64
            && value & SLP_EN != 0
            && (value >> 2) & 0x7 == S5_SLEEP_TYPE
        {
            self.exit.request(GuestExit::PowerOff);
        } else if port == layout::ACPI_RESET_PORT as u64 && value == layout::ACPI_RESET_VALUE {
            self.exit.request(GuestExit::Reset("ACPI reset register"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off_and_reset_resets() {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut pm = AcpiPower::new(exit.clone());
        pm.write(0, &[(S5_SLEEP_TYPE << 2)]); // SLP_EN missing
        assert_eq!(exit.reason(), None);
        pm.write(0, &[(S5_SLEEP_TYPE << 2) | SLP_EN]);
        assert_eq!(exit.reason(), Some(GuestExit::PowerOff));

        let exit = Arc::new(ExitSignal::new().unwrap());
        let mut pm = AcpiPower::new(exit.clone());
        pm.write(2, &[layout::ACPI_RESET_VALUE]);
        assert!(matches!(exit.reason(), Some(GuestExit::Reset(_))));
    }
}
