//! Group commit: one thread owns the [`Log`], takes every record that
//! arrived while it was busy, appends them all, syncs once, and only then
//! tells each caller its record number. So an acknowledgement always follows
//! a sync, and a sync covers every request that arrived meanwhile, never one
//! per event.
//!
//! Each record may carry work to do once it is durable, run on the thread in
//! record order before anyone is answered (the buffer queues the batch for
//! its emitters there, so that a caller that went away cannot leave a
//! durable record that nobody delivers). After that work, the thread
//! publishes the log's [`next`](CommitStats::next): every record below it is
//! durable and its work done.
//!
//! A failed append or sync cuts the log back to its last sync
//! ([`Log::rollback`]) and fails every record not yet synced; a record past
//! the disk budget fails alone, before anything is written.

use super::record::HEADER;
use super::{Log, LogError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed, Ordering::Release};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Counts of the committer's work, for metrics and benchmarks.
#[derive(Debug, Default)]
pub(crate) struct CommitStats {
    /// Records written and synced.
    pub(crate) records: AtomicU64,
    /// Syncs: each covers every record that came in since the one before.
    pub(crate) syncs: AtomicU64,
    /// Bytes written (records with their headers).
    pub(crate) bytes: AtomicU64,
    /// Records refused or lost to a failed append or sync (their callers
    /// were told).
    pub(crate) failures: AtomicU64,
    /// Records refused because the disk budget was full.
    pub(crate) full: AtomicU64,
    /// Bytes the log's segments take now.
    pub(crate) disk_bytes: AtomicU64,
    /// Every record below this number is durable and its work is done
    /// (stored with `Release`: load it with `Acquire`).
    pub(crate) next: AtomicU64,
    /// Segments removed by trims.
    pub(crate) trimmed: AtomicU64,
    /// With a sync interval: syncs that failed after their records were
    /// acknowledged (a machine crash may lose those).
    pub(crate) late_sync_failures: AtomicU64,
}

/// Work run on the committing thread once a record is durable, with its number.
pub(crate) type OnDurable = Box<dyn FnOnce(u64) + Send>;

type Answer<T> = oneshot::Sender<Result<T, Arc<LogError>>>;

enum Job {
    Record {
        payload: Vec<u8>,
        on_durable: Option<OnDurable>,
        done: Answer<u64>,
    },
    Trim {
        below: u64,
        done: Answer<usize>,
    },
    /// With a sync interval: sync what was written since the last sync.
    Sync,
    /// Finish what came before, then stop (the log is handed back).
    Stop,
}

/// Why a record was not committed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum CommitError {
    /// Writing or syncing it failed, or it did not fit; it is not
    /// acknowledged.
    #[error(transparent)]
    Log(Arc<LogError>),
    /// The committer has stopped.
    #[error("the buffer log is closed")]
    Closed,
}

/// The handle to the committing thread; the thread stops when every handle
/// is gone, after committing what it was given.
#[derive(Debug, Clone)]
pub(crate) struct Committer {
    tx: mpsc::UnboundedSender<Job>,
    stats: Arc<CommitStats>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Record { payload, .. } => write!(f, "Record({} bytes)", payload.len()),
            Job::Trim { below, .. } => write!(f, "Trim(below {below})"),
            Job::Sync => write!(f, "Sync"),
            Job::Stop => write!(f, "Stop"),
        }
    }
}

impl Committer {
    /// Starts the thread that owns `log`, keeping it within `max_disk_bytes`;
    /// it hands the log back when it stops (every handle dropped). With a
    /// `sync_interval`, records are answered once the kernel has them and
    /// synced at most that long after.
    pub(crate) fn start(
        log: Log,
        max_disk_bytes: u64,
        sync_interval: Option<Duration>,
    ) -> (Committer, std::thread::JoinHandle<Log>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(CommitStats::default());
        stats.next.store(log.next(), Release);
        stats.disk_bytes.store(log.disk_bytes(), Relaxed);
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("polku-commit".into())
            .spawn(move || run(log, max_disk_bytes, sync_interval, rx, &thread_stats))
            .expect("the commit thread starts");
        if let Some(every) = sync_interval {
            // The ticker ends once the committer is gone.
            let weak = tx.downgrade();
            std::thread::Builder::new()
                .name("polku-sync-tick".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(every);
                        match weak.upgrade() {
                            Some(tx) if tx.send(Job::Sync).is_ok() => {}
                            _ => return,
                        }
                    }
                })
                .expect("the sync ticker starts");
        }
        (Committer { tx, stats }, thread)
    }

    /// The committer's counts.
    pub(crate) fn stats(&self) -> &Arc<CommitStats> {
        &self.stats
    }

    /// Writes `payload` as one record; resolves with its number once it is
    /// synced to disk.
    #[cfg(test)]
    pub(crate) async fn commit(&self, payload: Vec<u8>) -> Result<u64, CommitError> {
        self.commit_then(payload, None).await
    }

    /// Writes `payload` as one record, runs `on_durable` with its number on
    /// the committing thread once it is synced (even if this future is
    /// dropped by then), then resolves with the number. A record that is not
    /// committed never runs `on_durable`.
    pub(crate) async fn commit_then(
        &self,
        payload: Vec<u8>,
        on_durable: Option<OnDurable>,
    ) -> Result<u64, CommitError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Job::Record {
                payload,
                on_durable,
                done,
            })
            .map_err(|_| CommitError::Closed)?;
        match rx.await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(CommitError::Log(e)),
            Err(_) => Err(CommitError::Closed),
        }
    }

    /// Stops the thread once it has committed what it was given; later
    /// commits fail with [`CommitError::Closed`].
    pub(crate) fn stop(&self) {
        let _ = self.tx.send(Job::Stop);
    }

    /// Removes the segments whose records are all below `below`, in order
    /// with the records committed so far; gives how many went.
    pub(crate) async fn trim(&self, below: u64) -> Result<usize, CommitError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Job::Trim { below, done })
            .map_err(|_| CommitError::Closed)?;
        match rx.await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(CommitError::Log(e)),
            Err(_) => Err(CommitError::Closed),
        }
    }
}

struct Written {
    payload_len: usize,
    on_durable: Option<OnDurable>,
    done: Answer<u64>,
    number: u64,
}

fn run(
    mut log: Log,
    max_disk_bytes: u64,
    sync_interval: Option<Duration>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    stats: &CommitStats,
) -> Log {
    let mut last_sync = Instant::now();
    // With a sync interval: records answered but not yet synced.
    let mut unsynced = false;
    let mut jobs: Vec<Job> = Vec::new();
    let mut written: Vec<Written> = Vec::new();
    // Set when a failed write could not be cut back: the log's tail is in
    // doubt, so nothing more is written to it until a restart recovers it.
    let mut broken: Option<Arc<LogError>> = None;
    while let Some(first) = rx.blocking_recv() {
        jobs.push(first);
        while let Ok(more) = rx.try_recv() {
            jobs.push(more);
        }
        // Append everything that came in, then one sync for all of it.
        let mut failed: Option<Arc<LogError>> = None;
        let mut trims: Vec<(u64, Answer<usize>)> = Vec::new();
        let mut stop = false;
        let mut tick = false;
        for job in jobs.drain(..) {
            let (payload, on_durable, done) = match job {
                Job::Trim { below, done } => {
                    trims.push((below, done));
                    continue;
                }
                Job::Sync => {
                    tick = true;
                    continue;
                }
                Job::Stop => {
                    // What came after the stop is answered `Closed` (its
                    // sender is dropped with the channel).
                    stop = true;
                    break;
                }
                Job::Record {
                    payload,
                    on_durable,
                    done,
                } => (payload, on_durable, done),
            };
            if let Some(e) = failed.as_ref().or(broken.as_ref()) {
                // After a failed append, nothing more goes in this round.
                stats.failures.fetch_add(1, Relaxed);
                let _ = done.send(Err(e.clone()));
                continue;
            }
            let len = (HEADER + payload.len()) as u64;
            let used = log.disk_bytes();
            if used + len > max_disk_bytes {
                stats.failures.fetch_add(1, Relaxed);
                stats.full.fetch_add(1, Relaxed);
                let full = LogError::Full {
                    used,
                    max: max_disk_bytes,
                    len,
                };
                let _ = done.send(Err(Arc::new(full)));
                continue;
            }
            match log.append(&payload) {
                Ok(number) => written.push(Written {
                    payload_len: payload.len(),
                    on_durable,
                    done,
                    number,
                }),
                Err(e @ LogError::TooLarge { .. }) => {
                    // Refused before anything was written.
                    stats.failures.fetch_add(1, Relaxed);
                    let _ = done.send(Err(Arc::new(e)));
                }
                Err(e) => {
                    stats.failures.fetch_add(1, Relaxed);
                    let e = Arc::new(e);
                    let _ = done.send(Err(e.clone()));
                    failed = Some(e);
                }
            }
        }
        if failed.is_none() && !written.is_empty() {
            match sync_interval {
                None => {
                    stats.syncs.fetch_add(1, Relaxed);
                    if let Err(e) = log.sync() {
                        failed = Some(Arc::new(e));
                    }
                }
                // Answered once the kernel has it; synced on the tick.
                Some(_) => match log.write_out() {
                    Ok(()) => unsynced = true,
                    Err(e) => failed = Some(Arc::new(e)),
                },
            }
        }
        let due = sync_interval.is_some_and(|every| last_sync.elapsed() >= every);
        if unsynced && (tick || due || stop) {
            stats.syncs.fetch_add(1, Relaxed);
            last_sync = Instant::now();
            unsynced = false;
            if let Err(e) = log.sync() {
                // Too late to refuse: these records were answered.
                stats.late_sync_failures.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "buffer log: a sync failed after its records were acknowledged (POLKU_BUFFER_SYNC_INTERVAL); a machine crash now may lose them");
            }
        }
        if let Some(e) = failed {
            // Written but not synced: not on disk, so not acknowledged, and
            // cut off so that what comes next follows a whole record.
            tracing::error!(error = %e, records = written.len(), "buffer log: a write or sync failed; the records not yet synced are refused");
            if let Err(again) = log.rollback() {
                tracing::error!(error = %again, "buffer log: could not cut the log back to its last sync; it takes no more records until the gateway restarts");
                broken = Some(Arc::new(again));
            }
            for w in written.drain(..) {
                stats.failures.fetch_add(1, Relaxed);
                let _ = w.done.send(Err(e.clone()));
            }
        }
        // Durable: the work of each record, in order, then the new `next`,
        // then the answers.
        let mut answers = Vec::with_capacity(written.len());
        for w in written.drain(..) {
            stats.records.fetch_add(1, Relaxed);
            stats
                .bytes
                .fetch_add((HEADER + w.payload_len) as u64, Relaxed);
            if let Some(work) = w.on_durable {
                work(w.number);
            }
            answers.push((w.done, w.number));
        }
        stats.next.store(log.next(), Release);
        stats.disk_bytes.store(log.disk_bytes(), Relaxed);
        for (done, number) in answers {
            let _ = done.send(Ok(number));
        }
        for (below, done) in trims {
            let r = log.trim(below).map_err(Arc::new);
            if let Ok(n) = &r {
                stats.trimmed.fetch_add(*n as u64, Relaxed);
            }
            stats.disk_bytes.store(log.disk_bytes(), Relaxed);
            let _ = done.send(r);
        }
        if stop {
            break;
        }
    }
    log
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::log::tests::TempDir;

    #[tokio::test]
    async fn every_commit_is_on_disk_when_it_returns() {
        let dir = TempDir::new();
        let (log, _) = Log::open(&dir.0, 1 << 20).unwrap();
        let (c, thread) = Committer::start(log, u64::MAX, None);
        for i in 0..10u8 {
            assert_eq!(c.commit(vec![i; 10]).await.unwrap(), u64::from(i));
        }
        assert_eq!(c.stats().records.load(Relaxed), 10);
        assert_eq!(
            c.stats().bytes.load(Relaxed),
            180,
            "10 records of 8 + 10 bytes"
        );
        drop(c);
        let mut log = thread.join().unwrap();
        assert_eq!(log.read(0, 100).unwrap().len(), 10);
    }

    /// With a sync interval, a commit is answered once the kernel has its
    /// record (another reader of the file sees it), before any sync; the
    /// sync comes on the tick, or at the stop.
    #[tokio::test]
    async fn a_sync_interval_answers_before_the_sync_and_syncs_on_the_tick() {
        let dir = TempDir::new();
        let (log, _) = Log::open(&dir.0, 1 << 20).unwrap();
        let (c, thread) = Committer::start(log, u64::MAX, Some(Duration::from_secs(3600)));
        for i in 0..50u8 {
            c.commit(vec![i; 10]).await.unwrap();
        }
        assert_eq!(c.stats().syncs.load(Relaxed), 0, "no sync yet");
        let mut seen = Vec::new();
        crate::pipeline::log::read_range(&dir.0, 0, 50, |n, p| {
            seen.push((n, p[0]));
            true
        })
        .unwrap();
        let want: Vec<(u64, u8)> = (0..50u8).map(|i| (u64::from(i), i)).collect();
        assert_eq!(seen, want, "every answered record is in the file");
        c.stop();
        drop(c);
        let log = thread.join().unwrap();
        assert_eq!(log.next(), 50);

        let dir = TempDir::new();
        let (log, _) = Log::open(&dir.0, 1 << 20).unwrap();
        let (c, thread) = Committer::start(log, u64::MAX, Some(Duration::from_millis(20)));
        c.commit(vec![1; 10]).await.unwrap();
        let mut waited = 0;
        while c.stats().syncs.load(Relaxed) == 0 {
            assert!(waited < 500, "the tick never synced");
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += 1;
        }
        c.stop();
        drop(c);
        thread.join().unwrap();
    }

    /// Many callers at once share syncs: far fewer syncs than records.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_at_once_share_one_sync() {
        let dir = TempDir::new();
        let (log, _) = Log::open(&dir.0, 1 << 20).unwrap();
        let (c, thread) = Committer::start(log, u64::MAX, None);
        let all = (0..200u32).map(|i| {
            let c = c.clone();
            async move { c.commit(i.to_le_bytes().to_vec()).await.unwrap() }
        });
        let mut numbers = futures_util::future::join_all(all).await;
        numbers.sort_unstable();
        assert_eq!(
            numbers,
            (0..200).collect::<Vec<u64>>(),
            "each got its own number"
        );
        let syncs = c.stats().syncs.load(Relaxed);
        assert!(syncs < 100, "{syncs} syncs for 200 records");
        drop(c);
        thread.join().unwrap();
    }

    #[tokio::test]
    async fn a_refused_record_fails_its_caller_only() {
        let dir = TempDir::new();
        let (log, _) = Log::open(&dir.0, 1 << 20).unwrap();
        let (c, thread) = Committer::start(log, u64::MAX, None);
        let big = vec![0u8; super::super::record::MAX_RECORD + 1];
        let (a, b) = tokio::join!(c.commit(b"ok".to_vec()), c.commit(big));
        assert!(a.is_ok());
        assert!(
            matches!(&b, Err(CommitError::Log(e)) if matches!(**e, LogError::TooLarge { .. })),
            "{b:?}"
        );
        assert_eq!(c.stats().failures.load(Relaxed), 1);
        drop(c);
        let mut log = thread.join().unwrap();
        assert_eq!(log.read(0, 10).unwrap().len(), 1);
    }

    /// Past the disk budget a record is refused alone, before anything is
    /// written; the records that fit go in.
    #[tokio::test]
    async fn a_record_past_the_budget_is_refused_alone() {
        let dir = TempDir::new();
        let (log, _) = Log::open(&dir.0, 1 << 20).unwrap();
        let (c, thread) = Committer::start(log, 100, None);
        assert!(c.commit(vec![0; 50]).await.is_ok());
        let r = c.commit(vec![0; 50]).await;
        assert!(
            matches!(&r, Err(CommitError::Log(e)) if matches!(**e, LogError::Full { used: 58, max: 100, len: 58 })),
            "{r:?}"
        );
        assert!(c.commit(vec![0; 10]).await.is_ok(), "a smaller one fits");
        assert_eq!(c.stats().full.load(Relaxed), 1);
        assert_eq!(c.stats().disk_bytes.load(Relaxed), 76);
        c.stop();
        let mut log = thread.join().unwrap();
        assert_eq!(log.read(0, 10).unwrap().len(), 2);
    }

    /// The work of each record runs in record order, after the sync and
    /// before its caller hears; `next` then covers it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_runs_in_order_once_durable_and_before_the_answer() {
        let dir = TempDir::new();
        let (log, _) = Log::open(&dir.0, 1 << 20).unwrap();
        let (c, thread) = Committer::start(log, u64::MAX, None);
        let seen: Arc<std::sync::Mutex<Vec<u64>>> = Default::default();
        let all = (0..50u32).map(|i| {
            let (c, seen) = (c.clone(), seen.clone());
            async move {
                let mine = seen.clone();
                let n = c
                    .commit_then(
                        i.to_le_bytes().to_vec(),
                        Some(Box::new(move |n| mine.lock().unwrap().push(n))),
                    )
                    .await
                    .unwrap();
                assert!(
                    seen.lock().unwrap().contains(&n),
                    "work ran before the answer"
                );
                assert!(c.stats().next.load(std::sync::atomic::Ordering::Acquire) > n);
            }
        });
        futures_util::future::join_all(all).await;
        assert_eq!(*seen.lock().unwrap(), (0..50).collect::<Vec<u64>>());
        c.stop();
        thread.join().unwrap();
    }
}
