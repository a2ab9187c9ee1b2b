//! A circuit breaker per destination: after N consecutive failed calls it
//! opens and fails calls at once, without touching the destination, for a
//! cool-down; then it half-opens and lets one probe call through, which
//! closes it on success and reopens it on failure.
//!
//! A failed call is one that ends in
//! [`Unavailable`](polku_core::EmitError::Unavailable) (a timeout too). A
//! destination that answers, even with a refusal, is up.
//!
//! ```
//! use polku_emit::resilience::{BreakerConfig, CircuitBreakerLayer, EmitterService};
//! use polku_emit::MemoryEmitter;
//! use std::{sync::Arc, time::Duration};
//! use tower::Layer;
//!
//! let config = BreakerConfig::new(5, Duration::from_secs(10)).unwrap();
//! let svc = CircuitBreakerLayer::new(config)
//!     .layer(EmitterService::new(Arc::new(MemoryEmitter::new("m"))));
//! # drop(svc);
//! ```

use super::{Batch, EmitFuture, ResilienceError};
use polku_core::EmitError;
use polku_core::delivery::{BreakerState, DeliveryState};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

/// When a breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    failures: u32,
    cooldown: Duration,
}

impl BreakerConfig {
    /// Opens after `failures` consecutive failed calls, for `cooldown`.
    pub fn new(failures: u32, cooldown: Duration) -> Result<Self, ResilienceError> {
        if failures == 0 {
            return Err(ResilienceError::Zero {
                what: "the breaker's failure threshold",
            });
        }
        if cooldown.is_zero() {
            return Err(ResilienceError::Zero {
                what: "the breaker's cool-down",
            });
        }
        Ok(BreakerConfig { failures, cooldown })
    }

    /// Consecutive failed calls that open the breaker.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// How long the breaker stays open before a probe.
    pub fn cooldown(&self) -> Duration {
        self.cooldown
    }
}

impl Default for BreakerConfig {
    /// Opens after 5 consecutive failures, for 5 seconds.
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            cooldown: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed {
        consecutive: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is out; everyone else fails fast.
    HalfOpen,
}

#[derive(Debug)]
struct Shared {
    config: BreakerConfig,
    phase: Mutex<Phase>,
    state: Arc<DeliveryState>,
    name: String,
}

impl Shared {
    fn set(&self, phase: &mut Phase, next: Phase) {
        *phase = next;
        self.state.set_breaker(match next {
            Phase::Closed { .. } => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen => BreakerState::HalfOpen,
        });
    }

    /// Whether a call may go out now, and whether it is the probe.
    fn admit(&self) -> Result<bool, EmitError> {
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match *phase {
            Phase::Closed { .. } => Ok(false),
            Phase::Open { until } if now >= until => {
                self.set(&mut phase, Phase::HalfOpen);
                Ok(true)
            }
            Phase::Open { until } => Err(EmitError::unavailable_for(
                format!(
                    "circuit breaker open after {} consecutive failures; next probe in {:?}",
                    self.config.failures,
                    until - now
                ),
                until - now,
            )),
            Phase::HalfOpen => Err(EmitError::unavailable_for(
                "circuit breaker half-open: a probe call is under way",
                self.config.cooldown,
            )),
        }
    }

    fn record(&self, probe: bool, failed: bool) {
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        match (*phase, failed) {
            (_, false) => {
                if !matches!(*phase, Phase::Closed { .. }) {
                    info!(emitter = %self.name, "circuit breaker closed: the destination answers again");
                }
                self.set(&mut phase, Phase::Closed { consecutive: 0 });
            }
            (Phase::HalfOpen, true) if probe => {
                warn!(emitter = %self.name, cooldown = ?self.config.cooldown, "probe failed; circuit breaker open again");
                let until = Instant::now() + self.config.cooldown;
                self.set(&mut phase, Phase::Open { until });
            }
            (Phase::Closed { consecutive }, true) => {
                let consecutive = consecutive + 1;
                if consecutive >= self.config.failures {
                    warn!(emitter = %self.name, failures = consecutive, cooldown = ?self.config.cooldown, "circuit breaker open");
                    let until = Instant::now() + self.config.cooldown;
                    self.set(&mut phase, Phase::Open { until });
                } else {
                    self.set(&mut phase, Phase::Closed { consecutive });
                }
            }
            // A call that started before the breaker opened and failed
            // after: the breaker is already open.
            _ => {}
        }
    }

    /// A probe that never finished (its caller gave up on it): let the next
    /// call probe instead.
    fn abandon_probe(&self) {
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        if let Phase::HalfOpen = *phase {
            self.set(
                &mut phase,
                Phase::Open {
                    until: Instant::now(),
                },
            );
        }
    }
}

/// Reopens the breaker for the next probe if a probe call is dropped.
struct ProbeGuard {
    shared: Option<Arc<Shared>>,
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if let Some(s) = self.shared.take() {
            s.abandon_probe();
        }
    }
}

/// Wraps an emit service in a [`CircuitBreaker`].
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer {
    config: BreakerConfig,
    state: Option<Arc<DeliveryState>>,
    name: String,
}

impl CircuitBreakerLayer {
    /// A breaker with the given thresholds.
    pub fn new(config: BreakerConfig) -> Self {
        CircuitBreakerLayer {
            config,
            state: None,
            name: String::new(),
        }
    }

    /// Publishes the breaker's state in `state`, and names the emitter in logs.
    pub fn with_state(mut self, state: Arc<DeliveryState>, emitter: impl Into<String>) -> Self {
        self.state = Some(state);
        self.name = emitter.into();
        self
    }
}

impl<S> tower::Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    /// Each service the layer makes has its own breaker.
    fn layer(&self, inner: S) -> CircuitBreaker<S> {
        let state = self
            .state
            .clone()
            .unwrap_or_else(|| Arc::new(DeliveryState::new(None)));
        state.set_breaker(BreakerState::Closed);
        CircuitBreaker {
            inner,
            shared: Arc::new(Shared {
                config: self.config,
                phase: Mutex::new(Phase::Closed { consecutive: 0 }),
                state,
                name: self.name.clone(),
            }),
        }
    }
}

/// Fails calls fast while the destination is known to be down.
#[derive(Debug, Clone)]
pub struct CircuitBreaker<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> CircuitBreaker<S> {
    /// The breaker's state now.
    pub fn state(&self) -> BreakerState {
        self.shared.state.breaker().unwrap_or(BreakerState::Closed)
    }

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

impl<S> tower::Service<Batch> for CircuitBreaker<S>
where
    S: tower::Service<Batch, Response = (), Error = EmitError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = EmitError;
    type Future = EmitFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), EmitError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, batch: Batch) -> EmitFuture {
        let probe = match self.shared.admit() {
            Ok(probe) => probe,
            Err(fast) => return Box::pin(std::future::ready(Err(fast))),
        };
        let fut = self.inner.call(batch);
        let shared = self.shared.clone();
        Box::pin(async move {
            let mut guard = ProbeGuard {
                shared: probe.then(|| shared.clone()),
            };
            let result = fut.await;
            guard.shared = None;
            let failed = matches!(result, Err(EmitError::Unavailable { .. }));
            shared.record(probe, failed);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::EmitterService;
    use crate::resilience::testing::{Scripted, batch, down};
    use tower::{Layer, ServiceExt};

    fn breaker(
        emitter: Arc<Scripted>,
    ) -> (CircuitBreaker<EmitterService<Scripted>>, Arc<DeliveryState>) {
        let state = Arc::new(DeliveryState::new(None));
        let svc = CircuitBreakerLayer::new(BreakerConfig::new(3, Duration::from_secs(10)).unwrap())
            .with_state(state.clone(), "scripted")
            .layer(EmitterService::new(emitter));
        (svc, state)
    }

    #[test]
    fn config_is_checked() {
        assert!(BreakerConfig::new(0, Duration::from_secs(1)).is_err());
        assert!(BreakerConfig::new(1, Duration::ZERO).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn opens_fails_fast_half_opens_and_closes() {
        let emitter = Arc::new(Scripted::new([down(), down(), down(), down()]));
        let (svc, state) = breaker(emitter.clone());
        assert_eq!(state.breaker(), Some(BreakerState::Closed));
        for _ in 0..3 {
            svc.clone().oneshot(batch(&["a"])).await.unwrap_err();
        }
        assert_eq!(svc.state(), BreakerState::Open);
        assert_eq!(emitter.calls().len(), 3);

        // Open: fails at once, without calling the destination, and says when
        // the next probe is due.
        tokio::time::advance(Duration::from_secs(4)).await;
        let err = svc.clone().oneshot(batch(&["b"])).await.unwrap_err();
        assert_eq!(err.retry_after(), Some(Duration::from_secs(6)));
        assert!(err.to_string().contains("circuit breaker open"), "{err}");
        assert_eq!(emitter.calls().len(), 3, "the destination was not called");

        // After the cool-down one probe goes through; it fails: open again.
        tokio::time::advance(Duration::from_secs(6)).await;
        svc.clone().oneshot(batch(&["c"])).await.unwrap_err();
        assert_eq!(emitter.calls().len(), 4);
        assert_eq!(svc.state(), BreakerState::Open);
        assert_eq!(state.breaker_opened(), 2);

        // Next probe succeeds (the script is spent): closed.
        tokio::time::advance(Duration::from_secs(10)).await;
        svc.clone().oneshot(batch(&["d"])).await.unwrap();
        assert_eq!(svc.state(), BreakerState::Closed);
        svc.clone().oneshot(batch(&["e"])).await.unwrap();
        assert_eq!(emitter.calls().len(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn only_one_probe_at_a_time_and_a_dropped_probe_frees_the_slot() {
        let emitter = Arc::new(Scripted::new([down(), down(), down()]));
        let (svc, _) = breaker(emitter.clone());
        for _ in 0..3 {
            svc.clone().oneshot(batch(&["a"])).await.unwrap_err();
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        emitter
            .hang
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let probe = tokio::spawn(svc.clone().oneshot(batch(&["probe"])));
        tokio::task::yield_now().await;
        assert_eq!(svc.state(), BreakerState::HalfOpen);
        let err = svc.clone().oneshot(batch(&["other"])).await.unwrap_err();
        assert!(err.to_string().contains("half-open"), "{err}");
        probe.abort();
        let _ = probe.await;
        emitter
            .hang
            .store(false, std::sync::atomic::Ordering::Relaxed);
        // The abandoned probe's slot goes to the next call.
        svc.clone().oneshot(batch(&["next"])).await.unwrap();
        assert_eq!(svc.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn answers_even_refusals_reset_the_count() {
        let emitter = Arc::new(Scripted::new([
            down(),
            down(),
            Err(EmitError::Rejected {
                message: "400".into(),
            }),
            down(),
            down(),
        ]));
        let (svc, _) = breaker(emitter.clone());
        for _ in 0..5 {
            let _ = svc.clone().oneshot(batch(&["a"])).await;
        }
        assert_eq!(
            svc.state(),
            BreakerState::Closed,
            "2 + 2 failures, never 3 in a row"
        );
    }
}
