# Sourced by the benchmark scripts: start_broker DIR PORT PARTITIONS [CPUS] fetches the broker's
# jars (scripts/kafka-lib.sh), formats a single-node KRaft broker in DIR listening on 127.0.0.1:PORT
# (its controller on PORT+1), starts it (pinned to CPUS with taskset when given), sets `broker` to
# its pid, and returns once it listens.
start_broker() {
  local dir=$1 port=$2 partitions=$3 cpus=${4:-} lib
  bash scripts/kafka-lib.sh target/kafka >/dev/null
  lib=$PWD/target/kafka/lib
  rm -rf "$dir" && mkdir -p "$dir"
  cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$((port + 1))
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$((port + 1))
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
num.partitions=$partitions
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
PROPS
  java -cp "$lib/*" kafka.tools.StorageTool format -t "$(java -cp "$lib/*" kafka.tools.StorageTool random-uuid 2>/dev/null)" \
    -c "$dir/server.properties" >/dev/null 2>&1
  if [ -n "$cpus" ]; then
    taskset -c "$cpus" java -Xmx1g -XX:+UseSerialGC -cp "$lib/*" kafka.Kafka "$dir/server.properties" >"$dir/broker.log" 2>&1 &
  else
    java -Xmx1g -XX:+UseSerialGC -cp "$lib/*" kafka.Kafka "$dir/server.properties" >"$dir/broker.log" 2>&1 &
  fi
  broker=$!
  for _ in $(seq 1 120); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.5; done
}
