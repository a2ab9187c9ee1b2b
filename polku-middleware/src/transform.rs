//! Change every event with a function.
//!
//! ```
//! use polku_core::Event;
//! use polku_middleware::{Transform, identity};
//! use tower::{Layer, ServiceExt};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let svc = Transform::new(|mut e| {
//!     e.metadata.insert("env".into(), "prod".into());
//!     e
//! })
//! .layer(identity());
//! let out = svc.oneshot(vec![Event::new("a")]).await.unwrap();
//! assert_eq!(out[0].metadata["env"], "prod");
//! # });
//! ```
//!
//! `Transform` is the layer (the README's name); [`TransformService`] is the
//! service. The batch's allocation is reused: no per-batch copy.

use polku_core::Event;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// A layer that passes every event through a function.
pub struct Transform<F> {
    f: Arc<F>,
}

impl<F> Clone for Transform<F> {
    fn clone(&self) -> Self {
        Transform { f: self.f.clone() }
    }
}

impl<F> fmt::Debug for Transform<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transform").finish_non_exhaustive()
    }
}

impl<F> Transform<F>
where
    F: Fn(Event) -> Event + Send + Sync + 'static,
{
    /// Replaces each event with `f(event)`.
    pub fn new(f: F) -> Self {
        Transform { f: Arc::new(f) }
    }
}

impl<S, F> Layer<S> for Transform<F> {
    type Service = TransformService<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        TransformService {
            inner,
            f: self.f.clone(),
        }
    }
}

/// The service made by [`Transform`].
pub struct TransformService<S, F> {
    inner: S,
    f: Arc<F>,
}

impl<S: Clone, F> Clone for TransformService<S, F> {
    fn clone(&self) -> Self {
        TransformService {
            inner: self.inner.clone(),
            f: self.f.clone(),
        }
    }
}

impl<S: fmt::Debug, F> fmt::Debug for TransformService<S, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransformService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, F> TransformService<S, F> {
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

impl<S, F> Service<Vec<Event>> for TransformService<S, F>
where
    S: Service<Vec<Event>>,
    F: Fn(Event) -> Event,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, batch: Vec<Event>) -> Self::Future {
        // `into_iter().map().collect()` into the same type reuses the buffer.
        let batch = batch.into_iter().map(|e| (self.f)(e)).collect();
        self.inner.call(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity;
    use tower::ServiceExt;

    #[tokio::test]
    async fn changes_every_event_and_keeps_the_order() {
        let t = Transform::new(|mut e: Event| {
            e.event_type = e.event_type.to_uppercase().into();
            e
        });
        let out = t
            .layer(identity())
            .oneshot(vec![Event::new("a"), Event::new("b")])
            .await
            .unwrap();
        let types: Vec<_> = out.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, ["A", "B"]);
    }

    #[tokio::test]
    async fn empty_batch_stays_empty() {
        let t = Transform::new(|e: Event| e);
        assert!(
            t.layer(identity())
                .oneshot(vec![])
                .await
                .unwrap()
                .is_empty()
        );
    }
}
