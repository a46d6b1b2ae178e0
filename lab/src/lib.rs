// SPDX-License-Identifier: Apache-2.0
//! Lab host runner for tests and benchmarks that need real KVM, VFIO and an IOMMU.
//!
//! The build machines' `/dev/kvm` cannot boot a stock Linux guest, so such tests run inside a
//! *lab host*: QEMU in TCG mode emulating AMD SVM and an Intel IOMMU, booting the Debian cloud
//! kernel with `kvm_amd` and `vfio-pci` loaded (see `docs/lab.md`). Images come from
//! `scripts/build-images.sh` ([`Images`]); a [`LabHost`] boots them with a per-run overlay that
//! carries `/lab/run.sh` and any binaries, and reports the script's exit status ([`LabRun`]).
//!
//! ```no_run
//! let images = lab::Images::ensure_default()?;
//! let run = lab::LabHost::new(&images).script("test -c /dev/kvm").run()?;
//! assert_eq!(run.status, 0);
//! # Ok::<(), lab::LabError>(())
//! ```

mod console;
mod cpio;
mod error;
mod fio;
mod host;
mod images;
mod threads;

pub use console::{
    console_value, fault_lines, guest_ping_iperf3, guest_ram_mode, iperf3_bits_per_second,
    strip_ansi, test_images, PingIperf3,
};
pub use cpio::{shared_libraries, Cpio};
pub use error::{LabError, Result};
pub use fio::{guest_fio, guest_fio_rounds, FioJobResult, FioReport, FioRounds};
pub use host::{
    parse_marker, qemu_binary, LabHost, LabNic, LabRun, NicBackend, BOOT_DEADLINE, BOOT_MARKER,
    EXIT_MARKER, GUEST_STALL, LAB_CMDLINE, LAB_GUEST_INITRD, LAB_GUEST_KERNEL, SECCOMP_MARKER,
    SILENCE_LIMIT,
};
pub use images::{guest_initramfs, repo_root, Images};
pub use threads::{parse_status, threads, ThreadStatus};

/// The marker the nested guest's `/init` prints once its modules are loaded, before `/test.sh`.
pub const GUEST_BOOT_MARKER: &str = "GUEST-BOOT-OK uptime=";
/// The marker the nested guest's `/init` prints after `/test.sh` returns.
pub const GUEST_EXIT_MARKER: &str = "GUEST-EXIT-STATUS=";

/// Lab shell: `kill_with_io_in_flight` SIGKILLs the backend whose pid is `$BPID` once the lab's
/// emulated NVMe disk (`/dev/nvme0n1`), which it serves, has requests in flight (waiting up to
/// 5 s), so a restart test's kill finds work for the successor to resubmit.
pub const KILL_WITH_IO_IN_FLIGHT: &str = r#"
kill_with_io_in_flight() {
    i=0
    while [ "$(awk '{print $1 + $2}' /sys/block/nvme0n1/inflight)" = 0 ] && [ $i -lt 100 ]; do
        sleep 0.05; i=$((i+1))
    done
    kill -9 $BPID; wait $BPID 2>/dev/null
}
"#;

/// The last `n` lines of `text`.
pub(crate) fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
