#!/usr/bin/env bash
# The main job: macvtapd on a sandboxed network namespace and a real QEMU. Two veth pairs stand
# in for host interfaces; a QEMU with two NICs on hubs (and a probe on nic0's hub) stands in for a
# VM. Shows validate, plan, apply and status, removes and restores a host interface, and checks
# that frames flow again. Everything is cleaned up on exit, including Ctrl-C.
set -euo pipefail

bin=$(realpath "${1:-.build/debug/macvtapd}")
[ "$(id -u)" -eq 0 ] || { echo "demo: run as root (it creates a network namespace)" >&2; exit 1; }

ns="macvtapd-demo-$$"
work=$(mktemp -d /tmp/macvtapd-demo.XXXXXX)
qemu_pid=""
cleanup() {
    [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null && wait "$qemu_pid" 2>/dev/null
    ip netns del "$ns" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
in_ns() { ip netns exec "$ns" "$@"; }
# --device-dir only for the commands that open tap devices (apply, run); plan and status only read.
macvtapd() {
    local extra=()
    case "$1" in apply | run) extra=(--device-dir "$work/dev") ;; esac
    in_ns "$bin" "$@" --status-file "$work/status.json" "${extra[@]}"
}

step "sandbox: namespace $ns with host interfaces uplink0 and uplink1 (veth pairs)"
ip netns add "$ns"
in_ns ip link set lo up
for i in 0 1; do
    in_ns ip link add "uplink$i" type veth peer name "uplink$i-peer"
    in_ns ip link set "uplink$i" up
    in_ns ip link set "uplink$i-peer" up
done
in_ns ip -br link

step "VM web1: QEMU with nic0 on hub 10 and nic1 on hub 11, a probe on hub 10"
probe_port=$((20000 + $$ % 20000))
qemu-system-x86_64 -M q35 -nodefaults -display none -m 64 \
    -qmp "unix:$work/web1.qmp,server=on,wait=off" \
    -netdev hubport,id=nic0.port,hubid=10 -device virtio-net-pci,id=nic0,netdev=nic0.port,mac=52:54:00:00:00:10 \
    -netdev hubport,id=nic1.port,hubid=11 -device virtio-net-pci,id=nic1,netdev=nic1.port,mac=52:54:00:00:00:11 \
    -netdev "socket,id=probe,udp=127.0.0.1:$probe_port,localaddr=127.0.0.1:$((probe_port + 1))" \
    -netdev hubport,id=probe.port,hubid=10,netdev=probe 2>"$work/qemu.log" &
qemu_pid=$!
for _ in $(seq 50); do [ -S "$work/web1.qmp" ] && break; sleep 0.1; done

cat >"$work/macvtapd.yaml" <<YAML
version: 1
defaults:
  mode: bridge
  link: follow
vms:
  web1:
    qmp: $work/web1.qmp
    nics:
      nic0:
        host: uplink0
      nic1:
        host: uplink1
        mode: vepa
YAML
step "desired state ($work/macvtapd.yaml)"
cat "$work/macvtapd.yaml"

step "macvtapd validate"
"$bin" validate -c "$work/macvtapd.yaml"

step "macvtapd plan"
macvtapd plan -c "$work/macvtapd.yaml"

step "macvtapd apply"
macvtapd apply -c "$work/macvtapd.yaml"
"$bin" status --status-file "$work/status.json"
python3 "$(dirname "$0")/frames.py" --netns "$ns" --iface uplink0-peer --dst 52:54:00:00:00:10 --probe-port "$probe_port"

step "apply again: nothing to do"
macvtapd apply -c "$work/macvtapd.yaml"

step "host interface uplink0 is hot-removed"
in_ns ip link del uplink0
macvtapd plan -c "$work/macvtapd.yaml"
macvtapd apply -c "$work/macvtapd.yaml"
"$bin" status --status-file "$work/status.json"

step "uplink0 comes back"
in_ns ip link add uplink0 type veth peer name uplink0-peer
in_ns ip link set uplink0 up
in_ns ip link set uplink0-peer up
macvtapd plan -c "$work/macvtapd.yaml"
macvtapd apply -c "$work/macvtapd.yaml"
"$bin" status --status-file "$work/status.json"
python3 "$(dirname "$0")/frames.py" --netns "$ns" --iface uplink0-peer --dst 52:54:00:00:00:10 --probe-port "$probe_port"

step "done: the guest NIC was never unplugged; cleaning up"
