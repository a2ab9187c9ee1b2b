//! The checks every middleware passes, shared by their tests.

use crate::{DropCounts, identity};
use polku_core::Event;
use tower::{Layer, ServiceExt};

/// Runs a layer over an empty batch and over `batch`, and checks the rules
/// every middleware keeps:
/// - an empty batch gives an empty batch and counts nothing;
/// - every event that goes in comes out or is counted as a drop
///   (for middleware that never adds events);
/// - the layer registers itself under `name` when a chain is built.
///
/// Returns the events that came out of `batch`.
pub(crate) async fn check<L>(
    name: &str,
    layer: &L,
    drops: &DropCounts,
    batch: Vec<Event>,
) -> Vec<Event>
where
    L: Layer<crate::BatchService>,
    L::Service: tower::Service<Vec<Event>, Response = Vec<Event>>,
    <L::Service as tower::Service<Vec<Event>>>::Error: std::fmt::Debug,
{
    let before = drops.total();
    let (svc, reg) = crate::Registry::collect(|| layer.layer(identity()));
    assert!(
        reg.entries().iter().any(|r| r.name() == name),
        "{name} should register its drop counters"
    );
    let empty = svc.oneshot(vec![]).await.expect("empty batch");
    assert!(empty.is_empty(), "{name}: an empty batch stays empty");
    assert_eq!(
        drops.total(),
        before,
        "{name}: nothing counted for an empty batch"
    );

    let n = batch.len() as u64;
    let out = layer
        .layer(identity())
        .oneshot(batch)
        .await
        .expect("batch passes");
    assert_eq!(
        out.len() as u64 + (drops.total() - before),
        n,
        "{name}: every event comes out or is counted as dropped"
    );
    out
}
