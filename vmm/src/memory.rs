// SPDX-License-Identifier: Apache-2.0
//! Guest RAM, in one of two modes ([`RamMode`]):
//!
//! * **private** anonymous memory (`MAP_PRIVATE | MAP_ANONYMOUS`), as Cloud Hypervisor's
//!   default: the kernel backs it with transparent huge pages where the host allows them
//!   for anonymous memory, and no other process can map it;
//! * **shared**: one memfd mapped `MAP_SHARED`, so that vhost-user backends can map the
//!   very same pages from the file descriptors the VMM hands them. Shared memory is shmem
//!   to the kernel, which backs it with huge pages only where
//!   `/sys/kernel/mm/transparent_hugepage/shmem_enabled` allows (`advise` with the
//!   `MADV_HUGEPAGE` this module gives every mapping, or `always`/`within_size`); with the
//!   kernel's default `never` every fault maps 4 KiB, which costs a guest's boot up to 2×
//!   under nested paging.
//!
//! RAM is shared exactly when a vhost-user device needs it, unless `--memory shared=`
//! says otherwise; `shared=off` with a vhost-user device is refused. `hugepages=on` backs
//! either mode with hugetlbfs pages instead.

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
    /// Private RAM was asked for while a vhost-user device needs to map it.
    #[error("--memory shared=off: vhost-user devices map guest RAM from the VMM's memory file, which private RAM does not have; drop shared=off (shared RAM is chosen automatically when a vhost-user device is configured)")]
    SharingRequired,
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

/// How guest RAM is mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RamMode {
    /// Private anonymous memory: only this process maps it.
    Private,
    /// A memfd mapped `MAP_SHARED`, whose descriptor vhost-user backends map too.
    Shared,
}

impl RamMode {
    /// The mode for `cfg` when `needs_sharing` (a vhost-user device is configured): shared
    /// exactly then, unless `shared=` forces a mode; forced private with sharing needed is
    /// an error.
    pub fn choose(cfg: &MemoryConfig, needs_sharing: bool) -> Result<Self, MemoryError> {
        match (cfg.shared, needs_sharing) {
            (Some(false), true) => Err(MemoryError::SharingRequired),
            (Some(true), _) | (None, true) => Ok(Self::Shared),
            (Some(false), false) | (None, false) => Ok(Self::Private),
        }
    }
}

impl std::fmt::Display for RamMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Private => "private",
            Self::Shared => "shared",
        })
    }
}

/// Guest memory and how it is mapped.
pub struct GuestRam {
    /// The mapped regions (shared ones carry their memfd as file offset).
    pub mem: GuestMemoryMmap,
    /// Total RAM size in bytes.
    pub size: u64,
    /// Private or shared.
    pub mode: RamMode,
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

/// Creates guest RAM in `mode`, laid out around the MMIO hole, each mapping advised for
/// transparent huge pages (unless hugetlbfs pages back it).
pub fn create_guest_ram(cfg: &MemoryConfig, mode: RamMode) -> Result<GuestRam, MemoryError> {
    check_host_capacity(cfg)?;
    let file = match mode {
        RamMode::Shared => Some(create_memfd(cfg.size, cfg.hugepages)?),
        RamMode::Private => None,
    };
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (start, len) in layout::ram_ranges(cfg.size) {
        let len_usize = usize::try_from(len).map_err(|_| MemoryError::RegionOverflow(start.0))?;
        let region = match &file {
            Some(file) => {
                let file_offset =
                    FileOffset::new(file.try_clone().map_err(MemoryError::Memfd)?, offset);
                MmapRegion::build(
                    Some(file_offset),
                    len_usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_NORESERVE,
                )?
            }
            None => {
                let huge = if cfg.hugepages {
                    libc::MAP_HUGETLB | libc::MAP_HUGE_2MB
                } else {
                    0
                };
                MmapRegion::build(
                    None,
                    len_usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | huge,
                )?
            }
        };
        let mut region = region;
        region.set_hugetlbfs(cfg.hugepages);
        if !cfg.hugepages {
            advise_huge_pages(region.as_ptr(), len_usize);
        }
        let region =
            GuestRegionMmap::new(region, start).ok_or(MemoryError::RegionOverflow(start.0))?;
        regions.push(region);
        offset += len;
    }
    let mem = GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Layout)?;
    tracing::info!(
        mode = %mode,
        mib = cfg.size >> 20,
        hugetlbfs = cfg.hugepages,
        thp = %thp_setting(mode).unwrap_or_else(|| "unknown".into()),
        "guest RAM mapped"
    );
    Ok(GuestRam {
        mem,
        size: cfg.size,
        mode,
    })
}

/// Ask for transparent huge pages on `len` bytes at `addr` (`MADV_HUGEPAGE`); a host
/// without THP refuses, which only costs speed.
fn advise_huge_pages(addr: *mut u8, len: usize) {
    // SAFETY: the range is one mapping this module just created; madvise only changes
    // the kernel's paging policy for it.
    let rc = unsafe { libc::madvise(addr.cast(), len, libc::MADV_HUGEPAGE) };
    if rc != 0 {
        tracing::debug!("MADV_HUGEPAGE refused: {}", std::io::Error::last_os_error());
    }
}

/// Where the kernel says which transparent-huge-page policy applies to anonymous memory.
pub const THP_ANON: &str = "/sys/kernel/mm/transparent_hugepage/enabled";
/// The same for shmem (memfd) memory.
pub const THP_SHMEM: &str = "/sys/kernel/mm/transparent_hugepage/shmem_enabled";

/// The host's transparent-huge-page policy for RAM in `mode` (`always`, `advise`,
/// `madvise`, `never`, …), if the kernel has THP.
pub fn thp_setting(mode: RamMode) -> Option<String> {
    let path = match mode {
        RamMode::Private => THP_ANON,
        RamMode::Shared => THP_SHMEM,
    };
    selected_policy(&std::fs::read_to_string(path).ok()?)
}

/// The bracketed word of a sysfs policy file: `always [madvise] never` → `madvise`.
pub fn selected_policy(text: &str) -> Option<String> {
    let start = text.find('[')?;
    let end = start + text[start..].find(']')?;
    Some(text[start + 1..end].to_string())
}

/// Guest address of the first byte past low RAM (below the MMIO hole).
pub fn low_ram_end(mem_size: u64) -> GuestAddress {
    GuestAddress(mem_size.min(layout::MMIO_HOLE_START))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    fn config(shared: Option<bool>) -> MemoryConfig {
        MemoryConfig {
            size: 64 << 20,
            hugepages: false,
            shared,
        }
    }

    #[test]
    fn ram_is_shared_only_when_a_device_needs_it_unless_forced() {
        let choose = |shared, needs| RamMode::choose(&config(shared), needs);
        assert_eq!(choose(None, false).unwrap(), RamMode::Private);
        assert_eq!(choose(None, true).unwrap(), RamMode::Shared);
        assert_eq!(choose(Some(true), false).unwrap(), RamMode::Shared);
        assert_eq!(choose(Some(true), true).unwrap(), RamMode::Shared);
        assert_eq!(choose(Some(false), false).unwrap(), RamMode::Private);
        let err = choose(Some(false), true).unwrap_err();
        assert!(matches!(err, MemoryError::SharingRequired));
        assert!(err.to_string().contains("drop shared=off"), "{err}");
    }

    #[test]
    fn private_ram_has_no_file_and_keeps_what_is_written() {
        let ram = create_guest_ram(&config(None), RamMode::Private).unwrap();
        assert_eq!(ram.mode, RamMode::Private);
        let region = ram.mem.iter().next().unwrap();
        assert!(region.file_offset().is_none(), "private RAM has no file");
        ram.mem
            .write_obj(0x1234_5678_u32, GuestAddress(0x2000))
            .unwrap();
        assert_eq!(
            ram.mem.read_obj::<u32>(GuestAddress(0x2000)).unwrap(),
            0x1234_5678
        );
        // Anonymous memory is not a memfd: a backend could not map it.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let start = region.as_ptr() as usize;
        let line = maps
            .lines()
            .find(|l| l.starts_with(&format!("{start:x}-")))
            .unwrap();
        assert!(!line.contains("memfd"), "{line}");
    }

    #[test]
    fn policy_files_parse() {
        assert_eq!(
            selected_policy("always within_size [advise] never deny force\n").as_deref(),
            Some("advise")
        );
        assert_eq!(
            selected_policy("[always] madvise never").as_deref(),
            Some("always")
        );
        assert_eq!(selected_policy("always madvise never"), None);
    }

    #[test]
    fn ram_is_shared_memfd() {
        let ram = create_guest_ram(&config(Some(true)), RamMode::Shared).unwrap();
        assert_eq!(ram.mode, RamMode::Shared);
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
