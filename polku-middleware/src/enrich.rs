//! Add metadata to every event: fixed pairs, and pairs computed from the event.
//!
//! ```
//! use polku_core::Event;
//! use polku_middleware::{Enricher, identity};
//! use tower::{Layer, ServiceExt};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let enricher = Enricher::new()
//!     .with("env", "prod")
//!     .with_computed("region", |e: &Event| {
//!         e.source.strip_prefix("eu-").map(|_| "eu".to_string())
//!     });
//! let svc = enricher.layer(identity());
//! let out = svc
//!     .oneshot(vec![
//!         Event::new("a").with_source("eu-api"),
//!         Event::new("b").with_metadata("env", "staging"),
//!     ])
//!     .await
//!     .unwrap();
//! assert_eq!(out[0].metadata["env"], "prod");
//! assert_eq!(out[0].metadata["region"], "eu");
//! // A key the event already has is kept, unless `.overwrite(true)`.
//! assert_eq!(out[1].metadata["env"], "staging");
//! assert!(!out[1].metadata.contains_key("region"));
//! # });
//! ```
//!
//! `Enricher` is the layer; [`EnrichService`] is the service it makes. The
//! entries are applied in the order they were added, so when two entries share
//! a key the first one that yields a value wins (the last one with
//! `.overwrite(true)`). Nothing is ever dropped: the layer registers as
//! `enrich` and its [`DropCounts`] stay at zero.

use crate::drops::{DropCounts, register};
use polku_core::Event;
use polku_core::Str;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

type Compute = Arc<dyn Fn(&Event) -> Option<String> + Send + Sync>;

#[derive(Clone)]
enum Value {
    Fixed(Str),
    Computed(Compute),
}

#[derive(Clone, Default)]
struct Rules {
    entries: Vec<(Str, Value)>,
    overwrite: bool,
}

impl Rules {
    fn apply(&self, e: &mut Event) {
        for (key, value) in &self.entries {
            if !self.overwrite && e.metadata.contains_key(key) {
                continue;
            }
            let value = match value {
                Value::Fixed(v) => v.clone(),
                Value::Computed(f) => match f(e) {
                    Some(v) => v,
                    None => continue,
                }
                .into(),
            };
            e.metadata.insert(key.clone(), value);
        }
    }
}

struct Entries<'a>(&'a [(Str, Value)]);

impl fmt::Debug for Entries<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let v: &dyn fmt::Debug = match v {
                    Value::Fixed(s) => s,
                    Value::Computed(_) => &"<computed>",
                };
                (k, v)
            }))
            .finish()
    }
}

impl fmt::Debug for Rules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rules")
            .field("entries", &Entries(&self.entries))
            .field("overwrite", &self.overwrite)
            .finish()
    }
}

/// A layer that adds metadata entries to every event.
///
/// Clones share the configuration and the (always zero) drop counters.
#[derive(Clone, Default)]
pub struct Enricher {
    rules: Arc<Rules>,
    drops: DropCounts,
}

impl fmt::Debug for Enricher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Enricher")
            .field("entries", &Entries(&self.rules.entries))
            .field("overwrite", &self.rules.overwrite)
            .finish()
    }
}

impl Enricher {
    /// An enricher that adds nothing yet, and never overwrites.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key = value` to every event.
    pub fn with(mut self, key: impl Into<Str>, value: impl Into<Str>) -> Self {
        Arc::make_mut(&mut self.rules)
            .entries
            .push((key.into(), Value::Fixed(value.into())));
        self
    }

    /// Adds `key = f(event)` to every event for which `f` returns `Some`.
    /// When the event already has `key` (and overwriting is off), `f` is not
    /// called.
    pub fn with_computed<F>(mut self, key: impl Into<Str>, f: F) -> Self
    where
        F: Fn(&Event) -> Option<String> + Send + Sync + 'static,
    {
        Arc::make_mut(&mut self.rules)
            .entries
            .push((key.into(), Value::Computed(Arc::new(f))));
        self
    }

    /// Whether to replace a key the event already has (default: `false`,
    /// the event's own value is kept).
    pub fn overwrite(mut self, overwrite: bool) -> Self {
        Arc::make_mut(&mut self.rules).overwrite = overwrite;
        self
    }

    /// The drop counters; the enricher never drops, so they stay at zero.
    pub fn drops(&self) -> &DropCounts {
        &self.drops
    }
}

impl<S> Layer<S> for Enricher {
    type Service = EnrichService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        register("enrich", &self.drops);
        EnrichService {
            inner,
            rules: self.rules.clone(),
        }
    }
}

/// The service made by [`Enricher`]: adds the metadata, then calls `inner`.
pub struct EnrichService<S> {
    inner: S,
    rules: Arc<Rules>,
}

impl<S: Clone> Clone for EnrichService<S> {
    fn clone(&self) -> Self {
        EnrichService {
            inner: self.inner.clone(),
            rules: self.rules.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for EnrichService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrichService")
            .field("inner", &self.inner)
            .field("rules", &self.rules)
            .finish()
    }
}

impl<S> EnrichService<S> {
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

impl<S> Service<Vec<Event>> for EnrichService<S>
where
    S: Service<Vec<Event>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut batch: Vec<Event>) -> Self::Future {
        for e in &mut batch {
            self.rules.apply(e);
        }
        self.inner.call(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity;
    use tower::ServiceExt;

    async fn run(enricher: &Enricher, batch: Vec<Event>) -> Vec<Event> {
        enricher.layer(identity()).oneshot(batch).await.unwrap()
    }

    #[tokio::test]
    async fn conforms_and_never_drops() {
        let en = Enricher::new().with("env", "prod");
        let out = crate::conformance::check(
            "enrich",
            &en,
            en.drops(),
            vec![Event::new("a"), Event::new("b")],
        )
        .await;
        assert_eq!(out.len(), 2);
        assert_eq!(en.drops().total(), 0);
    }

    #[tokio::test]
    async fn empty_batch_stays_empty() {
        let en = Enricher::new().with("env", "prod");
        assert!(run(&en, vec![]).await.is_empty());
        assert_eq!(en.drops().total(), 0);
    }

    #[tokio::test]
    async fn adds_fixed_and_computed_entries_in_order() {
        let en = Enricher::new()
            .with("env", "prod")
            .with_computed("kind", |e: &Event| {
                e.event_type.split('.').next().map(str::to_string)
            })
            .with_computed("region", |e: &Event| {
                e.source.strip_prefix("eu-").map(|_| "eu".to_string())
            })
            // Sees the entry added before it.
            .with_computed("tag", |e: &Event| {
                Some(format!("{}-{}", e.metadata["env"], e.metadata["kind"]))
            });
        let out = run(
            &en,
            vec![
                Event::new("user.signup").with_source("eu-api"),
                Event::new("sys").with_source("us-api"),
            ],
        )
        .await;
        let md = |i: usize| -> Vec<(&str, &str)> {
            out[i]
                .metadata
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect()
        };
        assert_eq!(
            md(0),
            [
                ("env", "prod"),
                ("kind", "user"),
                ("region", "eu"),
                ("tag", "prod-user")
            ]
        );
        // `None` adds nothing.
        assert_eq!(
            md(1),
            [("env", "prod"), ("kind", "sys"), ("tag", "prod-sys")]
        );
        let types: Vec<_> = out.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, ["user.signup", "sys"], "order kept");
    }

    #[tokio::test]
    async fn keeps_existing_keys_unless_overwrite() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let en = Enricher::new()
            .with("env", "prod")
            .with("env", "second")
            .with_computed("owner", move |_: &Event| {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Some("computed".to_string())
            });
        let given = || {
            Event::new("a")
                .with_metadata("env", "staging")
                .with_metadata("owner", "me")
        };

        let out = run(&en, vec![given(), Event::new("b")]).await;
        assert_eq!(out[0].metadata["env"], "staging");
        assert_eq!(out[0].metadata["owner"], "me");
        assert_eq!(out[1].metadata["env"], "prod", "first entry wins");
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "not computed for a key the event has"
        );

        let en = en.overwrite(true);
        let out = run(&en, vec![given()]).await;
        assert_eq!(out[0].metadata["env"], "second", "last entry wins");
        assert_eq!(out[0].metadata["owner"], "computed");
    }

    #[tokio::test]
    async fn builder_does_not_change_layers_already_made() {
        let en = Enricher::new().with("a", "1");
        let svc = en.layer(identity());
        let en2 = en.clone().with("b", "2");
        let out = svc.oneshot(vec![Event::new("x")]).await.unwrap();
        assert!(!out[0].metadata.contains_key("b"));
        let out = run(&en2, vec![Event::new("x")]).await;
        assert_eq!(out[0].metadata["b"], "2");
        assert!(format!("{en2:?}").contains("\"b\": \"2\""));
    }
}
