// SPDX-License-Identifier: Apache-2.0
//! The 82540EM's serial (microwire) EEPROM, read by the driver by toggling
//! EECD bits, and its Marvell 88E1011 PHY behind MDIC. Link is always up at
//! 1000 Mb/s full duplex.

/// EECD: clock.
pub const EECD_SK: u32 = 1 << 0;
/// EECD: chip select.
pub const EECD_CS: u32 = 1 << 1;
/// EECD: data in (to the EEPROM).
pub const EECD_DI: u32 = 1 << 2;
/// EECD: data out (from the EEPROM).
pub const EECD_DO: u32 = 1 << 3;
/// EECD: EEPROM present.
pub const EECD_PRES: u32 = 1 << 8;
/// EECD: access request.
pub const EECD_REQ: u32 = 1 << 6;
/// EECD: access granted.
pub const EECD_GNT: u32 = 1 << 7;
const WORDS: usize = 64;
const ADDR_BITS: u32 = 6;
const READ_OPCODE: u32 = 0b110;

/// The microwire EEPROM: 64 words, MAC in words 0–2, checksum 0xBABA.
#[derive(Clone, Debug)]
pub struct Eeprom {
    words: [u16; WORDS],
    eecd: u32,
    /// Bits shifted in while selected.
    shift: u32,
    bits_in: u32,
    /// Word being shifted out, and how many bits are left.
    out: Option<(u16, u32)>,
}

impl Eeprom {
    /// An EEPROM holding `mac`.
    pub fn new(mac: [u8; 6]) -> Self {
        let mut words = [0u16; WORDS];
        for i in 0..3 {
            words[i] = u16::from_le_bytes([mac[2 * i], mac[2 * i + 1]]);
        }
        words[0x0a] = 0x4408; // init control 1: no special features
        let sum = words[..WORDS - 1]
            .iter()
            .fold(0u16, |a, w| a.wrapping_add(*w));
        words[WORDS - 1] = 0xbabau16.wrapping_sub(sum);
        Self {
            words,
            eecd: EECD_PRES,
            shift: 0,
            bits_in: 0,
            out: None,
        }
    }

    /// EECD as the driver reads it.
    pub fn read(&self) -> u32 {
        let gnt = if self.eecd & EECD_REQ != 0 {
            EECD_GNT
        } else {
            0
        };
        self.eecd | gnt | EECD_PRES
    }

    /// EECD written by the driver: clock edges move the protocol on.
    pub fn write(&mut self, v: u32) {
        let old = self.eecd;
        let keep_do = old & EECD_DO;
        self.eecd = (v & (EECD_SK | EECD_CS | EECD_DI | EECD_REQ)) | keep_do;
        if v & EECD_CS == 0 {
            self.shift = 0;
            self.bits_in = 0;
            self.out = None;
            self.eecd &= !EECD_DO;
            return;
        }
        let rising = old & EECD_SK == 0 && v & EECD_SK != 0;
        if !rising {
            return;
        }
        if let Some((word, left)) = self.out {
            // Present the next bit, most significant first.
            let bit = left.checked_sub(1).map_or(0, |b| (word >> b) & 1);
            self.eecd = (self.eecd & !EECD_DO) | if bit != 0 { EECD_DO } else { 0 };
            self.out = left.checked_sub(1).filter(|l| *l > 0).map(|l| (word, l));
            return;
        }
        self.shift = (self.shift << 1) | u32::from(v & EECD_DI != 0);
        self.bits_in += 1;
        if self.bits_in == 3 + ADDR_BITS {
            let opcode = self.shift >> ADDR_BITS;
            let addr = (self.shift & ((1 << ADDR_BITS) - 1)) as usize;
            if opcode == READ_OPCODE {
                let word = self.words.get(addr).copied().unwrap_or(0xffff);
                self.out = Some((word, 16));
            }
            self.shift = 0;
            self.bits_in = 0;
        }
    }

    /// A word (tests, EERD).
    pub fn word(&self, addr: usize) -> u16 {
        self.words.get(addr).copied().unwrap_or(0)
    }
}

/// MDIC: ready.
pub const MDIC_READY: u32 = 1 << 28;
/// MDIC: error.
pub const MDIC_ERROR: u32 = 1 << 30;
const MDIC_OP_WRITE: u32 = 1;
const MDIC_OP_READ: u32 = 2;
/// The PHY's MDIO address.
pub const PHY_ADDR: u32 = 1;

/// The MII PHY registers.
#[derive(Clone, Debug)]
pub struct Phy {
    regs: [u16; 32],
}

impl Default for Phy {
    fn default() -> Self {
        let mut regs = [0u16; 32];
        regs[0] = 0x1140; // control: autoneg on, full duplex, 1000 Mb/s
        regs[1] = 0x796d; // status: link up, autoneg complete
        regs[2] = 0x0141; // ID: Marvell
        regs[3] = 0x0c20; // 88E1011
        regs[4] = 0x0de1; // autoneg advertisement
        regs[5] = 0x45e1; // link partner ability
        regs[6] = 0x0001;
        regs[9] = 0x0e00; // 1000BASE-T control
        regs[10] = 0x3c00; // 1000BASE-T status
        regs[15] = 0x3000; // extended status
        regs[16] = 0x0068; // M88 specific control
        regs[17] = 0xbc00; // M88 specific status: 1000, full, resolved, link
        Self { regs }
    }
}

impl Phy {
    /// Executes an MDIC write and returns the new MDIC value.
    pub fn mdic(&mut self, v: u32) -> u32 {
        let data = (v & 0xffff) as u16;
        let reg = ((v >> 16) & 0x1f) as usize;
        let addr = (v >> 21) & 0x1f;
        let op = (v >> 26) & 3;
        if addr != PHY_ADDR {
            return (v & !0xffff) | MDIC_READY | MDIC_ERROR;
        }
        match op {
            MDIC_OP_READ => (v & !0xffff) | u32::from(self.regs[reg]) | MDIC_READY,
            MDIC_OP_WRITE => {
                // Reset and autoneg-restart bits self-clear; status is read-only.
                match reg {
                    0 => self.regs[0] = data & !(0x8000 | 0x0200),
                    1 | 2 | 3 | 5 | 10 | 15 | 17 => {}
                    _ => self.regs[reg] = data,
                }
                v | MDIC_READY
            }
            _ => v | MDIC_READY | MDIC_ERROR,
        }
    }
}
