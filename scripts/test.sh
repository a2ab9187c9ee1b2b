#!/usr/bin/env bash
# Runs every test of the workspace: formatting, lints, unit, integration and
# end-to-end tests, and the doc examples. Installs what the tests need first.
#
# On a machine without Go, the grpcurl test says SKIPPED; in CI (CI=true)
# nothing is skipped and a missing tool fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

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

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --workspace --locked
