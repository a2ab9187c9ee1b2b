//! The usual resilience stack around one emitter, as an emitter again.

use super::{
    BoxEmitService, BreakerConfig, CircuitBreakerLayer, EmitTimeoutLayer, EmitterService,
    ResilienceError, RetryLayer, RetryPolicy, StoreFailuresLayer,
};
use async_trait::async_trait;
use polku_core::delivery::{BreakerState, DeliveryState, FailureStore};
use polku_core::{EmitError, Emitter, Event};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt as _;

/// Which layers to put around an emitter, and their settings.
///
/// [`Resilience::default`] has all four: a 10 s timeout per call, the
/// default [`RetryPolicy`], the default [`BreakerConfig`], and a failure
/// store of 10,000 events and 16 MiB. [`Resilience::new`] has none; add
/// the ones wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resilience {
    timeout: Option<Duration>,
    retry: Option<RetryPolicy>,
    breaker: Option<BreakerConfig>,
    store: Option<(usize, usize)>,
}

impl Default for Resilience {
    fn default() -> Self {
        Resilience {
            timeout: Some(Duration::from_secs(10)),
            retry: Some(RetryPolicy::default()),
            breaker: Some(BreakerConfig::default()),
            store: Some((10_000, 16 << 20)),
        }
    }
}

impl Resilience {
    /// No layers yet.
    pub fn new() -> Self {
        Resilience {
            timeout: None,
            retry: None,
            breaker: None,
            store: None,
        }
    }

    /// A time limit on each call to the emitter (each retry has its own).
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Retries as `policy` says.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// A circuit breaker.
    pub fn breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = Some(config);
        self
    }

    /// A failure store bounded in events and bytes.
    pub fn failure_store(
        mut self,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Self, ResilienceError> {
        if max_events == 0 {
            return Err(ResilienceError::Zero {
                what: "the failure store's event bound",
            });
        }
        if max_bytes == 0 {
            return Err(ResilienceError::Zero {
                what: "the failure store's byte bound",
            });
        }
        self.store = Some((max_events, max_bytes));
        Ok(self)
    }

    /// Wraps `emitter`.
    pub fn wrap(&self, emitter: impl Emitter) -> Resilient {
        self.wrap_arc(Arc::new(emitter))
    }

    /// Wraps an emitter that is already shared.
    pub fn wrap_arc(&self, emitter: Arc<dyn Emitter>) -> Resilient {
        let name = emitter.name().to_owned();
        // Bounds were checked by `failure_store`.
        let store = self
            .store
            .and_then(|(events, bytes)| FailureStore::new(events, bytes).ok());
        let state = Arc::new(DeliveryState::new(store));
        let builder = tower::ServiceBuilder::new()
            .layer(StoreFailuresLayer::new(state.clone(), name.clone()))
            .option_layer(
                self.retry
                    .map(|p| RetryLayer::new(p).with_state(state.clone())),
            )
            .option_layer(
                self.breaker
                    .map(|c| CircuitBreakerLayer::new(c).with_state(state.clone(), name.clone())),
            )
            .option_layer(self.timeout.map(|t| {
                EmitTimeoutLayer::new(t)
                    .with_state(state.clone())
                    .per_request_of(emitter.clone())
            }));
        let service = BoxEmitService::new(builder.service(EmitterService::new(emitter.clone())));
        Resilient {
            emitter,
            service,
            state,
        }
    }
}

/// An emitter wearing resilience layers; it keeps the wrapped emitter's name.
#[derive(Debug, Clone)]
pub struct Resilient {
    emitter: Arc<dyn Emitter>,
    service: BoxEmitService,
    state: Arc<DeliveryState>,
}

impl Resilient {
    /// An emitter that delivers through `service` (any stack of layers over
    /// an [`EmitterService`] of `emitter`), reporting through `state` (give
    /// the same state to the layers).
    pub fn from_service(
        emitter: Arc<dyn Emitter>,
        service: BoxEmitService,
        state: Arc<DeliveryState>,
    ) -> Self {
        Resilient {
            emitter,
            service,
            state,
        }
    }

    /// The wrapped emitter.
    pub fn get_ref(&self) -> &Arc<dyn Emitter> {
        &self.emitter
    }

    /// The failure store, if there is one.
    pub fn failure_store(&self) -> Option<&FailureStore> {
        self.state.failure_store()
    }
}

#[async_trait]
impl Emitter for Resilient {
    fn name(&self) -> &str {
        self.emitter.name()
    }

    async fn emit(&self, events: &[Event]) -> Result<(), EmitError> {
        self.emit_shared(Arc::new(events.to_vec())).await
    }

    async fn emit_shared(&self, events: Arc<Vec<Event>>) -> Result<(), EmitError> {
        self.service.clone().oneshot(events).await
    }

    /// Unhealthy while the breaker is open; otherwise as the wrapped emitter.
    async fn healthy(&self) -> bool {
        self.state.breaker() != Some(BreakerState::Open) && self.emitter.healthy().await
    }

    async fn shutdown(&self) -> Result<(), EmitError> {
        self.emitter.shutdown().await
    }

    fn requests_for(&self, events: &[Event]) -> usize {
        self.emitter.requests_for(events)
    }

    fn flush_now(&self) {
        self.emitter.flush_now();
    }

    fn calls_at_once(&self) -> usize {
        self.emitter.calls_at_once()
    }

    fn gathers_up_to(&self) -> Option<usize> {
        self.emitter.gathers_up_to()
    }

    fn delivery_state(&self) -> Option<&DeliveryState> {
        Some(&self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::testing::{Scripted, down};

    fn events(ids: &[&str]) -> Vec<Event> {
        ids.iter()
            .map(|id| {
                let mut e = Event::new("t");
                e.id = (*id).to_owned().into();
                e
            })
            .collect()
    }

    #[test]
    fn store_bounds_are_checked() {
        assert!(Resilience::new().failure_store(0, 1).is_err());
        assert!(Resilience::new().failure_store(1, 0).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_full_stack_retries_opens_stores_and_keeps_the_name() {
        let emitter = Arc::new(Scripted::new((0..3).map(|_| down())));
        let r = Resilience::new()
            .retry(
                RetryPolicy::new(3, Duration::from_secs(60))
                    .unwrap()
                    .without_jitter(),
            )
            .breaker(BreakerConfig::new(3, Duration::from_secs(30)).unwrap())
            .timeout(Duration::from_secs(1))
            .failure_store(100, 1 << 20)
            .unwrap()
            .wrap_arc(emitter.clone());
        assert_eq!(r.name(), "scripted");
        assert!(r.healthy().await);
        let err = r.emit(&events(&["a", "b"])).await.unwrap_err();
        assert!(
            err.to_string().contains("gave up after 3 attempts"),
            "{err}"
        );
        let state = r.delivery_state().unwrap();
        assert_eq!(state.breaker(), Some(BreakerState::Open));
        assert!(!r.healthy().await, "an open breaker is not healthy");
        assert_eq!(state.retries(), 2);
        let kept = r.failure_store().unwrap().list(0, 10);
        assert_eq!(kept.len(), 2);
        assert!(kept.iter().all(|f| f.retryable));

        // While open, a call fails fast; the retry waits out the cool-down
        // and the probe (the script is spent) goes through.
        let started = tokio::time::Instant::now();
        r.emit(&events(&["c"])).await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_secs(29),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(state.breaker(), Some(BreakerState::Closed));
        assert_eq!(emitter.calls().last().unwrap(), &vec!["c".to_owned()]);
    }

    #[tokio::test]
    async fn without_layers_it_is_the_emitter() {
        let emitter = Arc::new(Scripted::new([down()]));
        let r = Resilience::new().wrap_arc(emitter.clone());
        assert!(r.emit(&events(&["a"])).await.is_err());
        assert!(r.failure_store().is_none());
        assert_eq!(r.delivery_state().unwrap().breaker(), None);
    }
}
