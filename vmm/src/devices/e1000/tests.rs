// SPDX-License-Identifier: Apache-2.0
//! e1000 model tests: EEPROM and PHY as the Linux driver reads them, the
//! transmit and receive rings, and a hostile guest's ring programming.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::nic::{icr, reg, Irq, NetSink, E1000};
use super::phy::{EECD_CS, EECD_DI, EECD_DO, EECD_GNT, EECD_REQ, EECD_SK, MDIC_ERROR, MDIC_READY};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const TX_RING: u64 = 0x10000;
const RX_RING: u64 = 0x11000;
const BUF: u64 = 0x20000;
const MEM: u64 = 1 << 20;

#[derive(Default)]
struct Sink(Vec<Vec<u8>>);
impl NetSink for Sink {
    fn send(&mut self, frame: &[u8]) {
        self.0.push(frame.to_vec());
    }
}

#[derive(Default)]
struct Line(u32);
impl Irq for Line {
    fn trigger(&mut self) {
        self.0 += 1;
    }
}

struct T {
    nic: E1000,
    mem: GuestMemoryMmap,
    sink: Sink,
    line: Line,
}

impl T {
    fn new() -> Self {
        Self {
            nic: E1000::new(MAC),
            mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap(),
            sink: Sink::default(),
            line: Line::default(),
        }
    }
    fn w(&mut self, off: u64, v: u32) {
        self.nic.write(
            &self.mem,
            &mut self.sink,
            &mut self.line,
            off,
            &v.to_le_bytes(),
        );
    }
    fn r(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.nic.read(off, &mut b);
        u32::from_le_bytes(b)
    }
    /// Reads an EEPROM word the way Linux's microwire code does.
    fn eeprom(&mut self, addr: u16) -> u16 {
        self.w(reg::EECD, EECD_REQ);
        assert_ne!(self.r(reg::EECD) & EECD_GNT, 0);
        let mut eecd = EECD_REQ | EECD_CS;
        self.w(reg::EECD, eecd);
        let bits = (0b110u32 << 6) | u32::from(addr);
        for i in (0..9).rev() {
            eecd = if bits >> i & 1 != 0 {
                eecd | EECD_DI
            } else {
                eecd & !EECD_DI
            };
            self.w(reg::EECD, eecd);
            self.w(reg::EECD, eecd | EECD_SK);
            self.w(reg::EECD, eecd);
        }
        eecd &= !EECD_DI;
        let mut word = 0u16;
        for _ in 0..16 {
            self.w(reg::EECD, eecd | EECD_SK);
            word = word << 1 | u16::from(self.r(reg::EECD) & EECD_DO != 0);
            self.w(reg::EECD, eecd);
        }
        self.w(reg::EECD, 0);
        word
    }
    fn setup_rings(&mut self) {
        self.w(reg::TDBAL, TX_RING as u32);
        self.w(reg::TDLEN, 8 * 16);
        self.w(reg::TCTL, 1 << 1);
        self.w(reg::RDBAL, RX_RING as u32);
        self.w(reg::RDLEN, 8 * 16);
        for i in 0..8u64 {
            self.mem
                .write_obj(BUF + 0x1000 + i * 2048, GuestAddress(RX_RING + i * 16))
                .unwrap();
        }
        self.w(reg::RDT, 7);
        self.w(reg::RCTL, 1 << 1);
        self.w(reg::IMS, icr::TXDW | icr::RXT0 | icr::RXO);
    }
    fn tx_desc(&mut self, i: u64, addr: u64, len: u16, cmd: u8) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..10].copy_from_slice(&len.to_le_bytes());
        d[11] = cmd;
        self.mem
            .write_slice(&d, GuestAddress(TX_RING + i * 16))
            .unwrap();
    }
}

#[test]
fn eeprom_and_phy_as_the_driver_reads_them() {
    let mut t = T::new();
    assert_eq!(t.eeprom(0), 0x5452);
    assert_eq!(t.eeprom(1), 0x1200);
    assert_eq!(t.eeprom(2), 0x5634);
    let sum = (0..64).fold(0u16, |a, i| a.wrapping_add(t.eeprom(i)));
    assert_eq!(sum, 0xbaba, "EEPROM checksum");
    // EERD path too.
    t.w(reg::EERD, 2 << 8 | 1);
    assert_eq!(t.r(reg::EERD) >> 16, 0x5634);
    // PHY ID through MDIC (read, PHY address 1), and a missing PHY.
    t.w(reg::MDIC, 2 << 26 | 1 << 21 | 2 << 16);
    let v = t.r(reg::MDIC);
    assert_eq!((v & 0xffff, v & MDIC_READY != 0), (0x0141, true));
    t.w(reg::MDIC, 2 << 26 | 7 << 21 | 2 << 16);
    assert_ne!(t.r(reg::MDIC) & MDIC_ERROR, 0);
    assert_eq!(t.r(reg::STATUS) & 2, 2, "link up");
    // Receive address 0 holds the MAC, marked valid.
    assert_eq!(t.r(0x5400), 0x1200_5452);
    assert_eq!(t.r(0x5404), 0x8000_5634);
}

#[test]
fn transmit_and_receive() {
    let mut t = T::new();
    t.setup_rings();
    let frame: Vec<u8> = (0..100u8).collect();
    t.mem.write_slice(&frame[..60], GuestAddress(BUF)).unwrap();
    t.mem
        .write_slice(&frame[60..], GuestAddress(BUF + 0x800))
        .unwrap();
    t.tx_desc(0, BUF, 60, 0x08);
    t.tx_desc(1, BUF + 0x800, 40, 0x08 | 0x01 | 0x02);
    t.w(reg::TDT, 2);
    assert_eq!(t.sink.0, vec![frame.clone()]);
    assert_eq!(t.r(reg::TDH), 2);
    let mut dd = [0u8; 1];
    t.mem
        .read_slice(&mut dd, GuestAddress(TX_RING + 16 + 12))
        .unwrap();
    assert_eq!(dd[0] & 1, 1, "DD written back");
    assert_eq!(t.line.0, 1);
    assert_eq!(t.r(reg::ICR) & icr::TXDW, icr::TXDW);
    assert_eq!(t.r(reg::ICR), 0, "ICR clears on read");
    // Receive: the frame plus a 4-byte FCS, DD|EOP, RDH moves.
    assert!(t.nic.receive(&t.mem, &mut t.line, &frame));
    let mut d = [0u8; 16];
    t.mem.read_slice(&mut d, GuestAddress(RX_RING)).unwrap();
    assert_eq!(u16::from_le_bytes([d[8], d[9]]), 104);
    assert_eq!(d[12], 0x3);
    let mut got = vec![0u8; 100];
    t.mem
        .read_slice(&mut got, GuestAddress(BUF + 0x1000))
        .unwrap();
    assert_eq!(got, frame);
    assert_eq!(t.r(reg::RDH), 1);
    assert_eq!(t.line.0, 2);
    // The ring holds 7 buffers (RDT = 7): the 8th frame is dropped.
    for _ in 0..6 {
        assert!(t.nic.receive(&t.mem, &mut t.line, &frame));
    }
    assert!(!t.nic.receive(&t.mem, &mut t.line, &frame));
    assert_eq!(t.nic.stats.rx_dropped, 1);
    assert_ne!(t.r(reg::ICR) & icr::RXO, 0);
}

#[test]
fn hostile_rings_never_panic() {
    let mut t = T::new();
    t.setup_rings();
    // Tail past the ring, ring length not a multiple of 128, ring outside RAM.
    t.w(reg::TDT, 100);
    t.w(reg::TDLEN, 100);
    t.w(reg::TDT, 1);
    t.w(reg::TDLEN, 128);
    t.w(reg::TDBAL, (MEM - 64) as u32);
    t.w(reg::TDT, 1);
    t.w(reg::TDBAH, u32::MAX);
    t.w(reg::TDT, 2);
    assert_eq!(t.nic.stats.bad_rings, 4);
    assert!(t.sink.0.is_empty());
    // Buffers outside guest memory, oversize chains, TSO: dropped.
    t.w(reg::TDBAH, 0);
    t.w(reg::TDBAL, TX_RING as u32);
    t.w(reg::TDH, 0);
    t.tx_desc(0, MEM + 0x1000, 64, 0x09);
    t.tx_desc(1, BUF, 64, 0x20 | 0x04 | 0x01); // DEXT data with TSE
    t.mem
        .write_slice(&[0x10], GuestAddress(TX_RING + 16 + 10))
        .unwrap(); // DTYP data
    t.w(reg::TDT, 2);
    assert!(t.sink.0.is_empty());
    assert_eq!(t.nic.stats.tx_dropped, 2);
    // Receive into a ring whose head is out of range, odd register accesses.
    t.w(reg::RDH, 50);
    assert!(!t.nic.receive(&t.mem, &mut t.line, &[0u8; 64]));
    let mut b = [0u8; 2];
    t.nic.read(0x1ffff, &mut b);
    t.nic
        .write(&t.mem, &mut t.sink, &mut t.line, 0x1fffe, &[1, 2]);
    t.nic
        .write(&t.mem, &mut t.sink, &mut t.line, 0x20000, &[1, 2, 3, 4]);
}

fn ones_sum(data: &[u8], mut sum: u32) -> u16 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[test]
fn tcp_segmentation_offload() {
    let mut t = T::new();
    t.setup_rings();
    // Ethernet + IPv4 + TCP headers as Linux hands them to the e1000 for TSO:
    // IP total length and checksum 0, TCP checksum = pseudo-header sum without length.
    let (src, dst) = ([10u8, 0, 2, 2], [10u8, 0, 2, 1]);
    let mut hdr = vec![0u8; 54];
    hdr[12..14].copy_from_slice(&[0x08, 0x00]);
    hdr[14] = 0x45;
    hdr[18..20].copy_from_slice(&0x1234u16.to_be_bytes()); // IP ID
    hdr[22] = 64;
    hdr[23] = 6;
    hdr[26..30].copy_from_slice(&src);
    hdr[30..34].copy_from_slice(&dst);
    hdr[38..42].copy_from_slice(&1000u32.to_be_bytes()); // seq
    hdr[46] = 0x50;
    hdr[47] = 0x18 | 0x01; // PSH|ACK|FIN
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src);
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, 6]);
    hdr[50..52].copy_from_slice(&ones_sum(&pseudo, 0).to_be_bytes());
    let payload: Vec<u8> = (0..3000u32).map(|i| (i * 13) as u8).collect();
    t.mem.write_slice(&hdr, GuestAddress(BUF)).unwrap();
    t.mem
        .write_slice(&payload, GuestAddress(BUF + 0x1000))
        .unwrap();
    // Context descriptor: ipcss 14, ipcso 24, ipcse 33, tucss 34, tucso 50,
    // PAYLEN 3000, DTYP 0, TUCMD TCP|IP|TSE|DEXT, HDRLEN 54, MSS 1448.
    let mut ctx = [0u8; 16];
    ctx[0] = 14;
    ctx[1] = 24;
    ctx[2..4].copy_from_slice(&33u16.to_le_bytes());
    ctx[4] = 34;
    ctx[5] = 50;
    ctx[8..11].copy_from_slice(&3000u32.to_le_bytes()[..3]);
    ctx[11] = 0x01 | 0x02 | 0x04 | 0x20;
    ctx[13] = 54;
    ctx[14..16].copy_from_slice(&1448u16.to_le_bytes());
    t.mem.write_slice(&ctx, GuestAddress(TX_RING)).unwrap();
    // Two data descriptors (DTYP 1, DEXT|TSE, POPTS IXSM|TXSM), EOP on the last.
    for (i, (addr, len, eop)) in [(BUF, 54u32, 0u8), (BUF + 0x1000, 3000, 1)]
        .iter()
        .enumerate()
    {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..11].copy_from_slice(&len.to_le_bytes()[..3]);
        d[10] |= 0x10;
        d[11] = 0x20 | 0x04 | 0x08 | eop;
        d[13] = 0x03;
        t.mem
            .write_slice(&d, GuestAddress(TX_RING + 16 * (i as u64 + 1)))
            .unwrap();
    }
    t.w(reg::TDT, 3);
    assert_eq!(t.sink.0.len(), 3, "3000 bytes in 1448-byte segments");
    let mut data = Vec::new();
    for (i, seg) in t.sink.0.iter().enumerate() {
        let plen = seg.len() - 54;
        assert_eq!(plen, [1448, 1448, 104][i]);
        assert_eq!(
            u16::from_be_bytes([seg[16], seg[17]]) as usize,
            seg.len() - 14
        );
        assert_eq!(u16::from_be_bytes([seg[18], seg[19]]), 0x1234 + i as u16);
        assert_eq!(
            ones_sum(&seg[14..34], 0),
            0xffff,
            "IP checksum of segment {i}"
        );
        let seq = u32::from_be_bytes([seg[38], seg[39], seg[40], seg[41]]);
        assert_eq!(seq, 1000 + 1448 * i as u32);
        let flags = seg[47];
        assert_eq!(flags & 0x09 != 0, i == 2, "FIN/PSH only on the last");
        let tcp_len = (seg.len() - 34) as u32;
        let sum = ones_sum(&pseudo, tcp_len);
        assert_eq!(
            ones_sum(&seg[34..], u32::from(sum)),
            0xffff,
            "TCP checksum {i}"
        );
        data.extend_from_slice(&seg[54..]);
    }
    assert_eq!(data, payload);
    assert_eq!(t.nic.stats.tx_dropped, 0);
}
