#!/usr/bin/env bash
# Memory vs durable buffer (POLKU_BUFFER_DIR) vs durable with a sync interval
# (POLKU_BUFFER_SYNC_INTERVAL=100ms), alternating (the order turns each round), with the real
# polku-gateway binary: gateway pinned to core 0, load generator to core 1.
# DEST=stdout (the default emitter, stdout to /dev/null) or DEST=grpc (the gRPC emitter to a second
# polku-gateway on core 1 beside the load generator, printing to /dev/null: a real destination).
# Prints the load generator's figures (deliveries counted at the destination emitter) and, for the
# durable runs, syncs, records and bytes written from /metrics.
# usage: [BIN=target/release] [DEST=stdout|grpc] [DIR=/tmp/polku-durable-bench] scripts/durable-bench.sh ROUNDS
set -u
BIN=${BIN:-target/release}
DEST=${DEST:-stdout}
DIR=${DIR:-/tmp/polku-durable-bench}
ROUNDS=${1:-3}
metric() { awk -v m="$1" '$1 == m {print $2}' <<<"$2"; }
downstream=""
if [ "$DEST" = grpc ]; then
  POLKU_LOG_LEVEL=warn POLKU_HTTP_ADDR=127.0.0.1:8081 POLKU_GRPC_ADDR=127.0.0.1:50061 \
    taskset -c 1 "$BIN/polku-gateway" >/dev/null 2>/tmp/durable-bench-downstream.err &
  downstream=$!
  trap 'kill -TERM $downstream 2>/dev/null' EXIT
  sleep 1
fi
run() { # buffer kind
  local buffer=$1 kind=$2 args batch env=()
  case $kind in
    stream) batch=1000; args="--mode stream --batch 1000 --concurrency 4 --duration 6s" ;;
    unary) batch=1; args="--mode unary --batch 1 --concurrency 64 --duration 5s" ;;
  esac
  rm -rf "$DIR"
  case $buffer in
    durable) env=(POLKU_BUFFER_DIR="$DIR") ;;
    interval) env=(POLKU_BUFFER_DIR="$DIR" POLKU_BUFFER_SYNC_INTERVAL=100ms) ;;
  esac
  local emitter=stdout
  if [ "$DEST" = grpc ]; then env+=(POLKU_EMIT_GRPC_ENDPOINTS=127.0.0.1:50061); emitter=grpc; fi
  env "${env[@]}" POLKU_LOG_LEVEL=warn POLKU_HTTP_ADDR=127.0.0.1:8080 POLKU_GRPC_ADDR=127.0.0.1:50051 \
    taskset -c 0 "$BIN/polku-gateway" >/dev/null 2>/tmp/durable-bench.err &
  local pid=$!
  sleep 1
  local out m
  out=$(taskset -c 1 "$BIN/polku-loadgen" $args --emitter $emitter 2>&1)
  m=$(curl -s 127.0.0.1:8080/metrics)
  kill -TERM $pid; wait $pid 2>/dev/null
  local rate p99 rss
  rate=$(grep -m1 -E "^acked" <<<"$out")
  p99=$(grep -m1 "ack latency" <<<"$out" | sed 's/.*p99 \([0-9.]* ms\).*/\1/')
  rss=$(grep -i -m1 "peak" <<<"$out")
  local extra=""
  if [ "$buffer" != memory ]; then
    local syncs records bytes
    syncs=$(metric polku_buffer_syncs_total "$m")
    records=$(metric polku_buffer_log_records_total "$m")
    bytes=$(metric polku_buffer_written_bytes_total "$m")
    extra="syncs=$syncs records=$records written_bytes=$bytes"
    [ -n "$records" ] && [ "$records" -gt 0 ] && extra="$extra bytes/event=$((bytes / records / batch)) events/sync=$((records * batch / (syncs > 0 ? syncs : 1)))"
  fi
  echo "$DEST $kind $buffer | $rate | ack p99 $p99 | $rss | $extra"
}
modes=(memory durable interval)
for r in $(seq 1 "$ROUNDS"); do
  for kind in stream unary; do
    for i in 0 1 2; do run "${modes[$(((i + r) % 3))]}" $kind; done
  done
done
rm -rf "$DIR"
