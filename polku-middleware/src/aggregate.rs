//! Fold many events into one summary event: every N events, or every time
//! window, per group.
//!
//! Events are grouped by a key (the event type by default). A group's summary
//! is sent when it has `max_events` events or when its window (counted from
//! its first event) closes, whichever comes first. Closed windows are
//! flushed by [`Flush::flush_due`], which the gateway calls on a timer and
//! sends on to the buffer; every open window is flushed when the gateway
//! shuts down ([`Flush::flush_all`]), so nothing is held back forever. (Used
//! outside a gateway, call them yourself.) A batch never comes out larger
//! than it went in.
//!
//! The summary is an event of type `polku.aggregate` (or
//! [`Aggregator::summary_type`]) with the group's source and:
//! - metadata `polku.group` (the key), `polku.count`, `polku.first_ns`, `polku.last_ns`;
//! - the highest severity of the group;
//! - a JSON payload `{"group": ..., "count": N, "first_ns": ..., "last_ns": ...}`.
//!
//! The events themselves are folded in as they come and not kept, so memory
//! is O(groups), bounded by `max_groups` and by `max_group_bytes` (what the
//! open groups' keys and sources take, default 8 MiB): past either, the
//! group that opened first is flushed early to make room. The folded events are counted as
//! dropped (reason `aggregated`); the summary is what goes on.
//!
//! ```
//! use polku_core::Event;
//! use polku_middleware::{Aggregator, identity};
//! use std::time::Duration;
//! use tower::{Layer, ServiceExt};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let agg = Aggregator::new(3, Duration::from_secs(10)).unwrap();
//! let out = agg
//!     .layer(identity())
//!     .oneshot((0..7).map(|_| Event::new("heartbeat")).collect())
//!     .await
//!     .unwrap();
//! assert_eq!(out.len(), 2); // two summaries of three; one event waits
//! assert_eq!(out[0].metadata["polku.count"], "3");
//! # });
//! ```

use crate::drops::{DropCounts, DropReason, Flush, register_with_flush};
use bytes::Bytes;
use polku_core::Event;
use polku_core::Str;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, Service};

/// An aggregation setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AggregateError {
    /// `max_events` is zero.
    #[error("max_events must be at least 1")]
    ZeroEvents,
    /// The window is zero.
    #[error("the window must be longer than zero")]
    ZeroWindow,
    /// `max_groups` is zero.
    #[error("max_groups must be at least 1")]
    ZeroGroups,
    /// `max_group_bytes` is zero.
    #[error("max_group_bytes must be at least 1")]
    ZeroGroupBytes,
}

type KeyFn = dyn Fn(&Event) -> &str + Send + Sync;

/// One group's running summary.
#[derive(Debug)]
struct Group {
    opened: Instant,
    seq: u64,
    source: String,
    count: u64,
    first_ns: i64,
    last_ns: i64,
    severity: i32,
}

#[derive(Debug, Default)]
struct Groups {
    open: HashMap<Arc<str>, Group>,
    /// (key, seq) in the order groups opened; stale records are skipped.
    order: VecDeque<(Arc<str>, u64)>,
    next_seq: u64,
    /// What the keys in `order` and the open groups' sources take, with
    /// each entry's bookkeeping.
    held: usize,
}

/// What an open group costs besides its key's and source's bytes: its
/// entry in the table and in `order`, roughly.
const GROUP_OVERHEAD: usize =
    2 * std::mem::size_of::<(Arc<str>, u64)>() + std::mem::size_of::<Group>() + 16;

impl Groups {
    /// Records that the group under `key` opened as number `seq`.
    fn push_order(&mut self, key: Arc<str>, seq: u64) {
        self.held += key.len();
        self.order.push_back((key, seq));
    }

    /// The oldest record of `order`, stale or not.
    fn pop_order(&mut self) -> Option<(Arc<str>, u64)> {
        let (key, seq) = self.order.pop_front()?;
        self.held -= key.len();
        Some((key, seq))
    }

    /// Drops stale records (of groups already closed) from `order`.
    fn compact_order(&mut self) {
        let Groups {
            open, order, held, ..
        } = self;
        order.retain(|(k, s)| {
            let live = open.get(k).is_some_and(|g| g.seq == *s);
            if !live {
                *held -= k.len();
            }
            live
        });
    }

    fn insert(&mut self, key: Arc<str>, g: Group) {
        self.held += g.source.len() + GROUP_OVERHEAD;
        self.open.insert(key, g);
    }

    fn remove(&mut self, key: &str) -> Option<Group> {
        let g = self.open.remove(key)?;
        self.held -= g.source.len() + GROUP_OVERHEAD;
        Some(g)
    }
}

struct Config {
    max_events: u64,
    window: Duration,
    max_groups: usize,
    max_group_bytes: usize,
    key: Box<KeyFn>,
    summary_type: String,
}

struct Shared {
    config: Config,
    groups: Mutex<Groups>,
    drops: DropCounts,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aggregator")
            .field("max_events", &self.config.max_events)
            .field("window", &self.config.window)
            .field("max_groups", &self.config.max_groups)
            .field("max_group_bytes", &self.config.max_group_bytes)
            .field("drops", &self.drops)
            .finish()
    }
}

/// A layer that folds events into summary events, per group.
#[derive(Clone, Debug)]
pub struct Aggregator {
    shared: Arc<Shared>,
}

impl Aggregator {
    /// A summary every `max_events` events of a group, or when `window` has
    /// passed since the group's first event.
    pub fn new(max_events: u64, window: Duration) -> Result<Self, AggregateError> {
        if max_events == 0 {
            return Err(AggregateError::ZeroEvents);
        }
        if window.is_zero() {
            return Err(AggregateError::ZeroWindow);
        }
        Ok(Aggregator {
            shared: Arc::new(Shared {
                config: Config {
                    max_events,
                    window,
                    max_groups: 10_000,
                    max_group_bytes: 8 << 20,
                    key: Box::new(|e: &Event| e.event_type.as_str()),
                    summary_type: "polku.aggregate".to_owned(),
                },
                groups: Mutex::default(),
                drops: DropCounts::default(),
            }),
        })
    }

    fn config_mut(&mut self) -> &mut Config {
        &mut Arc::get_mut(&mut self.shared)
            .expect("configure an Aggregator before using it as a layer")
            .config
    }

    /// Groups by this key instead of the event type.
    pub fn group_by<F>(mut self, key: F) -> Self
    where
        F: Fn(&Event) -> &str + Send + Sync + 'static,
    {
        self.config_mut().key = Box::new(key);
        self
    }

    /// At most this many open groups (default 10000).
    pub fn max_groups(mut self, max_groups: usize) -> Result<Self, AggregateError> {
        if max_groups == 0 {
            return Err(AggregateError::ZeroGroups);
        }
        self.config_mut().max_groups = max_groups;
        Ok(self)
    }

    /// At most this many bytes of group keys and sources held by open
    /// groups, with each group's bookkeeping (default 8 MiB): a key can be
    /// as long as the metadata value it comes from.
    pub fn max_group_bytes(mut self, max_group_bytes: usize) -> Result<Self, AggregateError> {
        if max_group_bytes == 0 {
            return Err(AggregateError::ZeroGroupBytes);
        }
        self.config_mut().max_group_bytes = max_group_bytes;
        Ok(self)
    }

    /// What the open groups' keys and sources take now, in bytes, with each
    /// group's bookkeeping.
    pub fn open_group_bytes(&self) -> usize {
        self.shared
            .groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .held
    }

    /// The event type of summaries (default `polku.aggregate`).
    pub fn summary_type(mut self, event_type: impl Into<String>) -> Self {
        self.config_mut().summary_type = event_type.into();
        self
    }

    /// The drop counters (reason: aggregated).
    pub fn drops(&self) -> &DropCounts {
        &self.shared.drops
    }

    /// How many groups are open now.
    pub fn open_groups(&self) -> usize {
        self.shared
            .groups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open
            .len()
    }
}

impl Shared {
    fn summary(&self, key: &str, g: Group) -> Event {
        let mut e = Event::new(self.config.summary_type.clone()).with_source(g.source);
        e.ensure_id();
        e.timestamp_unix_ns = g.last_ns;
        e.severity = g.severity;
        let payload = format!(
            r#"{{"group":{},"count":{},"first_ns":{},"last_ns":{}}}"#,
            json_string(key),
            g.count,
            g.first_ns,
            g.last_ns
        );
        e.payload = Bytes::from(payload);
        let md = &mut e.metadata;
        md.insert(Str::from_static("polku.count"), g.count.to_string().into());
        md.insert(
            Str::from_static("polku.first_ns"),
            g.first_ns.to_string().into(),
        );
        md.insert(
            Str::from_static("polku.last_ns"),
            g.last_ns.to_string().into(),
        );
        md.insert(Str::from_static("polku.group"), key.to_owned().into());
        e
    }

    /// Closes groups whose window has passed, oldest first.
    fn close_due(&self, st: &mut Groups, now: Instant, out: &mut Vec<Event>) {
        while let Some((key, seq)) = st.order.front() {
            match st.open.get(key) {
                Some(g) if g.seq == *seq => {
                    if now.duration_since(g.opened) < self.config.window {
                        break;
                    }
                    let Some((key, _)) = st.pop_order() else {
                        break;
                    };
                    if let Some(g) = st.remove(&key) {
                        out.push(self.summary(&key, g));
                    }
                }
                _ => {
                    st.pop_order();
                }
            }
        }
    }

    fn fold(&self, batch: Vec<Event>) -> Vec<Event> {
        let n = batch.len();
        let mut out = Vec::new();
        if n == 0 {
            return out;
        }
        let now = Instant::now();
        let c = &self.config;
        let mut guard = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        let st = &mut *guard;
        for e in batch {
            let key = (c.key)(&e);
            if !st.open.contains_key(key) {
                // Make room: the group that opened first goes out early.
                let need = key.len() + e.source.len() + GROUP_OVERHEAD;
                while st.open.len() >= c.max_groups
                    || (st.held + need > c.max_group_bytes && !st.open.is_empty())
                {
                    let Some((old, seq)) = st.pop_order() else {
                        break;
                    };
                    if st.open.get(&old).is_some_and(|g| g.seq == seq)
                        && let Some(g) = st.remove(&old)
                    {
                        out.push(self.summary(&old, g));
                    }
                }
                let seq = st.next_seq;
                st.next_seq += 1;
                let key: Arc<str> = Arc::from(key);
                st.push_order(key.clone(), seq);
                // Groups that filled up left records behind in `order`;
                // rebuild it when they outnumber the live ones, so that
                // memory stays O(open groups).
                if st.order.len() > 2 * st.open.len() + 16 {
                    st.compact_order();
                }
                st.insert(
                    key,
                    Group {
                        opened: now,
                        seq,
                        source: e.source.to_string(),
                        count: 0,
                        first_ns: e.timestamp_unix_ns,
                        last_ns: e.timestamp_unix_ns,
                        severity: e.severity,
                    },
                );
            }
            let key = (c.key)(&e);
            let full = match st.open.get_mut(key) {
                Some(g) => {
                    g.count += 1;
                    g.first_ns = g.first_ns.min(e.timestamp_unix_ns);
                    g.last_ns = g.last_ns.max(e.timestamp_unix_ns);
                    g.severity = g.severity.max(e.severity);
                    g.count >= c.max_events
                }
                None => false,
            };
            if full && let Some(g) = st.remove(key) {
                out.push(self.summary(key, g));
            }
        }
        drop(guard);
        self.drops.add(DropReason::Aggregated, n);
        out
    }
}

impl Flush for Shared {
    fn flush_due(&self, now: Instant) -> Vec<Event> {
        let mut out = Vec::new();
        let mut st = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        self.close_due(&mut st, now, &mut out);
        out
    }

    fn flush_all(&self) -> Vec<Event> {
        let mut st = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = Vec::with_capacity(st.open.len());
        while let Some((key, seq)) = st.pop_order() {
            if st.open.get(&key).is_some_and(|g| g.seq == seq)
                && let Some(g) = st.remove(&key)
            {
                out.push(self.summary(&key, g));
            }
        }
        out
    }
}

impl Flush for Aggregator {
    fn flush_due(&self, now: Instant) -> Vec<Event> {
        self.shared.flush_due(now)
    }
    fn flush_all(&self) -> Vec<Event> {
        self.shared.flush_all()
    }
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl<S> Layer<S> for Aggregator {
    type Service = AggregateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        register_with_flush("aggregate", &self.shared.drops, self.shared.clone());
        AggregateService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service made by [`Aggregator`].
#[derive(Clone)]
pub struct AggregateService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for AggregateService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AggregateService")
            .field("inner", &self.inner)
            .field("aggregator", &self.shared)
            .finish()
    }
}

impl<S> AggregateService<S> {
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

impl<S> Service<Vec<Event>> for AggregateService<S>
where
    S: Service<Vec<Event>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, batch: Vec<Event>) -> Self::Future {
        let summaries = self.shared.fold(batch);
        self.inner.call(summaries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity;
    use tower::ServiceExt;

    fn ev(t: &str, ts: i64) -> Event {
        let mut e = Event::new(t).with_source("src");
        e.timestamp_unix_ns = ts;
        e
    }

    async fn run(a: &Aggregator, batch: Vec<Event>) -> Vec<Event> {
        a.layer(identity()).oneshot(batch).await.unwrap()
    }

    #[tokio::test]
    async fn registers_with_a_flush_hook_and_an_empty_batch_is_empty() {
        let a = Aggregator::new(2, Duration::from_secs(1)).unwrap();
        let (svc, reg) = crate::Registry::collect(|| a.layer(identity()));
        assert_eq!(reg.entries()[0].name(), "aggregate");
        assert!(reg.entries()[0].flush().is_some());
        assert!(svc.oneshot(vec![]).await.unwrap().is_empty());
        assert_eq!(a.drops().total(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn every_n_events_per_group() {
        let a = Aggregator::new(2, Duration::from_secs(60)).unwrap();
        let out = run(
            &a,
            vec![ev("a", 5), ev("b", 1), ev("a", 3), ev("b", 9), ev("a", 7)],
        )
        .await;
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].metadata["polku.group"], "a");
        assert_eq!(out[0].metadata["polku.count"], "2");
        assert_eq!(out[0].metadata["polku.first_ns"], "3");
        assert_eq!(out[0].metadata["polku.last_ns"], "5");
        assert_eq!(out[0].event_type, "polku.aggregate");
        assert_eq!(out[0].source, "src");
        assert_eq!(
            out[1].payload,
            Bytes::from_static(br#"{"group":"b","count":2,"first_ns":1,"last_ns":9}"#)
        );
        assert_eq!(a.open_groups(), 1, "the third `a` waits");
        assert_eq!(a.drops().get(DropReason::Aggregated), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_closes_by_the_timer() {
        let a = Aggregator::new(1000, Duration::from_secs(10)).unwrap();
        assert!(run(&a, vec![ev("a", 1), ev("a", 2)]).await.is_empty());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(a.flush_due(Instant::now()).is_empty());
        tokio::time::advance(Duration::from_secs(1)).await;
        let due = a.flush_due(Instant::now());
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].metadata["polku.count"], "2");
        // A batch never carries summaries of other groups' windows: those
        // go out through the timer, so a batch never grows.
        run(&a, vec![ev("b", 1)]).await;
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(run(&a, vec![ev("c", 1)]).await.is_empty());
        let due = a.flush_due(Instant::now());
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].metadata["polku.group"], "b");
    }

    #[tokio::test]
    async fn shutdown_flushes_every_open_window() {
        let a = Aggregator::new(100, Duration::from_secs(3600)).unwrap();
        run(&a, vec![ev("a", 1), ev("b", 1), ev("a", 1)]).await;
        let all = a.flush_all();
        let groups: Vec<_> = all
            .iter()
            .map(|e| e.metadata["polku.group"].clone())
            .collect();
        assert_eq!(groups, ["a", "b"]);
        assert_eq!(a.open_groups(), 0);
        assert!(a.flush_all().is_empty());
    }

    #[tokio::test]
    async fn groups_that_fill_leave_no_records_behind() {
        let a = Aggregator::new(2, Duration::from_secs(3600)).unwrap();
        // One long-lived group at the front, and a busy one filling over and over.
        run(&a, vec![ev("slow", 1)]).await;
        for _ in 0..10_000 {
            run(&a, vec![ev("busy", 1), ev("busy", 2)]).await;
        }
        let order_len = a.shared.groups.lock().unwrap().order.len();
        assert!(
            order_len <= 2 * a.open_groups() + 17,
            "{order_len} records kept"
        );
    }

    #[tokio::test]
    async fn groups_are_bounded_and_the_oldest_goes_out_early() {
        let a = Aggregator::new(100, Duration::from_secs(3600))
            .unwrap()
            .max_groups(3)
            .unwrap();
        let batch: Vec<Event> = (0..10).map(|i| ev(&format!("g{i}"), 1)).collect();
        let out = run(&a, batch).await;
        assert_eq!(a.open_groups(), 3);
        let early: Vec<_> = out
            .iter()
            .map(|e| e.metadata["polku.group"].clone())
            .collect();
        assert_eq!(early, ["g0", "g1", "g2", "g3", "g4", "g5", "g6"]);
    }

    #[tokio::test]
    async fn long_keys_are_bounded_in_bytes_and_every_event_is_still_counted() {
        let a = Aggregator::new(1_000, Duration::from_secs(3600))
            .unwrap()
            .group_by(|e| e.metadata.get("k").map_or("", |v| v.as_str()))
            .max_group_bytes(64 * 1024)
            .unwrap();
        // Two thousand groups whose keys are 1 KiB each: 2 MiB of keys, if
        // they were all kept.
        let mut summaries = Vec::new();
        for round in 0..20 {
            let batch: Vec<Event> = (0..100)
                .map(|i| {
                    let key = format!("{:0>1024}", round * 100 + i);
                    ev("t", 1).with_metadata("k", key)
                })
                .collect();
            summaries.extend(run(&a, batch).await);
            assert!(
                a.open_group_bytes() <= 64 * 1024,
                "{}",
                a.open_group_bytes()
            );
        }
        assert!(
            (32..=64).contains(&a.open_groups()),
            "{} groups open",
            a.open_groups()
        );
        summaries.extend(a.flush_all());
        let counted: u64 = summaries
            .iter()
            .map(|e| e.metadata["polku.count"].parse::<u64>().unwrap())
            .sum();
        assert_eq!(counted, 2_000, "every event is in a summary");
        assert_eq!(summaries.len(), 2_000);
        assert_eq!(a.open_groups(), 0);
        assert_eq!(a.open_group_bytes(), 0, "the accounting returns to zero");
    }

    #[tokio::test]
    async fn group_by_and_summary_type_and_severity() {
        let a = Aggregator::new(2, Duration::from_secs(60))
            .unwrap()
            .group_by(|e| e.source.as_str())
            .summary_type("rollup");
        let mut x = ev("x", 1);
        x.severity = 4;
        let out = run(&a, vec![x, ev("y", 2)]).await;
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].event_type, "rollup");
        assert_eq!(out[0].severity, 4);
        assert_eq!(out[0].metadata["polku.group"], "src");
    }

    #[test]
    fn bad_settings_are_refused() {
        assert_eq!(
            Aggregator::new(0, Duration::from_secs(1)).unwrap_err(),
            AggregateError::ZeroEvents
        );
        assert_eq!(
            Aggregator::new(1, Duration::ZERO).unwrap_err(),
            AggregateError::ZeroWindow
        );
        assert!(
            Aggregator::new(1, Duration::from_secs(1))
                .unwrap()
                .max_groups(0)
                .is_err()
        );
        assert_eq!(
            Aggregator::new(1, Duration::from_secs(1))
                .unwrap()
                .max_group_bytes(0)
                .unwrap_err(),
            AggregateError::ZeroGroupBytes
        );
        assert_eq!(json_string("a\"b\n"), r#""a\"b\u000a""#);
    }
}
