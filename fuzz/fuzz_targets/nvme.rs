// SPDX-License-Identifier: Apache-2.0
//! The emulated NVMe controller as a hostile driver programs it. The harness enables the
//! controller with an admin queue pair the fuzzer sizes, in guest memory the fuzzer fills
//! (submission entries, PRP lists, data); then a script of register writes (CC, AQA,
//! ASQ, ACQ, interrupt masks), register reads and doorbell writes (submission tails,
//! completion heads, any queue ID) runs the admin commands (create/delete queues, identify,
//! features, log pages, abort) and the I/O commands (read, write with FUA, flush, dataset
//! management) with PRP1/PRP2 and PRP lists against a memfd namespace.

#![no_main]

use iovmm_fuzz::{guest_memory, memfd, Input, DATA, MEM_SIZE};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};
use vmm::devices::nvme::ctrl::DOORBELL_BASE;
use vmm::devices::nvme::regs;
use vmm::devices::nvme::{Controller, Interrupts, Namespace};

/// Namespace size: 256 KiB (512 blocks).
const NS_BYTES: u64 = 256 << 10;
/// Admin submission and completion queues (in the fuzzer-filled area).
const ASQ: u64 = DATA;
const ACQ: u64 = DATA + 0x1000;

struct Vectors(u64);

impl Interrupts for Vectors {
    fn signal(&mut self, _vector: u16) {
        self.0 += 1;
    }
}

/// Registers a driver writes, so that most script writes hit one.
const REGS: [u64; 8] = [
    regs::INTMS,
    regs::INTMC,
    regs::CC,
    regs::CSTS,
    regs::AQA,
    regs::ASQ,
    regs::ACQ,
    regs::ACQ + 4,
];

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let admin_entries = u32::from(input.u8() % 64).max(2);
    let io_queues = u16::from(input.u8() % 4) + 1;
    let readonly = input.u8() & 1 != 0;
    let steps = usize::from(input.u8() % 48);
    let script = input.bytes(steps * 7);
    let mem = guest_memory();
    let _ = mem.write_slice(input.rest(), GuestAddress(DATA));
    let ns = Namespace {
        storage: Box::new(memfd(NS_BYTES)),
        blocks: NS_BYTES / 512,
        readonly,
    };
    let mut ctrl = Controller::new(ns, io_queues, io_queues + 1, "FUZZ".into());
    let mut irq = Vectors(0);
    let write = |ctrl: &mut Controller, irq: &mut Vectors, off: u64, v: &[u8]| {
        ctrl.mmio_write(&mem, irq, off, v);
    };
    let a = admin_entries - 1;
    write(&mut ctrl, &mut irq, regs::AQA, &(a << 16 | a).to_le_bytes());
    write(&mut ctrl, &mut irq, regs::ASQ, &ASQ.to_le_bytes());
    write(&mut ctrl, &mut irq, regs::ACQ, &ACQ.to_le_bytes());
    write(
        &mut ctrl,
        &mut irq,
        regs::CC,
        &(1u32 | 6 << 16 | 4 << 20).to_le_bytes(),
    );
    let mut ops = Input::new(script);
    while !ops.is_empty() {
        let op = ops.u8();
        let sel = ops.u16();
        let value = ops.u32();
        match op % 5 {
            // Doorbells: 2 per queue (SQ tail, CQ head), queue IDs past the last one too.
            0..=2 => {
                let off = DOORBELL_BASE + 4 * u64::from(sel % 16);
                write(&mut ctrl, &mut irq, off, &(value % 80).to_le_bytes());
            }
            3 => {
                let off = if sel & 0x8000 == 0 {
                    REGS[usize::from(sel) % REGS.len()]
                } else {
                    u64::from(sel & 0x7fff) % (DOORBELL_BASE + 0x100)
                };
                let len = [1usize, 2, 4, 8][usize::from(op >> 6)];
                let bytes =
                    (u64::from(value) | u64::from(value) << 32 & (MEM_SIZE - 1)).to_le_bytes();
                write(&mut ctrl, &mut irq, off, &bytes[..len]);
            }
            _ => {
                let mut out = [0u8; 8];
                let len = [1usize, 2, 4, 8][usize::from(op >> 6)];
                ctrl.mmio_read(u64::from(sel) % (DOORBELL_BASE + 0x100), &mut out[..len]);
            }
        }
    }
});
