#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The main job, from a fresh Debian machine: set up, build, and run the comparison
# harness (`vmm-perf compare`: every I/O tier that exists x fio/iperf3/boot workloads,
# directly on hardware KVM or inside the lab host). Arguments go to `vmm-perf compare`
# (e.g. --tiers, --workloads, --repeat, --duration). The report lands in results/<timestamp>/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-host.sh
scripts/build-images.sh
cargo build --release -p vmm -p perf -p backends
target/release/vmm check || true
exec target/release/vmm-perf compare "$@"
