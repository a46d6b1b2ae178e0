#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Names the syscalls in the kernel's seccomp audit lines (`audit: type=1326 ... syscall=N`):
# what a thread called outside its filter (killed with `--seccomp on`, allowed and logged with
# `--seccomp log`). Reads the kernel log (`dmesg`), or the files given (a lab console log,
# whose `LAB-SECCOMP:` lines are such audit lines), and prints one line per binary, thread and
# syscall with its count.
#
#   scripts/seccomp-audit.sh                  # this host's kernel log
#   scripts/seccomp-audit.sh console.log      # a lab run's console
set -eu

table=/usr/include/x86_64-linux-gnu/asm/unistd_64.h
[ -r "$table" ] || table=/usr/include/asm/unistd_64.h
if [ ! -r "$table" ]; then
    echo "seccomp-audit: no syscall table (install linux-libc-dev)" >&2
    exit 1
fi

if [ $# -eq 0 ]; then dmesg; else cat "$@"; fi |
    grep -F 'type=1326' |
    sed -n 's/.*comm="\([^"]*\)" exe="\([^"]*\)".*syscall=\([0-9]*\).*/\2 \1 \3/p' |
    awk -v table="$table" '
        BEGIN {
            while ((getline line < table) > 0) {
                split(line, f, " ")
                if (f[1] == "#define" && f[2] ~ /^__NR_/) { sub(/^__NR_/, "", f[2]); name[f[3]] = f[2] }
            }
        }
        {
            n = split($1, path, "/")
            key = path[n] " " $2 " " $3 " " ($3 in name ? name[$3] : "?")
            count[key]++
        }
        END { for (k in count) printf "%6d  %s\n", count[k], k }' |
    sort -k2
