#!/usr/bin/env bash
# Builds a minimal initramfs around the static toolbox: /bin/toolbox, a
# symlink per applet, /init (the toolbox init applet), optional kernel
# modules with their modules.dep, and extra files. No root needed.
#
# usage: scripts/mkinitramfs.sh OUT.cpio.gz [OPTIONS]
#   --kernel-modules DIR  a modules tree, /lib/modules/KVER (KVER is DIR's
#                         name and must be the target kernel's release); it
#                         needs a modules.dep (depmod -b ROOT KVER makes one)
#   --module 'NAME [PARAMS]'
#                         put NAME and everything it depends on in the image
#                         and load it at boot (a line of /etc/modules);
#                         repeatable. Without any, all of DIR goes in.
#   --add SRC:DEST        copy the file or directory SRC to DEST (absolute)
#                         in the image; repeatable. /etc/rc.toolbox is the
#                         boot script: see applets/init/rc.rs for its format
#   --toolbox PATH        the binary to use (default: the static build, made
#                         by scripts/build-static.sh when missing)
#
# The image boots with the kernel's default rdinit=/init. Without an
# /etc/rc.toolbox, init execs /bin/sh if one was added, else just reaps.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0" >&2
    exit 2
}

die() {
    echo "mkinitramfs.sh: $*" >&2
    exit 1
}

repo=$(cd "$(dirname "$0")/.." && pwd)
[[ $# -ge 1 && $1 != -* ]] || usage
out=$1
shift

modules_dir=""
toolbox=""
module_lines=()
adds=()
while [[ $# -gt 0 ]]; do
    case $1 in
    --kernel-modules) modules_dir=${2:?--kernel-modules needs DIR}; shift 2 ;;
    --module) module_lines+=("${2:?--module needs NAME}"); shift 2 ;;
    --add) adds+=("${2:?--add needs SRC:DEST}"); shift 2 ;;
    --toolbox) toolbox=${2:?--toolbox needs PATH}; shift 2 ;;
    -h | --help) usage ;;
    *) die "unknown argument: $1" ;;
    esac
done
if [[ ${#module_lines[@]} -gt 0 && -z $modules_dir ]]; then
    die "--module needs --kernel-modules DIR"
fi
command -v cpio >/dev/null || die "cpio is not installed (apt-get install cpio)"

if [[ -z $toolbox ]]; then
    toolbox=$repo/target/static/x86_64-unknown-linux-gnu/release/toolbox
    [[ -x $toolbox ]] || "$repo/scripts/build-static.sh" >&2
fi
[[ -x $toolbox ]] || die "no toolbox binary at $toolbox"

stage=$(mktemp -d "${TMPDIR:-/tmp}/mkinitramfs.XXXXXX")
trap 'rm -rf "$stage"' EXIT

mkdir -p "$stage"/{bin,dev,etc,lib,proc,run,sys,tmp}
ln -s bin "$stage/sbin"
cp "$toolbox" "$stage/bin/toolbox"
chmod 0755 "$stage/bin/toolbox"
# --install links to the binary it runs as, an absolute path into the
# staging directory: relink each to plain `toolbox` so it works at boot.
"$stage/bin/toolbox" --install -s "$stage/bin"
staged_exe=$(readlink -f "$stage/bin/toolbox")
for link in "$stage"/bin/*; do
    if [[ -L $link && $(readlink "$link") == "$staged_exe" ]]; then
        ln -sfn toolbox "$link"
    fi
done
# The kernel runs /init; its basename picks the init applet.
ln -s bin/toolbox "$stage/init"
# The kernel's built-in initramfs already has /dev/console on most kernels;
# as root, make sure of it so early messages have somewhere to go.
if [[ $(id -u) == 0 ]]; then
    mknod -m 0600 "$stage/dev/console" c 5 1 2>/dev/null || true
fi

if [[ -n $modules_dir ]]; then
    [[ -f $modules_dir/modules.dep ]] ||
        die "$modules_dir/modules.dep is missing (depmod -b ROOT KVER makes it)"
    kver=$(basename "$(readlink -f "$modules_dir")")
    image_dir=$stage/lib/modules/$kver
    mkdir -p "$image_dir"
    if [[ ${#module_lines[@]} -eq 0 ]]; then
        cp -a "$modules_dir/." "$image_dir/"
    else
        names=()
        for line in "${module_lines[@]}"; do
            read -r name _ <<<"$line"
            names+=("${name//-/_}")
        done
        # modules.dep lists every module's whole dependency closure, so each
        # wanted module's line names all the files it needs.
        files=$(awk -v want="${names[*]}" '
            BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) wanted[w[i]] = 1 }
            {
                file = $1; sub(/:$/, "", file)
                name = file; sub(/.*\//, "", name); sub(/\.ko(\.(xz|zst|gz))?$/, "", name)
                gsub(/-/, "_", name)
                if (name in wanted) {
                    found[name] = 1; print file
                    for (i = 2; i <= NF; i++) print $i
                }
            }
            END { for (name in wanted) if (!(name in found)) print "MISSING " name }
        ' "$modules_dir/modules.dep" | sort -u)
        missing=$(grep '^MISSING ' <<<"$files" | cut -d' ' -f2 || true)
        for name in $missing; do
            # Built into the kernel: nothing to copy, init skips it.
            grep -Eq "/${name//_/[-_]}\.ko" "$modules_dir/modules.builtin" 2>/dev/null ||
                die "module $name is not in $modules_dir/modules.dep"
        done
        while read -r file; do
            [[ -z $file || $file == MISSING* ]] && continue
            mkdir -p "$image_dir/$(dirname "$file")"
            cp "$modules_dir/$file" "$image_dir/$file"
        done <<<"$files"
        # The image's modules.dep: only the lines of the files it carries.
        awk 'NR == FNR { have[$0] = 1; next } { f = $1; sub(/:$/, "", f) } f in have' \
            <(grep -v '^MISSING ' <<<"$files") "$modules_dir/modules.dep" >"$image_dir/modules.dep"
        for extra in modules.builtin modules.order; do
            if [[ -f $modules_dir/$extra ]]; then cp "$modules_dir/$extra" "$image_dir/"; fi
        done
        printf '%s\n' "${module_lines[@]}" >"$stage/etc/modules"
    fi
fi

for add in "${adds[@]}"; do
    src=${add%%:*}
    dest=${add#*:}
    [[ $add == *:* && -n $src && $dest == /* ]] || die "--add wants SRC:/DEST, not '$add'"
    [[ -e $src ]] || die "--add: $src does not exist"
    mkdir -p "$stage$(dirname "$dest")"
    cp -a "$src" "$stage$dest"
done

out_abs=$(readlink -f "$(dirname "$out")")/$(basename "$out")
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort |
    cpio -o -H newc -R 0:0 --reproducible --quiet) | gzip -9n >"$out_abs.tmp"
mv "$out_abs.tmp" "$out_abs"
printf 'initramfs: %s bytes  %s\n' "$(stat -c %s "$out_abs")" "$out"
