#!/usr/bin/env bash
# Builds the peer used by scripts/peer-otelcol.sh: the OpenTelemetry Collector, made with its own
# builder (ocb) from the OTLP receiver, the batch processor and the nop and debug exporters, all
# from the Go module proxy. Nothing of it is committed; it lands in DIR/otelcol-peer.
# usage: scripts/otelcol-build.sh DIR        (peer-otelcol.sh uses target/peer)
set -euo pipefail
OTELCOL_VERSION=${OTELCOL_VERSION:-0.165.0}
dir=${1:?usage: scripts/otelcol-build.sh DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [ -x "$dir/otelcol-peer" ] && "$dir/otelcol-peer" --version 2>/dev/null | grep -q "$OTELCOL_VERSION"; then
  exit 0
fi
command -v go >/dev/null || { echo "otelcol-build: go is not installed" >&2; exit 1; }
GOBIN="$dir/bin" go install "go.opentelemetry.io/collector/cmd/builder@v$OTELCOL_VERSION"
cat > "$dir/manifest.yaml" <<YAML
dist:
  name: otelcol-peer
  output_path: $dir/build
  version: $OTELCOL_VERSION
receivers:
  - gomod: go.opentelemetry.io/collector/receiver/otlpreceiver v$OTELCOL_VERSION
processors:
  - gomod: go.opentelemetry.io/collector/processor/batchprocessor v$OTELCOL_VERSION
exporters:
  - gomod: go.opentelemetry.io/collector/exporter/nopexporter v$OTELCOL_VERSION
  - gomod: go.opentelemetry.io/collector/exporter/debugexporter v$OTELCOL_VERSION
YAML
"$dir/bin/builder" --config "$dir/manifest.yaml"
cp "$dir/build/otelcol-peer" "$dir/otelcol-peer"
