//! Cap how many events each source may send per window; drop and count the
//! excess.
//!
//! ```
//! use polku_core::Event;
//! use polku_middleware::{Throttle, identity};
//! use std::time::Duration;
//! use tower::{Layer, ServiceExt};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! // At most 2 events per source per second, tracking at most 1000 sources.
//! let throttle = Throttle::per_source(2, Duration::from_secs(1))
//!     .unwrap()
//!     .max_sources(1000)
//!     .unwrap();
//! let svc = throttle.layer(identity());
//! let ev = |source| Event::new("tick").with_source(source);
//! let out = svc
//!     .oneshot(vec![ev("a"), ev("a"), ev("a"), ev("b")])
//!     .await
//!     .unwrap();
//! assert_eq!(out.len(), 3);
//! assert_eq!(throttle.throttled(), 1);
//! # });
//! ```
//!
//! `Throttle` is the layer; [`ThrottleService`] is the service it makes.
//!
//! Each source (the event's `source`; an empty one is a source too) gets a
//! fixed window that starts with its first event: up to `max_per_window`
//! events pass, the rest of the window's events are dropped as
//! [`DropReason::Throttled`], and the first event after the window ends starts
//! a new one. The table of sources is shared by the layer, its clones and
//! every service it made, sits behind one mutex taken once per batch, and
//! holds at most `max_sources` sources: when a new source comes and the table
//! is full, the source whose window started longest ago is forgotten (so it
//! starts afresh if it comes back). The table keeps a 64-bit hash of each
//! source (SipHash, keyed afresh in every process), never the source itself,
//! so an entry costs under 100 bytes however long sources are. Time is [`tokio::time::Instant`], so tests
//! can pause and advance it.

use crate::drops::{DropCounts, DropReason, register};
use crate::hash::{FastHash, TableKeys};
use polku_core::Event;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, Service};

/// A [`Throttle`] configuration that makes no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ThrottleError {
    /// `max_per_window` was zero (use a [`Filter`](crate::Filter) to drop
    /// everything).
    #[error("max_per_window must be at least 1")]
    ZeroMaxPerWindow,
    /// The window was zero long.
    #[error("the window must be longer than zero")]
    ZeroWindow,
    /// `max_sources` was zero.
    #[error("max_sources must be at least 1")]
    ZeroMaxSources,
}

#[derive(Debug, Clone, Copy)]
struct Config {
    max_per_window: u64,
    window: Duration,
    max_sources: usize,
}

/// One source's current window.
struct Slot {
    start: Instant,
    count: u64,
    /// Which entry of `Table::order` is this window's.
    seq: u64,
}

/// The tracked sources.
///
/// Invariant: each slot has exactly one entry in `order` with its `seq`;
/// other entries are stale (the source started a newer window or was
/// evicted) and are skipped when popped. `order` is in window-start order.
#[derive(Default)]
struct Table {
    /// Windows by the hash of their source.
    slots: HashMap<u64, Slot, FastHash>,
    order: VecDeque<(u64, u64)>,
    next_seq: u64,
    keys: TableKeys,
}

impl Table {
    /// Whether one more event from `source` may pass at `now`.
    fn admit(&mut self, source: &str, now: Instant, cfg: &Config) -> bool {
        let seq = self.next_seq;
        let key = self.keys.of(source);
        match self.slots.get_mut(&key) {
            Some(slot) if now.saturating_duration_since(slot.start) < cfg.window => {
                if slot.count < cfg.max_per_window {
                    slot.count += 1;
                    true
                } else {
                    false
                }
            }
            Some(slot) => {
                // The window is over: a new one starts now.
                *slot = Slot {
                    start: now,
                    count: 1,
                    seq,
                };
                self.push(key, seq);
                true
            }
            None => {
                while self.slots.len() >= cfg.max_sources {
                    if !self.evict_oldest() {
                        break;
                    }
                }
                self.slots.insert(
                    key,
                    Slot {
                        start: now,
                        count: 1,
                        seq,
                    },
                );
                self.push(key, seq);
                true
            }
        }
    }

    fn push(&mut self, key: u64, seq: u64) {
        self.next_seq += 1;
        self.order.push_back((key, seq));
        // Stale entries come only from new windows of known sources; drop
        // them once they outnumber the live ones. That costs O(len) after at
        // least `slots.len() + 16` pushes: O(1) amortized, and `order` stays
        // under `2 * max_sources + 17` entries.
        if self.order.len() > 2 * self.slots.len() + 16 {
            let slots = &self.slots;
            self.order
                .retain(|(key, seq)| slots.get(key).is_some_and(|s| s.seq == *seq));
        }
    }

    /// Forgets the source whose window started longest ago; false if none.
    fn evict_oldest(&mut self) -> bool {
        while let Some((key, seq)) = self.order.pop_front() {
            if self.slots.get(&key).is_some_and(|s| s.seq == seq) {
                self.slots.remove(&key);
                return true;
            }
        }
        false
    }
}

/// A layer that lets at most `max_per_window` events per source through in
/// each window.
///
/// Clones share the table of sources and the drop counters.
#[derive(Clone)]
pub struct Throttle {
    config: Config,
    table: Arc<Mutex<Table>>,
    drops: DropCounts,
}

impl fmt::Debug for Throttle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Throttle")
            .field("max_per_window", &self.config.max_per_window)
            .field("window", &self.config.window)
            .field("max_sources", &self.config.max_sources)
            .field("throttled", &self.throttled())
            .finish_non_exhaustive()
    }
}

impl Throttle {
    /// How many sources are tracked unless [`Throttle::max_sources`] says.
    pub const DEFAULT_MAX_SOURCES: usize = 10_000;

    /// At most `max_per_window` events per source in each `window`.
    ///
    /// # Errors
    ///
    /// [`ThrottleError::ZeroMaxPerWindow`] or [`ThrottleError::ZeroWindow`]
    /// when either is zero.
    pub fn per_source(max_per_window: u64, window: Duration) -> Result<Self, ThrottleError> {
        if max_per_window == 0 {
            return Err(ThrottleError::ZeroMaxPerWindow);
        }
        if window.is_zero() {
            return Err(ThrottleError::ZeroWindow);
        }
        Ok(Throttle {
            config: Config {
                max_per_window,
                window,
                max_sources: Self::DEFAULT_MAX_SOURCES,
            },
            table: Arc::default(),
            drops: DropCounts::default(),
        })
    }

    /// Tracks at most `max_sources` sources (default
    /// [`DEFAULT_MAX_SOURCES`](Throttle::DEFAULT_MAX_SOURCES)); beyond that
    /// the one whose window started longest ago is forgotten.
    ///
    /// # Errors
    ///
    /// [`ThrottleError::ZeroMaxSources`] when `max_sources` is zero.
    pub fn max_sources(mut self, max_sources: usize) -> Result<Self, ThrottleError> {
        if max_sources == 0 {
            return Err(ThrottleError::ZeroMaxSources);
        }
        self.config.max_sources = max_sources;
        Ok(self)
    }

    /// Events dropped so far (reason: throttled), by this layer and every
    /// service it made.
    pub fn throttled(&self) -> u64 {
        self.drops.get(DropReason::Throttled)
    }

    /// The drop counters (reason: throttled).
    pub fn drops(&self) -> &DropCounts {
        &self.drops
    }

    /// How many sources are tracked now (takes the table's lock).
    pub fn tracked_sources(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .slots
            .len()
    }
}

impl<S> Layer<S> for Throttle {
    type Service = ThrottleService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        register("throttle", &self.drops);
        ThrottleService {
            inner,
            config: self.config,
            table: self.table.clone(),
            drops: self.drops.clone(),
        }
    }
}

/// The service made by [`Throttle`]: drops each source's excess, then calls
/// `inner`.
pub struct ThrottleService<S> {
    inner: S,
    config: Config,
    table: Arc<Mutex<Table>>,
    drops: DropCounts,
}

impl<S: Clone> Clone for ThrottleService<S> {
    fn clone(&self) -> Self {
        ThrottleService {
            inner: self.inner.clone(),
            config: self.config,
            table: self.table.clone(),
            drops: self.drops.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for ThrottleService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrottleService")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S> ThrottleService<S> {
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

impl<S> Service<Vec<Event>> for ThrottleService<S>
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
        if !batch.is_empty() {
            let cfg = &self.config;
            let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
            // Read the clock under the lock, so windows start in order.
            let now = Instant::now();
            self.drops.retain(DropReason::Throttled, &mut batch, |e| {
                table.admit(&e.source, now, cfg)
            });
            drop(table);
        }
        self.inner.call(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity;
    use tower::ServiceExt;

    fn ev(source: &str) -> Event {
        Event::new("t").with_source(source)
    }

    fn evs(sources: &[&str]) -> Vec<Event> {
        sources.iter().map(|s| ev(s)).collect()
    }

    async fn run(t: &Throttle, batch: Vec<Event>) -> Vec<Event> {
        t.layer(identity()).oneshot(batch).await.unwrap()
    }

    fn sources(out: &[Event]) -> Vec<&str> {
        out.iter().map(|e| e.source.as_str()).collect()
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[tokio::test]
    async fn conforms() {
        let t = Throttle::per_source(2, secs(1)).unwrap();
        let out =
            crate::conformance::check("throttle", &t, t.drops(), evs(&["a", "a", "a", "b"])).await;
        assert_eq!(sources(&out), ["a", "a", "b"]);
        assert_eq!(t.throttled(), 1);
    }

    #[tokio::test]
    async fn empty_batch_counts_and_tracks_nothing() {
        let t = Throttle::per_source(1, secs(1)).unwrap();
        assert!(run(&t, vec![]).await.is_empty());
        assert_eq!(t.throttled(), 0);
        assert_eq!(t.tracked_sources(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn caps_each_source_across_batches_and_services() {
        let t = Throttle::per_source(2, secs(60)).unwrap();
        let out = run(&t, evs(&["a", "b", "a", "", "a", "b", "b", ""])).await;
        assert_eq!(sources(&out), ["a", "b", "a", "", "b", ""], "order kept");
        assert_eq!(t.throttled(), 2);

        // Same window, another service of a clone: the table is shared.
        let out = run(&t.clone(), evs(&["a", "c", "b"])).await;
        assert_eq!(sources(&out), ["c"]);
        assert_eq!(t.throttled(), 4);
        assert_eq!(t.drops().get(DropReason::Throttled), 4);
        assert_eq!(t.tracked_sources(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn everything_dropped() {
        let t = Throttle::per_source(1, secs(60)).unwrap();
        assert_eq!(run(&t, evs(&["a", "b"])).await.len(), 2);
        let out = run(&t, evs(&["a", "b", "a"])).await;
        assert!(out.is_empty());
        assert_eq!(t.throttled(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn windows_roll_over() {
        let t = Throttle::per_source(2, secs(10)).unwrap();
        assert_eq!(run(&t, evs(&["a", "a", "a"])).await.len(), 2);

        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert!(run(&t, evs(&["a"])).await.is_empty(), "same window");

        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            run(&t, evs(&["a", "a", "a"])).await.len(),
            2,
            "a new window at exactly 10s"
        );

        // The new window began at 10s, with the first event after the old one.
        tokio::time::advance(secs(5)).await;
        assert!(run(&t, evs(&["a"])).await.is_empty());
        tokio::time::advance(secs(5)).await;
        assert_eq!(run(&t, evs(&["a"])).await.len(), 1);
        assert_eq!(t.throttled(), 4);

        // A long silence is just one more new window.
        tokio::time::advance(secs(3600)).await;
        assert_eq!(run(&t, evs(&["a", "a", "a"])).await.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn eviction_keeps_memory_bounded() {
        let t = Throttle::per_source(1, secs(60))
            .unwrap()
            .max_sources(10)
            .unwrap();
        let names: Vec<String> = (0..100).map(|i| format!("s{i}")).collect();
        for chunk in names.chunks(7) {
            let batch = chunk.iter().map(|s| ev(s)).collect();
            assert_eq!(run(&t, batch).await.len(), chunk.len());
            assert!(t.tracked_sources() <= 10);
        }
        assert_eq!(t.tracked_sources(), 10);
        assert!(t.table.lock().unwrap().order.len() <= 2 * 10 + 17);

        // The 10 newest are still tracked (and capped); the oldest was
        // forgotten and starts afresh.
        assert!(run(&t, evs(&["s99", "s90"])).await.is_empty());
        assert_eq!(run(&t, evs(&["s0"])).await.len(), 1);
        assert_eq!(t.tracked_sources(), 10);
        assert!(run(&t, evs(&["s91"])).await.is_empty());
        assert_eq!(
            run(&t, evs(&["s90"])).await.len(),
            1,
            "s90 was evicted for s0"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn evicts_the_oldest_window_not_the_oldest_source() {
        let t = Throttle::per_source(1, secs(10))
            .unwrap()
            .max_sources(2)
            .unwrap();
        run(&t, evs(&["a"])).await;
        tokio::time::advance(secs(1)).await;
        run(&t, evs(&["b"])).await;
        tokio::time::advance(secs(10)).await;
        // a starts a new window (at 11s), after b's (at 1s).
        assert_eq!(run(&t, evs(&["a"])).await.len(), 1);
        // c needs room: b goes, a stays.
        assert_eq!(run(&t, evs(&["c"])).await.len(), 1);
        assert!(run(&t, evs(&["a"])).await.is_empty(), "a is still capped");
        assert_eq!(t.tracked_sources(), 2);
        let table = t.table.lock().unwrap();
        let has = |s: &str| table.slots.contains_key(&table.keys.of(s));
        assert!(has("a") && has("c") && !has("b"));
    }

    #[tokio::test(start_paused = true)]
    async fn stale_entries_do_not_pile_up() {
        let t = Throttle::per_source(1, secs(1))
            .unwrap()
            .max_sources(10)
            .unwrap();
        for _ in 0..1000 {
            run(&t, evs(&["a", "b", "c"])).await;
            tokio::time::advance(secs(1)).await;
        }
        assert_eq!(t.throttled(), 0);
        let table = t.table.lock().unwrap();
        assert_eq!(table.slots.len(), 3);
        assert!(table.order.len() <= 2 * 3 + 17, "{}", table.order.len());
    }

    #[test]
    fn bad_config_is_rejected() {
        assert_eq!(
            Throttle::per_source(0, secs(1)).unwrap_err(),
            ThrottleError::ZeroMaxPerWindow
        );
        assert_eq!(
            Throttle::per_source(1, Duration::ZERO).unwrap_err(),
            ThrottleError::ZeroWindow
        );
        assert_eq!(
            Throttle::per_source(1, secs(1))
                .unwrap()
                .max_sources(0)
                .unwrap_err(),
            ThrottleError::ZeroMaxSources
        );
        assert_eq!(
            ThrottleError::ZeroWindow.to_string(),
            "the window must be longer than zero"
        );
    }
}
