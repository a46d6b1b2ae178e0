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
      ram=$(awk -v ram="${RAM_KIB:-0}" '/^[0-9a-f]+-[0-9a-f]+ / { g = ($0 ~ /memfd:guest-ram/); anon = (NF == 5) } /^Size:/ && anon && $2 == ram { g = 1 } g && /^Rss:/ { s += $2 } END { print s + 0 }' /proc/$pid/smaps)
      echo "BOOT-INIT name=$name t0=$t0 t=$t1 rss=$rss guestram=$ram mem=${MEM_MODE:-}";;
    esac
  done < "$fifo"
  wait $pid; st=$?
  echo "BOOT-END name=$name t0=$t0 t=$(now) status=$st"
}
counters() {
  for p in ${COUNTER_PORTS:-9190 9191}; do
    printf 'GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' | nc -w 2 127.0.0.1 "$p" 2>/dev/null
  done |
  awk -v mark="$1" -v id="$2" '
    /^iovmm_requests_total/ {r += $2} /^iovmm_notifications_total/ {n += $2}
    /^iovmm_kicks_total/ {k += $2} /^iovmm_uring_submissions_total/ {s += $2}
    /^iovmm_uring_batch_size_sum/ {b += $2} /^process_cpu_seconds_total/ {c += $2}
    END {printf "===COUNTERS %s %s requests=%.0f notifications=%.0f kicks=%.0f submissions=%.0f submitted=%.0f cpu=%.4f===\n", mark, id, r, n, k, s, b, c}'
}
watch_counters() {
  while IFS= read -r line; do
    printf '%s\n' "$line"
    case "$line" in
      *"===CELL-BEGIN "*) id=${line#*===CELL-BEGIN }; counters begin "${id%%===*}" ;;
      *"===JSON-END "*) id=${line#*===JSON-END }; counters end "${id%%===*}" ;;
    esac
  done
}
[ -c /dev/net/tun ] || { mkdir -p /dev/net; mknod /dev/net/tun c 10 200; }
rm -f "$W/vun.sock"; /lab/bin/vhost-user-net --socket "$W/vun.sock" --tap vperf0 --metrics 127.0.0.1:9191 >> "$W/backend.log" 2>&1 & bpid=$!
n=0; while [ ! -S "$W/vun.sock" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
ip addr add 10.99.0.1/24 dev vperf0 2>/dev/null; ip link set vperf0 up
iperf3 -s -B 10.99.0.1 -p 5301 > /dev/null 2>&1 & spid=$!
cell vhost-user-net.boot.1
measure vhost-user-net.boot.1 /lab/bin/vmm run --kernel /lab/vmlinuz --initramfs /lab/guest-boot.cpio --cpus 2 --memory 512M --cmdline "console=ttyS0 panic=-1 quiet" --net vhost_user=on,socket="$W/vun.sock"
kill $spid $bpid 2>/dev/null; wait $spid $bpid 2>/dev/null; ip link del vperf0 2>/dev/null

[ -c /dev/net/tun ] || { mkdir -p /dev/net; mknod /dev/net/tun c 10 200; }
rm -f "$W/vun.sock"; /lab/bin/vhost-user-net --socket "$W/vun.sock" --tap vperf0 --metrics 127.0.0.1:9191 >> "$W/backend.log" 2>&1 & bpid=$!
n=0; while [ ! -S "$W/vun.sock" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
ip addr add 10.99.0.1/24 dev vperf0 2>/dev/null; ip link set vperf0 up
iperf3 -s -B 10.99.0.1 -p 5301 > /dev/null 2>&1 & spid=$!
cell vhost-user-net.boot.2
measure vhost-user-net.boot.2 /lab/bin/vmm run --kernel /lab/vmlinuz --initramfs /lab/guest-boot.cpio --cpus 2 --memory 512M --cmdline "console=ttyS0 panic=-1 quiet" --net vhost_user=on,socket="$W/vun.sock"
kill $spid $bpid 2>/dev/null; wait $spid $bpid 2>/dev/null; ip link del vperf0 2>/dev/null

[ -c /dev/net/tun ] || { mkdir -p /dev/net; mknod /dev/net/tun c 10 200; }
rm -f "$W/vun.sock"; /lab/bin/vhost-user-net --socket "$W/vun.sock" --tap vperf0 --metrics 127.0.0.1:9191 >> "$W/backend.log" 2>&1 & bpid=$!
n=0; while [ ! -S "$W/vun.sock" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
ip addr add 10.99.0.1/24 dev vperf0 2>/dev/null; ip link set vperf0 up
iperf3 -s -B 10.99.0.1 -p 5301 > /dev/null 2>&1 & spid=$!
echo "===GUEST-START vhost-user-net net==="
{ /lab/bin/vmm run --kernel /lab/vmlinuz --initramfs /lab/guest.cpio --cpus 2 --memory 1024M --cmdline "console=ttyS0 panic=-1 quiet vmmperf=net" --net vhost_user=on,socket="$W/vun.sock" --metrics 127.0.0.1:9190; echo $? > "$W/vmm.status"; } | watch_counters
echo "===GUEST-END status=$(cat "$W/vmm.status")==="
kill $spid $bpid 2>/dev/null; wait $spid $bpid 2>/dev/null; ip link del vperf0 2>/dev/null

