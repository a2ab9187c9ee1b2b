#!/usr/bin/env bash
# Both tiers of a scaled-out POLKU on one machine (docs/SCALING.md): a Kafka broker (single-node
# KRaft from the Maven artifacts), two edge gateways (gRPC and HTTP in, Kafka out), and a consumer
# tier of two gateways in one consumer group (Kafka in, stdout out, each to its own file). The load
# generator sends through both edges; halfway, one consumer is stopped with SIGKILL and a third
# joins the group. At the end the script counts: events acknowledged at the edges, records in
# Kafka, events printed by the tier, distinct ids among them, and duplicates.
# usage: [BIN=target/release] [SECONDS_OF_LOAD=10] scripts/scale-out.sh
set -u
BIN=${BIN:-target/release}
LOAD=${SECONDS_OF_LOAD:-10}
DIR=/tmp/polku-scale-out
cd "$(dirname "$0")/.."
for b in polku-gateway polku-loadgen; do
  [ -x "$BIN/$b" ] || { echo "build first: cargo build --release -p polku-gateway -p polku-loadgen" >&2; exit 1; }
done
. scripts/kafka-broker.sh
start_broker "$DIR" 29092 6
pids=("$broker")
trap 'kill -9 "${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT
KAFKA=127.0.0.1:29092
metric() { curl -s "127.0.0.1:$2/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

edge() { # n grpc http
  POLKU_GRPC_ADDR=127.0.0.1:$2 POLKU_HTTP_ADDR=127.0.0.1:$3 POLKU_LOG_LEVEL=warn \
    POLKU_EMIT_KAFKA_BROKERS=$KAFKA POLKU_EMIT_KAFKA_TOPIC=events POLKU_EMIT_KAFKA_KEY=id \
    "$BIN/polku-gateway" >/dev/null 2>"$DIR/edge-$1.log" &
  pids+=($!)
}
consumer() { # n grpc http
  POLKU_GRPC_ADDR=127.0.0.1:$2 POLKU_HTTP_ADDR=127.0.0.1:$3 POLKU_LOG_LEVEL=info \
    POLKU_INGEST_KAFKA_BROKERS=$KAFKA POLKU_INGEST_KAFKA_TOPICS=events POLKU_INGEST_KAFKA_GROUP=tier \
    POLKU_INGEST_KAFKA_OPTIONS='session.timeout.ms=6000;heartbeat.interval.ms=1000' \
    "$BIN/polku-gateway" >"$DIR/tier-$1.out" 2>"$DIR/tier-$1.log" &
  pids+=($!)
  eval "tier_$1=$!"
}
edge 1 51051 58081
edge 2 51052 58082
consumer 1 52051 59081
consumer 2 52052 59082
sleep 2
echo "==> $LOAD s of load through both edges (streams of 1000, 2 callers each)"
for e in 1 2; do
  "$BIN/polku-loadgen" --grpc 127.0.0.1:5105$e --http 127.0.0.1:5808$e --mode stream --batch 1000 \
    --concurrency 2 --duration "${LOAD}s" --warmup 0s --emitter kafka >"$DIR/load-$e.txt" 2>&1 &
done
sleep $((LOAD / 2))
echo "==> consumer 1 killed (SIGKILL), consumer 3 joins the group"
kill -9 "$tier_1"
consumer 3 52053 59083
wait_loads() { while pgrep -f "polku-loadgen --grpc 127.0.0.1:5105" >/dev/null; do sleep 0.5; done; }
wait_loads
acked=0
for e in 1 2; do
  a=$(metric 'polku_events_accepted_total' 5808$e); acked=$((acked + ${a:-0}))
done
sleep 3
kafka=0
for e in 1 2; do
  k=$(metric 'polku_emitter_events_emitted_total{emitter="kafka"}' 5808$e); kafka=$((kafka + ${k:-0}))
done
echo "==> waiting for the tier to print everything (until its output stops growing for 5 s)"
last=-1; still=0
for _ in $(seq 1 600); do
  printed=$(cat "$DIR"/tier-*.out | wc -l)
  if [ "$printed" -eq "$last" ]; then still=$((still + 1)); else still=0; last=$printed; fi
  [ "$printed" -ge "$kafka" ] && [ $still -ge 10 ] && break
  sleep 0.5
done
for c in 2 3; do kill -TERM "$(eval echo \$tier_$c)"; done
sleep 3
distinct=$(cat "$DIR"/tier-*.out | grep -o '"id":"[^"]*"' | sort -u | wc -l)
printed=$(cat "$DIR"/tier-*.out | wc -l)
echo "acknowledged at the edges: $acked"
echo "records in Kafka:          $kafka"
echo "printed by the tier:       $printed (tier 1: $(wc -l <"$DIR/tier-1.out"), tier 2: $(wc -l <"$DIR/tier-2.out"), tier 3: $(wc -l <"$DIR/tier-3.out"))"
echo "distinct ids printed:      $distinct"
echo "duplicates:                $((printed - distinct)) (what consumer 1 printed after its last commit)"
if [ "$distinct" -ge "$acked" ]; then echo "OK: every acknowledged event came out"; else echo "MISSING: $((acked - distinct))"; exit 1; fi
