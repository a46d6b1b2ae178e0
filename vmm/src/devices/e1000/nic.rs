// SPDX-License-Identifier: Apache-2.0
//! The 82540EM register file, interrupt causes and the legacy transmit and
//! receive descriptor rings. Every ring base, length, index and buffer
//! address the guest programs is checked before guest memory is touched.

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::phy::{Eeprom, Phy};

/// Register offsets (82540EM, SDM §13).
pub mod reg {
    /// Device control.
    pub const CTRL: u64 = 0x0000;
    /// Device status.
    pub const STATUS: u64 = 0x0008;
    /// EEPROM/flash control.
    pub const EECD: u64 = 0x0010;
    /// EEPROM read.
    pub const EERD: u64 = 0x0014;
    /// MDI control.
    pub const MDIC: u64 = 0x0020;
    /// Interrupt cause read.
    pub const ICR: u64 = 0x00c0;
    /// Interrupt cause set.
    pub const ICS: u64 = 0x00c8;
    /// Interrupt mask set/read.
    pub const IMS: u64 = 0x00d0;
    /// Interrupt mask clear.
    pub const IMC: u64 = 0x00d8;
    /// Receive control.
    pub const RCTL: u64 = 0x0100;
    /// Transmit control.
    pub const TCTL: u64 = 0x0400;
    /// Receive descriptor base low/high, length, head, tail.
    pub const RDBAL: u64 = 0x2800;
    /// Receive descriptor base high.
    pub const RDBAH: u64 = 0x2804;
    /// Receive descriptor ring length (bytes).
    pub const RDLEN: u64 = 0x2808;
    /// Receive head.
    pub const RDH: u64 = 0x2810;
    /// Receive tail.
    pub const RDT: u64 = 0x2818;
    /// Transmit descriptor base low.
    pub const TDBAL: u64 = 0x3800;
    /// Transmit descriptor base high.
    pub const TDBAH: u64 = 0x3804;
    /// Transmit descriptor ring length (bytes).
    pub const TDLEN: u64 = 0x3808;
    /// Transmit head.
    pub const TDH: u64 = 0x3810;
    /// Transmit tail.
    pub const TDT: u64 = 0x3818;
    /// Statistics registers (clear on read; always 0 here).
    pub const STATS: std::ops::Range<u64> = 0x4000..0x4100;
}

/// Size of the register BAR.
pub const BAR_SIZE: u64 = 0x20000;

/// Interrupt causes.
pub mod icr {
    /// Transmit descriptor written back.
    pub const TXDW: u32 = 1 << 0;
    /// Transmit queue empty.
    pub const TXQE: u32 = 1 << 1;
    /// Link status change.
    pub const LSC: u32 = 1 << 2;
    /// Receive overrun (no descriptors).
    pub const RXO: u32 = 1 << 6;
    /// Receive timer (a packet arrived).
    pub const RXT0: u32 = 1 << 7;
}

const CTRL_RST: u32 = 1 << 26;
const CTRL_PHY_RST: u32 = 1 << 31;
const EERD_START: u32 = 1;
const EERD_DONE: u32 = 1 << 4;
/// STATUS: full duplex, link up, 1000 Mb/s.
const STATUS_UP: u32 = 0x1 | 0x2 | 0x80;
const RCTL_EN: u32 = 1 << 1;
const RCTL_SECRC: u32 = 1 << 26;
const RCTL_BSEX: u32 = 1 << 25;
const TCTL_EN: u32 = 1 << 1;
const DESC_LEN: u64 = 16;
/// Largest frame accepted either way (no jumbo frames).
pub const MAX_FRAME: usize = 16384;
/// Largest TCP segmentation offload send (header + 64 KiB payload).
const MAX_TSO: usize = 65536 + 256;
// Transmit descriptor bits.
const TXD_EOP: u8 = 0x01;
const TXD_DEXT: u8 = 0x20;
const TXD_TSE: u8 = 0x04;
const TXD_DD: u8 = 0x01;
const POPTS_IXSM: u8 = 0x01;
const POPTS_TXSM: u8 = 0x02;
// Receive descriptor status.
const RXD_DD: u8 = 0x01;
const RXD_EOP: u8 = 0x02;

/// The host side of the link.
pub trait NetSink {
    /// Sends one Ethernet frame (without FCS).
    fn send(&mut self, frame: &[u8]);
}

/// The interrupt line (INTx through an irqfd in the VMM).
pub trait Irq {
    /// Asserts the line for one edge.
    fn trigger(&mut self);
}

/// Checksum offload context (from a context descriptor).
#[derive(Clone, Copy, Debug, Default)]
struct Context {
    ipcss: usize,
    ipcso: usize,
    ipcse: usize,
    tucss: usize,
    tucso: usize,
    tucse: usize,
    /// TUCMD: bit 0 TCP, bit 1 IPv4.
    tucmd: u8,
    hdr_len: usize,
    mss: usize,
}

/// Counters for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames sent to the host.
    pub tx_frames: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Transmits dropped (TSO, oversize, buffer outside guest memory).
    pub tx_dropped: u64,
    /// Frames from the host dropped (receive disabled, no buffers, bad ring).
    pub rx_dropped: u64,
    /// Ring programming the device refused (bad base, length or index).
    pub bad_rings: u64,
}

/// The NIC.
pub struct E1000 {
    regs: Vec<u32>,
    eeprom: Eeprom,
    phy: Phy,
    mac: [u8; 6],
    ctx: Context,
    tx_frame: Vec<u8>,
    tx_popts: u8,
    /// Counters.
    pub stats: NetStats,
}

fn idx(offset: u64) -> usize {
    (offset / 4) as usize
}

impl E1000 {
    /// A NIC with address `mac`, link up.
    pub fn new(mac: [u8; 6]) -> Self {
        let mut n = Self {
            regs: vec![0; (BAR_SIZE / 4) as usize],
            eeprom: Eeprom::new(mac),
            phy: Phy::default(),
            mac,
            ctx: Context::default(),
            tx_frame: Vec::new(),
            tx_popts: 0,
            stats: NetStats::default(),
        };
        n.reset();
        n
    }

    fn reset(&mut self) {
        self.regs.iter_mut().for_each(|r| *r = 0);
        self.regs[idx(reg::STATUS)] = STATUS_UP;
        // Receive address 0 from the EEPROM, marked valid (RAH.AV).
        let m = self.mac;
        self.regs[idx(0x5400)] = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
        self.regs[idx(0x5404)] = u32::from(u16::from_le_bytes([m[4], m[5]])) | 1 << 31;
        self.tx_frame.clear();
        self.ctx = Context::default();
    }

    fn r(&self, offset: u64) -> u32 {
        self.regs[idx(offset)]
    }

    /// A register read (4-byte aligned; anything else reads 0).
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() != 4 || !offset.is_multiple_of(4) || offset >= BAR_SIZE {
            return;
        }
        let v = match offset {
            reg::EECD => self.eeprom.read(),
            reg::ICR => std::mem::take(&mut self.regs[idx(reg::ICR)]),
            o if reg::STATS.contains(&o) => 0,
            o => self.r(o),
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// A register write (4-byte aligned; anything else is ignored).
    pub fn write(
        &mut self,
        mem: &GuestMemoryMmap,
        net: &mut dyn NetSink,
        irq: &mut dyn Irq,
        offset: u64,
        data: &[u8],
    ) {
        let Ok(b) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if !offset.is_multiple_of(4) || offset >= BAR_SIZE {
            return;
        }
        let v = u32::from_le_bytes(b);
        match offset {
            reg::CTRL => {
                if v & CTRL_RST != 0 {
                    tracing::debug!("e1000: device reset");
                    self.reset();
                    return;
                }
                self.regs[idx(reg::CTRL)] = v & !CTRL_PHY_RST;
            }
            reg::STATUS => {}
            reg::EECD => self.eeprom.write(v),
            reg::EERD => {
                let addr = ((v >> 8) & 0xff) as usize;
                if v & EERD_START != 0 {
                    let word = u32::from(self.eeprom.word(addr));
                    self.regs[idx(reg::EERD)] = word << 16 | (addr as u32) << 8 | EERD_DONE;
                }
            }
            reg::MDIC => self.regs[idx(reg::MDIC)] = self.phy.mdic(v),
            reg::ICR => self.regs[idx(reg::ICR)] &= !v,
            reg::ICS => self.raise(irq, v),
            reg::IMS => {
                self.regs[idx(reg::IMS)] |= v;
                self.update_irq(irq);
            }
            reg::IMC => self.regs[idx(reg::IMS)] &= !v,
            reg::RDT => {
                self.regs[idx(reg::RDT)] = v & 0xffff;
            }
            reg::TDT => {
                self.regs[idx(reg::TDT)] = v & 0xffff;
                self.transmit(mem, net, irq);
            }
            reg::RDH | reg::TDH | reg::RDLEN | reg::TDLEN => self.regs[idx(offset)] = v & 0xfffff,
            o if reg::STATS.contains(&o) => {}
            o => self.regs[idx(o)] = v,
        }
    }

    /// Sets interrupt causes and raises the line if any is enabled.
    pub fn raise(&mut self, irq: &mut dyn Irq, cause: u32) {
        self.regs[idx(reg::ICR)] |= cause;
        self.update_irq(irq);
    }

    fn update_irq(&mut self, irq: &mut dyn Irq) {
        if self.r(reg::ICR) & self.r(reg::IMS) != 0 {
            irq.trigger();
        }
    }

    /// A ring's (base, descriptor count) if its programming is sane.
    fn ring(&self, bal: u64, bah: u64, len: u64, mem: &GuestMemoryMmap) -> Option<(u64, u32)> {
        let base = u64::from(self.r(bal)) | u64::from(self.r(bah)) << 32;
        let bytes = u64::from(self.r(len));
        let ok = bytes != 0
            && bytes % 128 == 0
            && base % 16 == 0
            && usize::try_from(bytes).is_ok_and(|l| mem.check_range(GuestAddress(base), l));
        ok.then_some((base, (bytes / DESC_LEN) as u32))
    }

    fn transmit(&mut self, mem: &GuestMemoryMmap, net: &mut dyn NetSink, irq: &mut dyn Irq) {
        if self.r(reg::TCTL) & TCTL_EN == 0 {
            return;
        }
        let Some((base, count)) = self.ring(reg::TDBAL, reg::TDBAH, reg::TDLEN, mem) else {
            self.stats.bad_rings += 1;
            return;
        };
        let tail = self.r(reg::TDT);
        let mut head = self.r(reg::TDH);
        if head >= count || tail >= count {
            self.stats.bad_rings += 1;
            return;
        }
        let mut done = false;
        while head != tail {
            let at = GuestAddress(base + u64::from(head) * DESC_LEN);
            let mut d = [0u8; 16];
            if mem.read_slice(&mut d, at).is_err() {
                break;
            }
            self.tx_descriptor(mem, net, &d);
            // Report every descriptor done (DD), whatever RS asked for.
            let _ = mem.write_slice(&[d[12] | TXD_DD], at.unchecked_add(12));
            head = (head + 1) % count;
            done = true;
        }
        self.regs[idx(reg::TDH)] = head;
        if done {
            self.raise(irq, icr::TXDW | icr::TXQE);
        }
    }

    fn tx_descriptor(&mut self, mem: &GuestMemoryMmap, net: &mut dyn NetSink, d: &[u8; 16]) {
        let addr = u64::from_le_bytes(d[0..8].try_into().unwrap_or_default());
        let cmd = d[11];
        let extended = cmd & TXD_DEXT != 0;
        let dtyp = (d[10] >> 4) & 0xf;
        if extended && dtyp == 0 {
            // Context descriptor: checksum offsets for the following packets.
            self.ctx = Context {
                ipcss: usize::from(d[0]),
                ipcso: usize::from(d[1]),
                ipcse: usize::from(u16::from_le_bytes([d[2], d[3]])),
                tucss: usize::from(d[4]),
                tucso: usize::from(d[5]),
                tucse: usize::from(u16::from_le_bytes([d[6], d[7]])),
                tucmd: d[11],
                hdr_len: usize::from(d[13]),
                mss: usize::from(u16::from_le_bytes([d[14], d[15]])),
            };
            return;
        }
        let len = if extended {
            (u32::from_le_bytes([d[8], d[9], d[10] & 0xf, 0])) as usize
        } else {
            usize::from(u16::from_le_bytes([d[8], d[9]]))
        };
        if extended {
            self.tx_popts |= d[13];
            if cmd & TXD_TSE != 0 {
                self.tx_popts |= 0x80; // remember: segmentation asked for
            }
        }
        let start = self.tx_frame.len();
        let limit = if self.tx_popts & 0x80 != 0 {
            MAX_TSO
        } else {
            MAX_FRAME
        };
        if start + len <= limit {
            self.tx_frame.resize(start + len, 0);
            if mem
                .read_slice(&mut self.tx_frame[start..], GuestAddress(addr))
                .is_err()
            {
                self.tx_frame.truncate(start);
                self.tx_popts |= 0x40; // unreadable buffer: drop at EOP
            }
        } else {
            self.tx_popts |= 0x40;
        }
        if cmd & TXD_EOP == 0 {
            return;
        }
        let mut frame = std::mem::take(&mut self.tx_frame);
        let popts = std::mem::take(&mut self.tx_popts);
        if popts & 0x40 != 0 {
            self.stats.tx_dropped += 1;
            tracing::debug!("e1000: dropped a transmit (oversize or bad buffer)");
        } else if popts & 0x80 != 0 {
            self.segment(net, &frame);
        } else {
            if popts & POPTS_IXSM != 0 {
                let c = self.ctx;
                insert_checksum(&mut frame, c.ipcss, c.ipcso, c.ipcse);
            }
            if popts & POPTS_TXSM != 0 {
                let c = self.ctx;
                insert_checksum(&mut frame, c.tucss, c.tucso, c.tucse);
            }
            net.send(&frame);
            self.stats.tx_frames += 1;
        }
        frame.clear();
        self.tx_frame = frame;
    }

    /// TCP segmentation offload: cuts `frame` (headers of `hdr_len` bytes,
    /// then the payload) into MSS-sized TCP/IPv4 or TCP/IPv6 segments with
    /// fixed lengths, IDs, sequence numbers, flags and checksums.
    fn segment(&mut self, net: &mut dyn NetSink, frame: &[u8]) {
        let c = self.ctx;
        let ipv4 = c.tucmd & 0x02 != 0;
        let tcp = c.tucmd & 0x01 != 0;
        let sane = tcp
            && c.mss > 0
            && c.hdr_len <= frame.len()
            && c.ipcss + 20 <= c.tucss
            && c.tucss + 20 <= c.hdr_len
            && c.tucso + 2 <= c.hdr_len
            && c.ipcso + 2 <= c.hdr_len;
        if !sane {
            self.stats.tx_dropped += 1;
            tracing::debug!("e1000: unusable TSO context {c:?}");
            return;
        }
        let (hdr, payload) = frame.split_at(c.hdr_len);
        let be16 = |b: &[u8], o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
        let ip_id = be16(hdr, c.ipcss + 4);
        let seq = u32::from_be_bytes([
            hdr[c.tucss + 4],
            hdr[c.tucss + 5],
            hdr[c.tucss + 6],
            hdr[c.tucss + 7],
        ]);
        // The driver leaves the pseudo-header sum without the length here.
        let pseudo = be16(hdr, c.tucso);
        let chunks: Vec<&[u8]> = payload.chunks(c.mss).collect();
        let n = chunks.len().max(1);
        for i in 0..n {
            let chunk = chunks.get(i).copied().unwrap_or(&[]);
            let mut seg = Vec::with_capacity(hdr.len() + chunk.len());
            seg.extend_from_slice(hdr);
            seg.extend_from_slice(chunk);
            let ip_len = seg.len() - c.ipcss;
            if ipv4 {
                seg[c.ipcss + 2..c.ipcss + 4].copy_from_slice(&(ip_len as u16).to_be_bytes());
                let id = ip_id.wrapping_add(i as u16);
                seg[c.ipcss + 4..c.ipcss + 6].copy_from_slice(&id.to_be_bytes());
                seg[c.ipcso..c.ipcso + 2].fill(0);
                insert_checksum(&mut seg, c.ipcss, c.ipcso, c.tucss - 1);
            } else {
                let pl = (ip_len - 40) as u16;
                seg[c.ipcss + 4..c.ipcss + 6].copy_from_slice(&pl.to_be_bytes());
            }
            let offset = (i * c.mss) as u32;
            let s = seq.wrapping_add(offset).to_be_bytes();
            seg[c.tucss + 4..c.tucss + 8].copy_from_slice(&s);
            if i + 1 < n {
                seg[c.tucss + 13] &= !(0x01 | 0x08); // FIN and PSH only on the last
            }
            let tcp_len = (seg.len() - c.tucss) as u32;
            let mut sum = u32::from(pseudo) + tcp_len;
            while sum >> 16 != 0 {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            seg[c.tucso..c.tucso + 2].copy_from_slice(&(sum as u16).to_be_bytes());
            insert_checksum(&mut seg, c.tucss, c.tucso, 0);
            net.send(&seg);
            self.stats.tx_frames += 1;
        }
    }

    /// Receive buffer size from RCTL.BSIZE/BSEX.
    fn rx_buffer_size(&self) -> usize {
        let rctl = self.r(reg::RCTL);
        let size = 2048usize >> ((rctl >> 16) & 3);
        if rctl & RCTL_BSEX != 0 && (rctl >> 16) & 3 != 0 {
            size * 16
        } else {
            size
        }
    }

    /// Delivers `frame` from the host into the guest's receive ring;
    /// returns whether it was delivered.
    pub fn receive(&mut self, mem: &GuestMemoryMmap, irq: &mut dyn Irq, frame: &[u8]) -> bool {
        let rctl = self.r(reg::RCTL);
        if rctl & RCTL_EN == 0 || frame.len() > MAX_FRAME {
            self.stats.rx_dropped += 1;
            return false;
        }
        let Some((base, count)) = self.ring(reg::RDBAL, reg::RDBAH, reg::RDLEN, mem) else {
            self.stats.bad_rings += 1;
            self.stats.rx_dropped += 1;
            return false;
        };
        let (mut head, tail) = (self.r(reg::RDH), self.r(reg::RDT));
        if head >= count || tail >= count {
            self.stats.bad_rings += 1;
            self.stats.rx_dropped += 1;
            return false;
        }
        // The driver strips a 4-byte FCS unless SECRC is set; append one.
        let mut data = frame.to_vec();
        if rctl & RCTL_SECRC == 0 {
            data.extend_from_slice(&[0; 4]);
        }
        let bufsize = self.rx_buffer_size();
        let needed = data.len().div_ceil(bufsize) as u32;
        let free = (tail + count - head) % count;
        if free < needed {
            self.stats.rx_dropped += 1;
            self.raise(irq, icr::RXO);
            return false;
        }
        for (i, chunk) in data.chunks(bufsize).enumerate() {
            let at = GuestAddress(base + u64::from(head) * DESC_LEN);
            let mut d = [0u8; 16];
            if mem.read_slice(&mut d, at).is_err() {
                return false;
            }
            let addr = u64::from_le_bytes(d[0..8].try_into().unwrap_or_default());
            if mem.write_slice(chunk, GuestAddress(addr)).is_err() {
                tracing::debug!("e1000: receive buffer {addr:#x} outside guest memory");
                self.stats.bad_rings += 1;
            }
            let last = (i + 1) * bufsize >= data.len();
            d[8..10].copy_from_slice(&(chunk.len() as u16).to_le_bytes());
            d[10..12].fill(0);
            d[12] = RXD_DD | if last { RXD_EOP } else { 0 };
            d[13] = 0;
            let _ = mem.write_slice(&d[8..16], at.unchecked_add(8));
            head = (head + 1) % count;
        }
        self.regs[idx(reg::RDH)] = head;
        self.stats.rx_frames += 1;
        self.raise(irq, icr::RXT0);
        true
    }
}

/// Ones-complement checksum of `frame[start..=end]` (end 0 = to the end of
/// the frame) stored big-endian at `offset`; out-of-range offsets are ignored.
fn insert_checksum(frame: &mut [u8], start: usize, offset: usize, end: usize) {
    let end = if end == 0 {
        frame.len()
    } else {
        (end + 1).min(frame.len())
    };
    if start >= end || offset + 2 > frame.len() {
        return;
    }
    let mut sum: u32 = 0;
    for c in frame[start..end].chunks(2) {
        let w = u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]);
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let csum = !(sum as u16);
    frame[offset..offset + 2].copy_from_slice(&csum.to_be_bytes());
}
