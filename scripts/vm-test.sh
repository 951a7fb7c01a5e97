#!/usr/bin/env bash
# Boots a real Debian 6.1 kernel under qemu-system-x86_64 (TCG) with an
# initramfs made by scripts/mkinitramfs.sh and runs the embedded scenarios
# inside it: the kernel NBD client against `toolbox nbd` (local image and a
# server on this host), timesyncd setting the guest's clock, zcip on a veth
# pair, ipmgmtd/ipadm across a simulated reboot, and svchost. Prints one
# PASS/FAIL/SKIP line per scenario and exits 1 if any failed.
#
# Installs what it lacks (root: cpio, kmod, fdisk, busybox-static, and
# qemu-system-x86 from bookworm-backports through a private apt sources list,
# so that it matches qemu-utils; /etc/apt is left alone). The kernel package
# is fetched with `apt-get download` into $TOOLBOX_VM_CACHE (default
# /var/tmp/toolbox-vm) and reused. The console log of the last run is kept
# in target/vm-test/console.log. The host's clock is never touched.
#
# Environment: TOOLBOX_VM_CACHE, VM_TEST_GUEST_TIMEOUT (seconds the guest
# may run, default 180; a full run needs about 50).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

cache=${TOOLBOX_VM_CACHE:-/var/tmp/toolbox-vm}
guest_timeout=${VM_TEST_GUEST_TIMEOUT:-180}
keep_dir=$repo/target/vm-test
target=x86_64-unknown-linux-gnu
toolbox=$repo/target/static/$target/release/toolbox
started=$SECONDS

say() { echo "vm-test: $*" >&2; }
die() {
    say "$*"
    exit 1
}

# --- what the host needs -----------------------------------------------------

apt_install() {
    [[ $(id -u) == 0 ]] || die "missing $*; run as root or install: apt-get install $*"
    say "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 ||
        { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "$@" >&2; }
}

# qemu-system must come from the suite qemu-utils came from (backports);
# the machine lists only bookworm, so a private sources list adds
# bookworm-backports without touching /etc/apt.
install_qemu() {
    [[ $(id -u) == 0 ]] || die "qemu-system-x86_64 missing; run as root to install it"
    local dir=$cache/apt
    mkdir -p "$dir/sources.list.d" "$dir/lists/partial"
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        # Only the main archive's stanza (Suites: bookworm ...), not -security.
        sed -E '/^Suites:/ { / bookworm( |$)/ s/$/ bookworm-backports/ }' \
            /etc/apt/sources.list.d/debian.sources >"$dir/sources.list.d/debian.sources"
    elif [[ -f /etc/apt/sources.list ]]; then
        grep -E '^deb .* bookworm ' /etc/apt/sources.list |
            sed 's/ bookworm / bookworm-backports /' >"$dir/sources.list.d/backports.list"
    fi
    local opts=(-o "Dir::Etc::sourcelist=/dev/null"
        -o "Dir::Etc::sourceparts=$dir/sources.list.d"
        -o "Dir::State::lists=$dir/lists")
    # Follow qemu-utils: from backports here; a machine that got it from
    # bookworm itself gets the matching bookworm qemu-system.
    local utils suite=(-t bookworm-backports)
    utils=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
    if [[ -n $utils && $utils != *bpo* ]]; then suite=(); fi
    say "installing qemu-system-x86 ${suite[*]:+from bookworm-backports}"
    apt-get "${opts[@]}" update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get "${opts[@]}" install -y -qq \
        --no-install-recommends "${suite[@]}" \
        qemu-system-x86 qemu-system-common qemu-system-data seabios >&2
}

ensure_host_tools() {
    local missing=()
    command -v cpio >/dev/null || missing+=(cpio)
    command -v depmod >/dev/null || missing+=(kmod)
    command -v sfdisk >/dev/null || missing+=(fdisk)
    command -v xz >/dev/null || missing+=(xz-utils)
    command -v python3 >/dev/null || missing+=(python3)
    # The guest's scripting peer must be the static build.
    dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed' ||
        missing+=(busybox-static)
    if [[ ${#missing[@]} -gt 0 ]]; then apt_install "${missing[@]}"; fi
    command -v qemu-system-x86_64 >/dev/null || install_qemu
}

# --- the kernel ----------------------------------------------------------------

# Sets kver and kroot (the unpacked package, with modules.dep) and vmlinux.
prepare_kernel() {
    local pkg
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ { print $2; exit }') || true
    if [[ -z $pkg && $(id -u) == 0 ]]; then
        apt-get update -qq >&2 || true
        pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
            awk '/Depends: linux-image-[0-9]/ { print $2; exit }') || true
    fi
    if [[ -z $pkg ]]; then
        # Offline: any kernel unpacked by an earlier run will do.
        pkg=$(find "$cache/kernel" -mindepth 1 -maxdepth 1 -name 'linux-image-*' \
            ! -name '*.tmp' -printf '%f\n' 2>/dev/null | sort -V | tail -1)
        [[ -n $pkg ]] || die "cannot find a linux-image-6.1 package (apt-get update?)"
    fi
    kver=${pkg#linux-image-}
    local dir=$cache/kernel/$pkg
    if [[ ! -f $dir/vmlinux || ! -f $dir/root/lib/modules/$kver/modules.dep ]]; then
        say "fetching $pkg"
        local tmp=$dir.tmp
        rm -rf "$tmp"
        mkdir -p "$tmp"
        (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "$pkg" >&2)
        dpkg-deb -x "$tmp"/*.deb "$tmp/root"
        # The package ships no modules.dep.
        depmod -b "$tmp/root" "$kver"
        # qemu boots the uncompressed vmlinux through its PVH note, twice as
        # fast as bzImage; it is the xz stream inside vmlinuz.
        local image=$tmp/root/boot/vmlinuz-$kver offset
        offset=$( (LC_ALL=C grep -obUaP '\xfd\x37\x7a\x58\x5a\x00' "$image" || true) |
            head -1 | cut -d: -f1)
        [[ -n $offset ]] || die "no xz stream in $image"
        # xz stops at the stream's end, so tail may die of SIGPIPE: fine.
        { tail -c "+$((offset + 1))" "$image" || true; } |
            xz -dc --single-stream >"$tmp/vmlinux"
        rm -f "$tmp"/*.deb
        rm -rf "$dir"
        mv "$tmp" "$dir"
    fi
    kroot=$dir/root
    vmlinux=$dir/vmlinux
}

# --- host-side peers -------------------------------------------------------------

work=""
qemu_pid=""
nbd_pid=""
helper_pid=""
cleanup() {
    local pid
    for pid in "$qemu_pid" "$nbd_pid" "$helper_pid"; do
        if [[ -n $pid ]]; then kill "$pid" 2>/dev/null || true; fi
    done
    wait 2>/dev/null || true
    if [[ -n $work ]]; then rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A 16 MiB MBR-partitioned image whose every sector names itself, so a
# sector read from the wrong place changes the hash (and it compresses).
make_disk() {
    python3 - "$1" <<'EOF'
import sys
with open(sys.argv[1], "wb") as f:
    for sector in range(16 * 2048):
        f.write((b"sector %08d " % sector) * 32)
EOF
    printf 'label: dos\nstart=2048, type=83\n' | sfdisk -q "$1"
}

# An NTP server answering on 127.0.0.1 with this host's time plus an offset
# (one port per offset), and a TCP port that tells the host's time, so the
# guest can measure its clock against ours. Ports go to $1.
start_time_helper() {
    python3 - "$1" <<'EOF' &
import socket, struct, sys, threading, time

NTP_EPOCH = 2208988800

def ntp_stamp(t):
    secs = int(t)
    return struct.pack("!II", secs + NTP_EPOCH, int((t - secs) * 2**32) & 0xFFFFFFFF)

def serve_ntp(sock, offset):
    while True:
        data, peer = sock.recvfrom(512)
        received = time.time() + offset
        if len(data) < 48 or data[0] & 7 != 3:
            continue
        version = (data[0] >> 3) & 7
        header = struct.pack("!BBbbII4s", (version << 3) | 4, 2, data[2], -20,
                             0x00000100, 0x00000100, b"TEST")
        reply = header + ntp_stamp(received - 1) + data[40:48] + ntp_stamp(received)
        sock.sendto(reply + ntp_stamp(time.time() + offset), peer)

def serve_time(sock):
    while True:
        conn, _ = sock.accept()
        with conn:
            conn.sendall(b"%.6f\n" % time.time())

ports = {}
for name, offset in (("step", 3600.0), ("slew", 3600.2)):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    ports[name] = s.getsockname()[1]
    threading.Thread(target=serve_ntp, args=(s, offset), daemon=True).start()
t = socket.socket()
t.bind(("127.0.0.1", 0))
t.listen(8)
ports["time"] = t.getsockname()[1]
threading.Thread(target=serve_time, args=(t,), daemon=True).start()
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(" ".join("%s=%d" % kv for kv in ports.items()) + "\n")
import os
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(3600)
EOF
    helper_pid=$!
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Whether 127.0.0.1:$1 is listening, without connecting (a connection would
# be the non-persistent server's one client).
listening() {
    local hex
    hex=$(printf '%04X' "$1")
    awk -v want="0100007F:$hex" '$2 == want && $4 == "0A" { found = 1 } END { exit !found }' \
        /proc/net/tcp
}

# --- the guest's side --------------------------------------------------------------

# The scenario script the guest runs under busybox sh. Results are lines
# "@@RESULT N PASS|FAIL text"; "@@TIMING name seconds" for measurements.
write_guest_script() {
    cat <<'EOF'
B=/bin/busybox
$B mkdir -p /usr/bin
$B --install -s /usr/bin
$B ln -sf busybox /bin/sh
export PATH=/bin:/usr/bin
MARKER="written through the kernel nbd client by vm-test"

result() { echo "@@RESULT $1 $2 $3"; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }
# Waits up to $1 seconds for the command to succeed.
wait_until() {
    limit=$1; shift
    i=0
    while ! "$@" 2>/dev/null; do
        i=$((i + 1))
        [ "$i" -ge $((limit * 5)) ] && return 1
        sleep 0.2
    done
}
size_is() { [ "$(blockdev --getsize64 "$1" 2>/dev/null)" = "$2" ]; }
gone() { ! kill -0 "$1" 2>/dev/null; }
has_applet() { toolbox --list | grep -qx "$1"; }

# Checks a connected NBD device: size, partition, content, a write.
# Prints what failed; $3 is the image file behind it when it is local.
check_device() {
    dev=$1 expected_sha=$2 image=$3
    wait_until 20 size_is "$dev" 16777216 || { echo "size $(blockdev --getsize64 "$dev") != 16777216"; return 1; }
    wait_until 10 test -b "${dev}p1" || { echo "${dev}p1 never appeared"; return 1; }
    size_is "${dev}p1" 15728640 || { echo "${dev}p1 size $(blockdev --getsize64 "${dev}p1") != 15728640"; return 1; }
    sha=$(timeout 60 sha256sum <"$dev" | cut -d' ' -f1)
    [ "$sha" = "$expected_sha" ] || { echo "content hash $sha != $expected_sha"; return 1; }
    printf '%s' "$MARKER" | timeout 30 dd of="$dev" bs=512 seek=20000 conv=sync,fsync 2>/dev/null ||
        { echo "write failed"; return 1; }
    if [ -n "$image" ]; then
        got=$(dd if="$image" bs=512 skip=20000 count=1 2>/dev/null | head -c ${#MARKER})
        [ "$got" = "$MARKER" ] || { echo "the write did not land in $image"; return 1; }
    fi
}

# Scenario 1, one path: $1 label, $2 device, then the command prefix.
local_nbd() {
    label=$1 dev=$2; shift 2
    image=/tmp/$label.img
    cp /disk.img "$image"
    "$@" toolbox nbd -v -c "$dev" "$image" >/tmp/nbd-$label.log 2>&1 &
    pid=$!
    why=$(check_device "$dev" "$DISK_SHA" "$image") || { echo "$label: $why"; return 1; }
    grep -q "by $label" /tmp/nbd-$label.log || { echo "$label: not attached by $label: $(cat /tmp/nbd-$label.log)"; return 1; }
    out=$("$@" timeout 20 toolbox nbd -d "$dev" 2>&1) || { echo "$label: nbd -d failed: $out"; return 1; }
    wait_until 15 gone "$pid" || { echo "$label: server still running after -d"; kill "$pid"; return 1; }
    wait "$pid" || { echo "$label: server exited with status $?: $(tail -3 /tmp/nbd-$label.log)"; return 1; }
}

scenario1() {
    why=$(local_nbd netlink /dev/nbd0) || { result 1 FAIL "$why"; return; }
    # The nbd genetlink family is not network-namespace aware: in a new
    # namespace only the ioctls can reach the driver.
    why=$(local_nbd ioctl /dev/nbd1 unshare -n) || { result 1 FAIL "$why"; return; }
    result 1 PASS "nbd -c on an initramfs image, netlink and ioctl paths: size, p1, content, write lands, -d, server exits 0"
}

scenario2() {
    log=/tmp/nbd-remote.log
    timeout 60 toolbox nbd -v -c /dev/nbd2 "nbd://10.0.2.2:$NBD_PORT/disk" >$log 2>&1 ||
        { result 2 FAIL "nbd -c nbd://10.0.2.2:$NBD_PORT/disk failed: $(tail -3 $log)"; return; }
    why=$(check_device /dev/nbd2 "$DISK_SHA" "") || { result 2 FAIL "$why"; return; }
    out=$(timeout 20 toolbox nbd -d /dev/nbd2 2>&1) || { result 2 FAIL "nbd -d failed: $out"; return; }
    wait_until 10 size_is /dev/nbd2 0 || { result 2 FAIL "/dev/nbd2 still has a size after -d"; return; }
    # The host adds its checks (the write landed, its server exited 0).
    result 2 PASS "kernel client against toolbox nbd on the host (10.0.2.2:$NBD_PORT): size, p1, content, write, -d"
}

# busybox adjtimex prints the kernel's timex; with STA_NANO (status bit
# 8192) its "us" values are nanoseconds. busybox date has no %N.
realtime() {
    adjtimex | awk '$1 == "status:" { nano = int($2 / 8192) % 2 }
        $1 == "time.tv_sec:" { s = $2 } $1 == "time.tv_usec:" { u = $2 }
        END { printf "%d.%09d", s, nano ? u : u * 1000 }'
}
# The offset the kernel still has to slew out, in seconds.
pending_slew() {
    adjtimex | awk '$1 == "status:" { nano = int($2 / 8192) % 2 } $2 == "offset:" { o = $3 }
        END { printf "%.4f", o / (nano ? 1e9 : 1e6) }'
}
slew_done() { within "$(pending_slew)" 0 0.005; }

# This guest's clock minus the host's, and the round trip, in seconds
# (best of three round trips).
clock_vs_host() {
    best=""
    for _ in 1 2 3; do
        t0=$(realtime)
        host=$(timeout 10 nc 10.0.2.2 "$TIME_PORT" </dev/null)
        t1=$(realtime)
        line=$(awk -v a="$t0" -v b="$t1" -v h="$host" 'BEGIN { printf "%.4f %.4f", (a + b) / 2 - h, b - a }')
        rtt=${line#* }
        if [ -z "$best" ] || awk -v r="$rtt" -v b="${best#* }" 'BEGIN { exit !(r < b) }'; then best=$line; fi
    done
    echo "$best"
}

within() { awk -v v="$1" -v want="$2" -v tol="$3" 'BEGIN { d = v - want; if (d < 0) d = -d; exit !(d <= tol) }'; }

scenario3() {
    before=$(clock_vs_host)
    out=$(timeout 60 toolbox timesyncd -q -s "10.0.2.2:$NTP_STEP_PORT" 2>&1) ||
        { result 3 FAIL "timesyncd -q (1 h ahead) failed: $out"; return; }
    after=$(clock_vs_host)
    within "${after% *}" 3600 0.1 ||
        { result 3 FAIL "after the step the guest is ${after% *} s from the host (want 3600 +- 0.1; before ${before% *}; rtt ${after#* })"; return; }
    out=$(timeout 60 toolbox timesyncd -q -s "10.0.2.2:$NTP_SLEW_PORT" 2>&1) ||
        { result 3 FAIL "timesyncd -q (0.2 s more) failed: $out"; return; }
    # Slewed, not stepped: the kernel has the 0.2 s to slew out (a step
    # would leave nothing pending), and once it has, the clock is 0.2 s on.
    pending=$(pending_slew)
    within "$pending" 0.2 0.1 ||
        { result 3 FAIL "no slew in progress after timesyncd -q: kernel offset $pending s"; return; }
    wait_until 60 slew_done || { result 3 FAIL "the kernel never finished the slew: $(pending_slew) s left"; return; }
    slewed=$(clock_vs_host)
    within "${slewed% *}" 3600.2 0.1 ||
        { result 3 FAIL "after the slew the guest is ${slewed% *} s from the host (want 3600.2 +- 0.1)"; return; }
    result 3 PASS "timesyncd -q stepped the clock 1 h (${before% *} -> ${after% *} s from the host); a 0.2 s offset was slewed (kernel offset $pending s, then ${slewed% *} s)"
}

# A veth pair NAME + its peer, both up. busybox ip ignores "peer name",
# so the kernel names the peer (vethN); `ip link show NAME` says which.
make_veth() {
    ip link add "$1" type veth || return 1
    peer=$(ip link show "$1" | awk -F'[@:]' 'NR == 1 { print $3 }')
    [ -n "$peer" ] && ip link set "$peer" up && ip link set "$1" up
}

scenario4() {
    make_veth zc0 || { result 4 FAIL "cannot make a veth pair: $(ip link show 2>&1)"; return; }
    [ -x /etc/zcip.script ] || { result 4 FAIL "scripts/zcip.script is missing"; return; }
    # -f: without it zcip daemonizes at once (as busybox's does), and -q
    # would then quit in the background.
    out=$(timeout 60 toolbox zcip -f -q zc0 /etc/zcip.script 2>&1) ||
        { result 4 FAIL "zcip -f -q exited with status $?: $out"; return; }
    addr=$(ip -4 addr show dev zc0 | awk '/inet 169\.254\./ { print $2 }')
    [ -n "$addr" ] || { result 4 FAIL "no 169.254 address on zc0: $(ip -4 addr show dev zc0)"; return; }
    result 4 PASS "zcip -f -q claimed $addr on a veth pair"
}

scenario5() {
    make_veth ip0 || { result 5 FAIL "cannot make a veth pair: $(ip link show 2>&1)"; return; }
    root=/tmp/ipadm-root
    mkdir -p "$root"
    export IPADM_ROOT=$root
    out=$(timeout 30 ipmgmtd --root "$root" 2>&1) || { result 5 FAIL "ipmgmtd did not start: $out"; return; }
    timeout 20 ipadm create-if ip0 >/tmp/ipadm.log 2>&1 || true
    out=$(timeout 20 ipadm create-addr -T static -a 192.0.2.10/24 ip0/v4 2>&1) ||
        { result 5 FAIL "ipadm create-addr failed: $out"; return; }
    ip -4 addr show dev ip0 | grep -q 'inet 192.0.2.10/24' || { result 5 FAIL "create-addr set no address"; return; }
    # A reboot: the daemon goes, /run is emptied, the kernel forgets.
    pid=$(pidof ipmgmtd)
    kill $pid
    wait_until 15 gone $pid || { result 5 FAIL "ipmgmtd did not stop on SIGTERM"; return; }
    ip addr flush dev ip0
    rm -rf "${root:?}/run"
    out=$(timeout 30 ipmgmtd --root "$root" 2>&1) || { result 5 FAIL "ipmgmtd did not restart: $out"; return; }
    out=$(timeout 30 ipadm init 2>&1) || { result 5 FAIL "ipadm init failed: $out"; return; }
    ip -4 addr show dev ip0 | grep -q 'inet 192.0.2.10/24' ||
        { result 5 FAIL "ipadm init did not restore 192.0.2.10/24: $(ip -4 addr show dev ip0)"; return; }
    shown=$(timeout 20 ipadm show-addr ip0/v4 2>&1)
    echo "$shown" | grep -q 'ip0/v4' || { result 5 FAIL "show-addr lost the name: $shown"; return; }
    kill "$(pidof ipmgmtd)" 2>/dev/null
    result 5 PASS "ipadm create-addr ip0/v4 came back after a simulated reboot (ipmgmtd restart, /run cleared, ipadm init)"
}

state_of() { sc query "$1" 2>/dev/null | awk '$1 == "STATE" { print $NF }'; }
all_running() {
    for svc in $SVC_NAMES; do [ "$(state_of "$svc")" = RUNNING ] || return 1; done
}

scenario6() {
    out=$(timeout 30 svchost -k vm -c /etc/toolbox/svchost 2>&1) ||
        { result 6 FAIL "svchost did not start: $out"; return; }
    if ! wait_until 30 all_running; then
        result 6 FAIL "not all RUNNING: $(sc query 2>&1 | tr '\n' ' ')"
    else
        echo "@@TIMING daemons-ready $(uptime_s)"
        listing=$(timeout 20 toolbox nbd -L -k /run/svc-disk.sock 2>&1)
        if echo "$listing" | grep -q 'size:  16777216'; then
            result 6 PASS "svchost group 'vm' ($SVC_NAMES): sc query shows all RUNNING, the nbd service answers -L"
        else
            result 6 FAIL "nbd under svchost does not answer: $listing"
        fi
    fi
    kill "$(pidof svchost)" 2>/dev/null
}

echo "@@TIMING rc-start $(uptime_s)"
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 ||
    echo "network setup failed: $(ip addr)"
for n in 6 1 2 3 4 5; do
    eval "run=\$RUN_$n"
    if [ "$run" = 1 ]; then
        echo "@@START $n $(uptime_s)"
        scenario$n
    fi
done
echo "@@TIMING done $(uptime_s)"
echo "@@DMESG"
dmesg | tail -60
echo "@@END"
EOF
}

# --- running it --------------------------------------------------------------------

has_applet() { "$toolbox" --list | grep -qx "$1"; }

# "initramfs: N bytes  PATH" (mkinitramfs.sh's last line) -> N
size_of() {
    local words
    read -ra words <<<"$1"
    echo "${words[1]}"
}

main() {
    ensure_host_tools
    prepare_kernel
    say "building the static toolbox"
    local sizes
    sizes=$("$repo/scripts/build-static.sh")
    echo "$sizes" >&2

    work=$(mktemp -d "${TMPDIR:-/tmp}/vm-test.XXXXXX")
    mkdir -p "$work/files" "$keep_dir"

    declare -A run skip_reason
    local n
    for n in 1 2 6; do run[$n]=1; done
    local applet
    for n in 3 4 5; do
        case $n in 3) applet=timesyncd ;; 4) applet=zcip ;; 5) applet=ipmgmtd ;; esac
        if has_applet "$applet"; then
            run[$n]=1
        else
            run[$n]=0
            skip_reason[$n]="applet $applet not in this toolbox"
        fi
    done
    if [[ ${run[5]} == 1 ]] && ! has_applet ipadm; then
        run[5]=0
        skip_reason[5]="applet ipadm not in this toolbox"
    fi

    # Host-side peers.
    make_disk "$work/files/disk.img"
    cp "$work/files/disk.img" "$work/host.img"
    local disk_sha nbd_port
    disk_sha=$(sha256sum <"$work/files/disk.img" | cut -d' ' -f1)
    nbd_port=$(free_port)
    "$toolbox" nbd -b 127.0.0.1 -p "$nbd_port" -x disk "$work/host.img" \
        >"$work/host-nbd.log" 2>&1 &
    nbd_pid=$!
    start_time_helper "$work/ports"
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -f $work/ports ]] && listening "$nbd_port" && break
        sleep 0.1
    done
    [[ -f $work/ports ]] || die "the time helper did not start"
    listening "$nbd_port" || die "the host nbd server did not start: $(cat "$work/host-nbd.log")"
    local step_port slew_port time_port word words
    read -ra words <"$work/ports"
    for word in "${words[@]}"; do
        case $word in
        step=*) step_port=${word#*=} ;;
        slew=*) slew_port=${word#*=} ;;
        time=*) time_port=${word#*=} ;;
        esac
    done

    # The guest's files.
    {
        echo "DISK_SHA=$disk_sha NBD_PORT=$nbd_port TIME_PORT=$time_port"
        echo "NTP_STEP_PORT=$step_port NTP_SLEW_PORT=$slew_port"
        for n in 1 2 3 4 5 6; do echo "RUN_$n=${run[$n]}"; done
        if [[ ${run[3]} == 1 ]]; then echo "SVC_NAMES='disk clock'"; else echo "SVC_NAMES=disk"; fi
        write_guest_script
    } >"$work/files/scenarios.sh"
    printf '%s\n' "/bin/busybox sh /scenarios.sh" poweroff >"$work/files/rc.toolbox"
    {
        printf '[group]\nservices = disk%s\n\n' "$([[ ${run[3]} == 1 ]] && echo ' clock')"
        printf '[service disk]\napplet = nbd\nargs = -t -r -k /run/svc-disk.sock /disk.img\n'
        if [[ ${run[3]} == 1 ]]; then
            printf '\n[service clock]\napplet = timesyncd\nargs = --no-adjust -s 10.0.2.2:%s\n' "$step_port"
        fi
    } >"$work/files/vm.conf"
    local adds=(--add /bin/busybox:/bin/busybox
        --add "$work/files/scenarios.sh:/scenarios.sh"
        --add "$work/files/rc.toolbox:/etc/rc.toolbox"
        --add "$work/files/disk.img:/disk.img"
        --add "$work/files/vm.conf:/etc/toolbox/svchost/vm.conf")
    if [[ -f scripts/zcip.script ]]; then
        cp scripts/zcip.script "$work/files/zcip.script"
        chmod +x "$work/files/zcip.script"
        adds+=(--add "$work/files/zcip.script:/etc/zcip.script")
    fi

    local modules=(--kernel-modules "$kroot/lib/modules/$kver")
    for n in nbd virtio_pci virtio_net veth; do modules+=(--module "$n"); done
    local plain_size test_size
    plain_size=$("$repo/scripts/mkinitramfs.sh" "$work/plain.cpio.gz" --toolbox "$toolbox")
    "$repo/scripts/mkinitramfs.sh" "$work/modules.cpio.gz" --toolbox "$toolbox" \
        "${modules[@]}" >/dev/null
    test_size=$("$repo/scripts/mkinitramfs.sh" "$work/test.cpio.gz" --toolbox "$toolbox" \
        "${modules[@]}" "${adds[@]}")

    say "booting $kver (guest limit ${guest_timeout}s)"
    local boot_start=$SECONDS
    timeout -k 5 "$guest_timeout" qemu-system-x86_64 \
        -accel tcg -cpu max -m 512 -smp 1 -nographic -no-reboot \
        -kernel "$vmlinux" -initrd "$work/test.cpio.gz" \
        -append "console=ttyS0 quiet panic=-1" \
        -nic none -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile= \
        </dev/null >"$work/console.log" 2>&1 &
    qemu_pid=$!
    local qemu_status=0
    wait "$qemu_pid" || qemu_status=$?
    qemu_pid=""
    local boot_secs=$((SECONDS - boot_start))
    tr -d '\r' <"$work/console.log" >"$keep_dir/console.log"
    local console=$keep_dir/console.log

    # Host-side checks for scenario 2: the server saw the disconnect and
    # exited cleanly, and the guest's write is in the host's image.
    local host_verdict="" nbd_status=0
    for ((i = 0; i < 50; i++)); do
        kill -0 "$nbd_pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$nbd_pid" 2>/dev/null; then
        host_verdict="the host nbd server is still running after the guest disconnected"
    else
        wait "$nbd_pid" || nbd_status=$?
        nbd_pid=""
        if [[ $nbd_status != 0 ]]; then
            host_verdict="the host nbd server exited with status $nbd_status: $(tail -3 "$work/host-nbd.log")"
        elif ! dd if="$work/host.img" bs=512 skip=20000 count=1 2>/dev/null |
            grep -q "written through the kernel nbd client"; then
            host_verdict="the guest's write is not in the host's image"
        fi
    fi

    local failed=0 line verdict text
    for n in 1 2 3 4 5 6; do
        if [[ ${run[$n]} == 0 ]]; then
            echo "SKIP scenario $n: ${skip_reason[$n]}"
            continue
        fi
        line=$(grep -m1 "^@@RESULT $n " "$console" || true)
        if [[ -z $line ]]; then
            verdict=FAIL
            if [[ $qemu_status == 124 || $qemu_status == 137 ]]; then
                text="no result: the guest was killed after ${guest_timeout}s"
            else
                text="no result from the guest (see $console)"
            fi
        else
            line=${line#"@@RESULT $n "}
            verdict=${line%% *}
            text=${line#* }
        fi
        if [[ $n == 2 && $verdict == PASS && -n $host_verdict ]]; then
            verdict=FAIL
            text=$host_verdict
        elif [[ $n == 2 && $verdict == PASS ]]; then
            text="$text; host: the write landed, server exited 0"
        fi
        echo "$verdict scenario $n: $text"
        [[ $verdict == PASS ]] || failed=1
    done

    local ready done_at rc_start
    ready=$(awk '$1 == "@@TIMING" && $2 == "daemons-ready" { print $3 }' "$console")
    rc_start=$(awk '$1 == "@@TIMING" && $2 == "rc-start" { print $3 }' "$console")
    done_at=$(awk '$1 == "@@TIMING" && $2 == "done" { print $3 }' "$console")
    echo "sizes: toolbox (static) $(stat -c %s "$toolbox") bytes;" \
        "initramfs.cpio.gz: toolbox only $(size_of "$plain_size") bytes," \
        "+ modules nbd virtio_net veth $(stat -c %s "$work/modules.cpio.gz") bytes," \
        "test image (+ busybox, 16 MiB disk) $(size_of "$test_size") bytes"
    echo "guest (uptime): rc started at ${rc_start:-?} s, scenario daemons ready at ${ready:-?} s," \
        "all scenarios done at ${done_at:-?} s; qemu ran ${boot_secs} s; vm-test took $((SECONDS - started)) s"
    if [[ $failed == 1 ]]; then
        say "console log: $console"
        return 1
    fi
}

main "$@"
