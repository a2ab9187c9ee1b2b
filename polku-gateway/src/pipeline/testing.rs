//! A scriptable emitter for the pipeline's unit tests.

use async_trait::async_trait;
use polku_core::delivery::{DeliveryState, FailureStore, StoredFailure};
use polku_core::{EmitError, Emitter, Event};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// What the next `emit` call does.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Step {
    /// Fails the whole batch (into the failure store, if there is one).
    Fail,
    /// Panics.
    Panic,
    /// Never returns (a call stuck in retries, as far as the log knows).
    Stall,
}

/// Records what it is given; can be held, told to fail or panic, and may keep
/// a failure store.
#[derive(Debug)]
pub(crate) struct TestEmitter {
    name: String,
    batches: Mutex<Vec<Vec<String>>>,
    held: watch::Sender<bool>,
    script: Mutex<VecDeque<Step>>,
    shutdowns: AtomicUsize,
    /// Calls begun (held ones included).
    started: AtomicUsize,
    state: Option<DeliveryState>,
}

impl TestEmitter {
    pub(crate) fn new(name: &str) -> Arc<Self> {
        Arc::new(Self::build(name, None))
    }

    /// One whose failed events go to a failure store of `max` events.
    pub(crate) fn with_store(name: &str, max: usize) -> Arc<Self> {
        let store = FailureStore::new(max, 1 << 20).unwrap();
        Arc::new(Self::build(name, Some(DeliveryState::new(Some(store)))))
    }

    fn build(name: &str, state: Option<DeliveryState>) -> Self {
        TestEmitter {
            name: name.to_owned(),
            batches: Mutex::default(),
            held: watch::channel(false).0,
            script: Mutex::default(),
            shutdowns: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            state,
        }
    }

    /// Makes `emit` wait until [`TestEmitter::release`].
    pub(crate) fn hold(&self) {
        self.held.send_replace(true);
    }

    pub(crate) fn release(&self) {
        self.held.send_replace(false);
    }

    /// What the next calls do, in order; calls past the script deliver.
    pub(crate) fn script(&self, steps: impl IntoIterator<Item = Step>) {
        self.script.lock().unwrap().extend(steps);
    }

    /// The ids delivered, in order.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.batches().concat()
    }

    /// The ids of each delivered call.
    pub(crate) fn batches(&self) -> Vec<Vec<String>> {
        self.batches.lock().unwrap().clone()
    }

    /// Calls begun so far, held ones included.
    pub(crate) fn started(&self) -> usize {
        self.started.load(Relaxed)
    }

    pub(crate) fn shutdowns(&self) -> usize {
        self.shutdowns.load(Relaxed)
    }

    pub(crate) fn store(&self) -> &FailureStore {
        self.state.as_ref().and_then(|s| s.failure_store()).unwrap()
    }
}

#[async_trait]
impl Emitter for TestEmitter {
    fn name(&self) -> &str {
        &self.name
    }

    async fn emit(&self, events: &[Event]) -> Result<(), EmitError> {
        self.started.fetch_add(1, Relaxed);
        let mut held = self.held.subscribe();
        let _ = held.wait_for(|h| !*h).await;
        let step = self.script.lock().unwrap().pop_front();
        match step {
            None => {
                let ids = events.iter().map(|e| e.id.to_string()).collect();
                self.batches.lock().unwrap().push(ids);
                Ok(())
            }
            Some(Step::Fail) => {
                if let Some(store) = self.state.as_ref().and_then(|s| s.failure_store()) {
                    store.push(
                        events
                            .iter()
                            .map(|e| StoredFailure::new(e.clone(), "scripted failure", true)),
                    );
                    // As the failure-store layer does: on disk before done.
                    store.flush().await.unwrap();
                }
                Err(EmitError::unavailable("scripted failure", None))
            }
            Some(Step::Panic) => panic!("scripted panic"),
            Some(Step::Stall) => std::future::pending().await,
        }
    }

    fn delivery_state(&self) -> Option<&DeliveryState> {
        self.state.as_ref()
    }

    async fn shutdown(&self) -> Result<(), EmitError> {
        self.shutdowns.fetch_add(1, Relaxed);
        Ok(())
    }
}

/// Limits wide enough that only the test's own choice is in the way.
pub(crate) fn limits() -> super::Limits {
    super::Limits {
        max_events_per_request: 1000,
        max_id_bytes: 64,
        max_source_bytes: 64,
        max_event_type_bytes: 64,
        max_routes: 4,
        max_metadata_entries: 8,
        max_metadata_bytes: 256,
        buffer_max_bytes: 1 << 20,
    }
}

/// A pipeline of these configured emitters, with no ingestor but JSON.
pub(crate) fn pipeline(
    emitters: Vec<Arc<TestEmitter>>,
    capacity: usize,
    middleware: polku_middleware::BatchService,
    limits: super::Limits,
) -> Arc<super::Pipeline> {
    pipeline_of(emitters, capacity, Some(middleware), limits)
}

/// [`pipeline`] with no middleware chain at all (a Hub with none added).
pub(crate) fn pipeline_of(
    emitters: Vec<Arc<TestEmitter>>,
    capacity: usize,
    middleware: Option<polku_middleware::BatchService>,
    limits: super::Limits,
) -> Arc<super::Pipeline> {
    let json: Arc<dyn polku_core::Ingestor> = Arc::new(polku_ingest::JsonIngestor::new());
    super::Pipeline::start(
        super::IngestorTable::new(&[json]).unwrap(),
        middleware,
        capacity,
        emitters
            .into_iter()
            .map(|e| (e as Arc<dyn Emitter>, Default::default()))
            .collect(),
        limits,
        None,
    )
}

/// A pipeline of these configured emitters over the durable buffer in
/// `dir` (its replay, if any, started).
pub(crate) fn durable_pipeline(
    emitters: Vec<Arc<TestEmitter>>,
    capacity: usize,
    dir: &std::path::Path,
    max_disk_bytes: u64,
) -> Arc<super::Pipeline> {
    durable_pipeline_with_grace(
        emitters,
        capacity,
        dir,
        max_disk_bytes,
        super::journal::ORPHAN_GRACE,
    )
}

/// [`durable_pipeline`], where a saved cursor waits `orphan_grace` for its
/// emitter after a restart.
pub(crate) fn durable_pipeline_with_grace(
    emitters: Vec<Arc<TestEmitter>>,
    capacity: usize,
    dir: &std::path::Path,
    max_disk_bytes: u64,
    orphan_grace: std::time::Duration,
) -> Arc<super::Pipeline> {
    let journal = super::journal::Journal::open(super::journal::JournalSettings {
        dir: dir.to_owned(),
        max_disk_bytes,
        cursor_interval: std::time::Duration::from_millis(10),
        sync_interval: None,
        orphan_grace,
        failure_store: (10_000, 16 << 20),
    })
    .unwrap();
    journal.spawn_saver();
    let json: Arc<dyn polku_core::Ingestor> = Arc::new(polku_ingest::JsonIngestor::new());
    super::Pipeline::start(
        super::IngestorTable::new(&[json]).unwrap(),
        None,
        capacity,
        emitters
            .into_iter()
            .map(|e| (e as Arc<dyn Emitter>, Default::default()))
            .collect(),
        limits(),
        Some(journal),
    )
}

/// Shuts the pipeline down the way the gateway does and waits for every
/// emitter task to end.
pub(crate) async fn finish(p: &super::Pipeline) {
    p.stop_admitting();
    p.close();
    for t in p.take_tasks() {
        t.await.unwrap();
    }
}

/// Events with these ids.
pub(crate) fn events(ids: &[&str]) -> Vec<Event> {
    ids.iter().map(|i| Event::new("t").with_id(*i)).collect()
}
