// SPDX-License-Identifier: Apache-2.0
//! Loading Linux: kernel image, initramfs, command line, zero page and ACPI.

pub mod acpi;
pub mod loader;
