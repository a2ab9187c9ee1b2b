#!/usr/bin/env bash
# Kafka against a real broker (single-node KRaft from the Maven artifacts): the real polku-gateway
# binary pinned to core 0, the broker and polku-loadgen sharing core 1.
# 1. The emitter: alternates POLKU_EMIT_KAFKA_IN_FLIGHT=1 and the default 8 in each round (the
#    order turns each round), for streams of batches of 1000 and unary calls of one event;
#    deliveries are counted at the kafka emitter (acknowledged by the broker), RSS is the gateway's.
# 2. The source: a gateway reading everything the stream runs wrote (a new consumer group each
#    round) into the null emitter: events/s from its first record to its last, and peak RSS.
#    The source reads until it has what the stream runs wrote or nothing came for 3 s.
# 3. stuck (KINDS has "stuck"): a gateway reads what the stream runs wrote into the stdout emitter,
#    whose pipe nobody reads for 20 s: the buffer fills, the source pauses its partitions. Prints
#    the records read and the RSS each 5 s while stuck (flat memory), then lets the reader drain.
# CPU is each process's share of one core over the run (from /proc/PID/stat).
# usage: [BIN=target/release] [FORMAT=json|protobuf] [KINDS="stream unary source stuck"] [IN_FLIGHTS="1 8"]
#        [EXTRA="POLKU_X=y ..."] [PERF=file: record a profile of each emitter run] scripts/kafka-bench.sh ROUNDS
# A/B of the emitter: with ALT_BIN (another build's directory) and/or ALT_EXTRA (other settings), each
# emitter run is made twice, as given (A) and with the alternative (B), in turns (the order turns
# each round); the lines say which.
set -u
BIN=${BIN:-target/release}
FORMAT=${FORMAT:-json}
KINDS=${KINDS:-stream unary source}
IN_FLIGHTS=${IN_FLIGHTS:-1 8}
EXTRA=${EXTRA:-}
ROUNDS=${1:-2}
DIR=/tmp/polku-kafka-bench
cd "$(dirname "$0")/.."
. scripts/kafka-broker.sh
start_broker "$DIR" 19092 4 1
trap 'kill -TERM $broker 2>/dev/null; wait $broker 2>/dev/null; rm -rf "$DIR"' EXIT
sleep 2
metric() { awk -v m="$1" '$1 == m {print $2}' <<<"$2"; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# What share of one core a process used between two tick readings over SECONDS seconds.
share() { awk -v a="$1" -v b="$2" -v s="$3" 'BEGIN { printf "%.0f%%", (b - a) / s }'; }
run() { # in_flight kind [A|B]
  local in_flight=$1 kind=$2 variant=${3:-} args secs
  local bin=$BIN extra=$EXTRA
  if [ "$variant" = B ]; then bin=${ALT_BIN:-$BIN}; extra="$EXTRA ${ALT_EXTRA:-}"; fi
  case $kind in
    stream) secs=10; args="--mode stream --batch 1000 --concurrency 4 --duration 8s" ;;
    unary) secs=7; args="--mode unary --batch 1 --concurrency 64 --duration 5s" ;;
  esac
  env POLKU_EMIT_KAFKA_BROKERS=127.0.0.1:19092 POLKU_EMIT_KAFKA_TOPIC=bench-$kind POLKU_EMIT_KAFKA_FORMAT=$FORMAT \
    POLKU_EMIT_KAFKA_IN_FLIGHT=$in_flight POLKU_LOG_LEVEL=warn POLKU_HTTP_ADDR=127.0.0.1:8080 \
    POLKU_GRPC_ADDR=127.0.0.1:50051 $extra taskset -c 0 "$bin/polku-gateway" >/dev/null 2>/tmp/kafka-bench.err &
  local pid=$!
  sleep 1
  local out m g0 g1 b0 b1
  g0=$(ticks $pid); b0=$(ticks $broker)
  if [ -n "${PERF:-}" ]; then # a profile of the gateway, for reading with perf report
    (sleep 3; perf record -q -e cpu-clock -F 499 -g -p $pid -o "$PERF" -- sleep 5 >/dev/null 2>&1) &
  fi
  out=$(taskset -c 1 "$BIN/polku-loadgen" $args --emitter kafka 2>&1)
  g1=$(ticks $pid); b1=$(ticks $broker)
  m=$(curl -s 127.0.0.1:8080/metrics)
  kill -TERM $pid; wait $pid 2>/dev/null
  if [ "$kind" = stream ]; then
    written=$((written + $(metric 'polku_emitter_events_emitted_total{emitter="kafka"}' "$m")))
  fi
  echo "${variant:+$variant }$kind in_flight=$in_flight $FORMAT | $(grep -m1 -E '^acked' <<<"$out") | $(grep -m1 -E '^delivered' <<<"$out") |" \
    "ack p99 $(grep -m1 'ack latency' <<<"$out" | sed 's/.*p99 \([0-9.]* ms\).*/\1/') | $(grep -i -m1 peak <<<"$out") |" \
    "cpu gateway $(share "$g0" "$g1" $secs) broker $(share "$b0" "$b1" $secs) | failed=$(metric 'polku_emitter_events_failed_total{emitter="kafka"}' "$m")"
}
written=0
run_source() { # round
  env POLKU_INGEST_KAFKA_BROKERS=127.0.0.1:19092 POLKU_INGEST_KAFKA_TOPICS=bench-stream \
    POLKU_INGEST_KAFKA_GROUP=bench-source-$1 POLKU_INGEST_KAFKA_FORMAT=$FORMAT POLKU_EMIT_NULL=on \
    POLKU_LOG_LEVEL=warn POLKU_HTTP_ADDR=127.0.0.1:8080 \
    POLKU_GRPC_ADDR=127.0.0.1:50051 $EXTRA taskset -c 0 "$BIN/polku-gateway" >/dev/null 2>/tmp/kafka-bench.err &
  local pid=$! first="" last="" n=0 prev=-1 still=0 m f0=0 g0 b0 g1 b1 t0
  g0=$(ticks $pid); b0=$(ticks $broker)
  # Until everything written is in, or nothing came for 3 s.
  for _ in $(seq 1 6000); do
    m=$(curl -s 127.0.0.1:8080/metrics)
    n=$(metric 'polku_emitter_events_emitted_total{emitter="null"}' "$m")
    n=${n:-0}
    if [ -z "$first" ] && [ "$n" -gt 0 ]; then first=$(date +%s.%N); f0=$n; g0=$(ticks $pid); b0=$(ticks $broker); fi
    if [ "$n" -gt "$prev" ]; then last=$(date +%s.%N); g1=$(ticks $pid); b1=$(ticks $broker); prev=$n; still=0; else still=$((still + 1)); fi
    if [ "$n" -ge "$written" ] || { [ -n "$first" ] && [ $still -ge 30 ]; }; then break; fi
    sleep 0.1
  done
  local rss secs
  rss=$(awk '/VmHWM/ {print $2/1024 " MB"}' /proc/$pid/status)
  kill -TERM $pid; wait $pid 2>/dev/null
  secs=$(awk -v a="$first" -v b="$last" 'BEGIN { print b - a }')
  echo "source $FORMAT round $1 | $n of $written events into null | $(awk -v s="$secs" -v n="$n" -v f="$f0" \
    'BEGIN { if (s > 0) printf "%.0f events/s", (n - f) / s; else print "n/a" }') | peak RSS $rss |" \
    "cpu gateway $(share "$g0" "$g1" "$secs") broker $(share "$b0" "$b1" "$secs")"
}
run_stuck() { # round
  env POLKU_INGEST_KAFKA_BROKERS=127.0.0.1:19092 POLKU_INGEST_KAFKA_TOPICS=bench-stream \
    POLKU_INGEST_KAFKA_GROUP=bench-stuck-$1 POLKU_INGEST_KAFKA_FORMAT=$FORMAT \
    POLKU_LOG_LEVEL=warn POLKU_HTTP_ADDR=127.0.0.1:8080 POLKU_GRPC_ADDR=127.0.0.1:50051 $EXTRA \
    taskset -c 0 "$BIN/polku-gateway" 2>/tmp/kafka-bench.err > >(sleep 21; cat >/dev/null) &
  local pid=$! line="" m rss read
  for t in $(seq 1 20); do
    sleep 1
    if [ $((t % 5)) -eq 0 ]; then
      m=$(curl -s 127.0.0.1:8080/metrics)
      rss=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' /proc/$pid/status)
      read=$(metric 'polku_source_records_total{source="kafka"}' "$m")
      line="$line | ${t}s: read ${read:-0}, paused $(metric 'polku_source_paused{source="kafka"}' "$m"), RSS $rss MB"
    fi
  done
  rss=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' /proc/$pid/status)
  kill -TERM $pid; wait $pid 2>/dev/null
  echo "stuck $FORMAT round $1 | $written in the topic$line | peak RSS $rss MB"
}
for r in $(seq 1 "$ROUNDS"); do
  for kind in $KINDS; do
    [ "$kind" = source ] || [ "$kind" = stuck ] && continue
    if [ -n "${ALT_BIN:-}${ALT_EXTRA:-}" ]; then
      variants="A B"; [ $((r % 2)) -eq 0 ] && variants="B A"
    else variants=""; fi
    if [ $((r % 2)) -eq 1 ]; then fs=$IN_FLIGHTS; else fs=$(echo $IN_FLIGHTS | tr ' ' '\n' | tac); fi
    for f in $fs; do
      if [ -n "$variants" ]; then for v in $variants; do run "$f" $kind $v; done
      else run "$f" $kind; fi
    done
  done
done
if [[ " $KINDS " == *" source "* ]]; then
  for r in $(seq 1 "$ROUNDS"); do run_source "$r"; done
fi
if [[ " $KINDS " == *" stuck "* ]]; then
  for r in $(seq 1 "$ROUNDS"); do run_stuck "$r"; done
fi
