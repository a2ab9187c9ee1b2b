//! Drop events whose key was already seen within a time window.
//!
//! The key is the event id by default, or any function of the event. Events
//! with an empty key are never treated as duplicates of each other. Memory is
//! bounded: at most `max_entries` keys are remembered, the oldest forgotten
//! first, and each key costs 16 bytes of hash plus its time, never a copy of
//! the key. The work per event is O(1): one hash and one table lookup.
//!
//! ```
//! use polku_core::Event;
//! use polku_middleware::{Deduplicator, identity};
//! use std::time::Duration;
//! use tower::{Layer, ServiceExt};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dedup = Deduplicator::new(Duration::from_secs(60), 100_000).unwrap();
//! let svc = dedup.layer(identity());
//! let batch = vec![Event::new("t").with_id("a"), Event::new("t").with_id("a")];
//! assert_eq!(svc.oneshot(batch).await.unwrap().len(), 1);
//! # });
//! ```
//!
//! A key is remembered from the first time it is seen: a duplicate does not
//! extend the window. Keys are compared by a 128-bit hash, so two different
//! keys are mistaken for each other with a chance of about 2^-64.

use crate::drops::{DropCounts, DropReason, register};
use crate::hash::{FastHash, hash128};
use polku_core::Event;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, Service};

/// A de-duplication setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DedupError {
    /// The window is zero.
    #[error("the de-duplication window (ttl) must be longer than zero")]
    ZeroTtl,
    /// No entries allowed.
    #[error("max_entries must be at least 1")]
    ZeroEntries,
}

type KeyFn = dyn Fn(&Event) -> &str + Send + Sync;

struct State {
    /// Key hash → when it was first seen.
    seen: HashMap<u128, Instant, FastHash>,
    /// Keys in the order they were first seen, for expiry and eviction.
    order: VecDeque<(u128, Instant)>,
}

impl State {
    /// Forgets one entry from the front of the order; false when empty.
    fn pop_oldest(&mut self) -> bool {
        match self.order.pop_front() {
            Some((h, at)) => {
                // The key may have been seen again since (a newer record is
                // further back): forget it only if this record is current.
                if self.seen.get(&h) == Some(&at) {
                    self.seen.remove(&h);
                }
                true
            }
            None => false,
        }
    }
}

/// A layer that drops events whose key was seen within `ttl`.
#[derive(Clone)]
pub struct Deduplicator {
    ttl: Duration,
    max_entries: usize,
    key: Arc<KeyFn>,
    state: Arc<Mutex<State>>,
    drops: DropCounts,
}

impl fmt::Debug for Deduplicator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deduplicator")
            .field("ttl", &self.ttl)
            .field("max_entries", &self.max_entries)
            .field("remembered", &self.len())
            .field("drops", &self.drops)
            .finish()
    }
}

impl Deduplicator {
    /// Remembers up to `max_entries` event ids for `ttl` each.
    pub fn new(ttl: Duration, max_entries: usize) -> Result<Self, DedupError> {
        if ttl.is_zero() {
            return Err(DedupError::ZeroTtl);
        }
        if max_entries == 0 {
            return Err(DedupError::ZeroEntries);
        }
        Ok(Deduplicator {
            ttl,
            max_entries,
            key: Arc::new(|e: &Event| e.id.as_str()),
            state: Arc::new(Mutex::new(State {
                seen: HashMap::with_capacity_and_hasher(max_entries.min(1 << 16), FastHash),
                order: VecDeque::with_capacity(max_entries.min(1 << 16)),
            })),
            drops: DropCounts::default(),
        })
    }

    /// Uses this key instead of the id. An empty key is never a duplicate.
    pub fn by_key<F>(mut self, key: F) -> Self
    where
        F: Fn(&Event) -> &str + Send + Sync + 'static,
    {
        self.key = Arc::new(key);
        self
    }

    /// The drop counters (reason: duplicate).
    pub fn drops(&self) -> &DropCounts {
        &self.drops
    }

    /// How many keys are remembered now.
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .seen
            .len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<S> Layer<S> for Deduplicator {
    type Service = DedupService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        register("dedup", &self.drops);
        DedupService {
            inner,
            dedup: self.clone(),
        }
    }
}

/// The service made by [`Deduplicator`].
#[derive(Clone)]
pub struct DedupService<S> {
    inner: S,
    dedup: Deduplicator,
}

impl<S: fmt::Debug> fmt::Debug for DedupService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DedupService")
            .field("inner", &self.inner)
            .field("dedup", &self.dedup)
            .finish()
    }
}

impl<S> DedupService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> Service<Vec<Event>> for DedupService<S>
where
    S: Service<Vec<Event>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut batch: Vec<Event>) -> Self::Future {
        let d = &self.dedup;
        let before = batch.len();
        if before > 0 {
            let now = Instant::now();
            // One lock per batch.
            let mut st = d.state.lock().unwrap_or_else(PoisonError::into_inner);
            while st
                .order
                .front()
                .is_some_and(|(_, at)| now.duration_since(*at) >= d.ttl)
            {
                st.pop_oldest();
            }
            batch.retain(|e| {
                let key = (d.key)(e);
                if key.is_empty() {
                    return true;
                }
                let h = hash128(key.as_bytes());
                if let Some(at) = st.seen.get(&h) {
                    if now.duration_since(*at) < d.ttl {
                        return false;
                    }
                }
                st.seen.insert(h, now);
                st.order.push_back((h, now));
                while st.seen.len() > d.max_entries {
                    if !st.pop_oldest() {
                        break;
                    }
                }
                true
            });
            drop(st);
            d.drops.add(DropReason::Duplicate, before - batch.len());
        }
        self.inner.call(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity;
    use tower::ServiceExt;

    fn ev(id: &str) -> Event {
        Event::new("t").with_id(id)
    }

    async fn run(d: &Deduplicator, ids: &[&str]) -> Vec<String> {
        d.layer(identity())
            .oneshot(ids.iter().map(|i| ev(i)).collect())
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect()
    }

    #[tokio::test]
    async fn conforms() {
        let d = Deduplicator::new(Duration::from_secs(1), 10).unwrap();
        let out =
            crate::conformance::check("dedup", &d, d.drops(), vec![ev("a"), ev("a"), ev("b")])
                .await;
        assert_eq!(out.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn duplicates_within_the_window_are_dropped_across_batches() {
        let d = Deduplicator::new(Duration::from_secs(10), 100).unwrap();
        assert_eq!(run(&d, &["a", "b", "a"]).await, ["a", "b"]);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(run(&d, &["a", "c"]).await, ["c"]);
        // The window counts from the first sighting, not the last.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(run(&d, &["a", "b", "c"]).await, ["a", "b"]);
        assert_eq!(d.drops().get(DropReason::Duplicate), 3);
    }

    #[tokio::test]
    async fn events_without_a_key_are_never_duplicates() {
        let d = Deduplicator::new(Duration::from_secs(10), 100).unwrap();
        assert_eq!(run(&d, &["", "", "x", ""]).await, ["", "", "x", ""]);
        assert_eq!(d.len(), 1);
    }

    #[tokio::test]
    async fn memory_is_bounded_and_the_oldest_go_first() {
        let d = Deduplicator::new(Duration::from_secs(3600), 10).unwrap();
        let many: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(run(&d, &refs).await.len(), 1000);
        assert_eq!(d.len(), 10);
        // The newest ten are remembered, the first ones were forgotten.
        assert!(run(&d, &["k999"]).await.is_empty());
        assert_eq!(run(&d, &["k0"]).await, ["k0"]);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_keys_are_forgotten() {
        let d = Deduplicator::new(Duration::from_secs(1), 1000).unwrap();
        run(&d, &["a", "b", "c"]).await;
        assert_eq!(d.len(), 3);
        tokio::time::advance(Duration::from_secs(2)).await;
        run(&d, &["d"]).await;
        assert_eq!(d.len(), 1);
    }

    #[tokio::test]
    async fn by_key_and_everything_dropped() {
        let d = Deduplicator::new(Duration::from_secs(60), 100)
            .unwrap()
            .by_key(|e| e.event_type.as_str());
        let out = d
            .layer(identity())
            .oneshot(vec![ev("1"), ev("2"), ev("3")])
            .await
            .unwrap();
        assert_eq!(out.len(), 1, "same event_type: one survives");
        let again = d.layer(identity()).oneshot(vec![ev("4")]).await.unwrap();
        assert!(again.is_empty());
        assert_eq!(d.drops().get(DropReason::Duplicate), 3);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert_eq!(
            Deduplicator::new(Duration::ZERO, 10).unwrap_err(),
            DedupError::ZeroTtl
        );
        assert_eq!(
            Deduplicator::new(Duration::from_secs(1), 0).unwrap_err(),
            DedupError::ZeroEntries
        );
    }
}
