#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Bind a PCI device to vfio-pci (via driver_override) so `vmm run --device` can
# pass it through. The original driver is remembered in a state file for
# scripts/vfio-unbind.sh. Refuses devices the host is using: a block device
# that is mounted or used as swap, a NIC with an IP address, the console.
#
# usage: scripts/vfio-bind.sh DDDD:BB:DD.F|BB:DD.F|/sys/bus/pci/devices/...
# env:   VFIO_STATE_DIR (default /run/vfio-bind), SYSFS (default /sys), PROC (default /proc),
#        VFIO_BIND_DRY_RUN=1 (run the checks, change nothing)
set -eu

SYSFS=${SYSFS:-/sys}
PROC=${PROC:-/proc}
STATE_DIR=${VFIO_STATE_DIR:-/run/vfio-bind}

die() { echo "vfio-bind: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 DDDD:BB:DD.F"
bdf=$(basename "$1")
case "$bdf" in
    ????:??:??.?) ;;
    ??:??.?) bdf="0000:$bdf" ;;
    *) die "'$1' is not a PCI address (expected DDDD:BB:DD.F)" ;;
esac
dev="$SYSFS/bus/pci/devices/$bdf"
[ -e "$dev" ] || die "$bdf: no such PCI device (see lspci -D)"
real=$(readlink -f "$dev")

[ -e "$dev/iommu_group" ] || die "$bdf has no IOMMU group: the host IOMMU is off (boot with intel_iommu=on or amd_iommu=on, or use the lab)"

driver=
[ -e "$dev/driver" ] && driver=$(basename "$(readlink -f "$dev/driver")")
if [ "$driver" = vfio-pci ]; then
    echo "vfio-bind: $bdf is already bound to vfio-pci"
    exit 0
fi

# Is anything under the device's sysfs directory in use by the host?
under_dev() { case "$(readlink -f "$1")" in "$real"/*) return 0 ;; esac; return 1; }

for b in "$SYSFS"/class/block/*; do
    [ -e "$b" ] || continue
    under_dev "$b" || continue
    name=$(basename "$b")
    if grep -q "^/dev/$name[ p0-9]" "$PROC/mounts" 2>/dev/null || grep -q "^/dev/$name " "$PROC/mounts" 2>/dev/null; then
        die "$bdf: refusing, /dev/$name is mounted (umount it first)"
    fi
    if grep -q "^/dev/$name" "$PROC/swaps" 2>/dev/null; then
        die "$bdf: refusing, /dev/$name is in use as swap (swapoff first)"
    fi
    if [ -n "$(ls -A "$b/holders" 2>/dev/null)" ]; then
        die "$bdf: refusing, /dev/$name is held by $(ls "$b/holders" | tr '\n' ' ')(device-mapper/md/LVM)"
    fi
done

for n in "$SYSFS"/class/net/*; do
    [ -e "$n" ] || continue
    under_dev "$n" || continue
    name=$(basename "$n")
    if command -v ip >/dev/null 2>&1 && ip -o addr show dev "$name" 2>/dev/null | grep -q ' inet6\? '; then
        die "$bdf: refusing, NIC $name has an IP address (ip addr flush dev $name first)"
    fi
done

active=$(cat "$SYSFS/class/tty/console/active" 2>/dev/null || true)
for t in "$SYSFS"/class/tty/*; do
    [ -e "$t" ] || continue
    under_dev "$t" || continue
    name=$(basename "$t")
    for c in $active; do
        [ "$c" = "$name" ] && die "$bdf: refusing, it provides the console $name"
    done
done
if [ "$(cat "$dev/boot_vga" 2>/dev/null || echo 0)" = 1 ]; then
    die "$bdf: refusing, it is the boot VGA device (the console)"
fi

if [ "${VFIO_BIND_DRY_RUN:-0}" = 1 ]; then
    echo "vfio-bind: would bind $bdf (${driver:-no driver} -> vfio-pci)"
    exit 0
fi

if [ ! -d "$SYSFS/bus/pci/drivers/vfio-pci" ]; then
    modprobe vfio-pci 2>/dev/null || die "the vfio-pci driver is not available (modprobe vfio-pci)"
fi

mkdir -p "$STATE_DIR"
echo "$driver" > "$STATE_DIR/$bdf"
[ -n "$driver" ] && echo "$bdf" > "$dev/driver/unbind"
echo vfio-pci > "$dev/driver_override"
echo "$bdf" > "$SYSFS/bus/pci/drivers_probe" 2>/dev/null || true
now=
[ -e "$dev/driver" ] && now=$(basename "$(readlink -f "$dev/driver")")
[ "$now" = vfio-pci ] || die "$bdf: binding to vfio-pci failed (driver now: ${now:-none}); undo with scripts/vfio-unbind.sh $bdf"

group=$(basename "$(readlink -f "$dev/iommu_group" 2>/dev/null)" 2>/dev/null || true)
echo "vfio-bind: $bdf: ${driver:-no driver} -> vfio-pci (IOMMU group ${group:-none})"
if [ -n "$group" ]; then
    for m in "$SYSFS/kernel/iommu_groups/$group/devices"/*; do
        mb=$(basename "$m")
        [ "$mb" = "$bdf" ] && continue
        md=
        [ -e "$m/driver" ] && md=$(basename "$(readlink -f "$m/driver")")
        [ -z "$md" ] || [ "$md" = vfio-pci ] || echo "vfio-bind: note: $mb in the same group is bound to $md; bind it too before passthrough" >&2
    done
fi
