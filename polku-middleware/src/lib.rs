//! POLKU's middleware: tower layers over batches of events.
//!
//! Every stage between ingestion and the buffer is a [`tower::Service`] that
//! takes a batch (`Vec<Event>`) and returns the batch to pass on. Because they
//! are plain tower layers, they compose with tower's own (timeout, concurrency
//! limit) and can be reused in any tower stack.
//!
//! So far: [`Filter`] and [`Transform`]. Each middleware is one file, with
//! its layer, its service and its tests.
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

#[cfg(test)]
mod conformance;
pub mod drops;
mod filter;
mod transform;

pub use drops::{DropCounts, DropReason, Registry, register};
pub use filter::{Filter, FilterService};
pub use transform::{Transform, TransformService};

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
