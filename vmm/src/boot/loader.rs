// SPDX-License-Identifier: Apache-2.0
//! Kernel (bzImage or ELF vmlinux), initramfs and command line placement, and
//! the Linux zero page with its e820 map.

use std::fs::File;
use std::path::Path;

use linux_loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::Elf;
use linux_loader::loader::{self, KernelLoader, KernelLoaderResult};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, ReadVolatile};

use crate::layout;

/// Errors while loading the guest's boot images.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// An image file could not be opened or read.
    #[error("cannot read {what} '{path}': {source}")]
    Open {
        /// "kernel" or "initramfs".
        what: &'static str,
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel file is neither format.
    #[error("kernel '{path}' is neither a bzImage nor an ELF vmlinux ({detail})")]
    BadKernel {
        /// The file.
        path: String,
        /// What the loaders said.
        detail: String,
    },
    /// The initramfs does not fit.
    #[error("initramfs '{path}' is {size} bytes, but only {room} bytes of guest memory are free for it (give the guest more --memory)")]
    InitramfsTooLarge {
        /// The file.
        path: String,
        /// Its size.
        size: u64,
        /// Space available.
        room: u64,
    },
    /// The command line is invalid or too long.
    #[error("invalid kernel command line: {0}")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// The command line could not be written to guest memory.
    #[error("invalid kernel command line: {0}")]
    CmdlineWrite(#[source] linux_loader::loader::Error),
    /// Writing the zero page failed.
    #[error("cannot write boot parameters: {0}")]
    BootParams(#[source] linux_loader::configurator::Error),
    /// Guest memory access failed.
    #[error("cannot write to guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// The kernel's 64-bit entry point and loaded extent.
pub struct LoadedKernel {
    /// Where the vCPU starts.
    pub entry: GuestAddress,
    /// Loader result (setup header for bzImage).
    pub result: KernelLoaderResult,
}

/// Offset of the 64-bit entry point (`startup_64`) from the protected-mode
/// kernel's load address in a bzImage.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

fn open(what: &'static str, path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|source| BootError::Open {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// Checks that `path` can be opened, so that a typo fails before the VM exists.
pub fn check_readable(what: &'static str, path: &Path) -> Result<(), BootError> {
    open(what, path).map(drop)
}

/// Loads a bzImage, or failing that an ELF vmlinux, at 1 MiB and above.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let mut file = open("kernel", path)?;
    let bz = BzImage::load(mem, None, &mut file, Some(layout::HIMEM_START));
    match bz {
        Ok(result) => {
            return Ok(LoadedKernel {
                entry: result.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET),
                result,
            })
        }
        Err(loader::Error::Bzimage(linux_loader::loader::bzimage::Error::InvalidBzImage)) => {}
        Err(e) => {
            return Err(BootError::BadKernel {
                path: path.display().to_string(),
                detail: format!("bzImage: {e}"),
            })
        }
    }
    match Elf::load(mem, None, &mut file, Some(layout::HIMEM_START)) {
        Ok(result) => Ok(LoadedKernel {
            entry: result.kernel_load,
            result,
        }),
        Err(e) => Err(BootError::BadKernel {
            path: path.display().to_string(),
            detail: format!("not a bzImage; ELF: {e}"),
        }),
    }
}

/// Where an initramfs was placed.
#[derive(Clone, Copy, Debug)]
pub struct Initramfs {
    /// Guest address.
    pub addr: GuestAddress,
    /// Size in bytes.
    pub size: u64,
}

/// Loads the initramfs at the top of low RAM (below `max_addr`, above the kernel).
pub fn load_initramfs(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    max_addr: u64,
) -> Result<Initramfs, BootError> {
    let mut file = open("initramfs", path)?;
    let size = file
        .metadata()
        .map_err(|source| BootError::Open {
            what: "initramfs",
            path: path.display().to_string(),
            source,
        })?
        .len();
    let top = max_addr.min(crate::memory::low_ram_end(mem.last_addr().0 + 1).0);
    let floor = kernel_end.next_multiple_of(4096);
    let room = top.saturating_sub(floor);
    if size > room || size == 0 && room == 0 {
        return Err(BootError::InitramfsTooLarge {
            path: path.display().to_string(),
            size,
            room,
        });
    }
    let addr = GuestAddress((top - size) & !0xfff);
    let len = usize::try_from(size).map_err(|_| BootError::InitramfsTooLarge {
        path: path.display().to_string(),
        size,
        room,
    })?;
    let slice = mem.get_slice(addr, len)?;
    let mut dst = slice;
    file.read_exact_volatile(&mut dst)
        .map_err(|e| BootError::Open {
            what: "initramfs",
            path: path.display().to_string(),
            source: std::io::Error::other(e),
        })?;
    Ok(Initramfs { addr, size })
}

/// Builds and writes the command line.
pub fn load_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<usize, BootError> {
    let cl = Cmdline::try_from(cmdline, layout::CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    loader::load_cmdline(mem, layout::CMDLINE_START, &cl).map_err(BootError::CmdlineWrite)?;
    Ok(cmdline.len())
}

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

/// The e820 map for `mem_size` bytes of RAM.
pub fn e820_map(mem_size: u64) -> Vec<boot_e820_entry> {
    let entry = |addr: u64, size: u64, r#type: u32| boot_e820_entry { addr, size, r#type };
    let mut map = vec![
        entry(0, layout::EBDA_START, E820_RAM),
        entry(
            layout::EBDA_START,
            0x10_0000 - layout::EBDA_START,
            E820_RESERVED,
        ),
    ];
    for (start, len) in layout::ram_ranges(mem_size) {
        let begin = start.0.max(layout::HIMEM_START.0);
        let end = start.0 + len;
        if end > begin {
            map.push(entry(begin, end - begin, E820_RAM));
        }
    }
    map.push(entry(
        layout::PCI_ECAM_START,
        layout::PCI_ECAM_SIZE,
        E820_RESERVED,
    ));
    map
}

/// Loader type "undefined" (0xff) in `type_of_loader`.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const HDRS_MAGIC: u32 = 0x5372_6448;
const KERNEL_ALIGNMENT: u32 = 0x0100_0000;

/// Writes the zero page.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initramfs: Option<Initramfs>,
    rsdp: GuestAddress,
    mem_size: u64,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = kernel.result.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = HDRS_MAGIC;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    }
    params.hdr.cmd_line_ptr = layout::CMDLINE_START.0 as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(i) = initramfs {
        params.hdr.ramdisk_image = i.addr.0 as u32;
        params.hdr.ramdisk_size = i.size as u32;
    }
    params.acpi_rsdp_addr = rsdp.0;
    let map = e820_map(mem_size);
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = *e;
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(&params, layout::ZERO_PAGE_START),
        mem,
    )
    .map_err(BootError::BootParams)
}

/// Real-mode code at the reset vector: `mov al, 0xfe; out 0x64, al; hlt; jmp $-3`.
///
/// There is no BIOS. When Linux falls back to a BIOS reboot (its default on a
/// hardware-reduced ACPI platform without EFI), it jumps here, and this turns
/// that into an i8042 reset the VMM sees, instead of a vCPU spinning in
/// empty memory.
const RESET_STUB: [u8; 7] = [0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd];

/// Writes `RESET_STUB` at [`layout::RESET_VECTOR`].
pub fn write_reset_stub(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    mem.write_slice(&RESET_STUB, layout::RESET_VECTOR)?;
    Ok(())
}

/// Highest address an initramfs may end at for this kernel.
pub fn initramfs_max_addr(kernel: &LoadedKernel) -> u64 {
    match kernel.result.setup_header {
        Some(hdr) if hdr.initrd_addr_max != 0 => u64::from(hdr.initrd_addr_max) + 1,
        _ => 0x8000_0000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mem(size: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    #[test]
    fn garbage_kernel_is_rejected() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[0x5a; 8192]).unwrap();
        let err = load_kernel(&mem(64 << 20), f.path()).err().unwrap();
        assert!(matches!(err, BootError::BadKernel { .. }), "{err}");
        let empty = tempfile::NamedTempFile::new().unwrap();
        assert!(load_kernel(&mem(64 << 20), empty.path()).is_err());
    }

    #[test]
    fn missing_kernel_is_a_clear_error() {
        let err = load_kernel(&mem(16 << 20), Path::new("/nonexistent/bzImage"))
            .err()
            .unwrap();
        assert!(err
            .to_string()
            .contains("cannot read kernel '/nonexistent/bzImage'"));
    }

    #[test]
    fn initramfs_larger_than_memory() {
        let m = mem(16 << 20);
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(32 << 20).unwrap();
        let err = load_initramfs(&m, f.path(), 0x20_0000, 0x8000_0000).unwrap_err();
        assert!(matches!(err, BootError::InitramfsTooLarge { .. }), "{err}");
    }

    #[test]
    fn initramfs_is_placed_at_top_of_low_ram() {
        let m = mem(16 << 20);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"070701").unwrap();
        let i = load_initramfs(&m, f.path(), 0x20_0000, 0x8000_0000).unwrap();
        assert_eq!(i.size, 6);
        assert_eq!(i.addr.0, (16 << 20) - 4096);
        let mut b = [0u8; 6];
        vm_memory::Bytes::read_slice(&m, &mut b, i.addr).unwrap();
        assert_eq!(&b, b"070701");
    }

    #[test]
    fn e820_covers_ram_and_skips_the_hole() {
        let map = e820_map(4 << 30);
        let ram: u64 = map
            .iter()
            .filter(|e| e.r#type == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (4 << 30) - 0x10_0000 + layout::EBDA_START);
        assert!(map
            .iter()
            .filter(|e| e.r#type == E820_RAM)
            .all(|e| e.addr + e.size <= layout::MMIO_HOLE_START || e.addr >= layout::FOUR_GIB));
    }

    #[test]
    fn overlong_cmdline() {
        let m = mem(16 << 20);
        let long = "x".repeat(layout::CMDLINE_MAX_SIZE + 1);
        assert!(matches!(
            load_cmdline(&m, &long),
            Err(BootError::Cmdline(_))
        ));
    }
}
