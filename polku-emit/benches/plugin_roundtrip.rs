//! Round trip of an emit to a plugin over loopback gRPC: ExternalEmitter on
//! one side, a plugin served with polku-plugin-sdk (which counts and drops)
//! on the other. Prints p50, p99 and p99.9 for batches of 1 and 100 events.
//!
//! Run: `cargo bench -p polku-emit --bench plugin_roundtrip`
#![allow(missing_docs, clippy::print_stdout)]

use polku_core::{EmitError, Emitter, Event};
use polku_emit::ExternalEmitter;
use polku_plugin_sdk::testing::Harness;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Null;

#[async_trait::async_trait]
impl Emitter for Null {
    fn name(&self) -> &str {
        "null"
    }
    async fn emit(&self, _: &[Event]) -> Result<(), EmitError> {
        Ok(())
    }
}

fn event(i: usize) -> Event {
    Event::new("user.signup")
        .with_id(format!("01a22301-06a2-767d-ae26-{i:012x}"))
        .with_source("bench")
        .with_metadata("region", "eu-north-1")
        .with_payload(vec![b'x'; 120])
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let plugin = Harness::emitter(Null).await;
        let emitter = ExternalEmitter::new("null", plugin.addr().to_string());
        for batch in [1usize, 100] {
            let events: Vec<Event> = (0..batch).map(event).collect();
            // Warm up: connection, allocator, caches.
            for _ in 0..2_000 {
                emitter.emit(&events).await.unwrap();
            }
            let rounds = if batch == 1 { 20_000 } else { 5_000 };
            let mut took = Vec::with_capacity(rounds);
            let all = Instant::now();
            for _ in 0..rounds {
                let t = Instant::now();
                emitter.emit(&events).await.unwrap();
                took.push(t.elapsed());
            }
            let total = all.elapsed();
            took.sort_unstable();
            println!(
                "plugin emit, batch of {batch:>3}: p50 {:>7.1} µs  p99 {:>7.1} µs  p99.9 {:>7.1} µs  ({} calls, {:.0} calls/s, {:.0} events/s)",
                pct(&took, 0.50).as_secs_f64() * 1e6,
                pct(&took, 0.99).as_secs_f64() * 1e6,
                pct(&took, 0.999).as_secs_f64() * 1e6,
                rounds,
                rounds as f64 / total.as_secs_f64(),
                (rounds * batch) as f64 / total.as_secs_f64(),
            );
        }
        plugin.stop().await;
    });
}
