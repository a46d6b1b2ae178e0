// SPDX-License-Identifier: Apache-2.0
//! The prebuilt kernel and initramfs archives made by `scripts/build-images.sh`.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cpio::Cpio;
use crate::error::{LabError, Result};

/// Paths of the lab images (all under `<repo>/.cache/images/`).
#[derive(Debug, Clone)]
pub struct Images {
    /// Debian cloud kernel, used by the lab host and by nested guests.
    pub kernel: PathBuf,
    /// busybox + generic guest `/init` + virtio modules.
    pub guest_base: PathBuf,
    /// fio + iperf3 with their shared libraries; append to `guest_base` when needed.
    pub guest_tools: PathBuf,
    /// The lab host's base initramfs (modules, QEMU, fio, iperf3, lab `/init`).
    pub lab_base: PathBuf,
}

/// The repository root this crate was compiled in (parent of `lab/`).
pub fn repo_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

impl Images {
    /// The image paths inside `dir`, without checking that they exist.
    pub fn in_dir(dir: &Path) -> Images {
        Images {
            kernel: dir.join("vmlinuz"),
            guest_base: dir.join("guest-base.cpio"),
            guest_tools: dir.join("guest-tools.cpio"),
            lab_base: dir.join("lab-base.cpio"),
        }
    }

    fn all_present(&self) -> bool {
        [
            &self.kernel,
            &self.guest_base,
            &self.guest_tools,
            &self.lab_base,
        ]
        .iter()
        .all(|p| p.metadata().map(|m| m.len() > 0).unwrap_or(false))
    }

    /// Returns the images of `repo_root`, running `scripts/build-images.sh` first if any is
    /// missing. Concurrent callers (threads or processes) are serialized by a lock file, so the
    /// script runs at most once.
    pub fn ensure(repo_root: &Path) -> Result<Images> {
        let cache = repo_root.join(".cache");
        let images = Images::in_dir(&cache.join("images"));
        if images.all_present() {
            return Ok(images);
        }
        std::fs::create_dir_all(&cache)
            .map_err(|e| LabError::io(format!("mkdir {}", cache.display()), e))?;
        let _lock = FileLock::acquire(&cache.join("images.lock"))?;
        if images.all_present() {
            return Ok(images);
        }
        let script = repo_root.join("scripts/build-images.sh");
        tracing::info!("building lab images with {}", script.display());
        let out = Command::new("bash")
            .arg(&script)
            .env("LAB_CACHE_DIR", &cache)
            .output()
            .map_err(|e| LabError::io(format!("running {}", script.display()), e))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(LabError::BuildImages(format!(
                "{} exited with {}:\n{}",
                script.display(),
                out.status,
                crate::tail_lines(&stderr, 30)
            )));
        }
        if !images.all_present() {
            return Err(LabError::BuildImages(format!(
                "{} succeeded but images are missing in {}",
                script.display(),
                cache.join("images").display()
            )));
        }
        Ok(images)
    }

    /// [`Images::ensure`] for the repository this crate lives in, or the directory named by the
    /// `LAB_IMAGES_DIR` environment variable if set (then nothing is built).
    pub fn ensure_default() -> Result<Images> {
        if let Some(dir) = std::env::var_os("LAB_IMAGES_DIR") {
            let images = Images::in_dir(Path::new(&dir));
            if !images.all_present() {
                return Err(LabError::BuildImages(format!(
                    "LAB_IMAGES_DIR={} lacks some images",
                    Path::new(&dir).display()
                )));
            }
            return Ok(images);
        }
        Images::ensure(&repo_root())
    }
}

/// An exclusive `flock` on a file, released on drop (when the file is closed).
struct FileLock(#[allow(dead_code)] File);

impl FileLock {
    fn acquire(path: &Path) -> Result<FileLock> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| LabError::io(format!("open {}", path.display()), e))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(LabError::io(
                format!("flock {}", path.display()),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(FileLock(f))
    }
}

/// Kernel messages below error level stay off the guest console while the test script runs
/// (`dmesg` still has them): the kernel prints them asynchronously, so one could land inside
/// the script's output, such as a fio or iperf3 JSON document (seen: `drop_caches: 3`, and the
/// clocksource watchdog's warnings about the nested guest's TSC, in the middle of one). Errors,
/// oopses and panics are still printed.
const QUIET_CONSOLE: &str = "echo 4 > /proc/sys/kernel/printk\n";

/// Builds a nested-guest initramfs at `out`: `guest-base` + (optionally) `guest-tools` + an
/// overlay holding `extra` and `/test.sh` = `QUIET_CONSOLE` + `test_script`. The guest
/// `/init` runs `/test.sh`, prints `GUEST-EXIT-STATUS=N` and powers off. Returns `out`.
pub fn guest_initramfs(
    images: &Images,
    test_script: &str,
    with_tools: bool,
    mut extra: Cpio,
    out: &Path,
) -> Result<PathBuf> {
    let script = format!("{QUIET_CONSOLE}{test_script}");
    extra.add_file("/test.sh", script.into_bytes(), 0o755)?;
    let mut parts = vec![images.guest_base.as_path()];
    if with_tools {
        parts.push(images.guest_tools.as_path());
    }
    concat_with_overlay(&parts, &extra, out)?;
    Ok(out.to_path_buf())
}

/// Writes `parts` (existing archives) followed by `overlay` into `out`.
pub(crate) fn concat_with_overlay(parts: &[&Path], overlay: &Cpio, out: &Path) -> Result<()> {
    let mut dst =
        File::create(out).map_err(|e| LabError::io(format!("create {}", out.display()), e))?;
    for part in parts {
        let mut src =
            File::open(part).map_err(|e| LabError::io(format!("open {}", part.display()), e))?;
        // std::io::copy uses copy_file_range between files: cheap even for 100+ MB archives.
        std::io::copy(&mut src, &mut dst).map_err(|e| {
            LabError::io(format!("copy {} to {}", part.display(), out.display()), e)
        })?;
    }
    let mut w = std::io::BufWriter::with_capacity(1 << 20, dst);
    overlay.write_to(&mut w)
}
