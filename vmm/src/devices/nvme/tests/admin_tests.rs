// SPDX-License-Identifier: Apache-2.0
//! Registers, admin commands, doorbells and queues.

use vm_memory::{Bytes, GuestAddress};

use super::*;

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
    // The admin queue registers survive the reset; enabling again works.
    assert_eq!(g.read32(regs::ASQ), ASQ as u32);
    g.reg32(regs::CC, 1 | 6 << 16 | 4 << 20);
    assert_eq!(g.read32(regs::CSTS), CSTS_RDY);
    g.reg32(regs::CC, 0);
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
    assert_eq!(id[77], crate::devices::nvme::MDTS);
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
    assert_eq!(identify(&mut g, 0x06, 0).0, Status::SUCCESS, "NVM CSI");
    // Outside guest memory: the Identify data cannot be transferred.
    let mut c = cmd(aop::IDENTIFY, 0);
    set_prp(&mut c, MEM, 0);
    c[10] = 1;
    assert_eq!(g.admin(c).status, Status::DATA_TRANSFER_ERROR);
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

    // Fill the completion queue without consuming it: 7 entries fit in 8
    // slots; the 8th command stays in the submission queue until the guest
    // frees a CQ slot with the head doorbell.
    let submit = |g: &mut Guest, cid: u32| {
        let mut c = cmd(aop::GET_FEATURES, 0);
        c[0] |= cid << 16;
        c[10] = 7;
        let raw: Vec<u8> = c.iter().flat_map(|d| d.to_le_bytes()).collect();
        let slot = u64::from(g.sq_tail[0]) * 64;
        g.mem.write_slice(&raw, GuestAddress(ASQ + slot)).unwrap();
        g.sq_tail[0] = (g.sq_tail[0] + 1) % ADMIN_ENTRIES;
        g.doorbell(0, u32::from(g.sq_tail[0]));
    };
    let before = g.ctrl.stats.commands;
    for cid in 0..7 {
        submit(&mut g, 0x200 + cid);
    }
    assert_eq!(g.ctrl.stats.commands - before, 7);
    submit(&mut g, 0x300);
    assert_eq!(
        g.ctrl.stats.commands - before,
        7,
        "CQ full: the command waits"
    );
    let first = g.pop(0).expect("completion");
    assert_eq!(first.cid, 0x200);
    assert_eq!(
        g.ctrl.stats.commands - before,
        8,
        "head doorbell resumed the SQ"
    );
    let cids: Vec<u16> = std::iter::from_fn(|| g.pop(0)).map(|e| e.cid).collect();
    assert_eq!(cids, [0x201, 0x202, 0x203, 0x204, 0x205, 0x206, 0x300]);
}
