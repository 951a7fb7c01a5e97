#!/usr/bin/env bash
# Man pages into target/man (or DIR): toolbox(8) and one per clap-parsed
# applet generated from their clap definitions (scripts/mangen.rs, a cargo
# example, so clap_mangen stays out of the shipped binary), plus the pages
# written by hand in scripts/dist/man (ipadm(8) in illumos' layout, sc(8)
# in Windows', init(8)).
#   scripts/mangen.sh [DIR] [CARGO FEATURE ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-target/man}
shift || true
rm -rf "$dir"
cargo run --quiet --example mangen "$@" -- "$dir" >/dev/null
cp scripts/dist/man/*.8 "$dir/"
ls "$dir"
