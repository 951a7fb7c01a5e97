#!/usr/bin/env bash
# Builds target/deb/toolbox_VERSION_amd64.deb with dpkg-deb: the static
# toolbox in /usr/sbin with a link per applet, the systemd units (installed,
# not enabled), sysusers.d/tmpfiles.d files, the man pages, example configs
# and the OpenRC/sysvinit/runit scripts as examples.
#
#   scripts/build-deb.sh [--no-build]    (--no-build: package the static
#                                        build and man pages already there)
#   TOOLBOX_STATIC=PATH scripts/build-deb.sh --no-build   (package that binary)
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-gnu
static=${TOOLBOX_STATIC:-target/static/$target/release/toolbox}
build=1
[ "${1:-}" = --no-build ] && build=0

if ((build)); then
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --release --quiet --target "$target" --target-dir target/static
    scripts/mangen.sh >/dev/null
fi
[ -x "$static" ] || { echo "build-deb.sh: no static build at $static" >&2; exit 1; }
ls target/man/*.8 >/dev/null 2>&1 || { echo "build-deb.sh: no man pages in target/man (scripts/mangen.sh)" >&2; exit 1; }

version=$(awk -F'"' '/^version *=/ { print $2; exit }' Cargo.toml)
arch=amd64
pkg=toolbox
out=target/deb
root=$out/root
rm -rf "$root"
mkdir -p "$root/DEBIAN"

install -D -m 0755 "$static" "$root/usr/sbin/toolbox"
# A link per applet. init would shadow the system's /usr/sbin/init, so it
# goes where only an initramfs or a deliberate PATH finds it.
for applet in $("$static" --list); do
    if [ "$applet" = init ]; then
        mkdir -p "$root/usr/lib/toolbox/bin"
        ln -s ../../../sbin/toolbox "$root/usr/lib/toolbox/bin/init"
    else
        ln -s toolbox "$root/usr/sbin/$applet"
    fi
done

dist=scripts/dist
for unit in "$dist"/systemd/*.service; do
    install -D -m 0644 "$unit" "$root/lib/systemd/system/$(basename "$unit")"
done
install -D -m 0644 "$dist/systemd/toolbox.sysusers" "$root/usr/lib/sysusers.d/toolbox.conf"
install -D -m 0644 "$dist/systemd/toolbox.tmpfiles" "$root/usr/lib/tmpfiles.d/toolbox.conf"

mkdir -p "$root/usr/share/man/man8"
for page in target/man/*.8; do
    gzip -9n <"$page" >"$root/usr/share/man/man8/$(basename "$page").gz"
done

# Configuration: conffiles, so dpkg keeps a user's changes.
install -D -m 0644 scripts/timesyncd.conf "$root/etc/toolbox/timesyncd.conf"
install -D -m 0755 scripts/zcip.script "$root/etc/toolbox/zcip.script"
mkdir -p "$root/etc/toolbox/svchost" "$root/etc/toolbox/nbd"

doc=$root/usr/share/doc/$pkg
install -D -m 0644 "$dist/examples/svchost-storage.conf" "$doc/examples/svchost/storage.conf"
install -D -m 0644 "$dist/examples/nbd-disk1.conf" "$doc/examples/nbd/disk1.conf"
for f in "$dist"/openrc/* "$dist"/sysvinit/* "$dist"/runit/*/*; do
    rel=${f#"$dist"/}
    install -D -m 0644 "$f" "$doc/examples/$rel"
done
cat >"$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: toolbox
Source: https://example.invalid/toolbox

Files: *
Copyright: 2026 The toolbox authors
License: MIT
$(sed 's/^$/./; s/^/ /' LICENSE)
EOF
cat <<EOF | gzip -9n >"$doc/changelog.gz"
$pkg ($version) unstable; urgency=medium

  * Package built from the toolbox tree by scripts/build-deb.sh.

 -- toolbox maintainers <maintainers@toolbox.invalid>  $(date -R -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")
EOF
install -D -m 0644 "$dist/debian/lintian-overrides" "$root/usr/share/lintian/overrides/$pkg"

install -m 0755 "$dist/debian/postinst" "$dist/debian/postrm" "$root/DEBIAN/"
(cd "$root" && find etc -type f -printf '/%p\n' | sort) >"$root/DEBIAN/conffiles"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
    >"$root/DEBIAN/md5sums"
installed_kib=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: $pkg
Version: $version
Architecture: $arch
Maintainer: toolbox maintainers <maintainers@toolbox.invalid>
Installed-Size: $installed_kib
Section: admin
Priority: optional
Homepage: https://example.invalid/toolbox
Description: small system daemons in one static binary
 One multi-call executable, busybox-style, carrying an NBD server (nbd,
 qemu-nbd compatible), an SNTP client (timesyncd), IPv4 link-local
 addressing (zcip), persistent IP configuration (ipmgmtd and ipadm) and a
 service host (svchost and sc). The systemd units are installed but not
 enabled; OpenRC, sysvinit and runit scripts are in the examples.
EOF

deb=$out/${pkg}_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb ($(stat -c %s "$deb") bytes)"
