#!/usr/bin/env bash
# Regenerates ./polkuv1 (committed) from polku-proto/proto, the one source of
# the protocol. There is no protoc here: buf (from npm) compiles the .proto
# files and runs protoc-gen-go and protoc-gen-go-grpc, which `go install`
# puts in a temporary bin directory at the pinned versions below.
# Needs go and npm. Safe to run again.
set -euo pipefail

BUF_VERSION=1.75.0
PROTOC_GEN_GO_VERSION=v1.36.12       # google.golang.org/protobuf, same as go.mod
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2    # google.golang.org/grpc/cmd/protoc-gen-go-grpc

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

bin="$(mktemp -d)"
trap 'rm -rf "$bin"' EXIT
GOBIN="$bin" go install "google.golang.org/protobuf/cmd/protoc-gen-go@${PROTOC_GEN_GO_VERSION}"
GOBIN="$bin" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@${PROTOC_GEN_GO_GRPC_VERSION}"

rm -rf polkuv1
PATH="$bin:$PATH" npm exec --yes "@bufbuild/buf@${BUF_VERSION}" -- generate --template buf.gen.yaml
echo "gen.sh: wrote $here/polkuv1" >&2
