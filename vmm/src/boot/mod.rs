//! Loading Linux: kernel image, initramfs, command line, zero page and ACPI.

pub mod acpi;
pub mod loader;
