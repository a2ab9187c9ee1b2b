//! Key tables cost the same however long their keys are: thousands of
//! 64 KiB sources through a per-source RateLimiter and Throttle would hold
//! hundreds of MB if the tables kept the keys themselves.

use polku_core::Event;
use polku_middleware::{RateLimiter, Throttle, identity};
use std::time::Duration;
use tower::{Layer, ServiceExt};

const KEY_BYTES: usize = 64 * 1024;
const KEYS: usize = 4_000;

/// This process's resident memory, in bytes (Linux).
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    let kib: usize = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

/// `KEYS` events with distinct sources of `KEY_BYTES`, fifty at a time.
fn batches() -> impl Iterator<Item = Vec<Event>> {
    let pad = "x".repeat(KEY_BYTES - 8);
    (0..KEYS / 50).map(move |b| {
        (0..50)
            .map(|i| Event::new("t").with_source(format!("{:08}{pad}", b * 50 + i)))
            .collect()
    })
}

#[tokio::test(flavor = "current_thread")]
async fn long_sources_do_not_grow_the_key_tables() {
    // One test, so nothing else in this process allocates meanwhile.
    let limiter = RateLimiter::new(1_000.0, 10).unwrap().per_source();
    let throttle = Throttle::per_source(10, Duration::from_secs(60)).unwrap();
    for (name, svc) in [
        ("rate limiter", limiter.layer(identity()).boxed_clone()),
        ("throttle", throttle.layer(identity()).boxed_clone()),
    ] {
        let before = rss();
        let mut passed = 0;
        for batch in batches() {
            passed += svc.clone().oneshot(batch).await.unwrap().len();
        }
        let grown = rss().saturating_sub(before);
        assert_eq!(passed, KEYS, "{name}: every new source passes");
        assert!(
            grown < 32 << 20,
            "{name}: {KEYS} sources of {KEY_BYTES} bytes grew memory by {grown} bytes"
        );
    }
    assert_eq!(limiter.keys(), KEYS);
    assert_eq!(throttle.tracked_sources(), KEYS);
}
