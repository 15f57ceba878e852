#!/usr/bin/env bash
# `make bench`: every benchmark with the release build, real kernel and real QEMU, each beside its
# baseline measured in the same run. Prints markdown tables and keeps a copy under out/.
# Needs root (network namespaces). Not part of the tests: it takes several minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
bench=.build/release/macvtapd-bench
[ -x "$bench" ] || { echo "bench: build first (swift build -c release)" >&2; exit 1; }
mkdir -p out
report="out/bench-$(date -u +%Y%m%dT%H%M%SZ).md"
{
    echo "# macvtapd benchmarks, $(date -u +%Y-%m-%d), $(nproc) cores, $(uname -r), $(qemu-system-x86_64 --version | head -1)"
    echo
    echo "## rtnetlink: create + open + delete of a macvtap"
    echo '```'
    "$bench" netlink
    echo '```'
    echo
    echo "## QMP round trips"
    echo '```'
    "$bench" qmp
    echo '```'
    echo
    echo "## Reconnect and loss (events vs. 1 s polling)"
    "$bench" reconnect
    echo
    echo "## Scale and footprint"
    "$bench" scale ${MACVTAPD_INSTALLED:+--macvtapd "$MACVTAPD_INSTALLED"}
    echo
    echo "## What a real guest sees: reconnect and bond failover (events vs. 1 s polling)"
    "$bench" guest
    echo
    echo "## Live migration of a real guest between two hosts (vs. a macvtap made outside, as in KubeVirt)"
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    "$bench" migration
    echo
    echo "## libvirt: a guest started by a private libvirtd beside a plain QEMU"
    "$bench" libvirt
} 2>&1 | tee "$report"
echo "report: $report"
