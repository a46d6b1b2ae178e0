// SPDX-License-Identifier: Apache-2.0
//! ACPI tables for a hardware-reduced platform: RSDP → XSDT → FADT (with the
//! DSDT), MADT (one local APIC per vCPU, one IOAPIC) and MCFG (ECAM).
//!
//! The DSDT describes the PCI root bridge, COM1, the `_S5` sleep state that
//! lets the guest power off through [`crate::devices::power::AcpiPower`], and
//! the power button the VMM presses ([`crate::devices::power::PowerButton`]).

use acpi_tables::aml::{
    self, AddressSpace, AddressSpaceCacheable, Arg, Device, EISAName, Equal, If, Interrupt, Method,
    Name, Notify, Package, Path, ResourceTemplate, Scope, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::devices::power::S5_SLEEP_TYPE;
use crate::layout;

const OEM_ID: [u8; 6] = *b"IOVMM ";
const OEM_REVISION: u32 = 1;

/// Errors while writing ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit below 1 MiB.
    #[error("ACPI tables need {0} bytes, more than the reserved area")]
    TooLarge(u64),
    /// Guest memory write failed.
    #[error("cannot write ACPI tables: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// What the tables describe.
pub struct Platform {
    /// Number of vCPUs.
    pub cpus: u8,
    /// First address of the 64-bit PCI BAR window.
    pub mmio64_start: u64,
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    table.to_aml_bytes(&mut v);
    v
}

fn io_gas(port: u16) -> GAS {
    GAS::new(
        GasSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        port.into(),
    )
}

/// First IOAPIC input used for PCI INTx.
pub const PCI_INTX_GSI_BASE: u32 = 16;
/// Number of IOAPIC inputs PCI INTx is spread over.
pub const PCI_INTX_GSIS: u32 = 8;

/// The GSI that INTx pin `pin` (0 = INTA) of the device in `slot` raises
/// (the `_PRT` of the root bridge: a swizzle over GSIs 16–23, level, active low).
pub fn pci_intx_gsi(slot: u8, pin: u8) -> u32 {
    PCI_INTX_GSI_BASE + (u32::from(slot) + u32::from(pin)) % PCI_INTX_GSIS
}

/// `_PRT`: one entry per slot and INTx pin, straight to an IOAPIC GSI.
struct PciRouting;

impl Aml for PciRouting {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        let entries: Vec<(u32, u8, u32)> = (0..32u8)
            .flat_map(|slot| {
                (0..4u8)
                    .map(move |pin| (u32::from(slot) << 16 | 0xffff, pin, pci_intx_gsi(slot, pin)))
            })
            .collect();
        let packages: Vec<Package> = entries
            .iter()
            .map(|(addr, pin, gsi)| Package::new(vec![addr, pin, &aml::ZERO, gsi]))
            .collect();
        let refs: Vec<&dyn Aml> = packages.iter().map(|p| p as &dyn Aml).collect();
        Package::new(refs).to_aml_bytes(sink);
    }
}

fn dsdt(p: &Platform) -> Vec<u8> {
    let mut body = Vec::new();
    Scope::new("_SB_".into(), vec![]).to_aml_bytes(&mut body);
    pci_host_bridge(p, &mut body);
    motherboard_and_serial(&mut body);
    power_button(&mut body);
    let s5_type = S5_SLEEP_TYPE;
    let s5_package = Package::new(vec![&s5_type, &aml::ZERO, &aml::ZERO, &aml::ZERO]);
    let s5 = Name::new("_S5_".into(), &s5_package);
    s5.to_aml_bytes(&mut body);
    let mut table = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"IOVMDSDT", OEM_REVISION);
    table.append_slice(&body);
    table.as_slice().to_vec()
}

/// `\_SB_.PCI0`: bus 0, config ports, the I/O ranges around them, the 32-
/// and 64-bit BAR windows, and the INTx routing (`_PRT`).
fn pci_host_bridge(p: &Platform, body: &mut Vec<u8>) {
    let mmio32_end = (layout::PCI_MMIO32_START + layout::PCI_MMIO32_SIZE - 1) as u32;
    let mmio64_end = p.mmio64_start + layout::PCI_MMIO64_SIZE - 1;
    let bus_numbers = AddressSpace::new_bus_number(0x0u16, 0x0u16);
    let config_ports = IO::new(
        layout::PCI_CONFIG_ADDRESS_PORT,
        layout::PCI_CONFIG_ADDRESS_PORT,
        1,
        8,
    );
    let io_low = AddressSpace::new_io(0x0u16, 0x0cf7u16, None);
    let io_high = AddressSpace::new_io(0x0d00u16, 0xffffu16, None);
    let mmio32 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        layout::PCI_MMIO32_START as u32,
        mmio32_end,
        None,
    );
    let mmio64 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        p.mmio64_start,
        mmio64_end,
        None,
    );
    let pci_crs = ResourceTemplate::new(vec![
        &bus_numbers,
        &config_ports,
        &io_low,
        &io_high,
        &mmio32,
        &mmio64,
    ]);
    Device::new(
        "_SB_.PCI0".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0A08")),
            &Name::new("_CID".into(), &EISAName::new("PNP0A03")),
            &Name::new("_ADR".into(), &aml::ZERO),
            &Name::new("_SEG".into(), &aml::ZERO),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_BBN".into(), &aml::ZERO),
            &Name::new("_CRS".into(), &pci_crs),
            &Name::new("_PRT".into(), &PciRouting),
        ],
    )
    .to_aml_bytes(body);
}

/// `\_SB_.MBRS` (the ECAM window) and `\_SB_.COM1`.
fn motherboard_and_serial(body: &mut Vec<u8>) {
    // The ECAM window, claimed as a motherboard resource so that Linux trusts the MCFG.
    let ecam = aml::Memory32Fixed::new(
        false,
        layout::PCI_ECAM_START as u32,
        layout::PCI_ECAM_SIZE as u32,
    );
    let ecam_crs = ResourceTemplate::new(vec![&ecam]);
    Device::new(
        "_SB_.MBRS".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0C02")),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_CRS".into(), &ecam_crs),
        ],
    )
    .to_aml_bytes(body);
    let com1_ports = IO::new(layout::COM1_PORT, layout::COM1_PORT, 1, 8);
    let com1_irq = Interrupt::new(true, true, false, false, layout::COM1_IRQ);
    let com1_crs = ResourceTemplate::new(vec![&com1_ports, &com1_irq]);
    Device::new(
        "_SB_.COM1".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0501")),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_CRS".into(), &com1_crs),
        ],
    )
    .to_aml_bytes(body);
}

/// `\_SB_.PWRB`, a control-method power button (the FADT's PWR_BUTTON flag
/// says there is no fixed one), and `\_SB_.GED_`, a Generic Event Device on
/// GSI [`layout::GED_GSI`] whose `_EVT` reports a press (Notify 0x80).
fn power_button(body: &mut Vec<u8>) {
    Device::new(
        "_SB_.PWRB".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0C0C")),
            &Name::new("_UID".into(), &aml::ZERO),
        ],
    )
    .to_aml_bytes(body);
    let gsi = layout::GED_GSI;
    let irq = Interrupt::new(true, true, false, false, gsi);
    let crs = ResourceTemplate::new(vec![&irq]);
    let button = Path::new("\\_SB_.PWRB");
    let pressed = Notify::new(&button, &0x80u8);
    let ours = Equal::new(&Arg(0), &gsi);
    let on_event = If::new(&ours, vec![&pressed]);
    Device::new(
        "_SB_.GED_".into(),
        vec![
            &Name::new("_HID".into(), &"ACPI0013"),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_CRS".into(), &crs),
            &Method::new("_EVT".into(), 1, true, vec![&on_event]),
        ],
    )
    .to_aml_bytes(body);
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut b = FADTBuilder::new(OEM_ID, *b"IOVMFACP", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    // IA-PC boot architecture: no VGA (bit 2), no CMOS RTC (bit 5); MSI is supported.
    b.iapc_boot_arch = ((1u16 << 2) | (1 << 5)).into();
    b.reset_reg = io_gas(layout::ACPI_RESET_PORT);
    b.reset_value = layout::ACPI_RESET_VALUE;
    b.sleep_control_reg = io_gas(layout::ACPI_SLEEP_CONTROL_PORT);
    b.sleep_status_reg = io_gas(layout::ACPI_SLEEP_STATUS_PORT);
    to_bytes(&b.finalize())
}

fn madt(cpus: u8) -> Vec<u8> {
    let mut m = MADT::new(
        OEM_ID,
        *b"IOVMAPIC",
        OEM_REVISION,
        LocalInterruptController::Address(layout::LAPIC_START as u32),
    );
    for id in 0..cpus {
        m.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    m.add_structure(IoApic::new(0, layout::IOAPIC_START as u32, 0));
    to_bytes(&m)
}

fn mcfg() -> Vec<u8> {
    let mut m = MCFG::new(OEM_ID, *b"IOVMMCFG", OEM_REVISION);
    m.add_ecam(layout::PCI_ECAM_START, 0, 0, 0);
    to_bytes(&m)
}

/// Writes all tables at [`layout::ACPI_START`]; returns the RSDP address.
pub fn write_tables<M: GuestMemoryBackend>(
    mem: &M,
    p: &Platform,
) -> Result<GuestAddress, AcpiError> {
    let rsdp_addr = layout::ACPI_START;
    let mut next = rsdp_addr.0 + Rsdp::len() as u64;
    let mut place = |bytes: &[u8]| -> Result<u64, AcpiError> {
        let addr = next.next_multiple_of(16);
        next = addr + bytes.len() as u64;
        if next > layout::ACPI_END {
            return Err(AcpiError::TooLarge(next - layout::ACPI_START.0));
        }
        mem.write_slice(bytes, GuestAddress(addr))?;
        Ok(addr)
    };
    let dsdt_addr = place(&dsdt(p))?;
    let fadt_addr = place(&fadt(dsdt_addr))?;
    let madt_addr = place(&madt(p.cpus))?;
    let mcfg_addr = place(&mcfg())?;
    let mut xsdt = XSDT::new(OEM_ID, *b"IOVMXSDT", OEM_REVISION);
    for a in [fadt_addr, madt_addr, mcfg_addr] {
        xsdt.add_entry(a);
    }
    let xsdt_addr = place(&to_bytes(&xsdt))?;
    mem.write_slice(&to_bytes(&Rsdp::new(OEM_ID, xsdt_addr)), rsdp_addr)?;
    Ok(rsdp_addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn checksum_ok(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
    }

    #[test]
    fn tables_are_well_formed() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let p = Platform {
            cpus: 4,
            mmio64_start: 1 << 32,
        };
        let rsdp = write_tables(&mem, &p).unwrap();
        let mut r = [0u8; 36];
        mem.read_slice(&mut r, rsdp).unwrap();
        assert_eq!(&r[..8], b"RSD PTR ");
        assert!(checksum_ok(&r[..20]));
        assert!(checksum_ok(&r));
        let xsdt_addr = u64::from_le_bytes(r[24..32].try_into().unwrap());
        let mut hdr = [0u8; 36];
        mem.read_slice(&mut hdr, GuestAddress(xsdt_addr)).unwrap();
        assert_eq!(&hdr[..4], b"XSDT");
        let len = u32::from_le_bytes(hdr[4..8].try_into().unwrap()) as usize;
        assert_eq!(len, 36 + 3 * 8);
        let mut xsdt = vec![0u8; len];
        mem.read_slice(&mut xsdt, GuestAddress(xsdt_addr)).unwrap();
        assert!(checksum_ok(&xsdt));
        let mut sigs = vec![];
        for e in xsdt[36..].chunks(8) {
            let a = u64::from_le_bytes(e.try_into().unwrap());
            let mut h = [0u8; 8];
            mem.read_slice(&mut h, GuestAddress(a)).unwrap();
            let l = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
            let mut t = vec![0u8; l];
            mem.read_slice(&mut t, GuestAddress(a)).unwrap();
            assert!(checksum_ok(&t), "{:?}", &h[..4]);
            sigs.push(String::from_utf8_lossy(&h[..4]).to_string());
        }
        assert_eq!(sigs, ["FACP", "APIC", "MCFG"]);
    }

    #[test]
    fn madt_has_one_lapic_per_cpu() {
        let m = madt(3);
        let lapics = m[44..].chunks(8).take_while(|c| c[0] == 0).count();
        assert_eq!(lapics, 3);
        let dsdt = dsdt(&Platform {
            cpus: 1,
            mmio64_start: 1 << 32,
        });
        assert!(checksum_ok(&dsdt));
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
        // The power button and the event device that presses it.
        for name in [&b"PWRB"[..], b"GED_", b"_EVT", b"ACPI0013"] {
            assert!(dsdt.windows(name.len()).any(|w| w == name), "{name:?}");
        }
    }
}
