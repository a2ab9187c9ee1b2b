//! Limit events per second with a token bucket, globally or per key.
//!
//! The bucket holds up to `burst` tokens and refills at `per_second`; each
//! event takes one. Over the limit, events are dropped and counted (the
//! default), or, with [`RateLimiter::delay`], the batch waits until there are
//! tokens, up to a maximum delay past which events are dropped after all.
//!
//! Per key ([`RateLimiter::per_source`], [`RateLimiter::keyed_by`]), each key
//! has its own bucket, and at most `max_keys` buckets are kept: when a new key
//! arrives at a full table, the key that arrived first is forgotten (it starts
//! over with a full bucket if it comes back), so rotating keys cannot grow
//! memory without limit. The table keeps a 64-bit hash of each key (SipHash,
//! keyed afresh in every process), never the key itself, so an entry costs
//! under 100 bytes however long its key is (10,000 keys: about 0.7 MB).
//!
//! ```
//! use polku_core::Event;
//! use polku_middleware::{RateLimiter, identity};
//! use tower::{Layer, ServiceExt};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let limiter = RateLimiter::new(1000.0, 5).unwrap().per_source();
//! let batch: Vec<Event> = (0..8).map(|_| Event::new("t").with_source("noisy")).collect();
//! let passed = limiter.layer(identity()).oneshot(batch).await.unwrap();
//! assert_eq!(passed.len(), 5); // the burst
//! # });
//! ```

use crate::drops::{DropCounts, DropReason, register};
use crate::hash::{FastHash, TableKeys};
use polku_core::Event;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// A rate-limit setting that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitError {
    /// The rate is not a positive, finite number.
    #[error("the rate must be a positive number of events per second, got {0}")]
    Rate(f64),
    /// The burst is zero.
    #[error("the burst must be at least 1 event")]
    Burst,
    /// No keys allowed.
    #[error("max_keys must be at least 1")]
    MaxKeys,
}

type KeyFn = dyn Fn(&Event) -> &str + Send + Sync;

#[derive(Debug, Clone, Copy)]
enum Mode {
    Drop,
    Delay(Duration),
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

enum Decision {
    Pass,
    Wait(Duration),
    Drop,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Bucket {
            tokens: burst,
            last: now,
        }
    }

    #[inline]
    fn take(&mut self, now: Instant, rate: f64, burst: f64, mode: Mode) -> Decision {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.last = now;
        match mode {
            Mode::Drop => {
                if self.tokens >= 1.0 {
                    self.tokens -= 1.0;
                    Decision::Pass
                } else {
                    Decision::Drop
                }
            }
            Mode::Delay(max) => {
                // Tokens may go negative: a reservation of future tokens, as
                // far as the maximum delay reaches.
                let after = self.tokens - 1.0;
                let wait = if after >= 0.0 { 0.0 } else { -after / rate };
                if wait <= max.as_secs_f64() + 1e-9 {
                    self.tokens = after;
                    if wait > 0.0 {
                        Decision::Wait(Duration::from_secs_f64(wait))
                    } else {
                        Decision::Pass
                    }
                } else {
                    Decision::Drop
                }
            }
        }
    }
}

struct State {
    global: Option<Bucket>,
    /// Buckets by the hash of their key.
    keyed: HashMap<u64, Bucket, FastHash>,
    /// Key hashes in the order they arrived, for eviction.
    order: VecDeque<u64>,
}

struct Config {
    rate: f64,
    burst: f64,
    key: Option<Arc<KeyFn>>,
    keys: TableKeys,
    max_keys: usize,
    mode: Mode,
}

/// A layer that limits events per second.
#[derive(Clone)]
pub struct RateLimiter {
    config: Arc<Config>,
    state: Arc<Mutex<State>>,
    drops: DropCounts,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("per_second", &self.config.rate)
            .field("burst", &self.config.burst)
            .field("keyed", &self.config.key.is_some())
            .field("max_keys", &self.config.max_keys)
            .field("mode", &self.config.mode)
            .field("drops", &self.drops)
            .finish()
    }
}

impl RateLimiter {
    /// One bucket for all events: `per_second` on average, `burst` at once.
    pub fn new(per_second: f64, burst: u32) -> Result<Self, RateLimitError> {
        if !(per_second.is_finite() && per_second > 0.0) {
            return Err(RateLimitError::Rate(per_second));
        }
        if burst == 0 {
            return Err(RateLimitError::Burst);
        }
        Ok(RateLimiter {
            config: Arc::new(Config {
                rate: per_second,
                burst: f64::from(burst),
                key: None,
                keys: TableKeys::default(),
                max_keys: 10_000,
                mode: Mode::Drop,
            }),
            state: Arc::new(Mutex::new(State {
                global: None,
                keyed: HashMap::with_hasher(FastHash::default()),
                order: VecDeque::new(),
            })),
            drops: DropCounts::default(),
        })
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::get_mut(&mut self.config).expect("configure a RateLimiter before using it as a layer")
    }

    /// One bucket per source.
    pub fn per_source(self) -> Self {
        self.keyed_by(|e| e.source.as_str())
    }

    /// One bucket per key.
    pub fn keyed_by<F>(mut self, key: F) -> Self
    where
        F: Fn(&Event) -> &str + Send + Sync + 'static,
    {
        self.config_mut().key = Some(Arc::new(key));
        self
    }

    /// Keeps at most this many keys' buckets (default 10000).
    pub fn max_keys(mut self, max_keys: usize) -> Result<Self, RateLimitError> {
        if max_keys == 0 {
            return Err(RateLimitError::MaxKeys);
        }
        self.config_mut().max_keys = max_keys;
        Ok(self)
    }

    /// Delays events over the limit instead of dropping them, by up to
    /// `max_delay`; events that would wait longer are dropped and counted.
    pub fn delay(mut self, max_delay: Duration) -> Self {
        self.config_mut().mode = Mode::Delay(max_delay);
        self
    }

    /// The drop counters (reason: rate_limited).
    pub fn drops(&self) -> &DropCounts {
        &self.drops
    }

    /// How many keys have a bucket now.
    pub fn keys(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keyed
            .len()
    }
}

impl<S> Layer<S> for RateLimiter {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        register("rate_limit", &self.drops);
        RateLimitService {
            inner,
            limiter: self.clone(),
        }
    }
}

/// The service made by [`RateLimiter`].
#[derive(Clone)]
pub struct RateLimitService<S> {
    inner: S,
    limiter: RateLimiter,
}

impl<S: fmt::Debug> fmt::Debug for RateLimitService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitService")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .finish()
    }
}

impl<S> RateLimitService<S> {
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

impl RateLimiter {
    /// Decides for every event of the batch under one lock; returns how long
    /// the batch must wait.
    fn admit(&self, batch: &mut Vec<Event>) -> Duration {
        let c = &*self.config;
        let now = Instant::now();
        let mut wait = Duration::ZERO;
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let st = &mut *st;
        let mut decide = |bucket: &mut Bucket| match bucket.take(now, c.rate, c.burst, c.mode) {
            Decision::Pass => true,
            Decision::Wait(d) => {
                wait = wait.max(d);
                true
            }
            Decision::Drop => false,
        };
        match &c.key {
            None => {
                let bucket = st.global.get_or_insert_with(|| Bucket::full(c.burst, now));
                self.drops
                    .retain(DropReason::RateLimited, batch, |_| decide(bucket));
            }
            Some(key) => self.drops.retain(DropReason::RateLimited, batch, |e| {
                let k = c.keys.of(key(e));
                if let Some(bucket) = st.keyed.get_mut(&k) {
                    return decide(bucket);
                }
                while st.keyed.len() >= c.max_keys {
                    match st.order.pop_front() {
                        Some(old) => {
                            st.keyed.remove(&old);
                        }
                        None => break,
                    }
                }
                let mut bucket = Bucket::full(c.burst, now);
                let pass = decide(&mut bucket);
                st.keyed.insert(k, bucket);
                st.order.push_back(k);
                pass
            }),
        }
        wait
    }
}

impl<S> Service<Vec<Event>> for RateLimitService<S>
where
    S: Service<Vec<Event>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut batch: Vec<Event>) -> Self::Future {
        let wait = self.limiter.admit(&mut batch);
        if wait.is_zero() {
            return Box::pin(self.inner.call(batch));
        }
        // Take the service that is ready; leave a clone in its place.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            tokio::time::sleep(wait).await;
            inner.oneshot(batch).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity;

    fn from(source: &str, n: usize) -> Vec<Event> {
        (0..n)
            .map(|_| Event::new("t").with_source(source))
            .collect()
    }

    async fn run(l: &RateLimiter, batch: Vec<Event>) -> usize {
        l.layer(identity()).oneshot(batch).await.unwrap().len()
    }

    #[tokio::test(start_paused = true)]
    async fn conforms() {
        let l = RateLimiter::new(10.0, 3).unwrap();
        let out = crate::conformance::check("rate_limit", &l, l.drops(), from("a", 5)).await;
        assert_eq!(out.len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_refill() {
        let l = RateLimiter::new(10.0, 5).unwrap();
        assert_eq!(run(&l, from("a", 10)).await, 5);
        assert_eq!(run(&l, from("a", 10)).await, 0, "everything dropped");
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(run(&l, from("a", 10)).await, 3);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(run(&l, from("a", 10)).await, 5, "never more than the burst");
        assert_eq!(l.drops().get(DropReason::RateLimited), 5 + 10 + 7 + 5);
    }

    #[tokio::test(start_paused = true)]
    async fn each_source_has_its_own_bucket() {
        let l = RateLimiter::new(1.0, 2).unwrap().per_source();
        let mut batch = from("a", 5);
        batch.extend(from("b", 5));
        assert_eq!(run(&l, batch).await, 4);
        assert_eq!(l.keys(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn rotating_keys_cannot_grow_memory() {
        let l = RateLimiter::new(1.0, 1)
            .unwrap()
            .per_source()
            .max_keys(10)
            .unwrap();
        for i in 0..1000 {
            assert_eq!(run(&l, from(&format!("s{i}"), 1)).await, 1);
        }
        assert_eq!(l.keys(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn delay_mode_waits_for_tokens_up_to_a_limit() {
        let l = RateLimiter::new(10.0, 2)
            .unwrap()
            .delay(Duration::from_millis(500));
        let started = Instant::now();
        assert_eq!(run(&l, from("a", 5)).await, 5, "nothing dropped");
        // Two from the burst, three more at 10/s: 300 ms.
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        // Now 5 tokens are owed... a batch of 10 gets at most 500 ms worth.
        let started = Instant::now();
        let passed = run(&l, from("a", 10)).await;
        assert_eq!(passed, 5);
        assert!(started.elapsed() <= Duration::from_millis(500));
        assert_eq!(l.drops().get(DropReason::RateLimited), 5);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(matches!(
            RateLimiter::new(0.0, 1),
            Err(RateLimitError::Rate(_))
        ));
        assert!(matches!(
            RateLimiter::new(f64::NAN, 1),
            Err(RateLimitError::Rate(_))
        ));
        assert!(matches!(
            RateLimiter::new(1.0, 0),
            Err(RateLimitError::Burst)
        ));
        assert!(matches!(
            RateLimiter::new(1.0, 1).unwrap().max_keys(0),
            Err(RateLimitError::MaxKeys)
        ));
    }
}
