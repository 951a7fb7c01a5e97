#!/usr/bin/env bash
# Packaging checks, run by scripts/test.sh (needs root for dpkg --root):
#  1. builds the .deb (scripts/build-deb.sh; --no-build reuses the static
#     build and man pages already made)
#  2. lintian on it: no error or warning beyond the overrides it ships
#  3. installs it into an empty temp root with dpkg --root (no chroot, no
#     container: the maintainer scripts honour DPKG_ROOT), then checks what a
#     user would: `toolbox --list` through the installed links, every man page
#     renders with `man -l`, the users exist, the units are installed but not
#     enabled and pass `systemd-analyze verify` (no running systemd needed)
#  4. removes and purges it and checks the root is left empty
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "test-dist.sh: FAIL: $*" >&2; exit 1; }

scripts/build-deb.sh "$@"
version=$(awk -F'"' '/^version *=/ { print $2; exit }' Cargo.toml)
deb=$PWD/target/deb/toolbox_${version}_amd64.deb
[ -f "$deb" ] || fail "no package at $deb"

echo "test-dist.sh: lintian"
lintian_status=0
lintian_out=$(lintian --fail-on error,warning "$deb" 2>&1) || lintian_status=$?
lintian_out=$(echo "$lintian_out" | grep -v "running with root privileges" || true)
((lintian_status == 0)) || fail "lintian: $lintian_out"
[ -z "$lintian_out" ] || echo "$lintian_out"

root=$(mktemp -d /tmp/toolbox-deb-root.XXXXXX)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/etc"
: >"$root/var/lib/dpkg/status"
: >"$root/var/lib/dpkg/available"
# sysusers writes users into the root's own account files.
: >"$root/etc/passwd"
: >"$root/etc/group"
: >"$root/etc/shadow"
: >"$root/etc/gshadow"
dpkg_root=(dpkg --root="$root" --force-script-chrootless --log=/dev/null)

echo "test-dist.sh: dpkg --root install"
"${dpkg_root[@]}" -i "$deb" >/dev/null 2>&1 || fail "dpkg -i"
status=$(dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Status}' toolbox)
[ "$status" = "install ok installed" ] || fail "package status: $status"

listed=$("$root/usr/sbin/toolbox" --list | sort | tr '\n' ' ')
for applet in $listed; do
    link=$root/usr/sbin/$applet
    [ "$applet" = init ] && link=$root/usr/lib/toolbox/bin/init
    [ -L "$link" ] || fail "no link for $applet at ${link#"$root"}"
    # The links are relative, so they resolve inside the root.
    [ "$(readlink -f "$link")" = "$root/usr/sbin/toolbox" ] || fail "$applet: link points elsewhere"
done
[ "$("$root/usr/sbin/timesyncd" --help | head -1)" != "" ] || fail "timesyncd --help through its link"

for page in toolbox $listed; do
    file=$root/usr/share/man/man8/$page.8.gz
    [ -f "$file" ] || fail "no man page $page(8)"
    rendered=$(MANWIDTH=80 man -l "$file" 2>&1) || fail "man -l $page.8.gz: $rendered"
    echo "$rendered" | grep -q "NAME" || fail "$page(8) has no NAME section"
done

grep -q '^netadm:' "$root/etc/passwd" || fail "user netadm not created"
grep -q '^svcadm:' "$root/etc/group" || fail "group svcadm not created"
[ -d "$root/srv/nbd" ] || fail "tmpfiles.d did not create /srv/nbd"
[ -f "$root/etc/toolbox/timesyncd.conf" ] && [ -x "$root/etc/toolbox/zcip.script" ] ||
    fail "example configuration missing"
if find "$root/etc/systemd" -name 'toolbox*' 2>/dev/null | grep -q .; then
    fail "a unit was enabled"
fi

echo "test-dist.sh: systemd-analyze verify"
# The units refer to targets and to /bin/kill of a real system: lend the
# root the host's units and kill, then verify against the root.
mkdir -p "$root/usr/lib/systemd/system" "$root/usr/bin"
cp -n /lib/systemd/system/*.target /lib/systemd/system/systemd-*.service \
    "$root/usr/lib/systemd/system/" 2>/dev/null || true
cp /usr/bin/kill "$root/usr/bin/kill"
[ -e "$root/bin" ] || ln -s usr/bin "$root/bin"
units=()
for unit in "$root"/lib/systemd/system/toolbox*.service; do
    name=$(basename "$unit")
    case "$name" in
        *@.service) name=${name%@.service}@test0.service ;;
    esac
    units+=("$name")
done
for unit in "${units[@]}"; do
    out=$(cd "$root/lib/systemd/system" &&
        SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no --root="$root" "$unit" 2>&1) ||
        fail "systemd-analyze verify $unit: $out"
    # verify prints problems it does not count as failures; none may remain.
    filtered=$(echo "$out" | grep -v -e 'sys-subsystem-net-devices-test0.device' || true)
    [ -z "$filtered" ] || fail "systemd-analyze verify $unit: $filtered"
done
rm -f "$root/usr/bin/kill" "$root/bin"
rm -rf "$root/usr/lib/systemd"

echo "test-dist.sh: remove and purge"
"${dpkg_root[@]}" --purge toolbox >/dev/null 2>&1 || fail "dpkg --purge"
# What stays is the base system's: the dpkg database, the account files
# (the users stay, as policy asks) and the top-level directories.
left=$(cd "$root" && find . -mindepth 1 \
    -not -path './var/lib/dpkg*' -not -path './var/lib' -not -path './var' \
    -not -path './etc' -not -path './etc/passwd*' -not -path './etc/group*' \
    -not -path './etc/shadow*' -not -path './etc/gshadow*' -not -path './etc/.pwd.lock' \
    -not -path './usr' -not -path './usr/bin' -not -path './run' -not -path './srv' | sort)
[ -z "$left" ] || fail "left behind after purge: $left"
echo "test-dist.sh: ok ($(stat -c %s "$deb") byte package)"
