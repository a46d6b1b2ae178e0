// SPDX-License-Identifier: Apache-2.0
//! The virtio-pci transport's guest-facing registers: a script of accesses to the common
//! configuration (feature selects and words, status, queue select, size, vectors, ring
//! addresses, enable, reset), to an MSI-X table and PBA (entries, masks, function mask
//! and enable through the capability's message control), and to a PCI configuration space
//! laid out as the transport's (BARs, an MSI-X capability, vendor capabilities), with
//! every access width and alignment. Queue rings a driver enables are checked against
//! guest memory as at DRIVER_OK.

#![no_main]

use iovmm_fuzz::{guest_memory, Input};
use libfuzzer_sys::fuzz_target;
use pci::msix::{MsixCapability, MsixTable};
use vmm::devices::virtio::transport::common_cfg::{CommonCfg, CommonEvent};
use vmm::pci::config::{Bar, PciConfig, PciIds};

const VECTORS: u16 = 5;

fn config_space() -> PciConfig {
    let mut cfg = PciConfig::new(PciIds {
        vendor: 0x1af4,
        device: 0x1042,
        class: 0x01_80_00,
        revision: 1,
        subsystem_vendor: 0x1af4,
        subsystem: 0x40,
    });
    cfg.add_bar(
        Bar {
            index: 0,
            size: 0x4000,
            is_64bit: true,
        },
        0x1_0000_0000,
    );
    cfg.add_bar(
        Bar {
            index: 2,
            size: 0x1000,
            is_64bit: false,
        },
        0xe000_0000,
    );
    let msix = MsixCapability::from_registers(VECTORS - 1, 0x2000, 0x3000);
    cfg.add_msix_capability(&msix);
    cfg.add_capability(
        0x09,
        &[16, 1, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0x38, 0],
        &[0],
    );
    cfg
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mem = guest_memory();
    let features = input.u64();
    let queues = u16::from(input.u8() % 4) + 1;
    let mut common = CommonCfg::new(features, queues, 256, VECTORS);
    let mut table = MsixTable::new(VECTORS);
    let mut cfg = config_space();
    while !input.is_empty() {
        let op = input.u8();
        let offset = u64::from(input.u16());
        let len = [1usize, 2, 4, 8][usize::from(op >> 6)];
        let value = input.u64().to_le_bytes();
        let data = &value[..len];
        match op % 6 {
            0 => {
                let offset = offset % 0x40;
                if let Some(CommonEvent::DriverOk) = common.write(offset, data) {
                    for q in &common.queues {
                        let _ = q.ring_snapshot(&mem);
                    }
                }
            }
            1 => {
                let mut out = [0u8; 8];
                common.read(offset % 0x40, &mut out[..len]);
            }
            2 => {
                if let Some(vector) = table.write_table(offset % 0x60, data) {
                    assert!(vector < VECTORS, "write_table reported vector {vector}");
                    let _ = table.active_message(vector);
                }
            }
            3 => {
                let mut out = [0u8; 8];
                let _ = table.read_table(offset % 0x60, &mut out[..len]);
                table.read_pba(offset % 16, &mut out[..len], |_| false);
                table.set_pending(offset as u16 % (VECTORS + 1), op & 1 != 0);
                table.set_control(value[0] as u16 | (value[1] as u16) << 8);
            }
            4 => cfg.write((offset as usize >> 2) % 80, offset & 3, data),
            _ => {
                let _ = cfg.read(offset as usize % 80);
                let _ = table.deliverable(offset as u16 % (VECTORS + 1));
            }
        }
    }
});
