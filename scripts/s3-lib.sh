#!/usr/bin/env bash
# Fetches a real S3-compatible server for the tests, s3proxy, from Maven Central: its single
# jar-with-dependencies (the thin classpath fails with a Jackson class error), into DIR. Nothing else
# is downloaded; Java 17 runs it.
# usage: scripts/s3-lib.sh DIR
set -euo pipefail
S3PROXY_VERSION=${S3PROXY_VERSION:-4.1.0}
dir=${1:?usage: scripts/s3-lib.sh DIR}
jar=s3proxy-$S3PROXY_VERSION-jar-with-dependencies.jar
mkdir -p "$dir"
if [ -f "$dir/$jar" ]; then
  exit 0
fi
# Download into a scratch folder and move the jar in last, so an interrupted fetch never leaves a
# partial jar that the check above would take for a good one.
rm -rf "$dir/jar.tmp"
mvn -B -q dependency:copy -Dartifact="org.gaul:s3proxy:$S3PROXY_VERSION:jar:jar-with-dependencies" \
  -DoutputDirectory="$dir/jar.tmp"
mv "$dir/jar.tmp/$jar" "$dir/$jar"
rm -rf "$dir/jar.tmp"
