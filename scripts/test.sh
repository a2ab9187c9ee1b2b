#!/usr/bin/env bash
# Runs every test of the workspace: formatting, lints, unit, integration and
# end-to-end tests, and the doc examples. Installs what the tests need first.
#
# On a machine without Go, the grpcurl test says SKIPPED; in CI (CI=true)
# nothing is skipped and a missing tool fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

# A clean build writes no incremental caches: they would double the target
# directory's size on disk and a one-off build never reads them.
if [ "${CI:-}" = "true" ]; then
  export CARGO_INCREMENTAL=0
fi

GRPCURL_VERSION=v1.9.4

if command -v go >/dev/null 2>&1; then
  export PATH="$PATH:$(go env GOPATH)/bin"
fi
if ! command -v grpcurl >/dev/null 2>&1; then
  if command -v go >/dev/null 2>&1; then
    echo "==> installing grpcurl $GRPCURL_VERSION (for the README quick-start test)"
    go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION"
  elif [ "${CI:-}" = "true" ]; then
    echo "error: Go is needed to install grpcurl, and CI skips nothing" >&2
    exit 1
  else
    echo "note: Go is not installed: the grpcurl quick-start test will be skipped"
  fi
fi

# The Python example plugin: a venv with its requirements, and its stubs
# generated from the .proto files.
py_dir=examples/plugins/python
if command -v python3 >/dev/null 2>&1; then
  echo "==> Python example plugin: venv, requirements, stubs"
  if [ ! -x "$py_dir/.venv/bin/python" ]; then
    python3 -m venv "$py_dir/.venv"
  fi
  "$py_dir/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$py_dir/requirements.txt"
  PYTHON="$py_dir/.venv/bin/python" bash "$py_dir/gen.sh"
elif [ "${CI:-}" = "true" ]; then
  echo "error: python3 is needed for the Python plugin tests, and CI skips nothing" >&2
  exit 1
else
  echo "note: python3 is not installed: the Python plugin test will be skipped"
fi

# The Go example plugin.
if command -v go >/dev/null 2>&1; then
  echo "==> Go example plugin: build"
  (cd examples/plugins/go && go build -o csv-ingestor .)
elif [ "${CI:-}" = "true" ]; then
  echo "error: Go is needed for the Go plugin tests, and CI skips nothing" >&2
  exit 1
else
  echo "note: Go is not installed: the Go plugin tests will be skipped"
fi

# librdkafka (the Kafka client) is built from its bundled source with cmake.
if ! command -v cmake >/dev/null 2>&1; then
  echo "==> installing cmake (librdkafka is built from source)"
  if command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -q cmake >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q cmake >/dev/null; }
  else
    echo "error: cmake is needed to build librdkafka" >&2
    exit 1
  fi
fi

# tmux: `polku top` is tested in a real terminal.
if ! command -v tmux >/dev/null 2>&1; then
  echo "==> installing tmux (the polku top test runs it in a real terminal)"
  if command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -q tmux >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q tmux >/dev/null; }
  elif [ "${CI:-}" = "true" ]; then
    echo "error: tmux is needed for the polku top test, and CI skips nothing" >&2
    exit 1
  fi
fi

# A real Apache Kafka broker for the Kafka tests (its jars from Maven Central) and a real
# S3-compatible server for the S3 tests (s3proxy, one jar from Maven Central), run by Java.
if command -v mvn >/dev/null 2>&1 && command -v java >/dev/null 2>&1; then
  echo "==> Kafka broker jars (Maven Central)"
  bash scripts/kafka-lib.sh target/kafka
  export POLKU_KAFKA_LIB="$PWD/target/kafka/lib"
  echo "==> s3proxy jar (Maven Central), the S3-compatible server of the S3 tests"
  bash scripts/s3-lib.sh target/s3
  export POLKU_S3PROXY_JAR="$PWD/target/s3/s3proxy-4.1.0-jar-with-dependencies.jar"
else
  echo "error: the Kafka and S3 tests run real servers: they need java (17) and mvn" >&2
  exit 1
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo build (the Rust example plugin, which the end-to-end tests run as a process)"
cargo build --locked -p polku-example-rust-plugin
echo "==> cargo test"
cargo test --workspace --locked
