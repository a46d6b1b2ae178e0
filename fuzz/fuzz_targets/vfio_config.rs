// SPDX-License-Identifier: Apache-2.0
//! VFIO config-space write routing: a passed-through device's configuration space (the
//! fuzzer's bytes: header, capability list with MSI and MSI-X, region sizes) is parsed
//! into the model, then a script of guest writes and reads of every width and alignment is
//! routed (BARs and the expansion ROM emulated, MSI emulated or hidden, MSI-X message
//! control, the command register, everything else forwarded).

#![no_main]

use iovmm_fuzz::Input;
use libfuzzer_sys::fuzz_target;
use vfio::config::{ConfigModel, WriteAction};

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut raw = [0u8; 256];
    let header = input.bytes(256);
    raw[..header.len()].copy_from_slice(header);
    let mut sizes = [0u64; 6];
    for s in &mut sizes {
        let shift = input.u8() % 40;
        *s = if shift < 4 { 0 } else { 1u64 << shift };
    }
    let msi_supported = input.u8() & 1 != 0;
    let mut model = ConfigModel::new(&raw, sizes, msi_supported);
    for bar in model.bars().to_vec() {
        let _ = model.bar_addr(&bar);
        model.set_bar_addr(&bar, input.u64() & !0xfff);
    }
    let _ = (model.msix(), model.msi(), model.msi_hidden());
    while !input.is_empty() {
        let op = input.u8();
        let reg = usize::from(input.u8()) % 70;
        let offset = u64::from(op >> 4 & 3);
        let len = [1usize, 2, 4, 3][usize::from(op >> 6)];
        let value = input.u32().to_le_bytes();
        if op & 1 == 0 {
            match model.write(reg, offset, &value[..len], input.u32()) {
                WriteAction::MsixControl(_) | WriteAction::Msi => {
                    let _ = (model.msix(), model.msi());
                }
                WriteAction::Handled | WriteAction::Forward | WriteAction::Command => {}
            }
        } else if model.read_is_emulated(reg) {
            let _ = model.read(reg, input.u32(), input.u16());
        }
    }
});
