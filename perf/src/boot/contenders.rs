// SPDX-License-Identifier: Apache-2.0
//! The VMMs `vmm-perf boot` races ([`Contender`]) and the run that boots them in turn
//! ([`BootRun`]): every repetition boots each contender once, starting one further along
//! the list each time, so no contender always boots first (into a cold page cache) or last.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use super::{host_line, measure_fn, parse, qemu_cmd, BootBench, BootSample, Mode};
use crate::{io_err, Error, Result};

/// One VMM configuration in the race.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Contender {
    /// Our VMM, no device: private RAM.
    Ours,
    /// Our VMM with a vhost-user-blk disk (our backend): shared RAM.
    OursVhostUser,
    /// QEMU, `-machine q35`.
    Qemu,
    /// QEMU, `-machine microvm`: a minimal VMM built into QEMU (no PCI, no firmware tables
    /// beyond what the kernel needs), the reference CI can run.
    QemuMicrovm,
    /// Cloud Hypervisor, `--memory size=…,shared=off` (its default).
    Ch,
    /// Cloud Hypervisor, `--memory size=…,shared=on` (memfd RAM, as vhost-user needs).
    ChShared,
}

impl Contender {
    /// Every contender, in the order reports list them.
    pub const ALL: [Contender; 6] = [
        Contender::Ours,
        Contender::OursVhostUser,
        Contender::Qemu,
        Contender::QemuMicrovm,
        Contender::Ch,
        Contender::ChShared,
    ];

    /// The name used on the command line, in the script and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Contender::Ours => "ours",
            Contender::OursVhostUser => "ours-vhost-user",
            Contender::Qemu => "qemu",
            Contender::QemuMicrovm => "qemu-microvm",
            Contender::Ch => "ch",
            Contender::ChShared => "ch-shared",
        }
    }

    /// The contender called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// How its guest RAM is mapped.
    pub fn memory(self) -> &'static str {
        match self {
            Contender::OursVhostUser | Contender::ChShared => "shared",
            _ => "private",
        }
    }

    /// Whether it needs the Cloud Hypervisor binary.
    pub fn is_ch(self) -> bool {
        matches!(self, Contender::Ch | Contender::ChShared)
    }
}

/// Where the script finds what it runs.
struct Paths {
    vmm: String,
    backend: String,
    ch: String,
    kernel: String,
    initrd: String,
    /// Scratch directory for the vhost-user disk and socket.
    work: String,
}

/// A boot race: the guest shape ([`BootBench`]) and who boots it.
pub struct BootRun {
    /// Guest shape, repetitions, mode, our VMM binary.
    pub bench: BootBench,
    /// The contenders, in the order the first repetition boots them.
    pub contenders: Vec<Contender>,
    /// Our `vhost-user-blk` binary (for [`Contender::OursVhostUser`]).
    pub backend: PathBuf,
    /// Cloud Hypervisor's binary (for [`Contender::Ch`] and [`Contender::ChShared`]).
    pub ch: Option<PathBuf>,
}

const CMDLINE: &str = "console=ttyS0 panic=-1 quiet";
const SOCKET: &str = "boot-vu.sock";

impl BootRun {
    /// The command booting `c`.
    fn command(&self, c: Contender, p: &Paths) -> String {
        let b = &self.bench;
        let (cpus, mib) = (b.cpus, b.memory_mib);
        let ours = format!(
            "{} run --kernel {} --initramfs {} --cpus {cpus} --memory {mib}M --cmdline \"{CMDLINE}\"",
            p.vmm, p.kernel, p.initrd
        );
        let ch = |shared: &str| {
            format!(
                "{} --kernel {} --initramfs {} --cmdline \"{CMDLINE}\" --cpus boot={cpus} --memory size={mib}M,shared={shared} --serial tty --console off",
                p.ch, p.kernel, p.initrd
            )
        };
        match c {
            Contender::Ours => ours,
            Contender::OursVhostUser => {
                format!("{ours} --disk vhost_user=on,socket={}/{SOCKET}", p.work)
            }
            Contender::Qemu => qemu_cmd(b, &p.kernel, &p.initrd),
            Contender::QemuMicrovm => format!(
                "qemu-system-x86_64 -enable-kvm -cpu host -machine microvm -smp {cpus} -m {mib} -nodefaults -no-user-config -display none -serial stdio -no-reboot -kernel {} -initrd {} -append \"{CMDLINE}\"",
                p.kernel, p.initrd
            ),
            Contender::Ch => ch("off"),
            Contender::ChShared => ch("on"),
        }
    }

    /// The measuring script.
    fn script(&self, p: &Paths) -> String {
        let b = &self.bench;
        let mut o = format!(
            "set -u\nW={}\nRAM_KIB={}\n{}{}",
            p.work,
            u64::from(b.memory_mib) * 1024,
            measure_fn(),
            host_line()
        );
        let vhost_user = self.contenders.contains(&Contender::OursVhostUser);
        if vhost_user {
            // One backend serves each boot's connection in turn.
            let _ = write!(
                o,
                "dd if=/dev/zero of=$W/boot-disk.img bs=1M count=16 2>/dev/null\n\
                 {} --socket $W/{SOCKET} --path $W/boot-disk.img >$W/backend.log 2>&1 &\n\
                 backend=$!\n\
                 n=0; while [ ! -S $W/{SOCKET} ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done\n",
                p.backend
            );
        }
        let n = self.contenders.len();
        for rep in 0..b.repeat {
            for k in 0..n {
                let c = self.contenders[(rep + k) % n];
                let _ = writeln!(
                    o,
                    "MEM_MODE={} measure {} {}",
                    c.memory(),
                    c.name(),
                    self.command(c, p)
                );
            }
        }
        if vhost_user {
            o.push_str("kill $backend 2>/dev/null; wait $backend 2>/dev/null\n");
        }
        o
    }

    /// Boots every contender `repeat` times; returns the samples and the raw output.
    pub fn run(&self) -> Result<(Vec<BootSample>, String)> {
        let ch = match (&self.ch, self.contenders.iter().any(|c| c.is_ch())) {
            (Some(ch), _) => ch.display().to_string(),
            (None, true) => {
                return Err(Error::Usage(
                    "the ch and ch-shared contenders need --ch-bin".into(),
                ))
            }
            (None, false) => String::new(),
        };
        let images = lab::Images::ensure_default()
            .map_err(|e| Error::Backend(format!("lab images: {e}")))?;
        let dir = tempfile::tempdir().map_err(io_err("temp dir"))?;
        let initrd = lab::guest_initramfs(
            &images,
            "true\n",
            false,
            lab::Cpio::new(),
            &dir.path().join("guest.cpio"),
        )
        .map_err(|e| Error::Backend(format!("guest initramfs: {e}")))?;
        let output = match self.bench.mode {
            Mode::Direct => {
                let paths = Paths {
                    vmm: self.bench.vmm.display().to_string(),
                    backend: self.backend.display().to_string(),
                    ch,
                    kernel: images.kernel.display().to_string(),
                    initrd: initrd.display().to_string(),
                    work: dir.path().display().to_string(),
                };
                let out = Command::new("sh")
                    .arg("-c")
                    .arg(self.script(&paths))
                    .output()
                    .map_err(io_err("sh"))?;
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
            Mode::Lab => self.run_in_lab(&images, &initrd)?,
        };
        Ok((parse(&output), output))
    }

    fn run_in_lab(&self, images: &lab::Images, initrd: &Path) -> Result<String> {
        let in_lab = |bin: &Path| {
            let name = bin.file_name().unwrap_or_default().to_string_lossy();
            format!("/lab/bin/{name}")
        };
        let paths = Paths {
            vmm: in_lab(&self.bench.vmm),
            backend: in_lab(&self.backend),
            ch: self.ch.as_deref().map(in_lab).unwrap_or_default(),
            kernel: lab::LAB_GUEST_KERNEL.into(),
            initrd: lab::LAB_GUEST_INITRD.into(),
            work: "/tmp".into(),
        };
        let mut lab = lab::LabHost::new(images)
            .binary(&self.bench.vmm, "/lab/bin")
            .with_guest(initrd);
        if self.contenders.contains(&Contender::OursVhostUser) {
            lab = lab.binary(&self.backend, "/lab/bin");
        }
        if let Some(ch) = self
            .ch
            .as_ref()
            .filter(|_| self.contenders.iter().any(|c| c.is_ch()))
        {
            lab = lab.binary(ch, "/lab/bin");
        }
        let boots = (self.bench.repeat * self.contenders.len()) as u64;
        let run = lab
            .script(self.script(&paths))
            .timeout(Duration::from_secs(120 + 40 * boots))
            .run()?;
        Ok(run.console)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(contenders: Vec<Contender>, repeat: usize) -> BootRun {
        BootRun {
            bench: BootBench {
                vmm: "vmm".into(),
                repeat,
                cpus: 2,
                memory_mib: 512,
                mode: Mode::Lab,
            },
            contenders,
            backend: "vhost-user-blk".into(),
            ch: None,
        }
    }

    fn paths() -> Paths {
        Paths {
            vmm: "/b/vmm".into(),
            backend: "/b/vub".into(),
            ch: "/b/ch".into(),
            kernel: "/k".into(),
            initrd: "/i".into(),
            work: "/w".into(),
        }
    }

    #[test]
    fn contenders_alternate_and_say_how_their_ram_is_mapped() {
        let r = run(Contender::ALL.to_vec(), 2);
        let s = r.script(&paths());
        let order: Vec<&str> = s
            .lines()
            .filter_map(|l| l.strip_prefix("MEM_MODE="))
            .map(|l| l.split_whitespace().nth(2).unwrap())
            .collect();
        assert_eq!(
            order,
            [
                "ours",
                "ours-vhost-user",
                "qemu",
                "qemu-microvm",
                "ch",
                "ch-shared",
                "ours-vhost-user",
                "qemu",
                "qemu-microvm",
                "ch",
                "ch-shared",
                "ours"
            ]
        );
        assert!(s.contains("RAM_KIB=524288"));
        assert!(s.contains("BOOT-HOST"));
        let line = |name: &str| {
            s.lines()
                .find(|l| l.contains(&format!(" measure {name} ")))
                .unwrap()
                .to_string()
        };
        assert!(line("ours").starts_with("MEM_MODE=private"));
        assert!(line("ours-vhost-user").ends_with("--disk vhost_user=on,socket=/w/boot-vu.sock"));
        assert!(line("ours-vhost-user").starts_with("MEM_MODE=shared"));
        assert!(line("qemu-microvm").contains("-machine microvm"));
        assert!(line("ch").contains("--memory size=512M,shared=off"));
        assert!(line("ch-shared").contains("--memory size=512M,shared=on"));
        assert!(line("ch-shared").starts_with("MEM_MODE=shared"));
        // The backend is started once and stopped at the end.
        assert_eq!(s.matches("/b/vub --socket").count(), 1);
        assert!(s.trim_end().ends_with("wait $backend 2>/dev/null"));
    }

    #[test]
    fn without_a_vhost_user_contender_no_backend_runs() {
        let s = run(vec![Contender::Ours, Contender::Qemu], 1).script(&paths());
        assert!(!s.contains("/b/vub"));
        assert_eq!(
            Contender::from_name("qemu-microvm"),
            Some(Contender::QemuMicrovm)
        );
        assert_eq!(Contender::from_name("firecracker"), None);
    }

    #[test]
    fn cloud_hypervisor_needs_its_binary() {
        let err = run(vec![Contender::Ch], 1).run().unwrap_err();
        assert!(err.to_string().contains("--ch-bin"), "{err}");
    }
}
