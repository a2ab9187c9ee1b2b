//! Keeps what could not be delivered: events that failed for good, or ran out
//! of retries, go into the emitter's [`FailureStore`] with the reason, where an
//! operator can list them and send them again. A store with a durable copy
//! has them on disk before the call returns.
//!
//! ```
//! use polku_core::delivery::{DeliveryState, FailureStore};
//! use polku_emit::resilience::{EmitterService, StoreFailuresLayer};
//! use polku_emit::MemoryEmitter;
//! use std::sync::Arc;
//! use tower::Layer;
//!
//! let state = Arc::new(DeliveryState::new(Some(FailureStore::new(10_000, 16 << 20).unwrap())));
//! let svc = StoreFailuresLayer::new(state, "m")
//!     .layer(EmitterService::new(Arc::new(MemoryEmitter::new("m"))));
//! # drop(svc);
//! ```

use super::{Batch, EmitFuture};
use polku_core::EmitError;
use polku_core::delivery::{DeliveryState, FailureStore, StoredFailure};
use std::sync::Arc;
use std::task::{Context, Poll};
use tracing::{error, warn};

/// Wraps an emit service in [`StoreFailures`].
#[derive(Debug, Clone)]
pub struct StoreFailuresLayer {
    state: Arc<DeliveryState>,
    name: String,
}

impl StoreFailuresLayer {
    /// Stores failures in `state`'s failure store (a state without one
    /// stores nothing); `emitter` names the emitter in logs.
    pub fn new(state: Arc<DeliveryState>, emitter: impl Into<String>) -> Self {
        StoreFailuresLayer {
            state,
            name: emitter.into(),
        }
    }
}

impl<S> tower::Layer<S> for StoreFailuresLayer {
    type Service = StoreFailures<S>;

    fn layer(&self, inner: S) -> StoreFailures<S> {
        StoreFailures {
            inner,
            state: self.state.clone(),
            name: self.name.clone(),
        }
    }
}

/// Puts the events of a failed call into the failure store, then returns the
/// error unchanged (the caller still counts them as failed).
#[derive(Debug, Clone)]
pub struct StoreFailures<S> {
    inner: S,
    state: Arc<DeliveryState>,
    name: String,
}

impl<S> StoreFailures<S> {
    /// The store, if the state has one.
    pub fn store(&self) -> Option<&FailureStore> {
        self.state.failure_store()
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

impl<S> tower::Service<Batch> for StoreFailures<S>
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
        let fut = self.inner.call(batch.clone());
        let state = self.state.clone();
        let name = self.name.clone();
        Box::pin(async move {
            let result = fut.await;
            let (Err(err), Some(store)) = (&result, state.failure_store()) else {
                return result;
            };
            let failures: Vec<StoredFailure> = match err {
                EmitError::Partial { failures } => failures
                    .iter()
                    .filter_map(|f| {
                        let event = batch.get(f.index)?.clone();
                        Some(StoredFailure::new(event, f.message.clone(), f.retryable))
                    })
                    .collect(),
                whole => {
                    let reason = whole.to_string();
                    let retryable = whole.is_retryable();
                    batch
                        .iter()
                        .map(|e| StoredFailure::new(e.clone(), reason.clone(), retryable))
                        .collect()
                }
            };
            let n = failures.len();
            let evicted = store.push(failures);
            warn!(emitter = %name, events = n, error = %err, "undelivered events kept in the failure store");
            if evicted > 0 {
                error!(emitter = %name, events = evicted, "failure store full; the oldest failed events were discarded");
            }
            // A store with a durable copy: the call is over (and the events
            // let go of upstream) only once they are on disk.
            if let Err(e) = store.flush().await {
                error!(emitter = %name, events = n, error = %e, "failed events kept in memory only: a crash would lose them");
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::EmitterService;
    use crate::resilience::testing::{Scripted, batch, down};
    use polku_core::EventFailure;
    use tower::{Layer, ServiceExt};

    fn stored(state: &DeliveryState) -> Vec<(String, String, bool)> {
        state
            .failure_store()
            .unwrap()
            .list(0, 100)
            .into_iter()
            .map(|f| (f.event.id.to_string(), f.reason, f.retryable))
            .collect()
    }

    #[tokio::test]
    async fn whole_and_partial_failures_are_kept_with_their_reason() {
        let emitter = Arc::new(Scripted::new([
            Err(EmitError::Rejected {
                message: "400 no".into(),
            }),
            Err(EmitError::Partial {
                failures: vec![EventFailure {
                    index: 1,
                    message: "too big".into(),
                    retryable: false,
                }],
            }),
            down(),
        ]));
        let state = Arc::new(DeliveryState::new(Some(
            FailureStore::new(100, 1 << 20).unwrap(),
        )));
        let svc =
            StoreFailuresLayer::new(state.clone(), "scripted").layer(EmitterService::new(emitter));
        let err = svc.clone().oneshot(batch(&["a", "b"])).await.unwrap_err();
        assert!(
            matches!(err, EmitError::Rejected { .. }),
            "the error goes on unchanged"
        );
        svc.clone()
            .oneshot(batch(&["c", "d", "e"]))
            .await
            .unwrap_err();
        svc.clone().oneshot(batch(&["f"])).await.unwrap_err();
        svc.clone().oneshot(batch(&["g"])).await.unwrap();
        let reject = "destination rejected the batch: 400 no".to_owned();
        assert_eq!(
            stored(&state),
            vec![
                ("a".into(), reject.clone(), false),
                ("b".into(), reject, false),
                ("d".into(), "too big".into(), false),
                (
                    "f".into(),
                    "destination unavailable: connection refused".into(),
                    true
                ),
            ]
        );
    }

    #[tokio::test]
    async fn without_a_store_errors_just_pass() {
        let emitter = Arc::new(Scripted::new([down()]));
        let state = Arc::new(DeliveryState::new(None));
        let svc = StoreFailuresLayer::new(state, "scripted").layer(EmitterService::new(emitter));
        assert!(svc.oneshot(batch(&["a"])).await.is_err());
    }
}
