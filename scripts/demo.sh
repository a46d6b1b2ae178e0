#!/usr/bin/env bash
# The main job, from a fresh Debian machine: set up, build, boot the guest image with
# `vmm run` (directly on hardware KVM, or inside the lab host), then time guest boot
# against QEMU with `vmm-perf boot`. The comparison harness grows this into the full
# tier x workload matrix.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-host.sh
scripts/build-images.sh
cargo build --release -p vmm -p perf
target/release/vmm check || true
target/release/vmm-perf boot --repeat "${REPEAT:-5}" --json "${JSON:-perf-boot.json}"
