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
dd if=/dev/zero of="$W/native.img" bs=1M count=64 2>/dev/null
NVME=$(ls /dev/nvme*n1 2>/dev/null | head -n1); NVME=${NVME:-/dev/nvme0n1}
cell native.randread-4k-qd1.1
rm -f "$W/out" "$W/err"
fio --name=randread-4k-qd1 --filename="$W/native.img" --size=64M --rw=randread --bs=4k --iodepth=1 --ioengine=libaio --direct=0 --runtime=2 --time_based --randrepeat=0 --eta=never --output-format=json --output="$W/out" > /dev/null 2> "$W/err"
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native.randread-4k-qd1.1 "$W/out"
cell native.randread-4k-qd32.1
rm -f "$W/out" "$W/err"
fio --name=randread-4k-qd32 --filename="$W/native.img" --size=64M --rw=randread --bs=4k --iodepth=32 --ioengine=libaio --direct=0 --runtime=2 --time_based --randrepeat=0 --eta=never --output-format=json --output="$W/out" > /dev/null 2> "$W/err"
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native.randread-4k-qd32.1 "$W/out"
cell native.randwrite-4k-qd1.1
rm -f "$W/out" "$W/err"
fio --name=randwrite-4k-qd1 --filename="$W/native.img" --size=64M --rw=randwrite --bs=4k --iodepth=1 --ioengine=libaio --direct=0 --runtime=2 --time_based --randrepeat=0 --eta=never --output-format=json --output="$W/out" > /dev/null 2> "$W/err"
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native.randwrite-4k-qd1.1 "$W/out"
cell native.randwrite-4k-qd32.1
rm -f "$W/out" "$W/err"
fio --name=randwrite-4k-qd32 --filename="$W/native.img" --size=64M --rw=randwrite --bs=4k --iodepth=32 --ioengine=libaio --direct=0 --runtime=2 --time_based --randrepeat=0 --eta=never --output-format=json --output="$W/out" > /dev/null 2> "$W/err"
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native.randwrite-4k-qd32.1 "$W/out"
cell native.read-128k.1
rm -f "$W/out" "$W/err"
fio --name=read-128k --filename="$W/native.img" --size=64M --rw=read --bs=128k --iodepth=8 --ioengine=libaio --direct=0 --runtime=2 --time_based --randrepeat=0 --eta=never --output-format=json --output="$W/out" > /dev/null 2> "$W/err"
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native.read-128k.1 "$W/out"
cell native.write-128k.1
rm -f "$W/out" "$W/err"
fio --name=write-128k --filename="$W/native.img" --size=64M --rw=write --bs=128k --iodepth=8 --ioengine=libaio --direct=0 --runtime=2 --time_based --randrepeat=0 --eta=never --output-format=json --output="$W/out" > /dev/null 2> "$W/err"
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native.write-128k.1 "$W/out"
cell native.randrw-70-30-4k-qd32.1
rm -f "$W/out" "$W/err"
fio --name=randrw-70-30-4k-qd32 --filename="$W/native.img" --size=64M --rw=randrw --rwmixread=70 --bs=4k --iodepth=32 --ioengine=libaio --direct=0 --runtime=2 --time_based --randrepeat=0 --eta=never --output-format=json --output="$W/out" > /dev/null 2> "$W/err"
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native.randrw-70-30-4k-qd32.1 "$W/out"
cell native.tcp-tx.1
rm -f "$W/out" "$W/err"
iperf3 -s -1 -B 127.0.0.1 -p 5301 > /dev/null 2>&1 & spid=$!
sleep 1
iperf3 -c 127.0.0.1 -p 5301 -t 2 -J  > "$W/out" 2> "$W/err"
kill $spid 2>/dev/null; wait $spid 2>/dev/null
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native.tcp-tx.1 "$W/out"
cell native.tcp-rx.1
rm -f "$W/out" "$W/err"
iperf3 -s -1 -B 127.0.0.1 -p 5301 > /dev/null 2>&1 & spid=$!
sleep 1
iperf3 -c 127.0.0.1 -p 5301 -t 2 -J -R > "$W/out" 2> "$W/err"
kill $spid 2>/dev/null; wait $spid 2>/dev/null
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native.tcp-rx.1 "$W/out"
cell native.udp.1
rm -f "$W/out" "$W/err"
iperf3 -s -1 -B 127.0.0.1 -p 5301 > /dev/null 2>&1 & spid=$!
sleep 1
iperf3 -c 127.0.0.1 -p 5301 -t 2 -J -u -b 1G > "$W/out" 2> "$W/err"
kill $spid 2>/dev/null; wait $spid 2>/dev/null
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native.udp.1 "$W/out"
cell native-nvme.randread-4k-qd1.1
rm -f "$W/out" "$W/err"
fio --name=randread-4k-qd1 --filename=$NVME --size=64M --rw=randread --bs=4k --iodepth=1 --ioengine=libaio --direct=1 --runtime=2 --time_based --randrepeat=0 --eta=never --output-format=json --output="$W/out" > /dev/null 2> "$W/err"
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native-nvme.randread-4k-qd1.1 "$W/out"
cell native-nvme.randread-4k-qd32.1
rm -f "$W/out" "$W/err"
fio --name=randread-4k-qd32 --filename=$NVME --size=64M --rw=randread --bs=4k --iodepth=32 --ioengine=libaio --direct=1 --runtime=2 --time_based --randrepeat=0 --eta=never --output-format=json --output="$W/out" > /dev/null 2> "$W/err"
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native-nvme.randread-4k-qd32.1 "$W/out"
cell native-nvme.randwrite-4k-qd1.1
rm -f "$W/out" "$W/err"
fio --name=randwrite-4k-qd1 --filename=$NVME --size=64M --rw=randwrite --bs=4k --iodepth=1 --ioengine=libaio --direct=1 --runtime=2 --time_based --randrepeat=0 --eta=never --output-format=json --output="$W/out" > /dev/null 2> "$W/err"
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native-nvme.randwrite-4k-qd1.1 "$W/out"
cell native-nvme.randwrite-4k-qd32.1
rm -f "$W/out" "$W/err"
fio --name=randwrite-4k-qd32 --filename=$NVME --size=64M --rw=randwrite --bs=4k --iodepth=32 --ioengine=libaio --direct=1 --runtime=2 --time_based --randrepeat=0 --eta=never --output-format=json --output="$W/out" > /dev/null 2> "$W/err"
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native-nvme.randwrite-4k-qd32.1 "$W/out"
cell native-nvme.read-128k.1
rm -f "$W/out" "$W/err"
fio --name=read-128k --filename=$NVME --size=64M --rw=read --bs=128k --iodepth=8 --ioengine=libaio --direct=1 --runtime=2 --time_based --randrepeat=0 --eta=never --output-format=json --output="$W/out" > /dev/null 2> "$W/err"
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native-nvme.read-128k.1 "$W/out"
cell native-nvme.write-128k.1
rm -f "$W/out" "$W/err"
fio --name=write-128k --filename=$NVME --size=64M --rw=write --bs=128k --iodepth=8 --ioengine=libaio --direct=1 --runtime=2 --time_based --randrepeat=0 --eta=never --output-format=json --output="$W/out" > /dev/null 2> "$W/err"
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native-nvme.write-128k.1 "$W/out"
cell native-nvme.randrw-70-30-4k-qd32.1
rm -f "$W/out" "$W/err"
fio --name=randrw-70-30-4k-qd32 --filename=$NVME --size=64M --rw=randrw --rwmixread=70 --bs=4k --iodepth=32 --ioengine=libaio --direct=1 --runtime=2 --time_based --randrepeat=0 --eta=never --output-format=json --output="$W/out" > /dev/null 2> "$W/err"
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native-nvme.randrw-70-30-4k-qd32.1 "$W/out"
cell vmm.boot.1
measure vmm.boot.1 /lab/bin/vmm run --kernel /lab/vmlinuz --initramfs /lab/guest-boot.cpio --cpus 2 --memory 512M --cmdline "console=ttyS0 panic=-1 quiet"
cell qemu.boot.1
measure qemu.boot.1 qemu-system-x86_64 -enable-kvm -cpu host -machine q35 -smp 2 -m 512 -nic none -display none -monitor none -serial stdio -no-reboot -kernel /lab/vmlinuz -initrd /lab/guest-boot.cpio -append "console=ttyS0 panic=-1 quiet"
cell native.randread-4k-qd1.2
rm -f "$W/out" "$W/err"
fio --name=randread-4k-qd1 --filename="$W/native.img" --size=64M --rw=randread --bs=4k --iodepth=1 --ioengine=libaio --direct=0 --runtime=2 --time_based --randrepeat=0 --eta=never --output-format=json --output="$W/out" > /dev/null 2> "$W/err"
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native.randread-4k-qd1.2 "$W/out"
cell native.randread-4k-qd32.2
rm -f "$W/out" "$W/err"
fio --name=randread-4k-qd32 --filename="$W/native.img" --size=64M --rw=randread --bs=4k --iodepth=32 --ioengine=libaio --direct=0 --runtime=2 --time_based --randrepeat=0 --eta=never --output-format=json --output="$W/out" > /dev/null 2> "$W/err"
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native.randread-4k-qd32.2 "$W/out"
cell native.randwrite-4k-qd1.2
rm -f "$W/out" "$W/err"
fio --name=randwrite-4k-qd1 --filename="$W/native.img" --size=64M --rw=randwrite --bs=4k --iodepth=1 --ioengine=libaio --direct=0 --runtime=2 --time_based --randrepeat=0 --eta=never --output-format=json --output="$W/out" > /dev/null 2> "$W/err"
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native.randwrite-4k-qd1.2 "$W/out"
cell native.randwrite-4k-qd32.2
rm -f "$W/out" "$W/err"
fio --name=randwrite-4k-qd32 --filename="$W/native.img" --size=64M --rw=randwrite --bs=4k --iodepth=32 --ioengine=libaio --direct=0 --runtime=2 --time_based --randrepeat=0 --eta=never --output-format=json --output="$W/out" > /dev/null 2> "$W/err"
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native.randwrite-4k-qd32.2 "$W/out"
cell native.read-128k.2
rm -f "$W/out" "$W/err"
fio --name=read-128k --filename="$W/native.img" --size=64M --rw=read --bs=128k --iodepth=8 --ioengine=libaio --direct=0 --runtime=2 --time_based --randrepeat=0 --eta=never --output-format=json --output="$W/out" > /dev/null 2> "$W/err"
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native.read-128k.2 "$W/out"
cell native.write-128k.2
rm -f "$W/out" "$W/err"
fio --name=write-128k --filename="$W/native.img" --size=64M --rw=write --bs=128k --iodepth=8 --ioengine=libaio --direct=0 --runtime=2 --time_based --randrepeat=0 --eta=never --output-format=json --output="$W/out" > /dev/null 2> "$W/err"
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native.write-128k.2 "$W/out"
cell native.randrw-70-30-4k-qd32.2
rm -f "$W/out" "$W/err"
fio --name=randrw-70-30-4k-qd32 --filename="$W/native.img" --size=64M --rw=randrw --rwmixread=70 --bs=4k --iodepth=32 --ioengine=libaio --direct=0 --runtime=2 --time_based --randrepeat=0 --eta=never --output-format=json --output="$W/out" > /dev/null 2> "$W/err"
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native.randrw-70-30-4k-qd32.2 "$W/out"
cell native.tcp-tx.2
rm -f "$W/out" "$W/err"
iperf3 -s -1 -B 127.0.0.1 -p 5301 > /dev/null 2>&1 & spid=$!
sleep 1
iperf3 -c 127.0.0.1 -p 5301 -t 2 -J  > "$W/out" 2> "$W/err"
kill $spid 2>/dev/null; wait $spid 2>/dev/null
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native.tcp-tx.2 "$W/out"
cell native.tcp-rx.2
rm -f "$W/out" "$W/err"
iperf3 -s -1 -B 127.0.0.1 -p 5301 > /dev/null 2>&1 & spid=$!
sleep 1
iperf3 -c 127.0.0.1 -p 5301 -t 2 -J -R > "$W/out" 2> "$W/err"
kill $spid 2>/dev/null; wait $spid 2>/dev/null
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native.tcp-rx.2 "$W/out"
cell native.udp.2
rm -f "$W/out" "$W/err"
iperf3 -s -1 -B 127.0.0.1 -p 5301 > /dev/null 2>&1 & spid=$!
sleep 1
iperf3 -c 127.0.0.1 -p 5301 -t 2 -J -u -b 1G > "$W/out" 2> "$W/err"
kill $spid 2>/dev/null; wait $spid 2>/dev/null
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native.udp.2 "$W/out"
cell native-nvme.randread-4k-qd1.2
rm -f "$W/out" "$W/err"
fio --name=randread-4k-qd1 --filename=$NVME --size=64M --rw=randread --bs=4k --iodepth=1 --ioengine=libaio --direct=1 --runtime=2 --time_based --randrepeat=0 --eta=never --output-format=json --output="$W/out" > /dev/null 2> "$W/err"
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native-nvme.randread-4k-qd1.2 "$W/out"
cell native-nvme.randread-4k-qd32.2
rm -f "$W/out" "$W/err"
fio --name=randread-4k-qd32 --filename=$NVME --size=64M --rw=randread --bs=4k --iodepth=32 --ioengine=libaio --direct=1 --runtime=2 --time_based --randrepeat=0 --eta=never --output-format=json --output="$W/out" > /dev/null 2> "$W/err"
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native-nvme.randread-4k-qd32.2 "$W/out"
cell native-nvme.randwrite-4k-qd1.2
rm -f "$W/out" "$W/err"
fio --name=randwrite-4k-qd1 --filename=$NVME --size=64M --rw=randwrite --bs=4k --iodepth=1 --ioengine=libaio --direct=1 --runtime=2 --time_based --randrepeat=0 --eta=never --output-format=json --output="$W/out" > /dev/null 2> "$W/err"
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native-nvme.randwrite-4k-qd1.2 "$W/out"
cell native-nvme.randwrite-4k-qd32.2
rm -f "$W/out" "$W/err"
fio --name=randwrite-4k-qd32 --filename=$NVME --size=64M --rw=randwrite --bs=4k --iodepth=32 --ioengine=libaio --direct=1 --runtime=2 --time_based --randrepeat=0 --eta=never --output-format=json --output="$W/out" > /dev/null 2> "$W/err"
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native-nvme.randwrite-4k-qd32.2 "$W/out"
cell native-nvme.read-128k.2
rm -f "$W/out" "$W/err"
fio --name=read-128k --filename=$NVME --size=64M --rw=read --bs=128k --iodepth=8 --ioengine=libaio --direct=1 --runtime=2 --time_based --randrepeat=0 --eta=never --output-format=json --output="$W/out" > /dev/null 2> "$W/err"
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native-nvme.read-128k.2 "$W/out"
cell native-nvme.write-128k.2
rm -f "$W/out" "$W/err"
fio --name=write-128k --filename=$NVME --size=64M --rw=write --bs=128k --iodepth=8 --ioengine=libaio --direct=1 --runtime=2 --time_based --randrepeat=0 --eta=never --output-format=json --output="$W/out" > /dev/null 2> "$W/err"
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native-nvme.write-128k.2 "$W/out"
cell native-nvme.randrw-70-30-4k-qd32.2
rm -f "$W/out" "$W/err"
fio --name=randrw-70-30-4k-qd32 --filename=$NVME --size=64M --rw=randrw --rwmixread=70 --bs=4k --iodepth=32 --ioengine=libaio --direct=1 --runtime=2 --time_based --randrepeat=0 --eta=never --output-format=json --output="$W/out" > /dev/null 2> "$W/err"
[ -s "$W/out" ] || cp "$W/err" "$W/out"
emit native-nvme.randrw-70-30-4k-qd32.2 "$W/out"
cell vmm.boot.2
measure vmm.boot.2 /lab/bin/vmm run --kernel /lab/vmlinuz --initramfs /lab/guest-boot.cpio --cpus 2 --memory 512M --cmdline "console=ttyS0 panic=-1 quiet"
cell qemu.boot.2
measure qemu.boot.2 qemu-system-x86_64 -enable-kvm -cpu host -machine q35 -smp 2 -m 512 -nic none -display none -monitor none -serial stdio -no-reboot -kernel /lab/vmlinuz -initrd /lab/guest-boot.cpio -append "console=ttyS0 panic=-1 quiet"
echo; echo "===JSON-BEGIN lab.check.1==="; /lab/bin/vmm check --json > "$W/check" 2>/dev/null; base64 < "$W/check"; echo "===JSON-END lab.check.1==="
