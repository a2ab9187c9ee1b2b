# Sourced by the benchmark scripts: start_s3proxy DIR PORT [CPUS] fetches s3proxy (scripts/s3-lib.sh)
# and starts it on 127.0.0.1:PORT with a filesystem backend in DIR/data (signatures checked; the
# identity is polku / polku-secret), pinned to CPUS with taskset when given; sets `s3proxy` to its
# pid and returns once it listens. A bucket is a folder: mkdir -p "DIR/data/BUCKET".
start_s3proxy() {
  local dir=$1 port=$2 cpus=${3:-} pin=()
  bash scripts/s3-lib.sh target/s3 >/dev/null
  rm -rf "$dir" && mkdir -p "$dir/data"
  cat > "$dir/s3proxy.properties" <<PROPS
s3proxy.endpoint=http://127.0.0.1:$port
s3proxy.authorization=aws-v2-or-v4
s3proxy.identity=polku
s3proxy.credential=polku-secret
jclouds.provider=filesystem-nio2
jclouds.filesystem.basedir=$dir/data
PROPS
  [ -n "$cpus" ] && pin=(taskset -c "$cpus")
  LOG_LEVEL=warn "${pin[@]}" java -Xmx256m -XX:+UseSerialGC \
    -jar target/s3/s3proxy-4.1.0-jar-with-dependencies.jar \
    --properties "$dir/s3proxy.properties" >"$dir/s3proxy.log" 2>&1 &
  s3proxy=$!
  for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.2; done
}
