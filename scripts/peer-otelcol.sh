#!/usr/bin/env bash
# POLKU against the OpenTelemetry Collector, side by side on the same loads, in one run.
#
#   bash scripts/peer-otelcol.sh [ROUNDS]                 # default 3 rounds, CONCS="1 2 4 8 16"
#   CONCS="$(seq 16)" bash scripts/peer-otelcol.sh 3      # every concurrency from 1 to 16
#
# Each side is pinned to core 0 and the load to core 1. The load is h2load replaying one
# pre-encoded unary gRPC call of BATCH records of about 200 bytes each, with C calls in flight
# (C <= 4: C connections of one call each; above: 4 connections, or fewer when 4 does not divide C,
# with C / connections calls each). The two requests carry the same records:
#   Collector: an OTLP ExportLogsServiceRequest (LogsService/Export), records shaped like
#              telemetrygen's (timestamps, severity Info, a BODY-byte string body, app=server);
#              the collector runs OTLP receiver -> batch processor -> nop exporter.
#   POLKU:     a SendEventRequest (Gateway/SendEvent) of the same records as POLKU events
#              (timestamp, severity Info, source, type, metadata app=server, the body as payload,
#              no id: the gateway gives each a UUIDv7); the real polku-gateway with the null
#              emitter (POLKU_EMIT_NULL=on, stdout off), every default otherwise.
# Delivered records are read from each side's own counters over a window that opens WARMUP
# seconds into the load and lasts WINDOW seconds: POLKU's polku_emitter_events_emitted_total, the
# collector's otelcol_processor_batch_batch_send_size_sum (what the batch processor handed to nop).
# Every (concurrency, side) pair runs once a round, the two sides alternating which goes first.
# Prints one line per run, then one table: median records/s of each, the ratio, and peak RSS.
#
# Needs: h2load (Debian: nghttp2-client), go (to build the collector once with
# scripts/otelcol-build.sh into target/peer), python3, curl, taskset. NO_BUILD=1 skips cargo.
# Knobs: CONCS ROUNDS WARMUP WINDOW BATCH BODY OUT
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
CONCS=${CONCS:-1 2 4 8 16}
WARMUP=${WARMUP:-2}
WINDOW=${WINDOW:-5}
BATCH=${BATCH:-1000}
BODY=${BODY:-150}
OUT=${OUT:-target/peer-bench}
mkdir -p "$OUT"
GRPC=127.0.0.1:50561   # both sides' gRPC port (one runs at a time)
METRICS=127.0.0.1:50562 # POLKU's HTTP (/metrics) or the collector's Prometheus endpoint

for cmd in h2load python3 curl taskset; do
    command -v "$cmd" >/dev/null || { echo "missing $cmd" >&2; exit 1; }
done
if [[ -z ${NO_BUILD:-} ]]; then
    cargo build --release -q -p polku-gateway
fi
bash scripts/otelcol-build.sh target/peer
GW=${GW:-target/release/polku-gateway}
OTELCOL=target/peer/otelcol-peer

cat >"$OUT/otelcol.yaml" <<EOF
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: $GRPC
processors:
  batch: {}
exporters:
  nop: {}
service:
  telemetry:
    logs:
      level: warn
    metrics:
      level: detailed
      readers:
        - pull:
            exporter:
              prometheus:
                host: ${METRICS%:*}
                port: ${METRICS#*:}
  pipelines:
    logs:
      receivers: [otlp]
      processors: [batch]
      exporters: [nop]
EOF

# The two requests, one gRPC frame each, holding the same BATCH records.
PYTHONPATH=scripts python3 - "$BATCH" "$BODY" "$OUT" <<'PY'
import sys, time
from pbwire import f64, grpc_frame, ld, vi
n, body, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
now = time.time_ns()
text = 'x' * body
def any_str(v): return ld(1, v.encode())          # AnyValue.string_value
def kv(k, v): return ld(1, k.encode()) + ld(2, any_str(v))
# OTLP: LogRecord{time, severity_number 9, severity_text, body, attributes, dropped 1, observed}
rec = (f64(1, now) + vi(2, 9) + ld(3, b'Info') + ld(5, any_str(text)) + ld(6, kv('app', 'server'))
       + vi(7, 1) + f64(11, now))
scope = ld(1, ld(1, b'telemetrygen')) + ld(2, rec) * n
otlp = ld(1, ld(1, ld(1, kv('service.name', 'telemetrygen'))) + ld(2, scope))
# POLKU: Event{timestamp 2, source 3, event_type 4, metadata 5, payload 6, severity 8 (INFO = 2)}
event = (vi(2, now) + ld(3, b'telemetrygen') + ld(4, b'log')
         + ld(5, ld(1, b'app') + ld(2, b'server')) + ld(6, text.encode()) + vi(8, 2))
polku = ld(1, b'telemetrygen') + ld(2, ld(1, event) * n)
open(f'{out}/otlp.bin', 'wb').write(grpc_frame(otlp))
open(f'{out}/polku.bin', 'wb').write(grpc_frame(polku))
PY

scrape() { curl -sf --max-time 2 "http://$METRICS/metrics"; }
sum_of() { # sum_of NAME < metrics: the sum over every label set
    awk -v n="$1" '$0 !~ /^#/ { m = $1; sub(/\{.*$/, "", m); if (m == n) s += $NF } END { printf "%.0f\n", s + 0 }'
}
delivered() {
    local m
    m=$(scrape) || { echo 0; return; }
    if [[ $1 == polku ]]; then
        sum_of polku_emitter_events_emitted_total <<<"$m"
    else
        sum_of otelcol_processor_batch_batch_send_size_sum <<<"$m"
    fi
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
now() { date +%s.%N; }

PID=""
stop() {
    if [[ -n $PID ]] && kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$PID" 2>/dev/null || true
    fi
    wait "$PID" 2>/dev/null || true
    PID=""
}
trap stop EXIT

run() { # side concurrency -> appends "side C records/s peakRSS_kB" to runs.txt
    local side=$1 c=$2 conns streams path
    conns=$c
    if ((c > 4)); then
        conns=4
        while ((c % conns)); do conns=$((conns - 1)); done
    fi
    streams=$((c / conns))
    if [[ $side == polku ]]; then
        POLKU_EMIT_NULL=on POLKU_EMIT_STDOUT=off POLKU_LOG_LEVEL=warn POLKU_GRPC_ADDR=$GRPC \
            POLKU_HTTP_ADDR=$METRICS taskset -c 0 "$GW" >/dev/null 2>"$OUT/polku.err" &
        path=polku.v1.Gateway/SendEvent
    else
        taskset -c 0 "$OTELCOL" --config "file:$OUT/otelcol.yaml" >"$OUT/otelcol.log" 2>&1 &
        path=opentelemetry.proto.collector.logs.v1.LogsService/Export
    fi
    PID=$!
    for _ in $(seq 100); do scrape >/dev/null 2>&1 && break; sleep 0.1; done
    scrape >/dev/null || { echo "$side did not start (see $OUT)" >&2; exit 1; }
    local req=$OUT/polku.bin
    [[ $side == otelcol ]] && req=$OUT/otlp.bin
    taskset -c 1 h2load -c "$conns" -m "$streams" -D $((WARMUP + WINDOW + 1)) -d "$req" \
        -H 'content-type: application/grpc' -H 'te: trailers' "http://$GRPC/$path" \
        >"$OUT/h2load.$side.$c.out" 2>&1 &
    local load=$! peak=0 r d0 d1 t0 t1 end
    sleep "$WARMUP"
    d0=$(delivered "$side"); t0=$(now)
    end=$(awk -v t="$t0" -v w="$WINDOW" 'BEGIN { printf "%.3f", t + w }')
    while awk -v t="$(now)" -v e="$end" 'BEGIN { exit !(t < e) }'; do
        r=$(rss_kb "$PID"); ((r > peak)) && peak=$r
        sleep 0.25
    done
    d1=$(delivered "$side"); t1=$(now)
    wait "$load" || true
    stop
    local rate
    rate=$(awk -v a="$d0" -v b="$d1" -v s="$t0" -v e="$t1" 'BEGIN { printf "%.0f", (b - a) / (e - s) }')
    if ((rate == 0)); then # h2load cannot see gRPC statuses: nothing delivered means calls failed
        echo "$side delivered nothing at $c calls in flight (see $OUT/h2load.$side.$c.out, $OUT/$side.*)" >&2
        exit 1
    fi
    echo "$side $c $rate $peak" | tee -a "$OUT/runs.txt"
}

: >"$OUT/runs.txt"
for r in $(seq "$ROUNDS"); do
    for c in $CONCS; do
        if ((r % 2)); then run polku "$c"; run otelcol "$c"; else run otelcol "$c"; run polku "$c"; fi
    done
done

median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
col() { awk -v s="$1" -v c="$2" -v f="$3" '$1 == s && $2 == c { print $f }' "$OUT/runs.txt"; }
echo
echo "POLKU $(git rev-parse --short HEAD) (null emitter) against the OpenTelemetry Collector $("$OTELCOL" --version | awk '{ print $NF }') (OTLP -> batch -> nop)"
echo "each on core 0, h2load on core 1; unary calls of $BATCH records, ${WINDOW}s windows after ${WARMUP}s, $ROUNDS rounds"
echo "| calls in flight | POLKU records/s (median; each run) | Collector records/s (median; each run) | POLKU / Collector | peak RSS MB, POLKU / Collector |"
echo "|---|---|---|---|---|"
for c in $CONCS; do
    p=$(col polku "$c" 3 | median); o=$(col otelcol "$c" 3 | median)
    pm=$(col polku "$c" 4 | sort -n | tail -1); om=$(col otelcol "$c" 4 | sort -n | tail -1)
    printf '| %s | %s (%s) | %s (%s) | %s | %.1f / %.1f |\n' "$c" \
        "$p" "$(col polku "$c" 3 | paste -sd/ - | sed 's#/# / #g')" \
        "$o" "$(col otelcol "$c" 3 | paste -sd/ - | sed 's#/# / #g')" \
        "$(awk -v a="$p" -v b="$o" 'BEGIN { printf "%.2f", b ? a / b : 0 }')" \
        "$(awk -v k="$pm" 'BEGIN { print k / 1024 }')" "$(awk -v k="$om" 'BEGIN { print k / 1024 }')"
done
