// SPDX-License-Identifier: Apache-2.0
//! Up-front checks on the host's sysfs: the device exists, is bound to
//! vfio-pci, has an IOMMU group, and every member of that group is bound to
//! vfio-pci or to no driver (the kernel's "viable" rule). All checks take a
//! sysfs root so that tests can run against a fake tree.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Result, VfioError};

/// A device that passed the checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedDevice {
    /// Canonical sysfs directory (…/devices/pci0000:00/DDDD:BB:DD.F).
    pub sysfs: PathBuf,
    /// The PCI address, e.g. `0000:00:04.0`.
    pub bdf: String,
    /// The IOMMU group number.
    pub group: u32,
}

/// The name of the driver `dev` is bound to, if any.
pub fn driver_of(dev: &Path) -> Option<String> {
    let link = fs::read_link(dev.join("driver")).ok()?;
    link.file_name().map(|n| n.to_string_lossy().into_owned())
}

fn is_bdf(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

/// Checks `path` (a `/sys/bus/pci/devices/BDF` path, possibly under a fake
/// root) for passthrough. `iommu_groups` is the `kernel/iommu_groups`
/// directory of the same sysfs tree.
pub fn check_device(path: &Path, iommu_groups: &Path) -> Result<CheckedDevice> {
    if !path.exists() {
        return Err(VfioError::NoSuchDevice(path.to_path_buf()));
    }
    let sysfs = fs::canonicalize(path).map_err(|source| VfioError::Sysfs {
        path: path.to_path_buf(),
        source,
    })?;
    let bdf = sysfs
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| is_bdf(n))
        .ok_or_else(|| VfioError::NotPciDevice(path.to_path_buf()))?;
    // No IOMMU first: binding to vfio-pci cannot help without one.
    let group = fs::read_link(sysfs.join("iommu_group"))
        .ok()
        .and_then(|l| l.file_name()?.to_str()?.parse::<u32>().ok())
        .ok_or_else(|| VfioError::NoIommu { bdf: bdf.clone() })?;
    match driver_of(&sysfs).as_deref() {
        Some("vfio-pci") => {}
        Some(driver) => {
            return Err(VfioError::WrongDriver {
                bdf,
                driver: driver.to_string(),
            })
        }
        None => return Err(VfioError::Unbound { bdf }),
    }
    let members = iommu_groups.join(group.to_string()).join("devices");
    let entries = fs::read_dir(&members).map_err(|source| VfioError::Sysfs {
        path: members.clone(),
        source,
    })?;
    let mut others: Vec<(String, String)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let driver = driver_of(&e.path())?;
            (driver != "vfio-pci").then_some((name, driver))
        })
        .collect();
    others.sort();
    if let Some((other, driver)) = others.into_iter().next() {
        return Err(VfioError::GroupNotViable {
            bdf,
            group,
            other,
            driver,
        });
    }
    Ok(CheckedDevice { sysfs, bdf, group })
}

/// Rejects duplicates (also via different paths to the same device), then
/// checks every device; nothing is opened before all of them pass.
pub fn check_devices(paths: &[PathBuf], iommu_groups: &Path) -> Result<Vec<CheckedDevice>> {
    let mut seen: Vec<PathBuf> = Vec::new();
    for p in paths {
        let key = fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        if seen.contains(&key) {
            let name = key.file_name().map_or_else(
                || key.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            return Err(VfioError::Duplicate(name));
        }
        seen.push(key);
    }
    paths
        .iter()
        .map(|p| check_device(p, iommu_groups))
        .collect()
}

/// The host's `/sys/kernel/iommu_groups`.
pub const IOMMU_GROUPS: &str = "/sys/kernel/iommu_groups";

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake sysfs: devices under devices/pci0000:00, links under
    /// bus/pci/devices, drivers under bus/pci/drivers, groups under kernel/iommu_groups.
    struct FakeSysfs(tempfile::TempDir);

    impl FakeSysfs {
        fn new() -> Self {
            let d = tempfile::tempdir().unwrap();
            for sub in [
                "devices/pci0000:00",
                "bus/pci/devices",
                "bus/pci/drivers/vfio-pci",
                "bus/pci/drivers/nvme",
                "bus/pci/drivers/e1000e",
                "kernel/iommu_groups",
            ] {
                fs::create_dir_all(d.path().join(sub)).unwrap();
            }
            Self(d)
        }
        fn root(&self) -> &Path {
            self.0.path()
        }
        fn groups(&self) -> PathBuf {
            self.root().join("kernel/iommu_groups")
        }
        fn add(&self, bdf: &str, driver: Option<&str>, group: Option<u32>) -> PathBuf {
            let dev = self.root().join("devices/pci0000:00").join(bdf);
            fs::create_dir_all(&dev).unwrap();
            if let Some(drv) = driver {
                symlink(
                    self.root().join("bus/pci/drivers").join(drv),
                    dev.join("driver"),
                )
                .unwrap();
            }
            if let Some(g) = group {
                let gdir = self.groups().join(g.to_string());
                fs::create_dir_all(gdir.join("devices")).unwrap();
                symlink(&gdir, dev.join("iommu_group")).unwrap();
                symlink(&dev, gdir.join("devices").join(bdf)).unwrap();
            }
            let link = self.root().join("bus/pci/devices").join(bdf);
            symlink(&dev, &link).unwrap();
            link
        }
    }

    #[test]
    fn bound_device_in_a_viable_group_passes() {
        let fs = FakeSysfs::new();
        let p = fs.add("0000:00:04.0", Some("vfio-pci"), Some(7));
        fs.add("0000:00:04.1", None, Some(7));
        let d = check_device(&p, &fs.groups()).unwrap();
        assert_eq!(d.bdf, "0000:00:04.0");
        assert_eq!(d.group, 7);
    }

    #[test]
    fn missing_path() {
        let fs = FakeSysfs::new();
        let p = fs.root().join("bus/pci/devices/0000:00:09.0");
        let e = check_device(&p, &fs.groups()).unwrap_err();
        assert!(matches!(e, VfioError::NoSuchDevice(_)), "{e}");
        assert!(e.to_string().contains("lspci -D"));
    }

    #[test]
    fn not_a_pci_path() {
        let fs = FakeSysfs::new();
        let e = check_device(fs.root(), &fs.groups()).unwrap_err();
        assert!(matches!(e, VfioError::NotPciDevice(_)), "{e}");
    }

    #[test]
    fn host_driver_is_named_with_the_bind_command() {
        let fs = FakeSysfs::new();
        let p = fs.add("0000:00:04.0", Some("nvme"), Some(3));
        let e = check_device(&p, &fs.groups()).unwrap_err().to_string();
        assert!(e.contains("bound to nvme"), "{e}");
        assert!(e.contains("scripts/vfio-bind.sh 0000:00:04.0"), "{e}");
        let p = fs.add("0000:00:05.0", None, Some(4));
        let e = check_device(&p, &fs.groups()).unwrap_err();
        assert!(matches!(e, VfioError::Unbound { .. }), "{e}");
    }

    #[test]
    fn no_iommu_group_suggests_intel_iommu() {
        let fs = FakeSysfs::new();
        let p = fs.add("0000:00:04.0", Some("vfio-pci"), None);
        let e = check_device(&p, &fs.groups()).unwrap_err().to_string();
        assert!(e.contains("intel_iommu=on") && e.contains("lab"), "{e}");
        // Reported before the driver: binding to vfio-pci would not help.
        let p = fs.add("0000:00:05.0", Some("nvme"), None);
        let e = check_device(&p, &fs.groups()).unwrap_err();
        assert!(matches!(e, VfioError::NoIommu { .. }), "{e}");
    }

    #[test]
    fn group_member_on_host_driver_is_not_viable() {
        let fs = FakeSysfs::new();
        let p = fs.add("0000:00:04.0", Some("vfio-pci"), Some(2));
        fs.add("0000:00:04.1", Some("e1000e"), Some(2));
        let e = check_device(&p, &fs.groups()).unwrap_err();
        match &e {
            VfioError::GroupNotViable {
                group,
                other,
                driver,
                ..
            } => {
                assert_eq!(
                    (*group, other.as_str(), driver.as_str()),
                    (2, "0000:00:04.1", "e1000e")
                )
            }
            _ => panic!("{e}"),
        }
        assert!(e.to_string().contains("vfio-bind.sh 0000:00:04.1"));
    }

    #[test]
    fn duplicates_are_rejected_even_via_different_paths() {
        let fs = FakeSysfs::new();
        let p = fs.add("0000:00:04.0", Some("vfio-pci"), Some(1));
        let canon = fs::canonicalize(&p).unwrap();
        let e = check_devices(&[p, canon], &fs.groups()).unwrap_err();
        assert!(
            matches!(e, VfioError::Duplicate(ref b) if b == "0000:00:04.0"),
            "{e}"
        );
    }
}
