#!/usr/bin/env bash
# Throughput, response time and accuracy of `toolbox timesyncd -l` as an NTP
# server, side by side with chronyd, on loopback, in one run.
#
# Both servers serve their local clock (toolbox: LocalStratum=8 with
# --no-adjust; chronyd: `local stratum 8`, `allow 127.0.0.1`, no
# ratelimit, -x so it never touches the clock, cmdport 0, its own pid
# file). scripts/ntp-load.rs (std only, built here with rustc -O) offers
# client requests at 1, 10 and 100 thousand per second from several
# threads and sockets, for a bounded time, and reports replies per second
# and the 99th percentile of the response time; each rate is run against
# chronyd and toolbox in turn, ROUNDS times, and the best of each kept
# (other work on the machine only ever makes a run worse).
# Then `chronyd -Q` and `timesyncd -Q` measure each server's offset,
# which on loopback is the error of the served time.
#
# On a small machine the generator and the server share the same cores: a
# rate well past what both can serve (RATES="200000 400000") shows where
# each saturates, and other load on the machine moves every figure.
#
# Environment: SECS (seconds per rate, default 3), ROUNDS (default 3), RATES (default
# "1000 10000 100000"), THREADS (load threads, default 2),
# TOOLBOX (default target/release/toolbox). Needs chronyd and rustc.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${SECS:-3}
RATES=${RATES:-1000 10000 100000}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}

command -v chronyd >/dev/null || { echo "bench: chronyd is not installed (apt-get install chrony)" >&2; exit 1; }
command -v rustc >/dev/null || { echo "bench: rustc is needed for the load generator" >&2; exit 1; }
if [ -z "${TOOLBOX:-}" ]; then
    cargo build --release --quiet
    TOOLBOX=target/release/toolbox
fi

work=$(mktemp -d /tmp/bench-ntp-server.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

rustc -O --edition 2021 -o "$work/ntp-load" scripts/ntp-load.rs

free_port() {
    python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
chrony_port=$(free_port)
toolbox_port=$(free_port)

cat > "$work/chrony.conf" <<EOF
port $chrony_port
bindaddress 127.0.0.1
allow 127.0.0.1
local stratum 8
cmdport 0
pidfile $work/chronyd.pid
driftfile $work/chrony.drift
EOF
chronyd -x -d -f "$work/chrony.conf" >"$work/chronyd.log" 2>&1 &
pids+=($!)

cat > "$work/timesyncd.conf" <<EOF
[Time]
NTP=
FallbackNTP=
[Server]
Listen=127.0.0.1:$toolbox_port
Allow=127.0.0.1
LocalStratum=8
EOF
LOGGING=stderr "$TOOLBOX" timesyncd -f --no-adjust -c "$work/timesyncd.conf" \
    --state-file "$work/state" --clock-file "$work/clock" >"$work/toolbox.log" 2>&1 &
pids+=($!)

# Both answer before the runs start.
for port in "$chrony_port" "$toolbox_port"; do
    for _ in $(seq 50); do
        out=$("$work/ntp-load" "127.0.0.1:$port" 10 0.2 1 1)
        case "$out" in *"replies=0 "*) sleep 0.2 ;; *) break ;; esac
    done
done

field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

printf '%-8s %-9s %12s %10s %8s\n' rate server replies/s p99_us lost_%
summary=()
for rate in $RATES; do
    declare -A best_rps=() best_p99=()
    for round in $(seq "$ROUNDS"); do
        for who in chronyd toolbox; do
            port=$chrony_port
            [ "$who" = toolbox ] && port=$toolbox_port
            out=$("$work/ntp-load" "127.0.0.1:$port" "$rate" "$SECS" "$THREADS" 8)
            rps=$(echo "$out" | field replies_per_s)
            p99=$(echo "$out" | field p99_us)
            lost=$(echo "$out" | field lost_pct)
            printf '%-8s %-9s %12s %10s %8s\n' "$rate" "$who" "$rps" "$p99" "$lost"
            if [ -z "${best_rps[$who]:-}" ] || awk -v a="$rps" -v b="${best_rps[$who]}" 'BEGIN{exit !(a>b)}'; then
                best_rps[$who]=$rps
            fi
            if [ -z "${best_p99[$who]:-}" ] || awk -v a="$p99" -v b="${best_p99[$who]}" 'BEGIN{exit !(a<b)}'; then
                best_p99[$who]=$p99
            fi
        done
    done
    summary+=("$(printf '%-8s replies/s toolbox/chronyd %s   p99 toolbox/chronyd %s' "$rate" \
        "$(ratio "${best_rps[toolbox]}" "${best_rps[chronyd]}")" \
        "$(ratio "${best_p99[toolbox]}" "${best_p99[chronyd]}")")")
    unset best_rps best_p99
done

echo
echo "ratios (best of $ROUNDS rounds; replies/s above 1 and p99 below 1 favour toolbox):"
printf '%s\n' "${summary[@]}"

echo
echo "accuracy on loopback (offset of the served time from the host clock):"
for who in chronyd toolbox; do
    port=$chrony_port
    [ "$who" = toolbox ] && port=$toolbox_port
    c=$(chronyd -Q -f /dev/null "server 127.0.0.1 port $port iburst maxsamples 4 minpoll -4 maxpoll -4" \
        "pidfile $work/q.pid" 2>&1 | sed -n 's/.*System clock wrong by \([-0-9.e]*\) seconds.*/\1/p')
    t=$("$TOOLBOX" timesyncd -Q -c /dev/null -s "127.0.0.1:$port" 2>/dev/null | awk '{print $6}' | tr -d +)
    printf '%-8s chronyd -Q: %s s   timesyncd -Q: %s s\n' "$who" "${c:-none}" "${t:-none}"
done
