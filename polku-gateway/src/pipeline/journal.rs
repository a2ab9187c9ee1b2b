//! The durable buffer's bookkeeping (`POLKU_BUFFER_DIR`): what each emitter
//! still owes, its durable cursor, and when a segment of the log can go.
//!
//! Every accepted batch is one record of the [`log`](super::log). Its
//! deliveries reach the emitters' queues on the committing thread, once the
//! record is synced, and each carries a [`Ticket`]: the record's number in
//! its emitter's [`Owed`] set until the delivery is done (delivered, or
//! given up on into the failure store, or dropped by its queue's policy).
//! An emitter's cursor is the first record it still owes; records it never
//! got (routed elsewhere) are not owed. Every `cursor_interval` the cursors
//! are saved ([`Cursors`]), each with the records above it already done
//! (batches finish out of order), and the segments below the lowest cursor
//! are removed. After a crash each emitter replays from its saved cursor
//! what that save did not call done: at least once, with duplicates bounded
//! by what it delivered in one interval.
//!
//! A saved cursor whose emitter is not running after a restart (a plugin
//! that has not registered again yet) pins the log for [`ORPHAN_GRACE`]; a
//! plugin that registers within it gets its replay. Past it, what the
//! plugin had not delivered goes to its failure store's file (listed and
//! resendable under its name once it registers again) and its cursor stops
//! holding the log. A removed plugin's cursor goes once its queue is worked
//! through.
//!
//! What an emitter gives up on goes to its failure store, which here keeps a
//! durable copy under `failures/` ([`FailureFile`]), on disk before the
//! delivery is done and the record stops being owed. The saver writes what
//! the stores changed since (resends done) every interval too.

use super::log::commit::{CommitError, Committer, OnDurable};
use super::log::cursor::{Cursors, MAX_DONE_RANGES, Position};
use super::log::failures::FailureFile;
use super::log::{Log, LogError, Recovery};
use crate::SubmitError;
use crate::stats::DurableSnapshot;
use polku_core::Event;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Acquire, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{error, info, warn};

/// How long a saved cursor whose emitter is not running after a restart
/// (a plugin that has not registered again) keeps its place in the log.
pub(crate) const ORPHAN_GRACE: Duration = Duration::from_secs(60);

/// The durable buffer's settings.
#[derive(Debug, Clone)]
pub(crate) struct JournalSettings {
    /// Where the log and the cursors live.
    pub(crate) dir: PathBuf,
    /// The most bytes the log's segments may take.
    pub(crate) max_disk_bytes: u64,
    /// How often the cursors are saved (and the log trimmed).
    pub(crate) cursor_interval: Duration,
    /// Acknowledge once the kernel has a record, sync this often (opt-in).
    pub(crate) sync_interval: Option<Duration>,
    /// How long a saved cursor waits for its emitter after a restart
    /// ([`ORPHAN_GRACE`]).
    pub(crate) orphan_grace: Duration,
    /// The bounds (events, bytes) of a failure store made for an emitter
    /// that did not come back; `(0, _)`: none, its records are dropped.
    pub(crate) failure_store: (usize, usize),
}

impl JournalSettings {
    /// Segment size: small enough that trimming frees the budget in steps
    /// of an eighth at most, big enough that rolling is rare.
    fn segment_bytes(&self) -> u64 {
        (self.max_disk_bytes / 8).clamp(64 << 10, 64 << 20)
    }
}

/// Why the durable buffer could not open its directory.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// The log could not be opened (locked, or unreadable).
    #[error(transparent)]
    Log(#[from] LogError),
    /// The cursors file could not be read.
    #[error("buffer directory {dir}: {source}")]
    Cursors {
        /// The directory.
        dir: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Default)]
struct OwedState {
    /// Records queued to the emitter and not yet done by it.
    pending: BTreeSet<u64>,
    /// While a replay runs: the first record it has not yet reached.
    floor: Option<u64>,
    /// Records the saved position called done (above its cursor): a replay
    /// skips them.
    skip: Vec<(u64, u64)>,
    /// Its emitter was removed (or replaced): it owes nothing new.
    retired: bool,
}

/// What one emitter still owes: the records queued to it and not yet done,
/// and how far a replay to it has got. A lock per batch, never per event.
#[derive(Debug, Default)]
pub(crate) struct Owed {
    state: Mutex<OwedState>,
}

impl Owed {
    fn with_floor(floor: Option<u64>) -> Arc<Owed> {
        Self::with_position(floor, Vec::new())
    }

    /// Owes from `floor` (a replay is due), but not the records in `skip`.
    fn with_position(floor: Option<u64>, skip: Vec<(u64, u64)>) -> Arc<Owed> {
        Arc::new(Owed {
            state: Mutex::new(OwedState {
                floor,
                skip: if floor.is_some() { skip } else { Vec::new() },
                ..OwedState::default()
            }),
        })
    }

    /// Whether a replay skips record `n`: the last saved position called
    /// it done.
    pub(crate) fn skips(&self, n: u64) -> bool {
        lock(&self.state)
            .skip
            .iter()
            .any(|(a, b)| (*a..*b).contains(&n))
    }

    /// Where this emitter is: its cursor, and the records above it that it
    /// has done, up to `horizon` (every record below it that it was sent is
    /// in its set by now).
    fn position(&self, horizon: u64) -> Position {
        let s = lock(&self.state);
        let mut at = horizon;
        if let Some(first) = s.pending.first() {
            at = at.min(*first);
        }
        if let Some(floor) = s.floor {
            at = at.min(floor);
        }
        let mut done = Vec::new();
        // Below the replay's floor (or everywhere, without a replay), what
        // is not pending is done.
        let upto = s.floor.unwrap_or(horizon).min(horizon);
        let mut from = at;
        for &n in s.pending.range(at..upto) {
            if n > from {
                done.push((from, n));
            }
            from = n + 1;
        }
        if from < upto {
            done.push((from, upto));
        }
        // Above it, the replay has yet to send all but what was skipped.
        if s.floor.is_some() {
            done.extend(
                s.skip
                    .iter()
                    .map(|&(a, b)| (a.max(upto), b.min(horizon)))
                    .filter(|(a, b)| a < b),
            );
        }
        done.truncate(MAX_DONE_RANGES);
        Position { at, done }
    }

    /// A replay to this emitter has reached past `number`; `owed` says
    /// whether the record went to it (then a [`Ticket`] for it follows).
    pub(crate) fn replayed(&self, number: u64, owed: bool) {
        let mut s = lock(&self.state);
        if owed {
            s.pending.insert(number);
        }
        s.floor = Some(number + 1);
    }

    /// A replay stopped before record `number` (its emitter went): the
    /// cursor stays there.
    pub(crate) fn hold_at(&self, number: u64) {
        lock(&self.state).floor = Some(number);
    }

    /// The replay to this emitter is over.
    pub(crate) fn replay_done(&self) {
        lock(&self.state).floor = None;
    }

    /// The replay floor, if a replay is due or running.
    pub(crate) fn floor(&self) -> Option<u64> {
        lock(&self.state).floor
    }

    fn retire(&self) {
        lock(&self.state).retired = true;
    }

    /// Retired and owing nothing more: its cursor can go.
    fn finished(&self) -> bool {
        let s = lock(&self.state);
        s.retired && s.pending.is_empty() && s.floor.is_none()
    }
}

/// One record owed by one emitter, until dropped (its delivery is done).
#[derive(Debug)]
pub(crate) struct Ticket {
    owed: Arc<Owed>,
    number: u64,
}

impl Ticket {
    /// Owes record `number` to `owed`'s emitter.
    pub(crate) fn new(owed: Arc<Owed>, number: u64) -> Ticket {
        lock(&owed.state).pending.insert(number);
        Ticket { owed, number }
    }

    /// A ticket for a record already put in the set (by a replay).
    pub(crate) fn owed(owed: Arc<Owed>, number: u64) -> Ticket {
        Ticket { owed, number }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        lock(&self.owed.state).pending.remove(&self.number);
    }
}

#[derive(Debug)]
struct Owner {
    name: String,
    owed: Arc<Owed>,
    /// Set for a saved cursor whose emitter is not running: when what it
    /// owes goes to its failure store.
    orphan_until: Option<Instant>,
    /// What it owes is being written to its failure store (it can no
    /// longer be taken for a replay).
    storing: bool,
    /// What it owed is in its failure store: its cursor can go.
    stored: bool,
}

/// Counts of the durable buffer's work besides the committer's.
#[derive(Debug, Default)]
pub(crate) struct JournalCounters {
    /// Events queued again by replays after a restart (per emitter that got
    /// them): at most this many duplicates reached the destinations.
    pub(crate) replayed: AtomicU64,
    /// Cursor saves done.
    pub(crate) cursor_saves: AtomicU64,
    /// Cursor saves that failed (the older cursors stand: more replay).
    pub(crate) cursor_failures: AtomicU64,
    /// Saved cursors dropped: their emitter did not come back in time
    /// (what it owed went to its failure store's file).
    pub(crate) cursors_dropped: AtomicU64,
    /// Events of emitters that did not come back, put in their failure
    /// stores' files.
    pub(crate) orphaned_events: AtomicU64,
    /// Records a replay could not decode (skipped, counted, logged).
    pub(crate) undecodable: AtomicU64,
}

/// The durable buffer: the committing thread, what each emitter owes, and
/// the cursors.
#[derive(Debug)]
pub(crate) struct Journal {
    settings: JournalSettings,
    committer: Committer,
    thread: Mutex<Option<std::thread::JoinHandle<Log>>>,
    owners: Mutex<Vec<Owner>>,
    cursors: Arc<Mutex<Cursors>>,
    /// The positions as last saved.
    saved: Mutex<BTreeMap<String, Position>>,
    /// The log's end when it was opened: what a replay reads up to.
    replay_end: u64,
    recovery: Recovery,
    pub(crate) counters: JournalCounters,
    /// When a refusal was last logged (one error line per second at most).
    last_refusal_log: Mutex<Option<Instant>>,
    stop: watch::Sender<bool>,
    /// The failure stores' durable copies, by emitter name.
    failure_files: Mutex<BTreeMap<String, FailureFile>>,
    /// The cursors file was damaged: every emitter replays from here.
    replay_everything: Option<u64>,
    /// Whether the cursors file was damaged at this start.
    cursors_damaged: bool,
}

/// A batch's bytes in the log: event.proto's `EventBatch`.
pub(crate) fn encode(events: &[Event]) -> Vec<u8> {
    use prost::Message as _;
    use prost::encoding::encoded_len_varint;
    let len: usize = events
        .iter()
        .map(|e| {
            let l = e.encoded_len();
            1 + encoded_len_varint(l as u64) + l
        })
        .sum();
    let mut buf = Vec::with_capacity(len);
    for e in events {
        prost::encoding::message::encode(1, e, &mut buf);
    }
    buf
}

/// A batch read back from the log; payloads are slices of the record.
pub(crate) fn decode(record: Vec<u8>) -> Result<Vec<Event>, prost::DecodeError> {
    use prost::Message as _;
    polku_core::EventBatch::decode(bytes::Bytes::from(record)).map(|b| b.events)
}

impl Journal {
    /// Opens the buffer directory: takes its lock, recovers the log, reads
    /// the cursors, and starts the committing thread and the cursor saver.
    pub(crate) fn open(settings: JournalSettings) -> Result<Arc<Journal>, OpenError> {
        let dir = settings.dir.clone();
        let (log, recovery) = Log::open(&dir, settings.segment_bytes())?;
        let replay_end = log.next();
        let first = log.first();
        let cursors_err = |source| OpenError::Cursors {
            dir: dir.clone(),
            source,
        };
        // A damaged cursors file must not stop the gateway at every start:
        // it is set aside, and every emitter gets the whole log again (more
        // duplicates, nothing lost).
        let (cursors, damaged) = match Cursors::open(&dir) {
            Ok(c) => (c, false),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                let aside = dir.join(format!(
                    "CURSORS.damaged-{}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0)
                ));
                std::fs::rename(dir.join("CURSORS"), &aside).map_err(cursors_err)?;
                error!(error = %e, kept = %aside.display(), records = replay_end - first, "durable buffer: the cursors file is damaged; every emitter gets what the log holds again (at least once: duplicates, nothing lost)");
                (Cursors::open(&dir).map_err(cursors_err)?, true)
            }
            Err(e) => return Err(cursors_err(e)),
        };
        let until = Instant::now() + settings.orphan_grace;
        let owners: Vec<Owner> = cursors
            .all()
            .iter()
            .map(|(name, p)| Owner {
                name: name.clone(),
                owed: Owed::with_position(
                    (p.at < replay_end).then_some(p.at.max(first)),
                    p.done.clone(),
                ),
                orphan_until: Some(until),
                storing: false,
                stored: false,
            })
            .collect();
        let saved = cursors.all().clone();
        info!(
            dir = %dir.display(),
            records = replay_end - first,
            disk_bytes = log.disk_bytes(),
            max_disk_bytes = settings.max_disk_bytes,
            torn_bytes = recovery.torn_bytes,
            corrupt_segments = recovery.corrupt_segments.len(),
            cursors = saved.len(),
            sync_interval = ?settings.sync_interval,
            "durable buffer opened"
        );
        let (committer, thread) =
            Committer::start(log, settings.max_disk_bytes, settings.sync_interval);
        let journal = Arc::new(Journal {
            settings,
            committer,
            thread: Mutex::new(Some(thread)),
            owners: Mutex::new(owners),
            cursors: Arc::new(Mutex::new(cursors)),
            saved: Mutex::new(saved),
            replay_end,
            recovery,
            counters: JournalCounters::default(),
            last_refusal_log: Mutex::new(None),
            stop: watch::channel(false).0,
            failure_files: Mutex::default(),
            replay_everything: (damaged && first < replay_end).then_some(first),
            cursors_damaged: damaged,
        });
        Ok(journal)
    }

    /// The directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.settings.dir
    }

    /// What a replay after this restart reads up to.
    pub(crate) fn replay_end(&self) -> u64 {
        self.replay_end
    }

    /// Starts saving the cursors every `cursor_interval` (until [`close`](Self::close)).
    pub(crate) fn spawn_saver(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let journal = self.clone();
        let mut stop = self.stop.subscribe();
        let every = self.settings.cursor_interval;
        let span = tracing::info_span!("polku.gateway.cursors");
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(every) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    journal.save_cursors().await;
                    journal.write_failure_files().await;
                }
            },
            span,
        ))
    }

    /// Takes a place for an emitter that starts now: a saved cursor of its
    /// name not yet taken (it ran before the restart) gives it a replay
    /// from there, which the caller runs; else it owes only what comes next.
    pub(crate) fn register(&self, name: &str) -> (Arc<Owed>, Option<u64>) {
        let mut owners = lock(&self.owners);
        if let Some(o) = owners
            .iter_mut()
            .find(|o| o.name == name && o.orphan_until.is_some() && !o.storing)
        {
            o.orphan_until = None;
            let floor = o.owed.floor();
            return (o.owed.clone(), floor);
        }
        let floor = self.replay_everything;
        let owed = Owed::with_floor(floor);
        owners.push(Owner {
            name: name.to_owned(),
            owed: owed.clone(),
            orphan_until: None,
            storing: false,
            stored: false,
        });
        drop(owners);
        self.save_new(name, floor);
        (owed, floor)
    }

    /// Saves a cursor for an emitter seen for the first time, at the log's
    /// end, before it is sent anything: else a crash before the next save
    /// would leave it with no cursor, and it would miss its replay.
    fn save_new(&self, name: &str, from: Option<u64>) {
        let mut saved = lock(&self.saved);
        if saved.contains_key(name) {
            return;
        }
        let at = from.unwrap_or_else(|| self.committer.stats().next.load(Acquire));
        let mut map = saved.clone();
        map.insert(name.to_owned(), Position::at(at));
        match lock(&self.cursors).replace(map.clone()) {
            Ok(()) => *saved = map,
            Err(e) => {
                self.counters.cursor_failures.fetch_add(1, Relaxed);
                error!(emitter = %name, error = %e, "durable buffer: cannot save a new emitter's cursor");
            }
        }
    }

    /// An emitter was removed or replaced: once its queue is worked
    /// through, its cursor no longer holds the log.
    pub(crate) fn retire(&self, owed: &Owed) {
        owed.retire();
    }

    /// Writes `events` as one record and runs `on_durable` with its number
    /// once it is synced; `Ok` means it is on disk. A full disk budget or a
    /// failed write refuses the batch (`RESOURCE_EXHAUSTED`, `429`).
    pub(crate) async fn commit(
        &self,
        events: &[Event],
        on_durable: OnDurable,
    ) -> Result<u64, SubmitError> {
        let payload = encode(events);
        match self.committer.commit_then(payload, Some(on_durable)).await {
            Ok(n) => Ok(n),
            Err(CommitError::Closed) => Err(SubmitError::ShuttingDown),
            Err(CommitError::Log(e)) => {
                let err = match &*e {
                    LogError::Full { used, max, .. } => SubmitError::DiskFull {
                        used: *used,
                        max: *max,
                    },
                    other => SubmitError::DiskFailed(other.to_string()),
                };
                self.log_refusal(&err);
                Err(err)
            }
        }
    }

    /// Says why batches are refused, once a second at most.
    fn log_refusal(&self, err: &SubmitError) {
        let mut last = lock(&self.last_refusal_log);
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            return;
        }
        *last = Some(now);
        drop(last);
        let s = self.committer.stats();
        error!(
            error = %err,
            refused_full = s.full.load(Relaxed),
            refused = s.failures.load(Relaxed),
            "durable buffer refuses events (counted in polku_buffer_disk_refused_total)"
        );
    }

    /// The positions now: per emitter name, the first record it still owes
    /// and what it has done above it. Saved cursors whose emitter did not
    /// come back in time, and removed emitters that are done, are
    /// forgotten here.
    fn current_cursors(&self) -> (BTreeMap<String, Position>, u64) {
        // Loaded before the sets are read: every record below it that went
        // to an emitter is in that emitter's set by now.
        let horizon = self.committer.stats().next.load(Acquire);
        let mut owners = lock(&self.owners);
        owners.retain(|o| {
            if o.stored {
                self.counters.cursors_dropped.fetch_add(1, Relaxed);
                return false;
            }
            if o.orphan_until.is_some() {
                // Until what it owes is in its failure store, it holds the log.
                return true;
            }
            !o.owed.finished()
        });
        let mut by_name: BTreeMap<String, Position> = BTreeMap::new();
        for o in owners.iter() {
            let p = o.owed.position(horizon);
            by_name
                .entry(o.name.clone())
                // Two of one name (a plugin and its successor): the lower
                // cursor, and nothing called done above it.
                .and_modify(|m| *m = Position::at(m.at.min(p.at)))
                .or_insert(p);
        }
        (by_name, horizon)
    }

    /// Saved cursors whose emitter did not come back within the grace:
    /// what each had not delivered goes to its failure store's file, then
    /// its cursor stops holding the log. On an error it stays, and is tried
    /// again at the next save.
    async fn store_orphans(&self) {
        let now = Instant::now();
        let horizon = self.committer.stats().next.load(Acquire);
        let expired: Vec<(String, Position)> = lock(&self.owners)
            .iter_mut()
            .filter(|o| !o.stored && o.orphan_until.is_some_and(|t| now >= t))
            .map(|o| {
                o.storing = true;
                (o.name.clone(), o.owed.position(horizon))
            })
            .collect();
        for (name, from) in expired {
            let outcome = self.store_orphan(&name, from).await;
            let mut owners = lock(&self.owners);
            let Some(o) = owners.iter_mut().find(|o| o.name == name && o.storing) else {
                continue;
            };
            match outcome {
                Ok((events, evicted)) => {
                    o.stored = true;
                    self.counters.orphaned_events.fetch_add(events, Relaxed);
                    if events > 0 {
                        warn!(emitter = %name, events, evicted, "durable buffer: emitter {name:?} has not come back since the restart; the events it had not delivered are in its failure store, listed and resendable under its name once it registers again");
                    }
                    if evicted > 0 {
                        error!(emitter = %name, evicted, "durable buffer: the failure store of {name:?} is full; its oldest events were discarded");
                    }
                }
                Err(e) => {
                    o.storing = false;
                    error!(emitter = %name, error = %e, "durable buffer: cannot put what {name:?} had not delivered in its failure store; the log keeps it and this is tried again");
                }
            }
        }
    }

    /// Writes the events from record `from` to the log's end at the
    /// restart that were routed to `name` into its failure store's file;
    /// gives how many, and how many the store's bounds discarded.
    async fn store_orphan(&self, name: &str, position: Position) -> Result<(u64, u64), String> {
        let (max_events, max_bytes) = self.settings.failure_store;
        let end = self.replay_end;
        let from = position.at;
        if from >= end {
            return Ok((0, 0));
        }
        let Ok(store) = polku_core::delivery::FailureStore::new(max_events, max_bytes) else {
            // No failure stores: the records are given up, as said.
            warn!(emitter = %name, records = end - from, "durable buffer: emitter {name:?} has not come back since the restart and failure stores are off; the records it had not delivered are no longer kept for it");
            return Ok((0, 0));
        };
        let store = Arc::new(store);
        self.attach_failures(name, &store)?;
        let dir = self.dir().to_owned();
        let target = name.to_owned();
        let into = store.clone();
        let undecodable = &self.counters.undecodable;
        let read = tokio::task::spawn_blocking(move || {
            let (mut events, mut evicted, mut bad) = (0u64, 0u64, 0u64);
            let reason = format!(
                "emitter {target:?} did not come back after a restart; kept for it from the durable buffer"
            );
            crate::pipeline::log::read_range(&dir, from, end, |n, payload| {
                if position.is_done(n) {
                    return true;
                }
                match decode(payload) {
                    Ok(batch) => {
                        let mine: Vec<_> = batch
                            .into_iter()
                            .filter(|e| e.is_routed_to(&target))
                            .map(|e| {
                                polku_core::delivery::StoredFailure::new(e, reason.clone(), true)
                            })
                            .collect();
                        events += mine.len() as u64;
                        evicted += into.push(mine);
                    }
                    Err(_) => bad += 1,
                }
                true
            })
            .map(|()| (events, evicted, bad))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("reading the log: {e}"))?;
        undecodable.fetch_add(read.2, Relaxed);
        store
            .flush()
            .await
            .map_err(|e| format!("writing the failure store's file: {e}"))?;
        Ok((read.0, read.1))
    }

    /// Saves the cursors if they moved, then removes the segments every
    /// emitter is past.
    pub(crate) async fn save_cursors(&self) {
        self.store_orphans().await;
        let (now, horizon) = self.current_cursors();
        let below = now.values().map(|p| p.at).min().unwrap_or(horizon);
        let changed = *lock(&self.saved) != now;
        if changed {
            let cursors = self.cursors.clone();
            let map = now.clone();
            let saved = tokio::task::spawn_blocking(move || {
                let mut c = lock(&cursors);
                c.replace(map)
            })
            .await;
            match saved {
                Ok(Ok(())) => {
                    self.counters.cursor_saves.fetch_add(1, Relaxed);
                    *lock(&self.saved) = now;
                }
                Ok(Err(e)) => {
                    self.counters.cursor_failures.fetch_add(1, Relaxed);
                    error!(error = %e, dir = %self.dir().display(), "durable buffer: cannot save the cursors; the log is kept until they are saved");
                    return;
                }
                Err(e) => {
                    self.counters.cursor_failures.fetch_add(1, Relaxed);
                    error!(error = %e, "durable buffer: the cursor save failed");
                    return;
                }
            }
        }
        // Only below what is saved: a crash now replays from the saved cursors.
        match self.committer.trim(below).await {
            Ok(_) | Err(CommitError::Closed) => {}
            Err(CommitError::Log(e)) => {
                error!(error = %e, "durable buffer: cannot remove delivered segments");
            }
        }
    }

    /// Stops the saver, saves the cursors a last time, and stops the
    /// committing thread (releasing the directory's lock). Call once the
    /// emitters have delivered what they could.
    pub(crate) async fn close(&self) {
        let _ = self.stop.send(true);
        self.write_failure_files().await;
        self.save_cursors().await;
        self.stop_thread().await;
    }

    /// Gives `store` (of the emitter `name`) its durable copy, with what
    /// the copy held from before a restart. A store that has one already (a
    /// plugin registering again) keeps it.
    pub(crate) fn attach_failures(
        &self,
        name: &str,
        store: &polku_core::delivery::FailureStore,
    ) -> Result<(), String> {
        if store.is_durable() {
            return Ok(());
        }
        let mut files = lock(&self.failure_files);
        files.retain(|_, f| !f.unused() || f.has_pending());
        if let Some(earlier) = files.get(name) {
            if !earlier.unused() {
                return Err(format!(
                    "the failure store of an earlier emitter named {name:?} is still in use; try again once it is done"
                ));
            }
            // Its store is gone: what it last told goes to disk before the
            // file is read again.
            if let Err(e) = earlier.write() {
                error!(emitter = %name, error = %e, "durable buffer: cannot write the failure store's file");
            }
            files.remove(name);
        }
        let dir = self.dir().join("failures");
        let (file, recovered) = FailureFile::open(&dir, name).map_err(|e| {
            format!(
                "cannot open the failure store's file for {name:?} in {}: {e}",
                dir.display()
            )
        })?;
        if recovered.cut_bytes > 0 || recovered.undecodable > 0 {
            warn!(emitter = %name, cut_bytes = recovered.cut_bytes, undecodable = recovered.undecodable, "failure store file: a torn or damaged end was cut off");
        }
        let held = recovered.failures.len();
        store.attach(Arc::new(file.clone()), recovered.failures);
        if held > 0 {
            info!(emitter = %name, events = held, "failure store read back from disk: list it under /v1/emitters/{name}/failures, resend it with POST .../failures/resend");
        }
        files.insert(name.to_owned(), file);
        Ok(())
    }

    /// Writes what the failure stores changed since their last write.
    pub(crate) async fn write_failure_files(&self) {
        let files: Vec<(String, FailureFile)> = lock(&self.failure_files)
            .iter()
            .filter(|(_, f)| f.has_pending())
            .map(|(n, f)| (n.clone(), f.clone()))
            .collect();
        if files.is_empty() {
            return;
        }
        let done = tokio::task::spawn_blocking(move || {
            files
                .into_iter()
                .filter_map(|(n, f)| f.write().err().map(|e| (n, e)))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (name, e) in done {
            error!(emitter = %name, error = %e, "durable buffer: cannot write the failure store's file; it is tried again");
        }
    }

    /// Stops the committing thread once it has done what it was given, and
    /// waits for it (the directory's lock goes with it).
    async fn stop_thread(&self) {
        self.committer.stop();
        let thread = lock(&self.thread).take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    /// Stops as a crash would: no last cursor save; the thread stops (so the
    /// lock goes) with what it synced.
    #[cfg(test)]
    pub(crate) async fn crash(&self) {
        let _ = self.stop.send(true);
        self.stop_thread().await;
    }

    /// The durable buffer's figures.
    pub(crate) fn snapshot(&self) -> DurableSnapshot {
        let files = lock(&self.failure_files);
        let s = self.committer.stats();
        let c = &self.counters;
        let full = s.full.load(Relaxed);
        DurableSnapshot {
            disk_bytes: s.disk_bytes.load(Relaxed),
            max_disk_bytes: self.settings.max_disk_bytes,
            records: s.records.load(Relaxed),
            syncs: s.syncs.load(Relaxed),
            written_bytes: s.bytes.load(Relaxed),
            refused_full: full,
            refused_io: s.failures.load(Relaxed).saturating_sub(full),
            trimmed_segments: s.trimmed.load(Relaxed),
            replayed_events: c.replayed.load(Relaxed),
            cursor_saves: c.cursor_saves.load(Relaxed),
            cursor_failures: c.cursor_failures.load(Relaxed),
            cursors_dropped: c.cursors_dropped.load(Relaxed),
            orphaned_events: c.orphaned_events.load(Relaxed),
            cursors_damaged: self.cursors_damaged,
            torn_bytes: self.recovery.torn_bytes,
            corrupt_segments: self.recovery.corrupt_segments.len() as u64,
            undecodable_records: c.undecodable.load(Relaxed),
            failure_disk_bytes: files.values().map(FailureFile::disk_bytes).sum(),
            failure_write_failures: files.values().map(FailureFile::write_failures).sum(),
            late_sync_failures: s.late_sync_failures.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Wait;
    use crate::pipeline::log::tests::TempDir;
    use crate::pipeline::testing::{Step, TestEmitter, durable_pipeline, events, finish};

    const BUDGET: u64 = 1 << 20;

    async fn accept(p: &crate::pipeline::Pipeline, ids: &[&str]) -> Result<usize, SubmitError> {
        p.accept("t", events(ids), Wait::For(Duration::from_secs(1)))
            .await
            .map(|o| o.accepted)
    }

    async fn until(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..500 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// A durable pipeline of one emitter, the default budget.
    fn one(e: &Arc<TestEmitter>, dir: &TempDir) -> Arc<crate::pipeline::Pipeline> {
        durable_pipeline(vec![e.clone()], 100, &dir.0, BUDGET)
    }

    /// Stops as the gateway does: the emitters drain, the cursors are saved.
    async fn stop(p: &crate::pipeline::Pipeline) {
        finish(p).await;
        journal(p).close().await;
    }

    /// An emitter's saved cursor.
    fn at(j: &Journal, name: &str) -> Option<u64> {
        lock(&j.saved).get(name).map(|p| p.at)
    }

    fn journal(p: &crate::pipeline::Pipeline) -> Arc<Journal> {
        p.journal().unwrap().clone()
    }

    #[test]
    fn a_batch_survives_encoding() {
        let mut e = Event::new("user.signup").with_id("a");
        e.payload = bytes::Bytes::from_static(b"{\"x\":1}");
        e.metadata.insert("k".into(), "v".into());
        e.route_to = vec!["out".into()].into();
        e.severity = 3;
        let batch = vec![e, Event::new("b").with_id("b")];
        assert_eq!(decode(encode(&batch)).unwrap(), batch);
        assert_eq!(decode(encode(&[])).unwrap(), Vec::<Event>::new());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_was_not_delivered_before_a_crash_is_delivered_after_it() {
        let dir = TempDir::new();
        let first = TestEmitter::new("out");
        first.hold();
        let p = durable_pipeline(vec![first.clone()], 100, &dir.0, BUDGET);
        assert_eq!(accept(&p, &["1", "2"]).await.unwrap(), 2);
        assert_eq!(accept(&p, &["3"]).await.unwrap(), 1);
        journal(&p).crash().await;
        assert!(first.ids().is_empty(), "nothing was delivered");

        let again = TestEmitter::new("out");
        let p2 = one(&again, &dir);
        until("the replay", || again.ids().len() == 3).await;
        assert_eq!(again.ids(), ["1", "2", "3"]);
        assert_eq!(p2.snapshot().durable.unwrap().replayed_events, 3);
        // And it takes new events as before.
        assert_eq!(accept(&p2, &["4"]).await.unwrap(), 1);
        until("the new event", || again.ids().len() == 4).await;
        stop(&p2).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_was_delivered_and_saved_is_not_sent_again() {
        let dir = TempDir::new();
        let first = TestEmitter::new("out");
        let p = one(&first, &dir);
        accept(&p, &["1", "2"]).await.unwrap();
        until("delivery", || first.ids().len() == 2).await;
        let j = journal(&p);
        until("a cursor save past both", || {
            j.current_cursors().0.get("out").map(|p| p.at) == Some(1)
                && *lock(&j.saved) == j.current_cursors().0
        })
        .await;
        first.hold();
        accept(&p, &["3"]).await.unwrap();
        j.crash().await;

        let again = TestEmitter::new("out");
        let p2 = one(&again, &dir);
        until("the replay", || !again.ids().is_empty()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(again.ids(), ["3"], "only what was not delivered");
        stop(&p2).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_orderly_stop_saves_the_cursors_and_replays_nothing() {
        let dir = TempDir::new();
        let first = TestEmitter::new("out");
        let p = one(&first, &dir);
        accept(&p, &["1", "2", "3"]).await.unwrap();
        stop(&p).await;
        assert_eq!(first.ids().len(), 3);

        let again = TestEmitter::new("out");
        let p2 = one(&again, &dir);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(again.ids().is_empty(), "{:?}", again.ids());
        assert_eq!(p2.snapshot().durable.unwrap().replayed_events, 0);
        stop(&p2).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_emitter_replays_from_its_own_cursor() {
        let dir = TempDir::new();
        let fast = TestEmitter::new("fast");
        let slow = TestEmitter::new("slow");
        slow.hold();
        let p = durable_pipeline(vec![fast.clone(), slow.clone()], 100, &dir.0, BUDGET);
        accept(&p, &["1", "2"]).await.unwrap();
        until("fast delivers", || fast.ids().len() == 2).await;
        let j = journal(&p);
        until("fast's cursor saved", || {
            at(&j, "fast") == Some(1) && at(&j, "slow") == Some(0)
        })
        .await;
        j.crash().await;

        let fast2 = TestEmitter::new("fast");
        let slow2 = TestEmitter::new("slow");
        let p2 = durable_pipeline(vec![fast2.clone(), slow2.clone()], 100, &dir.0, BUDGET);
        until("slow's replay", || slow2.ids().len() == 2).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            fast2.ids().is_empty(),
            "fast had delivered: {:?}",
            fast2.ids()
        );
        stop(&p2).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_disk_budget_refuses_then_takes_again_once_delivered() {
        let dir = TempDir::new();
        let out = TestEmitter::new("out");
        out.hold();
        let budget = 512 << 10;
        let p = durable_pipeline(vec![out.clone()], 100_000, &dir.0, budget);
        let big = |id: String| {
            let mut e = Event::new("t").with_id(id);
            e.payload = bytes::Bytes::from(vec![b'x'; 40 << 10]);
            e
        };
        let mut accepted = Vec::new();
        let err = loop {
            let id = accepted.len().to_string();
            match p
                .accept(
                    "t",
                    vec![big(id.clone())],
                    Wait::For(Duration::from_secs(1)),
                )
                .await
            {
                Ok(o) => {
                    assert_eq!(o.accepted, 1);
                    accepted.push(id);
                }
                Err(e) => break e,
            }
            assert!(accepted.len() < 100, "the budget never pushed back");
        };
        assert!(matches!(err, SubmitError::DiskFull { .. }), "{err:?}");
        assert_eq!(err.grpc_code(), tonic::Code::ResourceExhausted);
        assert!(
            err.to_string().contains("POLKU_BUFFER_MAX_DISK_BYTES"),
            "{err}"
        );
        let snap = p.snapshot();
        assert_eq!(
            snap.rejected_events.get(&crate::RejectReason::DiskFull),
            Some(&1)
        );
        assert!(snap.durable.as_ref().unwrap().refused_full >= 1);
        assert!(snap.durable.unwrap().disk_bytes <= budget);
        // Delivered, the segments go and the budget takes events again.
        out.release();
        until("delivery", || out.ids().len() == accepted.len()).await;
        let mut later = None;
        for _ in 0..200 {
            match p
                .accept(
                    "t",
                    vec![big("later".into())],
                    Wait::For(Duration::from_secs(1)),
                )
                .await
            {
                Ok(_) => {
                    later = Some(());
                    break;
                }
                Err(SubmitError::DiskFull { .. }) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("{e:?}"),
            }
        }
        assert!(later.is_some(), "the budget never freed up");
        assert!(p.snapshot().durable.unwrap().trimmed_segments > 0);
        until("the later one", || out.ids().contains(&"later".to_owned())).await;
        assert_eq!(
            out.ids()[..accepted.len()],
            accepted[..],
            "nothing accepted was lost"
        );
        stop(&p).await;
    }

    fn stored(e: &TestEmitter) -> Vec<String> {
        e.store()
            .list(0, 100)
            .iter()
            .map(|f| f.event.id.to_string())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_an_emitter_gave_up_on_outlives_a_crash_in_its_failure_store() {
        let dir = TempDir::new();
        let e = TestEmitter::with_store("out", 100);
        e.script([Step::Fail]);
        let p = one(&e, &dir);
        accept(&p, &["1", "2"]).await.unwrap();
        accept(&p, &["3"]).await.unwrap();
        let j = journal(&p);
        // The cursor passes both records: 1 and 2 are owed by the store now.
        until("3 delivered, the cursor past both records", || {
            e.ids() == ["3"] && at(&j, "out") == Some(2)
        })
        .await;
        assert_eq!(stored(&e), ["1", "2"]);
        // A resend of 1 is under way (held) when the crash comes.
        e.hold();
        let wait = Wait::For(Duration::from_secs(1));
        assert_eq!(p.resend_failures("out", 1, wait.clone()).await.unwrap(), 1);
        assert_eq!(stored(&e), ["2"]);
        assert!(j.snapshot().failure_disk_bytes > 0);
        j.crash().await;

        let again = TestEmitter::with_store("out", 100);
        let p = one(&again, &dir);
        assert_eq!(
            stored(&again),
            ["1", "2"],
            "both come back, the one being resent too"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(again.ids().is_empty(), "no record replayed: none was owed");
        assert_eq!(p.resend_failures("out", 10, wait).await.unwrap(), 2);
        stop(&p).await;
        assert_eq!(again.ids(), ["1", "2"]);

        // Resent and done: gone from the file too.
        let third = TestEmitter::with_store("out", 100);
        let p = one(&third, &dir);
        assert!(stored(&third).is_empty(), "{:?}", stored(&third));
        stop(&p).await;
    }

    #[tokio::test]
    async fn a_second_gateway_on_one_directory_is_refused() {
        let dir = TempDir::new();
        let settings = JournalSettings {
            dir: dir.0.clone(),
            max_disk_bytes: BUDGET,
            cursor_interval: Duration::from_millis(10),
            sync_interval: None,
            orphan_grace: ORPHAN_GRACE,
            failure_store: (100, 1 << 20),
        };
        let j = Journal::open(settings.clone()).unwrap();
        let second = Journal::open(settings.clone()).unwrap_err();
        assert!(
            matches!(second, OpenError::Log(LogError::Locked { .. })),
            "{second:?}"
        );
        j.close().await;
        Journal::open(settings)
            .expect("free again once closed")
            .close()
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_removed_plugin_does_not_pin_the_log() {
        let dir = TempDir::new();
        let out = TestEmitter::new("out");
        let p = durable_pipeline(vec![out.clone()], 100, &dir.0, BUDGET);
        let plugin = TestEmitter::new("plugin");
        plugin.hold();
        p.add_emitter(plugin.clone(), true, Default::default())
            .unwrap();
        accept(&p, &["1"]).await.unwrap();
        let j = journal(&p);
        until("both cursors", || lock(&j.saved).len() == 2).await;
        assert_eq!(at(&j, "plugin"), Some(0), "it owes record 0");
        p.retire_plugin_emitter("plugin").unwrap();
        plugin.release();
        until("the plugin's cursor gone", || {
            !lock(&j.saved).contains_key("plugin")
        })
        .await;
        stop(&p).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plugin_that_registers_again_after_a_crash_gets_its_replay() {
        let dir = TempDir::new();
        let out = TestEmitter::new("out");
        let p = durable_pipeline(vec![out.clone()], 100, &dir.0, BUDGET);
        let plugin = TestEmitter::new("plugin");
        plugin.hold();
        p.add_emitter(plugin.clone(), true, Default::default())
            .unwrap();
        accept(&p, &["1", "2"]).await.unwrap();
        let j = journal(&p);
        until("the plugin's cursor", || at(&j, "plugin") == Some(0)).await;
        j.crash().await;

        let out2 = TestEmitter::new("out");
        let p2 = durable_pipeline(vec![out2.clone()], 100, &dir.0, BUDGET);
        let j2 = journal(&p2);
        // Not running yet: its saved cursor holds the log for it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(at(&j2, "plugin"), Some(0));
        let plugin2 = TestEmitter::new("plugin");
        p2.add_emitter(plugin2.clone(), true, Default::default())
            .unwrap();
        until("the plugin's replay", || plugin2.ids().len() == 2).await;
        assert_eq!(plugin2.ids(), ["1", "2"]);
        stop(&p2).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_crash_only_what_was_not_done_is_replayed_though_batches_finished_out_of_order()
    {
        let dir = TempDir::new();
        let p = durable_pipeline(vec![], 100, &dir.0, BUDGET);
        // Two calls at once: the first batch is stuck, the next ones finish.
        let e = TestEmitter::new("out");
        e.script([Step::Stall]);
        p.add_emitter(
            e.clone(),
            false,
            crate::pipeline::queue::EmitterOptions::default().in_flight(2),
        )
        .unwrap();
        for id in ["0", "1", "2", "3"] {
            accept(&p, &[id]).await.unwrap();
        }
        until("1, 2 and 3 delivered", || e.ids().len() == 3).await;
        let j = journal(&p);
        until("a save that calls them done", || {
            lock(&j.saved)
                .get("out")
                .is_some_and(|p| p.at == 0 && p.done == [(1, 4)])
        })
        .await;
        j.crash().await;

        let again = TestEmitter::new("out");
        let p2 = one(&again, &dir);
        until("the replay", || !again.ids().is_empty()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(again.ids(), ["0"], "only the stuck batch comes again");
        assert_eq!(p2.snapshot().durable.unwrap().replayed_events, 1);
        // Its position keeps what is done until the replay is past it.
        stop(&p2).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_cursors_file_replays_the_whole_log_instead_of_stopping_the_gateway() {
        let dir = TempDir::new();
        let first = TestEmitter::new("out");
        let p = one(&first, &dir);
        accept(&p, &["1", "2"]).await.unwrap();
        until("delivered and saved", || {
            first.ids().len() == 2 && at(&journal(&p), "out") == Some(1)
        })
        .await;
        first.hold();
        accept(&p, &["3"]).await.unwrap();
        journal(&p).crash().await;
        // A bit flips in the cursors file.
        let path = dir.0.join("CURSORS");
        let mut bytes = std::fs::read(&path).unwrap();
        let i = bytes.iter().position(|b| *b == b'\t').unwrap() + 1;
        bytes[i] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();

        let again = TestEmitter::new("out");
        let p2 = one(&again, &dir);
        until("the whole log again", || again.ids().len() == 3).await;
        assert_eq!(again.ids(), ["1", "2", "3"], "duplicates, nothing lost");
        assert!(p2.snapshot().durable.unwrap().cursors_damaged);
        let aside = std::fs::read_dir(&dir.0)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("CURSORS.damaged-")
            });
        assert!(aside, "the damaged file is kept for a look");
        stop(&p2).await;
        // The next start is a normal one.
        let third = TestEmitter::new("out");
        let p3 = one(&third, &dir);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(third.ids().is_empty(), "{:?}", third.ids());
        assert!(!p3.snapshot().durable.unwrap().cursors_damaged);
        stop(&p3).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plugin_that_does_not_come_back_in_time_finds_its_events_in_its_failure_store() {
        let dir = TempDir::new();
        let out = TestEmitter::new("out");
        let p = durable_pipeline(vec![out.clone()], 100, &dir.0, BUDGET);
        let plugin = TestEmitter::new("plugin");
        plugin.hold();
        p.add_emitter(plugin.clone(), true, Default::default())
            .unwrap();
        accept(&p, &["1", "2"]).await.unwrap();
        let mut only_out = events(&["3"]);
        only_out[0].route_to = ["out"].into_iter().collect();
        p.accept("t", only_out, Wait::For(Duration::from_secs(1)))
            .await
            .unwrap();
        accept(&p, &["4"]).await.unwrap();
        let j = journal(&p);
        until("the plugin's cursor", || at(&j, "plugin") == Some(0)).await;
        j.crash().await;

        // Restarted with a short grace, and the plugin stays away.
        let out2 = TestEmitter::new("out");
        let p2 = crate::pipeline::testing::durable_pipeline_with_grace(
            vec![out2.clone()],
            100,
            &dir.0,
            BUDGET,
            Duration::from_millis(100),
        );
        let j2 = journal(&p2);
        until("its cursor goes once its events are stored", || {
            !lock(&j2.saved).contains_key("plugin")
        })
        .await;
        let d = p2.snapshot().durable.unwrap();
        assert_eq!(d.cursors_dropped, 1);
        assert_eq!(
            j2.counters.orphaned_events.load(Relaxed),
            3,
            "1, 2, 4: not 3"
        );
        // The log no longer waits for it: delivered segments can go.
        until("out's replay", || out2.ids().len() == 4).await;

        // It comes back: its failure store holds what it had not delivered.
        let plugin2 = TestEmitter::with_store("plugin", 100);
        p2.add_emitter(plugin2.clone(), true, Default::default())
            .unwrap();
        let held: Vec<String> = plugin2
            .store()
            .list(0, 100)
            .iter()
            .map(|f| f.event.id.to_string())
            .collect();
        assert_eq!(held, ["1", "2", "4"]);
        assert!(plugin2.ids().is_empty(), "no replay on top of the store");
        stop(&p2).await;
    }
}
