#!/usr/bin/env bash
# Every built-in emitter against a real local receiver, one table (issue 21).
#
#   bash scripts/emitter-bench.sh [ROUNDS]             # default 2 rounds of every kind
#   KINDS="webhook grpc" bash scripts/emitter-bench.sh 3
#
# The real polku-gateway is pinned to core 0 with one emitter on; the receiver and polku-loadgen
# share core 1. The load is StreamEvents, batches of 1000 events of 200 bytes, 4 streams, unless
# the kind says unary (SendEvent, one event per call, 64 callers). Kinds:
#   null             the null emitter (no receiver): the ceiling
#   stdout           the default stdout emitter, to a file
#   webhook          POSTs of 500 (the default) to a second gateway's HTTP /v1/events (null emitter)
#   webhook-1000     the same with POLKU_EMIT_WEBHOOK_BATCH_SIZE=1000
#   webhook-unary    unary load, each call POSTed on its own (linger 0, the default)
#   webhook-linger   unary load with POLKU_EMIT_WEBHOOK_LINGER=5ms: calls gathered into POSTs
#   webhook-4        POSTs of 500 with POLKU_EMIT_WEBHOOK_IN_FLIGHT=4 (not in the default kinds)
#   grpc             forwarding to a second gateway's gRPC port (null emitter)
#   grpc-4           the same with POLKU_EMIT_GRPC_IN_FLIGHT=4 (not in the default kinds)
#   plugin           the example Rust plugin (examples/plugins/rust, file_emitter) writing to a
#                    file, registered with the gateway as emitter "file"
#   kafka            a real single-node KRaft broker (scripts/kafka-broker.sh), JSON records
#   s3               s3proxy (scripts/s3-server.sh), gzip objects
# Per run: events/s delivered (counted at the emitter: acknowledged by the receiver), p99
# ingest-to-emit (the gateway's histogram for that emitter), the gateway's peak RSS, and the CPU of
# the gateway and the receiver (share of one core over the run) and how busy core 1 was (receiver
# and load together), from which "bound" names the full core. Then a table of medians.
# NO_BUILD=1 skips cargo (the binaries in target/release are used as they are).
set -uo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
KINDS=${KINDS:-null stdout webhook webhook-1000 webhook-unary webhook-linger grpc plugin kafka s3}
DURATION=${DURATION:-8}
BIN=target/release
OUT=target/emitter-bench
mkdir -p "$OUT"
GW_GRPC=127.0.0.1:50571 GW_HTTP=127.0.0.1:50572 # the gateway under test
RX_GRPC=127.0.0.1:50573 RX_HTTP=127.0.0.1:50574 # the receiving gateway (webhook, grpc)
KAFKA_PORT=50575 S3_PORT=50577

if [[ -z ${NO_BUILD:-} ]]; then
    cargo build --release -q -p polku-gateway -p polku-loadgen -p polku-example-rust-plugin || exit 1
fi

core1() { awk '$1 == "cpu1" { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }
busy() { # busy "BUSY0 TOTAL0" "BUSY1 TOTAL1": core 1's busy share in %
    awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.0f", 100 * (y[1] - x[1]) / (y[2] - x[2]) }'
}
ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
share() { awk -v a="$1" -v b="$2" -v s="$3" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.0f", 100 * (b - a) / hz / s }'; }
# Up: /metrics answers (a gateway with only a plugin emitter is not ready until the plugin registers).
wait_http() { for _ in $(seq 100); do curl -sf "http://$1/metrics" >/dev/null && return 0; sleep 0.1; done; return 1; }
metric() { curl -s "http://$GW_HTTP/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }

PIDS=()
KAFKA_DIR=/tmp/polku-emitter-bench-kafka S3_DIR=/tmp/polku-emitter-bench-s3
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    rm -rf "$KAFKA_DIR" "$S3_DIR"
}
trap cleanup EXIT
if [[ " $KINDS " == *" kafka "* ]]; then
    . scripts/kafka-broker.sh
    start_broker "$KAFKA_DIR" "$KAFKA_PORT" 4 1
    PIDS+=("$broker")
fi
if [[ " $KINDS " == *" s3 "* ]]; then
    . scripts/s3-server.sh
    start_s3proxy "$S3_DIR" "$S3_PORT" 1
    PIDS+=("$s3proxy")
fi

run() { # kind round -> one line in runs.txt
    local kind=$1 round=$2 env=(POLKU_EMIT_STDOUT=off) name=$1 rx="" load stdout=/dev/null
    load=(--mode stream --batch 1000 --concurrency 4)
    case $kind in
        null) env+=(POLKU_EMIT_NULL=on) ;;
        stdout) env=(); stdout=$OUT/stdout.jsonl ;;
        webhook*)
            name=webhook
            env+=(POLKU_EMIT_WEBHOOK_URL=http://$RX_HTTP/v1/events)
            case $kind in
                webhook-1000) env+=(POLKU_EMIT_WEBHOOK_BATCH_SIZE=1000) ;;
                webhook-4) env+=(POLKU_EMIT_WEBHOOK_IN_FLIGHT=4) ;;
                webhook-unary) load=(--mode unary --batch 1 --concurrency 64) ;;
                webhook-linger) load=(--mode unary --batch 1 --concurrency 64); env+=(POLKU_EMIT_WEBHOOK_LINGER=5ms) ;;
            esac
            ;;
        grpc*)
            name=grpc
            env+=(POLKU_EMIT_GRPC_ENDPOINTS=$RX_GRPC)
            [[ $kind == grpc-4 ]] && env+=(POLKU_EMIT_GRPC_IN_FLIGHT=4)
            ;;
        plugin) name=file ;;
        kafka) env+=(POLKU_EMIT_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT POLKU_EMIT_KAFKA_TOPIC=bench-$round) ;;
        s3)
            mkdir -p "$S3_DIR/data/bench-$round"
            env+=(POLKU_EMIT_S3_BUCKET=bench-$round POLKU_EMIT_S3_ENDPOINT=http://127.0.0.1:$S3_PORT
                AWS_ACCESS_KEY_ID=polku AWS_SECRET_ACCESS_KEY=polku-secret)
            ;;
        *) echo "unknown kind $kind" >&2; return 1 ;;
    esac
    if [[ $kind == webhook* || $kind == grpc* ]]; then # the receiving gateway, on core 1
        POLKU_EMIT_NULL=on POLKU_EMIT_STDOUT=off POLKU_LOG_LEVEL=warn POLKU_GRPC_ADDR=$RX_GRPC \
            POLKU_HTTP_ADDR=$RX_HTTP taskset -c 1 "$BIN/polku-gateway" >/dev/null 2>"$OUT/receiver.err" &
        rx=$!
        wait_http "$RX_HTTP" || { echo "receiver did not start" >&2; kill "$rx"; wait "$rx"; return 1; }
    fi
    : >"$OUT/stdout.jsonl"
    env "${env[@]}" POLKU_LOG_LEVEL=warn POLKU_GRPC_ADDR=$GW_GRPC POLKU_HTTP_ADDR=$GW_HTTP \
        taskset -c 0 "$BIN/polku-gateway" >"$stdout" 2>"$OUT/gateway.err" &
    local gw=$!
    if ! wait_http "$GW_HTTP"; then
        echo "gateway did not start (see $OUT/gateway.err)" >&2
        kill "$gw" $rx 2>/dev/null; wait "$gw" $rx 2>/dev/null
        return 1
    fi
    if [[ $kind == plugin ]]; then
        : >"$OUT/plugin.jsonl"
        FILE=$OUT/plugin.jsonl EMITTER_NAME=file POLKU_ADDR=$GW_GRPC taskset -c 1 "$BIN/file_emitter" \
            >/dev/null 2>"$OUT/plugin.err" &
        rx=$!
        for _ in $(seq 300); do
            curl -s "http://$GW_HTTP/metrics" | grep -q 'emitter="file"' && break
            sleep 0.1
        done
        if ! curl -s "http://$GW_HTTP/metrics" | grep -q 'emitter="file"'; then
            echo "the plugin did not register (see $OUT/plugin.err)" >&2
            kill "$gw" "$rx" 2>/dev/null; wait "$gw" "$rx" 2>/dev/null
            return 1
        fi
    fi
    # The receiver's CPU: the receiving gateway, the plugin, the broker or s3proxy.
    local rxpid=$rx
    [[ $kind == kafka ]] && rxpid=$broker
    [[ $kind == s3 ]] && rxpid=$s3proxy
    local g0 r0 g1 r1 c0 c1 out lg t0 t1
    g0=$(ticks "$gw"); r0=0; [[ -n $rxpid ]] && r0=$(ticks "$rxpid"); c0=$(core1); t0=$(date +%s.%N)
    taskset -c 1 "$BIN/polku-loadgen" --grpc "$GW_GRPC" --http "$GW_HTTP" "${load[@]}" \
        --duration "${DURATION}s" --emitter "$name" >"$OUT/loadgen.out" 2>&1 &
    lg=$!
    wait "$lg"
    g1=$(ticks "$gw"); r1=0; [[ -n $rxpid ]] && r1=$(ticks "$rxpid"); c1=$(core1); t1=$(date +%s.%N)
    local secs failed
    secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
    failed=$(metric "polku_emitter_events_failed_total{emitter=\"$name\"}")
    kill -TERM "$gw" 2>/dev/null; wait "$gw" 2>/dev/null
    [[ -n $rx ]] && { kill -TERM "$rx" 2>/dev/null; wait "$rx" 2>/dev/null; }
    rm -f "$OUT/plugin.jsonl" "$OUT/stdout.jsonl"
    out=$OUT/loadgen.out
    local rate p99 rss
    rate=$(awk '/^delivered +[0-9]/ { printf "%.0f", $2; exit }' "$out")
    p99=$(awk '/^ingest-to-emit/ { for (i = 1; i < NF; i++) if ($i == "p99") { print $(i + 2); exit } }' "$out")
    rss=$(awk '/^gateway rss/ { for (i = 1; i < NF; i++) if ($i == "peak") { print $(i + 1); exit } }' "$out")
    echo "$kind $round ${rate:-0} ${p99:-?} ${rss:-?} $(share "$g0" "$g1" "$secs") $(share "$r0" "$r1" "$secs") $(busy "$c0" "$c1") ${failed:-0}" |
        tee -a "$OUT/runs.txt"
}

: >"$OUT/runs.txt"
echo "kind round events/s p99-ms peak-rss-MB gateway-cpu% receiver-cpu% core1-busy% failed"
for r in $(seq "$ROUNDS"); do
    for kind in $KINDS; do run "$kind" "$r"; done
done

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
echo
echo "polku-gateway $(git rev-parse --short HEAD) on core 0; receiver and polku-loadgen on core 1; ${DURATION}s runs, $ROUNDS rounds"
echo "| emitter | events/s delivered (median; each run) | p99 ingest-to-emit | peak RSS MB | CPU %: gateway / receiver / core 1 | bound |"
echo "|---|---|---|---|---|---|"
for kind in $KINDS; do
    col() { awk -v k="$kind" -v f="$1" '$1 == k { print $f }' "$OUT/runs.txt"; }
    e=$(col 3 | median); g=$(col 6 | median); x=$(col 7 | median); b=$(col 8 | median)
    bound="gateway CPU"
    if ((g < 85)); then
        if ((b >= 90)); then bound="core 1 (receiver + load)"; else bound="round trips to the receiver"; fi
    fi
    printf '| %s | %s (%s) | <= %s ms | %s | %s / %s / %s | %s |\n' "$kind" "$e" "$(col 3 | paste -sd' ')" \
        "$(col 4 | sort -g | tail -1)" "$(col 5 | sort -g | tail -1)" "$g" "$x" "$b" "$bound"
done
