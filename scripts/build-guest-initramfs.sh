#!/usr/bin/env bash
# Builds the tiny Linux guest that tests boot under QEMU to see what a VM sees: OUT_DIR/vmlinuz
# (the installed Debian cloud kernel) and OUT_DIR/initramfs.cpio.gz (busybox-static, the virtio
# network modules of that kernel, bonding, the ACPI power button and scripts/guest/init). Built only
# from the packages scripts/install-deps.sh installs. Deterministic (same inputs, same bytes) and
# cached: when the inputs' digest matches OUT_DIR/stamp it does nothing. Concurrent callers
# serialise on a lock.
# MACVTAPD_GUEST_KERNEL=<version> picks a kernel when several cloud kernels are installed.
set -euo pipefail

out=${1:?usage: build-guest-initramfs.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
init="$here/guest/init"
busybox=/bin/busybox
# Dependencies first: busybox insmod does not read modules.dep.
net_modules=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net)

fail() { echo "build-guest-initramfs: $*" >&2; exit 1; }

dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed" ||
    fail "busybox-static is not installed (run scripts/install-deps.sh as root)"
kernel=${MACVTAPD_GUEST_KERNEL:-$(find /lib/modules -mindepth 1 -maxdepth 1 -name '*-cloud-amd64' -printf '%f\n' | sort -V | tail -n 1)}
[ -n "$kernel" ] || fail "no cloud kernel in /lib/modules (install linux-image-cloud-amd64: scripts/install-deps.sh)"
vmlinuz=/boot/vmlinuz-$kernel
moddir=/lib/modules/$kernel
[ -r "$vmlinuz" ] || fail "kernel image $vmlinuz is missing or unreadable"
[ -r "$moddir/modules.dep" ] || fail "$moddir/modules.dep is missing"

mkdir -p "$out"
exec 9>"$out/.lock"
flock 9

# Path of a module relative to $moddir, whatever its compression.
module_path() {
    local path
    path=$(grep -E "(^|/)$1\.ko(\.xz|\.zst|\.gz)?:" "$moddir/modules.dep" | head -n 1 | cut -d: -f1)
    [ -n "$path" ] || fail "module $1 is not in $moddir/modules.dep"
    echo "$path"
}

module_name() { local base=${1##*/}; echo "${base%%.ko*}"; }

# modules.dep lists a module's whole dependency closure, the module that must load last first.
load_order() {
    local module path deps dep
    local -a order=()
    for module in "$@"; do
        path=$(module_path "$module")
        deps=$(grep -E "^$path:" "$moddir/modules.dep" | cut -d: -f2)
        for dep in $(echo "$deps" | tr ' ' '\n' | tac) "$path"; do
            dep=$(module_name "$dep")
            [[ " ${order[*]-} " == *" $dep "* ]] || order+=("$dep")
        done
    done
    printf '%s\n' "${order[@]}"
}

net_order=$(load_order "${net_modules[@]}")
bonding_order=$(load_order bonding | grep -vxF -e bonding $(printf -- '-e %s ' $net_order) || true)
# The ACPI power button and its input device, loaded only when a test asks (macvtapd.power_button).
power_modules=(button evdev)
all_modules=$(printf '%s\n' $net_order $bonding_order bonding "${power_modules[@]}")

digest=$(
    {
        echo "$kernel"
        sha256sum "$0" "$init" "$busybox" "$vmlinuz"
        for module in $all_modules; do sha256sum "$moddir/$(module_path "$module")"; done
    } | sha256sum | cut -d' ' -f1
)
if [ -f "$out/initramfs.cpio.gz" ] && [ -f "$out/vmlinuz" ] && [ "$(cat "$out/stamp" 2>/dev/null)" = "$digest" ]; then
    exit 0
fi

staging=$(mktemp -d "$out/.staging.XXXXXX")
trap 'rm -rf "$staging"' EXIT
root=$staging/root
mkdir -p "$root"/{bin,dev,proc,sys,run,tmp,lib/modules}
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
install -m 0755 "$init" "$root/init"
for module in $all_modules; do
    source_path=$moddir/$(module_path "$module")
    case "$source_path" in
    *.ko.xz) xz -dc "$source_path" >"$root/lib/modules/$module.ko" ;;
    *.ko.zst) zstd -q -dc "$source_path" >"$root/lib/modules/$module.ko" ;;
    *.ko.gz) gzip -dc "$source_path" >"$root/lib/modules/$module.ko" ;;
    *) cp "$source_path" "$root/lib/modules/$module.ko" ;;
    esac
done
echo "$net_order" >"$root/lib/modules/load-order"
printf '%s\n' $bonding_order >"$root/lib/modules/bonding-load-order"

# Same bytes for the same inputs: fixed owners, modes from the sources, mtimes at the epoch,
# sorted entries, no name or time in the gzip header.
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -n -6 >"$staging/initramfs.cpio.gz"
cp "$vmlinuz" "$staging/vmlinuz"
mv -f "$staging/vmlinuz" "$out/vmlinuz"
mv -f "$staging/initramfs.cpio.gz" "$out/initramfs.cpio.gz"
echo "$digest" >"$out/stamp"
echo "build-guest-initramfs: $out/initramfs.cpio.gz ($(stat -c %s "$out/initramfs.cpio.gz") bytes), kernel $kernel"
