//! One emitter's task: it takes batches off the emitter's queue in order,
//! gathers more while lingering if asked to, delivers them, counts what
//! became of them, and flushes the emitter once the queue is closed and
//! empty. A panicking emitter fails its batch, not its task.

use super::emitters::Delivery;
use super::queue::{EmitQueue, Linger};
use crate::stats::EmitterStats;
use crate::tap::{Stage, Taps};
use futures_util::FutureExt as _;
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use polku_core::{Emitter, Event};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tracing::{debug, error};

/// One emitter's task: deliver each batch in order (with `in_flight` above
/// one, up to that many calls at once), count the outcome, and flush the
/// emitter once its queue is closed and empty.
pub(crate) async fn run_emitter(
    emitter: Arc<dyn Emitter>,
    queue: Arc<EmitQueue<Delivery>>,
    stats: Arc<EmitterStats>,
    linger: Option<Linger>,
    in_flight: usize,
    taps: Arc<Taps>,
) {
    let name = emitter.name().to_owned();
    if in_flight <= 1 {
        while let Some(first) = queue.pop().await {
            deliver(&*emitter, &name, &queue, &stats, &taps, linger, first).await;
        }
    } else {
        let mut running = FuturesUnordered::new();
        loop {
            tokio::select! {
                // Finished calls first: their room goes back at once.
                biased;
                Some(()) = running.next(), if !running.is_empty() => {}
                next = queue.pop(), if running.len() < in_flight => match next {
                    Some(first) => {
                        running.push(deliver(
                            &*emitter, &name, &queue, &stats, &taps, linger, first,
                        ));
                    }
                    None => break,
                },
            }
        }
        // Nothing more comes: what the emitter holds for a batch of its own
        // goes now, not at its age limit.
        if !running.is_empty() {
            emitter.flush_now();
        }
        while running.next().await.is_some() {}
    }
    debug!(emitter = %name, "queue drained; flushing");
    if let Err(err) = emitter.shutdown().await {
        error!(emitter = %name, error = %err, "emitter failed to flush on shutdown");
    }
}

/// One call: `first`, and more if lingering gathers them; counts what
/// became of them.
async fn deliver(
    emitter: &dyn Emitter,
    name: &str,
    queue: &EmitQueue<Delivery>,
    stats: &EmitterStats,
    taps: &Taps,
    linger: Option<Linger>,
    mut first: Delivery,
) {
    // The batches of this call: `first`, then any gathered while lingering
    // (no allocation when there are none).
    let mut more: Vec<Delivery> = Vec::new();
    if let Some(l) = linger {
        // Gather more batches for one bigger call, for a while.
        let deadline = tokio::time::Instant::now() + l.max_wait;
        let mut n = first.events.len();
        while n < l.max_events {
            match tokio::time::timeout_at(deadline, queue.pop()).await {
                Ok(Some(next)) => {
                    n += next.events.len();
                    more.push(next);
                }
                _ => break,
            }
        }
    }
    // Each batch's size, for its latency below (a gathered batch's events
    // are moved out of it).
    let mut sizes: Vec<usize> = Vec::new();
    let events = if more.is_empty() {
        first.events.clone()
    } else {
        sizes.extend(std::iter::once(&first).chain(&more).map(|d| d.events.len()));
        let mut all = Vec::with_capacity(sizes.iter().sum());
        for d in std::iter::once(&mut first).chain(&mut more) {
            // A batch no other emitter shares gives its events up; a shared
            // one is copied.
            match Arc::get_mut(&mut d.events) {
                Some(own) => all.append(own),
                None => all.extend(d.events.iter().cloned()),
            }
        }
        Arc::new(all)
    };
    let n = events.len();
    let tapped = taps.wants_emitters().then(|| events.clone());
    // A panicking emitter must not take its queue down with it.
    let result = AssertUnwindSafe(emitter.emit_shared(events))
        .catch_unwind()
        .await;
    if let Some(events) = tapped {
        tap_outcome(taps, name, &events, &result);
    }
    let failed = match result {
        Ok(Ok(())) => 0,
        Ok(Err(err)) => {
            let failed = err.failed_count(n);
            error!(emitter = %name, events = failed, error = %err, "emit failed; events not delivered");
            failed
        }
        Err(_panic) => {
            error!(emitter = %name, events = n, "emitter panicked; events not delivered");
            n
        }
    };
    stats.emitted.fetch_add((n - failed) as u64, Relaxed);
    if n > failed {
        // Each batch's events by their own arrival (failures are not told
        // apart by batch here; they are rare).
        let mut delivered = n - failed;
        for (i, d) in std::iter::once(&first).chain(&more).enumerate() {
            let size = sizes.get(i).copied().unwrap_or(d.events.len());
            let k = size.min(delivered);
            if k > 0 {
                stats
                    .latency
                    .observe_n(d.arrived.elapsed().as_secs_f64(), k as u64);
            }
            delivered -= k;
        }
    }
    stats.failed.fetch_add(failed as u64, Relaxed);
    stats.queued.fetch_sub(n as u64, Relaxed);
    drop((first, more));
}

/// Offers what became of a call's events to the taps on its emitter.
fn tap_outcome(
    taps: &Taps,
    name: &str,
    events: &[Event],
    result: &Result<Result<(), polku_core::EmitError>, Box<dyn std::any::Any + Send>>,
) {
    use polku_core::EmitError;
    let stage = Stage::Emitter(name.to_owned());
    let delivered = || "delivered".to_owned();
    match result {
        Ok(Ok(())) => taps.publish(&stage, events.iter().map(|e| (e, delivered()))),
        Ok(Err(EmitError::Partial { failures })) => {
            let why: std::collections::HashMap<usize, &str> = failures
                .iter()
                .map(|f| (f.index, f.message.as_str()))
                .collect();
            taps.publish(
                &stage,
                events.iter().enumerate().map(|(i, e)| {
                    let reason = why
                        .get(&i)
                        .map_or_else(delivered, |m| format!("failed: {m}"));
                    (e, reason)
                }),
            );
        }
        Ok(Err(err)) => taps.publish(&stage, events.iter().map(|e| (e, format!("failed: {err}")))),
        Err(_) => taps.publish(
            &stage,
            events
                .iter()
                .map(|e| (e, "failed: the emitter panicked".to_owned())),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::buffer::Buffer;
    use crate::pipeline::queue::QueueFull;
    use crate::pipeline::testing::{Step, TestEmitter};
    use std::time::Duration;

    struct Run {
        queue: Arc<EmitQueue<Delivery>>,
        stats: Arc<EmitterStats>,
        buffer: Buffer,
        task: tokio::task::JoinHandle<()>,
    }

    fn run(emitter: Arc<TestEmitter>, linger: Option<Linger>) -> Run {
        run_in_flight(emitter, linger, 1)
    }

    fn run_in_flight(emitter: Arc<TestEmitter>, linger: Option<Linger>, calls: usize) -> Run {
        let queue = Arc::new(EmitQueue::new(QueueFull::Block));
        let stats = Arc::new(EmitterStats::default());
        let task = tokio::spawn(run_emitter(
            emitter,
            queue.clone(),
            stats.clone(),
            linger,
            calls,
            Default::default(),
        ));
        Run {
            queue,
            stats,
            buffer: Buffer::new(1000, 0),
            task,
        }
    }

    impl Run {
        fn push(&self, ids: &[&str]) {
            self.push_shared(ids);
        }

        /// Queues a batch and keeps a share of it, as another emitter's
        /// delivery of the same batch would.
        fn push_shared(&self, ids: &[&str]) -> Arc<Vec<Event>> {
            let events: Arc<Vec<Event>> =
                Arc::new(ids.iter().map(|i| Event::new("t").with_id(*i)).collect());
            let room = self.buffer.try_reserve(ids.len(), 0).unwrap();
            self.stats.queued.fetch_add(ids.len() as u64, Relaxed);
            let d = Delivery {
                events: events.clone(),
                _room: Arc::new(room),
                arrived: tokio::time::Instant::now(),
                _ticket: None,
                _taken: None,
            };
            self.queue.push(d, &self.stats).unwrap();
            events
        }

        async fn finish(self) -> (Arc<EmitterStats>, Buffer) {
            self.queue.close();
            self.task.await.unwrap();
            (self.stats, self.buffer)
        }
    }

    fn count(s: &EmitterStats) -> (u64, u64, u64) {
        (
            s.emitted.load(Relaxed),
            s.failed.load(Relaxed),
            s.queued.load(Relaxed),
        )
    }

    #[tokio::test]
    async fn in_flight_calls_run_at_once_up_to_the_bound_and_all_finish() {
        let e = TestEmitter::new("e");
        e.hold();
        let r = run_in_flight(e.clone(), None, 3);
        for i in 0..5 {
            r.push(&[&i.to_string()]);
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(e.started(), 3, "three calls under way, no more");
        assert_eq!(count(&r.stats), (0, 0, 5));
        e.release();
        let (stats, buffer) = r.finish().await;
        assert_eq!(e.started(), 5);
        let mut ids = e.ids();
        ids.sort();
        assert_eq!(ids, ["0", "1", "2", "3", "4"]);
        assert_eq!(count(&stats), (5, 0, 0));
        assert_eq!(buffer.depth(), 0, "every call gave its room back");
        assert_eq!(e.shutdowns(), 1, "flushed once, after the last call");
    }

    #[tokio::test]
    async fn batches_go_out_in_order_and_the_emitter_is_flushed_once() {
        let e = TestEmitter::new("e");
        let r = run(e.clone(), None);
        r.push(&["1", "2"]);
        r.push(&["3"]);
        let (stats, buffer) = r.finish().await;
        assert_eq!(e.batches(), [vec!["1", "2"], vec!["3"]]);
        assert_eq!(count(&stats), (3, 0, 0));
        assert_eq!(
            stats.latency.snapshot().count,
            3,
            "each delivered event is timed"
        );
        assert_eq!(e.shutdowns(), 1);
        assert_eq!(buffer.depth(), 0, "the room went back");
    }

    #[tokio::test]
    async fn a_failure_or_a_panic_is_counted_and_the_task_goes_on() {
        let e = TestEmitter::new("e");
        e.script([Step::Fail, Step::Panic]);
        let r = run(e.clone(), None);
        r.push(&["1", "2"]);
        r.push(&["3"]);
        r.push(&["4"]);
        let (stats, buffer) = r.finish().await;
        assert_eq!(e.ids(), ["4"]);
        assert_eq!(count(&stats), (1, 3, 0));
        assert_eq!(buffer.depth(), 0, "failed batches give their room back too");
        assert_eq!(e.shutdowns(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn lingering_gathers_batches_into_one_call_up_to_its_size() {
        let e = TestEmitter::new("e");
        let linger = Linger {
            max_wait: Duration::from_millis(100),
            max_events: 3,
        };
        let r = run(e.clone(), Some(linger));
        r.push(&["1"]);
        r.push(&["2"]);
        r.push(&["3"]);
        r.push(&["4"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            e.batches(),
            [vec!["1", "2", "3"]],
            "full at three: sent at once"
        );
        r.push(&["5"]);
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(e.batches().len(), 1, "4 and 5 still wait for company");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(e.batches()[1], ["4", "5"], "sent when the wait ran out");
        let (stats, _) = r.finish().await;
        assert_eq!(count(&stats), (5, 0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_linger_takes_what_is_queued_and_never_waits() {
        let e = TestEmitter::new("e");
        let linger = Linger {
            max_wait: Duration::ZERO,
            max_events: 3,
        };
        let r = run(e.clone(), Some(linger));
        let start = tokio::time::Instant::now();
        for id in ["1", "2", "3", "4"] {
            r.push(&[id]);
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            e.batches(),
            [vec!["1", "2", "3"], vec!["4"]],
            "what was queued, up to three a call"
        );
        r.push(&["5"]);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(e.batches()[2], ["5"], "alone, at once");
        assert_eq!(start.elapsed(), Duration::ZERO, "no call waited");
        let (stats, _) = r.finish().await;
        assert_eq!(count(&stats), (5, 0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn gathering_copies_a_shared_batch_and_leaves_it_whole() {
        let e = TestEmitter::new("e");
        let linger = Linger {
            max_wait: Duration::ZERO,
            max_events: 10,
        };
        let r = run(e.clone(), Some(linger));
        let own = r.push_shared(&["1", "2"]);
        let shared = r.push_shared(&["3"]);
        let own2 = r.push_shared(&["4", "5"]);
        // Only the second batch is still held elsewhere (another emitter).
        drop((own, own2));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(e.batches(), [vec!["1", "2", "3", "4", "5"]], "one call");
        assert_eq!(shared.len(), 1, "the shared batch kept its event");
        assert_eq!(shared[0].id.as_str(), "3");
        let (stats, buffer) = r.finish().await;
        assert_eq!(count(&stats), (5, 0, 0));
        assert_eq!(
            stats.latency.snapshot().count,
            5,
            "each event timed by its batch's arrival, moved or not"
        );
        assert_eq!(buffer.depth(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn closing_the_queue_delivers_what_it_holds_first() {
        let e = TestEmitter::new("e");
        e.hold();
        let r = run(e.clone(), None);
        r.push(&["1"]);
        r.push(&["2"]);
        r.queue.close();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(e.shutdowns(), 0, "not flushed while batches wait");
        e.release();
        let (stats, _) = r.finish().await;
        assert_eq!(e.ids(), ["1", "2"]);
        assert_eq!(count(&stats), (2, 0, 0));
        assert_eq!(e.shutdowns(), 1);
    }
}
