#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Every tracked source file (Rust, shell, Python) names its license on its first line (after a
# shebang). `scripts/spdx.sh` lists the files that do not and exits 1; `--fix` adds the line.
set -euo pipefail
cd "$(dirname "$0")/.."
tag='SPDX-License-Identifier: Apache-2.0'
missing=()
while IFS= read -r f; do
    head -n 3 "$f" | grep -q "SPDX-License-Identifier" || missing+=("$f")
done < <(git ls-files '*.rs' '*.sh' '*.py' | grep -v '^third_party/')
if [ "${1:-}" = --fix ]; then
    for f in "${missing[@]}"; do
        case "$f" in
        *.rs) sed -i "1i // $tag" "$f" ;;
        *)
            if head -n 1 "$f" | grep -q '^#!'; then
                sed -i "1a # $tag" "$f"
            else
                sed -i "1i # $tag" "$f"
            fi
            ;;
        esac
    done
    echo "spdx.sh: added the license line to ${#missing[@]} files"
    exit 0
fi
if [ "${#missing[@]}" -gt 0 ]; then
    printf 'spdx.sh: no SPDX line: %s\n' "${missing[@]}" >&2
    echo "spdx.sh: run scripts/spdx.sh --fix" >&2
    exit 1
fi
