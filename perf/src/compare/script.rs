// SPDX-License-Identifier: Apache-2.0
//! Generation of the shell scripts that run a tier's cells, directly or inside the lab host.
//!
//! Every run prints `===CELL-BEGIN id===` and its raw output base64-encoded between
//! `===JSON-BEGIN id===` and `===JSON-END id===` (see [`super::collect`]); boot runs use
//! [`crate::boot::measure_fn`]. Run ids are `tier.workload.rep`.

use std::fmt::Write as _;

use crate::boot::{self, BootBench};

use super::counters::{self, BACKEND_PORT, VMM_PORT};
use super::matrix::{PlannedCell, Tier, Workload};

/// Sizes and counts of a comparison.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Runs per cell.
    pub repeat: usize,
    /// Seconds per fio/iperf3 run.
    pub duration_s: u64,
    /// fio file/region size, MiB.
    pub size_mib: u64,
    /// Guest vCPUs.
    pub cpus: u32,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// Queues of the vhost-user-blk disk (backend `--queues`, `--disk ...,queues=N`).
    pub queues: u16,
}

/// Paths as seen where the script runs (host in direct mode, lab host in lab mode).
#[derive(Clone, Debug)]
pub struct Paths {
    /// Our VMM.
    pub vmm: String,
    /// Directory with `vhost-user-blk` / `vhost-user-net`.
    pub bin_dir: String,
    /// Guest kernel.
    pub kernel: String,
    /// Guest initramfs with fio/iperf3 and the tier's guest script.
    pub tools_initrd: String,
    /// Guest initramfs that only boots and powers off.
    pub boot_initrd: String,
    /// Scratch directory (created).
    pub work: String,
    /// Directory holding the user's fio job files (`<name>.fio`).
    pub jobs_dir: String,
    /// Debian's generic kernel (the e1000 guest of the `emulated` tier; empty if absent).
    pub generic_kernel: String,
}

/// The run id of a cell's repetition.
pub fn run_id(tier: Tier, workload: &str, rep: usize) -> String {
    format!("{}.{workload}.{rep}", tier.name())
}

/// Splits a run id into (tier, workload, rep).
pub fn split_id(id: &str) -> Option<(&str, &str, usize)> {
    let (tier, rest) = id.split_once('.')?;
    let (workload, rep) = rest.rsplit_once('.')?;
    Some((tier, workload, rep.parse().ok()?))
}

/// Shell-quotes `s` (single quotes).
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Port of the iperf3 server (away from the default 5201 other users may hold).
pub const IPERF_PORT: u16 = 5301;
/// Lab-internal addresses of the vhost-user-net TAP (lab host side) and the guest. The lab has
/// no NIC to the outside (`-nic none`), so this traffic never leaves the lab VM.
pub const NET_HOST_ADDR: &str = "10.99.0.1";
/// The guest's address on the vhost-user-net link.
pub const NET_GUEST_ADDR: &str = "10.99.0.2";

fn prelude(work: &str) -> String {
    format!(
        r#"set -u
W={work}
mkdir -p "$W"
cell() {{ echo; echo "===CELL-BEGIN $1==="; }}
emit() {{ echo; echo "===JSON-BEGIN $1==="; if [ -s "$2" ]; then base64 < "$2"; fi; echo "===JSON-END $1==="; rm -f "$2"; }}
"#
    )
}

/// Where a run's I/O goes.
struct Target<'a> {
    /// fio file or block device.
    path: &'a str,
    /// fio `--direct`.
    direct: bool,
    /// iperf3 server address.
    server: &'a str,
    /// Start a one-off iperf3 server next to the client.
    local_server: bool,
    /// Directory of the user's fio job files.
    jobs_dir: &'a str,
}

/// The commands of one fio/iperf3 run writing its raw output to `$W/out` and emitting it.
fn io_run(id: &str, w: &Workload, s: &Settings, t: &Target) -> String {
    let (target, direct, server, local_server, jobs_dir) =
        (t.path, t.direct, t.server, t.local_server, t.jobs_dir);
    let (dur, size) = (s.duration_s, s.size_mib);
    let mut o = format!("cell {id}\nrm -f \"$W/out\" \"$W/err\"\n");
    match w {
        Workload::Fio {
            name,
            rw,
            bs,
            iodepth,
            rwmixread,
        } => {
            let mix = rwmixread.map_or(String::new(), |m| format!(" --rwmixread={m}"));
            let _ = writeln!(
                o,
                "fio --name={name} --filename={target} --size={size}M --rw={rw}{mix} --bs={bs} --iodepth={iodepth} --ioengine=libaio --direct={} --runtime={dur} --time_based --randrepeat=0 --eta=never --output-format=json --output=\"$W/out\" > /dev/null 2> \"$W/err\"",
                u8::from(direct)
            );
        }
        Workload::FioJob { name, .. } => {
            let _ = writeln!(
                o,
                "VMM_PERF_FILE={target} VMM_PERF_SIZE={size}M VMM_PERF_RUNTIME={dur} fio {jobs_dir}/{name}.fio --eta=never --output-format=json --output=\"$W/out\" > /dev/null 2> \"$W/err\""
            );
        }
        Workload::Iperf { args, .. } => {
            if local_server {
                let _ = writeln!(
                    o,
                    "iperf3 -s -1 -B {server} -p {IPERF_PORT} > /dev/null 2>&1 & spid=$!\nsleep 1"
                );
            }
            let _ = writeln!(
                o,
                "iperf3 -c {server} -p {IPERF_PORT} -t {dur} -J {args} > \"$W/out\" 2> \"$W/err\""
            );
            if local_server {
                o.push_str("kill $spid 2>/dev/null; wait $spid 2>/dev/null\n");
            }
        }
        Workload::Boot => return String::new(),
    }
    o.push_str("[ -s \"$W/out\" ] || cp \"$W/err\" \"$W/out\"\n");
    let _ = writeln!(o, "emit {id} \"$W/out\"");
    o
}

fn boot_bench(s: &Settings) -> BootBench {
    BootBench {
        vmm: Default::default(),
        repeat: s.repeat,
        cpus: s.cpus,
        memory_mib: s.memory_mib,
        mode: boot::Mode::Lab,
    }
}

/// The script for the host-side tiers (`native`, `native-nvme`, `vmm`, `qemu`): fio against a
/// file in the scratch directory / the first NVMe namespace, iperf3 over loopback, boots.
pub fn host_script(cells: &[PlannedCell], s: &Settings, p: &Paths) -> String {
    let mut o = prelude(&p.work);
    o.push_str(&boot::measure_fn());
    o.push_str(&host_setup(cells, s));
    for rep in 1..=s.repeat {
        for c in cells {
            o.push_str(&host_run(c, rep, s, p));
        }
    }
    o
}

/// The native tier's file and the NVMe device of `native-nvme`, when their cells run.
fn host_setup(cells: &[PlannedCell], s: &Settings) -> String {
    let mut o = String::new();
    if cells
        .iter()
        .any(|c| c.tier == Tier::Native && c.workload.kind() == super::Kind::Block)
    {
        let _ = writeln!(
            o,
            "dd if=/dev/zero of=\"$W/native.img\" bs=1M count={} 2>/dev/null",
            s.size_mib
        );
    }
    if cells.iter().any(|c| c.tier == Tier::NativeNvme) {
        o.push_str("NVME=$(ls /dev/nvme*n1 2>/dev/null | head -n1); NVME=${NVME:-/dev/nvme0n1}\n");
    }
    o
}

/// One repetition of one host-side cell.
fn host_run(c: &PlannedCell, rep: usize, s: &Settings, p: &Paths) -> String {
    let id = run_id(c.tier, c.workload.name(), rep);
    let bb = boot_bench(s);
    match (c.tier, &c.workload) {
        (Tier::Vmm, Workload::Boot) => format!(
            "cell {id}\nmeasure {id} {}\n",
            boot::ours_cmd(&bb, &p.vmm, &p.kernel, &p.boot_initrd)
        ),
        (Tier::Qemu, Workload::Boot) => format!(
            "cell {id}\nmeasure {id} {}\n",
            boot::qemu_cmd(&bb, &p.kernel, &p.boot_initrd)
        ),
        (Tier::Native, w) => io_run(
            &id,
            w,
            s,
            &Target {
                path: "\"$W/native.img\"",
                direct: false,
                server: "127.0.0.1",
                local_server: true,
                jobs_dir: &p.jobs_dir,
            },
        ),
        (Tier::NativeNvme, w) => io_run(
            &id,
            w,
            s,
            &Target {
                path: "$NVME",
                direct: true,
                server: "",
                local_server: false,
                jobs_dir: &p.jobs_dir,
            },
        ),
        _ => String::new(),
    }
}

/// One way of booting a guest tier: backend start/stop around the VMM, its device arguments,
/// the guest kernel (empty = the default one), the I/O target and the guest's preparation.
#[derive(Clone, Default)]
struct Dev {
    start: String,
    stop: String,
    vmm_args: String,
    kernel: String,
    target: String,
    guest_prep: String,
}

/// A guest tier: lab-host set-up, the device of its block and net cells, and the one its boot
/// cells boot with.
struct GuestTier {
    setup: String,
    block: Dev,
    net: Dev,
    boot: Dev,
}

/// Name of the TAP interface of the net tiers.
const TAP: &str = "vperf0";

fn wait_block(dev: &str) -> String {
    format!("n=0; while [ ! -b {dev} ] && [ $n -lt 50 ]; do sleep 0.2; n=$((n+1)); done\n")
}

/// Guest side of a net run: (e1000: load the generic kernel's module), address, link, carrier,
/// and the lab host reachable.
fn net_prep(insmod: bool) -> String {
    let mut o = String::new();
    if insmod {
        o.push_str("insmod /e1000.ko\n");
    }
    let _ = write!(
        o,
        "n=0; while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 50 ]; do sleep 0.2; n=$((n+1)); done\n\
         ip addr add {NET_GUEST_ADDR}/24 dev eth0; ip link set eth0 up\n\
         n=0; while [ \"$(cat /sys/class/net/eth0/carrier 2>/dev/null)\" != 1 ] && [ $n -lt 50 ]; do sleep 0.2; n=$((n+1)); done\n\
         n=0; while ! ping -c 1 -W 1 {NET_HOST_ADDR} > /dev/null 2>&1 && [ $n -lt 20 ]; do n=$((n+1)); done\n"
    );
    o
}

/// Lab-host side of a NIC on a TAP the VMM opens itself: address the TAP once it exists and
/// serve iperf3 on all addresses meanwhile.
fn tap_start() -> String {
    format!(
        "[ -c /dev/net/tun ] || {{ mkdir -p /dev/net; mknod /dev/net/tun c 10 200; }}\n\
         ( n=0; while ! ip link show {TAP} > /dev/null 2>&1 && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done; \
         ip addr add {NET_HOST_ADDR}/24 dev {TAP}; ip link set {TAP} up ) & tpid=$!\n\
         iperf3 -s -p {IPERF_PORT} > /dev/null 2>&1 & spid=$!\n"
    )
}

/// Creates a tier's disk image of the run's size in the scratch directory.
fn disk_setup(img: &str, s: &Settings) -> String {
    format!(
        "dd if=/dev/zero of=\"$W/{img}\" bs=1M count={} 2>/dev/null\n",
        s.size_mib
    )
}

/// A NIC on a TAP that the VMM opens itself (e1000, in-VMM virtio-net).
fn tap_net(vmm_args: String, kernel: &str, insmod: bool) -> Dev {
    Dev {
        start: tap_start(),
        stop: "kill $spid $tpid 2>/dev/null; wait $spid $tpid 2>/dev/null\n".into(),
        vmm_args,
        kernel: kernel.into(),
        target: String::new(),
        guest_prep: net_prep(insmod),
    }
}

/// The same device for the block (or net) phase and the boot cells.
fn one_device(setup: String, dev: Dev, net: bool) -> GuestTier {
    let (block, net) = if net {
        (Dev::default(), dev.clone())
    } else {
        (dev.clone(), Dev::default())
    };
    GuestTier {
        setup,
        block,
        net,
        boot: dev,
    }
}

/// Our `vhost-user-blk` backend on a file, the VMM's `--disk vhost_user=on`.
fn vhost_user_blk(s: &Settings, p: &Paths) -> GuestTier {
    let (bin, q) = (&p.bin_dir, s.queues.max(1));
    let d = Dev {
        start: format!(
            "rm -f \"$W/vub.sock\"; {bin}/vhost-user-blk --socket \"$W/vub.sock\" --path \"$W/vub.img\" --queues {q} --metrics 127.0.0.1:{BACKEND_PORT} >> \"$W/backend.log\" 2>&1 & bpid=$!\n\
             n=0; while [ ! -S \"$W/vub.sock\" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done\n"
        ),
        stop: "kill $bpid 2>/dev/null; wait $bpid 2>/dev/null\n".into(),
        vmm_args: format!("--disk vhost_user=on,socket=\"$W/vub.sock\",queues={q}"),
        target: "/dev/vda".into(),
        guest_prep: wait_block("/dev/vda"),
        ..Dev::default()
    };
    one_device(disk_setup("vub.img", s), d, false)
}

/// The lab's NVMe bound to vfio-pci and passed through.
fn vfio_nvme() -> GuestTier {
    let d = Dev {
        vmm_args: "--device path=/sys/bus/pci/devices/$BDF".into(),
        target: "/dev/nvme0n1".into(),
        guest_prep: wait_block("/dev/nvme0n1"),
        ..Dev::default()
    };
    let setup = "BDF=$(basename \"$(readlink -f /sys/class/nvme/nvme0/device)\")\n\
                 echo vfio-pci > /sys/bus/pci/devices/$BDF/driver_override\n\
                 echo $BDF > /sys/bus/pci/devices/$BDF/driver/unbind\n\
                 echo $BDF > /sys/bus/pci/drivers_probe\n";
    one_device(setup.into(), d, false)
}

/// Our `vhost-user-net` backend on a TAP, the VMM's `--net vhost_user=on`.
fn vhost_user_net(p: &Paths) -> GuestTier {
    let bin = &p.bin_dir;
    let d = Dev {
        start: format!(
            "[ -c /dev/net/tun ] || {{ mkdir -p /dev/net; mknod /dev/net/tun c 10 200; }}\n\
             rm -f \"$W/vun.sock\"; {bin}/vhost-user-net --socket \"$W/vun.sock\" --tap {TAP} --metrics 127.0.0.1:{BACKEND_PORT} >> \"$W/backend.log\" 2>&1 & bpid=$!\n\
             n=0; while [ ! -S \"$W/vun.sock\" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done\n\
             ip addr add {NET_HOST_ADDR}/24 dev {TAP} 2>/dev/null; ip link set {TAP} up\n\
             iperf3 -s -B {NET_HOST_ADDR} -p {IPERF_PORT} > /dev/null 2>&1 & spid=$!\n"
        ),
        // The backend leaves its TAP for a successor to reattach: the next tier opens its own.
        stop: format!(
            "kill $spid $bpid 2>/dev/null; wait $spid $bpid 2>/dev/null; ip link del {TAP} 2>/dev/null\n"
        ),
        vmm_args: "--net vhost_user=on,socket=\"$W/vun.sock\"".into(),
        guest_prep: net_prep(false),
        ..Dev::default()
    };
    one_device(String::new(), d, true)
}

/// The VMM's emulated NVMe on a file, and its e1000 (guest on Debian's generic kernel).
fn emulated(s: &Settings, p: &Paths) -> GuestTier {
    let d = Dev {
        vmm_args: "--disk path=\"$W/emu.img\",model=nvme".into(),
        target: "/dev/nvme0n1".into(),
        guest_prep: wait_block("/dev/nvme0n1"),
        ..Dev::default()
    };
    GuestTier {
        setup: disk_setup("emu.img", s),
        block: d.clone(),
        net: tap_net(
            format!("--net tap={TAP},model=e1000"),
            &p.generic_kernel,
            true,
        ),
        boot: d,
    }
}

/// The VMM's own virtio-blk on a file and virtio-net on a TAP.
fn virtio_in_vmm(s: &Settings) -> GuestTier {
    let q = s.queues.max(1);
    let d = Dev {
        vmm_args: format!("--disk path=\"$W/viv.img\",queues={q}"),
        target: "/dev/vda".into(),
        guest_prep: wait_block("/dev/vda"),
        ..Dev::default()
    };
    GuestTier {
        setup: disk_setup("viv.img", s),
        block: d.clone(),
        net: tap_net(format!("--net tap={TAP}"), "", false),
        boot: d,
    }
}

fn guest_tier(tier: Tier, s: &Settings, p: &Paths) -> GuestTier {
    match tier {
        Tier::VhostUserBlk => vhost_user_blk(s, p),
        Tier::VfioNvme => vfio_nvme(),
        Tier::VhostUserNet => vhost_user_net(p),
        Tier::Emulated => emulated(s, p),
        Tier::VirtioInVmm => virtio_in_vmm(s),
        _ => GuestTier {
            setup: String::new(),
            block: Dev::default(),
            net: Dev::default(),
            boot: Dev::default(),
        },
    }
}

/// Kernel command-line word telling the guest script which phase it is in.
const PHASE_NET: &str = "vmmperf=net";

/// The kernel a device's guest boots: its own (e1000: the generic kernel) or the default.
fn kernel_of(d: &Dev, p: &Paths) -> String {
    if d.kernel.is_empty() {
        p.kernel.clone()
    } else {
        d.kernel.clone()
    }
}

/// The scripts of a guest tier: (host side, guest `/test.sh`). The host side boots the guest
/// `repeat` times for the boot cells, then once for the block cells and once for the net cells
/// (each phase with its device; the net phase adds `vmmperf=net` to the kernel command line),
/// which the guest runs and reports on its console (passed through the VMM's stdout).
pub fn guest_scripts(
    tier: Tier,
    cells: &[PlannedCell],
    s: &Settings,
    p: &Paths,
) -> (String, String) {
    let g = guest_tier(tier, s, p);
    let mut host = prelude(&p.work);
    host.push_str(&boot::measure_fn());
    host.push_str(counters::WATCH_FN);
    host.push_str(&g.setup);
    if cells.iter().any(|c| c.workload == Workload::Boot) {
        host.push_str(&boot_runs(tier, &g.boot, s, p));
    }
    let mut guest = prelude("/tmp/vmm-perf");
    let _ = writeln!(
        guest,
        "case \"$(cat /proc/cmdline)\" in *{PHASE_NET}*) PHASE=net ;; *) PHASE=block ;; esac"
    );
    for (phase, kind, dev) in [
        ("block", super::Kind::Block, &g.block),
        ("net", super::Kind::Net, &g.net),
    ] {
        let io: Vec<&PlannedCell> = cells.iter().filter(|c| c.workload.kind() == kind).collect();
        if io.is_empty() {
            continue;
        }
        host.push_str(&phase_boot(tier, phase, dev, s, p));
        guest.push_str(&phase_runs(tier, phase, &io, dev, s));
    }
    (host, guest)
}

/// The boot cells: `repeat` boots with the tier's boot device, each measured.
fn boot_runs(tier: Tier, dev: &Dev, s: &Settings, p: &Paths) -> String {
    let bb = boot_bench(s);
    let mut o = String::new();
    for rep in 1..=s.repeat {
        let id = run_id(tier, "boot", rep);
        let _ = writeln!(
            o,
            "{}cell {id}\nmeasure {id} {} {}\n{}",
            dev.start,
            boot::ours_cmd(&bb, &p.vmm, &kernel_of(dev, p), &p.boot_initrd),
            dev.vmm_args,
            dev.stop
        );
    }
    o
}

/// Host side of an I/O phase: the device up, one guest boot (1 GiB at least, for the tools
/// initramfs) that runs the phase's cells (the VMM serving its metrics, its output watched
/// for the runs' markers, see [`counters`]), the device down.
fn phase_boot(tier: Tier, phase: &str, dev: &Dev, s: &Settings, p: &Paths) -> String {
    let bench = BootBench {
        memory_mib: s.memory_mib.max(1024),
        ..boot_bench(s)
    };
    let mut cmd = boot::ours_cmd(&bench, &p.vmm, &kernel_of(dev, p), &p.tools_initrd);
    if phase == "net" {
        cmd = cmd.replace(" quiet\"", &format!(" quiet {PHASE_NET}\""));
    }
    format!(
        "{}echo \"===GUEST-START {} {phase}===\"\n\
         {{ {cmd} {} --metrics 127.0.0.1:{VMM_PORT}; echo $? > \"$W/vmm.status\"; }} | watch_counters\n\
         echo \"===GUEST-END status=$(cat \"$W/vmm.status\")===\"\n{}\n",
        dev.start,
        tier.name(),
        dev.vmm_args,
        dev.stop
    )
}

/// Guest side of an I/O phase: prepare the device, then every repetition of its cells.
fn phase_runs(tier: Tier, phase: &str, io: &[&PlannedCell], dev: &Dev, s: &Settings) -> String {
    let mut o = format!("if [ $PHASE = {phase} ]; then\n{}", dev.guest_prep);
    for rep in 1..=s.repeat {
        for c in io {
            let id = run_id(tier, c.workload.name(), rep);
            o.push_str(&io_run(
                &id,
                &c.workload,
                s,
                &Target {
                    path: &dev.target,
                    direct: true,
                    server: NET_HOST_ADDR,
                    local_server: false,
                    jobs_dir: "/jobs",
                },
            ));
        }
    }
    o.push_str("fi\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            repeat: 2,
            duration_s: 5,
            size_mib: 64,
            cpus: 2,
            memory_mib: 512,
            queues: 2,
        }
    }

    fn paths() -> Paths {
        Paths {
            vmm: "/lab/bin/vmm".into(),
            bin_dir: "/lab/bin".into(),
            kernel: "/lab/vmlinuz".into(),
            tools_initrd: "/lab/guest.cpio".into(),
            boot_initrd: "/lab/guest-boot.cpio".into(),
            work: "/tmp/vmm-perf".into(),
            jobs_dir: "/lab/jobs".into(),
            generic_kernel: "/lab/bin/vmlinuz-generic".into(),
        }
    }

    fn cells(tier: Tier) -> Vec<PlannedCell> {
        Workload::builtin()
            .into_iter()
            .filter(|w| tier.runs(w.kind()))
            .map(|workload| PlannedCell { tier, workload })
            .collect()
    }

    #[test]
    fn ids_round_trip() {
        let id = run_id(Tier::VhostUserBlk, "randrw-70-30-4k-qd32", 3);
        assert_eq!(
            split_id(&id),
            Some(("vhost-user-blk", "randrw-70-30-4k-qd32", 3))
        );
    }

    #[test]
    fn vhost_user_blk_scripts_use_the_cli_and_the_guest_disk() {
        let (host, guest) = guest_scripts(
            Tier::VhostUserBlk,
            &cells(Tier::VhostUserBlk),
            &settings(),
            &paths(),
        );
        assert!(host.contains(
            "/lab/bin/vhost-user-blk --socket \"$W/vub.sock\" --path \"$W/vub.img\" --queues 2"
        ));
        assert!(host.contains("--disk vhost_user=on,socket=\"$W/vub.sock\",queues=2"));
        // The backend and the VMM serve metrics; the guest's run markers trigger scrapes.
        assert!(host.contains("--queues 2 --metrics 127.0.0.1:9191 "));
        assert!(host.contains(
            ",queues=2 --metrics 127.0.0.1:9190; echo $? > \"$W/vmm.status\"; } | watch_counters\n"
        ));
        assert!(host.contains("watch_counters() {"));
        assert_eq!(host.matches("measure vhost-user-blk.boot.").count(), 2);
        assert!(host.contains("--initramfs /lab/guest.cpio --cpus 2 --memory 1024M"));
        assert!(guest.contains("--filename=/dev/vda --size=64M --rw=randread --bs=4k --iodepth=32 --ioengine=libaio --direct=1 --runtime=5 --time_based"));
        assert!(guest.contains("--rw=randrw --rwmixread=70"));
        assert!(guest.contains("emit vhost-user-blk.read-128k.2 "));
        assert!(!guest.contains("iperf3"));
    }

    #[test]
    fn vfio_and_net_scripts() {
        let (host, guest) = guest_scripts(
            Tier::VfioNvme,
            &cells(Tier::VfioNvme),
            &settings(),
            &paths(),
        );
        assert!(host.contains("echo vfio-pci > /sys/bus/pci/devices/$BDF/driver_override"));
        assert!(host.contains("--device path=/sys/bus/pci/devices/$BDF"));
        assert!(guest.contains("--filename=/dev/nvme0n1"));
        let (host, guest) = guest_scripts(
            Tier::VhostUserNet,
            &cells(Tier::VhostUserNet),
            &settings(),
            &paths(),
        );
        assert!(host.contains("vhost-user-net --socket \"$W/vun.sock\" --tap vperf0"));
        assert!(host.contains("--net vhost_user=on,socket="));
        assert!(!guest.contains("iperf3 -c 10.99.0.2"));
        assert!(guest.contains("iperf3 -c 10.99.0.1 -p 5301 -t 5 -J -R"));
        assert!(guest.contains("-u -b 1G"));
    }

    #[test]
    fn emulated_and_in_vmm_tiers_boot_a_block_and_a_net_phase() {
        let (host, guest) = guest_scripts(
            Tier::Emulated,
            &cells(Tier::Emulated),
            &settings(),
            &paths(),
        );
        assert!(host.contains("dd if=/dev/zero of=\"$W/emu.img\" bs=1M count=64"));
        assert!(host.contains("--disk path=\"$W/emu.img\",model=nvme"));
        assert_eq!(host.matches("measure emulated.boot.").count(), 2);
        // The net phase boots the generic kernel with the e1000 and the phase word.
        assert!(host.contains(
            "--kernel /lab/bin/vmlinuz-generic --initramfs /lab/guest.cpio --cpus 2 --memory 1024M --cmdline \"console=ttyS0 panic=-1 quiet vmmperf=net\" --net tap=vperf0,model=e1000"
        ));
        assert!(host.contains("ip addr add 10.99.0.1/24 dev vperf0"));
        assert!(host.contains("iperf3 -s -p 5301"));
        assert_eq!(host.matches("===GUEST-START emulated").count(), 2);
        assert!(guest.contains("insmod /e1000.ko"));
        assert!(guest.contains("--filename=/dev/nvme0n1"));
        assert!(guest.contains("if [ $PHASE = net ]; then"));
        assert!(guest.contains("iperf3 -c 10.99.0.1 -p 5301 -t 5 -J -R"));

        let (host, guest) = guest_scripts(
            Tier::VirtioInVmm,
            &cells(Tier::VirtioInVmm),
            &settings(),
            &paths(),
        );
        assert!(host.contains("--disk path=\"$W/viv.img\",queues=2"));
        assert!(host.contains("--kernel /lab/vmlinuz --initramfs /lab/guest.cpio --cpus 2 --memory 1024M --cmdline \"console=ttyS0 panic=-1 quiet vmmperf=net\" --net tap=vperf0 --metrics 127.0.0.1:9190;"));
        assert!(guest.contains("--filename=/dev/vda"));
        assert!(!guest.contains("insmod"));
        // Block cells only (net missing): no net phase at all.
        let block: Vec<PlannedCell> = cells(Tier::VirtioInVmm)
            .into_iter()
            .filter(|c| c.workload.kind() != crate::compare::Kind::Net)
            .collect();
        let (host, guest) = guest_scripts(Tier::VirtioInVmm, &block, &settings(), &paths());
        assert!(!host.contains("--net"));
        assert!(!guest.contains("iperf3"));
    }

    #[test]
    fn host_script_runs_native_cells_with_a_local_server() {
        let mut c = cells(Tier::Native);
        c.extend(cells(Tier::NativeNvme));
        let s = host_script(&c, &settings(), &paths());
        assert!(s.contains("dd if=/dev/zero of=\"$W/native.img\" bs=1M count=64"));
        assert!(s.contains("--filename=\"$W/native.img\""));
        assert!(s.contains("--direct=0"));
        assert!(s.contains("--filename=$NVME"));
        assert!(s.contains("iperf3 -s -1 -B 127.0.0.1 -p 5301"));
        assert_eq!(s.matches("emit native.tcp-rx.").count(), 2);
    }
}
