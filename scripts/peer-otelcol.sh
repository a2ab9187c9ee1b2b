#!/usr/bin/env bash
# Peer measurement: the OpenTelemetry Collector on the same machine and with the same pinning
# as POLKU's end-to-end figures (BENCHMARKS.md, "End to end").
#
# The collector (OTLP gRPC receiver -> batch processor -> nop exporter) is pinned to core 0,
# telemetrygen (OTLP logs over gRPC, batches of BATCH_SIZE records) to core 1. Throughput is
# read from the collector's own counters on its Prometheus endpoint:
#   accepted = otelcol_receiver_accepted_log_records        (records the OTLP receiver accepted)
#   exported = otelcol_processor_batch_batch_send_size_sum  (records the batch processor handed
#              to the nop exporter; nop is not built on exporterhelper, so there is no
#              otelcol_exporter_sent_log_records counter for it)
# Resident memory comes from /proc/<pid>/status (VmRSS sampled, VmHWM at the end).
#
# Needs (not built by this script, nothing here runs cargo):
#   ~/go/bin/otelcol-peer  built with the OpenTelemetry Collector Builder v0.165.0 from
#                          otlpreceiver, batchprocessor, nopexporter (and debugexporter) v0.165.0
#   ~/go/bin/telemetrygen  go install github.com/open-telemetry/opentelemetry-collector-contrib/cmd/telemetrygen@v0.161.0
# (see the manifest in the comment at the end of this file)
#
# Usage: scripts/peer-otelcol.sh            # one run
#        RUNS=3 scripts/peer-otelcol.sh     # three runs, a fresh collector each
#        LOADGEN=h2load scripts/peer-otelcol.sh
#                           # instead of telemetrygen, h2load posts one pre-encoded gRPC
#                           # ExportLogsServiceRequest (BATCH_SIZE records shaped like telemetrygen's,
#                           # encoded by python3 below) over WORKERS connections: a load generator
#                           # that costs almost nothing per record, to find the collector's ceiling
# Knobs (environment): RUNS WORKERS DURATION WARMUP BODY_BYTES BATCH_SIZE GRPC_PORT METRICS_PORT
#                      IDLE_WAIT LOADGEN OTELCOL TELEMETRYGEN OUT_DIR
set -euo pipefail

OTELCOL=${OTELCOL:-$HOME/go/bin/otelcol-peer}
TELEMETRYGEN=${TELEMETRYGEN:-$HOME/go/bin/telemetrygen}
RUNS=${RUNS:-1}
WORKERS=${WORKERS:-4}
DURATION=${DURATION:-20}      # seconds the load generator runs
WARMUP=${WARMUP:-3}           # seconds after the load starts before the measured window opens
BODY_BYTES=${BODY_BYTES:-150} # 150-byte body -> ~200 bytes per encoded OTLP log record
BATCH_SIZE=${BATCH_SIZE:-1000}
GRPC_PORT=${GRPC_PORT:-4317}
METRICS_PORT=${METRICS_PORT:-8888}
IDLE_WAIT=${IDLE_WAIT:-3}     # seconds the collector sits idle before idle RSS is read
LOADGEN=${LOADGEN:-telemetrygen} # telemetrygen | h2load
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/peer-otelcol.XXXXXX)}
mkdir -p "$OUT_DIR"

[[ -x $OTELCOL ]] || { echo "missing $OTELCOL (see the header of this script)" >&2; exit 1; }
case $LOADGEN in
    telemetrygen) [[ -x $TELEMETRYGEN ]] || { echo "missing $TELEMETRYGEN (see the header of this script)" >&2; exit 1; } ;;
    h2load) for cmd in h2load python3; do command -v "$cmd" >/dev/null || { echo "missing $cmd" >&2; exit 1; }; done ;;
    *) echo "LOADGEN must be telemetrygen or h2load" >&2; exit 1 ;;
esac
for cmd in taskset curl awk; do
    command -v "$cmd" >/dev/null || { echo "missing $cmd" >&2; exit 1; }
done
if (( DURATION <= WARMUP + 2 )); then
    echo "DURATION must exceed WARMUP + 2" >&2; exit 1
fi

COL_PID=""
TG_PID=""
cleanup() {
    local p
    for p in "$TG_PID" "$COL_PID"; do
        if [[ -n $p ]] && kill -0 "$p" 2>/dev/null; then
            kill "$p" 2>/dev/null || true
            for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
            kill -9 "$p" 2>/dev/null || true
            wait "$p" 2>/dev/null || true
        fi
    done
    TG_PID=""
    COL_PID=""
}
trap cleanup EXIT
trap 'exit 130' INT TERM

CFG="$OUT_DIR/otelcol.yaml"
cat >"$CFG" <<EOF
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:${GRPC_PORT}
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
                host: 127.0.0.1
                port: ${METRICS_PORT}
  pipelines:
    logs:
      receivers: [otlp]
      processors: [batch]
      exporters: [nop]
EOF

BODY=$(head -c "$BODY_BYTES" /dev/zero | tr '\0' 'x')
if [[ $LOADGEN == h2load ]]; then
    # One gRPC frame (5-byte prefix + ExportLogsServiceRequest) with BATCH_SIZE log records laid
    # out as telemetrygen's: service.name resource, scope "telemetrygen", timestamps, severity 9
    # "Info", a string body of BODY_BYTES, attribute app=server, dropped_attributes_count 1.
    PYTHONPATH="$(dirname "$0")" python3 - "$BATCH_SIZE" "$BODY_BYTES" >"$OUT_DIR/request.bin" <<'PY'
import sys, time
from pbwire import f64, grpc_frame, ld, vi
def s(v): return ld(1, v.encode())  # AnyValue.string_value
def kv(k, v): return ld(1, k.encode()) + ld(2, s(v))
n, body = int(sys.argv[1]), int(sys.argv[2])
now = time.time_ns()
rec = (f64(1, now) + vi(2, 9) + ld(3, b'Info') + ld(5, s('x' * body)) + ld(6, kv('app', 'server'))
       + vi(7, 1) + f64(11, now))
scope = ld(1, ld(1, b'telemetrygen')) + ld(2, rec) * n
msg = ld(1, ld(1, ld(1, kv('service.name', 'telemetrygen'))) + ld(2, scope))
sys.stdout.buffer.write(grpc_frame(msg))
PY
    LOAD_CMD=(h2load -c "$WORKERS" -m 1 -D "$DURATION" -d "$OUT_DIR/request.bin"
        -H 'content-type: application/grpc' -H 'te: trailers'
        "http://127.0.0.1:${GRPC_PORT}/opentelemetry.proto.collector.logs.v1.LogsService/Export")
    LOAD_DESC="h2load -c $WORKERS -m 1 -D $DURATION, one pre-encoded request of $BATCH_SIZE records ($(stat -c %s "$OUT_DIR/request.bin") bytes), body $BODY_BYTES bytes"
else
    LOAD_CMD=("$TELEMETRYGEN" logs
        --otlp-endpoint "127.0.0.1:${GRPC_PORT}" --otlp-insecure
        --workers "$WORKERS" --rate 0 --duration "${DURATION}s"
        --batch --batch-size "$BATCH_SIZE" --body "$BODY")
    LOAD_DESC="telemetrygen logs --workers $WORKERS --rate 0 --duration ${DURATION}s --batch-size $BATCH_SIZE, body $BODY_BYTES bytes"
fi
CLK_TCK=$(getconf CLK_TCK)

now() { date +%s.%N; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu_ticks() { # utime + stime of a process (all its threads)
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0
}
sys_busy_ticks() { # all CPUs: user + nice + system + irq + softirq + steal
    awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat
}
scrape() { curl -sf --max-time 2 "http://127.0.0.1:${METRICS_PORT}/metrics"; }
# metric NAME < scrape: the sum over all label sets (with or without a _total suffix), 0 if absent
metric() {
    awk -v n="$1" '
        $0 !~ /^#/ {
            name = $1; sub(/\{.*$/, "", name)
            if (name == n || name == n "_total") { s += $NF }
        }
        END { printf "%.0f\n", s + 0 }'
}
counters() { # "accepted exported bytes_exported refused+failed"
    local m
    m=$(scrape) || { echo "0 0 0 0"; return; }
    printf '%s %s %s %s\n' \
        "$(metric otelcol_receiver_accepted_log_records <<<"$m")" \
        "$(metric otelcol_processor_batch_batch_send_size_sum <<<"$m")" \
        "$(metric otelcol_processor_batch_batch_send_size_bytes_sum <<<"$m")" \
        $(( $(metric otelcol_receiver_refused_log_records <<<"$m") + $(metric otelcol_receiver_failed_log_records <<<"$m") ))
}
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

RESULTS=()
for run in $(seq 1 "$RUNS"); do
    for port in "$GRPC_PORT" "$METRICS_PORT"; do
        if port_busy "$port"; then echo "port $port already in use" >&2; exit 1; fi
    done

    taskset -c 0 "$OTELCOL" --config "file:$CFG" >"$OUT_DIR/otelcol.$run.log" 2>&1 &
    COL_PID=$!
    for _ in $(seq 1 100); do scrape >/dev/null 2>&1 && break; sleep 0.1; done
    scrape >/dev/null || { echo "collector did not start, see $OUT_DIR/otelcol.$run.log" >&2; exit 1; }
    sleep "$IDLE_WAIT"
    idle_rss=$(rss_kb "$COL_PID")

    read -r a0 e0 b0 _ < <(counters)
    col_cpu0=$(cpu_ticks "$COL_PID")
    t0=$(now)
    taskset -c 1 "${LOAD_CMD[@]}" >"$OUT_DIR/$LOADGEN.$run.log" 2>&1 &
    TG_PID=$!
    tg_cpu0=$(cpu_ticks "$TG_PID")

    peak_rss=$idle_rss
    win_open=""
    win_close=""
    top_taken=""
    while kill -0 "$TG_PID" 2>/dev/null; do
        r=$(rss_kb "$COL_PID"); (( r > peak_rss )) && peak_rss=$r
        el=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { print b - a }')
        if [[ -z $win_open ]] && awk -v e="$el" -v w="$WARMUP" 'BEGIN { exit !(e >= w) }'; then
            read -r wa0 we0 _ _ < <(counters); wt0=$(now)
            wc0=$(cpu_ticks "$COL_PID"); wg0=$(cpu_ticks "$TG_PID"); ws0=$(sys_busy_ticks)
            win_open=1
        fi
        if [[ -n $win_open && -z $top_taken ]] && awk -v e="$el" -v d="$DURATION" 'BEGIN { exit !(e >= d / 2) }'; then
            top -b -n1 -w 200 >"$OUT_DIR/top.$run.txt" 2>&1 || true
            top_taken=1
        fi
        if [[ -n $win_open && -z $win_close ]] && awk -v e="$el" -v d="$DURATION" 'BEGIN { exit !(e >= d - 1) }'; then
            read -r wa1 we1 _ _ < <(counters); wt1=$(now)
            wc1=$(cpu_ticks "$COL_PID"); wg1=$(cpu_ticks "$TG_PID"); ws1=$(sys_busy_ticks)
            win_close=1
        fi
        sleep 0.25
    done
    tg_cpu1=$(cpu_ticks "$TG_PID") || true
    wait "$TG_PID" && tg_rc=0 || tg_rc=$?
    TG_PID=""
    t1=$(now)
    sleep 0.5 # the batch processor flushes on a 200 ms timeout
    read -r a1 e1 b1 bad < <(counters)
    col_cpu1=$(cpu_ticks "$COL_PID")
    hwm=$(hwm_kb "$COL_PID")
    r=$(rss_kb "$COL_PID"); (( r > peak_rss )) && peak_rss=$r
    cleanup

    if [[ -z $win_close ]]; then
        echo "run $run: $LOADGEN ended early (rc=$tg_rc), see $OUT_DIR/$LOADGEN.$run.log" >&2
        exit 1
    fi
    line=$(awk -v run="$run" \
        -v a0="$a0" -v e0="$e0" -v a1="$a1" -v e1="$e1" -v b0="$b0" -v b1="$b1" -v t0="$t0" -v t1="$t1" -v d="$DURATION" \
        -v wa0="$wa0" -v we0="$we0" -v wa1="$wa1" -v we1="$we1" -v wt0="$wt0" -v wt1="$wt1" \
        -v wc0="$wc0" -v wc1="$wc1" -v wg0="$wg0" -v wg1="$wg1" -v ws0="$ws0" -v ws1="$ws1" -v hz="$CLK_TCK" \
        -v idle="$idle_rss" -v peak="$peak_rss" -v hwm="$hwm" -v tgrc="$tg_rc" -v bad="$bad" '
        BEGIN {
            w = wt1 - wt0
            acc_w = (wa1 - wa0) / w; exp_w = (we1 - we0) / w
            acc_all = (a1 - a0) / d; exp_all = (e1 - e0) / d
            bpr = (e1 - e0) > 0 ? (b1 - b0) / (e1 - e0) : 0
            ccpu = 100 * (wc1 - wc0) / hz / w; gcpu = 100 * (wg1 - wg0) / hz / w
            ocpu = 100 * (ws1 - ws0) / hz / w - ccpu - gcpu; if (ocpu < 0) ocpu = 0
            printf "%-4s %12.0f %12.0f %12.0f %12.0f %8.1f %8.1f %8.1f %7.0f %7.0f %7.0f %6.0f %4s %6s\n",
                run, acc_w, exp_w, acc_all, exp_all, idle / 1024, peak / 1024, hwm / 1024,
                ccpu, gcpu, ocpu, bpr, tgrc, bad
        }')
    RESULTS+=("$line")
    {
        echo "run $run: accepted $a0 -> $a1, exported $e0 -> $e1 ($LOADGEN ${DURATION}s, wall $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s)"
        echo "run $run window: accepted $wa0 -> $wa1, exported $we0 -> $we1, $(awk -v a="$wt0" -v b="$wt1" 'BEGIN { printf "%.2f", b - a }') s"
    } >>"$OUT_DIR/counters.txt"
    sleep 1
done

echo
echo "OpenTelemetry Collector $("$OTELCOL" --version 2>/dev/null | awk '{print $NF}') (otlp grpc -> batch -> nop), core 0;"
echo "load, core 1: $LOAD_DESC"
echo "window = from ${WARMUP}s after the load starts to 1s before it stops; whole = counter delta over the run / ${DURATION}s"
echo "CPU% = share of one core over the window (collector on core 0, load generator on core 1; other% = the rest of the machine, 200 = both cores, anything well above 0 means the figures are disturbed); B/rec = bytes per exported record (batch processor's proto size); bad = refused + failed records"
printf "%-4s %12s %12s %12s %12s %8s %8s %8s %7s %7s %7s %6s %4s %6s\n" \
    run "acc/s win" "exp/s win" "acc/s whole" "exp/s whole" "idle MB" "peak MB" "HWM MB" "col%" "load%" "other%" "B/rec" "rc" "bad"
for l in "${RESULTS[@]}"; do echo "$l"; done
echo "(MB = MiB of VmRSS; logs, config, counters and a top snapshot per run in $OUT_DIR)"

# Collector build (OpenTelemetry Collector Builder), for reference:
#   go install go.opentelemetry.io/collector/cmd/builder@v0.165.0
#   cat > manifest.yaml <<'YAML'
#   dist:
#     name: otelcol-peer
#     output_path: /tmp/otelcol-build/out
#     version: 0.165.0
#   receivers:
#     - gomod: go.opentelemetry.io/collector/receiver/otlpreceiver v0.165.0
#   processors:
#     - gomod: go.opentelemetry.io/collector/processor/batchprocessor v0.165.0
#   exporters:
#     - gomod: go.opentelemetry.io/collector/exporter/nopexporter v0.165.0
#     - gomod: go.opentelemetry.io/collector/exporter/debugexporter v0.165.0
#   YAML
#   ~/go/bin/builder --config manifest.yaml && cp /tmp/otelcol-build/out/otelcol-peer ~/go/bin/
