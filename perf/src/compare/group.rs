// SPDX-License-Identifier: Apache-2.0
//! One group's run: its script (and guest initramfs) prepared, then run inside the lab host or
//! directly on this host, with its console fed to the [`Recorder`] line by line.

use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::collect::Collector;
use super::matrix::{Kind, PlannedCell, Tier, Workload};
use super::recorder::Recorder;
use super::run::Options;
use super::script::{self, Paths, Settings};
use crate::boot::Mode;
use crate::{io_err, Error, Result};

/// Where the lab host gets Debian's generic kernel (the `emulated` tier's e1000 guest).
const LAB_GENERIC_KERNEL: &str = "/lab/bin/vmlinuz-generic";

/// How often the console loops look at the stop flag and the worker.
const POLL: Duration = Duration::from_millis(200);

/// A group of tiers run by one script: every host-side tier together, or one guest tier.
pub(super) struct Group {
    /// `host`, the guest tier's name, or either with `-retry`.
    pub name: String,
    /// The cells the script runs.
    pub cells: Vec<PlannedCell>,
    /// The tier whose guest the script boots, if any.
    pub guest_tier: Option<Tier>,
}

/// What every group of one run shares.
pub(super) struct GroupRun<'a> {
    /// The run's options.
    pub opts: &'a Options,
    /// Kernel and initramfs images (lab mode, or any guest).
    pub images: Option<&'a lab::Images>,
    /// Scratch directory of the run.
    pub tmp: &'a Path,
    /// Set by the Ctrl-C handler.
    pub stop: &'a AtomicBool,
}

impl GroupRun<'_> {
    fn images(&self) -> Result<&lab::Images> {
        self.images
            .ok_or_else(|| Error::Backend("lab images were not prepared".into()))
    }

    fn settings(&self) -> &Settings {
        &self.opts.settings
    }
}

/// A group's script and the files it needs, ready to run.
struct Prepared {
    script: String,
    /// The user's fio job files: (workload name, path here).
    jobs: Vec<(String, PathBuf)>,
    /// Debian's generic kernel and its `e1000.ko`, for an e1000 guest.
    generic: Option<(PathBuf, PathBuf)>,
    /// Paths as seen on this host.
    host_paths: Paths,
    boot_initrd: PathBuf,
    console_path: PathBuf,
    timeout: Duration,
}

/// The running group's console: every line goes to its log and through the marker parser.
struct Console {
    log: std::fs::File,
    collector: Collector,
}

impl Console {
    fn create(path: &Path) -> Result<Console> {
        Ok(Console {
            log: std::fs::File::create(path).map_err(io_err("console log"))?,
            collector: Collector::default(),
        })
    }

    fn line(&mut self, rec: &mut Recorder, line: &str) {
        let _ = writeln!(self.log, "{line}");
        if let Some(ev) = self.collector.line(line) {
            rec.event(ev);
        }
    }
}

/// Runs one group's script and feeds its console to `rec`.
pub(super) fn run_group(ctx: &GroupRun, g: &Group, rec: &mut Recorder) -> Result<()> {
    let p = prepare(ctx, g, &rec.dir)?;
    let mut console = Console::create(&p.console_path)?;
    match ctx.opts.mode {
        Mode::Lab => run_in_lab(ctx, g, &p, &mut console, rec),
        Mode::Direct => run_direct(ctx, &p, &mut console, rec),
    }
}

/// Writes the group's script (and builds its guest's initramfs) and works out its timeout.
fn prepare(ctx: &GroupRun, g: &Group, dir: &Path) -> Result<Prepared> {
    let mode = ctx.opts.mode;
    let boot_initrd = ctx.tmp.join("guest-boot.cpio");
    if let Some(images) = ctx.images {
        if !boot_initrd.exists() {
            lab::guest_initramfs(images, "true\n", false, lab::Cpio::new(), &boot_initrd)
                .map_err(|e| Error::Backend(format!("guest initramfs: {e}")))?;
        }
    }
    let jobs = fio_jobs(g);
    let generic = e1000_kernel(g);
    let host_paths = host_paths(ctx, g, &boot_initrd, generic.as_ref());
    let paths = match mode {
        Mode::Lab => lab_paths(),
        Mode::Direct => host_paths.clone(),
    };
    let script = match g.guest_tier {
        Some(tier) => {
            let (host_script, guest) =
                script::guest_scripts(tier, &g.cells, ctx.settings(), &paths);
            let initrd = Path::new(&host_paths.tools_initrd);
            guest_initramfs(ctx, &guest, generic.as_ref(), &jobs, initrd)?;
            host_script
        }
        None => {
            let mut s = script::host_script(&g.cells, ctx.settings(), &paths);
            if mode == Mode::Lab {
                s.push_str(&lab_check());
            }
            s
        }
    };
    if mode == Mode::Direct {
        copy_jobs(&jobs, Path::new(&host_paths.jobs_dir))?;
    }
    let script_path = dir.join(format!("script-{}.sh", g.name));
    std::fs::write(&script_path, &script)
        .map_err(io_err(format!("write {}", script_path.display())))?;
    Ok(Prepared {
        script,
        jobs,
        generic,
        host_paths,
        boot_initrd,
        console_path: dir.join(format!("console-{}.log", g.name)),
        timeout: group_timeout(g, ctx.settings()),
    })
}

/// The user's fio job files among the group's cells.
fn fio_jobs(g: &Group) -> Vec<(String, PathBuf)> {
    g.cells
        .iter()
        .filter_map(|c| match &c.workload {
            Workload::FioJob { name, path } => Some((name.clone(), path.clone())),
            _ => None,
        })
        .collect()
}

/// The e1000 guest boots Debian's generic kernel and loads its e1000 module.
fn e1000_kernel(g: &Group) -> Option<(PathBuf, PathBuf)> {
    let e1000 = g
        .cells
        .iter()
        .any(|c| c.tier == Tier::Emulated && c.workload.kind() == Kind::Net);
    if e1000 {
        super::matrix::generic_kernel(&lab::repo_root().join(".cache/generic/root"))
    } else {
        None
    }
}

/// The paths on this host (the script's paths in direct mode).
fn host_paths(
    ctx: &GroupRun,
    g: &Group,
    boot_initrd: &Path,
    generic: Option<&(PathBuf, PathBuf)>,
) -> Paths {
    let opts = ctx.opts;
    Paths {
        vmm: opts.vmm.display().to_string(),
        bin_dir: opts.bin_dir.display().to_string(),
        kernel: ctx
            .images
            .map_or(String::new(), |i| i.kernel.display().to_string()),
        tools_initrd: ctx
            .tmp
            .join(format!("guest-{}.cpio", g.name))
            .display()
            .to_string(),
        boot_initrd: boot_initrd.display().to_string(),
        work: ctx.tmp.join("work").display().to_string(),
        jobs_dir: ctx.tmp.join("jobs").display().to_string(),
        generic_kernel: generic.map_or(String::new(), |(k, _)| k.display().to_string()),
    }
}

/// The paths inside the lab host.
fn lab_paths() -> Paths {
    Paths {
        vmm: "/lab/bin/vmm".into(),
        bin_dir: "/lab/bin".into(),
        kernel: lab::LAB_GUEST_KERNEL.into(),
        tools_initrd: lab::LAB_GUEST_INITRD.into(),
        boot_initrd: "/lab/guest-boot.cpio".into(),
        work: "/tmp/vmm-perf".into(),
        jobs_dir: "/lab/jobs".into(),
        generic_kernel: LAB_GENERIC_KERNEL.into(),
    }
}

/// The guest tier's initramfs: fio/iperf3, the guest script, the user's jobs, `e1000.ko`.
fn guest_initramfs(
    ctx: &GroupRun,
    guest_script: &str,
    generic: Option<&(PathBuf, PathBuf)>,
    jobs: &[(String, PathBuf)],
    out: &Path,
) -> Result<()> {
    let mut extra = lab::Cpio::new();
    if let Some((_, ko)) = generic {
        extra
            .add_host_file("/e1000.ko", ko)
            .map_err(|e| Error::Backend(format!("{}: {e}", ko.display())))?;
    }
    for (name, path) in jobs {
        extra
            .add_host_file(format!("/jobs/{name}.fio"), path)
            .map_err(|e| Error::Backend(format!("fio job {}: {e}", path.display())))?;
    }
    lab::guest_initramfs(ctx.images()?, guest_script, true, extra, out)
        .map_err(|e| Error::Backend(format!("guest initramfs: {e}")))?;
    Ok(())
}

/// Copies the user's fio job files to `<jobs_dir>/<name>.fio` (direct mode).
fn copy_jobs(jobs: &[(String, PathBuf)], jobs_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(jobs_dir).map_err(io_err("jobs dir"))?;
    for (name, path) in jobs {
        std::fs::copy(path, jobs_dir.join(format!("{name}.fio")))
            .map_err(io_err(format!("copy {}", path.display())))?;
    }
    Ok(())
}

/// Generous: 3 run lengths + 60 s per fio/iperf3 run, 90 s per boot, 180 s to start.
fn group_timeout(g: &Group, s: &Settings) -> Duration {
    let runs = g.cells.len() * s.repeat;
    let boots = g
        .cells
        .iter()
        .filter(|c| c.workload.kind() == Kind::Boot)
        .count()
        * s.repeat;
    Duration::from_secs(180 + (runs - boots) as u64 * (s.duration_s * 3 + 60) + boots as u64 * 90)
}

/// The lab host's own `vmm check --json`, emitted like a run's output.
fn lab_check() -> String {
    "echo; echo \"===JSON-BEGIN lab.check.1===\"; /lab/bin/vmm check --json > \"$W/check\" 2>/dev/null; base64 < \"$W/check\"; echo \"===JSON-END lab.check.1===\"\n".into()
}

/// The lab host for the group: our binaries, the guest initramfs, the jobs, the NVMe.
fn lab_host(ctx: &GroupRun, g: &Group, p: &Prepared) -> Result<lab::LabHost> {
    let opts = ctx.opts;
    let s = ctx.settings();
    // The host group boots only small guests: give it the small initramfs.
    let guest_initrd = if g.guest_tier.is_some() {
        PathBuf::from(&p.host_paths.tools_initrd)
    } else {
        p.boot_initrd.clone()
    };
    let mut lab = lab::LabHost::new(ctx.images()?)
        .binary(&opts.vmm, "/lab/bin")
        .with_guest(guest_initrd)
        .file(&p.boot_initrd, "/lab/guest-boot.cpio")
        .script(p.script.clone())
        .timeout(p.timeout)
        .silence_limit(lab::SILENCE_LIMIT.max(Duration::from_secs(s.duration_s * 3 + 60)));
    for b in ["vhost-user-blk", "vhost-user-net"] {
        let path = opts.bin_dir.join(b);
        if path.is_file() && g.guest_tier.is_some() {
            lab = lab.binary(path, "/lab/bin");
        }
    }
    for (name, path) in &p.jobs {
        lab = lab.file(path, format!("/lab/jobs/{name}.fio"));
    }
    if let Some((k, _)) = &p.generic {
        lab = lab.file(k, LAB_GENERIC_KERNEL);
    }
    if g.cells
        .iter()
        .any(|c| matches!(c.tier, Tier::NativeNvme | Tier::VfioNvme))
    {
        let img = ctx.tmp.join(format!("nvme-{}.img", g.name));
        let f = std::fs::File::create(&img).map_err(io_err("nvme image"))?;
        f.set_len((s.size_mib + 16) << 20)
            .map_err(io_err("nvme image size"))?;
        lab = lab.nvme(img);
    }
    Ok(lab)
}

/// Boots the lab host with the group's script; its console arrives through the tracing tap
/// while it runs (or, without a tap, all at once at the end).
fn run_in_lab(
    ctx: &GroupRun,
    g: &Group,
    p: &Prepared,
    console: &mut Console,
    rec: &mut Recorder,
) -> Result<()> {
    let lab = lab_host(ctx, g, p)?;
    let (tx, rx) = mpsc::channel::<String>();
    super::set_tap(Some(tx));
    let worker = std::thread::Builder::new()
        .name("lab-run".into())
        .spawn(move || lab.run())
        .map_err(io_err("spawn lab thread"))?;
    let watched = watch_lab(&rx, &worker, ctx.stop, console, rec);
    super::set_tap(None);
    let mut got_lines = watched?;
    while let Ok(line) = rx.try_recv() {
        got_lines = true;
        console.line(rec, &line);
    }
    let run = worker
        .join()
        .map_err(|_| Error::Backend("lab thread panicked".into()))??;
    if !got_lines {
        // No tracing tap installed: replay the console now.
        for line in run.console.lines() {
            console.line(rec, line);
        }
    }
    if run.status != 0 {
        return Err(Error::Backend(format!(
            "lab script exited with status {} (see {})",
            run.status,
            p.console_path.display()
        )));
    }
    Ok(())
}

/// Feeds tapped console lines to `rec` until the lab run ends; whether any line came, or an
/// error once Ctrl-C was pressed (QEMU dies with us: PR_SET_PDEATHSIG, or the terminal's
/// SIGINT).
fn watch_lab<T>(
    rx: &Receiver<String>,
    worker: &JoinHandle<T>,
    stop: &AtomicBool,
    console: &mut Console,
    rec: &mut Recorder,
) -> Result<bool> {
    let mut got_lines = false;
    loop {
        match rx.recv_timeout(POLL) {
            Ok(line) => {
                got_lines = true;
                console.line(rec, &line);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(got_lines),
        }
        if stop.load(Ordering::SeqCst) {
            return Err(Error::Backend("interrupted".into()));
        }
        if worker.is_finished() {
            return Ok(got_lines);
        }
    }
}

/// Runs the group's script with `sh` on this host, in its own process group.
fn run_direct(
    ctx: &GroupRun,
    p: &Prepared,
    console: &mut Console,
    rec: &mut Recorder,
) -> Result<()> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&p.script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .map_err(io_err("sh"))?;
    let (lines, reader) = read_lines(&mut child)?;
    let deadline = Instant::now() + p.timeout;
    loop {
        match lines.recv_timeout(POLL) {
            Ok(line) => console.line(rec, &line),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        let timed_out = Instant::now() > deadline;
        if ctx.stop.load(Ordering::SeqCst) || timed_out {
            let pgid = child.id() as i32;
            // SAFETY: signals the process group we created; no memory involved.
            unsafe { libc::kill(-pgid, libc::SIGTERM) };
            let _ = child.wait();
            return Err(Error::Backend(if timed_out {
                format!("timed out after {:?}", p.timeout)
            } else {
                "interrupted".into()
            }));
        }
    }
    let _ = reader.join();
    let status = child.wait().map_err(io_err("wait sh"))?;
    if !status.success() {
        return Err(Error::Backend(format!("script exited with {status}")));
    }
    Ok(())
}

/// A thread that sends the child's stdout line by line (without `\r`), until it closes.
fn read_lines(child: &mut Child) -> Result<(Receiver<String>, JoinHandle<()>)> {
    let out = child.stdout.take();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::Builder::new()
        .name("direct-out".into())
        .spawn(move || {
            let Some(out) = out else { return };
            let mut r = BufReader::new(out);
            let mut buf = Vec::new();
            while matches!(r.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                let l = String::from_utf8_lossy(&buf).trim_end().replace('\r', "");
                if tx.send(l).is_err() {
                    return;
                }
                buf.clear();
            }
        })
        .map_err(io_err("spawn reader"))?;
    Ok((rx, reader))
}
