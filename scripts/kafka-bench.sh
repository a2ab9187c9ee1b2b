#!/usr/bin/env bash
# Kafka against a real broker (single-node KRaft from the Maven artifacts): the real polku-gateway
# binary pinned to core 0, the broker and polku-loadgen sharing core 1.
# 1. The emitter: alternates POLKU_EMIT_KAFKA_IN_FLIGHT=1 and the default 8 in each round (the
#    order turns each round), for streams of batches of 1000 and unary calls of one event;
#    deliveries are counted at the kafka emitter (acknowledged by the broker), RSS is the gateway's.
# 2. The source: a gateway reading everything the stream runs wrote (a new consumer group each
#    round) into the null emitter: events/s from its first record to its last, and peak RSS.
# usage: [BIN=target/release] [FORMAT=json|protobuf] scripts/kafka-bench.sh ROUNDS
set -u
BIN=${BIN:-target/release}
FORMAT=${FORMAT:-json}
ROUNDS=${1:-2}
DIR=/tmp/polku-kafka-bench
cd "$(dirname "$0")/.."
bash scripts/kafka-lib.sh target/kafka >/dev/null
LIB=$PWD/target/kafka/lib
rm -rf "$DIR" && mkdir -p "$DIR"
cat > "$DIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:19093
listeners=PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093
advertised.listeners=PLAINTEXT://127.0.0.1:19092
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$DIR/data
num.partitions=4
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
PROPS
java -cp "$LIB/*" kafka.tools.StorageTool format -t "$(java -cp "$LIB/*" kafka.tools.StorageTool random-uuid 2>/dev/null)" \
  -c "$DIR/server.properties" >/dev/null 2>&1
taskset -c 1 java -Xmx1g -XX:+UseSerialGC -cp "$LIB/*" kafka.Kafka "$DIR/server.properties" >"$DIR/broker.log" 2>&1 &
broker=$!
trap 'kill -TERM $broker 2>/dev/null; wait $broker 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 1 120); do (echo >/dev/tcp/127.0.0.1/19092) 2>/dev/null && break; sleep 0.5; done
sleep 2
metric() { awk -v m="$1" '$1 == m {print $2}' <<<"$2"; }
run() { # in_flight kind
  local in_flight=$1 kind=$2 args
  case $kind in
    stream) args="--mode stream --batch 1000 --concurrency 4 --duration 8s" ;;
    unary) args="--mode unary --batch 1 --concurrency 64 --duration 5s" ;;
  esac
  POLKU_EMIT_KAFKA_BROKERS=127.0.0.1:19092 POLKU_EMIT_KAFKA_TOPIC=bench-$kind POLKU_EMIT_KAFKA_FORMAT=$FORMAT \
    POLKU_EMIT_KAFKA_IN_FLIGHT=$in_flight POLKU_LOG_LEVEL=warn POLKU_HTTP_ADDR=127.0.0.1:8080 \
    POLKU_GRPC_ADDR=127.0.0.1:50051 taskset -c 0 "$BIN/polku-gateway" >/dev/null 2>/tmp/kafka-bench.err &
  local pid=$!
  sleep 1
  local out m
  out=$(taskset -c 1 "$BIN/polku-loadgen" $args --emitter kafka 2>&1)
  m=$(curl -s 127.0.0.1:8080/metrics)
  kill -TERM $pid; wait $pid 2>/dev/null
  if [ "$kind" = stream ]; then
    written=$((written + $(metric 'polku_emitter_events_emitted_total{emitter="kafka"}' "$m")))
  fi
  echo "$kind in_flight=$in_flight $FORMAT | $(grep -m1 -E '^acked' <<<"$out") | $(grep -m1 -E '^delivered' <<<"$out") |" \
    "ack p99 $(grep -m1 'ack latency' <<<"$out" | sed 's/.*p99 \([0-9.]* ms\).*/\1/') | $(grep -i -m1 peak <<<"$out") |" \
    "failed=$(metric 'polku_emitter_events_failed_total{emitter="kafka"}' "$m")"
}
written=0
run_source() { # round
  POLKU_INGEST_KAFKA_BROKERS=127.0.0.1:19092 POLKU_INGEST_KAFKA_TOPICS=bench-stream \
    POLKU_INGEST_KAFKA_GROUP=bench-source-$1 POLKU_INGEST_KAFKA_FORMAT=$FORMAT POLKU_EMIT_NULL=on \
    POLKU_BUFFER_CAPACITY=20000 POLKU_LOG_LEVEL=warn POLKU_HTTP_ADDR=127.0.0.1:8080 \
    POLKU_GRPC_ADDR=127.0.0.1:50051 taskset -c 0 "$BIN/polku-gateway" >/dev/null 2>/tmp/kafka-bench.err &
  local pid=$! first="" last="" n=0 m
  for _ in $(seq 1 3000); do
    m=$(curl -s 127.0.0.1:8080/metrics)
    n=$(metric 'polku_emitter_events_emitted_total{emitter="null"}' "$m")
    n=${n:-0}
    if [ -z "$first" ] && [ "$n" -gt 0 ]; then first=$(date +%s.%N); f0=$n; fi
    if [ "$n" -ge "$written" ]; then last=$(date +%s.%N); break; fi
    sleep 0.2
  done
  local rss
  rss=$(awk '/VmHWM/ {print $2/1024 " MB"}' /proc/$pid/status)
  kill -TERM $pid; wait $pid 2>/dev/null
  echo "source $FORMAT round $1 | $n of $written events into null | $(awk -v a="$first" -v b="$last" -v n="$n" -v f="$f0" \
    'BEGIN { if (b > a) printf "%.0f events/s", (n - f) / (b - a); else print "n/a" }') | peak RSS $rss"
}
for r in $(seq 1 "$ROUNDS"); do
  for kind in stream unary; do
    if [ $((r % 2)) -eq 1 ]; then run 1 $kind; run 8 $kind; else run 8 $kind; run 1 $kind; fi
  done
done
for r in $(seq 1 "$ROUNDS"); do run_source "$r"; done
