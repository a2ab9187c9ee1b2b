//! An emitter as a tower service over shared batches.

use polku_core::{EmitError, Emitter, Event};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// A batch of events, shared (not copied) between the layers and retries.
pub type Batch = Arc<Vec<Event>>;

/// The future every emit service returns.
pub type EmitFuture = Pin<Box<dyn Future<Output = Result<(), EmitError>> + Send + 'static>>;

/// Any emit service, boxed: what [`Resilient`](super::Resilient) runs.
pub type BoxEmitService = tower::util::BoxCloneSyncService<Batch, (), EmitError>;

/// Turns an [`Emitter`] into a tower service: each call is one `emit_shared`.
#[derive(Debug)]
pub struct EmitterService<E: ?Sized> {
    emitter: Arc<E>,
}

impl<E: ?Sized> Clone for EmitterService<E> {
    fn clone(&self) -> Self {
        EmitterService {
            emitter: self.emitter.clone(),
        }
    }
}

impl<E: Emitter + ?Sized> EmitterService<E> {
    /// A service that calls `emitter`.
    pub fn new(emitter: Arc<E>) -> Self {
        EmitterService { emitter }
    }

    /// The emitter.
    pub fn get_ref(&self) -> &Arc<E> {
        &self.emitter
    }
}

impl<E: Emitter + ?Sized> tower::Service<Batch> for EmitterService<E> {
    type Response = ();
    type Error = EmitError;
    type Future = EmitFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), EmitError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, batch: Batch) -> EmitFuture {
        let emitter = self.emitter.clone();
        Box::pin(async move { emitter.emit_shared(batch).await })
    }
}
