//! Counting deliberate drops, per middleware and per reason.
//!
//! A drop on purpose (filtered, sampled, de-duplicated, rate-limited, ...) is a
//! counted outcome, not an error. Each middleware keeps a [`DropCounts`] (one
//! atomic add per batch and reason, no lock) that its layer and every service
//! it makes share.
//!
//! A gateway learns about the counters without any configuration: while it
//! applies layers it opens a [`Registry`] with [`Registry::collect`], and each
//! middleware's `Layer::layer` calls [`register`], which lands in that registry.
//! Your own middleware can do the same.
//!
//! ```
//! use polku_middleware::{DropReason, Filter, Registry, identity};
//! use tower::Layer;
//!
//! let filter = Filter::new(|e| !e.event_type.is_empty());
//! let (svc, registered) = Registry::collect(|| filter.layer(identity()));
//! assert_eq!(registered.entries()[0].name(), "filter");
//! assert_eq!(registered.entries()[0].drops().get(DropReason::Filtered), 0);
//! # drop(svc);
//! ```

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a middleware dropped an event on purpose. The names are metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// A filter's predicate said no.
    Filtered,
    /// Not in the sample.
    Sampled,
    /// Seen before within the de-duplication window.
    Duplicate,
    /// Over the rate limit.
    RateLimited,
    /// Over a per-source cap.
    Throttled,
    /// Failed validation.
    Invalid,
    /// No routing rule and no default could place it.
    Unroutable,
    /// Folded into a summary event.
    Aggregated,
}

impl DropReason {
    /// Every reason, in order.
    pub const ALL: [DropReason; 8] = [
        DropReason::Filtered,
        DropReason::Sampled,
        DropReason::Duplicate,
        DropReason::RateLimited,
        DropReason::Throttled,
        DropReason::Invalid,
        DropReason::Unroutable,
        DropReason::Aggregated,
    ];

    /// The label value, for example `rate_limited`.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Filtered => "filtered",
            DropReason::Sampled => "sampled",
            DropReason::Duplicate => "duplicate",
            DropReason::RateLimited => "rate_limited",
            DropReason::Throttled => "throttled",
            DropReason::Invalid => "invalid",
            DropReason::Unroutable => "unroutable",
            DropReason::Aggregated => "aggregated",
        }
    }

    fn idx(self) -> usize {
        self as usize
    }
}

/// One drop counted on a watched task (see [`watched`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// Whose counters ([`DropCounts::id`]).
    pub counts: usize,
    /// Why.
    pub reason: DropReason,
    /// How many events.
    pub n: u64,
    /// Which events, by id, when the middleware dropped them with
    /// [`DropCounts::retain`] (empty when it only counted them).
    pub ids: Vec<polku_core::EventId>,
}

tokio::task_local! {
    static WATCH: Arc<std::sync::Mutex<Vec<Watched>>>;
}

/// Runs `fut` and tells every drop counted while it ran on this task, in
/// order: which middleware's counters, why and how many. For taps of
/// dropped events: a request's own drops, whatever else runs at once.
pub async fn watched<F: std::future::Future>(fut: F) -> (F::Output, Vec<Watched>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = WATCH.scope(seen.clone(), fut).await;
    let seen = std::mem::take(
        &mut *seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    (out, seen)
}

/// Drop counters of one middleware, by reason. Clones share the counts.
#[derive(Clone, Default)]
pub struct DropCounts(Arc<[AtomicU64; DropReason::ALL.len()]>);

impl DropCounts {
    /// Adds `n` drops for `reason` (nothing when `n` is zero).
    pub fn add(&self, reason: DropReason, n: usize) {
        self.told(reason, n, Vec::new());
    }

    /// Keeps the events of `batch` that `keep` says yes to and counts the
    /// others as dropped for `reason`, in one pass. Under [`watched`]
    /// (someone taps drops) it also tells which events were dropped, so
    /// each carries its own reason; otherwise it costs what `retain_mut`
    /// and one [`add`](Self::add) cost.
    pub fn retain(
        &self,
        reason: DropReason,
        batch: &mut Vec<polku_core::Event>,
        mut keep: impl FnMut(&mut polku_core::Event) -> bool,
    ) {
        let before = batch.len();
        if WATCH.try_with(|_| ()).is_err() {
            batch.retain_mut(keep);
            self.told(reason, before - batch.len(), Vec::new());
            return;
        }
        let mut ids = Vec::new();
        batch.retain_mut(|e| {
            let k = keep(e);
            if !k {
                ids.push(e.id.clone());
            }
            k
        });
        self.told(reason, before - batch.len(), ids);
    }

    fn told(&self, reason: DropReason, n: usize, ids: Vec<polku_core::EventId>) {
        if n > 0 {
            self.0[reason.idx()].fetch_add(n as u64, Relaxed);
            // Under `watched` (someone taps drops), this task's drops are
            // told too: which counts, why, how many, and which events when
            // known.
            let _ = WATCH.try_with(|w| {
                w.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(Watched {
                        counts: self.id(),
                        reason,
                        n: n as u64,
                        ids,
                    });
            });
        }
    }

    /// This set of counters' identity (shared by its clones), to tell whose
    /// drops a [`Watched`] is.
    pub fn id(&self) -> usize {
        Arc::as_ptr(&self.0) as *const () as usize
    }

    /// Drops so far for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.idx()].load(Relaxed)
    }

    /// Drops so far, for every reason.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// The reasons with a count, and their counts.
    pub fn snapshot(&self) -> Vec<(DropReason, u64)> {
        DropReason::ALL
            .iter()
            .map(|r| (*r, self.get(*r)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

impl fmt::Debug for DropCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.snapshot()).finish()
    }
}

/// A middleware that holds events back (an aggregator's open windows) and
/// must be able to let them go: on a timer, and when the gateway shuts down.
pub trait Flush: Send + Sync + fmt::Debug {
    /// Events whose time has come (windows that have closed by `now`).
    fn flush_due(&self, now: tokio::time::Instant) -> Vec<polku_core::Event>;
    /// Everything held back, whatever its time: called once, at shutdown.
    fn flush_all(&self) -> Vec<polku_core::Event>;
}

/// A middleware that must know which of the events it passed were accepted
/// in the end (a deduplicator remembers only those: an event refused after
/// it, by the buffer or a route, must not be a duplicate when retried).
///
/// Until [`Commit::defer`] is called the middleware commits on its own as
/// events pass through it (what a caller outside a gateway wants); after
/// it, whoever called it calls [`Commit::commit`] with every batch it
/// accepts.
pub trait Commit: Send + Sync + fmt::Debug {
    /// From now on commits wait for [`Commit::commit`].
    fn defer(&self);
    /// These events (as they left the last middleware) were accepted.
    fn commit(&self, accepted: &[polku_core::Event]);
}

/// One middleware's entry in a [`Registry`].
#[derive(Debug, Clone)]
pub struct Registered {
    name: &'static str,
    drops: DropCounts,
    flush: Option<Arc<dyn Flush>>,
    commit: Option<Arc<dyn Commit>>,
}

impl Registered {
    /// The middleware's kind, for example `filter` or `dedup`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Its drop counters.
    pub fn drops(&self) -> &DropCounts {
        &self.drops
    }

    /// Its flush hook, if it holds events back.
    pub fn flush(&self) -> Option<&Arc<dyn Flush>> {
        self.flush.as_ref()
    }

    /// Its commit hook, for a middleware that must know what was accepted.
    pub fn commit(&self) -> Option<&Arc<dyn Commit>> {
        self.commit.as_ref()
    }
}

/// The middleware that registered while a chain was being built, in the order
/// their layers were applied.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    entries: Vec<Registered>,
}

thread_local! {
    static COLLECTING: RefCell<Option<Registry>> = const { RefCell::new(None) };
}

impl Registry {
    /// Runs `build` (which applies layers) and returns what it built with the
    /// middleware that registered meanwhile. Nesting is allowed: an inner
    /// collection sees only its own.
    pub fn collect<T>(build: impl FnOnce() -> T) -> (T, Registry) {
        let outer = COLLECTING.with(|c| c.borrow_mut().replace(Registry::default()));
        let out = build();
        let registry = COLLECTING
            .with(|c| std::mem::replace(&mut *c.borrow_mut(), outer))
            .unwrap_or_default();
        (out, registry)
    }

    /// The registered middleware.
    pub fn entries(&self) -> &[Registered] {
        &self.entries
    }
}

/// Called from a middleware's `Layer::layer`: makes its counters known to the
/// gateway that is building the chain, if any. Outside [`Registry::collect`]
/// it does nothing.
pub fn register(name: &'static str, drops: &DropCounts) {
    push(Registered {
        name,
        drops: drops.clone(),
        flush: None,
        commit: None,
    });
}

/// Like [`register`], for a middleware that holds events back: the gateway
/// calls `flush` on a timer and at shutdown, and sends what it returns on to
/// the buffer.
pub fn register_with_flush(name: &'static str, drops: &DropCounts, flush: Arc<dyn Flush>) {
    push(Registered {
        name,
        drops: drops.clone(),
        flush: Some(flush),
        commit: None,
    });
}

/// Like [`register`], for a middleware with a [`Commit`] hook.
pub fn register_with_commit(name: &'static str, drops: &DropCounts, commit: Arc<dyn Commit>) {
    push(Registered {
        name,
        drops: drops.clone(),
        flush: None,
        commit: Some(commit),
    });
}

fn push(entry: Registered) {
    COLLECTING.with(|c| {
        if let Some(reg) = c.borrow_mut().as_mut() {
            reg.entries.push(entry);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_shared_and_reported_by_reason() {
        let d = DropCounts::default();
        let d2 = d.clone();
        d.add(DropReason::Sampled, 3);
        d2.add(DropReason::Duplicate, 2);
        d2.add(DropReason::Invalid, 0);
        assert_eq!(d.get(DropReason::Sampled), 3);
        assert_eq!(d.total(), 5);
        assert_eq!(
            d.snapshot(),
            vec![(DropReason::Sampled, 3), (DropReason::Duplicate, 2)]
        );
    }

    #[test]
    fn registration_lands_only_inside_collect() {
        let d = DropCounts::default();
        register("outside", &d);
        let ((), reg) = Registry::collect(|| {
            register("a", &d);
            let ((), inner) = Registry::collect(|| register("inner", &d));
            assert_eq!(inner.entries().len(), 1);
            register("b", &d);
        });
        let names: Vec<_> = reg.entries().iter().map(|r| r.name()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[tokio::test]
    async fn a_watched_task_hears_its_own_drops_only_and_which_events() {
        use polku_core::Event;
        let (a, b) = (DropCounts::default(), DropCounts::default());
        let (a2, b2) = (a.clone(), b.clone());
        let ((), seen) = watched(async move {
            a2.add(DropReason::Filtered, 2);
            b2.add(DropReason::Sampled, 0);
            let mut batch: Vec<Event> = ["k1", "d1", "k2", "d2"]
                .into_iter()
                .map(|id| Event::new("t").with_id(id))
                .collect();
            b2.retain(DropReason::Sampled, &mut batch, |e| e.id.starts_with('k'));
            let kept: Vec<&str> = batch.iter().map(|e| &*e.id).collect();
            assert_eq!(kept, ["k1", "k2"]);
        })
        .await;
        // Not watched: counted, not heard.
        a.add(DropReason::Filtered, 5);
        let mut batch = vec![Event::new("t").with_id("x")];
        b.retain(DropReason::Sampled, &mut batch, |_| false);
        assert!(batch.is_empty());
        assert_eq!(b.get(DropReason::Sampled), 3);
        assert_eq!(
            seen,
            [
                Watched {
                    counts: a.id(),
                    reason: DropReason::Filtered,
                    n: 2,
                    ids: vec![],
                },
                Watched {
                    counts: b.id(),
                    reason: DropReason::Sampled,
                    n: 2,
                    ids: vec!["d1".into(), "d2".into()],
                }
            ]
        );
        assert_ne!(a.id(), b.id());
    }
}
