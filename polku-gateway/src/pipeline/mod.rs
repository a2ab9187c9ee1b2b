//! The path an accepted batch takes: ingestor, limits, buffer, middleware,
//! emitters. One part per file:
//!
//! - [`ingestors`]: which ingestor turns a request's raw bytes into events.
//! - [`limits`]: what makes an event too big to take.
//! - [`buffer`]: room for events and bytes, reserved before anything else
//!   and held until every emitter is done with the batch.
//! - [`accept`]: a request's way in, from raw bytes or events to the
//!   emitters' queues.
//! - [`emitters`]: the running emitters (added and removed at run time) and
//!   removed plugins' failure stores.
//! - [`queue`]: one emitter's queue and what it does when full.
//! - [`task`]: one emitter's task, which delivers what its queue holds.
//! - [`resend`]: failed events queued to their emitter again.
//! - [`log`] and [`journal`]: the durable buffer (`POLKU_BUFFER_DIR`): each
//!   accepted batch is a synced log record before it is acknowledged, each
//!   emitter keeps a durable cursor, and [`replay`] sends after a restart
//!   what was not delivered.
//!
//! Each emitter runs on its own task. A batch is shared between emitters behind
//! an `Arc`; only events with a `route_to` that picks some emitters are cloned.
//!
//! Shutdown, in order: [`Pipeline::stop_admitting`] (waiters for room fail),
//! [`Pipeline::wait_idle`] (requests past the buffer finish),
//! [`Pipeline::close`] (queues close; each task delivers what it holds, then
//! flushes), then the tasks from [`Pipeline::take_tasks`] are awaited.

mod accept;
mod buffer;
mod emitters;
mod ingestors;
pub(crate) mod journal;
mod limits;
pub(crate) mod log;
pub(crate) mod queue;
mod replay;
mod resend;
mod sink;
mod task;
#[cfg(test)]
mod testing;

pub(crate) use accept::Outcome;
pub(crate) use buffer::Wait;
pub(crate) use ingestors::IngestorTable;
pub(crate) use limits::Limits;
pub(crate) use sink::PipelineSink;

use crate::error::ResendError;
use crate::stats::{EmitterSnapshot, EmitterStats, MiddlewareSnapshot, Stats, StatsSnapshot};
use buffer::Buffer;
use emitters::EmitterTable;
use polku_core::{Emitter, Ingestor};
use polku_middleware::BatchService;
use queue::EmitterOptions;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// The running pipeline, shared by every request handler.
#[derive(Debug)]
pub(crate) struct Pipeline {
    limits: Limits,
    ingestors: RwLock<IngestorTable>,
    /// The middleware chain; `None` when there is none, and batches go
    /// straight on (no call through the chain, no second sizing).
    middleware: Option<BatchService>,
    buffer: Buffer,
    /// The durable buffer, when `POLKU_BUFFER_DIR` is set.
    journal: Option<Arc<journal::Journal>>,
    emitters: EmitterTable,
    middleware_drops: OnceLock<Vec<polku_middleware::drops::Registered>>,
    /// Middleware that remember only what was accepted (a deduplicator).
    commits: OnceLock<Vec<Arc<dyn polku_middleware::Commit>>>,
    /// Requests between their start and their hand-over to the buffer.
    inflight: AtomicUsize,
    idle: Notify,
    /// Whether some emitter could deliver at the last check (see the
    /// gateway's health watch); /readyz answers from it.
    pub(crate) emitters_healthy: AtomicBool,
    pub(crate) stats: Stats,
    /// Live views of the stages, for `polku tap`.
    pub(crate) taps: Arc<crate::tap::Taps>,
    /// gRPC call counts and durations.
    pub(crate) grpc_metrics: crate::stats::GrpcMetrics,
    /// Sources reading by themselves (Kafka), once started.
    sources: std::sync::Mutex<Vec<Arc<dyn polku_core::source::RunningSource>>>,
    /// Each source's store of records it could not read, by source name.
    unreadable: std::sync::Mutex<
        std::collections::BTreeMap<String, Arc<polku_core::delivery::FailureStore>>,
    >,
}

/// The name a source's store of unreadable records has among the failure
/// stores' files (`source:NAME`, written `source%3ANAME.failures`).
pub(crate) fn unreadable_file(source: &str) -> String {
    format!("source:{source}")
}

/// Marks a request as in flight until dropped; shutdown waits for none.
struct InFlight<'a>(&'a Pipeline);

impl<'a> InFlight<'a> {
    fn enter(p: &'a Pipeline) -> Self {
        p.inflight.fetch_add(1, Relaxed);
        InFlight(p)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Relaxed) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Pipeline {
    /// Builds the pipeline and starts one task per emitter; with a
    /// journal, also the replay of what the emitters had not delivered
    /// before a restart.
    pub(crate) fn start(
        ingestors: IngestorTable,
        middleware: Option<BatchService>,
        capacity: usize,
        emitters: Vec<(Arc<dyn Emitter>, EmitterOptions)>,
        limits: Limits,
        journal: Option<Arc<journal::Journal>>,
    ) -> Arc<Pipeline> {
        let taps = Arc::new(crate::tap::Taps::default());
        let pipeline = Arc::new(Pipeline {
            limits,
            ingestors: RwLock::new(ingestors),
            middleware,
            buffer: Buffer::new(capacity, limits.buffer_max_bytes),
            journal: journal.clone(),
            emitters: EmitterTable::new(journal, taps.clone()),
            middleware_drops: OnceLock::new(),
            commits: OnceLock::new(),
            inflight: AtomicUsize::new(0),
            idle: Notify::new(),
            emitters_healthy: AtomicBool::new(true),
            stats: Stats::default(),
            taps,
            grpc_metrics: Default::default(),
            sources: Default::default(),
            unreadable: Default::default(),
        });
        // A full buffer asks emitters that hold events for batches of
        // their own (S3 objects) to write them: those events hold room.
        let weak = Arc::downgrade(&pipeline);
        pipeline.buffer.on_full(Box::new(move || {
            if let Some(p) = weak.upgrade() {
                for e in p.emitters.live() {
                    e.flush_now();
                }
            }
        }));
        let mut replays = Vec::new();
        for (emitter, options) in emitters {
            // Names were checked unique by the caller; nothing else can fail.
            if let Ok(Some(r)) = pipeline.emitters.add(emitter, false, options) {
                replays.push(r);
            }
        }
        pipeline.spawn_replay(replays);
        pipeline
    }

    /// Runs a replay (see [`replay`]) on its own task.
    fn spawn_replay(self: &Arc<Self>, replays: Vec<emitters::Replay>) {
        let Some(journal) = self.journal.clone() else {
            return;
        };
        if replays.is_empty() {
            return;
        }
        let span = tracing::info_span!("polku.gateway.replay");
        tokio::spawn(tracing::Instrument::instrument(
            self.clone().replay(journal, replays),
            span,
        ));
    }

    /// Starts a plugin's emitter, replacing an earlier one of its name (see
    /// [`EmitterTable::add`]). A plugin that ran before a restart gets what
    /// it had not delivered.
    pub(crate) fn add_emitter(
        self: &Arc<Self>,
        emitter: Arc<dyn Emitter>,
        plugin: bool,
        options: EmitterOptions,
    ) -> Result<(), String> {
        let replay = self.emitters.add(emitter, plugin, options)?;
        self.spawn_replay(replay.into_iter().collect());
        Ok(())
    }

    /// Keeps a started source, for its counters and its shutdown.
    pub(crate) fn add_source(&self, source: Arc<dyn polku_core::source::RunningSource>) {
        self.sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(source);
    }

    /// The store of unreadable records for the source `name`: new, with
    /// these bounds, and on disk with the durable buffer (with what it held
    /// before a restart). None when `max_events` is 0.
    pub(crate) fn unreadable_store(
        &self,
        name: &str,
        (max_events, max_bytes): (usize, usize),
    ) -> Result<Option<Arc<polku_core::delivery::FailureStore>>, String> {
        if max_events == 0 {
            return Ok(None);
        }
        let store = Arc::new(
            polku_core::delivery::FailureStore::new(max_events, max_bytes)
                .map_err(|e| e.to_string())?,
        );
        if let Some(j) = &self.journal {
            j.attach_failures(&unreadable_file(name), &store)?;
        }
        self.unreadable
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), store.clone());
        Ok(Some(store))
    }

    /// The store of unreadable records of the source `name`, if it has one.
    pub(crate) fn unreadable(&self, name: &str) -> Option<Arc<polku_core::delivery::FailureStore>> {
        self.unreadable
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// The started sources.
    pub(crate) fn sources(&self) -> Vec<Arc<dyn polku_core::source::RunningSource>> {
        self.sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The durable buffer, if there is one.
    pub(crate) fn journal(&self) -> Option<&Arc<journal::Journal>> {
        self.journal.as_ref()
    }

    /// Whether a plugin's emitter of this name takes events now.
    pub(crate) fn has_plugin_emitter(&self, name: &str) -> bool {
        self.emitters.has_plugin(name)
    }

    /// Takes a removed plugin's emitter out of routing and keeps it for its
    /// failure store; returns how many events were queued for it.
    pub(crate) fn retire_plugin_emitter(&self, name: &str) -> Option<u64> {
        self.emitters.retire_plugin(name)
    }

    /// Emitters of removed plugins, kept for their failure stores.
    pub(crate) fn retired_emitters(&self) -> Vec<Arc<dyn Emitter>> {
        self.emitters.retired()
    }

    /// The running emitters, in the order they were added.
    pub(crate) fn emitters(&self) -> Vec<Arc<dyn Emitter>> {
        self.emitters.live()
    }

    /// The running emitter with this name, else a removed plugin's.
    pub(crate) fn emitter(&self, name: &str) -> Result<Arc<dyn Emitter>, ResendError> {
        self.emitters.find(name)
    }

    /// Each emitter's counters, by name.
    pub(crate) fn emitter_stats(&self) -> Vec<(String, Arc<EmitterStats>)> {
        self.emitters.stats()
    }

    /// Whether any emitter says it can deliver.
    pub(crate) async fn any_emitter_healthy(&self) -> bool {
        for e in &self.emitters.live() {
            if e.healthy().await {
                return true;
            }
        }
        false
    }

    /// Adds a registered plugin's ingestor.
    pub(crate) fn add_plugin_ingestor(&self, ing: Arc<dyn Ingestor>) -> Result<(), String> {
        self.ingestors
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .add_plugin(ing)
    }

    /// Removes what a registered plugin's ingestor served.
    pub(crate) fn remove_plugin_ingestor(&self, sources: &[String], formats: &[String]) {
        self.ingestors
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove_plugin(sources, formats);
    }

    /// `POLKU_MAX_EVENTS_PER_REQUEST`: decoders keep at most one event past it.
    pub(crate) fn max_events_per_request(&self) -> usize {
        self.limits.max_events_per_request
    }

    /// Events accepted and not yet done by every emitter.
    pub(crate) fn depth(&self) -> usize {
        self.buffer.depth()
    }

    /// Turns true when shutdown starts.
    pub(crate) fn stopping(&self) -> watch::Receiver<bool> {
        self.buffer.stopping()
    }

    /// Stops admitting events: requests waiting for room, and any later ones,
    /// fail at once with `ShuttingDown`. Requests that already hold room still
    /// complete, and the gateway's own drain ([`Wait::Drain`]) still gets in.
    pub(crate) fn stop_admitting(&self) {
        self.buffer.stop_admitting();
    }

    /// Waits until no request is between its start and the buffer, or until
    /// `deadline`; returns how many still are.
    pub(crate) async fn wait_idle(&self, deadline: tokio::time::Instant) -> usize {
        loop {
            let notified = self.idle.notified();
            let n = self.inflight.load(Relaxed);
            if n == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.inflight.load(Relaxed);
            }
        }
    }

    /// Closes the buffer and the emitters' queues: each emitter task exits
    /// once it has delivered what its queue holds. Call after the server has
    /// drained.
    pub(crate) fn close(&self) {
        self.buffer.close();
        self.emitters.close();
    }

    /// The emitter tasks started so far; shutdown awaits them.
    pub(crate) fn take_tasks(&self) -> Vec<JoinHandle<()>> {
        self.emitters.take_tasks()
    }

    /// The drop counters of the middleware chain, in chain order.
    pub(crate) fn set_middleware_drops(&self, drops: Vec<polku_middleware::drops::Registered>) {
        // From here on, what the middleware remembers is what `deliver`
        // accepts, not what passed through them.
        let commits: Vec<_> = drops.iter().filter_map(|m| m.commit().cloned()).collect();
        for c in &commits {
            c.defer();
        }
        let _ = self.commits.set(commits);
        let _ = self.middleware_drops.set(drops);
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let mut s = self.stats.snapshot();
        s.buffer_capacity = self.buffer.capacity() as u64;
        s.buffer_depth = self.depth() as u64;
        s.buffer_bytes = self.buffer.depth_bytes() as u64;
        s.buffer_max_bytes = self.buffer.max_bytes() as u64;
        s.durable = self.journal.as_ref().map(|j| j.snapshot());
        s.sources = self.sources().iter().map(|r| r.stats()).collect();
        let mut live = self.emitters.live();
        live.extend(self.emitters.retired());
        s.emitters = self
            .emitters
            .stats()
            .iter()
            .map(|(name, st)| {
                let mut snap = st.snapshot();
                if let Some(d) = live
                    .iter()
                    .find(|e| e.name() == name)
                    .and_then(|e| e.delivery_state())
                {
                    snap = snap.with_delivery(d);
                }
                (name.clone(), snap)
            })
            .collect::<BTreeMap<String, EmitterSnapshot>>();
        s.middleware = self
            .middleware_drops
            .get()
            .map(|all| {
                all.iter()
                    .enumerate()
                    .map(|(position, m)| MiddlewareSnapshot {
                        position,
                        name: m.name(),
                        dropped: m.drops().snapshot().into_iter().collect(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        s
    }
}
