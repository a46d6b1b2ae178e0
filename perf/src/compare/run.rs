//! Running the plan: one script per tier group, directly or in the lab host; events from the
//! console become run records, written incrementally.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};

use super::collect::{Collector, Event};
use super::matrix::{Kind, Plan, PlannedCell, Tier, Workload};
use super::results::{CellStatus, CellSummary, Metrics, ResultSet, RunRecord};
use super::script::{self, Paths, Settings};
use super::{fio, iperf, report};
use crate::boot::{self, Mode};
use crate::{io_err, Error, Result};

/// What to run and where.
#[derive(Clone, Debug)]
pub struct Options {
    /// Direct or lab.
    pub mode: Mode,
    /// The plan (see [`super::matrix::plan`]).
    pub plan: Plan,
    /// Sizes and counts.
    pub settings: Settings,
    /// Our VMM binary.
    pub vmm: PathBuf,
    /// Directory with the backend binaries.
    pub bin_dir: PathBuf,
    /// The results directory to create (`results/<timestamp>`).
    pub out_dir: PathBuf,
    /// `host.json` content.
    pub host: serde_json::Value,
    /// Show a progress bar.
    pub progress: bool,
}

/// UTC `YYYY-MM-DDTHH-MM-SSZ` (file-name safe).
pub fn timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}-{:02}-{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `host.json`: `vmm check --json`, CPU model, kernel, core count, mode.
pub fn host_info(vmm: &Path, mode: Mode) -> serde_json::Value {
    let check = Command::new(vmm).args(["check", "--json"]).output();
    let (check_json, check_exit) = match check {
        Ok(o) => (
            serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap_or_else(|e| {
                serde_json::json!({ "error": format!("not JSON: {e}"),
                    "stdout": String::from_utf8_lossy(&o.stdout) })
            }),
            o.status.code(),
        ),
        Err(e) => (serde_json::json!({ "error": e.to_string() }), None),
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    serde_json::json!({
        "mode": mode,
        "cpu_model": cpu,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": kernel,
        "vmm": vmm.display().to_string(),
        "vmm_check_exit": check_exit,
        "vmm_check": check_json,
        "timestamp": timestamp(),
    })
}

/// A group of tiers run by one script.
struct Group {
    name: String,
    cells: Vec<PlannedCell>,
    guest_tier: Option<Tier>,
}

fn groups(plan: &Plan) -> Vec<Group> {
    let mut host = Group {
        name: "host".into(),
        cells: Vec::new(),
        guest_tier: None,
    };
    let mut guests: Vec<Group> = Vec::new();
    for c in &plan.cells {
        if c.tier.is_guest() {
            match guests.iter_mut().find(|g| g.guest_tier == Some(c.tier)) {
                Some(g) => g.cells.push(c.clone()),
                None => guests.push(Group {
                    name: c.tier.name().into(),
                    cells: vec![c.clone()],
                    guest_tier: Some(c.tier),
                }),
            }
        } else {
            host.cells.push(c.clone());
        }
    }
    let mut all = Vec::new();
    if !host.cells.is_empty() {
        all.push(host);
    }
    all.extend(guests);
    all
}

/// The cells of `g` with fewer than `repeat` runs recorded (a run that failed with a reason
/// is recorded).
fn incomplete_cells(g: &Group, records: &[RunRecord], repeat: usize) -> Vec<PlannedCell> {
    g.cells
        .iter()
        .filter(|c| records.iter().filter(|r| r.is_of(c)).count() < repeat)
        .cloned()
        .collect()
}

/// The first kernel-fault or nested-VMM verdict line of a group's console log, if any.
fn first_fault(console_log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(console_log).ok()?;
    lab::fault_lines(&text, 1)
        .first()
        .map(|l| l.trim().chars().take(160).collect())
}

/// Why a group whose cells are incomplete deserves one more run: a kernel fault or nested-VMM
/// verdict on its console, or a lab run given up because the emulation stopped making progress
/// ([`lab::LabError::is_stall`]); `None` for a plain failure.
fn retry_reason(res: &Result<()>, console_log: &Path) -> Option<String> {
    first_fault(console_log).or_else(|| match res {
        Err(Error::Lab(e)) if e.is_stall() => e.to_string().lines().next().map(String::from),
        _ => None,
    })
}

/// Turns a raw output into the run's outcome according to the workload kind.
pub fn outcome(kind: Kind, raw: &[u8]) -> std::result::Result<Metrics, String> {
    match kind {
        Kind::Block => fio::parse(raw).map(Metrics::Fio),
        Kind::Net => iperf::parse(raw).map(Metrics::Iperf),
        Kind::Boot => Err("boot runs have no JSON".into()),
    }
}

struct State {
    dir: PathBuf,
    plan: Plan,
    settings: Settings,
    mode: Mode,
    records: Vec<RunRecord>,
    group_errors: BTreeMap<String, String>,
    boot_lines: Vec<String>,
    interrupted: bool,
    pb: ProgressBar,
    extra_host: serde_json::Map<String, serde_json::Value>,
}

impl State {
    fn kind_of(&self, tier: &str, workload: &str) -> Option<Kind> {
        self.plan
            .cells
            .iter()
            .find(|c| c.tier.name() == tier && c.workload.name() == workload)
            .map(|c| c.workload.kind())
    }

    fn write_raw(&self, name: &str, data: &[u8]) -> Option<String> {
        let rel = format!("raw/{name}");
        match std::fs::write(self.dir.join(&rel), data) {
            Ok(()) => Some(rel),
            Err(e) => {
                tracing::warn!("writing {rel}: {e}");
                None
            }
        }
    }

    fn record(&mut self, r: RunRecord) {
        let line = match &r.outcome {
            Ok(_) => format!("{}.{}.{}: ok", r.tier, r.workload, r.rep),
            Err(e) => format!("{}.{}.{}: FAILED: {e}", r.tier, r.workload, r.rep),
        };
        if self.pb.is_hidden() {
            eprintln!("{line}");
        } else {
            self.pb.println(line);
        }
        self.pb.inc(1);
        self.records.push(r);
        if let Err(e) = self.write_results() {
            tracing::warn!("{e}");
        }
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::Started(id) => self.pb.set_message(id),
            Event::Raw(id, data) => {
                if id == "lab.check.1" {
                    if let Ok(d) = data {
                        let v = serde_json::from_slice(&d).unwrap_or(serde_json::Value::Null);
                        self.extra_host.insert("lab_vmm_check".into(), v);
                    }
                    return;
                }
                let Some((tier, workload, rep)) = script::split_id(&id) else {
                    tracing::warn!("unexpected run id {id}");
                    return;
                };
                let Some(kind) = self.kind_of(tier, workload) else {
                    tracing::warn!("run {id} is not in the plan");
                    return;
                };
                let (raw_file, outcome) = match data {
                    Ok(d) => (self.write_raw(&format!("{id}.json"), &d), outcome(kind, &d)),
                    Err(e) => (None, Err(e)),
                };
                self.record(RunRecord {
                    tier: tier.into(),
                    workload: workload.into(),
                    rep,
                    raw_file,
                    outcome,
                });
            }
            Event::Boot(line) => {
                let end = line.starts_with("BOOT-END ");
                self.boot_lines.push(line);
                if !end {
                    return;
                }
                let text = self.boot_lines.join("\n");
                self.boot_lines.clear();
                for s in boot::parse(&text) {
                    let Some((tier, workload, rep)) = script::split_id(&s.vmm) else {
                        continue;
                    };
                    let raw_file = self.write_raw(&format!("{}.txt", s.vmm), text.as_bytes());
                    let outcome = if s.status != 0 {
                        Err(format!("VMM exited with status {}", s.status))
                    } else if !s.to_init_s.is_finite() {
                        Err("the guest never reached init".to_string())
                    } else {
                        Ok(Metrics::Boot {
                            to_init_s: s.to_init_s,
                        })
                    };
                    let (tier, workload) = (tier.to_string(), workload.to_string());
                    self.record(RunRecord {
                        tier,
                        workload,
                        rep,
                        raw_file,
                        outcome,
                    });
                }
            }
        }
    }

    fn result_set(&self) -> ResultSet {
        result_set(
            &self.plan,
            &self.records,
            &self.settings,
            self.mode,
            self.interrupted,
            &self.group_errors,
        )
    }

    fn write_results(&self) -> Result<()> {
        let set = self.result_set();
        let path = self.dir.join("results.json");
        let json = serde_json::to_string_pretty(&set)
            .map_err(|e| Error::Report(format!("results.json: {e}")))?;
        std::fs::write(&path, json).map_err(io_err(format!("write {}", path.display())))
    }
}

/// Summarises `records` against `plan`: every planned cell (run or missing) gets a summary;
/// cells without records are missing (tier unavailable), failed (their script failed:
/// `group_errors` by tier name), or skipped (interrupted / not run).
pub fn result_set(
    plan: &Plan,
    records: &[RunRecord],
    settings: &Settings,
    mode: Mode,
    interrupted: bool,
    group_errors: &BTreeMap<String, String>,
) -> ResultSet {
    let mut cells = Vec::new();
    for (c, missing) in plan
        .cells
        .iter()
        .map(|c| (c, None))
        .chain(plan.missing_cells.iter().map(|c| {
            let r = plan
                .missing
                .iter()
                .find(|(t, _)| *t == c.tier)
                .map(|(_, r)| r.clone());
            (c, Some(r.unwrap_or_default()))
        }))
    {
        let (t, w) = (c.tier.name(), c.workload.name());
        let recs: Vec<&RunRecord> = records
            .iter()
            .filter(|r| r.tier == t && r.workload == w)
            .collect();
        let fallback = match missing {
            Some(r) => CellStatus::Missing(r),
            None if interrupted => CellStatus::Skipped("interrupted (Ctrl-C)".into()),
            None => match group_errors.get(t) {
                Some(e) => CellStatus::Failed(e.clone()),
                None => CellStatus::Skipped("not run yet".into()),
            },
        };
        let mut cell = CellSummary::build(t, w, c.workload.kind(), &recs, fallback);
        if !matches!(cell.status, CellStatus::Missing(_)) {
            cell.planned = settings.repeat;
        }
        cells.push(cell);
    }
    cells.sort_by_key(|c| {
        (
            kind_rank(c.kind),
            Tier::from_name(&c.tier).map_or(usize::MAX, |t| t as usize),
        )
    });
    ResultSet {
        mode: match mode {
            Mode::Direct => "direct".into(),
            Mode::Lab => "lab".into(),
        },
        repeat: settings.repeat,
        duration_s: settings.duration_s,
        size_mib: settings.size_mib,
        missing_tiers: plan
            .missing
            .iter()
            .map(|(t, r)| (t.name().to_string(), r.clone()))
            .collect(),
        cells,
        runs: records.to_vec(),
        interrupted,
    }
}

fn kind_rank(k: Kind) -> u8 {
    match k {
        Kind::Block => 0,
        Kind::Net => 1,
        Kind::Boot => 2,
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

/// Where the lab host gets Debian's generic kernel (the `emulated` tier's e1000 guest).
const LAB_GENERIC_KERNEL: &str = "/lab/bin/vmlinuz-generic";

/// Runs the plan, writes `results/<ts>/…`, prints the summary; returns the result set.
/// `stop` is set by the Ctrl-C handler: the current script is stopped and the cells measured
/// so far are kept.
pub fn run(opts: &Options, stop: Arc<AtomicBool>) -> Result<ResultSet> {
    let dir = opts.out_dir.clone();
    std::fs::create_dir_all(dir.join("raw")).map_err(io_err(format!("mkdir {}", dir.display())))?;
    let s = &opts.settings;
    let total: usize = opts.plan.cells.len() * s.repeat;
    let pb = if opts.progress {
        ProgressBar::new(total as u64)
    } else {
        ProgressBar::hidden()
    };
    pb.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} runs, ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut st = State {
        dir: dir.clone(),
        plan: opts.plan.clone(),
        settings: s.clone(),
        mode: opts.mode,
        records: Vec::new(),
        group_errors: BTreeMap::new(),
        boot_lines: Vec::new(),
        interrupted: false,
        pb,
        extra_host: serde_json::Map::new(),
    };
    st.write_results()?;
    let tmp = tempfile::tempdir().map_err(io_err("temp dir"))?;
    let groups = groups(&opts.plan);
    // Images (kernel, initramfs, lab) are needed for the lab and for any guest; a direct run of
    // native cells only needs fio/iperf3 on this host.
    let needs_images = !groups.is_empty()
        && (opts.mode == Mode::Lab
            || opts
                .plan
                .cells
                .iter()
                .any(|c| c.tier.is_guest() || c.workload.kind() == Kind::Boot));
    let images = if !needs_images {
        None
    } else {
        Some(
            lab::Images::ensure_default()
                .map_err(|e| Error::Backend(format!("lab images: {e}")))?,
        )
    };
    for g in &groups {
        if stop.load(Ordering::SeqCst) {
            st.interrupted = true;
            break;
        }
        let mut res = run_group(opts, g, images.as_ref(), tmp.path(), &mut st, &stop);
        let mut console_name = g.name.clone();
        if stop.load(Ordering::SeqCst) {
            st.interrupted = true;
        }
        // A guest or lab kernel that faults or stalls (the lab's nested virtualization has
        // faults of its own) ends the group's script early: run its incomplete cells once more.
        let incomplete = incomplete_cells(g, &st.records, s.repeat);
        let console_log = st.dir.join(format!("console-{}.log", g.name));
        if !st.interrupted && !incomplete.is_empty() {
            if let Some(fault) = retry_reason(&res, &console_log) {
                eprintln!(
                    "group {}: {} cell(s) incomplete after a fault ({fault}); running them once more",
                    g.name,
                    incomplete.len()
                );
                st.records
                    .retain(|r| !incomplete.iter().any(|c| r.is_of(c)));
                st.pb.inc_length((incomplete.len() * s.repeat) as u64);
                let retry = Group {
                    name: format!("{}-retry", g.name),
                    cells: incomplete,
                    guest_tier: g.guest_tier,
                };
                res = run_group(opts, &retry, images.as_ref(), tmp.path(), &mut st, &stop);
                console_name = retry.name;
                if stop.load(Ordering::SeqCst) {
                    st.interrupted = true;
                }
            }
        }
        // Cells without a single recorded run.
        let unreported = incomplete_cells(g, &st.records, 1);
        if res.is_ok() && !unreported.is_empty() {
            let why = format!(
                "no result for this cell in the console output (see console-{console_name}.log)"
            );
            for c in unreported {
                st.group_errors
                    .insert(c.tier.name().to_string(), why.clone());
            }
        }
        if let Err(e) = res {
            let msg = e.to_string();
            let short: String = msg.lines().next().unwrap_or("").chars().take(200).collect();
            if !st.interrupted {
                eprintln!("group {}: {short}", g.name);
            }
            for c in &g.cells {
                st.group_errors
                    .insert(c.tier.name().to_string(), short.clone());
            }
        }
        if st.interrupted {
            break;
        }
    }
    st.pb.finish_and_clear();
    let set = st.result_set();
    st.write_results()?;
    let mut host = opts.host.clone();
    if let Some(h) = host.as_object_mut() {
        h.extend(st.extra_host.clone());
    }
    write(
        &dir.join("host.json"),
        &serde_json::to_string_pretty(&host).unwrap_or_default(),
    )?;
    write(&dir.join("results.csv"), &super::results::csv(&set))?;
    report::write_report(&dir, &set, &host_paragraph(&host))?;
    Ok(set)
}

/// Re-renders `report.md` and `results.csv` of a results directory from its `results.json`
/// and `host.json` (e.g. after an interrupted run or a report format change).
pub fn rerender(dir: &Path) -> Result<ResultSet> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read_to_string(&p).map_err(io_err(format!("read {}", p.display())))
    };
    let set: ResultSet = serde_json::from_str(&read("results.json")?)
        .map_err(|e| Error::Report(format!("{}/results.json: {e}", dir.display())))?;
    let host: serde_json::Value =
        serde_json::from_str(&read("host.json").unwrap_or_default()).unwrap_or_default();
    write(&dir.join("results.csv"), &super::results::csv(&set))?;
    report::write_report(dir, &set, &host_paragraph(&host))?;
    Ok(set)
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(io_err(format!("write {}", path.display())))
}

fn host_paragraph(h: &serde_json::Value) -> String {
    let g = |k: &str| {
        h.get(k).map_or(String::new(), |v| {
            v.as_str().map_or(v.to_string(), str::to_string)
        })
    };
    format!(
        "Host: {} ({} CPUs), kernel {}; `vmm check` exit {} (see [host.json](host.json)); run {}.",
        g("cpu_model"),
        g("cpus"),
        g("kernel"),
        g("vmm_check_exit"),
        g("timestamp")
    )
}

/// Runs one group's script and feeds its console to `st`.
fn run_group(
    opts: &Options,
    g: &Group,
    images: Option<&lab::Images>,
    tmp: &Path,
    st: &mut State,
    stop: &Arc<AtomicBool>,
) -> Result<()> {
    let s = &opts.settings;
    let boot_initrd = tmp.join("guest-boot.cpio");
    if let Some(images) = images {
        if !boot_initrd.exists() {
            lab::guest_initramfs(images, "true\n", false, lab::Cpio::new(), &boot_initrd)
                .map_err(|e| Error::Backend(format!("guest initramfs: {e}")))?;
        }
    }
    let need_images =
        || images.ok_or_else(|| Error::Backend("lab images were not prepared".into()));
    let jobs: Vec<(String, PathBuf)> = g
        .cells
        .iter()
        .filter_map(|c| match &c.workload {
            Workload::FioJob { name, path } => Some((name.clone(), path.clone())),
            _ => None,
        })
        .collect();
    // The e1000 guest boots Debian's generic kernel and loads its e1000 module.
    let generic = if g
        .cells
        .iter()
        .any(|c| c.tier == Tier::Emulated && c.workload.kind() == Kind::Net)
    {
        super::matrix::generic_kernel(&lab::repo_root().join(".cache/generic/root"))
    } else {
        None
    };
    let host_paths = Paths {
        vmm: opts.vmm.display().to_string(),
        bin_dir: opts.bin_dir.display().to_string(),
        kernel: images.map_or(String::new(), |i| i.kernel.display().to_string()),
        tools_initrd: tmp
            .join(format!("guest-{}.cpio", g.name))
            .display()
            .to_string(),
        boot_initrd: boot_initrd.display().to_string(),
        work: tmp.join("work").display().to_string(),
        jobs_dir: tmp.join("jobs").display().to_string(),
        generic_kernel: generic
            .as_ref()
            .map_or(String::new(), |(k, _)| k.display().to_string()),
    };
    let paths = match opts.mode {
        Mode::Lab => lab_paths(),
        Mode::Direct => host_paths.clone(),
    };
    let mut host_script: String;
    if let Some(tier) = g.guest_tier {
        let (h, guest) = script::guest_scripts(tier, &g.cells, s, &paths);
        host_script = h;
        let mut extra = lab::Cpio::new();
        if let Some((_, ko)) = &generic {
            extra
                .add_host_file("/e1000.ko", ko)
                .map_err(|e| Error::Backend(format!("{}: {e}", ko.display())))?;
        }
        for (name, path) in &jobs {
            extra
                .add_host_file(format!("/jobs/{name}.fio"), path)
                .map_err(|e| Error::Backend(format!("fio job {}: {e}", path.display())))?;
        }
        lab::guest_initramfs(
            need_images()?,
            &guest,
            true,
            extra,
            Path::new(&host_paths.tools_initrd),
        )
        .map_err(|e| Error::Backend(format!("guest initramfs: {e}")))?;
    } else {
        host_script = script::host_script(&g.cells, s, &paths);
        if opts.mode == Mode::Lab {
            host_script.push_str(&lab_check());
        }
    }
    if opts.mode == Mode::Direct {
        std::fs::create_dir_all(&host_paths.jobs_dir).map_err(io_err("jobs dir"))?;
        for (name, path) in &jobs {
            std::fs::copy(
                path,
                Path::new(&host_paths.jobs_dir).join(format!("{name}.fio")),
            )
            .map_err(io_err(format!("copy {}", path.display())))?;
        }
    }
    let script_path = st.dir.join(format!("script-{}.sh", g.name));
    write(&script_path, &host_script)?;
    let console_path = st.dir.join(format!("console-{}.log", g.name));
    let mut console = std::fs::File::create(&console_path).map_err(io_err("console log"))?;

    let runs_in_group = g.cells.len() * s.repeat;
    let boots = g
        .cells
        .iter()
        .filter(|c| c.workload.kind() == Kind::Boot)
        .count()
        * s.repeat;
    let timeout = Duration::from_secs(
        180 + (runs_in_group - boots) as u64 * (s.duration_s * 3 + 60) + boots as u64 * 90,
    );
    let (tx, rx) = mpsc::channel::<String>();
    let mut collector = Collector::default();
    let mut handle_line = |st: &mut State, line: &str| {
        use std::io::Write;
        let _ = writeln!(console, "{line}");
        if let Some(ev) = collector.line(line) {
            st.event(ev);
        }
    };
    match opts.mode {
        Mode::Lab => {
            // The host group boots only small guests: give it the small initramfs.
            let guest_initrd = if g.guest_tier.is_some() {
                PathBuf::from(&host_paths.tools_initrd)
            } else {
                boot_initrd.clone()
            };
            let mut lab = lab::LabHost::new(need_images()?)
                .binary(&opts.vmm, "/lab/bin")
                .with_guest(guest_initrd)
                .file(&boot_initrd, "/lab/guest-boot.cpio")
                .script(host_script)
                .timeout(timeout)
                .silence_limit(lab::SILENCE_LIMIT.max(Duration::from_secs(s.duration_s * 3 + 60)));
            for b in ["vhost-user-blk", "vhost-user-net"] {
                let p = opts.bin_dir.join(b);
                if p.is_file() && g.guest_tier.is_some() {
                    lab = lab.binary(p, "/lab/bin");
                }
            }
            for (name, path) in &jobs {
                lab = lab.file(path, format!("/lab/jobs/{name}.fio"));
            }
            if let Some((k, _)) = &generic {
                lab = lab.file(k, LAB_GENERIC_KERNEL);
            }
            if g.cells
                .iter()
                .any(|c| matches!(c.tier, Tier::NativeNvme | Tier::VfioNvme))
            {
                let img = tmp.join(format!("nvme-{}.img", g.name));
                let f = std::fs::File::create(&img).map_err(io_err("nvme image"))?;
                f.set_len((s.size_mib + 16) << 20)
                    .map_err(io_err("nvme image size"))?;
                lab = lab.nvme(img);
            }
            super::set_tap(Some(tx));
            let worker = std::thread::Builder::new()
                .name("lab-run".into())
                .spawn(move || lab.run())
                .map_err(io_err("spawn lab thread"))?;
            let mut got_lines = false;
            loop {
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(line) => {
                        got_lines = true;
                        handle_line(st, &line);
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
                if stop.load(Ordering::SeqCst) {
                    // QEMU dies with us (PR_SET_PDEATHSIG) or with the terminal's SIGINT.
                    super::set_tap(None);
                    return Err(Error::Backend("interrupted".into()));
                }
                if worker.is_finished() {
                    break;
                }
            }
            super::set_tap(None);
            while let Ok(line) = rx.try_recv() {
                got_lines = true;
                handle_line(st, &line);
            }
            let run = worker
                .join()
                .map_err(|_| Error::Backend("lab thread panicked".into()))??;
            if !got_lines {
                // No tracing tap installed: replay the console now.
                for line in run.console.lines() {
                    handle_line(st, line);
                }
            }
            if run.status != 0 {
                return Err(Error::Backend(format!(
                    "lab script exited with status {} (see {})",
                    run.status,
                    console_path.display()
                )));
            }
            Ok(())
        }
        Mode::Direct => {
            drop(tx);
            let mut child = Command::new("sh")
                .arg("-c")
                .arg(&host_script)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .process_group(0)
                .spawn()
                .map_err(io_err("sh"))?;
            let pgid = child.id() as i32;
            let out = child.stdout.take();
            let (ltx, lrx) = mpsc::channel::<String>();
            let reader = std::thread::Builder::new()
                .name("direct-out".into())
                .spawn(move || {
                    let Some(out) = out else { return };
                    let mut r = BufReader::new(out);
                    let mut buf = Vec::new();
                    while matches!(r.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                        let l = String::from_utf8_lossy(&buf).trim_end().replace('\r', "");
                        if ltx.send(l).is_err() {
                            return;
                        }
                        buf.clear();
                    }
                })
                .map_err(io_err("spawn reader"))?;
            let deadline = std::time::Instant::now() + timeout;
            loop {
                match lrx.recv_timeout(Duration::from_millis(200)) {
                    Ok(line) => handle_line(st, &line),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
                let timed_out = std::time::Instant::now() > deadline;
                if stop.load(Ordering::SeqCst) || timed_out {
                    // SAFETY: signals the process group we created; no memory involved.
                    unsafe { libc::kill(-pgid, libc::SIGTERM) };
                    let _ = child.wait();
                    return Err(Error::Backend(if timed_out {
                        format!("timed out after {timeout:?}")
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
    }
}

fn lab_check() -> String {
    "echo; echo \"===JSON-BEGIN lab.check.1===\"; /lab/bin/vmm check --json > \"$W/check\" 2>/dev/null; base64 < \"$W/check\"; echo \"===JSON-END lab.check.1===\"\n".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_is_utc_and_file_name_safe() {
        let t = timestamp();
        assert_eq!(t.len(), "2026-11-25T12-00-54Z".len(), "{t}");
        assert!(t.ends_with('Z') && !t.contains(':'), "{t}");
        let year: i32 = t[..4].parse().expect("year");
        assert!(year >= 2024, "{t}");
    }

    #[test]
    fn host_side_tiers_share_one_group_and_guest_tiers_get_their_own() {
        let plan = super::super::matrix::plan(
            &[Tier::Native, Tier::VhostUserBlk, Tier::Vmm, Tier::VfioNvme],
            &Workload::builtin(),
            |_, _| super::super::Availability::Available,
        );
        let g = groups(&plan);
        let names: Vec<&str> = g.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["host", "vhost-user-blk", "vfio-nvme"]);
        assert_eq!(g[0].cells.len(), 11);
    }

    #[test]
    fn a_faulted_group_retries_exactly_its_incomplete_cells() {
        let plan = super::super::matrix::plan(&[Tier::VfioNvme], &Workload::builtin(), |_, _| {
            super::super::Availability::Available
        });
        let g = &groups(&plan)[0];
        let run = |c: &PlannedCell, rep, outcome: std::result::Result<Metrics, String>| RunRecord {
            tier: c.tier.name().into(),
            workload: c.workload.name().into(),
            rep,
            raw_file: None,
            outcome,
        };
        // Cell 0 ran twice (once failing with a reason), cell 1 once, the rest never.
        let records = vec![
            run(&g.cells[0], 1, Err("fio error 5".into())),
            run(&g.cells[0], 2, Err("fio error 5".into())),
            run(&g.cells[1], 1, Err("no JSON".into())),
        ];
        let incomplete = incomplete_cells(g, &records, 2);
        assert_eq!(incomplete.len(), g.cells.len() - 1);
        assert!(!incomplete.iter().any(|c| records[0].is_of(c)));
        assert!(incomplete.iter().any(|c| records[2].is_of(c)));
        assert_eq!(incomplete_cells(g, &records, 1).len(), g.cells.len() - 2);

        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console-vfio-nvme.log");
        std::fs::write(&log, "GUEST-BOOT-OK uptime=12\nfio: started\n").unwrap();
        assert_eq!(first_fault(&log), None);
        std::fs::write(
            &log,
            "GUEST-BOOT-OK uptime=12\n[   24.23] traps: PANIC: double fault, error_code: 0x0\n\
             [   24.23] RIP: 0010:entry_SYSCALL_64+0x0/0x29\n\
             vmm: guest kernel panicked: Kernel panic - not syncing: Fatal exception\n",
        )
        .unwrap();
        assert_eq!(
            first_fault(&log).as_deref(),
            Some("[   24.23] RIP: 0010:entry_SYSCALL_64+0x0/0x29")
        );
        assert_eq!(first_fault(&dir.path().join("missing.log")), None);
    }

    #[test]
    fn a_stalled_lab_is_a_reason_to_retry_and_a_plain_failure_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console-virtio.log");
        std::fs::write(
            &log,
            "GUEST-BOOT-OK uptime=12
",
        )
        .unwrap();
        let silent = Err(Error::Lab(lab::LabError::Silent {
            after: Duration::from_secs(150),
            tail: "GUEST-BOOT-OK uptime=12".into(),
        }));
        assert_eq!(
            retry_reason(&silent, &log).as_deref(),
            Some("the lab console was silent for 150s; last console lines:")
        );
        let timeout = Err(Error::Lab(lab::LabError::Timeout {
            timeout: Duration::from_secs(300),
            tail: String::new(),
        }));
        assert_eq!(retry_reason(&timeout, &log), None);
        assert_eq!(retry_reason(&Ok(()), &log), None);
        assert_eq!(
            retry_reason(&Err(Error::Backend("refused".into())), &log),
            None
        );
    }
}
