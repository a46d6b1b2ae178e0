// SPDX-License-Identifier: Apache-2.0
//! Physical Region Page walking: the one place a guest-supplied data pointer
//! becomes guest memory the controller touches. PRP1 may carry a dword-aligned
//! offset; PRP2 is either the second page or a pointer to a PRP list whose
//! entries are page aligned and whose last entry chains to the next list page.
//! Every segment is checked against guest memory before any byte moves.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::{Status, PAGE_SIZE};

/// A checked guest-memory segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
}

/// The data buffer of one command: segments covering exactly `len` bytes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Prps {
    segs: Vec<Segment>,
}

fn check(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Result<Segment, Status> {
    let ok = usize::try_from(len).is_ok_and(|l| mem.check_range(GuestAddress(addr), l));
    if ok {
        Ok(Segment { addr, len })
    } else {
        Err(Status::DATA_TRANSFER_ERROR)
    }
}

impl Prps {
    /// Validates `len` bytes described by `prp1`/`prp2`.
    ///
    /// Misaligned entries answer PRP Offset Invalid; entries or lists outside
    /// guest memory answer Data Transfer Error.
    pub fn new(mem: &GuestMemoryMmap, prp1: u64, prp2: u64, len: u64) -> Result<Self, Status> {
        let mut segs = Vec::new();
        if len == 0 {
            return Ok(Self { segs });
        }
        let page_off = |a: u64| a & (PAGE_SIZE - 1);
        if prp1 & 3 != 0 {
            return Err(Status::PRP_OFFSET_INVALID);
        }
        let first = len.min(PAGE_SIZE - page_off(prp1));
        segs.push(check(mem, prp1, first)?);
        let mut rem = len - first;
        if rem == 0 {
            return Ok(Self { segs });
        }
        if rem <= PAGE_SIZE {
            if page_off(prp2) != 0 {
                return Err(Status::PRP_OFFSET_INVALID);
            }
            segs.push(check(mem, prp2, rem)?);
            return Ok(Self { segs });
        }
        // PRP list.
        if prp2 & 7 != 0 {
            return Err(Status::PRP_OFFSET_INVALID);
        }
        let mut list = prp2;
        // Each step consumes a data entry or moves to a new list page; a
        // hostile chain of list pointers is cut off after this many steps.
        let mut budget = 2 * rem.div_ceil(PAGE_SIZE) + 2;
        while rem > 0 {
            budget = budget.checked_sub(1).ok_or(Status::DATA_TRANSFER_ERROR)?;
            let last_slot = page_off(list) == PAGE_SIZE - 8;
            let mut raw = [0u8; 8];
            mem.read_slice(&mut raw, GuestAddress(list))
                .map_err(|_| Status::DATA_TRANSFER_ERROR)?;
            let entry = u64::from_le_bytes(raw);
            if last_slot && rem > PAGE_SIZE {
                // Chain to the next list page.
                if entry & 7 != 0 {
                    return Err(Status::PRP_OFFSET_INVALID);
                }
                list = entry;
                continue;
            }
            if page_off(entry) != 0 {
                return Err(Status::PRP_OFFSET_INVALID);
            }
            let n = rem.min(PAGE_SIZE);
            segs.push(check(mem, entry, n)?);
            rem -= n;
            list = list.checked_add(8).ok_or(Status::DATA_TRANSFER_ERROR)?;
        }
        Ok(Self { segs })
    }

    /// The segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segs
    }

    /// Total bytes.
    pub fn len(&self) -> u64 {
        self.segs.iter().map(|s| s.len).sum()
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    /// Copies `data` into the guest buffer (up to its length).
    pub fn write(&self, mem: &GuestMemoryMmap, data: &[u8]) -> Result<(), Status> {
        let mut off = 0usize;
        for s in &self.segs {
            let n = (s.len as usize).min(data.len().saturating_sub(off));
            if n == 0 {
                break;
            }
            mem.write_slice(&data[off..off + n], GuestAddress(s.addr))
                .map_err(|_| Status::DATA_TRANSFER_ERROR)?;
            off += n;
        }
        Ok(())
    }

    /// Fills `data` from the guest buffer (up to its length).
    pub fn read(&self, mem: &GuestMemoryMmap, data: &mut [u8]) -> Result<(), Status> {
        let mut off = 0usize;
        for s in &self.segs {
            let n = (s.len as usize).min(data.len().saturating_sub(off));
            if n == 0 {
                break;
            }
            mem.read_slice(&mut data[off..off + n], GuestAddress(s.addr))
                .map_err(|_| Status::DATA_TRANSFER_ERROR)?;
            off += n;
        }
        Ok(())
    }
}
