#!/usr/bin/env bash
# Remakes packaging/macvtapd.order, the link order of the release binary (Makefile
# RELEASE_LINK_FLAGS): the functions that macvtapd's processes run, one mangled name a line, which
# lld places next to each other at the start of .text. The kernel maps a binary's code in 64 KiB
# windows around each page a process touches (fault-around), and the 1.6 MB of functions that
# macvtapd's processes run lay scattered over 11 MB of code (the Swift runtime, FoundationEssentials,
# our modules): an empty daemon had 8.5 MiB of code resident, 4.6 MiB with the order (the standard
# library's internal functions share one section that no order can move; README, "Benchmarks").
#
# The order changes only where code lies, never what it does: a function missing from the list (new
# code, a renamed symbol) is linked after the listed ones as before, and a listed name that no longer
# exists is skipped. Remake it when the daemon's code paths changed much (the README's RSS rows say
# how much it matters).
#
# Usage: scripts/link-order.sh BINARY [BENCH]  (as root, with valgrind installed; BINARY: a release
# build, `make release`, whose names the order then uses: profile the flags the order is for)
#   Runs BINARY's short commands, an empty daemon, and with BENCH (.build/release/macvtapd-bench)
#   the scale bench's daemons at 1,000 bindings, all under valgrind's callgrind, which records
#   every function that ran, and writes the union of their names to packaging/macvtapd.order.
set -euo pipefail
cd "$(dirname "$0")/.."
binary=$(realpath "$1")
bench=${2:+$(realpath "$2")}
work=$(mktemp -d /tmp/macvtapd-order.XXXXXX)
trap 'rm -rf "$work"; ip netns del "mvtdorder$$" 2>/dev/null || true' EXIT
# callgrind cannot read the Swift toolchain's DWARF; the symbol table is all it needs.
strip --strip-debug -o "$work/macvtapd" "$binary"
mkdir -p "$work/profiles"
cat >"$work/profiled" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --demangle=no -q --callgrind-out-file=$work/profiles/%p $work/macvtapd "\$@"
EOF
chmod +x "$work/profiled"
profiled="$work/profiled"

# The short commands, each on the example configuration and on 1,000 bindings.
big="$work/big.yaml"
{
    echo "version: 1"
    echo "vms:"
    for vm in $(seq 0 39); do
        printf '  vm%d:\n    qmp: %s/qmp/vm%d.sock\n    nics:\n' "$vm" "$work" "$vm"
        for nic in $(seq 0 24); do printf '      n%d: {host: l%d}\n' "$nic" $(((vm * 25 + nic) % 10)); done
    done
} >"$big"
"$profiled" --version >/dev/null
"$profiled" --help >/dev/null
"$profiled" run --help >/dev/null
"$profiled" validate -c examples/macvtapd.yaml >/dev/null
"$profiled" validate -c "$big" >/dev/null
"$profiled" validate -c examples/conf.d >/dev/null || true
"$profiled" plan -c "$big" --status-file "$work/none.json" --control-socket "$work/none.sock" >/dev/null 2>&1 || true

# An empty daemon in a namespace of its own, asked for its status and a plan.
ip netns add "mvtdorder$$"
printf 'version: 1\nvms: {}\n' >"$work/empty.yaml"
ip netns exec "mvtdorder$$" "$profiled" run -c "$work/empty.yaml" --status-file "$work/status.json" \
    --metrics-file "$work/metrics.prom" --control-socket "$work/run/control.sock" --device-dir "$work/dev" \
    --log-level warning >"$work/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 300); do [ -S "$work/run/control.sock" ] && break; sleep 0.1; done
sleep 2
"$profiled" status --control-socket "$work/run/control.sock" >/dev/null || true
"$profiled" status --json --control-socket "$work/run/control.sock" >/dev/null || true
"$profiled" plan -c "$work/empty.yaml" --control-socket "$work/run/control.sock" >/dev/null || true
kill -TERM "$daemon"
wait "$daemon" || true

# 1,000 bindings: converge, resyncs, a flap, plan and apply through the daemon, the polling baseline.
if [ -n "$bench" ]; then
    "$bench" scale --flaps 1 --repeats 1 --idle-seconds 35 --baseline-idle-seconds 3 --macvtapd "$profiled" || true
fi

# Every function callgrind saw run in the binary itself (not in libc and the other shared libraries),
# from the compressed names of its output: "fn=(id) name" names a function the first time, "fn=(id)"
# after; "ob=" says in which object the following functions are.
awk '
    match($0, /^c?ob=\([0-9]+\)/) {
        id = substr($0, RSTART, RLENGTH); sub(/^c?ob=/, "", id); name = substr($0, RLENGTH + 2)
        if (name != "") objects[FILENAME, id] = name
        if ($0 ~ /^ob=/) inbinary = (objects[FILENAME, id] == binary)
        next
    }
    match($0, /^c?fn=\([0-9]+\)/) {
        id = substr($0, RSTART, RLENGTH); sub(/^c?fn=/, "", id); name = substr($0, RLENGTH + 2)
        if (name != "") functions[FILENAME, id] = name
        if ($0 ~ /^fn=/ && inbinary && functions[FILENAME, id] !~ /^0x/) print functions[FILENAME, id]
    }
' binary="$work/macvtapd" "$work"/profiles/* | LC_ALL=C sort -u >packaging/macvtapd.order
echo "packaging/macvtapd.order: $(wc -l <packaging/macvtapd.order) functions from $(ls "$work/profiles" | wc -l) processes"
# SwiftPM does not know the order file: the next `make release` relinks only if the binary is gone.
rm -f .build-release/*/release/macvtapd
