//! The emitter trait: batches of events out to a destination.

use crate::delivery::DeliveryState;
use crate::{EmitError, Event};
use std::sync::Arc;

/// Sends batches of events to one destination.
///
/// The gateway runs each emitter on its own task with its own queue, so a slow
/// emitter does not hold up ingestion or the other emitters. `emit` gets a
/// slice: batches are shared between emitters, never copied per emitter.
///
/// ```
/// use async_trait::async_trait;
/// use polku_core::{EmitError, Emitter, Event};
/// use std::sync::atomic::{AtomicUsize, Ordering};
///
/// /// Counts events and throws them away.
/// #[derive(Debug, Default)]
/// struct Null(AtomicUsize);
///
/// #[async_trait]
/// impl Emitter for Null {
///     fn name(&self) -> &str { "null" }
///     async fn emit(&self, events: &[Event]) -> Result<(), EmitError> {
///         self.0.fetch_add(events.len(), Ordering::Relaxed);
///         Ok(())
///     }
/// }
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let null = Null::default();
/// null.emit(&[Event::new("a"), Event::new("b")]).await.unwrap();
/// assert_eq!(null.0.load(Ordering::Relaxed), 2);
/// # });
/// ```
#[async_trait::async_trait]
pub trait Emitter: Send + Sync + std::fmt::Debug + 'static {
    /// The emitter's name; `route_to` addresses emitters by it.
    fn name(&self) -> &str;

    /// Delivers a batch. `Ok` means every event was delivered.
    async fn emit(&self, events: &[Event]) -> Result<(), EmitError>;

    /// Delivers a batch that the gateway shares between emitters. The default
    /// calls [`emit`](Self::emit); an emitter that keeps the batch past the
    /// call (to retry it, say) overrides this to do so without a copy.
    async fn emit_shared(&self, events: Arc<Vec<Event>>) -> Result<(), EmitError> {
        self.emit(&events).await
    }

    /// How many requests, one after the other, [`emit`](Self::emit) makes for
    /// this batch (default 1). An emitter that splits a batch (by count or by
    /// size) and bounds each request with its own timeout says so here, so
    /// that a timeout around the whole call gives each request its time
    /// instead of cutting a large batch that is making progress.
    fn requests_for(&self, events: &[Event]) -> usize {
        let _ = events;
        1
    }

    /// The state of the emitter's delivery machinery (circuit breaker,
    /// retries, failure store), if it has any; the gateway shows it in health
    /// and metrics.
    fn delivery_state(&self) -> Option<&DeliveryState> {
        None
    }

    /// Whether the emitter can deliver right now.
    async fn healthy(&self) -> bool {
        true
    }

    /// How many calls the emitter wants under way at once when the gateway
    /// is not told otherwise (default 1: one at a time, in order). An
    /// emitter whose calls wait on a batch of its own (an S3 object) asks
    /// for many.
    fn calls_at_once(&self) -> usize {
        1
    }

    /// The most events one call takes from the batches already queued for
    /// the emitter, when the gateway is not told otherwise: `None` (the
    /// default) is one batch per call. An emitter whose calls wait on
    /// something shared (a writer, a round trip) asks for more, so that the
    /// events of many small requests (unary calls) become one call.
    fn gathers_up_to(&self) -> Option<usize> {
        None
    }

    /// Asks an emitter that holds calls' events for a batch of its own (an
    /// S3 object being filled) to write what it holds now instead of waiting
    /// for its size or age limit. The gateway calls it when its buffer is
    /// full (the held events keep their room, so nothing more can come in
    /// until they are written) and when an emitter's queue is closed. It
    /// must return at once; the held calls return once the write is done.
    /// The default does nothing.
    fn flush_now(&self) {}

    /// Flushes anything pending. The gateway calls it once, after the last
    /// batch, when it shuts down.
    async fn shutdown(&self) -> Result<(), EmitError> {
        Ok(())
    }
}
