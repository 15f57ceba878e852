#!/usr/bin/env bash
# Installs PACKAGE.deb into a throwaway root, exercises it there, purges it and checks that nothing
# is left. The throwaway root is this machine's own filesystem under a copy-on-write overlay
# (upper layer on a tmpfs) in a private mount namespace: the package sees a real Debian system
# with dpkg, deb-systemd-helper and Python, and everything it writes vanishes with the namespace.
# Run as root. Prints one "name: value" line per finding; exits non-zero on the first failure.
# Used by the PackageTests suite (Tests/MacvtapdCLITests/PackageTests.swift) after `make deb`.
#
#   scripts/test-deb.sh PACKAGE.deb [PLAYBOOK]
#
# With PLAYBOOK (examples/ansible/playbook.yml), also runs it with ansible-playbook --check
# against localhost inside the throwaway root, with the package installed.
set -euo pipefail

if [ "${1:-}" != "--inside" ]; then
    [ $# -ge 1 ] || { echo "usage: $0 PACKAGE.deb [PLAYBOOK]" >&2; exit 2; }
    package=$(realpath "$1")
    playbook=${2:+$(realpath "$2")}
    scratch=$(mktemp -d /tmp/macvtapd-deb-test.XXXXXX)
    status=0
    unshare --mount --propagation private "$0" --inside "$scratch" "$package" "$playbook" || status=$?
    rmdir "$scratch" 2>/dev/null || true
    exit $status
fi

scratch=$2
package=$3
playbook=$4
fail() { echo "FAILED: $*" >&2; exit 1; }

mount -t tmpfs macvtapd-deb-test "$scratch"
mkdir "$scratch/upper" "$scratch/work" "$scratch/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$scratch/upper,workdir=$scratch/work" "$scratch/root"
root=$scratch/root
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --rbind /sys "$root/sys"
# A private /run and /tmp: no systemd runs here, and nothing the package does may reach the host's.
mount -t tmpfs tmpfs "$root/run"
mount -t tmpfs tmpfs "$root/tmp"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }

cp "$package" "$root/tmp/macvtapd.deb"
[ ! -e "$root/usr/sbin/macvtapd" ] || fail "/usr/sbin/macvtapd exists before the install"
in_root dpkg-deb --info /tmp/macvtapd.deb | sed -n 's/^ Depends: /depends: /p'
in_root dpkg -i /tmp/macvtapd.deb >/dev/null || fail "dpkg -i"
in_root dpkg-query -W -f='installed: ${Package} ${Version} ${db:Status-Abbrev}\n' macvtapd

echo "version: $(in_root /usr/sbin/macvtapd --version)"
echo "ldd: $(in_root ldd /usr/sbin/macvtapd | awk '{print $1}' | sort | tr '\n' ' ')"
validate=$(in_root /usr/sbin/macvtapd validate 2>&1) || fail "macvtapd validate: $validate"
echo "validate: $validate"
# The example configuration declares nothing; plan observes this host and has nothing to do.
plan=$(in_root /usr/sbin/macvtapd plan --detailed-exitcode --status-file /run/macvtapd/status.json --udev off 2>&1) ||
    fail "macvtapd plan --detailed-exitcode of the example: $plan"
echo "plan: $(printf '%s' "$plan" | tr '\n' ' ')"
echo "conffiles: $(in_root dpkg-query -W -f='${Conffiles}' macvtapd | awk 'NF {print $1}' | tr '\n' ' ')"
echo "config mode: $(stat -c '%a %U' "$root/etc/macvtapd" "$root/etc/macvtapd/macvtapd.yaml" | tr '\n' ' ')"
wants=/etc/systemd/system/multi-user.target.wants/macvtapd.service
if [ -L "$root$wants" ]; then echo "enabled: $(readlink "$root$wants")"; else fail "the unit is not enabled ($wants)"; fi
# Enabled, never started: no systemd runs here, and the postinst must not try to start it anyway.
echo "man: $(cd "$root/usr/share/man/man8" && ls macvtapd*.8* | tr '\n' ' ')"
echo "completions: $(cd "$root" && ls usr/share/bash-completion/completions/macvtapd \
    usr/share/zsh/vendor-completions/_macvtapd usr/share/fish/vendor_completions.d/macvtapd.fish | tr '\n' ' ')"
echo "schema: $(cd "$root" && ls usr/share/macvtapd/)"
verify=$(in_root systemd-analyze verify /usr/lib/systemd/system/macvtapd.service 2>&1) ||
    fail "systemd-analyze verify: $verify"
echo "verify: ${verify:-clean}"
echo "security: $(in_root systemd-analyze security --offline=yes /usr/lib/systemd/system/macvtapd.service 2>&1 |
    sed -n 's/^→ Overall exposure level for macvtapd.service: //p')"

if [ -n "$playbook" ]; then
    in_root test -x /usr/bin/ansible-playbook || fail "ansible-playbook is missing (scripts/install-deps.sh installs ansible-core)"
    # A copy under the root's own /tmp: a checkout under the host's /tmp (where CI may clone) is
    # hidden by the private /tmp. The playbook installs this package.
    cp -r "$(dirname "$playbook")" "$root/tmp/ansible"
    out=$(in_root sh -c "cd /tmp/ansible && ansible-playbook --check --diff \
        -i localhost, -c local -e macvtapd_deb=/tmp/macvtapd.deb '/tmp/ansible/$(basename "$playbook")'" 2>&1) ||
        { printf '%s\n' "$out" >&2; fail "ansible-playbook --check"; }
    echo "ansible: $(printf '%s\n' "$out" | grep -E '^localhost +:' | tr -s ' ')"
    printf '%s\n' "$out" | sed -n 's/^TASK \[\(.*\)\] \**$/ansible task: \1/p'
    [ ! -e "$root/etc/macvtapd/50-web.yaml" ] || fail "ansible --check wrote /etc/macvtapd/50-web.yaml"
fi

listing=$(in_root dpkg-query -L macvtapd)
in_root dpkg --purge macvtapd >/dev/null || fail "dpkg --purge"
left=""
for path in $listing $wants /etc/macvtapd /var/lib/systemd/deb-systemd-helper-enabled/macvtapd.service.dsh-also; do
    # What the host itself has (/usr/share/man/man8, ...) was there before the package.
    [ -e "$path" ] && continue
    if [ -e "$root$path" ] || [ -L "$root$path" ]; then left="$left $path"; fi
done
[ -z "$left" ] || fail "left after dpkg --purge:$left"
in_root dpkg-query -W macvtapd >/dev/null 2>&1 && fail "dpkg still knows macvtapd after the purge"
echo "purged: nothing left"
