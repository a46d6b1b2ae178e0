// SPDX-License-Identifier: Apache-2.0
//! Just enough of the i8042 keyboard controller for the CPU-reset command
//! (Linux's `reboot=k` path and the fallback of every reboot).

use std::sync::Arc;

use super::bus::BusDevice;
use crate::vstate::exit::{ExitSignal, GuestExit};

const STATUS_OFFSET: u64 = 4; // port 0x64 relative to 0x60
const CMD_RESET_CPU: u8 = 0xfe;

/// The i8042 at ports 0x60–0x64.
pub struct I8042 {
    exit: Arc<ExitSignal>,
}

impl I8042 {
    /// A controller that reports a reset command on `exit`.
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        Self { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Output buffer empty, input buffer empty: nothing to read, ready for commands.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        tracing::trace!("i8042 write at +{offset}: {data:x?}");
        if offset == STATUS_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.exit.request(GuestExit::Reset("i8042 reset command"));
        }
    }
}
