#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Runs the coverage-guided fuzz targets in fuzz/ (cargo-fuzz + libFuzzer, AddressSanitizer,
# release build with debug assertions and overflow checks), each for SECONDS (default 30),
# starting from its seed corpus in fuzz/seeds/<target>. Inputs that find new coverage are
# kept in fuzz/target/corpus/<target> (not in git); a crash, leak, timeout or sanitizer
# report stops the run with the input saved in fuzz/artifacts/<target>/ and exit status 1.
#
#   scripts/fuzz.sh                 # every target, 30 s each
#   scripts/fuzz.sh 600 nvme        # one target for 10 minutes
#   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O -a nvme fuzz/artifacts/nvme/crash-...   # replay
#
# The machines have the stable toolchain only: RUSTC_BOOTSTRAP=1 lets it take the one
# unstable flag cargo-fuzz passes (-Zsanitizer=address). See docs/testing.md#fuzzing.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-30}
[ $# -gt 0 ] && shift
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz missing (scripts/setup-host.sh installs it)" >&2
    exit 1
fi
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build -O -a
failed=()
for t in "${targets[@]}"; do
    corpus="target/corpus/$t"
    mkdir -p "$corpus" "artifacts/$t"
    log="target/fuzz-$t.log"
    start=$(date +%s)
    if cargo fuzz run -O -a "$t" "$corpus" "seeds/$t" -- \
        -max_total_time="$secs" -timeout=60 -rss_limit_mb=4096 -print_final_stats=1 \
        >"$log" 2>&1; then
        result=ok
    else
        result=FAILED
        failed+=("$t")
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    printf '%-12s %-6s %4ss  %10s execs  cov %6s  corpus %5s\n' "$t" "$result" \
        "$(($(date +%s) - start))" "${execs:-?}" "${cov:-?}" "$(find "$corpus" -type f | wc -l)"
    if [ "$result" = FAILED ]; then
        grep -E 'ERROR|panicked|Test unit written|SUMMARY' "$log" | head -20 >&2 || true
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: findings in: ${failed[*]} (inputs in fuzz/artifacts/, logs in fuzz/target/)" >&2
    exit 1
fi
