// SPDX-License-Identifier: Apache-2.0
//! Identify data structures (NVMe 1.4 §5.15): controller, namespace, active
//! namespace list and namespace identification descriptors, 4 KiB each.

use super::regs::VERSION;
use super::{LBA_SIZE, MAX_AERS, MDTS};

/// Size of every Identify data structure.
pub const IDENTIFY_LEN: usize = 4096;

fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
    buf[off..off + bytes.len()].copy_from_slice(bytes);
}

fn ascii(buf: &mut [u8], off: usize, len: usize, s: &str) {
    let field = &mut buf[off..off + len];
    field.fill(b' ');
    let n = s.len().min(len);
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Identify Controller.
pub fn controller(serial: &str, max_io_queues: u16) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    put(&mut b, 0, &0x1af4u16.to_le_bytes()); // VID
    put(&mut b, 2, &0x1af4u16.to_le_bytes()); // SSVID
    ascii(&mut b, 4, 20, serial); // SN
    ascii(&mut b, 24, 40, "vmm emulated NVMe"); // MN
    ascii(&mut b, 64, 8, "0.1"); // FR
    b[72] = 0; // RAB
    b[77] = MDTS;
    put(&mut b, 78, &1u16.to_le_bytes()); // CNTLID
    put(&mut b, 80, &VERSION.to_le_bytes());
    b[111] = 1; // CNTRLTYPE: I/O controller
    b[258] = 3; // ACL: 4 concurrent Aborts
    b[259] = (MAX_AERS - 1) as u8; // AERL
    b[260] = 1 << 1; // FRMW: one slot
    b[263] = 0; // NPSS: one power state
    b[512] = 0x66; // SQES: 64 bytes
    b[513] = 0x44; // CQES: 16 bytes
    put(&mut b, 514, &max_io_queues.to_le_bytes()); // MAXCMD (informational)
    put(&mut b, 516, &1u32.to_le_bytes()); // NN
    put(&mut b, 520, &(1u16 << 2).to_le_bytes()); // ONCS: Dataset Management
    b[525] = 1; // VWC: volatile write cache present (the host page cache)
    let nqn = format!("nqn.2026-11.io.vmm:nvme:{serial}");
    let n = nqn.len().min(255);
    put(&mut b, 768, &nqn.as_bytes()[..n]); // SUBNQN
                                            // Power state 0: 25.00 W max (MP in 0.01 W units).
    put(&mut b, 2048, &2500u16.to_le_bytes());
    b
}

/// Identify Namespace for a namespace of `blocks` 512-byte blocks.
pub fn namespace(blocks: u64, readonly: bool, serial: &str) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    put(&mut b, 0, &blocks.to_le_bytes()); // NSZE
    put(&mut b, 8, &blocks.to_le_bytes()); // NCAP
    put(&mut b, 16, &blocks.to_le_bytes()); // NUSE
    b[24] = 1; // NSFEAT: thin provisioning (deallocate punches holes)
    b[25] = 0; // NLBAF: one format
    b[26] = 0; // FLBAS: format 0
    b[33] = 1; // DLFEAT: deallocated blocks read as zeroes
    b[99] = u8::from(readonly); // NSATTR: write protected
    put(&mut b, 104, &nguid(serial)); // NGUID
                                      // LBA format 0: no metadata, LBADS = log2(512), best performance.
    let lbads = LBA_SIZE.trailing_zeros();
    put(&mut b, 128, &(lbads << 16).to_le_bytes());
    b
}

/// Active Namespace ID list: the active NSIDs greater than `after`.
pub fn active_namespaces(after: u32) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    if after < 1 {
        put(&mut b, 0, &1u32.to_le_bytes());
    }
    b
}

/// Namespace Identification Descriptor list: one NGUID descriptor.
pub fn descriptors(serial: &str) -> Vec<u8> {
    let mut b = vec![0u8; IDENTIFY_LEN];
    b[0] = 2; // NIDT: NGUID
    b[1] = 16; // NIDL
    put(&mut b, 4, &nguid(serial));
    b
}

/// A stable namespace GUID derived from the serial (FNV-1a, twice).
fn nguid(serial: &str) -> [u8; 16] {
    let fnv = |seed: u64| {
        serial.bytes().fold(seed, |h, c| {
            (h ^ u64::from(c)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let mut g = [0u8; 16];
    g[..8].copy_from_slice(&fnv(0xcbf2_9ce4_8422_2325).to_be_bytes());
    g[8..].copy_from_slice(&fnv(0x6c62_272e_07bb_0142).to_be_bytes());
    g
}
