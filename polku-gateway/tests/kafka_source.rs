//! The Kafka source against a real Apache Kafka broker (single-node KRaft
//! on loopback, started by the test from the Maven artifacts): records in,
//! events out each once, bad records to the dead-letter topic, offsets
//! committed only for what is safe, two gateways sharing a group with one
//! killed, gateway to Kafka to gateway, and a full buffer pausing.

#[path = "common/kafka.rs"]
mod broker;
mod common;

use base64::Engine as _;
use broker::{Broker, read_topic};
use common::{gateway_process, holds_within, metric, sigterm, start};
use polku_gateway::{ExternalIngestor, Hub, JsonIngestor, KafkaSource, MemoryEmitter};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncBufReadExt as _;

/// Writes `values` to `topic` (keyed by position, so they spread over the
/// partitions) and waits until the broker has them all.
fn produce(bootstrap: &str, topic: &str, values: &[Vec<u8>]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    for (i, v) in values.iter().enumerate() {
        let key = i.to_string();
        loop {
            match p.send(BaseRecord::to(topic).key(&key).payload(v)) {
                Ok(()) => break,
                Err((_, _)) => {
                    p.poll(Duration::from_millis(10));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

fn json_event(id: &str) -> Vec<u8> {
    format!(r#"{{"id":"{id}","event_type":"order.placed","payload":"eA=="}}"#).into_bytes()
}

/// The group's committed offsets on `topic`, summed over its partitions,
/// and the topic's end offsets, summed.
fn committed_and_end(bootstrap: &str, group: &str, topic: &str) -> (i64, i64) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut end = 0;
    for p in md.topics()[0].partitions() {
        tpl.add_partition(topic, p.id());
        end += c
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .unwrap()
            .1;
    }
    // The group's coordinator may still be starting: ask again a while.
    let mut answer = c.committed_offsets(tpl.clone(), Duration::from_secs(10));
    for _ in 0..40 {
        if answer.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
        answer = c.committed_offsets(tpl.clone(), Duration::from_secs(10));
    }
    let committed = answer
        .unwrap()
        .elements()
        .iter()
        .map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => o,
            _ => 0,
        })
        .sum();
    (committed, end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_come_out_each_once_bad_ones_reach_the_dead_letter_topic_and_offsets_commit() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    // 3000 events, with 7 records that are not events among them.
    let mut values = Vec::new();
    let mut sent = BTreeSet::new();
    for i in 0..3000 {
        let id = format!("k-{i}");
        values.push(json_event(&id));
        sent.insert(id);
        if i % 500 == 250 {
            values.push(format!("not json {i}").into_bytes());
        }
    }
    values.push(br#"{"event_type": 7}"#.to_vec());
    let b = bootstrap.clone();
    let v = values.clone();
    tokio::task::spawn_blocking(move || produce(&b, "orders", &v))
        .await
        .unwrap();

    let mem = MemoryEmitter::new("mem");
    let source = KafkaSource::builder([bootstrap.clone()], ["orders"])
        .group("g-once")
        .dead_letter_topic("orders-dlq")
        .commit_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let gw = start(
        Hub::new()
            .ingestor(JsonIngestor::new())
            .emitter(mem.clone())
            .source(source),
    )
    .await;
    assert!(
        holds_within(Duration::from_secs(60), || mem.len() >= 3000).await,
        "only {} of 3000 events came out",
        mem.len()
    );
    let ids = mem.ids();
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), 3000, "each event once");
    assert_eq!(unique, sent);
    assert!(
        mem.events().iter().all(|e| e.source == "orders"),
        "events without a source get the topic's name"
    );

    // The seven bad records, each with why and where it came from.
    let b = bootstrap.clone();
    let dead = tokio::task::spawn_blocking(move || {
        read_topic(&b, "orders-dlq", 7, Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert_eq!(
        dead.len(),
        7,
        "every bad record once in the dead-letter topic"
    );
    let mut offsets = BTreeSet::new();
    for r in &dead {
        let h: BTreeMap<&str, String> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        assert_eq!(h["polku-topic"], "orders");
        assert!(!h["polku-error"].is_empty());
        offsets.insert((h["polku-partition"].clone(), h["polku-offset"].clone()));
        assert!(
            r.value.starts_with(b"not json") || r.value == br#"{"event_type": 7}"#,
            "the record as it was: {:?}",
            String::from_utf8_lossy(&r.value)
        );
    }
    assert_eq!(offsets.len(), 7);
    let s = &gw.stats().sources[0];
    assert_eq!((s.records, s.accepted), (3007, 3000));
    assert_eq!((s.undecodable, s.dead_lettered), (7, 7));
    let text = reqwest::get(format!("http://{}/metrics", gw.http_addr().unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(
            &text,
            "polku_source_records_dead_lettered_total{source=\"kafka\"}"
        ),
        7
    );
    gw.shutdown().await.unwrap();
    // Everything was safe and the last commit came at shutdown.
    let (committed, end) =
        tokio::task::spawn_blocking(move || committed_and_end(&bootstrap, "g-once", "orders"))
            .await
            .unwrap();
    assert_eq!(end, 3007);
    assert_eq!(committed, end, "offsets committed up to the end");
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_pauses_the_partitions_and_nothing_is_lost() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let values: Vec<Vec<u8>> = (0..20_000).map(|i| json_event(&format!("p-{i}"))).collect();
    let b = bootstrap.clone();
    tokio::task::spawn_blocking(move || produce(&b, "big", &values))
        .await
        .unwrap();
    let gate = common::GateEmitter::closed("gate");
    let source = KafkaSource::builder([bootstrap.clone()], ["big"])
        .group("g-pause")
        .commit_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let gw = start(
        Hub::new()
            .ingestor(JsonIngestor::new())
            .buffer_capacity(2000)
            .emitter(gate.clone())
            .source(source),
    )
    .await;
    // The destination is stuck: the buffer fills and the source pauses.
    assert!(
        holds_within(Duration::from_secs(60), || gw
            .stats()
            .sources
            .first()
            .is_some_and(|s| s.paused))
        .await,
        "the source paused"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = gw.stats().sources[0].clone();
    // What it read is bounded by the buffer and the batches in hand
    // (capacity 2000, two batches of 1000 queued, one held, one gathering).
    assert!(
        s.records <= 2000 + 4 * 1000 + 100,
        "read {} records while paused",
        s.records
    );
    let depth = gw.stats().buffer_depth;
    assert!(
        (1000..=2000).contains(&depth),
        "the buffer is full: {depth}"
    );
    // Nothing was committed past what is safe (none is: nothing delivered).
    let b = bootstrap.clone();
    let (committed, _) =
        tokio::task::spawn_blocking(move || committed_and_end(&b, "g-pause", "big"))
            .await
            .unwrap();
    assert_eq!(committed, 0, "nothing delivered, nothing committed");
    // The lag says how much is waiting in Kafka for this group.
    assert!(
        holds_within(Duration::from_secs(15), || gw.stats().sources[0].lag
            >= 10_000)
        .await,
        "lag {}",
        gw.stats().sources[0].lag
    );
    // The destination comes back: everything arrives, each once.
    gate.open();
    assert!(
        holds_within(Duration::from_secs(60), || gate.inner.len() >= 20_000).await,
        "only {} of 20000 delivered",
        gate.inner.len()
    );
    let ids: BTreeSet<String> = gate.inner.ids().into_iter().collect();
    assert_eq!(ids.len(), 20_000);
    assert_eq!(gate.inner.len(), 20_000, "each once");
    let s = gw.stats().sources[0].clone();
    assert!(!s.paused && s.pauses >= 1, "{s:?}");
    assert!(
        holds_within(Duration::from_secs(15), || gw.stats().sources[0].lag == 0).await,
        "lag {} once all is delivered and committed",
        gw.stats().sources[0].lag
    );
    gw.shutdown().await.unwrap();
    let (committed, end) =
        tokio::task::spawn_blocking(move || committed_and_end(&bootstrap, "g-pause", "big"))
            .await
            .unwrap();
    assert_eq!((committed, end), (20_000, 20_000));
}

/// The ids a gateway process prints on stdout, as they come.
fn collect_ids(
    child: &mut tokio::process::Child,
    into: Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<()> {
    let out = child.stdout.take().unwrap();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(out).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) {
                into.lock()
                    .unwrap()
                    .push(v["id"].as_str().unwrap_or_default().to_owned());
            }
        }
    })
}

fn consumer_gateway(bootstrap: &str, topic: &str, group: &str) -> tokio::process::Command {
    consumer_gateway_on(common::free_port(), bootstrap, topic, group)
}

fn consumer_gateway_on(
    http: u16,
    bootstrap: &str,
    topic: &str,
    group: &str,
) -> tokio::process::Command {
    let mut cmd = gateway_process(common::free_port(), http);
    cmd.env("POLKU_INGEST_KAFKA_BROKERS", bootstrap)
        .env("POLKU_INGEST_KAFKA_TOPICS", topic)
        .env("POLKU_INGEST_KAFKA_GROUP", group)
        // A member that dies is noticed after 6 s (the broker's least).
        .env(
            "POLKU_INGEST_KAFKA_OPTIONS",
            "session.timeout.ms=6000;heartbeat.interval.ms=1000",
        );
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_a_group_and_one_killed_midway_loses_nothing() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    const N: usize = 40_000;
    // The topic exists (4 partitions) before the gateways join.
    let b = bootstrap.clone();
    tokio::task::spawn_blocking(move || produce(&b, "shared", &[json_event("g-first")]))
        .await
        .unwrap();
    let (out_a, out_b) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    );
    let (http_a, http_b) = (common::free_port(), common::free_port());
    let mut a = consumer_gateway_on(http_a, &bootstrap, "shared", "g-two")
        .spawn()
        .unwrap();
    let mut b = consumer_gateway_on(http_b, &bootstrap, "shared", "g-two")
        .spawn()
        .unwrap();
    let ra = collect_ids(&mut a, out_a.clone());
    let rb = collect_ids(&mut b, out_b.clone());
    // Both are in the group, two partitions each, before the records come.
    let assigned = |http: u16| async move {
        let m = reqwest::get(format!("http://127.0.0.1:{http}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        m.lines()
            .find(|l| l.starts_with("polku_source_assigned_partitions{"))?
            .rsplit(' ')
            .next()?
            .parse::<u64>()
            .ok()
    };
    let mut split = false;
    for _ in 0..300 {
        if assigned(http_a).await == Some(2) && assigned(http_b).await == Some(2) {
            split = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(split, "the two gateways share the four partitions");
    let first: Vec<Vec<u8>> = (0..N / 2).map(|i| json_event(&format!("g-{i}"))).collect();
    let bs = bootstrap.clone();
    tokio::task::spawn_blocking(move || produce(&bs, "shared", &first))
        .await
        .unwrap();
    // Both take part before one is killed.
    assert!(
        holds_within(Duration::from_secs(60), || {
            out_a.lock().unwrap().len() > 1000 && out_b.lock().unwrap().len() > 1000
        })
        .await,
        "both gateways print events: {} and {}",
        out_a.lock().unwrap().len(),
        out_b.lock().unwrap().len()
    );
    // The second half arrives while one of them dies without a word.
    let rest: Vec<Vec<u8>> = (N / 2..N).map(|i| json_event(&format!("g-{i}"))).collect();
    let bs = bootstrap.clone();
    let producing = tokio::task::spawn_blocking(move || produce(&bs, "shared", &rest));
    a.start_kill().unwrap();
    a.wait().await.unwrap();
    ra.await.unwrap();
    producing.await.unwrap();
    let all_seen = || {
        let mut seen: BTreeSet<String> = out_a.lock().unwrap().iter().cloned().collect();
        seen.extend(out_b.lock().unwrap().iter().cloned());
        seen.len()
    };
    // N records and the one that made the topic.
    assert!(
        holds_within(Duration::from_secs(90), || all_seen() > N).await,
        "only {} of {} records came out",
        all_seen(),
        N + 1
    );
    sigterm(&b);
    assert!(b.wait().await.unwrap().success());
    rb.await.unwrap();
    let printed = out_a.lock().unwrap().len() + out_b.lock().unwrap().len();
    let duplicates = printed - (N + 1);
    eprintln!(
        "{N} records: {} printed by the killed gateway, {} by the other, {duplicates} duplicates",
        out_a.lock().unwrap().len(),
        out_b.lock().unwrap().len()
    );
    assert!(
        out_a.lock().unwrap().len() < N,
        "the killed one did not do it all"
    );
    let (committed, end) =
        tokio::task::spawn_blocking(move || committed_and_end(&bootstrap, "g-two", "shared"))
            .await
            .unwrap();
    assert_eq!((committed, end), (N as i64 + 1, N as i64 + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_to_kafka_to_gateway_to_stdout() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    // The edge: HTTP in, Kafka out (protobuf records).
    let (edge_grpc, edge_http) = (common::free_port(), common::free_port());
    let mut edge = gateway_process(edge_grpc, edge_http)
        .env("POLKU_EMIT_KAFKA_BROKERS", &bootstrap)
        .env("POLKU_EMIT_KAFKA_TOPIC", "edge-{source}")
        .env("POLKU_EMIT_KAFKA_FORMAT", "protobuf")
        .spawn()
        .unwrap();
    drop(common::connect_port(edge_grpc).await);
    let client = reqwest::Client::new();
    let mut sent = BTreeSet::new();
    for batch in 0..20 {
        let events: Vec<serde_json::Value> = (0..100)
            .map(|i| {
                let id = format!("e-{batch}-{i}");
                sent.insert(id.clone());
                serde_json::json!({"id": id, "event_type": "cart.updated", "metadata": {"tenant": "acme"}})
            })
            .collect();
        let r = client
            .post(format!("http://127.0.0.1:{edge_http}/v1/ingest/shop"))
            .header("content-type", "application/json")
            .body(serde_json::Value::Array(events).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    // The consumer tier (Kafka in, stdout out) starts once the topic exists
    // and reads it from the start.
    let mut tier = consumer_gateway(&bootstrap, "edge-shop", "g-tier")
        .env("POLKU_INGEST_KAFKA_FORMAT", "protobuf")
        .spawn()
        .unwrap();
    let printed = Arc::new(Mutex::new(Vec::new()));
    let reader = collect_ids(&mut tier, printed.clone());
    assert!(
        holds_within(Duration::from_secs(90), || printed.lock().unwrap().len()
            >= 2000)
        .await,
        "only {} of 2000 came through",
        printed.lock().unwrap().len()
    );
    sigterm(&edge);
    sigterm(&tier);
    assert!(edge.wait().await.unwrap().success());
    assert!(tier.wait().await.unwrap().success());
    reader.await.unwrap();
    let got = printed.lock().unwrap().clone();
    let unique: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(unique, sent);
    assert_eq!(got.len(), 2000, "each once when nothing crashed");
    drop(broker);
}

#[test]
fn the_source_settings_are_read_and_checked() {
    use polku_gateway::Config;
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        Config::from_lookup(move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        })
    };
    let c = env(&[
        ("POLKU_INGEST_KAFKA_BROKERS", "127.0.0.1:9092"),
        ("POLKU_INGEST_KAFKA_TOPICS", "a, b"),
        ("POLKU_INGEST_KAFKA_GROUP", "tier"),
        ("POLKU_INGEST_KAFKA_FORMAT", "protobuf"),
        ("POLKU_INGEST_KAFKA_DLQ_TOPIC", "dead"),
        ("POLKU_INGEST_KAFKA_OPTIONS", "sasl.password=hunter2"),
    ])
    .unwrap();
    let k = &c.kafka_source;
    assert_eq!(k.topics, ["a", "b"]);
    assert_eq!((k.group.as_str(), k.format.as_str()), ("tier", "protobuf"));
    assert_eq!(k.dead_letter_topic.as_deref(), Some("dead"));
    assert!(!format!("{c:?}").contains("hunter2"));
    assert!(k.source().unwrap().is_some());
    let err = env(&[("POLKU_INGEST_KAFKA_BROKERS", "127.0.0.1:9092")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("POLKU_INGEST_KAFKA_TOPICS"), "{err}");
    let err = env(&[
        ("POLKU_INGEST_KAFKA_BROKERS", "127.0.0.1:9092"),
        ("POLKU_INGEST_KAFKA_TOPICS", "a"),
        ("POLKU_INGEST_KAFKA_OPTIONS", "no.such.thing=1"),
    ])
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("POLKU_INGEST_KAFKA_OPTIONS") && err.contains("no.such.thing"),
        "{err}"
    );
    assert!(env(&[]).unwrap().kafka_source.source().unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_in_a_plugins_format_are_read_by_the_plugin() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    // 40 CSV records of 10 rows each, and one with a broken row.
    let mut values: Vec<Vec<u8>> = (0..40)
        .map(|r| {
            let mut csv = String::from("id,event_type");
            for i in 0..10 {
                csv.push_str(&format!("\nc-{r}-{i},sensor.read"));
            }
            csv.into_bytes()
        })
        .collect();
    values.insert(17, b"id,event_type\nfine,sensor.read\nbroken".to_vec());
    let b = bootstrap.clone();
    tokio::task::spawn_blocking(move || produce(&b, "readings", &values))
        .await
        .unwrap();
    let csv = common::plugins::serve_ingestor(common::plugins::Csv).await;
    let mem = MemoryEmitter::new("mem");
    let source = KafkaSource::builder([bootstrap.clone()], ["readings"])
        .group("g-csv")
        .format("csv")
        .dead_letter_topic("readings-dlq")
        .build()
        .unwrap();
    let gw = start(
        Hub::new()
            .ingestor(ExternalIngestor::new("csv", format!("http://{csv}")).with_formats(["csv"]))
            .emitter(mem.clone())
            .source(source),
    )
    .await;
    assert!(
        holds_within(Duration::from_secs(60), || mem.len() >= 400).await,
        "only {} of 400 rows came out",
        mem.len()
    );
    // The plugin keeps each cell as metadata.
    let ids: BTreeSet<String> = mem
        .events()
        .iter()
        .map(|e| {
            e.metadata
                .get("id")
                .map(|v| v.to_string())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(ids.len(), 400);
    assert!(
        ids.contains("c-39-9") && !ids.contains("fine"),
        "the broken record went whole"
    );
    assert!(mem.events().iter().all(|e| e.event_type == "sensor.read"));
    let b = bootstrap.clone();
    let dead = tokio::task::spawn_blocking(move || {
        read_topic(&b, "readings-dlq", 1, Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert_eq!(dead.len(), 1);
    assert!(dead[0].value.ends_with(b"broken"));
    let why = &dead[0]
        .headers
        .iter()
        .find(|(k, _)| k == "polku-error")
        .unwrap()
        .1;
    assert!(
        String::from_utf8_lossy(why).contains("fields"),
        "the plugin's reason: {}",
        String::from_utf8_lossy(why)
    );
    gw.shutdown().await.unwrap();
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_durable_buffer_offsets_commit_once_on_disk_and_a_kill_loses_nothing() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    const N: usize = 5000;
    // Three records no ingestor can read, with no dead-letter topic: the
    // gateway keeps them (on disk, for the buffer is), lists them, and
    // commits past them.
    const BAD: [usize; 3] = [17, 2500, 4998];
    let mut values: Vec<Vec<u8>> = (0..N).map(|i| json_event(&format!("d-{i}"))).collect();
    for (k, at) in BAD.iter().enumerate() {
        values.insert(*at, format!("not json {k}").into_bytes());
    }
    const RECORDS: usize = N + BAD.len();
    let b = bootstrap.clone();
    tokio::task::spawn_blocking(move || produce(&b, "durable-in", &values))
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("polku-kafka-durable-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let http = common::free_port();
    let gateway = || {
        let mut cmd = consumer_gateway_on(http, &bootstrap, "durable-in", "g-durable");
        cmd.env("POLKU_BUFFER_DIR", &dir);
        cmd
    };
    // Its stdout is not read: the emitter stalls once the pipe is full, yet
    // the offsets are committed, because the events are on disk.
    let mut a = gateway().spawn().unwrap();
    let b = bootstrap.clone();
    let committed = || {
        let b = b.clone();
        async move {
            tokio::task::spawn_blocking(move || committed_and_end(&b, "g-durable", "durable-in").0)
                .await
                .unwrap()
        }
    };
    let mut all_committed = false;
    for _ in 0..300 {
        if committed().await == RECORDS as i64 {
            all_committed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        all_committed,
        "committed {} of {RECORDS}",
        committed().await
    );
    let metrics = common::get_text(
        &reqwest::Client::new(),
        format!("http://127.0.0.1:{http}/metrics"),
    )
    .await;
    assert_eq!(
        metric(
            &metrics,
            "polku_source_records_unreadable_kept_total{source=\"kafka\"}"
        ),
        3
    );
    a.start_kill().unwrap();
    a.wait().await.unwrap();
    // What it wrote before the kill is still in the pipe.
    let before = Arc::new(Mutex::new(Vec::new()));
    collect_ids(&mut a, before.clone()).await.unwrap();
    let printed_before = before.lock().unwrap().len();
    assert!(
        printed_before < N,
        "the kill came with events still on disk only"
    );

    // Restarted on the same directory: the log gives back what was not
    // delivered; Kafka has nothing more for the group.
    let mut again = gateway().spawn().unwrap();
    let after = Arc::new(Mutex::new(Vec::new()));
    let reader = collect_ids(&mut again, after.clone());
    let seen = || {
        let mut s: BTreeSet<String> = before.lock().unwrap().iter().cloned().collect();
        s.extend(after.lock().unwrap().iter().cloned());
        s
    };
    assert!(
        holds_within(Duration::from_secs(60), || seen().len() >= N).await,
        "{} of {N} delivered across the kill",
        seen().len()
    );
    // The unreadable records outlived the kill, each once, with where they
    // came from and why.
    let (status, listed) = common::json_reply(reqwest::Client::new().get(format!(
        "http://127.0.0.1:{http}/v1/sources/kafka/unreadable"
    )))
    .await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["total"], 3, "{listed}");
    let mut payloads: Vec<String> = listed["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let e = &r["event"];
            assert_eq!(e["event_type"], "polku.unreadable", "{r}");
            assert_eq!(e["metadata"]["kafka.topic"], "durable-in", "{r}");
            assert!(e["metadata"]["kafka.offset"].is_string(), "{r}");
            assert!(!r["reason"].as_str().unwrap().is_empty(), "{r}");
            assert_eq!(r["retryable"], false, "{r}");
            // UTF-8 text is written as a string, other bytes in base64.
            match (e["payload"].as_str(), e["payload_base64"].as_str()) {
                (Some(text), None) => text.to_owned(),
                (None, Some(b64)) => String::from_utf8(
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .unwrap(),
                )
                .unwrap(),
                _ => panic!("no payload: {r}"),
            }
        })
        .collect();
    payloads.sort();
    assert_eq!(payloads, ["not json 0", "not json 1", "not json 2"]);
    let metrics = common::get_text(
        &reqwest::Client::new(),
        format!("http://127.0.0.1:{http}/metrics"),
    )
    .await;
    assert_eq!(
        metric(
            &metrics,
            "polku_source_records_unreadable_kept_total{source=\"kafka\"}"
        ),
        0,
        "kept before the kill, by the first process"
    );
    sigterm(&again);
    assert!(again.wait().await.unwrap().success());
    reader.await.unwrap();
    let expected: BTreeSet<String> = (0..N).map(|i| format!("d-{i}")).collect();
    assert_eq!(seen(), expected);
    eprintln!(
        "{printed_before} printed before the kill, {} after it",
        after.lock().unwrap().len()
    );
    let _ = std::fs::remove_dir_all(&dir);
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_no_ingestor_reads_holds_the_records_and_shows_in_the_counts() {
    let broker = Broker::start();
    let bootstrap = broker.bootstrap();
    let b = bootstrap.clone();
    tokio::task::spawn_blocking(move || produce(&b, "typo", &[json_event("t-1")]))
        .await
        .unwrap();
    let mem = MemoryEmitter::new("mem");
    let source = KafkaSource::builder([bootstrap.clone()], ["typo"])
        .group("g-typo")
        .format("jsn")
        .build()
        .unwrap();
    let gw = start(
        Hub::new()
            .ingestor(JsonIngestor::new())
            .emitter(mem.clone())
            .source(source),
    )
    .await;
    // Tried again and again (a plugin reading it may register), never
    // skipped: nothing goes in and nothing is committed.
    assert!(
        holds_within(Duration::from_secs(60), || gw.stats().sources[0]
            .retried_batches
            >= 3)
        .await,
        "{:?}",
        gw.stats().sources
    );
    let s = gw.stats().sources[0].clone();
    assert_eq!((s.records, s.accepted, s.undecodable), (1, 0, 0), "{s:?}");
    assert!(mem.is_empty());
    gw.shutdown().await.unwrap();
    let (committed, end) =
        tokio::task::spawn_blocking(move || committed_and_end(&bootstrap, "g-typo", "typo"))
            .await
            .unwrap();
    assert_eq!((committed, end), (0, 1), "the record waits in Kafka");
}
