#!/usr/bin/env bash
# The project's test command: host set-up, guest/lab images, build, every test.
# Tests that need a real guest boot it inside the lab host (QEMU TCG, nested SVM)
# unless `vmm check` says this host can boot Linux directly.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-host.sh
scripts/build-images.sh
cargo build --workspace --all-targets
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-fail-fast -- --test-threads=1
