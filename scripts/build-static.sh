#!/usr/bin/env bash
# Builds a statically linked toolbox (glibc, crt-static) beside the normal
# release build and prints both stripped sizes.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-gnu
cargo build --release --quiet
# --target keeps build scripts dynamic; only the toolbox itself is static.
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --quiet --target "$target" --target-dir target/static

dynamic=target/release/toolbox
static=target/static/$target/release/toolbox
if ! file "$static" | grep -Eq "static(-pie)? linked"; then
    echo "build-static.sh: $static is not statically linked:" >&2
    file "$static" >&2
    exit 1
fi
"$static" --list >/dev/null
printf 'release (dynamic): %s bytes  %s\n' "$(stat -c %s "$dynamic")" "$dynamic"
printf 'release (static):  %s bytes  %s\n' "$(stat -c %s "$static")" "$static"
