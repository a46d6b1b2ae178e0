# SPDX-License-Identifier: Apache-2.0
set -u
W=/tmp/vmm-perf
mkdir -p "$W"
cell() { echo; echo "===CELL-BEGIN $1==="; }
emit() { echo; echo "===JSON-BEGIN $1==="; if [ -s "$2" ]; then base64 < "$2"; fi; echo "===JSON-END $1==="; rm -f "$2"; }
now() { cut -d' ' -f1 /proc/uptime; }
measure() {
  name=$1; shift
  fifo=${W:-/tmp}/boot.fifo
  rm -f "$fifo"; mkfifo "$fifo"
  t0=$(now)
  "$@" > "$fifo" 2>&1 &
  pid=$!
  while IFS= read -r line; do
    case "$line" in *"GUEST-BOOT-OK uptime="*)
      t1=$(now)
      rss=$(awk '/^VmRSS:/ { print $2 }' /proc/$pid/status)
      ram=$(awk '/^[0-9a-f]+-[0-9a-f]+ / { g = ($0 ~ /memfd:guest-ram/) } g && /^Rss:/ { s += $2 } END { print s + 0 }' /proc/$pid/smaps)
      echo "BOOT-INIT name=$name t0=$t0 t=$t1 rss=$rss guestram=$ram";;
    esac
  done < "$fifo"
  wait $pid; st=$?
  echo "BOOT-END name=$name t0=$t0 t=$(now) status=$st"
}
BDF=$(basename "$(readlink -f /sys/class/nvme/nvme0/device)")
echo vfio-pci > /sys/bus/pci/devices/$BDF/driver_override
echo $BDF > /sys/bus/pci/devices/$BDF/driver/unbind
echo $BDF > /sys/bus/pci/drivers_probe
cell vfio-nvme.boot.1
measure vfio-nvme.boot.1 /lab/bin/vmm run --kernel /lab/vmlinuz --initramfs /lab/guest-boot.cpio --cpus 2 --memory 512M --cmdline "console=ttyS0 panic=-1 quiet" --device path=/sys/bus/pci/devices/$BDF

cell vfio-nvme.boot.2
measure vfio-nvme.boot.2 /lab/bin/vmm run --kernel /lab/vmlinuz --initramfs /lab/guest-boot.cpio --cpus 2 --memory 512M --cmdline "console=ttyS0 panic=-1 quiet" --device path=/sys/bus/pci/devices/$BDF

echo "===GUEST-START vfio-nvme block==="
/lab/bin/vmm run --kernel /lab/vmlinuz --initramfs /lab/guest.cpio --cpus 2 --memory 1024M --cmdline "console=ttyS0 panic=-1 quiet" --device path=/sys/bus/pci/devices/$BDF
echo "===GUEST-END status=$?==="

