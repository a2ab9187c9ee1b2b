//! A real Apache Kafka broker for the tests: single-node KRaft on loopback,
//! run by Java from the Maven artifacts that `scripts/kafka-lib.sh` fetches
//! (`POLKU_KAFKA_LIB`, else `target/kafka/lib`, fetched on first use). Each
//! broker has its own ports and data directory; it stops at drop, and dies
//! with the test process if that dies first.
#![allow(unreachable_pub, dead_code)]

use rdkafka::Message as _;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The broker's jars, fetched once for every test binary.
fn lib_dir() -> PathBuf {
    if let Ok(d) = std::env::var("POLKU_KAFKA_LIB") {
        return PathBuf::from(d);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/kafka");
    let lib = dir.join("lib");
    crate::common::fetch_once(&lib, &dir, "kafka-lib.sh", "the Kafka broker");
    lib
}

/// One running (or stopped) broker.
pub struct Broker {
    pub port: u16,
    dir: PathBuf,
    lib: PathBuf,
    child: Option<Child>,
}

impl Broker {
    /// Formats a fresh broker and starts it; returns once it answers.
    pub fn start() -> Broker {
        let lib = lib_dir();
        let (port, controller) = (crate::common::free_port(), crate::common::free_port());
        let dir = std::env::temp_dir().join(format!("polku-kafka-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let props = format!(
            "process.roles=broker,controller\n\
             node.id=1\n\
             controller.quorum.voters=1@127.0.0.1:{controller}\n\
             listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
             advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
             controller.listener.names=CONTROLLER\n\
             inter.broker.listener.name=PLAINTEXT\n\
             log.dirs={}\n\
             num.partitions=4\n\
             auto.create.topics.enable=true\n\
             offsets.topic.replication.factor=1\n\
             offsets.topic.num.partitions=4\n\
             transaction.state.log.replication.factor=1\n\
             transaction.state.log.min.isr=1\n\
             share.coordinator.state.topic.replication.factor=1\n\
             share.coordinator.state.topic.min.isr=1\n\
             group.initial.rebalance.delay.ms=0\n",
            dir.join("data").display()
        );
        std::fs::write(dir.join("server.properties"), props).unwrap();
        let classpath = format!("{}/*", lib.display());
        let id = Command::new("java")
            .args(["-cp", &classpath, "kafka.tools.StorageTool", "random-uuid"])
            .stderr(Stdio::null())
            .output()
            .expect("java runs");
        let id = String::from_utf8(id.stdout).unwrap();
        let formatted = Command::new("java")
            .args(["-cp", &classpath, "kafka.tools.StorageTool", "format", "-t"])
            .arg(id.trim())
            .arg("-c")
            .arg(dir.join("server.properties"))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(formatted.success(), "kafka-storage format failed");
        let mut b = Broker {
            port,
            dir,
            lib,
            child: None,
        };
        b.start_again();
        b
    }

    /// `host:port` to bootstrap from.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker (again, on its data); returns once it answers.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = crate::common::spawn_jvm(
            "",
            &format!(
                "-Xmx512m -XX:+UseSerialGC -cp '{}/*' kafka.Kafka '{}'",
                self.lib.display(),
                self.dir.join("server.properties").display()
            ),
            &self.dir.join("broker.log"),
        );
        self.child = Some(child);
        self.wait_ready();
    }

    /// Stops the broker as an operator would (SIGTERM), and waits.
    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            crate::common::stop_jvm(c);
        }
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("log_level", "0")
            .create()
            .unwrap();
        loop {
            if consumer
                .fetch_metadata(None, Duration::from_secs(2))
                .is_ok_and(|m| !m.brokers().is_empty())
            {
                return;
            }
            let log = std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default();
            assert!(
                Instant::now() < deadline,
                "the Kafka broker did not answer within 90 s:\n{}",
                &log[log.len().saturating_sub(3000)..]
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One record read back.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub partition: i32,
}

/// Reads `topic` from the start until `want` records came or `within`
/// passed; returns what came.
pub fn read_topic(bootstrap: &str, topic: &str, want: usize, within: Duration) -> Vec<Record> {
    use rdkafka::message::Headers as _;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{}", uuid_like()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => out.push(Record {
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().unwrap_or_default().to_vec(),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default(),
                partition: m.partition(),
            }),
            Some(Err(e)) => eprintln!("reading {topic}: {e}"),
            None => {}
        }
    }
    out
}

/// The `id` of each JSON record.
pub fn json_ids(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            v["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{}-{}", std::process::id(), N.fetch_add(1, Relaxed))
}
