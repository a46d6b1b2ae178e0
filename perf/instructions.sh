#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# User-space instructions per frame of our vhost-user-net backend's data path, counted by
# valgrind's callgrind: repeatable whatever else the machine is doing, unlike rates and CPU
# time on a shared host. For each frame size it runs `vmm-perf backend net` once with the
# backend under callgrind, collecting only inside the transmit engine (`Engine::process`) and
# once only inside the receive path (`RxPath::process`), and divides by the frames moved.
# The backend runs ~10-50x slower under callgrind, so batches are smaller than natively:
# compare binaries with this script, not with native figures.
#
# usage: perf/instructions.sh [--backend-bin PATH] [FRAMES...]   (root; FRAMES: 64 1500 64k-tso)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
backend=$here/target/release/vhost-user-net
if [ "${1:-}" = "--backend-bin" ]; then
    backend=$(realpath "$2")
    shift 2
fi
frames=("$@")
[ ${#frames[@]} -gt 0 ] || frames=(64 1500 64k-tso)
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
[ -x "$backend" ] || { echo "no backend binary $backend (cargo build --release -p backends)" >&2; exit 2; }
perf=$here/target/release/vmm-perf
[ -x "$perf" ] || { echo "no $perf (cargo build --release -p perf)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# measure FRAME DIRECTION TOGGLE: prints instructions per frame.
measure() {
    local frame=$1 dir=$2 toggle=$3 out=$work/$2-$1
    mkdir -p "$out"
    cat > "$out/backend" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --separate-threads=yes '--toggle-collect=$toggle' \
    --callgrind-out-file=$out/cg.%p "$backend" "\$@"
EOF
    chmod +x "$out/backend"
    local args=(--duration 5 --repeat 1 --frames "$frame" --backend-bin "$out/backend" --out "$out/json")
    [ "$dir" = tx ] && args+=(--no-rx)
    "$perf" backend net "${args[@]}" > "$out/log" 2>&1 || { cat "$out/log" >&2; exit 1; }
    python3 - "$out" "$dir" <<'PY'
import glob, json, sys
out, direction = sys.argv[1], sys.argv[2]
total = 0
for f in glob.glob(out + "/cg.*"):
    for line in open(f):
        if line.startswith(("summary:", "totals:")):
            total += int(line.split()[1])
            break
runs = json.load(open(glob.glob(out + "/json/*.json")[0]))["runs"]
frames = sum(r["counts"]["frames"] for r in runs if r["path"] == "ours" and r["direction"] == direction)
if frames == 0:
    sys.exit(f"no {direction} frames")
print(f"{total / frames:.0f} {frames}")
PY
}

echo "frame    dir  instructions/frame  frames (under callgrind)"
for f in "${frames[@]}"; do
    tx=$(measure "$f" tx '*Engine*::process')
    printf '%-8s tx   %18s  %s\n' "$f" ${tx}
    rx=$(measure "$f" rx '*RxPath::process')
    printf '%-8s rx   %18s  %s\n' "$f" ${rx}
done
