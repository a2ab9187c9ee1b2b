//! POLKU's middleware: tower layers over batches of events.
//!
//! Every stage between ingestion and the buffer is a [`tower::Service`] that
//! takes a batch (`Vec<Event>`) and returns the batch to pass on. Because they
//! are plain tower layers, they compose with tower's own (timeout, concurrency
//! limit) and can be reused in any tower stack.
//!
//! | Middleware | What it does | Drops counted as |
//! |---|---|---|
//! | [`Filter`] | keeps events that match a predicate | `filtered` |
//! | [`Transform`] | changes each event with a function | - |
//! | [`Router`] | sets `route_to` by rules, with a default and an unroutable policy | `unroutable` |
//! | [`RateLimiter`] | token bucket, global or per key, drop or delay | `rate_limited` |
//! | [`Sampler`] | keeps a fraction, deterministic by key or random | `sampled` |
//! | [`Deduplicator`] | drops keys seen within a window, bounded memory | `duplicate` |
//! | [`Enricher`] | adds metadata, fixed or computed | - |
//! | [`Validator`] | required fields, JSON payloads, size limits; drop or dead-letter | `invalid` |
//! | [`Throttle`] | a per-source cap per window, bounded memory | `throttled` |
//! | [`Aggregator`] | folds N events, or a time window, into one summary per group | `aggregated` |
//!
//! Each middleware is one file: its layer, its service and its tests. Every
//! drop is counted per middleware and per reason ([`drops`]).
//!
//! ```
//! use polku_core::Event;
//! use polku_middleware::{BatchService, identity};
//! use tower::ServiceExt;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let svc: BatchService = identity();
//! let out = svc.oneshot(vec![Event::new("a")]).await.unwrap();
//! assert_eq!(out.len(), 1);
//! # });
//! ```

mod aggregate;
#[cfg(test)]
mod conformance;
mod dedup;
pub mod drops;
mod enrich;
mod filter;
mod hash;
mod rate_limit;
mod route;
mod sample;
mod throttle;
mod transform;
mod validate;

pub use aggregate::{AggregateError, AggregateService, Aggregator};
pub use dedup::{DedupError, DedupService, Deduplicator};
pub use drops::{
    Commit, DropCounts, DropReason, Flush, Registry, register, register_with_commit,
    register_with_flush,
};
pub use enrich::{EnrichService, Enricher};
pub use filter::{Filter, FilterService};
pub use rate_limit::{RateLimitError, RateLimitService, RateLimiter};
pub use route::{RouteService, Router, Rule, Rules, Unroutable};
pub use sample::{SampleError, SampleService, Sampler};
pub use throttle::{Throttle, ThrottleError, ThrottleService};
pub use transform::{Transform, TransformService};
pub use validate::{INVALID_KEY, ValidateError, ValidateService, Validator};

use polku_core::{BoxError, Event};
use tower::util::BoxCloneSyncService;

/// A type-erased middleware chain: a batch in, the batch to pass on out.
pub type BatchService = BoxCloneSyncService<Vec<Event>, Vec<Event>, BoxError>;

/// The chain with no middleware: every batch passes unchanged.
pub fn identity() -> BatchService {
    BoxCloneSyncService::new(tower::service_fn(|batch: Vec<Event>| {
        std::future::ready(Ok::<_, BoxError>(batch))
    }))
}
