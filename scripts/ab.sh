#!/usr/bin/env bash
# A/B of two builds, alternating, gateway pinned to core 0, load generator to core 1.
# usage: [AB_DIR=dir] [KINDS="null-stream null-http stdout-stream null-unary"] scripts/ab.sh ROUNDS
# AB_DIR holds old-bench, old-gw, new-bench, new-gw (release builds of polku-bench-gateway and
# polku-gateway from the two commits) and loadgen (polku-loadgen).
set -u
cd "${AB_DIR:-/tmp/ab}"
ROUNDS=${1:-3}
run() { # variant kind
  local v=$1 kind=$2 bin args emitter
  case $kind in
    null-stream) bin=./$v-bench; emitter=null; args="--mode stream --batch 1000 --concurrency 4 --duration 6s" ;;
    null-http)   bin=./$v-bench; emitter=null; args="--mode http --batch 100 --concurrency 16 --duration 5s" ;;
    null-unary)  bin=./$v-bench; emitter=null; args="--mode unary --batch 1 --concurrency 64 --duration 5s" ;;
    stdout-stream) bin=./$v-gw; emitter=stdout; args="--mode stream --batch 1000 --concurrency 4 --duration 6s" ;;
  esac
  POLKU_LOG_LEVEL=warn POLKU_HTTP_ADDR=127.0.0.1:8080 POLKU_GRPC_ADDR=127.0.0.1:50051 taskset -c 0 $bin > /dev/null 2>/tmp/ab/gw.err &
  local pid=$!
  sleep 1
  local out
  out=$(taskset -c 1 ./loadgen $args --emitter $emitter 2>&1)
  kill -TERM $pid; wait $pid 2>/dev/null
  local acked delivered rss
  acked=$(echo "$out" | awk '/^acked +[0-9]/ {print $2}')
  delivered=$(echo "$out" | awk '/^delivered +[0-9]/ {print $2}')
  rss=$(echo "$out" | grep -i "peak" | head -1)
  echo "$kind $v acked=$acked delivered=$delivered $rss"
}
for r in $(seq 1 "$ROUNDS"); do
  for kind in ${KINDS:-null-stream null-http stdout-stream null-unary}; do
    if [ $((r % 2)) -eq 1 ]; then run old $kind; run new $kind; else run new $kind; run old $kind; fi
  done
done
