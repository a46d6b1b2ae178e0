#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Build the lab images: kernel + uncompressed newc initramfs archives.
#
# Needs (Debian 12 packages, also listed in scripts/packages.txt):
#   apt dpkg coreutils findutils sed mawk cpio busybox-static qemu-system-x86 fio iperf3 libc-bin
# (qemu-storage-daemon is in qemu-system-common, a dependency of qemu-system-x86; ldd is in libc-bin.)
# No root filesystem changes: the kernel is fetched with `apt-get download` and unpacked with
# `dpkg-deb -x` under <repo>/.cache/.  Re-running is cheap: every step is skipped when its output
# exists.  `FORCE=1 scripts/build-images.sh` rebuilds the archives.
#
# Outputs in <repo>/.cache/images/:
#   vmlinuz          Debian cloud kernel (lab host and nested guest)
#   guest-base.cpio  busybox, guest /init, virtio modules
#   guest-tools.cpio fio + iperf3 + their shared libraries (append to guest-base when needed)
#   lab-base.cpio    busybox, lab /init, kvm/vfio/virtio/vhost modules, qemu, fio, iperf3
#   KERNEL_VERSION   e.g. 6.1.0-56-cloud-amd64
#   STAMP            inputs of this build (script hash, kernel, package versions)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LAB_CACHE_DIR:-$REPO/.cache}"
DEBS="$CACHE/debs"
IMAGES="$CACHE/images"
STAGE="$CACHE/stage"
FORCE="${FORCE:-0}"

log() { echo "build-images: $*" >&2; }
die() { echo "build-images: error: $*" >&2; exit 1; }

for tool in apt-get apt-cache dpkg-deb cpio ldd lz4 busybox fio iperf3 qemu-system-x86_64 qemu-storage-daemon; do
    command -v "$tool" >/dev/null || die "missing tool '$tool' (see scripts/packages.txt)"
done

mkdir -p "$DEBS" "$IMAGES" "$STAGE"

# --- kernel -------------------------------------------------------------------------------------

# Usage: kernel_package META   Prints the versioned linux-image package META depends on.
kernel_package() {
    apt-cache depends "$1" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}

# Usage: unpack_package PKG DIR   apt-get download PKG (cached in $DEBS) and dpkg-deb -x it to DIR.
unpack_package() {
    local pkg=$1 dir=$2 deb
    [ -d "$dir/lib/modules" ] && return 0
    log "downloading $pkg"
    deb="$(ls "$DEBS/${pkg}_"*.deb 2>/dev/null | head -n1 || true)"
    if [ -z "$deb" ]; then
        (cd "$DEBS" && apt-get download -q "$pkg" 2>&1 | grep -v 'unsandboxed' >&2 || true)
        deb="$(ls "$DEBS/${pkg}_"*.deb 2>/dev/null | head -n1 || true)"
        [ -n "$deb" ] || die "apt-get download $pkg failed"
    fi
    rm -rf "$dir.tmp"; mkdir -p "$dir.tmp"
    dpkg-deb -x "$deb" "$dir.tmp"
    mv "$dir.tmp" "$dir"
}

KPKG="$(kernel_package linux-image-cloud-amd64)"
[ -n "$KPKG" ] || die "cannot resolve linux-image-cloud-amd64 (run apt-get update?)"
KROOT="$CACHE/kernel/$KPKG"
unpack_package "$KPKG" "$KROOT"
# The generic flavour of the same kernel has the e1000/e1000e drivers the cloud flavour lacks:
# guests of the emulated-NIC tier boot it (vmm/tests/e1000_lab.rs).
GPKG="$(kernel_package linux-image-amd64)"
[ -n "$GPKG" ] || die "cannot resolve linux-image-amd64 (run apt-get update?)"
unpack_package "$GPKG" "$CACHE/generic/root"
KVER="$(ls "$KROOT/lib/modules" | head -n1)"
MODDIR="$KROOT/lib/modules/$KVER"
grep -q '^CONFIG_BLK_DEV_NVME=y' "$KROOT/boot/config-$KVER" ||
    die "$KVER: NVMe driver is not built in (CONFIG_BLK_DEV_NVME != y)"
grep -q '/nvme\.ko$' "$MODDIR/modules.builtin" || die "$KVER: nvme.ko not in modules.builtin"
cmp -s "$KROOT/boot/vmlinuz-$KVER" "$IMAGES/vmlinuz" || cp -f "$KROOT/boot/vmlinuz-$KVER" "$IMAGES/vmlinuz"
echo "$KVER" >"$IMAGES/KERNEL_VERSION"
# The same kernel as an ELF vmlinux (the other format `vmm run --kernel` accepts): the bzImage
# payload is LZ4 (CONFIG_KERNEL_LZ4), starting at the LZ4 legacy-frame magic.
if [ ! -s "$IMAGES/vmlinux" ] || [ "$IMAGES/vmlinuz" -nt "$IMAGES/vmlinux" ]; then
    grep -q '^CONFIG_KERNEL_LZ4=y' "$KROOT/boot/config-$KVER" || die "$KVER: payload is not LZ4"
    off="$(grep -obUaP '\x02\x21\x4c\x18' "$IMAGES/vmlinuz" | head -n1 | cut -d: -f1)"
    [ -n "$off" ] || die "no LZ4 payload in vmlinuz"
    # lz4 stops at the end of the frame and complains about the trailing bytes: check the result.
    tail -c +"$((off + 1))" "$IMAGES/vmlinuz" | lz4 -dc >"$IMAGES/vmlinux.tmp" 2>/dev/null || true
    [ "$(head -c 4 "$IMAGES/vmlinux.tmp")" = "$(printf '\177ELF')" ] || die "vmlinux extraction failed"
    mv "$IMAGES/vmlinux.tmp" "$IMAGES/vmlinux"
fi
log "kernel $KVER"

# Archives are rebuilt when this script, the kernel or a packaged input changes.
STAMP="$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16) $KVER $(dpkg-query -W -f '${Package}=${Version} ' \
    qemu-system-x86 qemu-system-common fio iperf3 busybox-static libc6 2>/dev/null || true)"
if [ "$(cat "$IMAGES/STAMP" 2>/dev/null || true)" != "$STAMP" ]; then
    FORCE=1
    rm -f "$IMAGES/STAMP"
fi

# --- helpers ------------------------------------------------------------------------------------

# Path of module NAME (dashes and underscores are equivalent), empty if absent.
mod_path() {
    local name="${1//-/_}" alt="${1//_/-}"
    find "$MODDIR/kernel" \( -name "$name.ko" -o -name "$alt.ko" \) -print -quit
}

# `depends=` of a .ko, comma separated (read from the .modinfo strings; no kmod needed).
mod_depends() { tr '\0' '\n' <"$1" | sed -n 's/^depends=//p' | head -n1; }

# Resolve modules and their dependencies into load order (dependencies first).
# Usage: resolve_modules REQUIRED... -- OPTIONAL...   Prints one module name per line.
declare -A SEEN
resolve_one() {
    local name="${1//-/_}" optional="$2" path dep
    [ -n "${SEEN[$name]:-}" ] && return 0
    path="$(mod_path "$name")"
    if [ -z "$path" ]; then
        if grep -q "/${name}\.ko$\|/${name//_/-}\.ko$" "$MODDIR/modules.builtin"; then
            log "  $name is built in"
            SEEN[$name]=builtin
            return 0
        fi
        [ "$optional" = 1 ] && { log "  optional module $name not present, skipped"; return 0; }
        die "module $name not found in $KVER"
    fi
    SEEN[$name]=1
    for dep in $(mod_depends "$path" | tr ',' ' '); do
        resolve_one "$dep" 0
    done
    echo "$name"
}
resolve_modules() {
    SEEN=()
    local optional=0 m
    for m in "$@"; do
        if [ "$m" = "--" ]; then optional=1; continue; fi
        resolve_one "$m" "$optional"
    done
}

# Copy a list of modules (names, load order) into STAGEDIR/lib/modules/ and write /etc/modules.load.
install_modules() {
    local stagedir="$1"; shift
    mkdir -p "$stagedir/lib/modules" "$stagedir/etc"
    : >"$stagedir/etc/modules.load"
    local m
    for m in "$@"; do
        cp -f "$(mod_path "$m")" "$stagedir/lib/modules/$m.ko"
        echo "$m" >>"$stagedir/etc/modules.load"
    done
}

# Copy a host binary and every shared library ldd lists, at the same paths.
install_with_libs() {
    local stagedir="$1" bin="$2" lib
    mkdir -p "$stagedir$(dirname "$bin")"
    cp -fL "$bin" "$stagedir$bin"
    for lib in $(ldd "$bin" 2>/dev/null | awk '/=> \// { print $3 } /^\t\// { print $1 }'); do
        [ -e "$stagedir$lib" ] && continue
        mkdir -p "$stagedir$(dirname "$lib")"
        cp -fL "$lib" "$stagedir$lib"
    done
}

# Prove a staged tree is self-contained (no root needed): through the staged loader, every library
# of each BIN must resolve inside the tree, and `BIN --version` must run.
check_tree() {
    local stagedir="$1" ldso libpath bin outside; shift
    ldso="$stagedir/lib64/ld-linux-x86-64.so.2"
    # Every staged library directory (some, like .../ceph, are reached through an absolute RUNPATH).
    libpath="$(find "$stagedir" -name '*.so*' -printf '%h\n' | sort -u | paste -sd:)"
    for bin in "$@"; do
        outside="$("$ldso" --inhibit-cache --library-path "$libpath" --list "$stagedir$bin" |
            awk -v s="$stagedir" '/=>/ && index($3, s) != 1 { print $1 }')"
        [ -z "$outside" ] || die "staged $bin resolves libraries outside the tree: $outside"
        "$ldso" --inhibit-cache --library-path "$libpath" "$stagedir$bin" --version >/dev/null ||
            die "staged $bin does not run"
    done
}

# Busybox with one symlink per applet.
install_busybox() {
    local stagedir="$1" applet
    mkdir -p "$stagedir"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,etc,root,mnt}
    chmod 1777 "$stagedir/tmp"
    cp -f "$(command -v busybox)" "$stagedir/bin/busybox"
    for applet in $(busybox --list-full); do
        [ "$applet" = bin/busybox ] && continue
        [ -e "$stagedir/$applet" ] || ln -s /bin/busybox "$stagedir/$applet"
    done
}

# A tiny newc archive holding /dev and /dev/console (5,1), so that the kernel can open the initial
# console before /init mounts devtmpfs.  Written with printf: no root or mknod needed.
newc_entry() { # name mode rdevmajor rdevminor
    local name="$1" mode="$2" maj="$3" min="$4" namesize hdr pad
    namesize=$(( ${#name} + 1 ))
    hdr="$(printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
        0 "$mode" 0 0 1 0 0 0 0 "$maj" "$min" "$namesize" 0)"
    printf '%s%s\0' "$hdr" "$name"
    pad=$(( (4 - (110 + namesize) % 4) % 4 ))
    head -c "$pad" /dev/zero
}
console_cpio() {
    { newc_entry dev $((0040755)) 0 0
      newc_entry dev/console $((0020600)) 5 1
      newc_entry TRAILER!!! 0 0 0; } >"$1"
}

# Pack STAGEDIR into an uncompressed newc archive OUT (owner root, sorted, reproducible).
pack() {
    local stagedir="$1" out="$2"
    console_cpio "$out.tmp"
    (cd "$stagedir" && find . -mindepth 1 | LC_ALL=C sort |
        cpio -o -H newc -R 0:0 --reproducible --quiet) >>"$out.tmp"
    mv -f "$out.tmp" "$out"
    log "wrote $out ($(du -h "$out" | cut -f1))"
}

need() { [ "$FORCE" = 1 ] || [ ! -s "$IMAGES/$1" ]; }

# --- guest-base.cpio ----------------------------------------------------------------------------

# button + evdev: the ACPI power button (`vmm remote shutdown`) as an input device for acpid.
GUEST_MODULES=(virtio_pci virtio_blk virtio_net failover net_failover button evdev
    -- virtio_console virtio_rng)

if need guest-base.cpio; then
    log "staging guest-base"
    s="$STAGE/guest-base"; rm -rf "$s"; mkdir -p "$s"
    install_busybox "$s"
    resolve_modules "${GUEST_MODULES[@]}" >"$STAGE/modules.list"
    mapfile -t mods <"$STAGE/modules.list"
    install_modules "$s" "${mods[@]}"
    log "guest modules: ${mods[*]}"
    cat >"$s/init" <<'EOF'
#!/bin/sh
# Generic nested-guest init: modules, loopback, then /test.sh (if any) or a console shell.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
# `poweroff -f` does not wait for the serial console: the last lines (exit markers) could be
# lost in the tty's transmit buffer. Re-applying the settings is a tcsetattr(TCSADRAIN), which
# returns once the output is sent; the sleep covers a stty that cannot.
drain_console() { stty "$(stty -g)" 2>/dev/null; sleep 0.3; }
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
while read -r m; do
    insmod "/lib/modules/$m.ko" || echo "guest-init: insmod $m failed"
done </etc/modules.load
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
hostname guest
# The ACPI power button (KEY_POWER from the button driver) powers the guest off, as a
# distribution's acpid or systemd-logind would: busybox acpid runs /etc/acpi/PWRF/00000080.
mkdir -p /etc/acpi/PWRF
cat >/etc/acpi/PWRF/00000080 <<'PWRF'
#!/bin/sh
exec </dev/console >/dev/console 2>&1
echo GUEST-POWER-BUTTON
sync
stty "$(stty -g)" 2>/dev/null
sleep 0.3
poweroff -f
PWRF
chmod 755 /etc/acpi/PWRF/00000080
acpid -c /etc/acpi -l /tmp/acpid.log
echo "GUEST-BOOT-OK uptime=$(cut -d' ' -f1 /proc/uptime)"
if [ -f /test.sh ]; then
    sh /test.sh
    rc=$?
    sync
    echo "GUEST-EXIT-STATUS=$rc"
    drain_console
    poweroff -f
fi
echo "guest-init: no /test.sh, starting a shell"
exec setsid cttyhack sh
EOF
    chmod 755 "$s/init"
    pack "$s" "$IMAGES/guest-base.cpio"
fi

# --- guest-tools.cpio ---------------------------------------------------------------------------

TOOLS_STAGE="$STAGE/guest-tools"
if need guest-tools.cpio || [ ! -x "$TOOLS_STAGE/usr/bin/fio" ]; then
    log "staging guest-tools"
    s="$TOOLS_STAGE"; rm -rf "$s"; mkdir -p "$s"
    install_with_libs "$s" "$(command -v fio)"
    install_with_libs "$s" "$(command -v iperf3)"
    check_tree "$s" /usr/bin/fio /usr/bin/iperf3
    if [ "$(id -u)" = 0 ] && command -v chroot >/dev/null; then
        # Real chroot check (root only): fio must find every library inside the tree.
        chroot "$s" /usr/bin/fio --name=chk --filename=/chk.dat --size=1M --rw=write \
            --ioengine=psync --output-format=terse >/dev/null || die "fio fails in chroot"
        rm -f "$s/chk.dat"
    fi
    pack "$s" "$IMAGES/guest-tools.cpio"
fi

# --- lab-base.cpio ------------------------------------------------------------------------------

# Load order per docs/lab.md; dependencies are resolved from each .ko anyway.
LAB_MODULES=(irqbypass kvm kvm_amd
    vfio vfio_iommu_type1 vfio_virqfd vfio_pci_core vfio_pci
    virtio_pci virtio_blk virtio_net failover net_failover
    tun vhost vhost_net
    -- bridge vhost_vsock virtio_console virtio_rng)

if need lab-base.cpio; then
    log "staging lab-base"
    s="$STAGE/lab-base"; rm -rf "$s"; mkdir -p "$s"
    install_busybox "$s"
    resolve_modules "${LAB_MODULES[@]}" >"$STAGE/modules.list"
    mapfile -t mods <"$STAGE/modules.list"
    install_modules "$s" "${mods[@]}"
    log "lab modules: ${mods[*]}"
    # Tools (fio, iperf3) from the guest-tools tree, then QEMU with its libraries and data.
    cp -a "$TOOLS_STAGE/." "$s/"
    install_with_libs "$s" "$(command -v qemu-system-x86_64)"
    install_with_libs "$s" "$(command -v qemu-storage-daemon)"
    qmod=/usr/lib/x86_64-linux-gnu/qemu
    for m in "$qmod"/accel-*.so; do
        [ -e "$m" ] && install_with_libs "$s" "$m"
    done
    check_tree "$s" "$(command -v qemu-system-x86_64)" "$(command -v qemu-storage-daemon)"
    for d in /usr/share/qemu /usr/share/seabios /usr/lib/ipxe/qemu; do
        if [ -d "$d" ]; then
            mkdir -p "$s$d"
            cp -aL "$d/." "$s$d/"
        fi
    done
    cat >"$s/init" <<'EOF'
#!/bin/sh
# Lab host init: modules (KVM, VFIO, virtio, vhost), then /lab/run.sh from the per-run overlay.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
# `poweroff -f` does not wait for the serial console: the last lines (exit markers) could be
# lost in the tty's transmit buffer. Re-applying the settings is a tcsetattr(TCSADRAIN), which
# returns once the output is sent; the sleep covers a stty that cannot.
drain_console() { stty "$(stty -g)" 2>/dev/null; sleep 0.3; }
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm /dev/hugepages
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t hugetlbfs hugetlbfs /dev/hugepages 2>/dev/null
echo "LAB-INIT uptime=$(cut -d' ' -f1 /proc/uptime)"
# Module parameters come from the kernel command line as `module.param=value`, as modprobe
# would take them (insmod does not read /proc/cmdline itself).
while read -r m; do
    # shellcheck disable=SC2046 # one word per parameter
    insmod "/lib/modules/$m.ko" $(tr ' ' '\n' </proc/cmdline | sed -n "s/^$m\.//p") ||
        echo "lab-init: insmod $m failed"
done </etc/modules.load
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
hostname lab
echo "LAB-BOOT-OK uptime=$(cut -d' ' -f1 /proc/uptime)"
if [ -f /lab/run.sh ]; then
    cd /lab
    sh /lab/run.sh
    rc=$?
    cd /
    sync
    echo "LAB-EXIT-STATUS=$rc"
    drain_console
    poweroff -f
fi
echo "lab-init: no /lab/run.sh, starting a shell"
exec setsid cttyhack sh
EOF
    chmod 755 "$s/init"
    pack "$s" "$IMAGES/lab-base.cpio"
fi

echo "$STAMP" >"$IMAGES/STAMP"
log "images ready in $IMAGES"
