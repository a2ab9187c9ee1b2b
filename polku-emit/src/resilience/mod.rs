//! Delivery resilience as tower layers that any emitter can wear: a timeout,
//! retries with backoff, a circuit breaker, and a failure store.
//!
//! An emitter becomes a tower [`Service`](tower::Service) over shared batches
//! ([`Batch`]) through [`EmitterService`]; each layer wraps such a service and
//! is one more such service. [`Resilience`] stacks the usual four, outermost
//! first: failure store, retry, circuit breaker, timeout. The result,
//! [`Resilient`], is an [`Emitter`](polku_core::Emitter) again and keeps the
//! wrapped emitter's name, so `route_to` still finds it.
//!
//! ```
//! use polku_emit::resilience::{BreakerConfig, Resilience, RetryPolicy};
//! use polku_emit::MemoryEmitter;
//! use polku_core::Emitter;
//! use std::time::Duration;
//!
//! let webhook = MemoryEmitter::new("webhook"); // stands in for any emitter
//! let resilient = Resilience::new()
//!     .timeout(Duration::from_secs(5))
//!     .retry(RetryPolicy::new(8, Duration::from_secs(60)).unwrap())
//!     .breaker(BreakerConfig::new(5, Duration::from_secs(10)).unwrap())
//!     .failure_store(10_000, 16 << 20)
//!     .unwrap()
//!     .wrap(webhook);
//! assert_eq!(resilient.name(), "webhook");
//! ```
//!
//! Which errors are retried: [`EmitError::Unavailable`](polku_core::EmitError)
//! (including a timeout and an open breaker) and the retryable events of a
//! [`Partial`](polku_core::EmitError::Partial). `Rejected` is final: the
//! destination answered and said no.

mod breaker;
mod resilient;
mod retry;
mod service;
mod store;
mod timeout;

pub use breaker::{BreakerConfig, CircuitBreaker, CircuitBreakerLayer};
pub use resilient::{Resilience, Resilient};
pub use retry::{Retry, RetryLayer, RetryPolicy};
pub use service::{Batch, BoxEmitService, EmitFuture, EmitterService};
pub use store::{StoreFailures, StoreFailuresLayer};
pub use timeout::{EmitTimeout, EmitTimeoutLayer};

/// A resilience setting was out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResilienceError {
    /// A value that must be positive was zero.
    #[error("{what} must be greater than zero")]
    Zero {
        /// The setting.
        what: &'static str,
    },
    /// The maximum backoff is below the initial one.
    #[error("the maximum backoff ({max:?}) is below the initial backoff ({initial:?})")]
    BackoffOrder {
        /// The initial backoff.
        initial: std::time::Duration,
        /// The maximum backoff.
        max: std::time::Duration,
    },
}

#[cfg(test)]
pub(crate) mod testing {
    //! A scripted emitter for the layers' tests.

    use async_trait::async_trait;
    use polku_core::{EmitError, Emitter, Event};
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// Answers each call with the next scripted result (then `Ok`), and
    /// records the ids of every batch it was given.
    #[derive(Debug, Default)]
    pub(crate) struct Scripted {
        pub(crate) script: Mutex<VecDeque<Result<(), EmitError>>>,
        pub(crate) calls: Mutex<Vec<Vec<String>>>,
        pub(crate) hang: std::sync::atomic::AtomicBool,
    }

    impl Scripted {
        pub(crate) fn new(script: impl IntoIterator<Item = Result<(), EmitError>>) -> Self {
            Scripted {
                script: Mutex::new(script.into_iter().collect()),
                ..Default::default()
            }
        }

        pub(crate) fn calls(&self) -> Vec<Vec<String>> {
            self.calls.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl Emitter for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }

        async fn emit(&self, events: &[Event]) -> Result<(), EmitError> {
            self.calls
                .lock()
                .unwrap()
                .push(events.iter().map(|e| e.id.to_string()).collect());
            if self.hang.load(std::sync::atomic::Ordering::Relaxed) {
                std::future::pending::<()>().await;
            }
            self.script.lock().unwrap().pop_front().unwrap_or(Ok(()))
        }
    }

    pub(crate) fn batch(ids: &[&str]) -> super::Batch {
        std::sync::Arc::new(
            ids.iter()
                .map(|id| {
                    let mut e = Event::new("t");
                    e.id = (*id).to_owned().into();
                    e
                })
                .collect(),
        )
    }

    pub(crate) fn down() -> Result<(), EmitError> {
        Err(EmitError::unavailable("connection refused", None))
    }
}
