//! Each emitter's own queue, and what happens when it is full.
//!
//! Every accepted event holds room in the gateway's buffer until each
//! emitter it goes to is done with it, so an emitter's queue never holds more
//! than the buffer. What differs is what a full queue does:
//!
//! - [`QueueFull::Block`] (the default): the queue is bounded only by the
//!   buffer. A slow or dead emitter keeps its events until it delivers them
//!   (or its retries give up), so the buffer fills and ingestion is pushed
//!   back (unary calls wait and then get RESOURCE_EXHAUSTED, streams stop
//!   reading, HTTP answers 429). Nothing accepted is dropped; a dead emitter
//!   does slow every other one once the buffer is full.
//! - [`QueueFull::DropOldest`]: at most `max_events` wait; a new batch
//!   evicts the oldest waiting batches. The destination misses events
//!   (counted), but the rest of the gateway never waits for it, and what it
//!   gets when it comes back is the most recent.
//! - [`QueueFull::DropNewest`]: at most `max_events` wait; a batch that
//!   does not fit is not queued for this emitter (counted). The destination
//!   misses the newest events instead; the rest of the gateway never waits.
//!
//! Either drop policy counts each dropped event in
//! `polku_emitter_events_dropped_total{reason="queue_full"}`.

use crate::stats::EmitterStats;
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;

/// What an emitter's queue does when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueFull {
    /// Wait: the buffer fills and ingestion is pushed back. Nothing is lost.
    #[default]
    Block,
    /// Keep at most `max_events` waiting; evict the oldest batches for new ones.
    DropOldest {
        /// Events that may wait.
        max_events: usize,
    },
    /// Keep at most `max_events` waiting; a new batch that does not fit is dropped.
    DropNewest {
        /// Events that may wait.
        max_events: usize,
    },
}

/// Gather small batches into bigger calls: after taking a batch, an emitter
/// waits up to `max_wait` for more until it has `max_events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linger {
    /// The longest a batch waits for company.
    pub max_wait: Duration,
    /// Stop gathering at this many events.
    pub max_events: usize,
}

/// How the gateway runs one emitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct EmitterOptions {
    /// What a full queue does.
    pub queue_full: QueueFull,
    /// Gather small batches into bigger calls (off by default).
    pub linger: Option<Linger>,
    /// Calls the emitter may have under way at once (`1`: one at a time, in
    /// order; `0`, the default: as many as the emitter asks for, see
    /// [`polku_core::Emitter::calls_at_once`], one for most).
    pub in_flight: usize,
}

impl EmitterOptions {
    /// What a full queue does.
    pub fn queue_full(mut self, policy: QueueFull) -> Self {
        self.queue_full = policy;
        self
    }

    /// Lets the emitter have up to `calls` calls under way at once, for a
    /// destination whose answers take a round trip (Kafka's acknowledgements)
    /// and that takes many requests at once. Batches may then be delivered
    /// out of order, as they may be after a retry anyway.
    pub fn in_flight(mut self, calls: usize) -> Self {
        self.in_flight = calls;
        self
    }

    /// Gathers batches for up to `max_wait`, up to `max_events` per call.
    pub fn linger(mut self, max_wait: Duration, max_events: usize) -> Self {
        self.linger = Some(Linger {
            max_wait,
            max_events: max_events.max(1),
        });
        self
    }
}

/// Something that sits in a queue and has a size in events.
pub(crate) trait QueueItem {
    fn events(&self) -> usize;
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    events: usize,
    closed: bool,
}

/// One emitter's queue: many producers (request handlers), one consumer
/// (the emitter's task). A lock per batch, never per event.
#[derive(Debug)]
pub(crate) struct EmitQueue<T> {
    state: Mutex<State<T>>,
    notify: Notify,
    policy: QueueFull,
}

impl<T: QueueItem> EmitQueue<T> {
    pub(crate) fn new(policy: QueueFull) -> Self {
        EmitQueue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                events: 0,
                closed: false,
            }),
            notify: Notify::new(),
            policy,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `item` as the policy allows; `Err` gives it back when the
    /// queue is closed. Events dropped to make room are counted in `stats`.
    pub(crate) fn push(&self, item: T, stats: &EmitterStats) -> Result<(), T> {
        let n = item.events();
        let mut dropped: Vec<T> = Vec::new();
        {
            let mut s = self.lock();
            if s.closed {
                return Err(item);
            }
            let fits = match self.policy {
                QueueFull::Block => true,
                QueueFull::DropOldest { max_events } => {
                    while s.events + n > max_events {
                        let Some(old) = s.items.pop_front() else {
                            break;
                        };
                        s.events -= old.events();
                        dropped.push(old);
                    }
                    true
                }
                // An empty queue takes any batch, or a batch bigger than the
                // bound could never be delivered.
                QueueFull::DropNewest { max_events } => {
                    s.events + n <= max_events || s.items.is_empty()
                }
            };
            if fits {
                s.events += n;
                s.items.push_back(item);
            } else {
                dropped.push(item);
            }
        }
        self.notify.notify_one();
        if !dropped.is_empty() {
            let events: u64 = dropped.iter().map(|d| d.events() as u64).sum();
            stats.queued.fetch_sub(events, Relaxed);
            stats.dropped_queue_full.fetch_add(events, Relaxed);
            // Freed outside the lock: freeing a batch takes time.
            drop(dropped);
        }
        Ok(())
    }

    /// The next item, waiting for one; `None` once closed and empty.
    pub(crate) async fn pop(&self) -> Option<T> {
        loop {
            // Registered before looking, so a push between the look and the
            // wait is not missed (notify_one also keeps a permit for us).
            let notified = self.notify.notified();
            {
                let mut s = self.lock();
                if let Some(item) = s.items.pop_front() {
                    s.events -= item.events();
                    return Some(item);
                }
                if s.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// No more pushes; the consumer gets what is queued, then `None`.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct B(&'static str, usize);
    impl QueueItem for B {
        fn events(&self) -> usize {
            self.1
        }
    }

    async fn drain(q: &EmitQueue<B>) -> Vec<&'static str> {
        q.close();
        let mut out = Vec::new();
        while let Some(b) = q.pop().await {
            out.push(b.0);
        }
        out
    }

    fn queued(stats: &EmitterStats, n: u64) {
        stats.queued.fetch_add(n, Relaxed);
    }

    #[tokio::test]
    async fn block_keeps_everything_in_order() {
        let q = EmitQueue::new(QueueFull::Block);
        let stats = EmitterStats::default();
        for b in [B("a", 5), B("b", 5), B("c", 5)] {
            q.push(b, &stats).unwrap();
        }
        assert_eq!(drain(&q).await, ["a", "b", "c"]);
        assert_eq!(stats.dropped_queue_full.load(Relaxed), 0);
        assert!(q.push(B("late", 1), &stats).is_err(), "closed");
    }

    #[tokio::test]
    async fn drop_oldest_evicts_whole_batches_and_counts_events() {
        let q = EmitQueue::new(QueueFull::DropOldest { max_events: 10 });
        let stats = EmitterStats::default();
        queued(&stats, 16);
        for b in [B("a", 4), B("b", 4), B("c", 4), B("d", 4)] {
            q.push(b, &stats).unwrap();
        }
        assert_eq!(drain(&q).await, ["c", "d"]);
        assert_eq!(stats.dropped_queue_full.load(Relaxed), 8);
        assert_eq!(stats.queued.load(Relaxed), 8);
    }

    #[tokio::test]
    async fn drop_newest_refuses_what_does_not_fit_but_never_starves() {
        let q = EmitQueue::new(QueueFull::DropNewest { max_events: 10 });
        let stats = EmitterStats::default();
        queued(&stats, 22);
        q.push(B("huge", 12), &stats).unwrap();
        q.push(B("a", 4), &stats).unwrap();
        assert_eq!(q.pop().await, Some(B("huge", 12)));
        q.push(B("b", 4), &stats).unwrap();
        q.push(B("c", 2), &stats).unwrap();
        assert_eq!(drain(&q).await, ["b", "c"]);
        assert_eq!(stats.dropped_queue_full.load(Relaxed), 4);
    }

    #[tokio::test]
    async fn a_waiting_consumer_wakes_for_a_push_and_for_close() {
        let q = std::sync::Arc::new(EmitQueue::new(QueueFull::Block));
        let stats = EmitterStats::default();
        let consumer = {
            let q = q.clone();
            tokio::spawn(async move { (q.pop().await, q.pop().await) })
        };
        tokio::task::yield_now().await;
        q.push(B("a", 1), &stats).unwrap();
        tokio::task::yield_now().await;
        q.close();
        let (first, second) = consumer.await.unwrap();
        assert_eq!(first, Some(B("a", 1)));
        assert_eq!(second, None);
    }
}
