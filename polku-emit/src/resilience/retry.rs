//! Retries with exponential backoff and jitter, bounded in attempts and age.
//!
//! A failed call is tried again when it may work: a whole batch that was
//! [`Unavailable`](polku_core::EmitError::Unavailable), or the retryable events
//! of a [`Partial`](polku_core::EmitError::Partial) failure (only those are
//! sent again). The wait before try `n + 1` is `initial * 2^(n-1)`, capped at
//! the maximum backoff, scaled by a random factor in [0.5, 1) so that many
//! clients do not retry in step; a destination's own `Retry-After` (or an open
//! breaker's cool-down) is honoured when it asks for longer. The retries stop
//! after `max_attempts` tries, or when the next one would start later than
//! `max_age` after the first; what is still failing is then returned, with
//! each message saying how many attempts were made.
//!
//! ```
//! use polku_emit::resilience::{EmitterService, RetryLayer, RetryPolicy};
//! use polku_emit::MemoryEmitter;
//! use std::{sync::Arc, time::Duration};
//! use tower::Layer;
//!
//! let policy = RetryPolicy::new(8, Duration::from_secs(60))
//!     .unwrap()
//!     .backoff(Duration::from_millis(100), Duration::from_secs(10))
//!     .unwrap();
//! let svc = RetryLayer::new(policy)
//!     .layer(EmitterService::new(Arc::new(MemoryEmitter::new("m"))));
//! # drop(svc);
//! ```

use super::{Batch, EmitFuture, ResilienceError};
use polku_core::delivery::DeliveryState;
use polku_core::{EmitError, Event, EventFailure};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::ServiceExt as _;
use tracing::debug;

/// How often and how long to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    max_age: Duration,
    initial: Duration,
    max_backoff: Duration,
    jitter: bool,
}

impl RetryPolicy {
    /// At most `max_attempts` tries in all (the first included), none
    /// starting later than `max_age` after the first; backoff from 100 ms up
    /// to 10 s, with jitter.
    pub fn new(max_attempts: u32, max_age: Duration) -> Result<Self, ResilienceError> {
        if max_attempts == 0 {
            return Err(ResilienceError::Zero {
                what: "the number of attempts",
            });
        }
        Ok(RetryPolicy {
            max_attempts,
            max_age,
            initial: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            jitter: true,
        })
    }

    /// The first wait and the longest one.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Result<Self, ResilienceError> {
        if initial.is_zero() {
            return Err(ResilienceError::Zero {
                what: "the initial backoff",
            });
        }
        if max < initial {
            return Err(ResilienceError::BackoffOrder { initial, max });
        }
        self.initial = initial;
        self.max_backoff = max;
        Ok(self)
    }

    /// Without jitter: each wait is exactly the exponential backoff.
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// Tries in all, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// How long after the first try the last may start.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// The wait after the `failed`th failed try, before jitter.
    fn base_backoff(&self, failed: u32) -> Duration {
        let factor = 2u32.saturating_pow(failed.saturating_sub(1).min(31));
        self.initial.saturating_mul(factor).min(self.max_backoff)
    }

    fn wait(&self, failed: u32) -> Duration {
        let base = self.base_backoff(failed);
        if !self.jitter {
            return base;
        }
        // A factor in [0.5, 1): spreads retries out, never more than doubles
        // the pace.
        let r = (next_random() >> 11) as f64 / (1u64 << 53) as f64;
        base.mul_f64(0.5 + r / 2.0)
    }
}

impl Default for RetryPolicy {
    /// 10 tries within 5 minutes, backoff from 100 ms to 10 s, with jitter.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            max_age: Duration::from_secs(300),
            initial: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            jitter: true,
        }
    }
}

/// A process-wide splitmix64 stream for jitter (no need for a crypto RNG).
fn next_random() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut s = STATE.load(Relaxed);
    if s == 0 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x9E37_79B9_7F4A_7C15);
        s = h.finish() | 1;
        STATE.store(s, Relaxed);
    }
    let mut z = STATE
        .fetch_add(0x9E37_79B9_7F4A_7C15, Relaxed)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Wraps an emit service in [`Retry`].
#[derive(Debug, Clone)]
pub struct RetryLayer {
    policy: RetryPolicy,
    state: Option<Arc<DeliveryState>>,
}

impl RetryLayer {
    /// Retries as `policy` says.
    pub fn new(policy: RetryPolicy) -> Self {
        RetryLayer {
            policy,
            state: None,
        }
    }

    /// Counts retries in `state`.
    pub fn with_state(mut self, state: Arc<DeliveryState>) -> Self {
        self.state = Some(state);
        self
    }
}

impl<S> tower::Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            policy: self.policy,
            state: self.state.clone(),
        }
    }
}

/// Sends failed events again until they go through or the policy gives up.
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    policy: RetryPolicy,
    state: Option<Arc<DeliveryState>>,
}

impl<S> Retry<S> {
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

impl<S> tower::Service<Batch> for Retry<S>
where
    S: tower::Service<Batch, Response = (), Error = EmitError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = EmitError;
    type Future = EmitFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), EmitError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, batch: Batch) -> EmitFuture {
        // The service that was polled ready takes the first try; a clone
        // stays behind for the next caller.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(run(inner, batch, self.policy, self.state.clone()))
    }
}

/// The events still being tried: the whole batch, or some of its events.
struct Pending {
    batch: Batch,
    /// Index in the original batch of each event of `batch`; `None` while
    /// `batch` is the original.
    origin: Option<Vec<usize>>,
}

impl Pending {
    fn original(&self, i: usize) -> usize {
        self.origin.as_ref().map_or(i, |o| o[i])
    }
}

async fn run<S>(
    mut inner: S,
    batch: Batch,
    policy: RetryPolicy,
    state: Option<Arc<DeliveryState>>,
) -> Result<(), EmitError>
where
    S: tower::Service<Batch, Response = (), Error = EmitError> + Send,
    S::Future: Send,
{
    let started = Instant::now();
    let mut pending = Pending {
        batch: batch.clone(),
        origin: None,
    };
    // Events that failed for good, by index in the original batch.
    let mut done: Vec<EventFailure> = Vec::new();
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let result = match inner.ready().await {
            Ok(svc) => svc.call(pending.batch.clone()).await,
            Err(e) => Err(e),
        };
        let err = match result {
            Ok(()) if done.is_empty() => return Ok(()),
            Ok(()) => return Err(partial(done)),
            Err(e) => e,
        };
        let retry_after = err.retry_after();
        // Split what failed into what may be retried and what may not.
        let mut again: Vec<usize> = Vec::new(); // indexes into pending.batch
        let message;
        match err {
            EmitError::Unavailable { message: m, .. } => {
                again.extend(0..pending.batch.len());
                message = m;
            }
            EmitError::Partial { failures } => {
                message = failures
                    .iter()
                    .find(|f| f.retryable)
                    .map(|f| f.message.clone())
                    .unwrap_or_default();
                for f in failures {
                    if f.index >= pending.batch.len() {
                        continue;
                    }
                    if f.retryable {
                        again.push(f.index);
                    } else {
                        done.push(EventFailure {
                            index: pending.original(f.index),
                            ..f
                        });
                    }
                }
            }
            final_error => {
                // Rejected or Closed: nothing of this try will work again.
                if pending.origin.is_none() && done.is_empty() {
                    return Err(final_error);
                }
                let message = final_error.to_string();
                done.extend((0..pending.batch.len()).map(|i| EventFailure {
                    index: pending.original(i),
                    message: message.clone(),
                    retryable: false,
                }));
                return Err(partial(done));
            }
        }
        if again.is_empty() {
            return Err(partial(done));
        }

        let wait = policy.wait(attempt).max(retry_after.unwrap_or_default());
        let age = started.elapsed();
        let give_up = if attempt >= policy.max_attempts {
            Some(format!("gave up after {attempt} attempts in {age:.1?}"))
        } else if age.saturating_add(wait) > policy.max_age {
            Some(format!(
                "gave up after {attempt} attempts in {age:.1?} (the next would start past the {:?} limit)",
                policy.max_age
            ))
        } else {
            None
        };
        if let Some(why) = give_up {
            let whole = pending.origin.is_none() && done.is_empty() && again.len() == batch.len();
            if whole {
                return Err(EmitError::unavailable(format!("{why}: {message}"), None));
            }
            done.extend(again.into_iter().map(|i| EventFailure {
                index: pending.original(i),
                message: format!("{why}: {message}"),
                retryable: true,
            }));
            return Err(partial(done));
        }

        debug!(attempt, events = again.len(), ?wait, error = %message, "retrying");
        if let Some(s) = &state {
            s.add_retry(again.len());
        }
        if again.len() != pending.batch.len() {
            let events: Vec<Event> = again.iter().map(|&i| pending.batch[i].clone()).collect();
            let origin = again.iter().map(|&i| pending.original(i)).collect();
            pending = Pending {
                batch: Arc::new(events),
                origin: Some(origin),
            };
        }
        tokio::time::sleep(wait).await;
    }
}

fn partial(mut failures: Vec<EventFailure>) -> EmitError {
    failures.sort_by_key(|f| f.index);
    EmitError::Partial { failures }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::EmitterService;
    use crate::resilience::testing::{Scripted, batch, down};
    use tower::Layer;

    fn retry(emitter: Arc<Scripted>, policy: RetryPolicy) -> Retry<EmitterService<Scripted>> {
        RetryLayer::new(policy).layer(EmitterService::new(emitter))
    }

    fn fixed(attempts: u32, age_secs: u64) -> RetryPolicy {
        RetryPolicy::new(attempts, Duration::from_secs(age_secs))
            .unwrap()
            .backoff(Duration::from_millis(100), Duration::from_secs(1))
            .unwrap()
            .without_jitter()
    }

    #[test]
    fn policy_is_checked_and_backoff_grows_to_its_cap() {
        assert!(RetryPolicy::new(0, Duration::from_secs(1)).is_err());
        let p = RetryPolicy::new(3, Duration::from_secs(1)).unwrap();
        assert!(p.backoff(Duration::ZERO, Duration::from_secs(1)).is_err());
        assert!(matches!(
            p.backoff(Duration::from_secs(2), Duration::from_secs(1)),
            Err(ResilienceError::BackoffOrder { .. })
        ));
        let p = fixed(10, 60);
        let waits: Vec<u128> = (1..=6).map(|n| p.wait(n).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(p.base_backoff(u32::MAX), Duration::from_secs(1));
        let jittered = fixed(10, 60)
            .backoff(Duration::from_secs(1), Duration::from_secs(1))
            .unwrap();
        let jittered = RetryPolicy {
            jitter: true,
            ..jittered
        };
        let ws: Vec<Duration> = (0..200).map(|_| jittered.wait(1)).collect();
        assert!(
            ws.iter()
                .all(|w| *w >= Duration::from_millis(500) && *w < Duration::from_secs(1))
        );
        assert!(ws.iter().any(|w| *w != ws[0]), "jitter varies");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_the_destination_answers() {
        let emitter = Arc::new(Scripted::new([down(), down()]));
        let state = Arc::new(DeliveryState::new(None));
        let svc = RetryLayer::new(fixed(5, 60))
            .with_state(state.clone())
            .layer(EmitterService::new(emitter.clone()));
        let started = Instant::now();
        svc.oneshot(batch(&["a", "b"])).await.unwrap();
        assert_eq!(emitter.calls().len(), 3);
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(300),
            "100 ms then 200 ms"
        );
        assert_eq!(state.retries(), 2);
        assert_eq!(state.retried_events(), 4, "two events, sent again twice");
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts_saying_so() {
        let emitter = Arc::new(Scripted::new([down(), down(), down(), down()]));
        let err = retry(emitter.clone(), fixed(3, 60))
            .oneshot(batch(&["a"]))
            .await
            .unwrap_err();
        assert_eq!(emitter.calls().len(), 3);
        assert!(err.is_retryable());
        let msg = err.to_string();
        assert!(
            msg.contains("gave up after 3 attempts") && msg.contains("connection refused"),
            "{msg}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_when_the_next_try_would_pass_max_age() {
        let emitter = Arc::new(Scripted::new((0..100).map(|_| down())));
        let started = Instant::now();
        let err = retry(emitter.clone(), fixed(100, 3))
            .oneshot(batch(&["a"]))
            .await
            .unwrap_err();
        // Waits 0.1 + 0.2 + 0.4 + 0.8 + 1 = 2.5 s; the next (1 s) would end past 3 s.
        assert_eq!(started.elapsed(), Duration::from_millis(2500));
        assert_eq!(emitter.calls().len(), 6);
        assert!(err.to_string().contains("limit"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn honours_retry_after_and_gives_up_when_it_is_past_the_budget() {
        let emitter = Arc::new(Scripted::new([Err(EmitError::unavailable_for(
            "429 Too Many Requests",
            Duration::from_secs(7),
        ))]));
        let started = Instant::now();
        retry(emitter.clone(), fixed(5, 60))
            .oneshot(batch(&["a"]))
            .await
            .unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(7));

        let emitter = Arc::new(Scripted::new([Err(EmitError::unavailable_for(
            "503",
            Duration::from_secs(120),
        ))]));
        let err = retry(emitter.clone(), fixed(5, 60))
            .oneshot(batch(&["a"]))
            .await
            .unwrap_err();
        assert_eq!(emitter.calls().len(), 1, "no point waiting past the budget");
        assert!(
            err.to_string().contains("gave up after 1 attempts"),
            "{err}"
        );

        // A destination that asks for forever is given up on, not a panic.
        let emitter = Arc::new(Scripted::new([Err(EmitError::unavailable_for(
            "503",
            Duration::from_secs(u64::MAX),
        ))]));
        let err = retry(emitter.clone(), fixed(5, 60))
            .oneshot(batch(&["a"]))
            .await
            .unwrap_err();
        assert_eq!(emitter.calls().len(), 1);
        assert!(err.to_string().contains("gave up"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_refusal_is_not_retried() {
        let emitter = Arc::new(Scripted::new([Err(EmitError::Rejected {
            message: "400 bad".into(),
        })]));
        let err = retry(emitter.clone(), fixed(5, 60))
            .oneshot(batch(&["a"]))
            .await
            .unwrap_err();
        assert!(matches!(err, EmitError::Rejected { .. }));
        assert_eq!(emitter.calls().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn only_retryable_events_of_a_partial_failure_go_again() {
        let fail = |index, retryable| EventFailure {
            index,
            message: format!("event {index}"),
            retryable,
        };
        let emitter = Arc::new(Scripted::new([
            // a ok, b permanent, c and d retryable
            Err(EmitError::Partial {
                failures: vec![fail(1, false), fail(2, true), fail(3, true)],
            }),
            // second try is [c, d]: d (index 1 here) fails again
            Err(EmitError::Partial {
                failures: vec![fail(1, true)],
            }),
            // third try is [d]: delivered
        ]));
        let err = retry(emitter.clone(), fixed(5, 60))
            .oneshot(batch(&["a", "b", "c", "d"]))
            .await
            .unwrap_err();
        assert_eq!(
            emitter.calls(),
            [vec!["a", "b", "c", "d"], vec!["c", "d"], vec!["d"]]
        );
        match err {
            EmitError::Partial { failures } => {
                assert_eq!(
                    failures,
                    vec![fail(1, false)],
                    "only b failed, at its own index"
                );
            }
            other => panic!("{other}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_give_up_after_a_partial_reports_original_indexes() {
        let emitter = Arc::new(Scripted::new([
            Err(EmitError::Partial {
                failures: vec![EventFailure {
                    index: 2,
                    message: "full".into(),
                    retryable: true,
                }],
            }),
            down(),
        ]));
        let err = retry(emitter.clone(), fixed(2, 60))
            .oneshot(batch(&["a", "b", "c"]))
            .await
            .unwrap_err();
        match err {
            EmitError::Partial { failures } => {
                assert_eq!(failures.len(), 1);
                assert_eq!(failures[0].index, 2);
                assert!(failures[0].retryable);
                assert!(failures[0].message.contains("gave up after 2 attempts"));
            }
            other => panic!("{other}"),
        }
    }
}
