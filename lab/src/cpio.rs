// SPDX-License-Identifier: Apache-2.0
//! A small writer for uncompressed `newc` cpio archives (the Linux initramfs format).
//!
//! Entries are recorded first and written in one pass by [`Cpio::write_to`]; host files are
//! streamed from disk at that point, so large payloads are never held in memory. Archives can be
//! concatenated: the kernel unpacks them in order, later entries overwriting earlier ones.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use crate::error::{LabError, Result};

const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;

#[derive(Debug)]
enum Data {
    Dir,
    Bytes(Vec<u8>),
    HostFile(PathBuf),
    Symlink(String),
}

#[derive(Debug)]
struct Entry {
    name: String,
    mode: u32,
    data: Data,
}

/// Builder for a `newc` archive. All entries are owned by root (uid/gid 0).
#[derive(Debug, Default)]
pub struct Cpio {
    entries: Vec<Entry>,
    dirs: BTreeSet<String>,
}

/// Turns `/a/b` or `a/b` into `a/b`, rejecting `..` and empty paths.
fn archive_name(dest: &Path) -> Result<String> {
    let mut parts = Vec::new();
    for c in dest.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(p) => parts.push(
                p.to_str()
                    .ok_or_else(|| LabError::InvalidPath(dest.to_path_buf()))?,
            ),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(LabError::InvalidPath(dest.to_path_buf()))
            }
        }
    }
    if parts.is_empty() {
        return Err(LabError::InvalidPath(dest.to_path_buf()));
    }
    Ok(parts.join("/"))
}

impl Cpio {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries recorded so far (including implied parent directories).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if nothing has been added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn add_parents(&mut self, name: &str) {
        let mut prefix = String::new();
        let parts: Vec<&str> = name.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if self.dirs.insert(prefix.clone()) {
                self.entries.push(Entry {
                    name: prefix.clone(),
                    mode: S_IFDIR | 0o755,
                    data: Data::Dir,
                });
            }
        }
    }

    fn push(&mut self, dest: &Path, mode: u32, data: Data) -> Result<&mut Self> {
        let name = archive_name(dest)?;
        self.add_parents(&name);
        if matches!(data, Data::Dir) && !self.dirs.insert(name.clone()) {
            return Ok(self);
        }
        self.entries.push(Entry { name, mode, data });
        Ok(self)
    }

    /// Adds a directory (and its parents).
    pub fn add_dir(&mut self, dest: impl AsRef<Path>, mode: u32) -> Result<&mut Self> {
        self.push(dest.as_ref(), S_IFDIR | (mode & 0o7777), Data::Dir)
    }

    /// Adds a regular file with the given contents and permission bits (e.g. `0o755`).
    pub fn add_file(
        &mut self,
        dest: impl AsRef<Path>,
        contents: impl Into<Vec<u8>>,
        mode: u32,
    ) -> Result<&mut Self> {
        self.push(
            dest.as_ref(),
            S_IFREG | (mode & 0o7777),
            Data::Bytes(contents.into()),
        )
    }

    /// Adds a symbolic link `dest -> target`.
    pub fn add_symlink(&mut self, dest: impl AsRef<Path>, target: &str) -> Result<&mut Self> {
        self.push(
            dest.as_ref(),
            S_IFLNK | 0o777,
            Data::Symlink(target.to_string()),
        )
    }

    /// Adds the host file `src` (symlinks followed) at `dest`, keeping its permission bits.
    /// The file is read when the archive is written.
    pub fn add_host_file(
        &mut self,
        dest: impl AsRef<Path>,
        src: impl AsRef<Path>,
    ) -> Result<&mut Self> {
        let src = src.as_ref();
        let meta = std::fs::metadata(src)
            .map_err(|e| LabError::io(format!("stat {}", src.display()), e))?;
        if !meta.is_file() {
            return Err(LabError::io(
                format!("{} is not a regular file", src.display()),
                io::Error::from(io::ErrorKind::InvalidInput),
            ));
        }
        let mode = S_IFREG | (meta.permissions().mode() & 0o7777);
        self.push(dest.as_ref(), mode, Data::HostFile(src.to_path_buf()))
    }

    /// Adds the host binary `src` as `dest_dir/<file name>` plus every shared library `ldd`
    /// lists for it (and the dynamic loader) at their host paths, so it runs inside a Debian 12
    /// initramfs. Statically linked binaries get no libraries.
    pub fn add_host_binary_with_libs(
        &mut self,
        dest_dir: impl AsRef<Path>,
        src: impl AsRef<Path>,
    ) -> Result<&mut Self> {
        let src = src.as_ref();
        let file_name = src
            .file_name()
            .ok_or_else(|| LabError::InvalidPath(src.to_path_buf()))?;
        let libs = shared_libraries(src)?;
        self.add_host_file(dest_dir.as_ref().join(file_name), src)?;
        for lib in libs {
            let name = archive_name(&lib)?;
            if self
                .entries
                .iter()
                .any(|e| e.name == name && !matches!(e.data, Data::Dir))
            {
                continue;
            }
            self.add_host_file(&lib, &lib)?;
        }
        Ok(self)
    }

    /// Writes the archive (with its `TRAILER!!!`) to `out`.
    pub fn write_to<W: Write>(&self, out: &mut W) -> Result<()> {
        let werr = |e| LabError::io("writing cpio archive", e);
        for (index, entry) in self.entries.iter().enumerate() {
            let ino = u32::try_from(index + 1).unwrap_or(u32::MAX);
            match &entry.data {
                Data::Dir => write_entry(out, ino, &entry.name, entry.mode, 0, &mut io::empty()),
                Data::Bytes(b) => write_entry(
                    out,
                    ino,
                    &entry.name,
                    entry.mode,
                    b.len() as u64,
                    &mut &b[..],
                ),
                Data::Symlink(t) => write_entry(
                    out,
                    ino,
                    &entry.name,
                    entry.mode,
                    t.len() as u64,
                    &mut t.as_bytes(),
                ),
                Data::HostFile(p) => {
                    let mut f = File::open(p)
                        .map_err(|e| LabError::io(format!("open {}", p.display()), e))?;
                    let len = f
                        .metadata()
                        .map_err(|e| LabError::io(format!("stat {}", p.display()), e))?
                        .len();
                    write_entry(out, ino, &entry.name, entry.mode, len, &mut f)
                }
            }
            .map_err(werr)?;
        }
        write_entry(out, 0, "TRAILER!!!", 0, 0, &mut io::empty()).map_err(werr)?;
        out.flush().map_err(werr)
    }

    /// Writes the archive to the file `path` (created or truncated).
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let f = File::create(path)
            .map_err(|e| LabError::io(format!("create {}", path.display()), e))?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        self.write_to(&mut w)
    }
}

fn pad4<W: Write>(out: &mut W, len: u64) -> io::Result<()> {
    let pad = ((4 - len % 4) % 4) as usize;
    out.write_all(&[0u8; 3][..pad])
}

fn write_entry<W: Write, R: io::Read>(
    out: &mut W,
    ino: u32,
    name: &str,
    mode: u32,
    size: u64,
    data: R,
) -> io::Result<()> {
    let size32 = u32::try_from(size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large for newc"))?;
    let namesize = name.len() + 1;
    let nlink = if mode & S_IFDIR == S_IFDIR { 2 } else { 1 };
    write!(
        out,
        "070701{ino:08X}{mode:08X}{:08X}{:08X}{nlink:08X}{:08X}{size32:08X}{:08X}{:08X}{:08X}{:08X}{namesize:08X}{:08X}",
        0, 0, 0, 0, 0, 0, 0, 0
    )?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad4(out, 110 + namesize as u64)?;
    let copied = io::copy(&mut data.take(size), out)?;
    if copied != size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{name}: file changed size while archiving"),
        ));
    }
    pad4(out, size)
}

/// Absolute paths of the shared libraries (and loader) `binary` needs, as reported by `ldd`.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| LabError::io("running ldd", e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if text.contains("statically linked") || stderr.contains("not a dynamic executable") {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        return Err(LabError::Ldd {
            binary: binary.to_path_buf(),
            reason: format!("{}{}", stderr.trim(), text.trim()),
        });
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("=> not found") {
            return Err(LabError::Ldd {
                binary: binary.to_path_buf(),
                reason: line.to_string(),
            });
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout_is_aligned_and_has_parents() {
        let mut c = Cpio::new();
        c.add_file("/lab/run.sh", b"exit 7\n".to_vec(), 0o755)
            .unwrap();
        let mut buf = Vec::new();
        c.write_to(&mut buf).unwrap();
        assert_eq!(buf.len() % 4, 0);
        let text = String::from_utf8_lossy(&buf);
        // "lab" directory, then the file, then the trailer.
        let lab = text.find("lab\0").unwrap();
        let run = text.find("lab/run.sh\0").unwrap();
        assert!(lab < run && run < text.find("TRAILER!!!").unwrap());
        assert!(text.contains("exit 7\n"));
        assert_eq!(&buf[..6], b"070701");
        // The file header: mode 0100755, size 7.
        let hdr = &text[run - 110..run];
        assert_eq!(&hdr[14..22], "000081ED");
        assert_eq!(&hdr[54..62], "00000007");
    }

    #[test]
    fn rejects_parent_components() {
        let mut c = Cpio::new();
        assert!(matches!(
            c.add_file("/a/../b", Vec::new(), 0o644),
            Err(LabError::InvalidPath(_))
        ));
    }

    #[test]
    fn cpio_tool_reads_our_archive() {
        if Command::new("cpio").arg("--version").output().is_err() {
            eprintln!("skipping: cpio not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut c = Cpio::new();
        c.add_file("a/b/c.txt", b"hello".to_vec(), 0o600).unwrap();
        c.add_symlink("a/link", "b/c.txt").unwrap();
        c.add_host_binary_with_libs("/bin", "/bin/sh").unwrap();
        let arc = dir.path().join("x.cpio");
        c.write_file(&arc).unwrap();
        let out = Command::new("cpio")
            .args(["-t", "-F"])
            .arg(&arc)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list = String::from_utf8_lossy(&out.stdout);
        for want in [
            "a/b/c.txt",
            "a/link",
            "bin/sh",
            "lib64/ld-linux-x86-64.so.2",
        ] {
            assert!(list.lines().any(|l| l == want), "{want} missing in {list}");
        }
    }
}
