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
[ -c /dev/net/tun ] || { mkdir -p /dev/net; mknod /dev/net/tun c 10 200; }
rm -f "$W/vun.sock"; /lab/bin/vhost-user-net --socket "$W/vun.sock" --tap vperf0 >> "$W/backend.log" 2>&1 & bpid=$!
n=0; while [ ! -S "$W/vun.sock" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
ip addr add 10.99.0.1/24 dev vperf0 2>/dev/null; ip link set vperf0 up
iperf3 -s -B 10.99.0.1 -p 5301 > /dev/null 2>&1 & spid=$!
cell vhost-user-net.boot.1
measure vhost-user-net.boot.1 /lab/bin/vmm run --kernel /lab/vmlinuz --initramfs /lab/guest-boot.cpio --cpus 2 --memory 512M --cmdline "console=ttyS0 panic=-1 quiet" --net vhost_user=on,socket="$W/vun.sock"
kill $spid $bpid 2>/dev/null; wait $spid $bpid 2>/dev/null

[ -c /dev/net/tun ] || { mkdir -p /dev/net; mknod /dev/net/tun c 10 200; }
rm -f "$W/vun.sock"; /lab/bin/vhost-user-net --socket "$W/vun.sock" --tap vperf0 >> "$W/backend.log" 2>&1 & bpid=$!
n=0; while [ ! -S "$W/vun.sock" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
ip addr add 10.99.0.1/24 dev vperf0 2>/dev/null; ip link set vperf0 up
iperf3 -s -B 10.99.0.1 -p 5301 > /dev/null 2>&1 & spid=$!
cell vhost-user-net.boot.2
measure vhost-user-net.boot.2 /lab/bin/vmm run --kernel /lab/vmlinuz --initramfs /lab/guest-boot.cpio --cpus 2 --memory 512M --cmdline "console=ttyS0 panic=-1 quiet" --net vhost_user=on,socket="$W/vun.sock"
kill $spid $bpid 2>/dev/null; wait $spid $bpid 2>/dev/null

[ -c /dev/net/tun ] || { mkdir -p /dev/net; mknod /dev/net/tun c 10 200; }
rm -f "$W/vun.sock"; /lab/bin/vhost-user-net --socket "$W/vun.sock" --tap vperf0 >> "$W/backend.log" 2>&1 & bpid=$!
n=0; while [ ! -S "$W/vun.sock" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
ip addr add 10.99.0.1/24 dev vperf0 2>/dev/null; ip link set vperf0 up
iperf3 -s -B 10.99.0.1 -p 5301 > /dev/null 2>&1 & spid=$!
echo "===GUEST-START vhost-user-net net==="
/lab/bin/vmm run --kernel /lab/vmlinuz --initramfs /lab/guest.cpio --cpus 2 --memory 1024M --cmdline "console=ttyS0 panic=-1 quiet vmmperf=net" --net vhost_user=on,socket="$W/vun.sock"
echo "===GUEST-END status=$?==="
kill $spid $bpid 2>/dev/null; wait $spid $bpid 2>/dev/null

