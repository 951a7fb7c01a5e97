#!/usr/bin/env bash
# Accuracy and footprint of `toolbox timesyncd` against chronyd, on loopback.
#
# A reference NTP server (Python, below) answers on 127.0.0.1 with a known
# offset, a server processing delay with jitter, and now and then a long
# extra delay on the reply path only (asymmetric, which NTP cannot see).
# Each round runs `toolbox timesyncd -Q` and `chronyd -Q` against it and
# records how far each measured offset is from the true one. Then the
# `--no-adjust` daemon (and a `chronyd -x` client beside it) poll the
# server for a while, and their RSS and CPU time are read from /proc.
# Nothing here changes the system clock: -Q, --no-adjust and chronyd -x.
#
# The footprint is read for the normal (dynamic) build and for the static
# build that embedded and initramfs images ship; both give back their
# start-up pages 30 s after readiness (src/trim.rs), so DAEMON_SECS must be
# longer than that.
#
# Environment: ROUNDS (default 5), DAEMON_SECS (default 75),
# OFFSET (default 0.123456), TOOLBOX (default target/release/toolbox),
# TOOLBOX_STATIC (default: built by scripts/build-static.sh; "none" skips it).
# Needs chronyd (Debian package chrony) and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DAEMON_SECS=${DAEMON_SECS:-75}
OFFSET=${OFFSET:-0.123456}

command -v chronyd >/dev/null || { echo "bench: chronyd is not installed (apt-get install chrony)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "bench: python3 is needed for the reference server" >&2; exit 1; }
if [ -z "${TOOLBOX:-}" ]; then
    cargo build --release --quiet
    TOOLBOX=target/release/toolbox
fi
if [ -z "${TOOLBOX_STATIC:-}" ]; then
    scripts/build-static.sh >/dev/null
    TOOLBOX_STATIC=target/static/x86_64-unknown-linux-gnu/release/toolbox
fi

work=$(mktemp -d /tmp/bench-timesyncd.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/server.py" <<'EOF'
# Reference NTP server: true offset, processing delay + jitter, and an
# occasional extra reply-path delay not reflected in T3.
import os, random, socket, struct, sys, time

offset = float(sys.argv[1])
port_file = sys.argv[2]
SO_TIMESTAMPNS = 35          # Linux; Python has no constant for it
NTP_EPOCH = 2208988800
random.seed(4)

def ntp(t):
    secs = int(t)
    return ((secs + NTP_EPOCH) << 32) | int((t - secs) * 4294967296)

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
s.bind(("127.0.0.1", 0))
with open(port_file + ".tmp", "w") as f:
    f.write(str(s.getsockname()[1]))
os.rename(port_file + ".tmp", port_file)
while True:
    data, anc, _, peer = s.recvmsg(512, 64)
    t2 = time.time()
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
            sec, nsec = struct.unpack("qq", payload[:16])
            t2 = sec + nsec * 1e-9
    if len(data) < 48:
        continue
    # Processing: 50 us plus exponential jitter of mean 50 us.
    time.sleep(50e-6 + random.expovariate(1 / 50e-6))
    reply = bytearray(48)
    reply[0] = (0 << 6) | (4 << 3) | 4
    reply[1] = 2
    reply[2] = 6
    reply[3] = 0xEC  # precision 2^-20
    reply[4:8] = struct.pack("!I", 0x10)
    reply[8:12] = struct.pack("!I", 0x10)
    reply[12:16] = b"BNCH"
    reply[16:24] = struct.pack("!Q", ntp(t2 + offset))
    reply[24:32] = data[40:48]
    reply[32:40] = struct.pack("!Q", ntp(t2 + offset))
    reply[40:48] = struct.pack("!Q", ntp(time.time() + offset))
    # One reply in five is held back 0.5-3 ms after T3: asymmetric delay.
    if random.random() < 0.2:
        time.sleep(random.uniform(0.5e-3, 3e-3))
    s.sendto(bytes(reply), peer)
EOF

python3 "$work/server.py" "$OFFSET" "$work/port" &
pids+=($!)
for _ in $(seq 50); do [ -s "$work/port" ] && break; sleep 0.1; done
port=$(cat "$work/port")
server="127.0.0.1:$port"
printf '[Time]\nFallbackNTP=\n' > "$work/empty.conf"
echo "reference server $server, true offset +$OFFSET s, $ROUNDS rounds"

toolbox_errors=()
chrony_errors=()
for round in $(seq "$ROUNDS"); do
    line=$("$TOOLBOX" timesyncd -Q -c "$work/empty.conf" -s "$server")
    measured=$(awk '{print $6}' <<<"$line")
    # chronyd's "wrong by" has the sign of an NTP offset (local behind: +).
    chrony_line=$(chronyd -Q -f /dev/null "server 127.0.0.1 port $port iburst" 2>&1 |
        grep -o 'wrong by [-+0-9.e]* seconds' || true)
    chrony=$(awk '{print $3}' <<<"$chrony_line")
    te=$(awk -v m="$measured" -v o="$OFFSET" 'BEGIN {printf "%.1f", (m - o) * 1e6}')
    if [ -n "$chrony_line" ]; then
        ce=$(awk -v m="$chrony" -v o="$OFFSET" 'BEGIN {printf "%.1f", (m - o) * 1e6}')
    else
        ce=nan
    fi
    toolbox_errors+=("$te")
    chrony_errors+=("$ce")
    printf '  round %d: toolbox error %8s us   chronyd error %8s us\n' "$round" "$te" "$ce"
done

median_abs() {
    printf '%s\n' "$@" | grep -v nan | awk '{print ($1 < 0 ? -$1 : $1)}' | sort -g |
        awk '{a[NR] = $1} END {if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'
}
echo "median |error|: toolbox $(median_abs "${toolbox_errors[@]}") us, chronyd $(median_abs "${chrony_errors[@]}") us"

# Footprint: both daemons polling the same server for DAEMON_SECS.
"$TOOLBOX" timesyncd -f --no-adjust -c "$work/empty.conf" -s "$server" \
    --state-file "$work/state" --clock-file "$work/clock" 2>"$work/toolbox.log" &
tb_pid=$!
pids+=("$tb_pid")
st_pid=
if [ "$TOOLBOX_STATIC" != none ]; then
    "$TOOLBOX_STATIC" timesyncd -f --no-adjust -c "$work/empty.conf" -s "$server" \
        --state-file "$work/state-static" --clock-file "$work/clock-static" 2>"$work/static.log" &
    st_pid=$!
    pids+=("$st_pid")
fi
cat > "$work/chrony.conf" <<EOF
server 127.0.0.1 port $port iburst
cmdport 0
port 0
pidfile $work/chronyd.pid
driftfile $work/chrony.drift
EOF
chronyd -x -d -f "$work/chrony.conf" 2>"$work/chronyd.log" &
ch_pid=$!
pids+=("$ch_pid")
echo "polling for ${DAEMON_SECS}s..."
sleep "$DAEMON_SECS"

footprint() {
    local pid=$1 name=$2 rss anon pss cpu
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    anon=$(awk '/^RssAnon/ {print $2}' "/proc/$pid/status")
    pss=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || echo "?")
    # schedstat: nanoseconds on the CPU, finer than the clock ticks of stat.
    cpu=$(awk '{printf "%.1f", $1 / 1e6}' "/proc/$pid/schedstat")
    printf '  %-15s RSS %5s KiB (anonymous %4s KiB, PSS %5s KiB), CPU %s ms\n' \
        "$name" "$rss" "$anon" "$pss" "$cpu"
}
echo "after ${DAEMON_SECS}s of polling:"
footprint "$tb_pid" toolbox
[ -z "$st_pid" ] || footprint "$st_pid" "toolbox static"
footprint "$ch_pid" chronyd
echo "  (target: idle RSS under 2048 KiB; the dynamic build's RSS includes the shared glibc pages it maps)"
"$TOOLBOX" timesyncd --status --state-file "$work/state" | sed -n '1,9p' | sed 's/^/    /'
