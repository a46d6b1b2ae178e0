// SPDX-License-Identifier: Apache-2.0
//! The guest-physical address map of an x86-64 VM.
//!
//! ```text
//! 0x0000_0000 ..  640 KiB   low RAM (boot params, command line, page tables)
//! 0x000a_0000 ..    1 MiB   legacy hole; ACPI tables live at 0xe0000
//! 0x0010_0000 ..   3 GiB    RAM (kernel, initramfs)
//! 0xc000_0000 ..   4 GiB    MMIO hole: 32-bit PCI BARs, ECAM, IOAPIC, LAPIC
//! 4 GiB       ..            RAM above the hole, then 64-bit PCI BARs
//! ```

use vm_memory::GuestAddress;

/// Boot GDT.
pub const BOOT_GDT_START: GuestAddress = GuestAddress(0x500);
/// Boot IDT (empty).
pub const BOOT_IDT_START: GuestAddress = GuestAddress(0x520);
/// The Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: GuestAddress = GuestAddress(0x7000);
/// Initial boot stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// PML4 of the identity-mapped boot page tables.
pub const PML4_START: GuestAddress = GuestAddress(0x9000);
/// PDPTE of the boot page tables.
pub const PDPTE_START: GuestAddress = GuestAddress(0xa000);
/// PDE of the boot page tables (4 pages: 4 GiB of 2 MiB pages).
pub const PDE_START: GuestAddress = GuestAddress(0xb000);
/// Kernel command line.
pub const CMDLINE_START: GuestAddress = GuestAddress(0x20000);
/// Largest kernel command line accepted.
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// End of usable RAM in the first megabyte (the EBDA begins here).
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables (RSDP first), inside the BIOS area Linux scans.
pub const ACPI_START: GuestAddress = GuestAddress(0xe0000);
/// End of the area reserved for ACPI tables.
pub const ACPI_END: u64 = RESET_VECTOR.0;
/// The x86 reset vector (F000:FFF0): Linux jumps here for a BIOS reboot.
pub const RESET_VECTOR: GuestAddress = GuestAddress(0xffff0);
/// Where high memory starts: the kernel is loaded here.
pub const HIMEM_START: GuestAddress = GuestAddress(0x10_0000);

/// Start of the 32-bit MMIO hole below 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// Start of the 32-bit PCI BAR window.
pub const PCI_MMIO32_START: u64 = MMIO_HOLE_START;
/// Size of the 32-bit PCI BAR window.
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;
/// PCI Express enhanced configuration space (ECAM), bus 0 only.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// ECAM size for one bus (32 devices × 8 functions × 4 KiB).
pub const PCI_ECAM_SIZE: u64 = 1 << 20;
/// IOAPIC MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// First address above the MMIO hole.
pub const FOUR_GIB: u64 = 1 << 32;
/// Size of the 64-bit PCI BAR window placed above RAM.
pub const PCI_MMIO64_SIZE: u64 = 64 << 30;

/// KVM's TSS (three pages) and identity map page, inside the MMIO hole.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity map page (Intel real-mode emulation).
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// I/O port of the ACPI sleep control register (hardware-reduced ACPI).
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x3c0;
/// I/O port of the ACPI sleep status register.
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x3c1;
/// I/O port of the ACPI reset register.
pub const ACPI_RESET_PORT: u16 = 0x3c2;
/// Value written to the reset register to reset the machine.
pub const ACPI_RESET_VALUE: u8 = 1;
/// The interrupt of the ACPI Generic Event Device (the power button): an IOAPIC input no
/// other device uses, edge-triggered, active high.
pub const GED_GSI: u32 = 5;
/// COM1 base port and its IRQ.
pub const COM1_PORT: u16 = 0x3f8;
/// IRQ line of COM1.
pub const COM1_IRQ: u32 = 4;
/// i8042 data and command ports.
pub const I8042_PORT: u16 = 0x60;
/// PCI configuration address port (the data port follows at 0xcfc).
pub const PCI_CONFIG_ADDRESS_PORT: u16 = 0xcf8;

/// The guest-physical RAM ranges for `mem_size` bytes of RAM: everything
/// below the MMIO hole, the rest above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(GuestAddress, u64)> {
    if mem_size <= MMIO_HOLE_START {
        vec![(GuestAddress(0), mem_size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_HOLE_START),
            (GuestAddress(FOUR_GIB), mem_size - MMIO_HOLE_START),
        ]
    }
}

/// First guest-physical address above RAM (where the 64-bit BAR window starts).
pub fn ram_end(mem_size: u64) -> u64 {
    match ram_ranges(mem_size).last() {
        Some((start, len)) => start.0 + len,
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_around_the_hole() {
        assert_eq!(ram_ranges(512 << 20), vec![(GuestAddress(0), 512 << 20)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_HOLE_START));
        assert_eq!(r[1], (GuestAddress(FOUR_GIB), (4 << 30) - MMIO_HOLE_START));
        assert_eq!(ram_end(4 << 30), FOUR_GIB + (1 << 30));
        assert_eq!(ram_end(1 << 30), 1 << 30);
    }
}
