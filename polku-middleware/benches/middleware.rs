//! Nanoseconds per event for each middleware, on batches of 1000 events of
//! about 200 bytes (a 36-character UUID id, source, type, a metadata entry,
//! a 120-byte payload). Batch construction is not measured.
//!
//! Each batch is built right before it is measured, so it is in the cache
//! as a freshly decoded batch is in the gateway (`BatchSize::PerIteration`).
//! With `POLKU_BENCH_COLD=1` batches are built ahead in groups instead, and
//! have left the cache when their turn comes: a worst case for middleware
//! that writes to every event (Router).
//!
//! Run: `cargo bench -p polku-middleware --bench middleware`
#![allow(missing_docs)]

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use polku_core::Event;
use polku_middleware::{
    BatchService, Deduplicator, Filter, RateLimiter, Router, Sampler, Transform, identity,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tower::{Layer, ServiceExt};

const BATCH: usize = 1000;
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A fresh batch with ids never used before (so de-duplication does real work).
fn batch() -> Vec<Event> {
    let payload = Bytes::from(vec![b'x'; 120]);
    (0..BATCH)
        .map(|i| {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let kind = if i % 2 == 0 {
                "user.signup"
            } else {
                "system.tick"
            };
            Event::new(kind)
                .with_id(format!("01a22301-06a2-767d-ae26-{n:012x}"))
                .with_source(format!("source-{}", i % 100))
                .with_metadata("region", "eu-north-1")
                .with_payload(payload.clone())
        })
        .collect()
}

fn bench_layer(c: &mut Criterion, name: &str, svc: BatchService) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("middleware");
    g.throughput(Throughput::Elements(BATCH as u64));
    let size = if std::env::var_os("POLKU_BENCH_COLD").is_some() {
        BatchSize::SmallInput
    } else {
        BatchSize::PerIteration
    };
    g.bench_function(name, |b| {
        b.iter_batched(
            batch,
            |events| rt.block_on(svc.clone().oneshot(events)).unwrap(),
            size,
        )
    });
    g.finish();
}

fn boxed<L>(layer: L) -> BatchService
where
    L: Layer<BatchService>,
    L::Service: tower::Service<Vec<Event>, Response = Vec<Event>, Error = polku_core::BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as tower::Service<Vec<Event>>>::Future: Send + 'static,
{
    BatchService::new(layer.layer(identity()))
}

fn all(c: &mut Criterion) {
    bench_layer(c, "baseline (no middleware)", identity());
    bench_layer(
        c,
        "filter",
        boxed(Filter::new(|e| e.event_type.starts_with("user."))),
    );
    bench_layer(
        c,
        "filter (keeps all: the decision alone)",
        boxed(Filter::new(|e| !e.event_type.is_empty())),
    );
    bench_layer(
        c,
        "filter (drops all: decision + freeing events)",
        boxed(Filter::new(|e| e.event_type.is_empty())),
    );
    bench_layer(
        c,
        "transform",
        boxed(Transform::new(|mut e| {
            e.severity = 2;
            e
        })),
    );
    bench_layer(
        c,
        "router (2 rules)",
        boxed(
            Router::new()
                .route(|e| e.event_type.starts_with("user."), ["crm"])
                .route(|e| e.source == "source-7", ["audit"])
                .default_route(["stdout"]),
        ),
    );
    bench_layer(c, "sampler (by id, 10%)", boxed(Sampler::new(0.1).unwrap()));
    bench_layer(
        c,
        "sampler (by id, 99.9%: the decision alone)",
        boxed(Sampler::new(0.999).unwrap()),
    );
    bench_layer(
        c,
        "sampler (random, 10%)",
        boxed(Sampler::new(0.1).unwrap().random()),
    );
    bench_layer(
        c,
        "dedup (new ids, 100k window)",
        boxed(Deduplicator::new(Duration::from_secs(60), 100_000).unwrap()),
    );
    bench_layer(
        c,
        "dedup (new ids, 10k window)",
        boxed(Deduplicator::new(Duration::from_secs(60), 10_000).unwrap()),
    );
    bench_layer(
        c,
        "rate_limit (global)",
        boxed(RateLimiter::new(1e12, 1_000_000).unwrap()),
    );
    bench_layer(
        c,
        "rate_limit (per source, 100 keys)",
        boxed(RateLimiter::new(1e12, 1_000_000).unwrap().per_source()),
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = all
}
criterion_main!(benches);
