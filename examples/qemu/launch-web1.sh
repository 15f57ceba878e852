#!/bin/sh
# A plain QEMU launch script for a VM macvtapd manages: the monitor and the NICs come from the
# desired state (`macvtapd print qemu-args`), so this script never repeats them. Started paused
# (-S) like libvirt does, then continued once macvtapd had the chance to attach the backends.
set -eu
vm=web1
mkdir -p /run/macvtapd/qmp
# One argument per line: read them into the positional parameters (paths may hold spaces).
set --
while IFS= read -r argument; do set -- "$@" "$argument"; done <<ARGS
$(macvtapd print qemu-args "$vm")
ARGS
exec qemu-system-x86_64 -name "$vm" -machine q35,accel=kvm -m 2048 -nodefaults -display none \
    -drive file=/var/lib/vms/$vm.qcow2,if=virtio \
    "$@"
