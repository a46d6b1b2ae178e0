#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The project's test command: host set-up, guest/lab images, build, every test.
# Tests that need a real guest boot it inside the lab host (QEMU TCG, nested SVM)
# unless `vmm check` says this host can boot Linux directly.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-host.sh
scripts/build-images.sh
cargo build --workspace --all-targets
# The backend upgrade test (vmm/tests/vhost_user_reconnect_lab.rs) replaces the debug build of
# vhost-user-blk by the release build under a running guest.
cargo build --release -p backends --bins
cargo fmt --all -- --check
scripts/spdx.sh
cargo clippy --workspace --all-targets -- -D warnings
# The fuzz crate is its own workspace (cargo-fuzz builds it with sanitizer flags): lint it
# too, sharing this workspace's target directory so its dependencies are checked once.
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
CARGO_TARGET_DIR=target cargo clippy --manifest-path fuzz/Cargo.toml --bins -- -D warnings
# One test at a time, lab tests retried once and reported FLAKY if only the retry passes
# (.config/nextest.toml). cargo-nextest comes with the build machines' toolchain.
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast
    cargo test --workspace --doc
else
    echo "test.sh: cargo-nextest not found; plain cargo test (no retries)" >&2
    cargo test --workspace --no-fail-fast -- --test-threads=1
fi
# Every fuzz target for a short run from its seed corpus (docs/testing.md#fuzzing).
scripts/fuzz.sh "${FUZZ_SECONDS:-15}"
