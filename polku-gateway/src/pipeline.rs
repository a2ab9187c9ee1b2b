//! The path an accepted batch takes: ingestor, middleware, buffer, emitters.
//!
//! The buffer is a semaphore of `capacity` permits, one per event, and one
//! unbounded queue per emitter. A request reserves permits for its events
//! *before* anything else happens (so a full buffer refuses a request before
//! middleware state such as dedup has seen it), and the permits travel with the
//! batch: they return only when every emitter is done with it. So the buffer's
//! capacity bounds every accepted event in memory, whichever emitter is slow,
//! and an emitter's queue can never outgrow it.
//!
//! Each emitter runs on its own task. A batch is shared between emitters behind
//! an `Arc`; only events with a `route_to` that picks some emitters are cloned.

use crate::SubmitError;
use crate::error::ResendError;
use crate::queue::{EmitQueue, EmitterOptions, Linger, QueueItem};
use crate::stats::{
    EmitterSnapshot, EmitterStats, MiddlewareSnapshot, RejectReason, Stats, StatsSnapshot,
};
use futures_util::FutureExt as _;
use polku_core::{Emitter, Event, Ingestor, now_unix_ns};
use polku_middleware::BatchService;
use polku_proto::v1::{RejectCode, RejectedEvent, SendEventRequest, SendEventResponse};
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;
use tower::ServiceExt as _;
use tracing::{debug, error, trace};

/// The most emitters whose counters are kept (live ones always are).
const MAX_EMITTER_STATS: usize = 1024;

/// Removed plugins whose emitters (and failure stores) are kept.
const MAX_RETIRED: usize = 64;

/// How long a request may wait for room in the buffer.
#[derive(Debug, Clone)]
pub(crate) enum Wait {
    /// Up to this long (unary calls), then `BufferFull`.
    For(Duration),
    /// Until room frees up or shutdown starts (streams: not reading meanwhile
    /// is what pushes back on the client through HTTP/2 flow control).
    UntilShutdown(watch::Receiver<bool>),
    /// Up to this long, even while shutting down: the gateway's own drain of
    /// events that middleware held back.
    Drain(Duration),
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

/// The ingestors, by the format and the source they serve. Plugins that
/// register themselves are added and removed while the gateway runs.
#[derive(Debug, Default)]
pub(crate) struct IngestorTable {
    by_format: BTreeMap<String, Arc<dyn Ingestor>>,
    by_source: BTreeMap<String, Arc<dyn Ingestor>>,
    /// Sources and formats that belong to registered plugins.
    plugin_keys: std::collections::BTreeSet<String>,
}

impl IngestorTable {
    pub(crate) fn new(ingestors: &[Arc<dyn Ingestor>]) -> Result<Self, String> {
        let mut t = IngestorTable::default();
        for ing in ingestors {
            for f in ing.formats() {
                let f = f.to_ascii_lowercase();
                if let Some(other) = t.by_format.insert(f.clone(), ing.clone()) {
                    return Err(format!(
                        "format {f:?} is read by two ingestors ({} and {})",
                        other.name(),
                        ing.name()
                    ));
                }
            }
            for s in ing.sources() {
                if let Some(other) = t.by_source.insert(s.clone(), ing.clone()) {
                    return Err(format!(
                        "source {s:?} is served by two ingestors ({} and {})",
                        other.name(),
                        ing.name()
                    ));
                }
            }
        }
        Ok(t)
    }

    /// Adds a registered plugin's ingestor for its sources and formats,
    /// replacing an earlier plugin's; a key held by a configured ingestor is
    /// refused.
    pub(crate) fn add_plugin(&mut self, ing: Arc<dyn Ingestor>) -> Result<(), String> {
        let sources = ing.sources();
        let formats: Vec<String> = ing
            .formats()
            .iter()
            .map(|f| f.to_ascii_lowercase())
            .collect();
        for s in &sources {
            if self.by_source.contains_key(s) && !self.plugin_keys.contains(&format!("s:{s}")) {
                return Err(format!("source {s:?} is served by a configured ingestor"));
            }
        }
        for f in &formats {
            if self.by_format.contains_key(f) && !self.plugin_keys.contains(&format!("f:{f}")) {
                return Err(format!("format {f:?} is read by a configured ingestor"));
            }
        }
        for s in sources {
            self.plugin_keys.insert(format!("s:{s}"));
            self.by_source.insert(s, ing.clone());
        }
        for f in formats {
            self.plugin_keys.insert(format!("f:{f}"));
            self.by_format.insert(f, ing.clone());
        }
        Ok(())
    }

    /// Removes what a registered plugin served.
    pub(crate) fn remove_plugin(&mut self, sources: &[String], formats: &[String]) {
        for s in sources {
            if self.plugin_keys.remove(&format!("s:{s}")) {
                self.by_source.remove(s);
            }
        }
        for f in formats {
            let f = f.to_ascii_lowercase();
            if self.plugin_keys.remove(&format!("f:{f}")) {
                self.by_format.remove(&f);
            }
        }
    }

    /// The ingestor for a raw body posted to a source's own endpoint: the
    /// ingestor that serves the source, else the one for the content type.
    pub(crate) fn select_source_first(
        &self,
        source: &str,
        format: &str,
    ) -> Result<Arc<dyn Ingestor>, SubmitError> {
        match self.by_source.get(source) {
            Some(i) => Ok(i.clone()),
            None => self.select(source, format),
        }
    }

    /// The ingestor for raw bytes: by format when one is named (a MIME type's
    /// parameters such as `; charset=utf-8` are ignored), else by source.
    pub(crate) fn select(
        &self,
        source: &str,
        format: &str,
    ) -> Result<Arc<dyn Ingestor>, SubmitError> {
        let format = format.split(';').next().unwrap_or("").trim();
        if !format.is_empty() {
            return self
                .by_format
                .get(&format.to_ascii_lowercase())
                .cloned()
                .ok_or_else(|| SubmitError::UnknownFormat {
                    format: format.to_owned(),
                    known: listing(self.by_format.keys()),
                });
        }
        self.by_source
            .get(source)
            .cloned()
            .ok_or_else(|| SubmitError::UnknownSource {
                source_name: source.to_owned(),
                known: listing(self.by_source.keys()),
                formats: listing(self.by_format.keys()),
            })
    }
}

/// Names for an error message: comma-separated, or "none".
fn listing<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let list = names.map(String::as_str).collect::<Vec<_>>().join(", ");
    if list.is_empty() {
        "none".to_owned()
    } else {
        list
    }
}

/// One emitter's queue, as the accept path sees it.
#[derive(Debug)]
struct Outlet {
    name: String,
    queue: Arc<EmitQueue<Delivery>>,
    stats: Arc<EmitterStats>,
    emitter: Arc<dyn Emitter>,
    /// Registered by a plugin (may be replaced or removed at run time).
    plugin: bool,
}

impl Drop for Outlet {
    /// An outlet that goes (removed, replaced, or the pipeline closed) closes
    /// its queue: the emitter's task delivers what is queued, then ends.
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// A batch on its way to one emitter. The permits are shared by every
/// emitter's delivery of the same batch and return when the last one is done.
#[derive(Debug)]
struct Delivery {
    events: Arc<Vec<Event>>,
    _permits: Arc<Room>,
    /// When the request that brought the events arrived.
    arrived: tokio::time::Instant,
}

impl QueueItem for Delivery {
    fn events(&self) -> usize {
        self.events.len()
    }
}

/// Longest name in an event's `route_to`: no emitter's name is longer.
const MAX_ROUTE_NAME_BYTES: usize = 256;

/// Per-request and per-event limits (`POLKU_MAX_*`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_events_per_request: usize,
    pub(crate) max_id_bytes: usize,
    pub(crate) max_source_bytes: usize,
    pub(crate) max_event_type_bytes: usize,
    pub(crate) max_routes: usize,
    pub(crate) max_metadata_entries: usize,
    pub(crate) max_metadata_bytes: usize,
    /// `POLKU_BUFFER_MAX_BYTES`: the buffer's budget in bytes.
    pub(crate) buffer_max_bytes: usize,
}

/// Room in the buffer: permits for events and for bytes, held together and
/// given back together when dropped.
#[derive(Debug)]
pub(crate) struct Room {
    events: OwnedSemaphorePermit,
    bytes: OwnedSemaphorePermit,
}

impl Room {
    /// Gives back what is held beyond `events` events and `bytes` bytes.
    fn shrink_to(&mut self, events: usize, bytes: usize) {
        let held = self.events.num_permits();
        if held > events {
            drop(self.events.split(held - events));
        }
        let held = self.bytes.num_permits();
        if held > bytes {
            drop(self.bytes.split(held - bytes));
        }
    }

    fn merge(&mut self, other: Room) {
        self.events.merge(other.events);
        self.bytes.merge(other.bytes);
    }
}

/// Copies the batch's payloads into one buffer of their own. Decoded
/// payloads are slices of their request's buffer, and a slice keeps all of
/// it alive: whitespace, unknown fields, refused siblings. Copied, the batch
/// holds exactly the bytes the budget counts, for one allocation and one
/// copy per batch, not per event.
fn compact_payloads(events: &mut [Event]) {
    let total: usize = events.iter().map(|e| e.payload.len()).sum();
    if total == 0 {
        return;
    }
    let mut buf = bytes::BytesMut::with_capacity(total);
    for e in events.iter() {
        buf.extend_from_slice(&e.payload);
    }
    let buf = buf.freeze();
    let mut at = 0;
    for e in events {
        let n = e.payload.len();
        if n > 0 {
            e.payload = buf.slice(at..at + n);
            at += n;
        }
    }
}

/// What a batch counts against the byte budget: each event's strings,
/// metadata and payload, plus the event itself.
pub(crate) fn batch_bytes(events: &[Event]) -> usize {
    events
        .iter()
        .map(|e| e.approx_size() + std::mem::size_of::<Event>())
        .sum()
}

impl Limits {
    pub(crate) fn from_config(c: &crate::Config) -> Self {
        Limits {
            max_events_per_request: c.max_events_per_request,
            max_id_bytes: c.max_id_bytes,
            max_source_bytes: c.max_source_bytes,
            max_event_type_bytes: c.max_event_type_bytes,
            max_routes: c.max_routes,
            max_metadata_entries: c.max_metadata_entries,
            max_metadata_bytes: c.max_metadata_bytes,
            buffer_max_bytes: c.buffer_max_bytes,
        }
    }

    /// What is wrong with `e`, if it is over a limit. `source` is the
    /// request's, which an event without its own takes.
    fn violation(&self, e: &Event, source: &str) -> Option<String> {
        if e.id.len() > self.max_id_bytes {
            return Some(format!(
                "id is {} bytes long, over the limit of {} (POLKU_MAX_ID_BYTES)",
                e.id.len(),
                self.max_id_bytes
            ));
        }
        let src = if e.source.is_empty() {
            source
        } else {
            &e.source
        };
        if src.len() > self.max_source_bytes {
            return Some(format!(
                "source is {} bytes long, over the limit of {} (POLKU_MAX_SOURCE_BYTES)",
                src.len(),
                self.max_source_bytes
            ));
        }
        if e.event_type.len() > self.max_event_type_bytes {
            return Some(format!(
                "event_type is {} bytes long, over the limit of {} (POLKU_MAX_EVENT_TYPE_BYTES)",
                e.event_type.len(),
                self.max_event_type_bytes
            ));
        }
        if e.route_to.len() > self.max_routes {
            return Some(format!(
                "route_to has {} entries, over the limit of {} (POLKU_MAX_ROUTES)",
                e.route_to.len(),
                self.max_routes
            ));
        }
        if let Some(r) = e.route_to.iter().find(|r| r.len() > MAX_ROUTE_NAME_BYTES) {
            return Some(format!(
                "a route_to name is {} bytes long, over the limit of {MAX_ROUTE_NAME_BYTES}",
                r.len()
            ));
        }
        if e.metadata.len() > self.max_metadata_entries {
            return Some(format!(
                "metadata has {} entries, over the limit of {} (POLKU_MAX_METADATA_ENTRIES)",
                e.metadata.len(),
                self.max_metadata_entries
            ));
        }
        if !e.metadata.is_empty() {
            let bytes: usize = e.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
            if bytes > self.max_metadata_bytes {
                return Some(format!(
                    "metadata is {bytes} bytes, over the limit of {} (POLKU_MAX_METADATA_BYTES)",
                    self.max_metadata_bytes
                ));
            }
        }
        None
    }
}

/// The running pipeline, shared by every request handler.
#[derive(Debug)]
pub(crate) struct Pipeline {
    limits: Limits,
    ingestors: RwLock<IngestorTable>,
    middleware: BatchService,
    capacity: usize,
    permits: Arc<Semaphore>,
    /// The byte budget: one permit per byte of accepted events.
    byte_permits: Arc<Semaphore>,
    /// `None` once the pipeline is closed: nothing more gets in.
    outlets: RwLock<Option<Vec<Outlet>>>,
    /// Every emitter's counters, by name, including emitters since removed
    /// (counters never go back).
    emitter_stats: std::sync::Mutex<Vec<(String, Arc<EmitterStats>)>>,
    /// The emitter tasks, awaited at shutdown.
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    middleware_drops: std::sync::OnceLock<Vec<polku_middleware::drops::Registered>>,
    /// Emitters of removed plugins, kept (newest last, at most
    /// [`MAX_RETIRED`]) so that their failure stores stay listable under
    /// their names until the plugin registers again.
    retired: std::sync::Mutex<Vec<Arc<dyn Emitter>>>,
    /// Middleware that remember only what was accepted (a deduplicator).
    commits: std::sync::OnceLock<Vec<Arc<dyn polku_middleware::Commit>>>,
    /// True once shutdown starts: no more requests get in.
    stopping: watch::Sender<bool>,
    /// Requests between their start and their hand-over to the buffer.
    inflight: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
    /// Whether some emitter could deliver at the last check (see the
    /// gateway's health watch); /readyz answers from it.
    pub(crate) emitters_healthy: std::sync::atomic::AtomicBool,
    pub(crate) stats: Stats,
    /// gRPC call counts and durations.
    pub(crate) grpc_metrics: crate::metrics::GrpcMetrics,
}

/// What became of the events of one request.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) accepted: usize,
    pub(crate) dropped: usize,
    pub(crate) rejected: Vec<RejectedEvent>,
}

/// The most refusals a reply lists; it counts them all. A request of ten
/// thousand bad records gets a short answer, not a megabyte of errors.
pub(crate) const MAX_LISTED_REJECTIONS: usize = 100;

impl Outcome {
    /// Every refusal, and the first [`MAX_LISTED_REJECTIONS`] of them.
    pub(crate) fn listed_rejections(&mut self) -> (usize, Vec<RejectedEvent>) {
        let total = self.rejected.len();
        let mut listed = std::mem::take(&mut self.rejected);
        listed.truncate(MAX_LISTED_REJECTIONS);
        (total, listed)
    }
}

impl From<Outcome> for SendEventResponse {
    fn from(mut o: Outcome) -> Self {
        let (total, rejected) = o.listed_rejections();
        SendEventResponse {
            accepted: u32::try_from(o.accepted).unwrap_or(u32::MAX),
            dropped: u32::try_from(o.dropped).unwrap_or(u32::MAX),
            rejected,
            error: None,
            rejected_total: u32::try_from(total).unwrap_or(u32::MAX),
        }
    }
}

impl Pipeline {
    /// Builds the pipeline and starts one task per emitter.
    pub(crate) fn start(
        ingestors: IngestorTable,
        middleware: BatchService,
        capacity: usize,
        emitters: Vec<(Arc<dyn Emitter>, EmitterOptions)>,
        limits: Limits,
    ) -> Arc<Pipeline> {
        let pipeline = Arc::new(Pipeline {
            limits,
            ingestors: RwLock::new(ingestors),
            middleware,
            capacity,
            permits: Arc::new(Semaphore::new(capacity)),
            byte_permits: Arc::new(Semaphore::new(limits.buffer_max_bytes)),
            outlets: RwLock::new(Some(Vec::with_capacity(emitters.len()))),
            emitter_stats: Default::default(),
            tasks: Default::default(),
            middleware_drops: std::sync::OnceLock::new(),
            commits: std::sync::OnceLock::new(),
            retired: std::sync::Mutex::new(Vec::new()),
            stopping: watch::channel(false).0,
            inflight: Default::default(),
            idle: tokio::sync::Notify::new(),
            emitters_healthy: std::sync::atomic::AtomicBool::new(true),
            stats: Stats::default(),
            grpc_metrics: Default::default(),
        });
        for (emitter, options) in emitters {
            // Names were checked unique by the caller; nothing else can fail.
            let _ = pipeline.add_emitter(emitter, false, options);
        }
        pipeline
    }

    /// Starts an emitter's task and queue. A plugin emitter replaces an
    /// earlier plugin emitter of the same name (whose task delivers what it
    /// has queued, then ends); a configured emitter's name cannot be taken.
    pub(crate) fn add_emitter(
        &self,
        emitter: Arc<dyn Emitter>,
        plugin: bool,
        options: EmitterOptions,
    ) -> Result<(), String> {
        let name = emitter.name().to_owned();
        let mut guard = self.outlets.write().unwrap_or_else(PoisonError::into_inner);
        let Some(outlets) = guard.as_mut() else {
            return Err("the gateway is shutting down".to_owned());
        };
        if let Some(i) = outlets.iter().position(|o| o.name == name) {
            if !outlets[i].plugin || !plugin {
                return Err(format!("an emitter named {name:?} is already configured"));
            }
            outlets.remove(i);
        }
        if plugin {
            self.retired
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|e| e.name() != name);
        }
        let stats = {
            let mut all = self
                .emitter_stats
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match all.iter().find(|(n, _)| *n == name) {
                Some((_, s)) => s.clone(),
                None => {
                    // Counters of removed plugin emitters are kept (counters
                    // never go back) but not forever: past a bound, the
                    // oldest of those whose emitter is gone are forgotten.
                    if all.len() >= MAX_EMITTER_STATS {
                        let live: Vec<&str> = outlets.iter().map(|o| o.name.as_str()).collect();
                        if let Some(i) = all.iter().position(|(n, _)| !live.contains(&n.as_str())) {
                            all.remove(i);
                        }
                    }
                    let s = Arc::new(EmitterStats::default());
                    all.push((name.clone(), s.clone()));
                    s
                }
            }
        };
        let queue = Arc::new(EmitQueue::new(options.queue_full));
        let task = tokio::spawn(run_emitter(
            emitter.clone(),
            queue.clone(),
            stats.clone(),
            options.linger,
        ));
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        // Plugins come and go: forget the tasks of emitters that are done.
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
        drop(tasks);
        outlets.push(Outlet {
            name,
            queue,
            stats,
            emitter,
            plugin,
        });
        Ok(())
    }

    /// Whether a plugin's emitter of this name takes events now.
    pub(crate) fn has_plugin_emitter(&self, name: &str) -> bool {
        self.outlets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o.plugin && o.name == name))
    }

    /// Takes a removed plugin's emitter out of routing, closing its queue
    /// (its task works through what is queued, then ends), and keeps the
    /// emitter under its name for its failure store. Returns how many events
    /// were queued for it, if it was there.
    pub(crate) fn retire_plugin_emitter(&self, name: &str) -> Option<u64> {
        let outlet = {
            let mut guard = self.outlets.write().unwrap_or_else(PoisonError::into_inner);
            let outlets = guard.as_mut()?;
            let i = outlets.iter().position(|o| o.plugin && o.name == name)?;
            outlets.remove(i)
        };
        let queued = outlet.stats.queued.load(Relaxed);
        let emitter = outlet.emitter.clone();
        drop(outlet);
        let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        retired.retain(|e| e.name() != name);
        retired.push(emitter);
        if retired.len() > MAX_RETIRED {
            let gone = retired.remove(0);
            let held = gone
                .delivery_state()
                .and_then(|d| d.failure_store())
                .map_or(0, |s| s.len());
            if held > 0 {
                error!(emitter = %gone.name(), events = held, "too many removed plugins: the oldest one's failure store is forgotten");
            }
        }
        Some(queued)
    }

    /// Emitters of removed plugins, kept for their failure stores.
    pub(crate) fn retired_emitters(&self) -> Vec<Arc<dyn Emitter>> {
        self.retired
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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

    /// The emitter tasks started so far; shutdown awaits them.
    pub(crate) fn take_tasks(&self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Handles a raw body posted for a source (HTTP `POST /v1/ingest/{source}`):
    /// the source's ingestor, else the content type's.
    pub(crate) async fn submit_raw_for_source(
        &self,
        source: &str,
        content_type: &str,
        data: bytes::Bytes,
        wait: Wait,
    ) -> Result<Outcome, SubmitError> {
        let ingestor = self
            .ingestors
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .select_source_first(source, content_type)?;
        self.ingest_and_accept(ingestor, source, data, wait).await
    }

    /// Accepts events parsed elsewhere (HTTP `POST /v1/events`), with the
    /// records that failed to parse reported alongside.
    pub(crate) async fn accept_parsed(
        &self,
        source: &str,
        ingested: polku_core::Ingested,
        wait: Wait,
    ) -> Result<Outcome, SubmitError> {
        self.accept_ingested(source, ingested, wait).await
    }

    async fn ingest_and_accept(
        &self,
        ingestor: Arc<dyn Ingestor>,
        source: &str,
        data: bytes::Bytes,
        wait: Wait,
    ) -> Result<Outcome, SubmitError> {
        let ingested = ingestor
            .ingest_at_most(source, data, self.limits.max_events_per_request)
            .await
            .map_err(|e| match e {
                polku_core::IngestError::Malformed { .. } => {
                    SubmitError::MalformedInput(e.to_string())
                }
                other => SubmitError::IngestorUnavailable(other.to_string()),
            })?;
        self.accept_ingested(source, ingested, wait).await
    }

    async fn accept_ingested(
        &self,
        source: &str,
        ingested: polku_core::Ingested,
        wait: Wait,
    ) -> Result<Outcome, SubmitError> {
        let failed = ingested.errors.len();
        let records = ingested.events.len() + failed;
        if records > self.limits.max_events_per_request {
            // Bad records count against the limit too: a request of a
            // million non-events is refused whole, not answered with a
            // million errors.
            self.stats.received(records);
            self.stats
                .rejected_events(RejectReason::TooManyEvents, records);
            return Err(SubmitError::TooManyEvents {
                events: records,
                limit: self.limits.max_events_per_request,
            });
        }
        self.stats.received(failed);
        self.stats
            .rejected_events(RejectReason::IngestFailed, failed);
        let mut outcome = self.accept(source, ingested.events, wait).await?;
        let mut rejected: Vec<RejectedEvent> = ingested
            .errors
            .into_iter()
            .map(|e| RejectedEvent {
                id: String::new(),
                index: Some(u32::try_from(e.index).unwrap_or(u32::MAX)),
                code: RejectCode::IngestFailed as i32,
                message: e.message,
            })
            .collect();
        rejected.append(&mut outcome.rejected);
        outcome.rejected = rejected;
        Ok(outcome)
    }

    /// `POLKU_MAX_EVENTS_PER_REQUEST`: decoders keep at most one event past it.
    pub(crate) fn max_events_per_request(&self) -> usize {
        self.limits.max_events_per_request
    }

    /// The running emitters, in the order they were added.
    pub(crate) fn emitters(&self) -> Vec<Arc<dyn Emitter>> {
        self.outlets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|o| o.iter().map(|o| o.emitter.clone()).collect())
            .unwrap_or_default()
    }

    /// The running emitter with this name.
    pub(crate) fn emitter(&self, name: &str) -> Result<Arc<dyn Emitter>, ResendError> {
        let all = self.emitters();
        all.iter()
            .find(|e| e.name() == name)
            .cloned()
            .or_else(|| {
                self.retired_emitters()
                    .into_iter()
                    .find(|e| e.name() == name)
            })
            .ok_or_else(|| ResendError::UnknownEmitter {
                name: name.to_owned(),
                running: all.iter().map(|e| e.name()).collect::<Vec<_>>().join(", "),
            })
    }

    /// Takes up to `limit` of the oldest events out of an emitter's failure
    /// store and queues them to that emitter again; returns how many. Room
    /// in the buffer is reserved first (waiting as `wait` says), so a full
    /// buffer leaves the store as it was.
    pub(crate) async fn resend_failures(
        &self,
        name: &str,
        limit: usize,
        wait: Wait,
    ) -> Result<usize, ResendError> {
        let _inflight = InFlight::enter(self);
        let emitter = self.emitter(name)?;
        let store = emitter
            .delivery_state()
            .and_then(|d| d.failure_store())
            .ok_or_else(|| ResendError::NoFailureStore {
                name: name.to_owned(),
            })?;
        let n = store.len().min(limit).min(self.capacity);
        if n == 0 {
            return Ok(0);
        }
        let bytes = batch_bytes(
            &store
                .list(0, n)
                .into_iter()
                .map(|f| f.event)
                .collect::<Vec<_>>(),
        );
        let mut permits = self.reserve(n, bytes, &wait).await?;
        let taken = store.take(n);
        if taken.is_empty() {
            return Ok(0);
        }
        let taken_bytes: usize = taken
            .iter()
            .map(|f| f.event.approx_size() + std::mem::size_of::<Event>())
            .sum();
        if taken_bytes > bytes {
            // The store changed between the look and the take: put back.
            store.put_back(taken);
            return Err(SubmitError::BufferFull {
                waited: Duration::ZERO,
                capacity: self.capacity,
                max_bytes: self.limits.buffer_max_bytes,
            }
            .into());
        }
        permits.shrink_to(taken.len(), taken_bytes);
        let guard = self.outlets.read().unwrap_or_else(PoisonError::into_inner);
        let outlet = guard
            .as_ref()
            .and_then(|o| o.iter().find(|o| o.name == name));
        let Some(outlet) = outlet else {
            drop(guard);
            store.put_back(taken);
            if self.retired_emitters().iter().any(|e| e.name() == name) {
                return Err(ResendError::NotRegistered {
                    name: name.to_owned(),
                });
            }
            return Err(SubmitError::ShuttingDown.into());
        };
        let events: Vec<Event> = taken.into_iter().map(|f| f.event).collect();
        let k = events.len();
        outlet.stats.queued.fetch_add(k as u64, Relaxed);
        let delivery = Delivery {
            events: Arc::new(events),
            _permits: Arc::new(permits),
            arrived: tokio::time::Instant::now(),
        };
        if let Err(back) = outlet.queue.push(delivery, &outlet.stats) {
            outlet.stats.queued.fetch_sub(k as u64, Relaxed);
            let events = Arc::try_unwrap(back.events).unwrap_or_else(|a| (*a).clone());
            store.put_back(
                events
                    .into_iter()
                    .map(|e| {
                        polku_core::delivery::StoredFailure::new(
                            e,
                            "not resent: the gateway is shutting down",
                            true,
                        )
                    })
                    .collect(),
            );
            return Err(SubmitError::ShuttingDown.into());
        }
        outlet.stats.resent.fetch_add(k as u64, Relaxed);
        debug!(emitter = %name, events = k, "failed events queued again");
        Ok(k)
    }

    /// Whether any emitter says it can deliver.
    pub(crate) async fn any_emitter_healthy(&self) -> bool {
        let emitters: Vec<Arc<dyn Emitter>> = self
            .outlets
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|o| o.iter().map(|o| o.emitter.clone()).collect())
            .unwrap_or_default();
        for e in &emitters {
            if e.healthy().await {
                return true;
            }
        }
        false
    }

    /// Handles one request: ingests raw bytes if need be, then accepts.
    pub(crate) async fn submit(
        &self,
        req: SendEventRequest,
        wait: Wait,
    ) -> Result<Outcome, SubmitError> {
        use polku_proto::v1::send_event_request::Payload;
        let SendEventRequest { source, payload } = req;
        match payload {
            None => Err(SubmitError::EmptyRequest),
            Some(Payload::Events(batch)) => self.accept(&source, batch.events, wait).await,
            Some(Payload::Raw(raw)) => {
                let ingestor = self
                    .ingestors
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .select(&source, &raw.format)?;
                self.ingest_and_accept(ingestor, &source, raw.data, wait)
                    .await
            }
        }
    }

    /// Puts a batch through middleware into the buffer. `Ok` means every event
    /// counted as accepted is in the buffer and will reach its emitters.
    pub(crate) async fn accept(
        &self,
        source: &str,
        events: Vec<Event>,
        wait: Wait,
    ) -> Result<Outcome, SubmitError> {
        let n = events.len();
        if n > self.limits.max_events_per_request {
            self.stats.received(n);
            self.stats.rejected_events(RejectReason::TooManyEvents, n);
            return Err(SubmitError::TooManyEvents {
                events: n,
                limit: self.limits.max_events_per_request,
            });
        }
        if !events
            .iter()
            .any(|e| self.limits.violation(e, source).is_some())
        {
            return self.accept_valid(source, events, wait).await;
        }
        // Refuse the events over a limit, one by one; the rest go on.
        let mut valid = Vec::with_capacity(n);
        let mut invalid = Vec::new();
        for (index, e) in events.into_iter().enumerate() {
            match self.limits.violation(&e, source) {
                None => valid.push(e),
                Some(message) => invalid.push(RejectedEvent {
                    id: if e.id.len() <= self.limits.max_id_bytes {
                        e.id.to_string()
                    } else {
                        String::new()
                    },
                    index: Some(u32::try_from(index).unwrap_or(u32::MAX)),
                    code: RejectCode::Invalid as i32,
                    message,
                }),
            }
        }
        self.stats.received(invalid.len());
        self.stats
            .rejected_events(RejectReason::InvalidEvent, invalid.len());
        let mut outcome = self.accept_valid(source, valid, wait).await?;
        invalid.append(&mut outcome.rejected);
        outcome.rejected = invalid;
        Ok(outcome)
    }

    async fn accept_valid(
        &self,
        source: &str,
        mut events: Vec<Event>,
        wait: Wait,
    ) -> Result<Outcome, SubmitError> {
        let _inflight = InFlight::enter(self);
        let arrived = tokio::time::Instant::now();
        let n = events.len();
        self.stats.received(n);
        if n == 0 {
            return Ok(Outcome::default());
        }
        if n > self.capacity {
            self.stats.rejected_events(RejectReason::BatchTooLarge, n);
            return Err(SubmitError::BatchTooLarge {
                events: n,
                capacity: self.capacity,
            });
        }
        let bytes = batch_bytes(&events);
        if bytes > self.limits.buffer_max_bytes {
            self.stats.rejected_events(RejectReason::BatchTooLarge, n);
            return Err(SubmitError::BatchOverBudget {
                bytes,
                max_bytes: self.limits.buffer_max_bytes,
            });
        }
        let permits = match self.reserve(n, bytes, &wait).await {
            Ok(p) => p,
            Err(e) => {
                self.stats.rejected_events(e.reason(), n);
                return Err(e);
            }
        };

        let mut permits = permits;
        let now = now_unix_ns();
        polku_core::ensure_ids(&mut events);
        // One copy of the request's source, shared by its events.
        let source = polku_core::Str::from(source);
        for e in &mut events {
            if e.source.is_empty() {
                e.source = source.clone();
            }
            if e.timestamp_unix_ns == 0 {
                e.timestamp_unix_ns = now;
            }
        }

        // A panicking middleware fails this request, not the handler's task.
        let chain = self.middleware.clone().oneshot(events);
        let kept = match AssertUnwindSafe(chain).catch_unwind().await {
            Ok(Ok(kept)) => kept,
            Ok(Err(err)) => {
                self.stats
                    .rejected_events(RejectReason::MiddlewareFailed, n);
                return Err(SubmitError::MiddlewareFailed(err.to_string()));
            }
            Err(_panic) => {
                error!("a middleware panicked; the request is refused");
                self.stats
                    .rejected_events(RejectReason::MiddlewareFailed, n);
                return Err(SubmitError::MiddlewareFailed(
                    "a middleware panicked".into(),
                ));
            }
        };
        let dropped = n.saturating_sub(kept.len());
        let mut kept = kept;
        compact_payloads(&mut kept);
        let kept_bytes = batch_bytes(&kept);
        if kept.len() > n || kept_bytes > bytes {
            // A middleware made more events, or bigger ones, than it got (an
            // aggregator's summary, an enricher): they need room too. Never
            // wait for it while holding room, or two such requests could wait
            // on each other forever: there is room now, or the request is
            // refused.
            let extra_events = kept.len().saturating_sub(n);
            let extra_bytes = kept_bytes.saturating_sub(bytes);
            match self.try_reserve(extra_events, extra_bytes) {
                Ok(more) => permits.merge(more),
                Err(err) => {
                    self.stats.rejected_events(err.reason(), n);
                    return Err(err);
                }
            }
        }
        permits.shrink_to(kept.len(), kept_bytes);
        self.stats.dropped(dropped);
        let outcome = self.deliver(kept, permits, dropped, arrived)?;
        // Let the emitters just woken run before the caller goes on: it would
        // otherwise reply (and that wake-up pushes them back in the run
        // queue) and take the next request, and the events accepted here
        // would wait behind it and behind every other request ready to run.
        // At half load this keeps ingest-to-emit under 1 ms (BENCHMARKS.md).
        tokio::task::yield_now().await;
        Ok(outcome)
    }

    /// Puts events that the gateway made itself (an aggregator's summaries)
    /// into the buffer, past the middleware. Waits for room as `wait` says.
    pub(crate) async fn accept_generated(
        &self,
        events: Vec<Event>,
        wait: Wait,
    ) -> Result<usize, SubmitError> {
        let _inflight = InFlight::enter(self);
        let mut accepted = 0;
        let mut rest = events;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(self.capacity));
            let chunk = std::mem::replace(&mut rest, tail);
            let n = chunk.len();
            let bytes = batch_bytes(&chunk).min(self.limits.buffer_max_bytes);
            let permits = match self.reserve(n, bytes, &wait).await {
                Ok(p) => p,
                Err(e) => {
                    self.stats.rejected_events(e.reason(), n + rest.len());
                    error!(events = n + rest.len(), error = %e, "generated events (summaries) lost");
                    return Err(e);
                }
            };
            self.stats.generated(n);
            let outcome = self.deliver(chunk, permits, 0, tokio::time::Instant::now())?;
            accepted += outcome.accepted;
        }
        Ok(accepted)
    }

    /// Routes the batch to the emitters' queues. Never waits.
    fn deliver(
        &self,
        kept: Vec<Event>,
        mut permits: Room,
        dropped: usize,
        arrived: tokio::time::Instant,
    ) -> Result<Outcome, SubmitError> {
        let guard = self.outlets.read().unwrap_or_else(PoisonError::into_inner);
        let Some(outlets) = guard.as_ref() else {
            self.stats
                .rejected_events(RejectReason::ShuttingDown, kept.len());
            return Err(SubmitError::ShuttingDown);
        };

        let mut rejected = Vec::new();
        let no_route = |e: &Event| RejectedEvent {
            id: e.id.to_string(),
            index: None,
            code: RejectCode::NoRoute as i32,
            message: if outlets.is_empty() {
                "no emitter is running".to_owned()
            } else {
                format!(
                    "route_to {:?} names no running emitter (running: {})",
                    e.route_to,
                    outlets
                        .iter()
                        .map(|o| o.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            },
        };

        let all_broadcast = kept.iter().all(|e| e.route_to.is_empty());
        let valid: Vec<Event> = if all_broadcast && !outlets.is_empty() {
            kept
        } else {
            let mut valid = Vec::with_capacity(kept.len());
            for e in kept {
                let routable = if e.route_to.is_empty() {
                    !outlets.is_empty()
                } else {
                    e.route_to
                        .iter()
                        .any(|r| outlets.iter().any(|o| o.name == *r))
                };
                if routable {
                    valid.push(e);
                } else {
                    rejected.push(no_route(&e));
                }
            }
            valid
        };
        self.stats
            .rejected_events(RejectReason::NoRoute, rejected.len());

        // Give back the room of events that are not going in.
        if valid.is_empty() {
            drop(permits);
            return Ok(Outcome {
                accepted: 0,
                dropped,
                rejected,
            });
        }
        if !rejected.is_empty() {
            permits.shrink_to(valid.len(), batch_bytes(&valid));
        }
        // Accepted from here on: the middleware may remember them.
        for c in self.commits.get().into_iter().flatten() {
            c.commit(&valid);
        }
        let permits = Arc::new(permits);
        let accepted = valid.len();
        let batch = Arc::new(valid);
        let every_event_to_every_emitter = all_broadcast;
        for outlet in outlets {
            let events = if every_event_to_every_emitter {
                batch.clone()
            } else {
                let mine: Vec<Event> = batch
                    .iter()
                    .filter(|e| e.is_routed_to(&outlet.name))
                    .cloned()
                    .collect();
                if mine.is_empty() {
                    continue;
                }
                if mine.len() == batch.len() {
                    batch.clone()
                } else {
                    Arc::new(mine)
                }
            };
            let len = events.len() as u64;
            outlet.stats.queued.fetch_add(len, Relaxed);
            let delivery = Delivery {
                events,
                _permits: permits.clone(),
                arrived,
            };
            if outlet.queue.push(delivery, &outlet.stats).is_err() {
                // The emitter's task is gone, which only happens if the
                // runtime is shutting down under us. Say so; never hide it.
                outlet.stats.queued.fetch_sub(len, Relaxed);
                outlet.stats.failed.fetch_add(len, Relaxed);
                error!(emitter = %outlet.name, events = len, "emitter task is gone; events lost");
            }
        }
        self.stats.accepted(accepted);
        trace!(accepted, dropped, "batch accepted");
        Ok(Outcome {
            accepted,
            dropped,
            rejected,
        })
    }

    /// Room for `n` events and `bytes` bytes now, or an error.
    fn try_reserve(&self, n: usize, bytes: usize) -> Result<Room, SubmitError> {
        let full = || SubmitError::BufferFull {
            waited: Duration::ZERO,
            capacity: self.capacity,
            max_bytes: self.limits.buffer_max_bytes,
        };
        let n32 = u32::try_from(n).map_err(|_| full())?;
        let b32 = u32::try_from(bytes).map_err(|_| full())?;
        let map = |e| match e {
            tokio::sync::TryAcquireError::Closed => SubmitError::ShuttingDown,
            tokio::sync::TryAcquireError::NoPermits => full(),
        };
        let events = self
            .permits
            .clone()
            .try_acquire_many_owned(n32)
            .map_err(map)?;
        let bytes = self
            .byte_permits
            .clone()
            .try_acquire_many_owned(b32)
            .map_err(map)?;
        Ok(Room { events, bytes })
    }

    /// Room for `n` events and `bytes` bytes, waiting as `wait` says. Never
    /// holds one kind of room while it waits for the other (two requests
    /// could otherwise wait on each other): it waits for events, then takes
    /// the bytes if they are free, else lets the events go and waits for the
    /// bytes, and so on.
    async fn reserve(&self, n: usize, bytes: usize, wait: &Wait) -> Result<Room, SubmitError> {
        let too_large = || SubmitError::BatchTooLarge {
            events: n,
            capacity: self.capacity,
        };
        let n32 = u32::try_from(n).map_err(|_| too_large())?;
        let b32 = u32::try_from(bytes).map_err(|_| SubmitError::BatchOverBudget {
            bytes,
            max_bytes: self.limits.buffer_max_bytes,
        })?;
        let draining = matches!(wait, Wait::Drain(_));
        if *self.stopping.borrow() && !draining {
            return Err(SubmitError::ShuttingDown);
        }
        match self.try_reserve(n, bytes) {
            Ok(room) => return Ok(room),
            Err(SubmitError::ShuttingDown) => return Err(SubmitError::ShuttingDown),
            Err(_) => {}
        }
        let limit = match wait {
            Wait::For(d) | Wait::Drain(d) => Some(*d),
            Wait::UntilShutdown(_) => None,
        };
        let deadline = limit.map(|d| tokio::time::Instant::now() + d);
        loop {
            let events = self
                .wait_for(&self.permits, n32, wait, deadline, limit)
                .await?;
            match self.byte_permits.clone().try_acquire_many_owned(b32) {
                Ok(bytes) => return Ok(Room { events, bytes }),
                Err(tokio::sync::TryAcquireError::Closed) => return Err(SubmitError::ShuttingDown),
                Err(tokio::sync::TryAcquireError::NoPermits) => drop(events),
            }
            let bytes = self
                .wait_for(&self.byte_permits, b32, wait, deadline, limit)
                .await?;
            match self.permits.clone().try_acquire_many_owned(n32) {
                Ok(events) => return Ok(Room { events, bytes }),
                Err(tokio::sync::TryAcquireError::Closed) => return Err(SubmitError::ShuttingDown),
                Err(tokio::sync::TryAcquireError::NoPermits) => drop(bytes),
            }
        }
    }

    /// Waits for `n` permits of `sem` until `deadline` (or shutdown).
    async fn wait_for(
        &self,
        sem: &Arc<Semaphore>,
        n32: u32,
        wait: &Wait,
        deadline: Option<tokio::time::Instant>,
        limit: Option<Duration>,
    ) -> Result<OwnedSemaphorePermit, SubmitError> {
        let draining = matches!(wait, Wait::Drain(_));
        let mut stopping = self.stopping.subscribe();
        let acquire = sem.clone().acquire_many_owned(n32);
        // Shutdown wakes every request that waits for room (but not the
        // gateway's own drain of held-back events).
        let stop = async move {
            if draining {
                std::future::pending::<()>().await;
            }
            let _ = stopping.wait_for(|s| *s).await;
        };
        let external = async {
            match wait {
                Wait::UntilShutdown(rx) => {
                    let mut rx = rx.clone();
                    let _ = rx.wait_for(|s| *s).await;
                }
                _ => std::future::pending::<()>().await,
            }
        };
        let timer = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            p = acquire => p.map_err(|_| SubmitError::ShuttingDown),
            _ = stop => Err(SubmitError::ShuttingDown),
            _ = external => Err(SubmitError::ShuttingDown),
            _ = timer => Err(SubmitError::BufferFull {
                waited: limit.unwrap_or_default(),
                capacity: self.capacity,
                max_bytes: self.limits.buffer_max_bytes,
            }),
        }
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

    /// Turns true when shutdown starts.
    pub(crate) fn stopping(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Stops admitting events: requests waiting for room, and any later ones,
    /// fail at once with `ShuttingDown`. Requests that already hold room still
    /// complete, and the gateway's own drain ([`Wait::Drain`]) still gets in.
    pub(crate) fn stop_admitting(&self) {
        let _ = self.stopping.send(true);
    }

    /// Closes the emitters' queues: each emitter task exits once it has
    /// delivered what its queue holds. Call after the server has drained.
    pub(crate) fn close(&self) {
        self.permits.close();
        self.byte_permits.close();
        self.outlets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    /// Events accepted and not yet done by every emitter.
    pub(crate) fn depth(&self) -> usize {
        self.capacity
            .saturating_sub(self.permits.available_permits())
    }

    /// Bytes of accepted events not yet done by every emitter.
    pub(crate) fn depth_bytes(&self) -> usize {
        self.limits
            .buffer_max_bytes
            .saturating_sub(self.byte_permits.available_permits())
    }

    /// Each emitter's ingest-to-emit latency histogram, by name.
    pub(crate) fn emitter_stats(&self) -> Vec<(String, Arc<EmitterStats>)> {
        self.emitter_stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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
        s.buffer_capacity = self.capacity as u64;
        s.buffer_depth = self.depth() as u64;
        s.buffer_bytes = self.depth_bytes() as u64;
        s.buffer_max_bytes = self.limits.buffer_max_bytes as u64;
        let mut live = self.emitters();
        live.extend(self.retired_emitters());
        s.emitters = self
            .emitter_stats()
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

/// One emitter's task: deliver each batch in order, count the outcome, and
/// flush the emitter once its queue is closed and empty.
async fn run_emitter(
    emitter: Arc<dyn Emitter>,
    queue: Arc<EmitQueue<Delivery>>,
    stats: Arc<EmitterStats>,
    linger: Option<Linger>,
) {
    let name = emitter.name().to_owned();
    while let Some(first) = queue.pop().await {
        // The batches of this call: `first`, then any gathered while
        // lingering (no allocation when there are none).
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
        let events = if more.is_empty() {
            first.events.clone()
        } else {
            Arc::new(
                std::iter::once(&first)
                    .chain(&more)
                    .flat_map(|d| d.events.iter().cloned())
                    .collect::<Vec<Event>>(),
            )
        };
        let n = events.len();
        // A panicking emitter must not take its queue down with it.
        let result = AssertUnwindSafe(emitter.emit_shared(events))
            .catch_unwind()
            .await;
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
            // Each batch's events by their own arrival (failures are not
            // told apart by batch here; they are rare).
            let mut delivered = n - failed;
            for d in std::iter::once(&first).chain(&more) {
                let k = d.events.len().min(delivered);
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
    debug!(emitter = %name, "queue drained; flushing");
    if let Err(err) = emitter.shutdown().await {
        error!(emitter = %name, error = %err, "emitter failed to flush on shutdown");
    }
}
