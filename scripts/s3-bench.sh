#!/usr/bin/env bash
# The S3 emitter against a real S3-compatible server (s3proxy from its Maven artifact, filesystem
# backend, signatures checked): the real polku-gateway binary pinned to core 0, s3proxy and
# polku-loadgen sharing core 1. StreamEvents, batches of 1000, 4 streams; deliveries counted at the
# s3 emitter (objects written). Prints events/s, objects/s, bytes per event after compression (from
# what s3proxy stored), the gateway's RSS and its CPU share.
# usage: [BIN=target/release] [COMPRESSIONS="gzip zstd none"] [EXTRA="POLKU_X=y ..."] scripts/s3-bench.sh ROUNDS
set -u
BIN=${BIN:-target/release}
COMPRESSIONS=${COMPRESSIONS:-gzip}
EXTRA=${EXTRA:-}
ROUNDS=${1:-2}
DIR=/tmp/polku-s3-bench
PORT=19000
cd "$(dirname "$0")/.."
. scripts/s3-server.sh
start_s3proxy "$DIR" "$PORT" 1
server=$s3proxy
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$DIR"' EXIT
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
metric() { awk -v m="$1" '$1 == m {print $2}' <<<"$2"; }
run() { # compression round
  local c=$1 r=$2 bucket=bench-$1-$2 pid out m g0 g1 objects bytes emitted
  mkdir -p "$DIR/data/$bucket"
  env POLKU_EMIT_S3_BUCKET=$bucket POLKU_EMIT_S3_ENDPOINT=http://127.0.0.1:$PORT POLKU_EMIT_S3_COMPRESSION=$c \
    AWS_ACCESS_KEY_ID=polku AWS_SECRET_ACCESS_KEY=polku-secret POLKU_LOG_LEVEL=warn \
    POLKU_HTTP_ADDR=127.0.0.1:8080 POLKU_GRPC_ADDR=127.0.0.1:50051 $EXTRA \
    taskset -c 0 "$BIN/polku-gateway" >/dev/null 2>/tmp/s3-bench.err &
  pid=$!
  sleep 1
  g0=$(ticks $pid)
  out=$(taskset -c 1 "$BIN/polku-loadgen" --mode stream --batch 1000 --concurrency 4 --duration 8s --emitter s3 2>&1)
  g1=$(ticks $pid)
  m=$(curl -s 127.0.0.1:8080/metrics)
  emitted=$(metric 'polku_emitter_events_emitted_total{emitter="s3"}' "$m")
  kill -TERM $pid; wait $pid 2>/dev/null
  objects=$(find "$DIR/data/$bucket" -type f -name '*.ndjson*' | wc -l)
  bytes=$(find "$DIR/data/$bucket" -type f -name '*.ndjson*' -printf '%s\n' | awk '{s += $1} END {print s + 0}')
  emitted=$(metric 'polku_emitter_events_emitted_total{emitter="s3"}' "$m")
  echo "$c round $r | $(grep -m1 -E '^delivered' <<<"$out") | $(grep -i -m1 peak <<<"$out") |" \
    "$objects objects in all ($(awk -v o="$objects" 'BEGIN { printf "%.1f", o / 10 }')/s over ~10 s)," \
    "$(awk -v b="$bytes" -v n="${emitted:-0}" 'BEGIN { if (n > 0) printf "%.1f", b / n; else print "n/a" }') bytes/event stored |" \
    "cpu gateway $(awk -v a="$g0" -v b="$g1" 'BEGIN { printf "%.0f%%", (b - a) / 10 }') | failed=$(metric 'polku_emitter_events_failed_total{emitter="s3"}' "$m")"
  rm -rf "${DIR:?}/data/$bucket"
}
for r in $(seq 1 "$ROUNDS"); do
  for c in $COMPRESSIONS; do run "$c" "$r"; done
done
