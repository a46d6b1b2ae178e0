// SPDX-License-Identifier: Apache-2.0
//! NVM commands and PRP walking.

use std::os::unix::fs::FileExt;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

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

/// Storage over a file that records each write's durability and whether the command's
/// completion was already in the guest's completion queue when the write returned.
struct Recorder {
    file: std::fs::File,
    mem: GuestMemoryMmap,
    /// `(durable, completion already posted)` per write; syncs as `(true, posted)` too.
    log: std::sync::Arc<std::sync::Mutex<Vec<(bool, bool)>>>,
}

impl Recorder {
    /// Whether the I/O completion queue holds an entry the guest has not consumed (the
    /// harness zeroes each entry it takes; one command is outstanding at a time).
    fn posted(&self) -> bool {
        (0..16u64).any(|slot| {
            let dw3: u32 = self
                .mem
                .read_obj(GuestAddress(IOCQ + 16 * slot + 12))
                .unwrap();
            dw3 & (1 << 16) != 0
        })
    }
}

impl Storage for Recorder {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64, durable: bool) -> std::io::Result<()> {
        // The real durable write (RWF_DSYNC), so the test also runs that path.
        Storage::write_at(&self.file, buf, offset, durable)?;
        self.log.lock().unwrap().push((durable, self.posted()));
        Ok(())
    }
    fn sync(&self) -> std::io::Result<()> {
        self.log.lock().unwrap().push((true, self.posted()));
        self.file.sync_data()
    }
    fn deallocate(&self, offset: u64, len: u64) -> std::io::Result<()> {
        Storage::deallocate(&self.file, offset, len)
    }
}

#[test]
fn fua_write_is_durable_before_its_completion_is_posted() {
    let file = tempfile::NamedTempFile::new().unwrap();
    file.as_file().set_len(BLOCKS * 512).unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mem = guest_memory();
    let recorder = Recorder {
        file: file.reopen().unwrap(),
        mem: mem.clone(),
        log: log.clone(),
    };
    let mut g = guest_on(mem, Box::new(recorder), file, false);
    g.create_io_queues(16);
    let data = [0x5au8; 1024];
    g.mem.write_slice(&data, GuestAddress(DATA)).unwrap();

    // Write with FUA (CDW12 bit 30): durable, and done before the completion exists.
    let mut c = cmd(iop::WRITE, 1);
    set_prp(&mut c, DATA, 0);
    c[10] = 4;
    c[12] = 1 | 1 << 30;
    assert_eq!(g.cmd(1, c).status, Status::SUCCESS);
    assert_eq!(
        *log.lock().unwrap(),
        [(true, false)],
        "FUA write not durable before its CQE"
    );
    let mut on_disk = [0u8; 1024];
    g.file
        .as_file()
        .read_exact_at(&mut on_disk, 4 * 512)
        .unwrap();
    assert_eq!(on_disk, data);

    // A plain write is not synced; a Flush syncs before its completion.
    log.lock().unwrap().clear();
    assert_eq!(g.rw(iop::WRITE, 8, 2, DATA, 0), Status::SUCCESS);
    assert_eq!(*log.lock().unwrap(), [(false, false)]);
    log.lock().unwrap().clear();
    assert_eq!(g.cmd(1, cmd(iop::FLUSH, 1)).status, Status::SUCCESS);
    assert_eq!(*log.lock().unwrap(), [(true, false)]);
}

/// Found by the `nvme` fuzz target: a starting LBA so large that its byte offset overflows
/// panicked (debug builds) before the range check answered.
#[test]
fn lbas_whose_byte_offset_overflows_are_out_of_range() {
    let mut g = guest();
    g.create_io_queues(16);
    for slba in [1u64 << 60, u64::MAX / 512 + 1, u64::MAX - 1] {
        assert_eq!(
            g.rw(iop::READ, slba, 1, DATA, 0),
            Status::LBA_OUT_OF_RANGE,
            "{slba:#x}"
        );
        assert_eq!(
            g.rw(iop::WRITE, slba, 1, DATA, 0),
            Status::LBA_OUT_OF_RANGE,
            "{slba:#x}"
        );
    }
    // Dataset Management: one range of 0 blocks at a huge LBA.
    let range = [0u32.to_le_bytes(), 0u32.to_le_bytes()].concat();
    let slba = (1u64 << 60).to_le_bytes();
    g.mem
        .write_slice(&[range.as_slice(), &slba].concat(), GuestAddress(DATA))
        .unwrap();
    let mut c = cmd(iop::DSM, 1);
    set_prp(&mut c, DATA, 0);
    c[11] = 1 << 2; // deallocate
    assert_eq!(g.cmd(1, c).status, Status::LBA_OUT_OF_RANGE);
}
