//! Group commit: one thread owns the [`Log`], takes every record that
//! arrived while it was busy, appends them all, syncs once, and only then
//! tells each caller its record number. So an acknowledgement always follows
//! a sync, and a sync covers every request that arrived meanwhile, never one
//! per event.

use super::{Log, LogError};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use tokio::sync::{mpsc, oneshot};

/// Counts of the committer's work, for metrics and benchmarks.
#[derive(Debug, Default)]
pub(crate) struct CommitStats {
    /// Records written and synced.
    pub(crate) records: AtomicU64,
    /// Syncs: each covers every record that came in since the one before.
    pub(crate) syncs: AtomicU64,
    /// Bytes of payload written.
    pub(crate) bytes: AtomicU64,
    /// Appends or syncs that failed (their callers were told).
    pub(crate) failures: AtomicU64,
}

struct Job {
    payload: Vec<u8>,
    done: oneshot::Sender<Result<u64, Arc<LogError>>>,
}

/// Why a record was not committed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum CommitError {
    /// Writing or syncing it failed; it is not acknowledged.
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
        write!(f, "Job({} bytes)", self.payload.len())
    }
}

impl Committer {
    /// Starts the thread that owns `log`; it hands the log back when it
    /// stops (every handle dropped).
    pub(crate) fn start(log: Log) -> (Committer, std::thread::JoinHandle<Log>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(CommitStats::default());
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("polku-commit".into())
            .spawn(move || run(log, rx, &thread_stats))
            .expect("the commit thread starts");
        (Committer { tx, stats }, thread)
    }

    /// The committer's counts.
    pub(crate) fn stats(&self) -> &Arc<CommitStats> {
        &self.stats
    }

    /// Writes `payload` as one record; resolves with its number once it is
    /// synced to disk.
    pub(crate) async fn commit(&self, payload: Vec<u8>) -> Result<u64, CommitError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Job { payload, done })
            .map_err(|_| CommitError::Closed)?;
        match rx.await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(CommitError::Log(e)),
            Err(_) => Err(CommitError::Closed),
        }
    }
}

fn run(mut log: Log, mut rx: mpsc::UnboundedReceiver<Job>, stats: &CommitStats) -> Log {
    let mut jobs: Vec<Job> = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        jobs.push(first);
        while let Ok(more) = rx.try_recv() {
            jobs.push(more);
        }
        // Append everything that came in, then one sync for all of it.
        let mut written: Vec<(Job, Result<u64, Arc<LogError>>)> = Vec::with_capacity(jobs.len());
        for job in jobs.drain(..) {
            let r = log.append(&job.payload).map_err(Arc::new);
            written.push((job, r));
        }
        let synced = log.sync().map_err(Arc::new);
        stats.syncs.fetch_add(1, Relaxed);
        for (job, r) in written {
            let r = match (&synced, r) {
                (Ok(()), Ok(n)) => {
                    stats.records.fetch_add(1, Relaxed);
                    stats.bytes.fetch_add(job.payload.len() as u64, Relaxed);
                    Ok(n)
                }
                // Written but not synced: not on disk, so not acknowledged.
                (Err(e), Ok(_)) => {
                    stats.failures.fetch_add(1, Relaxed);
                    Err(e.clone())
                }
                (_, Err(e)) => {
                    stats.failures.fetch_add(1, Relaxed);
                    Err(e)
                }
            };
            let _ = job.done.send(r);
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
        let (c, thread) = Committer::start(log);
        for i in 0..10u8 {
            assert_eq!(c.commit(vec![i; 10]).await.unwrap(), u64::from(i));
        }
        assert_eq!(c.stats().records.load(Relaxed), 10);
        assert_eq!(c.stats().bytes.load(Relaxed), 100);
        drop(c);
        let mut log = thread.join().unwrap();
        assert_eq!(log.read(0, 100).unwrap().len(), 10);
    }

    /// Many callers at once share syncs: far fewer syncs than records.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_at_once_share_one_sync() {
        let dir = TempDir::new();
        let (log, _) = Log::open(&dir.0, 1 << 20).unwrap();
        let (c, thread) = Committer::start(log);
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
        let (c, thread) = Committer::start(log);
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
}
