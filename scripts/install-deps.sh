#!/usr/bin/env bash
# Installs the system packages macvtapd's build, tests and demo need on a fresh Debian machine.
# Used by `make demo`, `make test` and .ci/run. Does nothing when everything is present.
set -euo pipefail

# libyaml-dev: the YAML parser under the configuration composer (the binary links libyaml-0-2).
# udev provides the systemd-udevd the udev end-to-end tests run in their sandbox.
# linux-image-cloud-amd64 and busybox-static only feed the test guest's initramfs
# (scripts/build-guest-initramfs.sh); nothing boots the host with that kernel. time (GNU time)
# measures a child's own peak RSS and CPU in the tests (ChildProcess.usageWrapper). The package
# tests (make deb, scripts/test-deb.sh) need dpkg-dev (dpkg-shlibdeps), binutils (strip), systemd
# (systemd-analyze verify and security; nothing starts it), init-system-helpers
# (deb-systemd-helper in the maintainer scripts), groff-base (the man pages render without
# warnings), ansible-core with python3-apt (the Ansible example in check mode) and strace (the
# system calls macvtapd makes pass the unit's SystemCallFilter=). libvirt-daemon,
# libvirt-daemon-driver-qemu and libvirt-clients: the libvirt tests run a private libvirtd of
# their own in session mode (PrivateLibvirt); the machine's libvirt is never configured or started.
# libstdc++-12-dev: the release link (make release, make deb) takes libstdc++ from its archive
# (Makefile STATIC_CXX_DIR); the Swift toolchain usually brings it, this says so.
packages=(qemu-system-x86 qemu-utils iproute2 libudev-dev libyaml-dev udev pkg-config util-linux kmod cpio procps time
    iputils-ping linux-image-cloud-amd64 busybox-static dpkg-dev binutils systemd init-system-helpers groff-base
    ansible-core python3-apt strace libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libstdc++-12-dev)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# scripts/validate-schema.py (the schema tests) needs both jsonschema and PyYAML.
python3 -c 'import jsonschema, yaml' 2>/dev/null || need_jsonschema=1

if [ ${#missing[@]} -gt 0 ] || [ -n "${need_jsonschema:-}" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-deps: missing ${missing[*]} ${need_jsonschema:+python3-jsonschema}; run as root to install" >&2
        exit 1
    fi
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ -n "${need_jsonschema:-}" ]; then
    echo "install-deps: installing the jsonschema validator and PyYAML from PyPI"
    python3 -m pip install --quiet jsonschema pyyaml
fi
command -v swift >/dev/null || { echo "install-deps: swift is not on PATH" >&2; exit 1; }
