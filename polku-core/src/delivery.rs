//! What an emitter's delivery machinery reports: the circuit breaker's state,
//! retry counts, and the failure store that keeps events it could not deliver.
//!
//! The machinery itself (timeouts, retries, the breaker) lives in `polku-emit`
//! as tower layers; this module holds the state that the gateway reads for
//! health and metrics and the store that operators list and resend from.
//!
//! ```
//! use polku_core::delivery::{FailureStore, StoredFailure};
//! use polku_core::Event;
//!
//! let store = FailureStore::new(1_000, 1 << 20).unwrap();
//! store.push([StoredFailure::new(Event::new("a"), "POST answered 400", false)]);
//! assert_eq!(store.len(), 1);
//! let again = store.take(10);
//! assert_eq!(again.failures()[0].reason, "POST answered 400");
//! assert!(store.is_empty());
//! ```
//!
//! A store can keep a durable copy of what it holds: [`FailureStore::attach`]
//! gives it a [`FailureLog`] (the gateway's durable buffer keeps one file per
//! emitter), which is told every change, and [`FailureStore::flush`] waits
//! until the changes so far are on disk.

use crate::{Event, now_unix_ns};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// A circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail at once, without touching the destination, until the
    /// cool-down ends.
    Open,
    /// One probe call goes through; its outcome closes or reopens the breaker.
    HalfOpen,
}

impl BreakerState {
    /// The state's name in metrics and JSON: `closed`, `open`, `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    const NONE: u8 = u8::MAX;

    fn to_u8(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(BreakerState::Closed),
            1 => Some(BreakerState::Open),
            2 => Some(BreakerState::HalfOpen),
            _ => None,
        }
    }
}

/// The observable state of one emitter's delivery machinery, shared between
/// the layers that write it and the gateway that reads it.
#[derive(Debug)]
pub struct DeliveryState {
    breaker: AtomicU8,
    breaker_opened: AtomicU64,
    retries: AtomicU64,
    retried_events: AtomicU64,
    timeouts: AtomicU64,
    store: Option<FailureStore>,
}

impl DeliveryState {
    /// State with no breaker yet and, if given, a failure store.
    pub fn new(store: Option<FailureStore>) -> Self {
        DeliveryState {
            breaker: AtomicU8::new(BreakerState::NONE),
            breaker_opened: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            retried_events: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            store,
        }
    }

    /// The breaker's state, or `None` when there is no breaker.
    pub fn breaker(&self) -> Option<BreakerState> {
        BreakerState::from_u8(self.breaker.load(Relaxed))
    }

    /// Records the breaker's new state (counting each opening).
    pub fn set_breaker(&self, state: BreakerState) {
        let old = self.breaker.swap(state.to_u8(), Relaxed);
        if state == BreakerState::Open && old != BreakerState::Open.to_u8() {
            self.breaker_opened.fetch_add(1, Relaxed);
        }
    }

    /// How many times the breaker has opened.
    pub fn breaker_opened(&self) -> u64 {
        self.breaker_opened.load(Relaxed)
    }

    /// Counts one more retried call, sending `events` events again.
    pub fn add_retry(&self, events: usize) {
        self.retries.fetch_add(1, Relaxed);
        self.retried_events.fetch_add(events as u64, Relaxed);
    }

    /// Events sent again by retries so far: the most duplicates that a
    /// destination which stored a batch and then failed to answer can see.
    pub fn retried_events(&self) -> u64 {
        self.retried_events.load(Relaxed)
    }

    /// Calls retried so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Relaxed)
    }

    /// Counts one more call that ran out of time.
    pub fn add_timeout(&self) {
        self.timeouts.fetch_add(1, Relaxed);
    }

    /// Calls that ran out of time so far.
    pub fn timeouts(&self) -> u64 {
        self.timeouts.load(Relaxed)
    }

    /// The failure store, if the emitter keeps one.
    pub fn failure_store(&self) -> Option<&FailureStore> {
        self.store.as_ref()
    }
}

/// An event that could not be delivered, with why.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFailure {
    /// The event, as it was handed to the emitter.
    pub event: Event,
    /// The last error, as text.
    pub reason: String,
    /// Whether sending it again may work (false: the destination refused it).
    pub retryable: bool,
    /// When it was stored, in Unix nanoseconds.
    pub failed_at_unix_ns: i64,
}

/// Longest reason a store keeps; a longer one (a destination's whole error
/// page) is cut at a character boundary.
pub const MAX_REASON_BYTES: usize = 1024;

impl StoredFailure {
    /// Bytes this failure holds in memory: the event's
    /// [`approx_size`](Event::approx_size), its reason and the record itself.
    pub fn held_bytes(&self) -> usize {
        self.event.approx_size() + self.reason.len() + std::mem::size_of::<Self>()
    }

    /// Makes the failure hold only its own bytes: the payload copied out of
    /// any larger buffer it is a slice of, the reason cut to
    /// [`MAX_REASON_BYTES`].
    fn own(&mut self) {
        if !self.event.payload.is_empty() {
            self.event.payload = bytes::Bytes::copy_from_slice(&self.event.payload);
        }
        if self.reason.len() > MAX_REASON_BYTES {
            let mut cut = MAX_REASON_BYTES;
            while !self.reason.is_char_boundary(cut) {
                cut -= 1;
            }
            self.reason.truncate(cut);
            self.reason.shrink_to_fit();
        }
    }

    /// A failure of `event` stored now.
    pub fn new(event: Event, reason: impl Into<String>, retryable: bool) -> Self {
        StoredFailure {
            event,
            reason: reason.into(),
            retryable,
            failed_at_unix_ns: now_unix_ns(),
        }
    }
}

/// A failure store's bounds were not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a failure store needs room for at least one event and one byte (got {max_events} events, {max_bytes} bytes)"
)]
pub struct FailureStoreError {
    max_events: usize,
    max_bytes: usize,
}

/// A failure store's durable copy could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the failure store's copy on disk could not be written: {0}")]
pub struct FailureLogError(pub String);

/// What [`FailureLog::flush`] returns: resolves once every change told so
/// far is durable.
pub type FlushFuture = Pin<Box<dyn Future<Output = Result<(), FailureLogError>> + Send + 'static>>;

/// A durable copy of a failure store, told every change.
///
/// Each failure the store keeps has a sequence number, rising in the order
/// failures were first stored; a failure put back after a failed resend
/// keeps its number. Reading the copy back is the sum of what was added less
/// what was removed, oldest (lowest number) first. The store calls
/// [`added`](Self::added) and [`removed`](Self::removed) while it holds its
/// own lock, so they must only note the change (no I/O); the writing happens
/// in [`flush`](Self::flush) or whenever the log likes.
pub trait FailureLog: Send + Sync + std::fmt::Debug {
    /// Failures the store now keeps, with their numbers.
    fn added(&self, failures: &mut dyn Iterator<Item = (u64, &StoredFailure)>);
    /// Failures the store no longer keeps: sent again, evicted, cleared.
    fn removed(&self, seqs: &[u64]);
    /// Resolves once every change told so far is durable.
    fn flush(&self) -> FlushFuture;
}

/// A bounded store of events an emitter gave up on, oldest first.
///
/// Bounded in events and in bytes (a failure's size is what it holds in
/// memory: see [`StoredFailure::held_bytes`]): when a new failure does not
/// fit, the oldest are evicted, and evictions are counted, because an evicted
/// event is lost. A stored event's payload is copied into a buffer of its
/// own, so that it never keeps the batch it came in (a request's whole
/// buffer) alive: what the store counts is what it holds.
#[derive(Debug)]
pub struct FailureStore {
    max_events: usize,
    max_bytes: usize,
    inner: Mutex<Stored>,
    log: OnceLock<Arc<dyn FailureLog>>,
    stored_total: AtomicU64,
    evicted_total: AtomicU64,
}

/// One failure in the store: it, its size, its sequence number.
#[derive(Debug)]
struct Kept {
    failure: StoredFailure,
    size: usize,
    seq: u64,
}

#[derive(Debug, Default)]
struct Stored {
    queue: VecDeque<Kept>,
    bytes: usize,
    next_seq: u64,
}

impl Stored {
    /// Evicts from the front (`oldest`) or the back until within bounds;
    /// returns the evicted numbers.
    fn evict_until_fits(&mut self, max_events: usize, max_bytes: usize, oldest: bool) -> Vec<u64> {
        let mut evicted = Vec::new();
        while self.queue.len() > max_events || self.bytes > max_bytes {
            let gone = if oldest {
                self.queue.pop_front()
            } else {
                self.queue.pop_back()
            };
            match gone {
                Some(k) => {
                    self.bytes -= k.size;
                    evicted.push(k.seq);
                }
                None => break,
            }
        }
        evicted
    }
}

/// Failures taken out of a store to be sent again. They are gone from the
/// store at once, but its durable copy keeps them until this is dropped (the
/// resend is done) and forgets them then; [`FailureStore::put_back`] returns
/// them instead. A crash in between finds them in the store again.
#[derive(Debug)]
pub struct Taken {
    failures: Vec<StoredFailure>,
    receipt: Receipt,
}

/// The durable side of [`Taken`]: dropping it tells the store's log that
/// the failures it names are gone.
#[derive(Debug)]
pub struct Receipt {
    seqs: Vec<u64>,
    log: Option<Arc<dyn FailureLog>>,
}

impl Drop for Receipt {
    fn drop(&mut self) {
        if let Some(log) = &self.log
            && !self.seqs.is_empty()
        {
            log.removed(&self.seqs);
        }
    }
}

impl Taken {
    /// The failures taken, oldest first.
    pub fn failures(&self) -> &[StoredFailure] {
        &self.failures
    }

    /// How many were taken.
    pub fn len(&self) -> usize {
        self.failures.len()
    }

    /// Whether nothing was taken.
    pub fn is_empty(&self) -> bool {
        self.failures.is_empty()
    }

    /// The failures and the receipt that keeps them in the durable copy
    /// until dropped.
    pub fn into_parts(self) -> (Vec<StoredFailure>, Receipt) {
        (self.failures, self.receipt)
    }

    /// Joins what [`into_parts`](Self::into_parts) split, to put back: the
    /// failures in the order they were taken (reasons may have changed).
    pub fn from_parts(failures: Vec<StoredFailure>, receipt: Receipt) -> Self {
        Taken { failures, receipt }
    }
}

impl FailureStore {
    /// A store that keeps at most `max_events` events and `max_bytes` bytes.
    pub fn new(max_events: usize, max_bytes: usize) -> Result<Self, FailureStoreError> {
        if max_events == 0 || max_bytes == 0 {
            return Err(FailureStoreError {
                max_events,
                max_bytes,
            });
        }
        Ok(FailureStore {
            max_events,
            max_bytes,
            inner: Mutex::new(Stored::default()),
            log: OnceLock::new(),
            stored_total: AtomicU64::new(0),
            evicted_total: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Stored> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn log(&self) -> Option<&Arc<dyn FailureLog>> {
        self.log.get()
    }

    /// Gives the store a durable copy, with what that copy already held
    /// (`recovered`, by sequence number, oldest first), which goes before
    /// anything stored so far. Past the bounds, the oldest are evicted (and
    /// counted). Returns false, changing nothing, if the store has a copy
    /// already.
    pub fn attach(
        &self,
        log: Arc<dyn FailureLog>,
        mut recovered: Vec<(u64, StoredFailure)>,
    ) -> bool {
        let mut s = self.lock();
        if self.log.set(log.clone()).is_err() {
            return false;
        }
        recovered.sort_by_key(|(seq, _)| *seq);
        let mut next = recovered.last().map_or(0, |(seq, _)| seq + 1);
        // What was stored before the copy existed follows what it held,
        // renumbered after it, and is told to the copy.
        let earlier = std::mem::take(&mut s.queue);
        s.bytes = 0;
        for (seq, mut failure) in recovered {
            failure.own();
            let size = failure.held_bytes();
            s.bytes += size;
            s.queue.push_back(Kept { failure, size, seq });
        }
        let first_earlier = s.queue.len();
        for mut k in earlier {
            k.seq = next;
            next += 1;
            s.bytes += k.size;
            s.queue.push_back(k);
        }
        s.next_seq = next;
        log.added(&mut s.queue.range(first_earlier..).map(|k| (k.seq, &k.failure)));
        let evicted = s.evict_until_fits(self.max_events, self.max_bytes, true);
        if !evicted.is_empty() {
            log.removed(&evicted);
        }
        drop(s);
        self.evicted_total.fetch_add(evicted.len() as u64, Relaxed);
        true
    }

    /// Whether the store keeps a durable copy.
    pub fn is_durable(&self) -> bool {
        self.log.get().is_some()
    }

    /// Resolves once every change so far is in the durable copy (at once
    /// without one).
    pub fn flush(&self) -> FlushFuture {
        match self.log() {
            Some(log) => log.flush(),
            None => Box::pin(std::future::ready(Ok(()))),
        }
    }

    /// Adds failures at the back, evicting the oldest to stay in bounds;
    /// returns how many were evicted.
    pub fn push(&self, failures: impl IntoIterator<Item = StoredFailure>) -> u64 {
        let mut s = self.lock();
        let first = s.queue.len();
        for mut failure in failures {
            failure.own();
            let size = failure.held_bytes();
            let seq = s.next_seq;
            s.next_seq += 1;
            s.bytes += size;
            s.queue.push_back(Kept { failure, size, seq });
        }
        let n = (s.queue.len() - first) as u64;
        if let Some(log) = self.log() {
            log.added(&mut s.queue.range(first..).map(|k| (k.seq, &k.failure)));
        }
        let evicted = s.evict_until_fits(self.max_events, self.max_bytes, true);
        if let Some(log) = self.log()
            && !evicted.is_empty()
        {
            log.removed(&evicted);
        }
        drop(s);
        self.stored_total.fetch_add(n, Relaxed);
        self.evicted_total.fetch_add(evicted.len() as u64, Relaxed);
        evicted.len() as u64
    }

    /// Puts back failures taken with [`take`](Self::take) that could not be
    /// sent again, at the front and in their order, with their numbers (the
    /// durable copy still has them). Past the bounds, the newest go, as they
    /// would have on push; returns how many.
    pub fn put_back(&self, taken: Taken) -> u64 {
        let (failures, mut receipt) = taken.into_parts();
        let seqs = std::mem::take(&mut receipt.seqs);
        let count = failures.len();
        let mut s = self.lock();
        let mut extra = Vec::new();
        for (i, mut failure) in failures.into_iter().enumerate().rev() {
            failure.own();
            let size = failure.held_bytes();
            let seq = match seqs.get(i) {
                Some(seq) => *seq,
                None => {
                    // More than were taken: new failures, told to the copy.
                    let seq = s.next_seq;
                    s.next_seq += 1;
                    extra.push(seq);
                    seq
                }
            };
            s.bytes += size;
            s.queue.push_front(Kept { failure, size, seq });
        }
        if let Some(log) = self.log() {
            if !extra.is_empty() {
                log.added(
                    &mut s
                        .queue
                        .iter()
                        .filter(|k| extra.contains(&k.seq))
                        .map(|k| (k.seq, &k.failure)),
                );
            }
            // Fewer than were taken: the rest are gone.
            let gone: Vec<u64> = seqs.iter().skip(count).copied().collect();
            if !gone.is_empty() {
                log.removed(&gone);
            }
        }
        let evicted = s.evict_until_fits(self.max_events, self.max_bytes, false);
        if let Some(log) = self.log()
            && !evicted.is_empty()
        {
            log.removed(&evicted);
        }
        drop(s);
        self.evicted_total.fetch_add(evicted.len() as u64, Relaxed);
        evicted.len() as u64
    }

    /// Copies of up to `limit` stored failures, from the `offset`th oldest.
    pub fn list(&self, offset: usize, limit: usize) -> Vec<StoredFailure> {
        self.lock()
            .queue
            .iter()
            .skip(offset)
            .take(limit)
            .map(|k| k.failure.clone())
            .collect()
    }

    /// Takes up to `limit` of the oldest failures out (see [`Taken`]).
    pub fn take(&self, limit: usize) -> Taken {
        let mut s = self.lock();
        let n = limit.min(s.queue.len());
        let mut failures = Vec::with_capacity(n);
        let mut seqs = Vec::with_capacity(n);
        for k in s.queue.drain(..n) {
            failures.push(k.failure);
            seqs.push(k.seq);
        }
        s.bytes = s.queue.iter().map(|k| k.size).sum();
        Taken {
            failures,
            receipt: Receipt {
                seqs,
                log: self.log().cloned(),
            },
        }
    }

    /// Empties the store; returns how many failures were discarded.
    pub fn clear(&self) -> usize {
        let mut s = self.lock();
        let seqs: Vec<u64> = s.queue.iter().map(|k| k.seq).collect();
        s.queue.clear();
        s.bytes = 0;
        if let Some(log) = self.log()
            && !seqs.is_empty()
        {
            log.removed(&seqs);
        }
        seqs.len()
    }

    /// Failures held now.
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held now (see [`StoredFailure::held_bytes`]).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// The store's bounds: (events, bytes).
    pub fn bounds(&self) -> (usize, usize) {
        (self.max_events, self.max_bytes)
    }

    /// Failures ever stored.
    pub fn stored_total(&self) -> u64 {
        self.stored_total.load(Relaxed)
    }

    /// Failures evicted to stay within bounds (lost).
    pub fn evicted_total(&self) -> u64 {
        self.evicted_total.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(id: &str) -> StoredFailure {
        let mut e = Event::new("t");
        e.id = id.to_owned().into();
        StoredFailure::new(e, format!("failed {id}"), true)
    }

    fn ids(v: &[StoredFailure]) -> Vec<&str> {
        v.iter().map(|f| f.event.id.as_str()).collect()
    }

    #[test]
    fn bounds_must_hold_something() {
        assert!(FailureStore::new(0, 10).is_err());
        assert!(FailureStore::new(10, 0).is_err());
        let err = FailureStore::new(0, 0).unwrap_err().to_string();
        assert!(err.contains("at least one event"), "{err}");
    }

    #[test]
    fn evicts_oldest_past_the_event_bound_and_counts() {
        let s = FailureStore::new(3, 1 << 20).unwrap();
        assert_eq!(s.push(["a", "b"].map(failure)), 0);
        assert_eq!(s.push(["c", "d", "e"].map(failure)), 2);
        assert_eq!(ids(&s.list(0, 10)), ["c", "d", "e"]);
        assert_eq!(s.stored_total(), 5);
        assert_eq!(s.evicted_total(), 2);
    }

    #[test]
    fn evicts_oldest_past_the_byte_bound() {
        let one = failure("a").held_bytes();
        let s = FailureStore::new(100, one * 2).unwrap();
        s.push(["a", "b", "c"].map(failure));
        assert_eq!(ids(&s.list(0, 10)), ["b", "c"]);
        assert_eq!(s.bytes(), one * 2);
        // One event bigger than the whole store cannot be kept either.
        let mut big = failure("big");
        big.event.payload = bytes::Bytes::from(vec![0u8; one * 3]);
        assert_eq!(s.push([big]), 3);
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn a_stored_event_holds_only_its_own_bytes() {
        // A payload sliced from a large request buffer would keep all of it
        // alive while the store counted only the slice.
        let request = bytes::Bytes::from(vec![b' '; 1 << 20]);
        let mut f = failure("a");
        f.event.payload = request.slice(10..20);
        f.reason = "é".repeat(MAX_REASON_BYTES); // two bytes each
        let s = FailureStore::new(10, 1 << 20).unwrap();
        s.push([f]);
        let kept = s.take(1).into_parts().0.pop().unwrap();
        // The store's copy is its own buffer: the request's is not in it.
        let at = kept.event.payload.as_ptr() as usize;
        let req = request.as_ptr() as usize;
        assert!(
            at < req || at >= req + request.len(),
            "payload still pins the request buffer"
        );
        assert_eq!(kept.event.payload, request.slice(10..20));
        assert_eq!(kept.reason.len(), MAX_REASON_BYTES);
        assert!(kept.reason.chars().all(|c| c == 'é'));
    }

    #[test]
    fn take_and_put_back_keep_order() {
        let s = FailureStore::new(10, 1 << 20).unwrap();
        s.push(["a", "b", "c"].map(failure));
        let taken = s.take(2);
        assert_eq!(ids(taken.failures()), ["a", "b"]);
        assert_eq!(ids(&s.list(0, 10)), ["c"]);
        s.push([failure("d")]);
        s.put_back(taken);
        assert_eq!(ids(&s.list(0, 10)), ["a", "b", "c", "d"]);
        assert_eq!(ids(&s.list(1, 2)), ["b", "c"]);
        assert_eq!(
            s.bytes(),
            s.list(0, 10)
                .iter()
                .map(StoredFailure::held_bytes)
                .sum::<usize>()
        );
        assert_eq!(s.clear(), 4);
        assert!(s.is_empty());
        assert!(s.take(5).is_empty());
    }

    /// A log that keeps what it was told: number to event id.
    #[derive(Debug, Default)]
    struct Told(Mutex<std::collections::BTreeMap<u64, String>>);

    impl FailureLog for Told {
        fn added(&self, failures: &mut dyn Iterator<Item = (u64, &StoredFailure)>) {
            let mut m = self.0.lock().unwrap();
            for (seq, f) in failures {
                assert!(
                    m.insert(seq, f.event.id.to_string()).is_none(),
                    "number {seq} told twice"
                );
            }
        }

        fn removed(&self, seqs: &[u64]) {
            let mut m = self.0.lock().unwrap();
            for seq in seqs {
                assert!(m.remove(seq).is_some(), "number {seq} removed, never added");
            }
        }

        fn flush(&self) -> FlushFuture {
            Box::pin(std::future::ready(Ok(())))
        }
    }

    impl Told {
        fn ids(&self) -> Vec<String> {
            self.0.lock().unwrap().values().cloned().collect()
        }
    }

    #[test]
    fn attach_puts_what_the_copy_held_first_and_tells_it_the_rest() {
        let s = FailureStore::new(3, 1 << 20).unwrap();
        s.push([failure("new")]);
        let told = Arc::new(Told::default());
        told.0.lock().unwrap().extend([
            (4, "old-a".into()),
            (9, "old-b".into()),
            (10, "old-c".into()),
        ]);
        let recovered = vec![
            (10, failure("old-c")),
            (4, failure("old-a")),
            (9, failure("old-b")),
        ];
        assert!(s.attach(told.clone(), recovered));
        // Four do not fit in three: the oldest went, from the copy too.
        assert_eq!(ids(&s.list(0, 10)), ["old-b", "old-c", "new"]);
        assert_eq!(told.ids(), ["old-b", "old-c", "new"]);
        assert_eq!(s.evicted_total(), 1);
        assert!(s.is_durable());
        assert!(
            !s.attach(Arc::new(Told::default()), Vec::new()),
            "one copy only"
        );
    }

    proptest::proptest! {
        /// Whatever the store does, its copy holds what the store holds plus
        /// what is taken and not yet done with, oldest first.
        #[test]
        fn the_copy_follows_the_store(ops in proptest::collection::vec(0u8..6, 1..60)) {
            let s = FailureStore::new(5, 1 << 20).unwrap();
            let told = Arc::new(Told::default());
            assert!(s.attach(told.clone(), Vec::new()));
            let mut out: Vec<Taken> = Vec::new();
            let mut next = 0;
            for op in ops {
                match op {
                    0 | 1 => {
                        let batch: Vec<StoredFailure> = (0..op + 1)
                            .map(|_| { next += 1; failure(&format!("{next:03}")) })
                            .collect();
                        s.push(batch);
                    }
                    2 => out.push(s.take(2)),
                    3 => { if let Some(t) = out.pop() { s.put_back(t); } }
                    4 => { out.pop(); } // resent: done with
                    _ => { s.clear(); }
                }
                let mut expect: Vec<String> = s.list(0, 100).iter().map(|f| f.event.id.to_string()).collect();
                for t in &out {
                    expect.extend(t.failures().iter().map(|f| f.event.id.to_string()));
                }
                expect.sort();
                let mut got = told.ids();
                got.sort();
                proptest::prop_assert_eq!(got, expect);
            }
        }
    }

    #[test]
    fn breaker_state_round_trips_and_counts_openings() {
        let d = DeliveryState::new(None);
        assert_eq!(d.breaker(), None);
        d.set_breaker(BreakerState::Closed);
        d.set_breaker(BreakerState::Open);
        d.set_breaker(BreakerState::Open);
        assert_eq!(d.breaker(), Some(BreakerState::Open));
        d.set_breaker(BreakerState::HalfOpen);
        d.set_breaker(BreakerState::Open);
        assert_eq!(d.breaker_opened(), 2);
        assert!(d.failure_store().is_none());
    }
}
