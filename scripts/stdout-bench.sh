#!/usr/bin/env bash
# The default stdout emitter against the null emitter, in one run, alternating, the gateway
# (the real polku-gateway binary) pinned to core 0 and the load on core 1.
#
#   bash scripts/stdout-bench.sh [ROUNDS]        # default 3 rounds
#   KINDS="unary-h2load unary stream" bash scripts/stdout-bench.sh 5
#   NO_BUILD=1 GW=/tmp/a/polku-gateway LOADGEN=/tmp/a/polku-loadgen bash scripts/stdout-bench.sh
#
# Kinds of load:
#   unary-h2load  SendEvent, one event per call, h2load 8 connections x 16 streams (issue 21's
#                 shape; h2load ignores grpc-status, so delivered events are read from /metrics)
#   unary         SendEvent, one event per call, polku-loadgen with 64 callers
#   stream        StreamEvents, batches of 1000, polku-loadgen with 4 streams
# Destinations: null (POLKU_EMIT_NULL=on, stdout off) and stdout (the default). STDOUT_TO says
# where stdout goes: file (default: STDOUT_FILE, target/stdout-bench/stdout.jsonl, emptied before
# each run), pipe (read by `cat` on the load's core, as a log collector would) or devnull.
# Prints one line per run and a table of medians with the stdout/null ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
KINDS=${KINDS:-unary-h2load unary stream}
DURATION=${DURATION:-6}
OUT=target/stdout-bench
STDOUT_FILE=${STDOUT_FILE:-$OUT/stdout.jsonl}
STDOUT_TO=${STDOUT_TO:-file}
mkdir -p "$OUT"
GRPC=127.0.0.1:50551
HTTP=127.0.0.1:50552

if [[ -z ${NO_BUILD:-} ]]; then
    cargo build --release -q -p polku-gateway -p polku-loadgen
fi
GW=${GW:-target/release/polku-gateway}
LOADGEN=${LOADGEN:-target/release/polku-loadgen}

if [[ $KINDS == *unary-h2load* ]] && ! command -v h2load >/dev/null; then
    echo "h2load is missing (Debian: apt-get install nghttp2-client)" >&2
    exit 1
fi

# One gRPC frame: a SendEventRequest of one event like the load generator's (type, source, two
# metadata entries, a JSON payload; about 200 bytes).
PYTHONPATH=scripts python3 - >"$OUT/request.bin" <<'PY'
import sys
from pbwire import grpc_frame, ld
def entry(k, v): return ld(5, ld(1, k.encode()) + ld(2, v.encode()))
payload = ('{"user":"u-1234567","plan":"pro","pad":"%s"}' % ('x' * 90)).encode()
event = (ld(3, b'loadgen') + ld(4, b'user.signup') + entry('region', 'eu-north-1')
         + entry('tenant', 't-0042') + ld(6, payload))
msg = ld(1, b'loadgen') + ld(2, ld(1, event))
sys.stdout.buffer.write(grpc_frame(msg))
PY

emitted() { # total events emitted, from /metrics
    curl -s "http://$HTTP/metrics" | awk '/^polku_emitter_events_emitted_total/ {s += $2} END {print s + 0}'
}

run() { # dest kind -> prints "kind dest events/s"
    local dest=$1 kind=$2 env=() rate
    if [[ $dest == null ]]; then env=(POLKU_EMIT_NULL=on POLKU_EMIT_STDOUT=off); fi
    : >"$STDOUT_FILE"
    local gw=(env "${env[@]}" POLKU_LOG_LEVEL=warn POLKU_GRPC_ADDR=$GRPC POLKU_HTTP_ADDR=$HTTP
        taskset -c 0 "$GW")
    case $STDOUT_TO in
        file) "${gw[@]}" >"$STDOUT_FILE" 2>"$OUT/gateway.err" & ;;
        devnull) "${gw[@]}" >/dev/null 2>"$OUT/gateway.err" & ;;
        pipe)
            mkfifo "$OUT/fifo" 2>/dev/null || true
            taskset -c 1 cat "$OUT/fifo" >/dev/null &
            "${gw[@]}" >"$OUT/fifo" 2>"$OUT/gateway.err" &
            ;;
        *) echo "STDOUT_TO is file, pipe or devnull" >&2; exit 1 ;;
    esac
    local pid=$!
    for _ in $(seq 50); do curl -sf "http://$HTTP/readyz" >/dev/null && break; sleep 0.1; done
    case $kind in
        unary-h2load)
            local before after
            before=$(emitted)
            taskset -c 1 h2load -c 8 -m 16 -D "$DURATION" -d "$OUT/request.bin" \
                -H 'content-type: application/grpc' -H 'te: trailers' \
                "http://$GRPC/polku.v1.Gateway/SendEvent" >"$OUT/h2load.out" 2>&1
            sleep 0.5
            after=$(emitted)
            rate=$(((after - before) / DURATION))
            ;;
        unary | stream)
            local args
            if [[ $kind == unary ]]; then
                args=(--mode unary --batch 1 --concurrency 64)
            else
                args=(--mode stream --batch 1000 --concurrency 4)
            fi
            taskset -c 1 "$LOADGEN" --grpc "$GRPC" --http "$HTTP" \
                "${args[@]}" --duration "${DURATION}s" --emitter "$dest" >"$OUT/loadgen.out" 2>&1
            rate=$(awk '/^delivered +[0-9]/ {print $2; exit}' "$OUT/loadgen.out")
            ;;
    esac
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    wait 2>/dev/null || true
    : >"$STDOUT_FILE"
    echo "$kind $dest $rate" | tee -a "$OUT/runs.txt"
}

: >"$OUT/runs.txt"
for r in $(seq "$ROUNDS"); do
    for kind in $KINDS; do
        if ((r % 2)); then run null "$kind"; run stdout "$kind"; else run stdout "$kind"; run null "$kind"; fi
    done
done

echo
echo "stdout to $STDOUT_TO"
echo "| load | null events/s (median) | stdout events/s (median) | stdout / null |"
echo "|---|---|---|---|"
median() { sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}'; }
for kind in $KINDS; do
    n=$(awk -v k="$kind" '$1 == k && $2 == "null" {print $3}' "$OUT/runs.txt" | median)
    s=$(awk -v k="$kind" '$1 == k && $2 == "stdout" {print $3}' "$OUT/runs.txt" | median)
    all() { awk -v k="$kind" -v d="$1" '$1 == k && $2 == d {printf "%s%d", sep, $3; sep = " / "}' "$OUT/runs.txt"; }
    echo "| $kind | $n ($(all null)) | $s ($(all stdout)) | $(awk -v a="$s" -v b="$n" 'BEGIN {printf "%.2f", a / b}') |"
done
