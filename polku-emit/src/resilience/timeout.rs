//! A time limit on each emit call: the timeout, or, for an emitter that
//! sends a batch in `n > 1` requests ([`Emitter::requests_for`], given with
//! [`EmitTimeoutLayer::per_request_of`]), `n + 1` times it, so that a large
//! batch making progress is not cut (each request has its own timeout).
//!
//! ```
//! use polku_emit::resilience::{EmitTimeoutLayer, EmitterService};
//! use polku_emit::MemoryEmitter;
//! use std::{sync::Arc, time::Duration};
//! use tower::Layer;
//!
//! let svc = EmitTimeoutLayer::new(Duration::from_secs(5))
//!     .layer(EmitterService::new(Arc::new(MemoryEmitter::new("m"))));
//! # drop(svc);
//! ```

use super::{Batch, EmitFuture};
use polku_core::delivery::DeliveryState;
use polku_core::{EmitError, Emitter};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Wraps an emit service in [`EmitTimeout`].
#[derive(Debug, Clone)]
pub struct EmitTimeoutLayer {
    timeout: Duration,
    state: Option<Arc<DeliveryState>>,
    per_request: Option<Arc<dyn Emitter>>,
}

impl EmitTimeoutLayer {
    /// Calls that take longer than `timeout` fail as
    /// [`Unavailable`](EmitError::Unavailable) (so they are retried).
    pub fn new(timeout: Duration) -> Self {
        EmitTimeoutLayer {
            timeout,
            state: None,
            per_request: None,
        }
    }

    /// Scales the limit by how many requests `emitter` makes for each batch.
    pub fn per_request_of(mut self, emitter: Arc<dyn Emitter>) -> Self {
        self.per_request = Some(emitter);
        self
    }

    /// Counts timeouts in `state`.
    pub fn with_state(mut self, state: Arc<DeliveryState>) -> Self {
        self.state = Some(state);
        self
    }
}

impl<S> tower::Layer<S> for EmitTimeoutLayer {
    type Service = EmitTimeout<S>;

    fn layer(&self, inner: S) -> EmitTimeout<S> {
        EmitTimeout {
            inner,
            timeout: self.timeout,
            state: self.state.clone(),
            per_request: self.per_request.clone(),
        }
    }
}

/// Fails an emit call that runs past its time limit.
#[derive(Debug, Clone)]
pub struct EmitTimeout<S> {
    inner: S,
    timeout: Duration,
    state: Option<Arc<DeliveryState>>,
    per_request: Option<Arc<dyn Emitter>>,
}

impl<S> EmitTimeout<S> {
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

impl<S> tower::Service<Batch> for EmitTimeout<S>
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
        let requests = self
            .per_request
            .as_ref()
            .map_or(1, |e| e.requests_for(&batch).max(1));
        let limit = if requests > 1 {
            self.timeout
                .saturating_mul(u32::try_from(requests + 1).unwrap_or(u32::MAX))
        } else {
            self.timeout
        };
        let fut = self.inner.call(batch);
        let state = self.state.clone();
        Box::pin(async move {
            match tokio::time::timeout(limit, fut).await {
                Ok(result) => result,
                Err(_) => {
                    if let Some(s) = state {
                        s.add_timeout();
                    }
                    Err(EmitError::unavailable(
                        format!("no answer within {limit:?}"),
                        None,
                    ))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::EmitterService;
    use crate::resilience::testing::{Scripted, batch};
    use tower::{Layer, ServiceExt};

    #[tokio::test(start_paused = true)]
    async fn a_hung_call_fails_as_unavailable_after_the_limit() {
        let emitter = Arc::new(Scripted::default());
        emitter
            .hang
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let state = Arc::new(DeliveryState::new(None));
        let svc = EmitTimeoutLayer::new(Duration::from_secs(3))
            .with_state(state.clone())
            .layer(EmitterService::new(emitter));
        let started = tokio::time::Instant::now();
        let err = svc.oneshot(batch(&["a"])).await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert!(err.is_retryable());
        assert!(err.to_string().contains("no answer within 3s"), "{err}");
        assert_eq!(state.timeouts(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_prompt_answer_passes_through() {
        let emitter = Arc::new(Scripted::new([Err(EmitError::Rejected {
            message: "no".into(),
        })]));
        let svc = EmitTimeoutLayer::new(Duration::from_secs(3)).layer(EmitterService::new(emitter));
        let err = svc.clone().oneshot(batch(&["a"])).await.unwrap_err();
        assert!(matches!(err, EmitError::Rejected { .. }));
        svc.oneshot(batch(&["b"])).await.unwrap();
    }
}
