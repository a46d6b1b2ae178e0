#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs everything the project needs on a fresh Debian 12 machine (root or sudo):
# the Debian packages in scripts/packages.txt, a check that cargo is there, and cargo-fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2046
$SUDO apt-get install -y -qq --no-install-recommends $(grep -v '^\s*#' scripts/packages.txt) >/dev/null
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install a Rust toolchain (rustup, or apt-get install cargo)" >&2
    exit 1
fi
# cargo-fuzz (libFuzzer driver) for scripts/fuzz.sh, from crates.io.
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version 0.13.2
fi
