//! The Kafka emitter against a real Apache Kafka broker (single-node KRaft
//! on loopback, started by the test from the Maven artifacts).

#[path = "common/kafka.rs"]
mod broker;
mod common;

use broker::{Broker, json_ids, read_topic};
use common::{client, events_req, free_port, start_with, test_config, wait_until};
use polku_gateway::{Event, Hub, KafkaEmitter, KafkaKey, Resilience};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

fn numbered(prefix: &str, n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            Event::new("order.placed")
                .with_id(format!("{prefix}-{i}"))
                .with_metadata("tenant", if i % 2 == 0 { "acme" } else { "globex" })
                .with_payload(format!("{{\"n\":{i}}}"))
        })
        .collect()
}

/// Kafka's `Utils.murmur2`, which Java's default partitioner hashes keys with.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        for (i, b) in rest.iter().enumerate() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

#[test]
fn murmur2_is_javas() {
    // From Kafka's UtilsTest.
    assert_eq!(murmur2(b"21") as i32, -973_932_308);
    assert_eq!(murmur2(b"foobar") as i32, -790_332_482);
    assert_eq!(murmur2(b"abc") as i32, 479_470_107);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_land_in_the_topic_each_once_with_key_and_headers() {
    let broker = Broker::start();
    let kafka = KafkaEmitter::builder([broker.bootstrap()])
        .topic("landing-{source}")
        .key(KafkaKey::Metadata("tenant".into()))
        .build()
        .unwrap();
    let gw = start_with(Hub::new().emitter(kafka), test_config()).await;
    let mut c = client(&gw).await;
    let mut sent = BTreeSet::new();
    for round in 0..20 {
        let events = numbered(&format!("r{round}"), 250);
        sent.extend(events.iter().map(|e| e.id.to_string()));
        let reply = c.send_event(events_req("shop/eu", events)).await.unwrap();
        assert_eq!(reply.into_inner().accepted, 250);
    }
    wait_until("5000 delivered", || {
        gw.stats().emitters["kafka"].emitted == 5000
    })
    .await;
    // `shop/eu` is not a topic name: it became `shop_eu`.
    let records = tokio::task::spawn_blocking(move || {
        read_topic(
            &broker.bootstrap(),
            "landing-shop_eu",
            5000,
            Duration::from_secs(60),
        )
    })
    .await
    .unwrap();
    let ids = json_ids(&records);
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), 5000, "every event once, no more");
    assert_eq!(unique, sent);
    // Keyed by tenant: each tenant's events in one partition; metadata as headers.
    let mut partitions: BTreeMap<Vec<u8>, BTreeSet<i32>> = BTreeMap::new();
    for r in &records {
        let key = r.key.clone().expect("a key");
        assert_eq!(
            r.headers,
            vec![("tenant".to_owned(), key.clone())],
            "metadata as headers"
        );
        partitions.entry(key).or_default().insert(r.partition);
    }
    assert_eq!(partitions.len(), 2);
    assert!(partitions.values().all(|p| p.len() == 1), "{partitions:?}");
    // In the partition Java's producer picks for the key (murmur2), so that
    // POLKU and Java clients writing one key keep it in one partition.
    for (key, p) in &partitions {
        let java = (murmur2(key) & 0x7fff_ffff) % 4;
        assert_eq!(*p, BTreeSet::from([java as i32]), "key {key:?}");
    }
    let v: serde_json::Value = serde_json::from_slice(&records[0].value).unwrap();
    assert_eq!(v["event_type"], "order.placed");
    assert_eq!(v["source"], "shop/eu");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_fails_alone_and_says_why() {
    let broker = Broker::start();
    let kafka = KafkaEmitter::builder([broker.bootstrap()])
        .topic("sizes")
        .build()
        .unwrap();
    let resilient = Resilience::new()
        .failure_store(100, 64 << 20)
        .unwrap()
        .wrap(kafka);
    let mut config = test_config();
    config.limits.max_message_bytes = 8 << 20;
    let gw = start_with(Hub::new().emitter(resilient), config).await;
    let mut c = client(&gw).await;
    let mut events = numbered("small", 3);
    events.insert(
        1,
        Event::new("blob")
            .with_id("huge")
            .with_payload(vec![b'x'; 2 << 20]),
    );
    c.send_event(events_req("s", events)).await.unwrap();
    // The store has it during the call; the counts come after the call.
    wait_until("the large one stored and the call counted", || {
        let s = gw.stats().emitters["kafka"];
        s.failure_store_events == 1 && s.emitted + s.failed == 4
    })
    .await;
    let s = gw.stats().emitters["kafka"];
    assert_eq!((s.emitted, s.failed), (3, 1), "{s:?}");
    let url = format!(
        "http://{}/v1/emitters/kafka/failures",
        gw.http_addr().unwrap()
    );
    let body: serde_json::Value =
        serde_json::from_str(&reqwest::get(url).await.unwrap().text().await.unwrap()).unwrap();
    let f = &body["failures"][0];
    assert_eq!(f["event"]["id"], "huge", "{body}");
    assert_eq!(f["retryable"], false, "{body}");
    assert!(
        f["reason"].as_str().unwrap().contains("too large"),
        "{body}"
    );
    let records = tokio::task::spawn_blocking(move || {
        read_topic(&broker.bootstrap(), "sizes", 3, Duration::from_secs(60))
    })
    .await
    .unwrap();
    assert_eq!(
        json_ids(&records).into_iter().collect::<BTreeSet<_>>(),
        ["small-0", "small-1", "small-2"].map(String::from).into()
    );
}

/// The real binary, configured by the environment; the broker goes down
/// while events keep coming, and comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_midway_gets_every_accepted_event_once_it_is_back() {
    let mut broker = Broker::start();
    let (grpc, http) = (free_port(), free_port());
    let mut gateway = common::gateway_process(grpc, http)
        .env("POLKU_EMIT_KAFKA_BROKERS", broker.bootstrap())
        .env("POLKU_EMIT_KAFKA_TOPIC", "outage")
        .env("POLKU_EMIT_TIMEOUT", "60s")
        .spawn()
        .unwrap();
    let mut c = common::connect_port(grpc).await;
    let mut sent = BTreeSet::new();
    let mut send = async |c: &mut polku_gateway::proto::v1::gateway_client::GatewayClient<
        tonic::transport::Channel,
    >,
                          prefix: &str| {
        for r in 0..5 {
            let events = numbered(&format!("{prefix}{r}"), 200);
            sent.extend(events.iter().map(|e| e.id.to_string()));
            let reply = c.send_event(events_req("s", events)).await.unwrap();
            assert_eq!(reply.into_inner().accepted, 200);
        }
    };
    send(&mut c, "before-").await;
    let metrics = format!("http://127.0.0.1:{http}/metrics");
    let emitted = async || {
        let m = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
        common::metric(&m, "polku_emitter_events_emitted_total{emitter=\"kafka\"}")
    };
    for _ in 0..200 {
        if emitted().await == 1000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(emitted().await, 1000);
    broker.stop();
    // Accepted while the broker is down: they wait in the gateway.
    send(&mut c, "during-").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        emitted().await,
        1000,
        "nothing delivered with the broker down"
    );
    broker.start_again();
    send(&mut c, "after-").await;
    for _ in 0..1200 {
        if emitted().await == 3000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(emitted().await, 3000, "delivered once the broker is back");
    let bootstrap = broker.bootstrap();
    let records = tokio::task::spawn_blocking(move || {
        read_topic(&bootstrap, "outage", 3000, Duration::from_secs(60))
    })
    .await
    .unwrap();
    let ids = json_ids(&records);
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(unique, sent, "every accepted event is in the topic");
    assert_eq!(ids.len(), 3000, "each once: the producer is idempotent");
    common::sigterm(&gateway);
    let status = gateway.wait().await.unwrap();
    assert!(status.success(), "{status:?}");
}
