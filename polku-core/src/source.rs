//! Sources: components that read events in by themselves (a Kafka consumer
//! group) instead of waiting for a client to send them, and the [`Sink`]
//! they hand what they read to.
//!
//! A source must know when what it handed over is safe, so that it can
//! record how far it got (commit its offsets) and never past an event the
//! gateway could still lose. The sink tells it by dropping a [`Settled`].
//!
//! ```
//! use bytes::Bytes;
//! use polku_core::source::{RecordBatch, Settled};
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicBool, Ordering};
//!
//! let safe = Arc::new(AtomicBool::new(false));
//! let flag = safe.clone();
//! let settled = Settled::new(move || flag.store(true, Ordering::Release));
//! let batch = RecordBatch {
//!     source: "orders".into(),
//!     format: "json".into(),
//!     records: vec![Bytes::from_static(br#"{"event_type":"order.placed"}"#)],
//! };
//! assert_eq!(batch.records.len(), 1);
//! drop(settled); // what a sink does once every accepted event is safe
//! assert!(safe.load(Ordering::Acquire));
//! ```

use crate::RecordError;
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;

/// Runs its callback once, when dropped. A [`Sink`] drops it when every
/// event it accepted from a batch is safe: done by every emitter (delivered,
/// or given up on into a failure store) with the buffer in memory, or
/// synced to disk with the durable buffer.
pub struct Settled(Option<Box<dyn FnOnce() + Send + Sync>>);

impl Settled {
    /// Calls `f` when dropped.
    pub fn new(f: impl FnOnce() + Send + Sync + 'static) -> Self {
        Settled(Some(Box::new(f)))
    }

    /// Nothing to call: for batches nobody waits on.
    pub fn none() -> Self {
        Settled(None)
    }
}

impl Drop for Settled {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

impl std::fmt::Debug for Settled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Settled(pending)"
        } else {
            "Settled(done)"
        })
    }
}

/// Records a source read, handed to the pipeline as one batch. Each record
/// is decoded alone (one Kafka record: one event, or a few).
#[derive(Debug, Clone, Default)]
pub struct RecordBatch {
    /// The source its events get when they name none (a topic's name).
    pub source: String,
    /// How to read each record: `json`, `protobuf` (an encoded
    /// `polku.v1.Event`), or the format of any ingestor the gateway runs.
    pub format: String,
    /// The records, in the order they were read.
    pub records: Vec<Bytes>,
}

/// What the pipeline made of a [`RecordBatch`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Events accepted: they will reach their emitters.
    pub accepted: usize,
    /// Events middleware dropped on purpose (filtered, sampled, deduplicated).
    pub dropped: usize,
    /// Events refused one by one (over a limit, no emitter for their route),
    /// and the first refusal's reason.
    pub refused: usize,
    /// Why the first refused event was refused.
    pub first_refusal: Option<String>,
    /// Records that could not be decoded, by their index in the batch: none
    /// of their events went in.
    pub undecodable: Vec<RecordError>,
}

/// Why a sink took nothing of a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The gateway is stopping: the batch was not taken.
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// A passing refusal (the disk budget is full, an ingestor plugin is
    /// away): the same batch may go in later.
    #[error("the batch was refused for now: {0}")]
    Busy(String),
    /// This batch will not go in as it is (a middleware failed on it).
    #[error("the batch was refused: {0}")]
    Refused(String),
}

/// A record no ingestor could read, for the gateway to keep (see
/// [`Sink::keep_unreadable`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// The record as it was read.
    pub payload: Bytes,
    /// Why it could not be read.
    pub reason: String,
    /// Where it came from, as name and value pairs (`kafka.topic`,
    /// `kafka.partition`, `kafka.offset`), kept as the stored event's
    /// metadata.
    pub origin: Vec<(String, String)>,
}

/// Where a source puts what it reads: the gateway's pipeline.
#[async_trait]
pub trait Sink: Send + Sync + std::fmt::Debug {
    /// Decodes each record and accepts the events as one batch. Waits for
    /// room in the buffer, however long it takes (that wait is the source's
    /// backpressure), until the gateway stops.
    ///
    /// `settled` is dropped once every accepted event is safe (see
    /// [`Settled`]), at once if none was accepted. On an error nothing of
    /// the batch was accepted, and `settled` has been dropped.
    async fn accept_records(
        &self,
        batch: RecordBatch,
        settled: Settled,
    ) -> Result<BatchOutcome, SinkError>;

    /// Keeps records of the source `source` that could not be read, for a
    /// source with nowhere else to put them (no dead-letter topic): in the
    /// gateway's store of unreadable records, on disk with the durable
    /// buffer. Resolves once they are kept, so the source may then move
    /// past them. The default keeps nothing and says so.
    async fn keep_unreadable(
        &self,
        source: &str,
        records: Vec<Unreadable>,
    ) -> Result<(), SinkError> {
        let _ = records;
        Err(SinkError::Refused(format!(
            "this sink keeps no unreadable records (source {source})"
        )))
    }
}

/// A source that could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("source {source_name} could not start: {message}")]
pub struct SourceError {
    /// The source's name.
    pub source_name: String,
    /// What went wrong.
    pub message: String,
}

/// A component that reads events in by itself: a Kafka consumer group.
pub trait Source: Send + Sync + std::fmt::Debug {
    /// The source's name, for logs and metrics.
    fn name(&self) -> &str;

    /// Starts reading into `sink`, in the background, until stopped.
    fn start(&self, sink: Arc<dyn Sink>) -> Result<Box<dyn RunningSource>, SourceError>;
}

/// A source that is reading.
#[async_trait]
pub trait RunningSource: Send + Sync + std::fmt::Debug {
    /// Stops reading new records (the first step of a shutdown); what was
    /// already handed over goes on.
    fn stop_reading(&self);

    /// Once the pipeline has drained: records how far the source got (its
    /// last commit) and lets go of its resources.
    async fn finish(&self);

    /// What it has done so far, for metrics.
    fn stats(&self) -> SourceStats;
}

/// A source's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// The source's name.
    pub name: String,
    /// Records read.
    pub records: u64,
    /// Events the pipeline accepted from them.
    pub accepted: u64,
    /// Records that could not be decoded.
    pub undecodable: u64,
    /// Undecodable records written to the dead-letter destination.
    pub dead_lettered: u64,
    /// Undecodable records kept in the gateway's store of unreadable
    /// records (no dead-letter destination set).
    pub unreadable_kept: u64,
    /// Undecodable records with nowhere to go (no dead-letter destination,
    /// failure stores turned off): logged and passed over.
    pub unreadable_skipped: u64,
    /// Events refused one by one (limits, routing).
    pub refused: u64,
    /// Batches the pipeline refused for now and that were tried again.
    pub retried_batches: u64,
    /// Positions recorded (offset commits).
    pub commits: u64,
    /// Failed offset commits.
    pub commit_failures: u64,
    /// Times reading paused because the pipeline was full.
    pub pauses: u64,
    /// Whether reading is paused now.
    pub paused: bool,
    /// Partitions (or the like) the source reads now.
    pub assigned: u64,
    /// Rebalances (partitions taken away or given).
    pub rebalances: u64,
    /// Records handed over but not settled when their partition was taken
    /// away: the next owner reads them again (duplicates, at least once).
    pub unsettled_at_revoke: u64,
    /// Records in the partitions it reads that are not yet committed (read
    /// and not yet safe, or not read yet), as last reported by the client.
    pub lag: u64,
}
