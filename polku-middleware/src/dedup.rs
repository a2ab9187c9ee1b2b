//! Drop events whose key was already seen within a time window.
//!
//! The key is the event id by default, or any function of the event. Events
//! with an empty key are never treated as duplicates of each other. Memory is
//! bounded: at most `max_entries` keys are remembered, and each costs 16
//! bytes (a hash of the key and the time it was seen), never a copy of the
//! key. The work per event is O(1): one hash, at most two table lookups.
//!
//! Keys live in two generations: new keys go into the current one; when it
//! is `ttl` old, or holds half of `max_entries`, it becomes the previous one
//! and the old previous generation is dropped whole. So the oldest keys are
//! forgotten first, a whole generation at a time, and forgetting costs
//! nothing per key. A key counts as seen only within `ttl` of its first
//! sighting, whichever generation holds it.
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
//! A key is remembered from the first time it is accepted: a duplicate does
//! not extend the window. Used alone, an event counts as accepted when it
//! passes; in a gateway (which calls [`Commit::defer`]), only when the
//! gateway has taken it, so an event refused after the deduplicator saw it
//! (no room, no route, a cancelled call) is not a duplicate when the client
//! sends it again. Duplicates within one batch are always dropped; two
//! batches in flight at once with the same key may both pass. Keys are compared by 96 bits of two independent hashes,
//! so two different keys are mistaken for each other with a chance of about
//! 2^-96 per pair.

use crate::drops::{Commit, DropCounts, DropReason, register_with_commit};
use crate::hash::{FastHash, hash128};
use polku_core::Event;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
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
    #[error("the de-duplication window (ttl) must be at least 1 ms")]
    ZeroTtl,
    /// Fewer than two entries.
    #[error("max_entries must be at least 2")]
    TooFewEntries,
    /// A window longer than the 16-bit-free clock allows.
    #[error("the de-duplication window (ttl) must be at most 24 days")]
    TtlTooLong,
}

type KeyFn = dyn Fn(&Event) -> &str + Send + Sync;

/// One generation: key hash (high 64 bits) → low 32 bits of the hash and
/// the millisecond it was first seen.
type Generation = HashMap<u64, (u32, u32), FastHash>;

struct State {
    current: Generation,
    previous: Generation,
    /// When `current` started, in milliseconds since `base`.
    current_since: u64,
    base: Instant,
}

impl State {
    fn new(cap: usize) -> Self {
        State {
            current: HashMap::with_capacity_and_hasher(cap.min(1 << 16), FastHash::default()),
            previous: HashMap::with_hasher(FastHash::default()),
            current_since: 0,
            base: Instant::now(),
        }
    }

    fn rotate(&mut self, now_ms: u64) {
        let cap = self.current.capacity();
        self.previous = std::mem::replace(
            &mut self.current,
            HashMap::with_capacity_and_hasher(cap, FastHash::default()),
        );
        self.current_since = now_ms;
    }

    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    /// Starts a new generation when the current one is a window old; the
    /// time now, in ms since `base`.
    fn tick(&mut self, ttl_ms: u64) -> u64 {
        let now_ms = self.base.elapsed().as_millis() as u64;
        let age = now_ms.saturating_sub(self.current_since);
        if age >= ttl_ms {
            self.rotate(now_ms);
            if age >= 2 * ttl_ms {
                // No batch since the generation was a window old, so every
                // key in it is older than a window: forget them.
                self.previous.clear();
            }
        }
        now_ms
    }

    /// Whether the key hashed to `(hi, lo)` was remembered within the window.
    fn seen(&self, hi: u64, lo: u32, now32: u32, ttl_ms: u64) -> bool {
        let fresh =
            |&(check, at): &(u32, u32)| check == lo && u64::from(now32.wrapping_sub(at)) < ttl_ms;
        self.previous.get(&hi).is_some_and(fresh) || self.current.get(&hi).is_some_and(fresh)
    }

    /// Remembers the key; false if it was already remembered in the window.
    fn remember(&mut self, hi: u64, lo: u32, now_ms: u64, ttl_ms: u64, half: usize) -> bool {
        // Times are kept in 32 bits; differences wrap correctly for any ttl
        // below 24 days, and nothing older than two windows is kept.
        let now32 = now_ms as u32;
        let fresh =
            |&(check, at): &(u32, u32)| check == lo && u64::from(now32.wrapping_sub(at)) < ttl_ms;
        if self.current.len() >= half {
            self.rotate(now_ms);
        }
        if self.previous.get(&hi).is_some_and(fresh) {
            return false;
        }
        // One probe of the current generation finds the key or the place to
        // put it.
        match self.current.entry(hi) {
            Entry::Occupied(mut o) => {
                if fresh(o.get()) {
                    return false;
                }
                o.insert((lo, now32));
            }
            Entry::Vacant(v) => {
                v.insert((lo, now32));
            }
        }
        true
    }
}

/// The key's 128-bit hash, split as the tables keep it.
fn split(h: u128) -> (u64, u32) {
    ((h >> 64) as u64, h as u32)
}

/// A layer that drops events whose key was seen within `ttl`.
#[derive(Clone)]
pub struct Deduplicator {
    ttl: Duration,
    max_entries: usize,
    key: Arc<KeyFn>,
    state: Arc<Mutex<State>>,
    drops: DropCounts,
    /// Set by [`Commit::defer`]: keys are remembered on commit, not on pass.
    deferred: Arc<AtomicBool>,
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
        if ttl < Duration::from_millis(1) {
            return Err(DedupError::ZeroTtl);
        }
        if max_entries < 2 {
            return Err(DedupError::TooFewEntries);
        }
        if ttl > Duration::from_secs(24 * 86_400) {
            return Err(DedupError::TtlTooLong);
        }
        Ok(Deduplicator {
            ttl,
            max_entries,
            key: Arc::new(|e: &Event| e.id.as_str()),
            state: Arc::new(Mutex::new(State::new(max_entries / 2))),
            drops: DropCounts::default(),
            deferred: Arc::default(),
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
        register_with_commit("dedup", &self.drops, Arc::new(self.clone()));
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
        if !batch.is_empty() {
            let ttl_ms = d.ttl.as_millis() as u64;
            let half = d.max_entries / 2;
            // One lock per batch.
            let mut guard = d.state.lock().unwrap_or_else(PoisonError::into_inner);
            let st = &mut *guard;
            let now_ms = st.tick(ttl_ms);
            if d.deferred.load(Relaxed) {
                // Remembered on commit: here, only look, and drop what this
                // batch repeats.
                let now32 = now_ms as u32;
                let mut batch_keys: HashSet<u128, FastHash> = HashSet::default();
                d.drops.retain(DropReason::Duplicate, &mut batch, |e| {
                    let key = (d.key)(e);
                    if key.is_empty() {
                        return true;
                    }
                    let h = hash128(key.as_bytes());
                    let (hi, lo) = split(h);
                    !st.seen(hi, lo, now32, ttl_ms) && batch_keys.insert(h)
                });
            } else {
                d.drops.retain(DropReason::Duplicate, &mut batch, |e| {
                    let key = (d.key)(e);
                    if key.is_empty() {
                        return true;
                    }
                    let (hi, lo) = split(hash128(key.as_bytes()));
                    st.remember(hi, lo, now_ms, ttl_ms, half)
                });
            }
            drop(guard);
        }
        self.inner.call(batch)
    }
}

impl Commit for Deduplicator {
    fn defer(&self) {
        self.deferred.store(true, Relaxed);
    }

    fn commit(&self, accepted: &[Event]) {
        if accepted.is_empty() || !self.deferred.load(Relaxed) {
            return;
        }
        let ttl_ms = self.ttl.as_millis() as u64;
        let half = self.max_entries / 2;
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let st = &mut *guard;
        let now_ms = st.tick(ttl_ms);
        for e in accepted {
            let key = (self.key)(e);
            if !key.is_empty() {
                let (hi, lo) = split(hash128(key.as_bytes()));
                st.remember(hi, lo, now_ms, ttl_ms, half);
            }
        }
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
            .map(|e| e.id.to_string())
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
    async fn deferred_keys_are_remembered_only_when_committed() {
        let d = Deduplicator::new(Duration::from_secs(10), 100).unwrap();
        let (_svc, reg) = crate::Registry::collect(|| d.layer(identity()));
        let hook = reg.entries()[0]
            .commit()
            .expect("dedup has a commit hook")
            .clone();
        hook.commit(&[ev("early")]);
        assert!(
            d.is_empty(),
            "before defer, a commit is not the caller's to make"
        );
        hook.defer();
        // Passing is not remembering: a refused batch comes back whole.
        assert_eq!(
            run(&d, &["a", "b", "a"]).await,
            ["a", "b"],
            "the batch's own repeat goes"
        );
        assert!(d.is_empty());
        assert_eq!(run(&d, &["a", "b"]).await, ["a", "b"]);
        // Accepted: now they are duplicates.
        hook.commit(&[ev("a"), ev(""), ev("b")]);
        assert_eq!(d.len(), 2);
        assert_eq!(run(&d, &["a", "c", "b"]).await, ["c"]);
        // A commit does not move the window: it counts from the first.
        tokio::time::advance(Duration::from_secs(6)).await;
        hook.commit(&[ev("a")]);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(run(&d, &["a"]).await, ["a"]);
        assert_eq!(d.drops().get(DropReason::Duplicate), 3);
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
        assert!(d.len() <= 10, "{}", d.len());
        // At least the newest five are remembered; the first ones are forgotten.
        for k in ["k995", "k996", "k997", "k998", "k999"] {
            assert!(run(&d, &[k]).await.is_empty(), "{k} should be remembered");
        }
        assert_eq!(run(&d, &["k0"]).await, ["k0"]);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_keys_are_forgotten_and_their_memory_freed() {
        let d = Deduplicator::new(Duration::from_secs(1), 1000).unwrap();
        run(&d, &["a", "b", "c"]).await;
        assert_eq!(d.len(), 3);
        tokio::time::advance(Duration::from_millis(1500)).await;
        // Expired, though still in the previous generation: seen anew.
        assert_eq!(run(&d, &["a", "d"]).await, ["a", "d"]);
        tokio::time::advance(Duration::from_secs(3)).await;
        run(&d, &["e"]).await;
        assert_eq!(d.len(), 1, "two windows later everything old is gone");
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_from_the_previous_generation_is_still_a_duplicate_within_ttl() {
        let d = Deduplicator::new(Duration::from_secs(10), 1000).unwrap();
        run(&d, &["a"]).await;
        tokio::time::advance(Duration::from_secs(6)).await;
        run(&d, &["b"]).await;
        tokio::time::advance(Duration::from_secs(5)).await;
        // The generation holding `a` has rotated (11 s), and `a` has expired;
        // `b` is 5 s old and in the previous generation: still a duplicate.
        assert_eq!(run(&d, &["a", "b"]).await, ["a"]);
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
            Deduplicator::new(Duration::from_secs(1), 1).unwrap_err(),
            DedupError::TooFewEntries
        );
        assert_eq!(
            Deduplicator::new(Duration::from_secs(30 * 86_400), 10).unwrap_err(),
            DedupError::TtlTooLong
        );
    }
}
