#!/usr/bin/env bash
# Installs the test peers (Debian packages) when missing, then runs every
# check CI runs: formatting, clippy, unit and integration tests, the
# packaging checks and the size budget.
set -euo pipefail
cd "$(dirname "$0")/.."

peers=(qemu-utils nbdkit libnbd-bin python3-libnbd fio chrony ntpsec-ntpdate busybox-static arping tcpdump iproute2 fdisk
    dnsmasq-base isc-dhcp-server openssl)
# Packaging checks (scripts/test-dist.sh): systemd-analyze, lintian, man.
peers+=(systemd lintian man-db)
missing=()
for pkg in "${peers[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "test.sh: installing ${missing[*]}"
    sudo_=""
    [ "$(id -u)" -eq 0 ] || sudo_="sudo"
    $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null || { echo "test.sh: no cargo; install Rust (rustup) first" >&2; exit 1; }

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# A one-applet build for tests/toolbox.rs (one_applet_feature_build_...),
# built here rather than by cargo inside cargo test.
cargo build --quiet --no-default-features --features nbd --target-dir target/feature-nbd-only
# CI=true: a test whose peer or privilege (root, network namespaces) is
# missing fails instead of skipping (tests/common: require).
CI=true cargo test
# Packaging: the .deb installed into and purged from a temp root, lintian,
# systemd-analyze verify on the units, every man page through man -l.
scripts/test-dist.sh
# The size budget (scripts/size-budget): release, static and one-applet
# static builds, each at most 3 % over its committed size.
scripts/size-report.sh --check
