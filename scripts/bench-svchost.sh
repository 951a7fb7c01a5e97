#!/usr/bin/env bash
# Memory and start-up time: timesyncd (--no-adjust: never touches the
# clock), zcip, nbd and ipmgmtd as four processes, then the same four as
# one svchost group. Everything runs inside a network namespace made here
# (zcip gets a veth pair, timesyncd a chronyd on that namespace's
# loopback), with state in a temp dir. Prints RSS and PSS sums and ratios.
#
#   sudo scripts/bench-svchost.sh        env: TOOLBOX, SETTLE (s, default 5)
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" -eq 0 ] || { echo "bench-svchost.sh: needs root (network namespace)" >&2; exit 1; }
toolbox=${TOOLBOX:-target/release/toolbox}
[ -x "$toolbox" ] || cargo build --release --quiet
toolbox=$(realpath "$toolbox")
settle=${SETTLE:-5}
for applet in timesyncd zcip nbd ipmgmtd svchost; do
    "$toolbox" --list | grep -qx "$applet" || { echo "bench-svchost.sh: $applet is not in this toolbox" >&2; exit 1; }
done
command -v chronyd >/dev/null || { echo "bench-svchost.sh: chronyd is missing (scripts/test.sh installs it)" >&2; exit 1; }

ns=tbbench$$
dir=$(mktemp -d /tmp/bench-svchost.XXXXXX)
cleanup() {
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns delete "$ns" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
in_ns() { ip netns exec "$ns" "$@"; }

ip netns add "$ns"
in_ns ip link set lo up
in_ns ip link add zc0 type veth peer name zc1
in_ns ip link set zc0 up
in_ns ip link set zc1 up

# An NTP server on the namespace's loopback that never touches a clock.
port=12300
cat >"$dir/chrony.conf" <<CONF
port $port
bindaddress 127.0.0.1
allow 127.0.0.1
local stratum 8
cmdport 0
pidfile $dir/chronyd.pid
driftfile $dir/chrony.drift
CONF
in_ns chronyd -x -f "$dir/chrony.conf"

truncate -s 64M "$dir/disk.img"
mkdir -p "$dir/ipadm" "$dir/run"
printf '#!/bin/sh\nexit 0\n' >"$dir/zcip.script"
chmod +x "$dir/zcip.script"

timesyncd_args=(--no-adjust -s "127.0.0.1:$port" --state-file "$dir/timesync.state" --clock-file "$dir/clock")
zcip_args=(--state-dir "$dir" zc0 "$dir/zcip.script")
nbd_args=(-t -k "$dir/nbd.sock" "$dir/disk.img")
ipmgmtd_args=(--root "$dir/ipadm")

pss_kib() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
now() { date +%s.%N; }

echo "four processes ..." >&2
start=$(now)
in_ns "$toolbox" timesyncd "${timesyncd_args[@]}" --pid-file "$dir/t.pid" &
in_ns "$toolbox" zcip "${zcip_args[@]}" --pid-file "$dir/z.pid" &
in_ns "$toolbox" nbd --fork --pid-file "$dir/n.pid" "${nbd_args[@]}" &
in_ns "$toolbox" ipmgmtd "${ipmgmtd_args[@]}" --pid-file "$dir/i.pid" &
wait
separate_start=$(python3 -c "print(f'{$(now) - $start:.3f}')")
sleep "$settle"
rss_sum=0; pss_sum=0
for f in t z n i; do
    pid=$(cat "$dir/$f.pid")
    rss_sum=$((rss_sum + $(rss_kib "$pid")))
    pss_sum=$((pss_sum + $(pss_kib "$pid")))
    kill "$pid"
done
sleep 1

cat >"$dir/bench.conf" <<CONF
[group]
services = timesyncd zcip nbd ipmgmtd

[service timesyncd]
applet = timesyncd
args = ${timesyncd_args[*]}

[service zcip]
applet = zcip
args = -f ${zcip_args[*]}

[service nbd]
applet = nbd
args = ${nbd_args[*]}

[service ipmgmtd]
applet = ipmgmtd
args = -f ${ipmgmtd_args[*]}
CONF

echo "one svchost group ..." >&2
start=$(now)
in_ns env TOOLBOX_RUNDIR="$dir/run" "$toolbox" svchost -k bench -c "$dir" --pid-file "$dir/s.pid"
group_start=$(python3 -c "print(f'{$(now) - $start:.3f}')")
sleep "$settle"
pid=$(cat "$dir/s.pid")
running=$(in_ns env TOOLBOX_RUNDIR="$dir/run" "$toolbox" sc query | grep -c "4  RUNNING" || true)
svc_rss=$(rss_kib "$pid")
svc_pss=$(pss_kib "$pid")
kill "$pid"

printf '\n%-28s %12s %12s\n' "" "RSS KiB" "PSS KiB"
printf '%-28s %12s %12s\n' "four processes (sum)" "$rss_sum" "$pss_sum"
printf '%-28s %12s %12s\n' "svchost group ($running/4 running)" "$svc_rss" "$svc_pss"
printf '%-28s %11.0f%% %11.0f%%\n' "svchost / four" \
    "$(python3 -c "print(100 * $svc_rss / $rss_sum)")" "$(python3 -c "print(100 * $svc_pss / $pss_sum)")"
printf '\nstart until ready: four processes %ss, svchost group %ss\n' "$separate_start" "$group_start"
echo "(target: svchost <= 40% of the four; group start no slower than the four)"
