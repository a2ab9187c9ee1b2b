//! Keep the events that match a predicate; count the rest as filtered.
//!
//! ```
//! use polku_core::Event;
//! use polku_middleware::{Filter, identity};
//! use tower::{Layer, ServiceExt};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let filter = Filter::new(|e| e.event_type.starts_with("user."));
//! let svc = filter.layer(identity());
//! let kept = svc
//!     .oneshot(vec![Event::new("user.signup"), Event::new("system.tick")])
//!     .await
//!     .unwrap();
//! assert_eq!(kept.len(), 1);
//! assert_eq!(filter.filtered(), 1);
//! # });
//! ```
//!
//! `Filter` is the layer (the name the README uses in
//! `.middleware(Filter::new(...))`); [`FilterService`] is the service it makes.

use crate::drops::{DropCounts, DropReason, register};
use polku_core::Event;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// A layer that keeps the events for which the predicate is true.
pub struct Filter<P> {
    predicate: Arc<P>,
    drops: DropCounts,
}

impl<P> Clone for Filter<P> {
    fn clone(&self) -> Self {
        Filter {
            predicate: self.predicate.clone(),
            drops: self.drops.clone(),
        }
    }
}

impl<P> fmt::Debug for Filter<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Filter")
            .field("filtered", &self.filtered())
            .finish_non_exhaustive()
    }
}

impl<P> Filter<P>
where
    P: Fn(&Event) -> bool + Send + Sync + 'static,
{
    /// Keeps events for which `predicate` returns true.
    pub fn new(predicate: P) -> Self {
        Filter {
            predicate: Arc::new(predicate),
            drops: DropCounts::default(),
        }
    }
}

impl<P> Filter<P> {
    /// Events dropped so far (reason: filtered), by this layer and every
    /// service it made.
    pub fn filtered(&self) -> u64 {
        self.drops.get(DropReason::Filtered)
    }

    /// The drop counters (reason: filtered).
    pub fn drops(&self) -> &DropCounts {
        &self.drops
    }
}

impl<S, P> Layer<S> for Filter<P> {
    type Service = FilterService<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        register("filter", &self.drops);
        FilterService {
            inner,
            predicate: self.predicate.clone(),
            drops: self.drops.clone(),
        }
    }
}

/// The service made by [`Filter`]: drops non-matching events, then calls `inner`.
pub struct FilterService<S, P> {
    inner: S,
    predicate: Arc<P>,
    drops: DropCounts,
}

impl<S: Clone, P> Clone for FilterService<S, P> {
    fn clone(&self) -> Self {
        FilterService {
            inner: self.inner.clone(),
            predicate: self.predicate.clone(),
            drops: self.drops.clone(),
        }
    }
}

impl<S: fmt::Debug, P> fmt::Debug for FilterService<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FilterService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, P> FilterService<S, P> {
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

impl<S, P> Service<Vec<Event>> for FilterService<S, P>
where
    S: Service<Vec<Event>>,
    P: Fn(&Event) -> bool,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut batch: Vec<Event>) -> Self::Future {
        self.drops
            .retain(DropReason::Filtered, &mut batch, |e| (self.predicate)(e));
        self.inner.call(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity;
    use tower::ServiceExt;

    fn ev(t: &str) -> Event {
        Event::new(t)
    }

    #[tokio::test]
    async fn keeps_matches_in_order_and_counts_the_rest() {
        let f = Filter::new(|e: &Event| e.event_type.starts_with("user."));
        let out = f
            .layer(identity())
            .oneshot(vec![ev("user.a"), ev("sys"), ev("user.b"), ev("x")])
            .await
            .unwrap();
        let types: Vec<_> = out.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, ["user.a", "user.b"]);
        assert_eq!(f.filtered(), 2);
    }

    #[tokio::test]
    async fn conforms() {
        let f = Filter::new(|e: &Event| e.event_type == "keep");
        let out =
            crate::conformance::check("filter", &f, f.drops(), vec![ev("keep"), ev("x")]).await;
        assert_eq!(out.len(), 1);
    }

    #[tokio::test]
    async fn empty_batch_and_everything_dropped() {
        let f = Filter::new(|_: &Event| false);
        assert!(
            f.layer(identity())
                .oneshot(vec![])
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(f.filtered(), 0);
        let out = f
            .layer(identity())
            .oneshot(vec![ev("a"), ev("b")])
            .await
            .unwrap();
        assert!(out.is_empty());
        assert_eq!(f.filtered(), 2, "clones of the layer share the count");
    }
}
