#!/usr/bin/env bash
# Stripped sizes of the release build, the static build and each one-applet
# static build, against the budget in scripts/size-budget.
#
#   scripts/size-report.sh            table + the 20 largest crates (cargo-bloat)
#   scripts/size-report.sh --check    table only; fails when a build is more than
#                                     3 % over its budget (scripts/test.sh runs this)
#   scripts/size-report.sh --update   table, then rewrites scripts/size-budget with
#                                     the measured sizes (commit it with the reason)
#   scripts/size-report.sh [--check|--update] BUILD...   only these builds
#
# Builds: release (dynamic, every applet), static (every applet) and
# static-APPLET (`--no-default-features --features APPLET`; timesyncd with
# and without the dns feature). Static builds share
# target/static with scripts/build-static.sh; a copy of every measured binary
# is left in target/size/BUILD/toolbox.
set -euo pipefail
cd "$(dirname "$0")/.."

budget_file=scripts/size-budget
tolerance_pct=3
target=x86_64-unknown-linux-gnu
# NAME=FEATURES: release and static carry the default features; each
# static-APPLET build is `--no-default-features --features FEATURES`.
# static comes last so target/static holds the every-applet build afterwards
# (scripts/build-static.sh and build-deb.sh use it).
build_defs=(
    release=
    static-nbd=nbd static-zcip=zcip
    static-timesyncd=timesyncd,dns static-timesyncd-nodns=timesyncd
    static-ipmgmtd=ipmgmtd static-svchost=svchost static-init=init
    static=
)
all_builds=("${build_defs[@]%%=*}")

mode=report
builds=()
for arg in "$@"; do
    case "$arg" in
        --check) mode=check ;;
        --update) mode=update ;;
        -h | --help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "size-report.sh: unknown option: $arg" >&2; exit 2 ;;
        *) builds+=("$arg") ;;
    esac
done
((${#builds[@]})) || builds=("${all_builds[@]}")

features_of() { # build name -> cargo feature arguments
    local def
    for def in "${build_defs[@]}"; do
        if [ "${def%%=*}" = "$1" ]; then
            [ -n "${def#*=}" ] && echo "--no-default-features --features ${def#*=}"
            return 0
        fi
    done
    echo "size-report.sh: unknown build: $1 (builds: ${all_builds[*]})" >&2
    return 1
}

build_one() { # name -> path of the stripped binary (copied to target/size/NAME)
    local name=$1 features
    features=$(features_of "$name")
    mkdir -p "target/size/$name"
    # shellcheck disable=SC2086 # $features is a word list on purpose
    if [ "$name" = release ]; then
        cargo build --release --quiet $features
        cp target/release/toolbox "target/size/$name/toolbox"
    else
        # --target keeps build scripts dynamic; only the toolbox itself is static.
        RUSTFLAGS="-C target-feature=+crt-static" \
            cargo build --release --quiet --target "$target" --target-dir target/static $features
        cp "target/static/$target/release/toolbox" "target/size/$name/toolbox"
    fi
    "target/size/$name/toolbox" --list >/dev/null
}

budget_of() {
    [ -f "$budget_file" ] || return 0
    awk -v n="$1" '$1 == n { print $2 }' "$budget_file"
}

mkdir -p target/size
declare -A size seconds
start_all=$SECONDS
for b in "${builds[@]}"; do
    t0=$SECONDS
    build_one "$b"
    seconds[$b]=$((SECONDS - t0))
    size[$b]=$(stat -c %s "target/size/$b/toolbox")
done

over=()
printf '%-24s %10s %9s %10s %8s %6s\n' build bytes KiB budget change secs
for b in "${builds[@]}"; do
    s=${size[$b]}
    want=$(budget_of "$b")
    if [ -n "$want" ]; then
        change=$(awk -v s="$s" -v w="$want" 'BEGIN { printf "%+.1f%%", (s - w) * 100 / w }')
        if [ "$s" -gt $((want + want * tolerance_pct / 100)) ]; then
            over+=("$b")
            change="$change !"
        fi
    else
        want=- change=-
    fi
    printf '%-24s %10d %9.1f %10s %8s %6d\n' "$b" "$s" "$(awk -v s="$s" 'BEGIN { print s / 1024 }')" \
        "$want" "$change" "${seconds[$b]}"
done
echo "built and measured in $((SECONDS - start_all)) s"

if [ "$mode" = report ]; then
    command -v cargo-bloat >/dev/null || cargo install --quiet --locked cargo-bloat
    echo
    echo "largest crates of the static build (cargo bloat --crates, unstripped):"
    # An unstripped copy of the static build in its own target dir, so the
    # stripped builds above stay cached.
    CARGO_PROFILE_RELEASE_STRIP=false RUSTFLAGS="-C target-feature=+crt-static" \
        cargo bloat --release --target "$target" --target-dir target/bloat --crates -n 20
fi

if [ "$mode" = update ]; then
    tmp=$(mktemp)
    {
        grep '^#' "$budget_file" 2>/dev/null || true
        for b in "${all_builds[@]}"; do
            if [ -n "${size[$b]:-}" ]; then
                printf '%-24s %s\n' "$b" "${size[$b]}"
            elif [ -n "$(budget_of "$b")" ]; then
                printf '%-24s %s\n' "$b" "$(budget_of "$b")"
            fi
        done
    } >"$tmp"
    mv "$tmp" "$budget_file"
    echo "size-report.sh: wrote $budget_file"
elif ((${#over[@]})); then
    echo "size-report.sh: over budget by more than $tolerance_pct %: ${over[*]}" >&2
    echo "  (shrink it, or raise the budget on purpose: scripts/size-report.sh --update, reason in the commit)" >&2
    [ "$mode" = check ] && exit 1
fi
exit 0
