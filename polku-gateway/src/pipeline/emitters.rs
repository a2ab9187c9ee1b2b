//! The emitter table: each running emitter's queue, task and counters, and
//! the emitters of removed plugins, kept for their failure stores.
//!
//! Configured emitters are added at start; plugin emitters are added,
//! replaced and removed while the gateway runs. An emitter that goes (removed,
//! replaced, or the table closed) has its queue closed: its task delivers what
//! is queued, then ends.

use super::buffer::Room;
use super::journal::{Journal, Owed, Ticket};
use super::queue::{EmitQueue, EmitterOptions, Linger, QueueItem};
use super::task::run_emitter;
use crate::error::ResendError;
use crate::stats::EmitterStats;
use polku_core::{Emitter, Event};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};
use tokio::task::JoinHandle;
use tracing::{Instrument as _, error};

/// The most emitters whose counters are kept (live ones always are).
const MAX_EMITTER_STATS: usize = 1024;

/// Removed plugins whose emitters (and failure stores) are kept.
pub(crate) const MAX_RETIRED: usize = 64;

/// A batch on its way to one emitter. The room is shared by every emitter's
/// delivery of the same batch and is given back when the last one is done.
#[derive(Debug)]
pub(crate) struct Delivery {
    pub(crate) events: Arc<Vec<Event>>,
    /// Held, not read: given back when the last delivery of the batch is dropped.
    pub(crate) _room: Arc<Room>,
    /// When the request that brought the events arrived.
    pub(crate) arrived: tokio::time::Instant,
    /// In the durable buffer: the batch's log record, owed by this emitter
    /// until the delivery is done (dropped).
    pub(crate) _ticket: Option<Ticket>,
    /// A resend's events, which their failure store's durable copy keeps
    /// until the delivery is done (dropped).
    pub(crate) _taken: Option<polku_core::delivery::Receipt>,
}

impl QueueItem for Delivery {
    fn events(&self) -> usize {
        self.events.len()
    }
}

/// Where deliveries for one emitter go: its queue, its counters, and (in
/// the durable buffer) what it owes. Shared, so that a batch can be queued
/// after the routing table's lock is let go (once its record is durable).
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) name: String,
    queue: Arc<EmitQueue<Delivery>>,
    pub(crate) stats: Arc<EmitterStats>,
    /// In the durable buffer: the records this emitter owes.
    pub(crate) owed: Option<Arc<Owed>>,
}

impl Target {
    /// Queues a delivery for this emitter, counting its events as queued;
    /// gives it back if the emitter's task is gone.
    pub(crate) fn send(&self, delivery: Delivery) -> Result<(), Delivery> {
        let n = delivery.events.len() as u64;
        self.stats.queued.fetch_add(n, Relaxed);
        self.queue.push(delivery, &self.stats).inspect_err(|_| {
            self.stats.queued.fetch_sub(n, Relaxed);
        })
    }

    /// Queues `events` (one batch's share) for this emitter; in the durable
    /// buffer, as owing record `number`. An emitter whose task is gone (only
    /// while the runtime shuts down under us) counts them failed, loudly.
    pub(crate) fn send_events(
        &self,
        events: Arc<Vec<Event>>,
        room: Arc<Room>,
        arrived: tokio::time::Instant,
        number: Option<u64>,
    ) {
        let len = events.len() as u64;
        let ticket = match (&self.owed, number) {
            (Some(owed), Some(n)) => Some(Ticket::new(owed.clone(), n)),
            _ => None,
        };
        let delivery = Delivery {
            events,
            _room: room,
            arrived,
            _ticket: ticket,
            _taken: None,
        };
        if self.send(delivery).is_err() {
            self.stats.failed.fetch_add(len, Relaxed);
            error!(emitter = %self.name, events = len, "emitter task is gone; events lost");
        }
    }
}

/// One running emitter, as the routing table holds it.
#[derive(Debug)]
pub(crate) struct Outlet {
    pub(crate) target: Arc<Target>,
    pub(crate) emitter: Arc<dyn Emitter>,
    /// Registered by a plugin (may be replaced or removed at run time).
    plugin: bool,
}

impl Outlet {
    /// The emitter's name.
    pub(crate) fn name(&self) -> &str {
        &self.target.name
    }

    /// Queues a delivery for this emitter (see [`Target::send`]).
    pub(crate) fn send(&self, delivery: Delivery) -> Result<(), Delivery> {
        self.target.send(delivery)
    }
}

impl Drop for Outlet {
    fn drop(&mut self) {
        self.target.queue.close();
    }
}

/// The running emitters, in the order they were added.
#[derive(Debug)]
pub(crate) struct EmitterTable {
    /// `None` once closed: nothing more gets in.
    outlets: RwLock<Option<Vec<Outlet>>>,
    /// Every emitter's counters, by name, including emitters since removed
    /// (counters never go back).
    stats: Mutex<Vec<(String, Arc<EmitterStats>)>>,
    /// The emitter tasks, awaited at shutdown.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Emitters of removed plugins, kept (newest last, at most
    /// [`MAX_RETIRED`]) so that their failure stores stay listable under
    /// their names until the plugin registers again.
    retired: Mutex<Vec<Arc<dyn Emitter>>>,
    /// The durable buffer, if there is one: each emitter's place in its log.
    journal: Option<Arc<Journal>>,
    /// The gateway's taps, which each emitter's task offers its outcomes.
    taps: Arc<crate::tap::Taps>,
}

/// An emitter just started that owes records from before a restart: the
/// caller replays them to it from `from`.
#[derive(Debug)]
pub(crate) struct Replay {
    pub(crate) target: Arc<Target>,
    pub(crate) from: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl EmitterTable {
    /// An empty table; with a journal, emitters take their place in the
    /// durable buffer's log.
    pub(crate) fn new(journal: Option<Arc<Journal>>, taps: Arc<crate::tap::Taps>) -> Self {
        EmitterTable {
            outlets: RwLock::new(Some(Vec::new())),
            stats: Mutex::default(),
            tasks: Mutex::default(),
            retired: Mutex::default(),
            journal,
            taps,
        }
    }

    /// Lets a removed emitter's records go once its queue is worked through.
    fn forget(&self, outlet: &Outlet) {
        if let (Some(j), Some(owed)) = (&self.journal, &outlet.target.owed) {
            j.retire(owed);
        }
    }

    /// The running emitters' outlets, `None` once closed; held while a batch
    /// is routed, so no emitter comes or goes meanwhile.
    pub(crate) fn outlets(&self) -> RwLockReadGuard<'_, Option<Vec<Outlet>>> {
        self.outlets.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts an emitter's task and queue. A plugin emitter replaces an
    /// earlier plugin emitter of the same name (whose task delivers what it
    /// has queued, then ends); a configured emitter's name cannot be taken.
    /// In the durable buffer, an emitter that owes records from before a
    /// restart comes back with a [`Replay`] for the caller to run.
    pub(crate) fn add(
        &self,
        emitter: Arc<dyn Emitter>,
        plugin: bool,
        options: EmitterOptions,
    ) -> Result<Option<Replay>, String> {
        let name = emitter.name().to_owned();
        let mut guard = self.outlets.write().unwrap_or_else(PoisonError::into_inner);
        let Some(outlets) = guard.as_mut() else {
            return Err("the gateway is shutting down".to_owned());
        };
        let existing = outlets.iter().position(|o| o.name() == name);
        if let Some(i) = existing
            && (!outlets[i].plugin || !plugin)
        {
            return Err(format!("an emitter named {name:?} is already configured"));
        }
        // In the durable buffer, its failure store keeps a copy on disk.
        if let (Some(j), Some(store)) = (
            &self.journal,
            emitter.delivery_state().and_then(|d| d.failure_store()),
        ) {
            j.attach_failures(&name, store)?;
        }
        if let Some(i) = existing {
            let old = outlets.remove(i);
            self.forget(&old);
        }
        if plugin {
            lock(&self.retired).retain(|e| e.name() != name);
        }
        let stats = {
            let mut all = lock(&self.stats);
            match all.iter().find(|(n, _)| *n == name) {
                Some((_, s)) => s.clone(),
                None => {
                    // Counters of removed plugin emitters are kept (counters
                    // never go back) but not forever: past a bound, the
                    // oldest of those whose emitter is gone are forgotten.
                    if all.len() >= MAX_EMITTER_STATS {
                        let live: Vec<&str> = outlets.iter().map(Outlet::name).collect();
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
        // One span per emitter task, entered per batch, never per event.
        let span = tracing::info_span!("polku.gateway.emitter", emitter = %name, plugin);
        let task = tokio::spawn(
            run_emitter(
                emitter.clone(),
                queue.clone(),
                stats.clone(),
                // Unset: as the emitter asks.
                options.linger.or_else(|| {
                    emitter.gathers_up_to().map(|n| Linger {
                        max_wait: std::time::Duration::ZERO,
                        max_events: n.max(1),
                    })
                }),
                // Unset: as many as the emitter asks for.
                if options.in_flight == 0 {
                    emitter.calls_at_once().max(1)
                } else {
                    options.in_flight
                },
                self.taps.clone(),
            )
            .instrument(span),
        );
        let mut tasks = lock(&self.tasks);
        // Plugins come and go: forget the tasks of emitters that are done.
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
        drop(tasks);
        let (owed, from) = match &self.journal {
            Some(j) => {
                let (owed, from) = j.register(&name);
                (Some(owed), from)
            }
            None => (None, None),
        };
        let target = Arc::new(Target {
            name,
            queue,
            stats,
            owed,
        });
        let replay = from.map(|from| Replay {
            target: target.clone(),
            from,
        });
        outlets.push(Outlet {
            target,
            emitter,
            plugin,
        });
        Ok(replay)
    }

    /// Whether a plugin's emitter of this name takes events now.
    pub(crate) fn has_plugin(&self, name: &str) -> bool {
        self.outlets()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o.plugin && o.name() == name))
    }

    /// Takes a removed plugin's emitter out of routing, closing its queue
    /// (its task works through what is queued, then ends), and keeps the
    /// emitter under its name for its failure store. Returns how many events
    /// were queued for it, if it was there.
    pub(crate) fn retire_plugin(&self, name: &str) -> Option<u64> {
        let outlet = {
            let mut guard = self.outlets.write().unwrap_or_else(PoisonError::into_inner);
            let outlets = guard.as_mut()?;
            let i = outlets.iter().position(|o| o.plugin && o.name() == name)?;
            outlets.remove(i)
        };
        self.forget(&outlet);
        let queued = outlet.target.stats.queued.load(Relaxed);
        let emitter = outlet.emitter.clone();
        drop(outlet);
        let mut retired = lock(&self.retired);
        retired.retain(|e| e.name() != name);
        retired.push(emitter);
        if retired.len() > MAX_RETIRED {
            let gone = retired.remove(0);
            let held = gone
                .delivery_state()
                .and_then(|d| d.failure_store())
                .map_or(0, |s| s.len());
            if held > 0 {
                error!(emitter = %gone.name(), events = held, "too many removed plugins: the oldest one's failure store is forgotten (in the durable buffer, its file stays and comes back if a plugin of that name registers)");
            }
        }
        Some(queued)
    }

    /// Emitters of removed plugins, kept for their failure stores.
    pub(crate) fn retired(&self) -> Vec<Arc<dyn Emitter>> {
        lock(&self.retired).clone()
    }

    /// The running emitters, in the order they were added.
    pub(crate) fn live(&self) -> Vec<Arc<dyn Emitter>> {
        self.outlets()
            .as_ref()
            .map(|o| o.iter().map(|o| o.emitter.clone()).collect())
            .unwrap_or_default()
    }

    /// The running emitter with this name, else a removed plugin's.
    pub(crate) fn find(&self, name: &str) -> Result<Arc<dyn Emitter>, ResendError> {
        let all = self.live();
        all.iter()
            .find(|e| e.name() == name)
            .cloned()
            .or_else(|| self.retired().into_iter().find(|e| e.name() == name))
            .ok_or_else(|| ResendError::UnknownEmitter {
                name: name.to_owned(),
                running: all.iter().map(|e| e.name()).collect::<Vec<_>>().join(", "),
            })
    }

    /// Every emitter's counters, by name, removed ones included.
    pub(crate) fn stats(&self) -> Vec<(String, Arc<EmitterStats>)> {
        lock(&self.stats).clone()
    }

    /// The emitter tasks started so far; shutdown awaits them.
    pub(crate) fn take_tasks(&self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut *lock(&self.tasks))
    }

    /// Closes every queue: each task delivers what its queue holds, then
    /// flushes its emitter and ends. No emitter is added after this.
    pub(crate) fn close(&self) {
        self.outlets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::buffer::Buffer;
    use crate::pipeline::testing::TestEmitter;

    fn delivery(buffer: &Buffer, ids: &[&str]) -> Delivery {
        Delivery {
            events: Arc::new(ids.iter().map(|i| Event::new("t").with_id(*i)).collect()),
            _room: Arc::new(buffer.try_reserve(ids.len(), 0).unwrap()),
            arrived: tokio::time::Instant::now(),
            _ticket: None,
            _taken: None,
        }
    }

    async fn finish(table: &EmitterTable) {
        table.close();
        for t in table.take_tasks() {
            t.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_configured_name_is_taken_once() {
        let table = EmitterTable::new(None, Default::default());
        table
            .add(TestEmitter::new("a"), false, Default::default())
            .unwrap();
        let err = table
            .add(TestEmitter::new("a"), false, Default::default())
            .unwrap_err();
        assert!(err.contains("already configured"), "{err}");
        let err = table
            .add(TestEmitter::new("a"), true, Default::default())
            .unwrap_err();
        assert!(
            err.contains("already configured"),
            "a plugin cannot take it: {err}"
        );
        assert_eq!(table.live().len(), 1);
        finish(&table).await;
    }

    #[tokio::test]
    async fn a_plugin_replaced_delivers_what_it_had_and_keeps_its_counters() {
        let buffer = Buffer::new(100, 0);
        let table = EmitterTable::new(None, Default::default());
        let old = TestEmitter::new("p");
        table.add(old.clone(), true, Default::default()).unwrap();
        old.hold();
        table.outlets().as_ref().unwrap()[0]
            .send(delivery(&buffer, &["1", "2"]))
            .unwrap();
        let new = TestEmitter::new("p");
        table.add(new.clone(), true, Default::default()).unwrap();
        assert!(table.has_plugin("p"));
        assert_eq!(table.live().len(), 1);
        table.outlets().as_ref().unwrap()[0]
            .send(delivery(&buffer, &["3"]))
            .unwrap();
        old.release();
        finish(&table).await;
        assert_eq!(old.ids(), ["1", "2"], "the old process got its own queue");
        assert_eq!(new.ids(), ["3"]);
        assert_eq!(old.shutdowns(), 1);
        assert_eq!(new.shutdowns(), 1);
        let stats = table.stats();
        assert_eq!(stats.len(), 1, "one name, one set of counters");
        assert_eq!(stats[0].1.emitted.load(Relaxed), 3);
        assert_eq!(buffer.depth(), 0, "every delivery gave its room back");
    }

    #[tokio::test]
    async fn a_retired_plugin_stays_findable_until_it_registers_again() {
        let table = EmitterTable::new(None, Default::default());
        table
            .add(TestEmitter::new("p"), true, Default::default())
            .unwrap();
        assert_eq!(table.retire_plugin("p"), Some(0));
        assert_eq!(table.retire_plugin("p"), None, "already gone");
        assert!(!table.has_plugin("p"));
        assert!(table.live().is_empty());
        assert_eq!(table.find("p").unwrap().name(), "p");
        table
            .add(TestEmitter::new("p"), true, Default::default())
            .unwrap();
        assert!(
            table.retired().is_empty(),
            "the new registration takes over"
        );
        finish(&table).await;
    }

    #[tokio::test]
    async fn a_configured_emitter_is_never_retired() {
        let table = EmitterTable::new(None, Default::default());
        table
            .add(TestEmitter::new("c"), false, Default::default())
            .unwrap();
        assert_eq!(table.retire_plugin("c"), None);
        assert_eq!(table.live().len(), 1);
        finish(&table).await;
    }

    #[tokio::test]
    async fn only_so_many_removed_plugins_are_kept() {
        let table = EmitterTable::new(None, Default::default());
        for i in 0..=MAX_RETIRED {
            let name = format!("p{i}");
            table
                .add(TestEmitter::new(&name), true, Default::default())
                .unwrap();
            table.retire_plugin(&name).unwrap();
        }
        let retired = table.retired();
        assert_eq!(retired.len(), MAX_RETIRED);
        assert_eq!(retired[0].name(), "p1", "the oldest went first");
        finish(&table).await;
    }

    #[tokio::test]
    async fn an_unknown_name_lists_the_running_ones() {
        let table = EmitterTable::new(None, Default::default());
        table
            .add(TestEmitter::new("a"), false, Default::default())
            .unwrap();
        table
            .add(TestEmitter::new("b"), false, Default::default())
            .unwrap();
        match table.find("zz") {
            Err(ResendError::UnknownEmitter { running, .. }) => assert_eq!(running, "a, b"),
            other => panic!("expected UnknownEmitter, got {other:?}"),
        }
        finish(&table).await;
    }

    #[tokio::test]
    async fn a_closed_table_takes_nothing_and_its_tasks_end() {
        let table = EmitterTable::new(None, Default::default());
        let e = TestEmitter::new("a");
        table.add(e.clone(), false, Default::default()).unwrap();
        finish(&table).await;
        assert!(table.outlets().is_none());
        assert!(
            table
                .add(TestEmitter::new("b"), false, Default::default())
                .is_err()
        );
        assert_eq!(e.shutdowns(), 1, "the emitter was flushed once");
    }

    /// Every span opened while `f` runs, by name and its `emitter` field.
    fn spans_of(f: impl FnOnce()) -> Vec<String> {
        use tracing_subscriber::layer::SubscriberExt as _;
        #[derive(Clone, Default)]
        struct Names(Arc<Mutex<Vec<String>>>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Names {
            fn on_new_span(
                &self,
                attrs: &tracing::span::Attributes<'_>,
                _: &tracing::Id,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                self.0.lock().unwrap().push(format!(
                    "{} {}",
                    attrs.metadata().name(),
                    attrs.values()
                ));
            }
        }
        let names = Names::default();
        let subscriber = tracing_subscriber::registry().with(names.clone());
        tracing::subscriber::with_default(subscriber, f);
        names.0.lock().unwrap().clone()
    }

    #[test]
    fn each_emitter_task_runs_in_a_span_named_for_it() {
        let spans = spans_of(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                let table = EmitterTable::new(None, Default::default());
                table
                    .add(TestEmitter::new("a"), false, Default::default())
                    .unwrap();
                table
                    .add(TestEmitter::new("p"), true, Default::default())
                    .unwrap();
                finish(&table).await;
            });
        });
        let emitters: Vec<&String> = spans
            .iter()
            .filter(|s| s.starts_with("polku.gateway.emitter "))
            .collect();
        assert_eq!(emitters.len(), 2, "{spans:?}");
        assert!(
            emitters[0].contains("emitter: a") && emitters[0].contains("plugin: false"),
            "{emitters:?}"
        );
        assert!(
            emitters[1].contains("emitter: p") && emitters[1].contains("plugin: true"),
            "{emitters:?}"
        );
    }
}
