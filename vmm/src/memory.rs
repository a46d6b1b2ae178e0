//! Guest RAM: one memfd, mapped `MAP_SHARED`, so that vhost-user backends can
//! map the very same pages from the file descriptors the VMM hands them.

use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::config::MemoryConfig;
use crate::layout;

/// Errors while creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// memfd_create failed.
    #[error("cannot create the guest memory file (memfd_create): {0}")]
    Memfd(#[source] std::io::Error),
    /// ftruncate failed.
    #[error("cannot size the guest memory file to {size} bytes: {source}")]
    Truncate {
        /// Requested size.
        size: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// mmap failed.
    #[error("cannot map guest memory: {0}")]
    Mmap(#[from] vm_memory::mmap::MmapRegionError),
    /// A RAM range does not fit the host's address space.
    #[error("invalid guest memory layout: region at {0:#x} overflows")]
    RegionOverflow(u64),
    /// The region collection was rejected.
    #[error("invalid guest memory layout: {0}")]
    Layout(#[source] vm_memory::GuestRegionCollectionError),
    /// Hugepages requested with a size that is not a multiple of 2 MiB.
    #[error("with hugepages=on the memory size must be a multiple of 2 MiB")]
    HugepageAlignment,
    /// The host cannot provide the requested memory.
    #[error(
        "{requested} MiB of guest memory requested but the host has only {available} MiB {what}"
    )]
    HostTooSmall {
        /// Requested MiB.
        requested: u64,
        /// Available MiB.
        available: u64,
        /// What was measured ("available", "free in 2 MiB hugepages").
        what: &'static str,
    },
}

/// Guest memory together with the file that backs it.
pub struct GuestRam {
    /// The mapped regions.
    pub mem: GuestMemoryMmap,
    /// Total RAM size in bytes.
    pub size: u64,
}

const HUGEPAGE_SIZE: u64 = 2 << 20;

/// Checks that the host can back `cfg` before anything is allocated, so that
/// an impossible request fails with a clear message instead of an OOM kill.
pub fn check_host_capacity(cfg: &MemoryConfig) -> Result<(), MemoryError> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let requested = cfg.size.div_ceil(1 << 20);
    if cfg.hugepages {
        if !cfg.size.is_multiple_of(HUGEPAGE_SIZE) {
            return Err(MemoryError::HugepageAlignment);
        }
        let free = meminfo_value(&meminfo, "HugePages_Free:").unwrap_or(0);
        let size_kib = meminfo_value(&meminfo, "Hugepagesize:").unwrap_or(2048);
        let available = free * size_kib / 1024;
        if requested > available {
            return Err(MemoryError::HostTooSmall {
                requested,
                available,
                what: "free in hugepages (reserve them with /proc/sys/vm/nr_hugepages)",
            });
        }
    } else if let Some(kib) = meminfo_value(&meminfo, "MemAvailable:") {
        let swap = meminfo_value(&meminfo, "SwapFree:").unwrap_or(0);
        let available = (kib + swap) / 1024;
        if requested > available {
            return Err(MemoryError::HostTooSmall {
                requested,
                available,
                what: "available (MemAvailable + SwapFree)",
            });
        }
    }
    Ok(())
}

fn meminfo_value(meminfo: &str, key: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn create_memfd(size: u64, hugepages: bool) -> Result<File, MemoryError> {
    let mut flags = libc::MFD_CLOEXEC;
    if hugepages {
        flags |= libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
    }
    // SAFETY: the name is a valid NUL-terminated string and the flags are valid.
    let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), flags) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)
        .map_err(|source| MemoryError::Truncate { size, source })?;
    Ok(file)
}

/// Creates memfd-backed, `MAP_SHARED` guest RAM laid out around the MMIO hole.
pub fn create_guest_ram(cfg: &MemoryConfig) -> Result<GuestRam, MemoryError> {
    check_host_capacity(cfg)?;
    let file = create_memfd(cfg.size, cfg.hugepages)?;
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (start, len) in layout::ram_ranges(cfg.size) {
        let len_usize = usize::try_from(len).map_err(|_| MemoryError::RegionOverflow(start.0))?;
        let file_offset = FileOffset::new(file.try_clone().map_err(MemoryError::Memfd)?, offset);
        let mut region = MmapRegion::build(
            Some(file_offset),
            len_usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_NORESERVE,
        )?;
        region.set_hugetlbfs(cfg.hugepages);
        let region =
            GuestRegionMmap::new(region, start).ok_or(MemoryError::RegionOverflow(start.0))?;
        regions.push(region);
        offset += len;
    }
    let mem = GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Layout)?;
    Ok(GuestRam {
        mem,
        size: cfg.size,
    })
}

/// Guest address of the first byte past low RAM (below the MMIO hole).
pub fn low_ram_end(mem_size: u64) -> GuestAddress {
    GuestAddress(mem_size.min(layout::MMIO_HOLE_START))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn ram_is_shared_memfd() {
        let ram = create_guest_ram(&MemoryConfig {
            size: 64 << 20,
            hugepages: false,
            shared: None,
        })
        .unwrap();
        assert_eq!(ram.mem.num_regions(), 1);
        let region = ram.mem.iter().next().unwrap();
        let fo = region.file_offset().expect("memfd backed");
        ram.mem
            .write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        // The same bytes are visible through the file: MAP_SHARED.
        let mut buf = [0u8; 4];
        use std::os::unix::fs::FileExt;
        fo.file().read_exact_at(&mut buf, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
    }

    #[test]
    fn absurd_sizes_are_refused_up_front() {
        let err = check_host_capacity(&MemoryConfig {
            size: 1 << 50,
            hugepages: false,
            shared: None,
        })
        .unwrap_err();
        assert!(matches!(err, MemoryError::HostTooSmall { .. }), "{err}");
        let err = check_host_capacity(&MemoryConfig {
            size: (2 << 20) + 4096,
            hugepages: true,
            shared: None,
        })
        .unwrap_err();
        assert!(matches!(err, MemoryError::HugepageAlignment));
    }

    #[test]
    fn meminfo_parsing() {
        let m = "MemTotal:  100 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(meminfo_value(m, "MemAvailable:"), Some(2048));
        assert_eq!(meminfo_value(m, "HugePages_Free:"), None);
    }
}
