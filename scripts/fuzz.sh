#!/usr/bin/env bash
# Runs every fuzz target (tests/fuzz/fuzz_targets) for SECONDS each (default 60),
# starting from the committed seed corpora in tests/fuzz/corpus. Fails on any
# crash, leak, timeout or out-of-memory; the input that did it is left in
# tests/fuzz/artifacts/TARGET/.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#   env FUZZ_SEED=N: a fixed libFuzzer seed, so a CI run is repeatable
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz.sh: no nightly toolchain (rustup toolchain install nightly); cannot fuzz" >&2
    exit 1
fi
if ! command -v cargo-fuzz >/dev/null; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install --quiet --locked cargo-fuzz
fi

fuzz=(cargo +nightly fuzz)
dir=(--fuzz-dir tests/fuzz)
targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <("${fuzz[@]}" list "${dir[@]}")
fi
if ((${#targets[@]} == 0)); then
    echo "fuzz.sh: no fuzz targets found in tests/fuzz" >&2
    exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! "${fuzz[@]}" build "${dir[@]}" >"$work/build.log" 2>&1; then
    tail -40 "$work/build.log" >&2
    echo "fuzz.sh: the fuzz targets do not build" >&2
    exit 1
fi
failed=()
for target in "${targets[@]}"; do
    mkdir -p "$work/$target"
    echo "fuzz.sh: $target for ${seconds}s" >&2
    # New inputs go to the scratch corpus; the committed seeds stay as they
    # are. A target without committed seeds starts from nothing (libFuzzer
    # exits at once on a corpus directory that does not exist).
    seeds=()
    if [[ -d "tests/fuzz/corpus/$target" ]]; then
        seeds=("tests/fuzz/corpus/$target")
    else
        echo "fuzz.sh: $target has no seed corpus in tests/fuzz/corpus/$target" >&2
    fi
    if ! ("${fuzz[@]}" run "${dir[@]}" "$target" "$work/$target" "${seeds[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        ${FUZZ_SEED:+-seed="$FUZZ_SEED"} \
        >"$work/$target.log" 2>&1); then
        tail -40 "$work/$target.log" >&2
        failed+=("$target")
    else
        grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)' "$work/$target.log" |
            sed "s/^/  $target: /" >&2 || true
    fi
done
if ((${#failed[@]})); then
    echo "fuzz.sh: findings in: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets, ${seconds}s each, no findings" >&2
