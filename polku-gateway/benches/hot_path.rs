//! The hot pieces, per event, on batches of 1000 events of about 200 bytes:
//! protobuf decode of a `SendEventRequest`, JSON ingest, the Filter +
//! Transform chain, the whole accept path into the buffer and out to a
//! counting null emitter (with nobody tapping, and with a `polku tap` on
//! accepted events), and fan-out of the same batch to three emitters.
//! Building a batch is not measured.
//!
//! Run: `cargo bench -p polku-gateway --bench hot_path`
#![allow(missing_docs)]

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use polku_gateway::proto::v1::SendEventRequest;
use polku_gateway::proto::v1::send_event_request::Payload;
use polku_gateway::{Config, Event, Filter, Hub, NullEmitter, RunningGateway, Transform};
use prost::Message as _;
use std::time::Duration;
use tower::{Layer, ServiceExt};

const BATCH: usize = 1000;

/// Events like the load generator's: type, source, two metadata entries and
/// a JSON payload, about 200 bytes encoded, no id (the gateway assigns one).
fn batch() -> Vec<Event> {
    let payload = Bytes::from(format!(
        r#"{{"user":"u-1234567","plan":"pro","pad":"{}"}}"#,
        "x".repeat(90)
    ));
    (0..BATCH)
        .map(|_| {
            Event::new("user.signup")
                .with_source("loadgen")
                .with_metadata("region", "eu-north-1")
                .with_metadata("tenant", "t-0042")
                .with_payload(payload.clone())
        })
        .collect()
}

fn request_bytes() -> Bytes {
    SendEventRequest {
        source: "loadgen".into(),
        payload: Some(Payload::Events(polku_gateway::proto::v1::EventBatch {
            events: batch(),
        })),
    }
    .encode_to_vec()
    .into()
}

fn json_bytes() -> Bytes {
    let mut out = br#"{"source":"loadgen","events":["#.to_vec();
    for (i, e) in batch().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        polku_gateway::json::write_event(&mut out, e);
    }
    out.extend_from_slice(b"]}");
    out.into()
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("hot_path");
    g.throughput(Throughput::Elements(BATCH as u64));
    let wire = request_bytes();
    // What the stdout emitter and JSON Kafka records cost per event: each
    // event's JSON line, its JSON payload checked and embedded.
    let events = batch();
    let mut out = Vec::with_capacity(512 * BATCH);
    g.bench_function("json_lines", |b| {
        b.iter(|| {
            out.clear();
            for e in &events {
                polku_gateway::json::write_event(&mut out, e);
                out.push(b'\n');
            }
            out.len()
        })
    });
    g.bench_function("protobuf_decode", |b| {
        b.iter(|| SendEventRequest::decode(wire.clone()).unwrap())
    });
    let json = json_bytes();
    g.bench_function("json_ingest", |b| {
        b.iter(|| polku_gateway::json::events_from_json(&json).unwrap())
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let chain = Filter::new(|e: &Event| e.event_type.starts_with("user.")).layer(
        Transform::new(|mut e: Event| {
            e.metadata.insert("env".into(), "bench".into());
            e
        })
        .layer(polku_gateway::BatchService::new(tower::service_fn(
            |v: Vec<Event>| async move { Ok::<_, polku_gateway::BoxError>(v) },
        ))),
    );
    g.bench_function("filter_transform", |b| {
        b.iter_batched(
            batch,
            |events| rt.block_on(chain.clone().oneshot(events)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// A gateway on loopback with `emitters` null emitters behind a Filter and a
/// Transform, started on `rt`.
fn gateway(rt: &tokio::runtime::Runtime, emitters: usize) -> (RunningGateway, Vec<NullEmitter>) {
    let nulls: Vec<NullEmitter> = (0..emitters)
        .map(|i| NullEmitter::new().named(format!("null-{i}")))
        .collect();
    let mut hub = Hub::new()
        .middleware(Filter::new(|e| e.event_type.starts_with("user.")))
        .middleware(Transform::new(|mut e| {
            e.metadata.insert("env".into(), "bench".into());
            e
        }));
    for n in &nulls {
        hub = hub.emitter(n.clone());
    }
    let mut config = Config::default();
    config.listen.grpc_addr = "127.0.0.1:0".parse().unwrap();
    config.listen.http_addr = None;
    let gw = rt.block_on(hub.build().start(&config)).unwrap();
    (gw, nulls)
}

/// A tap on the accepted stage of `gw` that keeps one event in `sample`,
/// read on a thread of its own: the benchmark counts what the gateway
/// spends on the tap, not the client's decoding.
fn tap(gw: &RunningGateway, sample: u32) {
    use polku_gateway::proto::v1::{TapRequest, admin_client::AdminClient};
    let url = format!("http://{}", gw.grpc_addr());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut client = AdminClient::connect(url).await.unwrap();
            let mut stream = client
                .tap(TapRequest {
                    stage: "accepted".into(),
                    sample,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            while let Ok(Some(_)) = stream.message().await {}
        })
    });
    // Subscribed before the first batch.
    std::thread::sleep(Duration::from_millis(500));
}

/// The accept path into one null emitter and into three, with nobody
/// tapping; and into one with a tap on accepted events, every one or one
/// in 100 (what `polku tap` costs while it runs).
fn pipeline(c: &mut Criterion) {
    let mut g = c.benchmark_group("hot_path");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, emitters, tapped) in [
        ("accept_to_null", 1, None),
        ("fan_out_3", 3, None),
        ("accept_to_null_tap_1_in_100", 1, Some(100)),
        ("accept_to_null_tap_all", 1, Some(1)),
    ] {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (gw, nulls) = gateway(&rt, emitters);
        if let Some(sample) = tapped {
            tap(&gw, sample);
        }
        let mut expected = 0;
        g.bench_function(name, |b| {
            b.iter_batched(
                batch,
                |events| {
                    expected += BATCH as u64;
                    rt.block_on(async {
                        gw.send("bench", events, Duration::from_secs(5))
                            .await
                            .unwrap();
                        // Delivered: every emitter has counted the batch.
                        while nulls.iter().any(|n| n.count() < expected) {
                            tokio::task::yield_now().await;
                        }
                    })
                },
                BatchSize::SmallInput,
            )
        });
        rt.block_on(gw.shutdown()).unwrap();
    }
    g.finish();
}

criterion_group!(benches, decode, pipeline);
criterion_main!(benches);
