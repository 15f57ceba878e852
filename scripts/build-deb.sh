#!/usr/bin/env bash
# Builds OUT_DIR/macvtapd_VERSION_ARCH.deb from an install tree (`make install DESTDIR=ROOT
# PREFIX=/usr`), with Debian's own tools: dpkg-shlibdeps computes Depends from the binary's
# shared libraries (the Swift runtime is linked in, so only system libraries remain) and dpkg-deb
# writes the archive. Every file under ROOT/etc is a conffile. Used by `make deb`.
set -euo pipefail
root=$(realpath "$1")
out=$(realpath -m "$2")
here=$(cd "$(dirname "$0")/.." && pwd)
binary=$root/usr/sbin/macvtapd
[ -x "$binary" ] || { echo "build-deb: no $binary; run make deb" >&2; exit 1; }

version=$(tr -d ' \n' <"$here/VERSION")
arch=$(dpkg --print-architecture)

rm -rf "$root/DEBIAN"
mkdir -p "$root/DEBIAN"
# dpkg-shlibdeps reads debian/control of a source tree: a minimal one in a scratch directory.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/debian"
printf 'Source: macvtapd\n\nPackage: macvtapd\nArchitecture: any\n' >"$scratch/debian/control"
depends=$(cd "$scratch" && dpkg-shlibdeps -O "$binary" | sed -n 's/^shlibs:Depends=//p')
if [ -z "$depends" ] || printf '%s' "$depends" | grep -qi swift; then
    echo "build-deb: unexpected dependencies: '$depends'" >&2
    exit 1
fi

installed_size=$(du -sk --apparent-size "$root" | cut -f1)
sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@INSTALLED_SIZE@|$installed_size|" \
    -e "s|@DEPENDS@|$depends|" "$here/packaging/debian/control.in" >"$root/DEBIAN/control"
(cd "$root" && find etc -type f | sort | sed 's|^|/|') >"$root/DEBIAN/conffiles"
(cd "$root" && find usr -type f | sort | xargs md5sum) >"$root/DEBIAN/md5sums"
for script in postinst prerm postrm; do
    install -m 0755 "$here/packaging/debian/$script" "$root/DEBIAN/$script"
done

mkdir -p "$out"
package=$out/macvtapd_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$package" >/dev/null
echo "build-deb: $package ($(stat -c %s "$package") bytes; macvtapd binary $(stat -c %s "$binary") bytes)"
echo "build-deb: Depends: $depends"
echo "build-deb: ldd $binary:"
ldd "$binary" | sed 's/^/    /'
