// SPDX-License-Identifier: Apache-2.0
//! Controller tests, most of them a hostile guest: bad doorbells, queue IDs
//! and sizes, PRPs, namespaces and opcodes must get the status the spec
//! prescribes and never a panic. This file is the guest-side harness.

mod admin_tests;
mod io_tests;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::admin::op as aop;
use super::ctrl::{Controller, Interrupts, Namespace, Storage, DOORBELL_BASE};
use super::io::op as iop;
use super::prp::Prps;
use super::regs::{self, CSTS_CFS, CSTS_RDY};
use super::{Status, PAGE_SIZE};

const MEM: u64 = 1 << 20;
const ASQ: u64 = 0x10000;
const ACQ: u64 = 0x11000;
const IOSQ: u64 = 0x12000;
const IOCQ: u64 = 0x13000;
const DATA: u64 = 0x20000;
const LIST: u64 = 0x30000;
const BLOCKS: u64 = 2048;
const ADMIN_ENTRIES: u16 = 8;

#[derive(Default)]
struct Irqs(Vec<u16>);

impl Interrupts for Irqs {
    fn signal(&mut self, vector: u16) {
        self.0.push(vector);
    }
}

/// A completion entry as the guest sees it.
#[derive(Debug)]
struct Cqe {
    dw0: u32,
    sqid: u16,
    cid: u16,
    phase: bool,
    status: Status,
}

struct Guest {
    ctrl: Controller,
    mem: GuestMemoryMmap,
    irq: Irqs,
    file: tempfile::NamedTempFile,
    /// Per queue ID: next SQ tail, next CQ head, expected phase.
    sq_tail: [u16; 3],
    cq_head: [u16; 3],
    sizes: [u16; 3],
    next_cid: u16,
}

fn guest_with(readonly: bool) -> Guest {
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(BLOCKS * 512).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file.path())
        .unwrap();
    guest_on(guest_memory(), Box::new(f), file, readonly)
}

fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
}

/// A guest on `mem` whose namespace is `storage` (over `file`).
fn guest_on(
    mem: GuestMemoryMmap,
    storage: Box<dyn Storage>,
    file: tempfile::NamedTempFile,
    readonly: bool,
) -> Guest {
    let ns = Namespace {
        storage,
        blocks: BLOCKS,
        readonly,
    };
    let ctrl = Controller::new(ns, 2, 3, "T1".into());
    let mut g = Guest {
        ctrl,
        mem,
        irq: Irqs::default(),
        file,
        sq_tail: [0; 3],
        cq_head: [0; 3],
        sizes: [ADMIN_ENTRIES, 0, 0],
        next_cid: 1,
    };
    let a = u32::from(ADMIN_ENTRIES - 1);
    g.reg32(regs::AQA, a << 16 | a);
    g.reg64(regs::ASQ, ASQ);
    g.reg64(regs::ACQ, ACQ);
    g.reg32(regs::CC, 1 | 6 << 16 | 4 << 20);
    g
}

fn guest() -> Guest {
    guest_with(false)
}

impl Guest {
    fn reg32(&mut self, off: u64, v: u32) {
        self.ctrl
            .mmio_write(&self.mem, &mut self.irq, off, &v.to_le_bytes());
    }
    fn reg64(&mut self, off: u64, v: u64) {
        self.ctrl
            .mmio_write(&self.mem, &mut self.irq, off, &v.to_le_bytes());
    }
    fn read32(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.ctrl.mmio_read(off, &mut b);
        u32::from_le_bytes(b)
    }
    fn doorbell(&mut self, index: u64, v: u32) {
        self.reg32(DOORBELL_BASE + index * 4, v);
    }

    /// Submits `dw` (CID filled in) on queue `qid` and returns its completion.
    fn cmd(&mut self, qid: usize, mut dw: [u32; 16]) -> Cqe {
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1);
        dw[0] |= u32::from(cid) << 16;
        let base = if qid == 0 { ASQ } else { IOSQ };
        let mut raw = [0u8; 64];
        for (i, d) in dw.iter().enumerate() {
            raw[i * 4..i * 4 + 4].copy_from_slice(&d.to_le_bytes());
        }
        let slot = u64::from(self.sq_tail[qid]) * 64;
        self.mem
            .write_slice(&raw, GuestAddress(base + slot))
            .unwrap();
        self.sq_tail[qid] = (self.sq_tail[qid] + 1) % self.sizes[qid];
        self.doorbell(2 * qid as u64, u32::from(self.sq_tail[qid]));
        let e = self.pop(qid).expect("no completion");
        assert_eq!(e.cid, cid);
        e
    }

    /// Takes the next completion of CQ `qid` if its phase says it is new.
    fn pop(&mut self, qid: usize) -> Option<Cqe> {
        let base = if qid == 0 { ACQ } else { IOCQ };
        let head = self.cq_head[qid];
        let mut e = [0u8; 16];
        self.mem
            .read_slice(&mut e, GuestAddress(base + u64::from(head) * 16))
            .unwrap();
        let dw = |i: usize| u32::from_le_bytes(e[i * 4..i * 4 + 4].try_into().unwrap());
        let dw3 = dw(3);
        // Expected phase: 1 on the first pass, flipping on each wrap.
        let phase = dw3 & (1 << 16) != 0;
        if dw3 == 0 && dw(2) == 0 {
            return None;
        }
        let field = (dw3 >> 17) as u16;
        let cqe = Cqe {
            dw0: dw(0),
            sqid: (dw(2) >> 16) as u16,
            cid: dw3 as u16,
            phase,
            status: Status {
                sc: field as u8,
                sct: ((field >> 8) & 7) as u8,
            },
        };
        self.mem
            .write_slice(&[0u8; 16], GuestAddress(base + u64::from(head) * 16))
            .unwrap();
        self.cq_head[qid] = (head + 1) % self.sizes[qid];
        self.doorbell(2 * qid as u64 + 1, u32::from(self.cq_head[qid]));
        Some(cqe)
    }

    fn admin(&mut self, dw: [u32; 16]) -> Cqe {
        self.cmd(0, dw)
    }

    fn create_io_queues(&mut self, entries: u16) {
        let q = u32::from(entries - 1) << 16 | 1;
        let mut c = cmd(aop::CREATE_CQ, 0);
        set_prp(&mut c, IOCQ, 0);
        c[10] = q;
        c[11] = 1 << 16 | 3; // vector 1, IEN, PC
        assert_eq!(self.admin(c).status, Status::SUCCESS);
        let mut c = cmd(aop::CREATE_SQ, 0);
        set_prp(&mut c, IOSQ, 0);
        c[10] = q;
        c[11] = 1 << 16 | 1; // CQ 1, PC
        assert_eq!(self.admin(c).status, Status::SUCCESS);
        self.sizes[1] = entries;
    }

    fn rw(&mut self, opcode: u8, slba: u64, blocks: u32, prp1: u64, prp2: u64) -> Status {
        let mut c = cmd(opcode, 1);
        set_prp(&mut c, prp1, prp2);
        c[10] = slba as u32;
        c[11] = (slba >> 32) as u32;
        c[12] = blocks - 1;
        self.cmd(1, c).status
    }
}

fn cmd(opcode: u8, nsid: u32) -> [u32; 16] {
    let mut c = [0u32; 16];
    c[0] = u32::from(opcode);
    c[1] = nsid;
    c
}

fn set_prp(c: &mut [u32; 16], prp1: u64, prp2: u64) {
    c[6] = prp1 as u32;
    c[7] = (prp1 >> 32) as u32;
    c[8] = prp2 as u32;
    c[9] = (prp2 >> 32) as u32;
}

fn identify(g: &mut Guest, cns: u32, nsid: u32) -> (Status, Vec<u8>) {
    let mut c = cmd(aop::IDENTIFY, nsid);
    set_prp(&mut c, DATA, 0);
    c[10] = cns;
    let s = g.admin(c).status;
    let mut b = vec![0u8; 4096];
    g.mem.read_slice(&mut b, GuestAddress(DATA)).unwrap();
    (s, b)
}
