#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Undo scripts/vfio-bind.sh: release a device from vfio-pci and give it back
# to the driver it had before (from the state file; or DRIVER if given).
#
# usage: scripts/vfio-unbind.sh DDDD:BB:DD.F [DRIVER]
# env:   VFIO_STATE_DIR (default /run/vfio-bind), SYSFS (default /sys)
set -eu

SYSFS=${SYSFS:-/sys}
STATE_DIR=${VFIO_STATE_DIR:-/run/vfio-bind}

die() { echo "vfio-unbind: $*" >&2; exit 1; }

[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 DDDD:BB:DD.F [DRIVER]"
bdf=$(basename "$1")
case "$bdf" in
    ????:??:??.?) ;;
    ??:??.?) bdf="0000:$bdf" ;;
    *) die "'$1' is not a PCI address (expected DDDD:BB:DD.F)" ;;
esac
dev="$SYSFS/bus/pci/devices/$bdf"
[ -e "$dev" ] || die "$bdf: no such PCI device"

orig=${2:-}
if [ -z "$orig" ] && [ -f "$STATE_DIR/$bdf" ]; then
    orig=$(cat "$STATE_DIR/$bdf")
fi

driver=
[ -e "$dev/driver" ] && driver=$(basename "$(readlink -f "$dev/driver")")
[ "$driver" = vfio-pci ] || [ -z "$driver" ] || die "$bdf is bound to $driver, not vfio-pci: nothing to undo"
if [ "$driver" = vfio-pci ]; then
    echo "$bdf" > "$dev/driver/unbind" || die "$bdf: unbind from vfio-pci failed (is a VMM still using it?)"
fi
# An empty override lets the kernel match drivers by ID again.
echo > "$dev/driver_override"
if [ -n "$orig" ]; then
    echo "$bdf" > "$SYSFS/bus/pci/drivers/$orig/bind" 2>/dev/null || echo "$bdf" > "$SYSFS/bus/pci/drivers_probe" || true
else
    echo "$bdf" > "$SYSFS/bus/pci/drivers_probe" 2>/dev/null || true
fi
now=
[ -e "$dev/driver" ] && now=$(basename "$(readlink -f "$dev/driver")")
if [ -n "$orig" ] && [ "$now" != "$orig" ]; then
    die "$bdf: rebinding to $orig failed (driver now: ${now:-none})"
fi
rm -f "$STATE_DIR/$bdf"
echo "vfio-unbind: $bdf: vfio-pci -> ${now:-no driver}"
