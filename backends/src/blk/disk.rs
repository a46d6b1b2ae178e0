// SPDX-License-Identifier: Apache-2.0
//! The backing store: a raw file or a block device.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use vmm_sys_util::ioctl::ioctl_with_mut_ref;
use vmm_sys_util::ioctl_ior_nr;

use crate::{Error, Result};

ioctl_ior_nr!(BLKGETSIZE64, 0x12, 114, u64);

/// An opened backing store.
#[derive(Debug)]
pub struct Disk {
    /// Open file (O_DIRECT if requested).
    pub file: File,
    /// Path it was opened from.
    pub path: PathBuf,
    /// Size in bytes (BLKGETSIZE64 for block devices).
    pub size: u64,
    /// Whether `path` is a block device.
    pub is_block_device: bool,
}

impl Disk {
    /// Open `path` read-only or read-write, optionally with O_DIRECT.
    pub fn open(path: &Path, readonly: bool, direct: bool) -> Result<Self> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(!readonly);
        if direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        let file = opts.open(path).map_err(|source| Error::Open {
            path: path.to_owned(),
            source,
        })?;
        let size_err = |source| Error::DiskSize {
            path: path.to_owned(),
            source,
        };
        let meta = file.metadata().map_err(size_err)?;
        let is_block_device = meta.file_type().is_block_device();
        let size = if is_block_device {
            let mut size = 0u64;
            // SAFETY: BLKGETSIZE64 writes one u64 into `size`, which outlives the call.
            let ret = unsafe { ioctl_with_mut_ref(&file, BLKGETSIZE64(), &mut size) };
            if ret < 0 {
                return Err(size_err(std::io::Error::last_os_error()));
            }
            size
        } else {
            meta.len()
        };
        Ok(Self {
            file,
            path: path.to_owned(),
            size,
            is_block_device,
        })
    }

    /// Capacity in 512-byte sectors (a partial last sector is not exposed).
    pub fn sectors(&self) -> u64 {
        self.size / super::SECTOR_SIZE
    }
}
