#!/usr/bin/env bash
# Fetches a real Apache Kafka broker (single-node KRaft is enough for the tests) from Maven Central:
# the broker's jars and a log4j binding, into DIR/lib. Nothing else is downloaded; Java 17 runs it.
# usage: scripts/kafka-lib.sh DIR
set -euo pipefail
KAFKA_VERSION=${KAFKA_VERSION:-4.1.1}
dir=${1:?usage: scripts/kafka-lib.sh DIR}
mkdir -p "$dir"
if [ -f "$dir/lib/kafka_2.13-$KAFKA_VERSION.jar" ]; then
  exit 0
fi
cat > "$dir/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.polku.test</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>2.24.3</version>
      <scope>runtime</scope>
    </dependency>
  </dependencies>
</project>
POM
rm -rf "$dir/lib.tmp"
(cd "$dir" && mvn -B -q dependency:copy-dependencies -DoutputDirectory=lib.tmp -DincludeScope=runtime)
rm -rf "$dir/lib"
mv "$dir/lib.tmp" "$dir/lib"
