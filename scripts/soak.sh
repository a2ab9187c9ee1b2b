#!/usr/bin/env bash
# Soak: hold the polku-gateway binary under steady load for a number of
# minutes and report its resident memory over time. Outside CI.
#
#   bash scripts/soak.sh [MINUTES=10] [EVENTS_PER_SECOND=100000] [MODE=stream]
#
# The gateway runs with the null emitter (every event delivered and counted);
# polku-loadgen sends batches of 100 events of 200 bytes, each with its own
# id, at the fixed rate. Every 15 s the script samples VmRSS from /proc and
# the buffer's fill from /metrics. At the end it compares the first and last
# thirds of the run: the verdict is "no growth" when the last third's mean is
# within 10% or 2 MiB (whichever is larger) of the first's.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=${1:-10}
rate=${2:-100000}
mode=${3:-stream}
interval=15

cargo build --release -q -p polku-gateway -p polku-loadgen --bins
bin=target/release

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc=$(port)
http=$(port)

POLKU_GRPC_ADDR=127.0.0.1:$grpc POLKU_HTTP_ADDR=127.0.0.1:$http POLKU_EMIT_NULL=on \
  POLKU_EMIT_STDOUT=off POLKU_LOG_LEVEL=warn "$bin/polku-gateway" &
gw=$!
trap 'kill $gw $lg 2>/dev/null || true' EXIT
lg=
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$http/healthz" >/dev/null && break
  sleep 0.1
done

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$gw/status"; }
metric() { curl -sf "http://127.0.0.1:$http/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

echo "soak: $minutes min, $rate events/s, mode $mode, gateway pid $gw"
echo "idle RSS: $(rss_kib) KiB"
"$bin/polku-loadgen" --mode "$mode" --grpc "127.0.0.1:$grpc" --http "127.0.0.1:$http" \
  --batch 100 --event-bytes 200 --concurrency 4 --rate "$rate" --ids \
  --warmup 0s --duration "${minutes}m" > /tmp/polku-soak-loadgen.txt 2>&1 &
lg=$!

samples=()
printf '%8s %10s %14s %16s\n' "t(s)" "RSS(KiB)" "buffer_events" "emitted_total"
start=$(date +%s)
while kill -0 $lg 2>/dev/null; do
  sleep $interval
  kill -0 $lg 2>/dev/null || break
  t=$(( $(date +%s) - start ))
  r=$(rss_kib)
  samples+=("$r")
  printf '%8d %10d %14s %16s\n' "$t" "$r" "$(metric polku_buffer_events)" \
    "$(metric 'polku_emitter_events_emitted_total{emitter="null"}')"
done
wait $lg || { echo "the load generator failed:"; cat /tmp/polku-soak-loadgen.txt; exit 1; }
echo
echo "load generator report:"
cat /tmp/polku-soak-loadgen.txt
echo

n=${#samples[@]}
if (( n < 3 )); then echo "too few samples ($n) for a verdict"; exit 0; fi
third=$(( n / 3 ))
printf '%s\n' "${samples[@]}" | awk -v third="$third" -v n="$n" '
  { v[NR] = $1; if ($1 > max) max = $1 }
  END {
    for (i = 1; i <= third; i++) first += v[i];
    for (i = n - third + 1; i <= n; i++) last += v[i];
    first /= third; last /= third;
    growth = last - first;
    printf "RSS: first third mean %.0f KiB, last third mean %.0f KiB, max %d KiB, growth %+.0f KiB (%+.1f%%)\n",
      first, last, max, growth, 100 * growth / first;
    if (growth <= 0.10 * first || growth <= 2048) print "verdict: no growth";
    else { print "verdict: GROWTH"; exit 1 }
  }'
