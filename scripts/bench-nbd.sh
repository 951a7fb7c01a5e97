#!/usr/bin/env bash
# Serves one 1 GiB raw image over a unix socket with toolbox nbd, qemu-nbd
# and nbdkit (one after the other, same warm page cache) and measures each
# with fio (ioengine=nbd: 4k random read and write at iodepth 32 on one
# connection, 1 MiB sequential read) and nbdcopy (whole export to null:,
# multi-connection when the server allows it). Prints a table and ratios.
# With --qcow2 (or QCOW2=1) the same runs go to a fully allocated qcow2
# image of the same content (toolbox vs qemu-nbd; nbdkit has no qcow2 writer).
# With --rounds N the servers take turns N times (A/B/A/B...) and the
# median of each figure is shown, which evens out a noisy machine.
# With --tls (or TLS=1) every server requires TLS with the same openssl-made
# certificates (client certificates verified: qemu's default, nbdkit's
# --tls-verify-peer). fio's nbd engine cannot be given a certificate
# directory in its URI, so fio runs as nobody with HOME holding
# .pki/libnbd, libnbd's default place; nbdcopy gets tls-certificates=.
#
#   scripts/bench-nbd.sh [--quick] [--qcow2] [--tls] [--rounds N] [--only toolbox,qemu-nbd,nbdkit]
#   env: RUNTIME (s per fio run, default 15), BENCH_DIR, TOOLBOX, QCOW2
set -euo pipefail
cd "$(dirname "$0")/.."

runtime=${RUNTIME:-15}
qcow2=${QCOW2:-0}
tls=${TLS:-0}
rounds=1
only=""
while (($#)); do
    case $1 in
        --quick) runtime=5 ;;
        --qcow2) qcow2=1 ;;
        --tls) tls=1 ;;
        --rounds) rounds=$2; shift ;;
        --only) only=$2; shift ;;
        *) echo "usage: $0 [--quick] [--qcow2] [--tls] [--rounds N] [--only LIST]" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$only" ]; then
    if [ "$qcow2" = 1 ]; then only="toolbox,qemu-nbd"; else only="toolbox,qemu-nbd,nbdkit"; fi
fi

toolbox=${TOOLBOX:-target/release/toolbox}
[ -x "$toolbox" ] || cargo build --release --quiet
toolbox=$(realpath "$toolbox")
for tool in fio nbdcopy qemu-nbd nbdkit python3; do
    command -v $tool >/dev/null || { echo "bench-nbd.sh: $tool is missing (scripts/test.sh installs it)" >&2; exit 1; }
done

dir=$(mktemp -d "${BENCH_DIR:-/var/tmp}/bench-nbd.XXXXXX")
sock=$dir/nbd.sock
img=$dir/disk.img
server_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT

echo "preparing a 1 GiB image in $dir ..." >&2
head -c 1G /dev/urandom >"$img"
fmt=raw
if [ "$qcow2" = 1 ]; then
    # Random data has no zero cluster: every cluster is allocated.
    qemu-img convert -f raw -O qcow2 "$img" "$dir/disk.qcow2"
    rm "$img"
    img=$dir/disk.qcow2
    fmt=qcow2
fi
cat "$img" >/dev/null

uri="nbd+unix:///?socket=$sock"
copy_uri=$uri
toolbox_tls=() qemu_tls=() nbdkit_tls=() as_client=()
if [ "$tls" = 1 ]; then
    command -v openssl >/dev/null || { echo "bench-nbd.sh: openssl is missing" >&2; exit 1; }
    pki=$dir/pki
    mkdir -p "$pki" "$dir/home/.pki"
    (
        cd "$pki"
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca-cert.pem -days 2 \
            -subj "/CN=bench CA" -addext basicConstraints=critical,CA:TRUE \
            -addext keyUsage=critical,keyCertSign,cRLSign
        printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' >server.ext
        printf 'extendedKeyUsage=clientAuth\n' >client.ext
        for who in server client; do
            openssl req -newkey rsa:2048 -nodes -keyout $who-key.pem -out $who.csr -subj "/CN=localhost"
            openssl x509 -req -in $who.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial \
                -out $who-cert.pem -days 2 -extfile $who.ext
        done
    ) >/dev/null 2>&1
    cp -r "$pki" "$dir/home/.pki/libnbd"
    chmod 755 "$dir"
    chown -R 65534:65534 "$dir/home"
    uri="nbds+unix:///?socket=$sock"
    copy_uri="$uri&tls-certificates=$pki"
    toolbox_tls=(--object "tls-creds-x509,id=tls0,dir=$pki,endpoint=server" --tls-creds tls0)
    qemu_tls=("${toolbox_tls[@]}")
    nbdkit_tls=(--tls=require "--tls-certificates=$pki" --tls-verify-peer)
    as_client=(setpriv --reuid=65534 --regid=65534 --clear-groups env "HOME=$dir/home")
fi

start_server() {
    rm -f "$sock"
    case $1 in
        toolbox) "$toolbox" nbd -t -e 8 -f $fmt --cache=writeback "${toolbox_tls[@]}" -k "$sock" "$img" & ;;
        qemu-nbd) qemu-nbd -t -e 8 -f $fmt --cache=writeback --aio=threads "${qemu_tls[@]}" -k "$sock" "$img" & ;;
        nbdkit) nbdkit --foreground "${nbdkit_tls[@]}" -U "$sock" file "$img" & ;;
    esac
    server_pid=$!
    for _ in $(seq 100); do
        # (fio may run as nobody: let it connect.)
        [ -S "$sock" ] && { chmod 777 "$sock"; return; }
        sleep 0.05
    done
    echo "bench-nbd.sh: $1 did not start" >&2
    exit 1
}

stop_server() {
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}

# fio RW BS DEPTH FIELD -> the number (iops or MiB/s)
fio_run() {
    rm -f "$dir/home/fio.json"
    mkdir -p "$dir/home"
    "${as_client[@]}" fio --name=bench --ioengine=nbd --uri="$uri" \
        --rw="$1" --bs="$2" --iodepth="$3" --size=1G --time_based \
        --runtime="$runtime" --ramp_time=2 --output-format=json --output="$dir/home/fio.json" >/dev/null
    python3 - "$dir/home/fio.json" "$4" <<'PY'
import json, sys
job = json.load(open(sys.argv[1]))["jobs"][0]
side = job["read"] if job["read"]["io_bytes"] else job["write"]
print(f'{side["iops"]:.0f}' if sys.argv[2] == "iops" else f'{side["bw"] / 1024:.0f}')
PY
}

declare -A result
servers=()
IFS=, read -ra wanted <<<"$only"
servers=("${wanted[@]}")
for ((round = 1; round <= rounds; round++)); do
    for server in "${servers[@]}"; do
        echo "measuring $server (round $round of $rounds, $fmt) ..." >&2
        start_server "$server"
        result[$server,randread]+=" $(fio_run randread 4k 32 iops)"
        result[$server,randwrite]+=" $(fio_run randwrite 4k 32 iops)"
        result[$server,seqread]+=" $(fio_run read 1M 8 bw)"
        start=$(date +%s.%N)
        nbdcopy "$copy_uri" null:
        result[$server,nbdcopy]+=" $(python3 -c "import time; print(f'{time.time() - $start:.2f}')")"
        stop_server
    done
done
# Each figure: the median of its rounds (all rounds shown on stderr).
for key in "${!result[@]}"; do
    echo "rounds $key:${result[$key]}" >&2
    result[$key]=$(python3 -c "import statistics, sys; print(statistics.median(float(v) for v in sys.argv[1:]))" ${result[$key]})
done

ratio() { # a b [inverse]
    python3 -c "a, b = float('$1'), float('$2'); print(f'{(b / a if \"${3:-}\" else a / b):.2f}' if a and b else '-')"
}

printf '\n%-22s' metric
for s in "${servers[@]}"; do printf '%12s' "$s"; done
has() { [[ " ${servers[*]} " == *" $1 "* ]]; }
has toolbox && has nbdkit && printf '%18s' "toolbox/nbdkit"
has toolbox && has qemu-nbd && printf '%18s' "toolbox/qemu-nbd"
echo
for m in randread randwrite seqread nbdcopy; do
    case $m in
        randread) label="4k randread IOPS" ;;
        randwrite) label="4k randwrite IOPS" ;;
        seqread) label="1M seqread MiB/s" ;;
        nbdcopy) label="nbdcopy 1 GiB s" ;;
    esac
    printf '%-22s' "$label"
    for s in "${servers[@]}"; do printf '%12s' "${result[$s,$m]}"; done
    inv=""; [ $m = nbdcopy ] && inv=1
    has toolbox && has nbdkit && printf '%18s' "$(ratio "${result[toolbox,$m]}" "${result[nbdkit,$m]}" $inv)"
    has toolbox && has qemu-nbd && printf '%18s' "$(ratio "${result[toolbox,$m]}" "${result[qemu-nbd,$m]}" $inv)"
    echo
done
over=""; [ "$tls" = 1 ] && over=" over TLS"
echo "($fmt image$over, median of $rounds round(s); ratios > 1 mean toolbox is better; for nbdcopy the ratio is speed, i.e. time(other)/time(toolbox))"
