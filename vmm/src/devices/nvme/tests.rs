//! Controller tests, most of them a hostile guest: bad doorbells, queue IDs
//! and sizes, PRPs, namespaces and opcodes must get the status the spec
//! prescribes and never a panic.

use std::os::unix::fs::FileExt;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::admin::op as aop;
use super::ctrl::{Controller, Interrupts, Namespace, DOORBELL_BASE};
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
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(BLOCKS * 512).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file.path())
        .unwrap();
    let ns = Namespace {
        file: f,
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

#[test]
fn registers_and_enable() {
    let mut g = guest();
    let mut cap = [0u8; 8];
    g.ctrl.mmio_read(regs::CAP, &mut cap);
    let cap = u64::from_le_bytes(cap);
    assert_eq!(cap & 0xffff, 1023, "MQES");
    assert_eq!((cap >> 32) & 0xf, 0, "doorbell stride 0");
    assert_ne!(cap & (1 << 37), 0, "NVM command set");
    assert_eq!(g.read32(regs::VS), 0x0001_0400);
    assert_eq!(g.read32(regs::CSTS) & CSTS_RDY, CSTS_RDY);
    // Odd-sized and doorbell reads are harmless.
    let mut b = [0xffu8; 3];
    g.ctrl.mmio_read(0x14, &mut b);
    assert_eq!(b, [0, 0, 0]);
    assert_eq!(g.read32(DOORBELL_BASE), 0);
    // Shutdown, then disable: ready clears.
    g.reg32(regs::CC, 1 | 1 << 14 | 6 << 16 | 4 << 20);
    assert_eq!(g.read32(regs::CSTS) & 0xc, 0x8, "shutdown complete");
    g.reg32(regs::CC, 0);
    assert_eq!(g.read32(regs::CSTS), 0);
    // Enabling with an admin queue outside guest memory is fatal, not a panic.
    g.reg64(regs::ASQ, MEM + PAGE_SIZE);
    g.reg32(regs::CC, 1);
    assert_eq!(g.read32(regs::CSTS), CSTS_CFS);
}

#[test]
fn identify_controller_namespace_and_lists() {
    let mut g = guest();
    let (s, id) = identify(&mut g, 1, 0);
    assert_eq!(s, Status::SUCCESS);
    assert_eq!(id[77], super::MDTS);
    assert_eq!(
        u32::from_le_bytes(id[516..520].try_into().unwrap()),
        1,
        "NN"
    );
    assert_eq!(&id[4..6], b"T1");
    let (s, ns) = identify(&mut g, 0, 1);
    assert_eq!(s, Status::SUCCESS);
    assert_eq!(u64::from_le_bytes(ns[0..8].try_into().unwrap()), BLOCKS);
    assert_eq!(ns[130], 9, "LBADS");
    let (s, list) = identify(&mut g, 2, 0);
    assert_eq!(s, Status::SUCCESS);
    assert_eq!(&list[0..8], &[1, 0, 0, 0, 0, 0, 0, 0]);
    let (_, list) = identify(&mut g, 2, 1);
    assert!(list.iter().all(|&b| b == 0));
    assert_eq!(identify(&mut g, 3, 1).0, Status::SUCCESS);
    // Nonexistent namespaces and unknown CNS values.
    for nsid in [0, 2, 0xffff_fffe, u32::MAX] {
        assert_eq!(identify(&mut g, 0, nsid).0, Status::INVALID_NAMESPACE);
    }
    assert_eq!(identify(&mut g, 3, 7).0, Status::INVALID_NAMESPACE);
    assert_eq!(identify(&mut g, 2, u32::MAX).0, Status::INVALID_NAMESPACE);
    assert_eq!(identify(&mut g, 0x55, 0).0, Status::INVALID_FIELD);
}

#[test]
fn bad_doorbells_are_ignored_and_reported() {
    let mut g = guest();
    // An outstanding Asynchronous Event Request collects the report.
    let mut aer = cmd(aop::ASYNC_EVENT, 0);
    aer[0] |= 0x77 << 16;
    let raw: Vec<u8> = aer.iter().flat_map(|d| d.to_le_bytes()).collect();
    g.mem.write_slice(&raw, GuestAddress(ASQ)).unwrap();
    g.sq_tail[0] = 1;
    g.doorbell(0, 1);
    assert!(g.pop(0).is_none(), "AER completes only on an event");
    g.doorbell(2 * 5, 1); // SQ 5 does not exist
    let e = g.pop(0).expect("AER completion");
    assert_eq!((e.cid, e.status, e.dw0 & 0xff), (0x77, Status::SUCCESS, 0));
    assert_eq!((e.dw0 >> 8) & 0xff, 0, "invalid doorbell register");
    // More garbage with no AER outstanding: counted, nothing posted.
    g.doorbell(2 * 3 + 1, 0); // CQ 3
    g.doorbell(0x3ff, 0); // far past the last queue
    g.doorbell(0, u32::from(ADMIN_ENTRIES)); // tail past the size
    g.doorbell(1, 0xffff_ffff); // head past the size
    g.ctrl
        .mmio_write(&g.mem, &mut g.irq, DOORBELL_BASE + 2, &[1, 0]);
    g.ctrl
        .mmio_write(&g.mem, &mut g.irq, DOORBELL_BASE, &[1; 8]);
    assert_eq!(g.ctrl.stats.bad_doorbells, 7);
    assert!(g.pop(0).is_none());
    // The admin queue still works.
    assert_eq!(identify(&mut g, 1, 0).0, Status::SUCCESS);
}

#[test]
fn queue_ids_sizes_and_vectors_are_validated() {
    let mut g = guest();
    let create = |g: &mut Guest, op: u8, qid: u32, qsize: u32, dw11: u32, base: u64| {
        let mut c = cmd(op, 0);
        set_prp(&mut c, base, 0);
        c[10] = qsize << 16 | qid;
        c[11] = dw11;
        g.admin(c).status
    };
    let cq = aop::CREATE_CQ;
    let sq = aop::CREATE_SQ;
    assert_eq!(create(&mut g, cq, 0, 15, 3, IOCQ), Status::INVALID_QUEUE_ID);
    assert_eq!(create(&mut g, cq, 3, 15, 3, IOCQ), Status::INVALID_QUEUE_ID);
    assert_eq!(
        create(&mut g, cq, 0xffff, 15, 3, IOCQ),
        Status::INVALID_QUEUE_ID
    );
    assert_eq!(
        create(&mut g, cq, 1, 0, 3, IOCQ),
        Status::INVALID_QUEUE_SIZE
    );
    assert_eq!(
        create(&mut g, cq, 1, 0xffff, 3, IOCQ),
        Status::INVALID_QUEUE_SIZE
    );
    assert_eq!(
        create(&mut g, cq, 1, 15, 2, IOCQ),
        Status::INVALID_FIELD,
        "PC=0"
    );
    assert_eq!(
        create(&mut g, cq, 1, 15, 3 | 3 << 16, IOCQ),
        Status::INVALID_VECTOR
    );
    assert_eq!(
        create(&mut g, cq, 1, 15, 3, IOCQ + 8),
        Status::PRP_OFFSET_INVALID
    );
    assert_eq!(
        create(&mut g, cq, 1, 15, 3, MEM - 64),
        Status::PRP_OFFSET_INVALID
    );
    assert_eq!(
        create(&mut g, cq, 1, 1023, 3, MEM - PAGE_SIZE),
        Status::DATA_TRANSFER_ERROR
    );
    assert_eq!(
        create(&mut g, sq, 1, 15, 1 | 1 << 16, IOSQ),
        Status::CQ_INVALID
    );
    assert_eq!(create(&mut g, cq, 1, 15, 3, IOCQ), Status::SUCCESS);
    assert_eq!(
        create(&mut g, cq, 1, 15, 3, IOCQ),
        Status::INVALID_QUEUE_ID,
        "exists"
    );
    assert_eq!(
        create(&mut g, sq, 1, 15, 1, IOSQ),
        Status::CQ_INVALID,
        "CQ 0 is admin"
    );
    assert_eq!(
        create(&mut g, sq, 1, 15, 1 | 9 << 16, IOSQ),
        Status::CQ_INVALID
    );
    assert_eq!(
        create(&mut g, sq, 5, 15, 1 | 1 << 16, IOSQ),
        Status::INVALID_QUEUE_ID
    );
    assert_eq!(
        create(&mut g, sq, 1, 0, 1 | 1 << 16, IOSQ),
        Status::INVALID_QUEUE_SIZE
    );
    assert_eq!(
        create(&mut g, sq, 1, 15, 1 | 1 << 16, IOSQ),
        Status::SUCCESS
    );
    let delete = |g: &mut Guest, op: u8, qid: u32| {
        let mut c = cmd(op, 0);
        c[10] = qid;
        g.admin(c).status
    };
    assert_eq!(
        delete(&mut g, aop::DELETE_CQ, 1),
        Status::INVALID_QUEUE_DELETION
    );
    assert_eq!(delete(&mut g, aop::DELETE_CQ, 0), Status::INVALID_QUEUE_ID);
    assert_eq!(delete(&mut g, aop::DELETE_CQ, 2), Status::INVALID_QUEUE_ID);
    assert_eq!(delete(&mut g, aop::DELETE_SQ, 0), Status::INVALID_QUEUE_ID);
    assert_eq!(
        delete(&mut g, aop::DELETE_SQ, 0xffff),
        Status::INVALID_QUEUE_ID
    );
    assert_eq!(delete(&mut g, aop::DELETE_SQ, 1), Status::SUCCESS);
    assert_eq!(delete(&mut g, aop::DELETE_CQ, 1), Status::SUCCESS);
    // A doorbell for the deleted queue is just a bad doorbell.
    g.doorbell(2, 1);
    assert_eq!(g.ctrl.stats.bad_doorbells, 1);
}

#[test]
fn read_write_with_prp2_and_prp_lists() {
    let mut g = guest();
    g.create_io_queues(16);
    // Two pages: PRP1 + PRP2.
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    g.mem
        .write_slice(&data[..4096], GuestAddress(DATA))
        .unwrap();
    g.mem
        .write_slice(&data[4096..], GuestAddress(DATA + 0x5000))
        .unwrap();
    assert_eq!(
        g.rw(iop::WRITE, 8, 16, DATA, DATA + 0x5000),
        Status::SUCCESS
    );
    let mut on_disk = vec![0u8; 8192];
    g.file
        .as_file()
        .read_exact_at(&mut on_disk, 8 * 512)
        .unwrap();
    assert_eq!(on_disk, data);
    // Five pages through a PRP list starting mid-page, PRP1 with an offset.
    let pages = [0x40000u64, 0x43000, 0x41000, 0x47000, 0x45000];
    for (i, p) in pages[1..].iter().enumerate() {
        g.mem
            .write_obj(*p, GuestAddress(LIST + 0x100 + i as u64 * 8))
            .unwrap();
    }
    let len = 4096 * 4 + 3584; // PRP1 starts 512 bytes into its page
    let pattern: Vec<u8> = (0..len as u32).map(|i| (i % 251) as u8).collect();
    g.file.as_file().write_all_at(&pattern, 100 * 512).unwrap();
    let status = g.rw(
        iop::READ,
        100,
        (len / 512) as u32,
        pages[0] + 512,
        LIST + 0x100,
    );
    assert_eq!(status, Status::SUCCESS);
    let mut got = vec![0u8; 3584];
    g.mem
        .read_slice(&mut got, GuestAddress(pages[0] + 512))
        .unwrap();
    assert_eq!(got, pattern[..3584]);
    let mut page = vec![0u8; 4096];
    for (i, p) in pages[1..].iter().enumerate() {
        g.mem.read_slice(&mut page, GuestAddress(*p)).unwrap();
        let start = 3584 + i * 4096;
        assert_eq!(page, pattern[start..start + 4096], "page {i}");
    }
    assert!(g.irq.0.contains(&1), "I/O completions raise vector 1");
    // Flush and a chained list (the last slot of a list page points on).
    let mut c = cmd(iop::FLUSH, 1);
    c[0] |= 0;
    assert_eq!(g.cmd(1, c).status, Status::SUCCESS);
}

#[test]
fn chained_prp_lists_and_hostile_prps() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    // List at the last slot of a page: that slot chains to the next list.
    let first = 0x30ff0;
    mem.write_obj(0x50000u64, GuestAddress(first)).unwrap();
    mem.write_obj(0x32000u64, GuestAddress(first + 8)).unwrap(); // chain
    mem.write_obj(0x51000u64, GuestAddress(0x32000)).unwrap();
    mem.write_obj(0x52000u64, GuestAddress(0x32008)).unwrap();
    let p = Prps::new(&mem, 0x60000, first, 4 * PAGE_SIZE).unwrap();
    let addrs: Vec<u64> = p.segments().iter().map(|s| s.addr).collect();
    assert_eq!(addrs, [0x60000, 0x50000, 0x51000, 0x52000]);
    assert_eq!(p.len(), 4 * PAGE_SIZE);
    // Misaligned PRP1, PRP2, list pointer and list entries.
    assert_eq!(
        Prps::new(&mem, 0x60001, 0, 512),
        Err(Status::PRP_OFFSET_INVALID)
    );
    assert_eq!(
        Prps::new(&mem, 0x60000, 0x61200, 8192),
        Err(Status::PRP_OFFSET_INVALID)
    );
    assert_eq!(
        Prps::new(&mem, 0x60000, 0x30004, 3 * PAGE_SIZE),
        Err(Status::PRP_OFFSET_INVALID)
    );
    mem.write_obj(0x50010u64, GuestAddress(0x34000)).unwrap();
    assert_eq!(
        Prps::new(&mem, 0x60000, 0x34000, 3 * PAGE_SIZE),
        Err(Status::PRP_OFFSET_INVALID)
    );
    // Outside guest memory: the data, the second page, the list, a list entry.
    assert_eq!(
        Prps::new(&mem, MEM, 0, 512),
        Err(Status::DATA_TRANSFER_ERROR)
    );
    assert_eq!(
        Prps::new(&mem, MEM - 512, MEM, 1024),
        Err(Status::DATA_TRANSFER_ERROR)
    );
    assert_eq!(
        Prps::new(&mem, 0x60000, !0xfff, 8192),
        Err(Status::DATA_TRANSFER_ERROR)
    );
    assert_eq!(
        Prps::new(&mem, 0x60000, MEM + 8, 3 * PAGE_SIZE),
        Err(Status::DATA_TRANSFER_ERROR)
    );
    mem.write_obj(MEM << 4, GuestAddress(0x35000)).unwrap();
    assert_eq!(
        Prps::new(&mem, 0x60000, 0x35000, 3 * PAGE_SIZE),
        Err(Status::DATA_TRANSFER_ERROR)
    );
    // A list page whose last slot chains to itself ends, it does not loop.
    mem.write_obj(0x36ff8u64, GuestAddress(0x36ff8)).unwrap();
    assert_eq!(
        Prps::new(&mem, 0x60000, 0x36ff8, 8 * PAGE_SIZE),
        Err(Status::DATA_TRANSFER_ERROR)
    );
}

#[test]
fn hostile_io_commands() {
    let mut g = guest();
    g.create_io_queues(16);
    // Nonexistent namespaces.
    for nsid in [0, 2, u32::MAX] {
        let mut c = cmd(iop::READ, nsid);
        set_prp(&mut c, DATA, 0);
        assert_eq!(g.cmd(1, c).status, Status::INVALID_NAMESPACE, "nsid {nsid}");
    }
    let mut c = cmd(iop::FLUSH, 9);
    c[0] |= 0;
    assert_eq!(g.cmd(1, c).status, Status::INVALID_NAMESPACE);
    // Unknown opcodes on both queue types.
    assert_eq!(g.cmd(1, cmd(0x55, 1)).status, Status::INVALID_OPCODE);
    assert_eq!(g.admin(cmd(0x7f, 0)).status, Status::INVALID_OPCODE);
    assert_eq!(
        g.admin(cmd(0x18, 0)).status,
        Status::INVALID_OPCODE,
        "keep alive"
    );
    // Fused commands and SGLs are refused.
    let mut c = cmd(iop::READ, 1);
    c[0] |= 1 << 14;
    assert_eq!(g.cmd(1, c).status, Status::INVALID_FIELD);
    // LBA ranges and transfer size.
    assert_eq!(
        g.rw(iop::READ, BLOCKS, 1, DATA, 0),
        Status::LBA_OUT_OF_RANGE
    );
    assert_eq!(
        g.rw(iop::READ, BLOCKS - 1, 2, DATA, 0),
        Status::LBA_OUT_OF_RANGE
    );
    assert_eq!(
        g.rw(iop::READ, u64::MAX, 1, DATA, 0),
        Status::LBA_OUT_OF_RANGE
    );
    assert_eq!(
        g.rw(iop::WRITE, 0, 1024, DATA, LIST),
        Status::INVALID_FIELD,
        "> MDTS"
    );
    // Bad PRPs through the whole command path.
    assert_eq!(
        g.rw(iop::READ, 0, 1, DATA + 2, 0),
        Status::PRP_OFFSET_INVALID
    );
    assert_eq!(
        g.rw(iop::READ, 0, 1, MEM + 4096, 0),
        Status::DATA_TRANSFER_ERROR
    );
    assert_eq!(
        g.rw(iop::WRITE, 0, 16, DATA, DATA + 100),
        Status::PRP_OFFSET_INVALID
    );
    assert_eq!(g.ctrl.stats.errors, 15);
    // Still serving.
    assert_eq!(g.rw(iop::READ, 0, 8, DATA, 0), Status::SUCCESS);
}

#[test]
fn dataset_management_deallocates() {
    let mut g = guest();
    g.create_io_queues(16);
    g.file
        .as_file()
        .write_all_at(&[0xaa; 8192], 16 * 512)
        .unwrap();
    // One range: 16 blocks at LBA 16.
    let mut range = [0u8; 16];
    range[4..8].copy_from_slice(&16u32.to_le_bytes());
    range[8..16].copy_from_slice(&16u64.to_le_bytes());
    g.mem.write_slice(&range, GuestAddress(DATA)).unwrap();
    let mut c = cmd(iop::DSM, 1);
    set_prp(&mut c, DATA, 0);
    c[11] = 1 << 2;
    assert_eq!(g.cmd(1, c).status, Status::SUCCESS);
    let mut back = [0xffu8; 8192];
    g.file.as_file().read_exact_at(&mut back, 16 * 512).unwrap();
    assert!(back.iter().all(|&b| b == 0));
    // A range past the end is refused before anything is punched.
    range[8..16].copy_from_slice(&(BLOCKS - 1).to_le_bytes());
    g.mem.write_slice(&range, GuestAddress(DATA)).unwrap();
    assert_eq!(g.cmd(1, c).status, Status::LBA_OUT_OF_RANGE);
}

#[test]
fn readonly_namespace_refuses_writes() {
    let mut g = guest_with(true);
    g.create_io_queues(4);
    assert_eq!(g.rw(iop::WRITE, 0, 1, DATA, 0), Status::NS_WRITE_PROTECTED);
    assert_eq!(g.rw(iop::READ, 0, 1, DATA, 0), Status::SUCCESS);
}

#[test]
fn features() {
    let mut g = guest();
    let feat = |g: &mut Guest, op: u8, dw10: u32, dw11: u32| {
        let mut c = cmd(op, 0);
        c[10] = dw10;
        c[11] = dw11;
        let e = g.admin(c);
        (e.status, e.dw0)
    };
    let set = aop::SET_FEATURES;
    let get = aop::GET_FEATURES;
    assert_eq!(
        feat(&mut g, set, 7, 0x0003_0003),
        (Status::SUCCESS, 0x0001_0001)
    );
    assert_eq!(feat(&mut g, set, 7, 0xffff), (Status::INVALID_FIELD, 0));
    assert_eq!(feat(&mut g, get, 7, 0), (Status::SUCCESS, 0x0001_0001));
    assert_eq!(feat(&mut g, set, 0x0b, 0x100), (Status::SUCCESS, 0));
    assert_eq!(feat(&mut g, get, 0x0b, 0), (Status::SUCCESS, 0x100));
    assert_eq!(feat(&mut g, set, 0x08, 0x0a01), (Status::SUCCESS, 0));
    assert_eq!(feat(&mut g, set, 0x80, 0), (Status::INVALID_FIELD, 0));
    assert_eq!(feat(&mut g, get, 0xc0, 0), (Status::INVALID_FIELD, 0));
    assert_eq!(
        feat(&mut g, set, 6 | 1 << 31, 1),
        (Status::FEATURE_NOT_SAVEABLE, 0)
    );
    assert_eq!(feat(&mut g, aop::ABORT, 0, 0), (Status::SUCCESS, 1));
    // AER limit: four held, the fifth refused.
    for i in 0..4u32 {
        let mut c = cmd(aop::ASYNC_EVENT, 0);
        c[0] |= (0x100 + i) << 16;
        let raw: Vec<u8> = c.iter().flat_map(|d| d.to_le_bytes()).collect();
        let slot = u64::from(g.sq_tail[0]) * 64;
        g.mem.write_slice(&raw, GuestAddress(ASQ + slot)).unwrap();
        g.sq_tail[0] = (g.sq_tail[0] + 1) % ADMIN_ENTRIES;
        g.doorbell(0, u32::from(g.sq_tail[0]));
        assert!(g.pop(0).is_none());
    }
    assert_eq!(
        g.admin(cmd(aop::ASYNC_EVENT, 0)).status,
        Status::AER_LIMIT_EXCEEDED
    );
    // Get Log Page: known pages read as zeroes, unknown ones are refused.
    let mut c = cmd(aop::GET_LOG_PAGE, u32::MAX);
    set_prp(&mut c, DATA, 0);
    c[10] = 2 | 127 << 16;
    assert_eq!(g.admin(c).status, Status::SUCCESS);
    c[10] = 0x70 | 127 << 16;
    assert_eq!(g.admin(c).status, Status::INVALID_LOG_PAGE);
}

#[test]
fn phase_tag_flips_and_full_cq_holds_the_sq() {
    let mut g = guest();
    // 20 commands through an 8-entry admin queue: the phase flips on each wrap.
    let mut phases = Vec::new();
    for _ in 0..20 {
        let mut c = cmd(aop::GET_FEATURES, 0);
        c[10] = 7;
        let e = g.admin(c);
        phases.push(e.phase);
        assert_eq!(e.sqid, 0);
    }
    let expect: Vec<bool> = (0..20).map(|i| (i / 8) % 2 == 0).collect();
    assert_eq!(phases, expect);
}
