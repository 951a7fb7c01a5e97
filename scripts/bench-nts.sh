#!/usr/bin/env bash
# NTS accuracy of `toolbox timesyncd` beside chronyd's own NTS client, in
# one run, on loopback. chronyd serves NTS-KE and NTP (local stratum 8, its
# clock is this machine's, so the true offset is 0) with a CA and
# certificate made here by openssl. Each round runs `toolbox timesyncd -Q
# --nts` and `chronyd -Q 'server 127.0.0.1 nts ...'` against it and records
# the offset each measured and how long the run (key establishment
# included) took. Nothing changes the clock: -Q and chronyd -x.
#
# Environment: ROUNDS (default 10), TOOLBOX (default target/debug/toolbox,
# built if missing; a release build measures the same offsets).
# Needs chronyd (Debian package chrony), openssl and python3 (statistics).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-10}
for tool in chronyd openssl python3; do
    command -v "$tool" >/dev/null || { echo "bench-nts: $tool is not installed" >&2; exit 1; }
done
if [ -z "${TOOLBOX:-}" ]; then
    cargo build --quiet
    TOOLBOX=target/debug/toolbox
fi

work=$(mktemp -d /tmp/bench-nts.XXXXXX)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
(
    cd "$work"
    openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.crt -days 2 -subj "/CN=bench CA" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign
    openssl req "${ec[@]}" -keyout server.key -out server.csr -subj /CN=localhost
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 -extfile ext
) >/dev/null 2>&1

ke_port=$(free_port)
ntp_port=$(free_port)
user=()
if [ "$(id -u)" = 0 ]; then user=(-u root); fi
cat >"$work/server.conf" <<CONF
port $ntp_port
bindaddress 127.0.0.1
cmdport 0
ntsport $ke_port
ntsserverkey $work/server.key
ntsservercert $work/server.crt
ntsdumpdir $work
pidfile $work/server.pid
driftfile $work/server.drift
local stratum 8
allow 127.0.0.1
CONF
chronyd -x -d "${user[@]}" -f "$work/server.conf" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 50); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$ke_port") 2>/dev/null; then break; fi
    sleep 0.1
done

mkdir -p "$work/client"
cat >"$work/client.conf" <<CONF
server 127.0.0.1 port $ntp_port nts ntsport $ke_port iburst
ntstrustedcerts $work/ca.crt
cmdport 0
pidfile $work/client.pid
ntsdumpdir $work/client
CONF
printf '[Time]\nFallbackNTP=\n' >"$work/empty.conf"

now() { date +%s.%N; }
: >"$work/results"
for round in $(seq "$ROUNDS"); do
    t0=$(now)
    out=$("$TOOLBOX" timesyncd -Q -c "$work/empty.conf" -s "localhost:$ke_port" --nts \
        --nts-ca "$work/ca.crt" 2>"$work/toolbox.err") || { cat "$work/toolbox.err" >&2; exit 1; }
    t1=$(now)
    # "server ADDR stratum N offset X delay Y"
    echo "toolbox $(awk '{print $6}' <<<"$out") $t0 $t1" >>"$work/results"
    rm -rf "${work:?}/client/"*
    t0=$(now)
    line=$(timeout 60 chronyd -Q -t 30 "${user[@]}" -f "$work/client.conf" 2>&1 \
        | grep -m1 'System clock wrong by') || { echo "bench-nts: chronyd -Q measured nothing" >&2; exit 1; }
    t1=$(now)
    # "System clock wrong by X seconds": X is how far the clock is behind.
    echo "chronyd $(awk '{for (i = 1; i <= NF; i++) if ($i == "by") print $(i + 1)}' <<<"$line") $t0 $t1" >>"$work/results"
    echo "round $round/$ROUNDS done" >&2
done

python3 - "$work/results" "$ROUNDS" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
print(f"NTS against chronyd on 127.0.0.1 (true offset 0), {sys.argv[2]} rounds each:")
print(f"{'client':<10}{'mean |offset|':>16}{'max |offset|':>16}{'stdev':>12}{'run time':>12}")
means = {}
for who in ("toolbox", "chronyd"):
    raw = [float(r[1]) for r in rows if r[0] == who]
    offs = [abs(x) for x in raw]
    secs = [float(r[3]) - float(r[2]) for r in rows if r[0] == who]
    means[who] = statistics.mean(offs)
    print(f"{who:<10}{means[who]*1e6:>13.1f} us{max(offs)*1e6:>13.1f} us"
          f"{statistics.pstdev(raw)*1e6:>9.1f} us{statistics.mean(secs):>10.2f} s")
if means["chronyd"] > 0:
    print(f"ratio toolbox/chronyd mean |offset|: {means['toolbox'] / means['chronyd']:.2f}")
PY
