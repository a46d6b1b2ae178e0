// SPDX-License-Identifier: Apache-2.0
//! The emulated e1000 (82540EM) as a hostile driver programs it: a sequence of register
//! writes and reads (reset, EEPROM and PHY access, interrupt masks, receive and transmit
//! ring base, length, head and tail) and frames arriving from the host, against transmit
//! and receive descriptor rings and packet buffers the fuzzer fills in guest memory.

#![no_main]

use iovmm_fuzz::{guest_memory, Input, DATA};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};
use vmm::devices::e1000::nic::{reg, BAR_SIZE, MAX_FRAME};
use vmm::devices::e1000::{Irq, NetSink, E1000};

/// Counts what the NIC sends and checks each frame's size.
struct Sink(usize);

impl NetSink for Sink {
    fn send(&mut self, frame: &[u8]) {
        assert!(
            frame.len() <= MAX_FRAME,
            "sent a {}-byte frame",
            frame.len()
        );
        self.0 += 1;
    }
}

struct Line(u64);

impl Irq for Line {
    fn trigger(&mut self) {
        self.0 += 1;
    }
}

/// Registers a driver programs, so that most writes hit one.
const REGS: [u64; 21] = [
    reg::CTRL,
    reg::STATUS,
    reg::EECD,
    reg::EERD,
    reg::MDIC,
    reg::ICR,
    reg::ICS,
    reg::IMS,
    reg::IMC,
    reg::RCTL,
    reg::TCTL,
    reg::RDBAL,
    reg::RDBAH,
    reg::RDLEN,
    reg::RDH,
    reg::RDT,
    reg::TDBAL,
    reg::TDBAH,
    reg::TDLEN,
    reg::TDT,
    reg::TDH,
];

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mem = guest_memory();
    let ops = usize::from(input.u8() % 64);
    let script = input.bytes(ops * 7);
    // Rings and buffers: whatever the fuzzer puts after the script.
    let _ = mem.write_slice(input.rest(), GuestAddress(DATA));
    let mut nic = E1000::new([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    let (mut sink, mut line) = (Sink(0), Line(0));
    let mut ops = Input::new(script);
    while !ops.is_empty() {
        let op = ops.u8();
        let sel = ops.u16();
        let value = ops.u32();
        let offset = if sel & 0x8000 == 0 {
            REGS[usize::from(sel) % REGS.len()]
        } else {
            u64::from(sel & 0x7fff) * 4 % (BAR_SIZE + 8)
        };
        match op % 4 {
            0 | 1 => nic.write(&mem, &mut sink, &mut line, offset, &value.to_le_bytes()),
            2 => {
                let mut out = [0u8; 4];
                nic.read(offset, &mut out);
            }
            _ => {
                let len = (value as usize) % (MAX_FRAME + 64);
                let frame = vec![op; len];
                nic.receive(&mem, &mut line, &frame);
            }
        }
    }
});
