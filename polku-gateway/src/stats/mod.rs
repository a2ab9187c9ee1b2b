//! Counters for every stage: received, accepted, dropped, rejected by reason,
//! and emitted and failed per emitter. Plain atomics: one add per batch.

mod latency;

pub(crate) use latency::{
    BUCKETS, ByOutcome, GrpcMethod, GrpcMetrics, HistogramSnapshot, LatencyHistogram,
    RequestMetrics,
};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why something was refused. The names are the metric label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// A gRPC message that is not valid protobuf.
    MalformedProtobuf,
    /// Raw bytes that the ingestor could not read at all (invalid JSON, ...).
    MalformedInput,
    /// A message over the size limit.
    TooLarge,
    /// Raw bytes with a format that no ingestor reads.
    UnknownFormat,
    /// Raw bytes from a source that no ingestor serves, with no format.
    UnknownSource,
    /// A request with neither events nor raw bytes.
    EmptyRequest,
    /// One record that the ingestor could not turn into an event.
    IngestFailed,
    /// The ingestor could not be reached.
    IngestorUnavailable,
    /// An event whose route_to names no emitter, or with no emitter at all.
    NoRoute,
    /// The buffer stayed full for the whole wait.
    BufferFull,
    /// A batch larger than the whole buffer.
    BatchTooLarge,
    /// A middleware failed (not a deliberate drop).
    MiddlewareFailed,
    /// The gateway is shutting down.
    ShuttingDown,
    /// No valid ingest token.
    Unauthenticated,
    /// A request with more events than `POLKU_MAX_EVENTS_PER_REQUEST`.
    TooManyEvents,
    /// An event over a per-event limit (id length, metadata entries or bytes).
    InvalidEvent,
    /// The durable buffer's disk budget was full.
    DiskFull,
    /// The durable buffer could not write or sync its log.
    DiskError,
}

impl RejectReason {
    /// Every reason, in order.
    pub const ALL: [RejectReason; 18] = [
        RejectReason::MalformedProtobuf,
        RejectReason::MalformedInput,
        RejectReason::TooLarge,
        RejectReason::UnknownFormat,
        RejectReason::UnknownSource,
        RejectReason::EmptyRequest,
        RejectReason::IngestFailed,
        RejectReason::IngestorUnavailable,
        RejectReason::NoRoute,
        RejectReason::BufferFull,
        RejectReason::BatchTooLarge,
        RejectReason::MiddlewareFailed,
        RejectReason::ShuttingDown,
        RejectReason::Unauthenticated,
        RejectReason::TooManyEvents,
        RejectReason::InvalidEvent,
        RejectReason::DiskFull,
        RejectReason::DiskError,
    ];

    /// The label value, for example `malformed_protobuf`.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::MalformedProtobuf => "malformed_protobuf",
            RejectReason::MalformedInput => "malformed_input",
            RejectReason::TooLarge => "too_large",
            RejectReason::UnknownFormat => "unknown_format",
            RejectReason::UnknownSource => "unknown_source",
            RejectReason::EmptyRequest => "empty_request",
            RejectReason::IngestFailed => "ingest_failed",
            RejectReason::IngestorUnavailable => "ingestor_unavailable",
            RejectReason::NoRoute => "no_route",
            RejectReason::BufferFull => "buffer_full",
            RejectReason::BatchTooLarge => "batch_too_large",
            RejectReason::MiddlewareFailed => "middleware_failed",
            RejectReason::ShuttingDown => "shutting_down",
            RejectReason::Unauthenticated => "unauthenticated",
            RejectReason::TooManyEvents => "too_many_events",
            RejectReason::InvalidEvent => "invalid_event",
            RejectReason::DiskFull => "disk_full",
            RejectReason::DiskError => "disk_error",
        }
    }

    /// The reason for a label value.
    pub fn from_str_name(s: &str) -> Option<RejectReason> {
        RejectReason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    fn idx(self) -> usize {
        RejectReason::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or_default()
    }
}

/// The gateway's counters. Shared by every request handler and emitter task.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    received: AtomicU64,
    accepted: AtomicU64,
    generated: AtomicU64,
    dropped: AtomicU64,
    rejected_events: [AtomicU64; RejectReason::ALL.len()],
    rejected_requests: [AtomicU64; RejectReason::ALL.len()],
}

impl Stats {
    pub(crate) fn received(&self, n: usize) {
        self.received.fetch_add(n as u64, Relaxed);
    }
    pub(crate) fn accepted(&self, n: usize) {
        self.accepted.fetch_add(n as u64, Relaxed);
    }
    pub(crate) fn generated(&self, n: usize) {
        self.generated.fetch_add(n as u64, Relaxed);
    }
    pub(crate) fn dropped(&self, n: usize) {
        self.dropped.fetch_add(n as u64, Relaxed);
    }
    pub(crate) fn rejected_events(&self, reason: RejectReason, n: usize) {
        if n > 0 {
            self.rejected_events[reason.idx()].fetch_add(n as u64, Relaxed);
        }
    }
    pub(crate) fn rejected_request(&self, reason: RejectReason) {
        self.rejected_requests[reason.idx()].fetch_add(1, Relaxed);
    }
}

/// Counters of one emitter.
#[derive(Debug, Default)]
pub(crate) struct EmitterStats {
    pub(crate) emitted: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) queued: AtomicU64,
    /// Events its queue dropped because it was full (drop policies only).
    pub(crate) dropped_queue_full: AtomicU64,
    /// Events put back in its queue from its failure store.
    pub(crate) resent: AtomicU64,
    /// From a request's arrival to its events' delivery by this emitter.
    pub(crate) latency: LatencyHistogram,
}

/// A point-in-time copy of the gateway's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Events that arrived (structured, or made by an ingestor, or records that failed).
    pub received: u64,
    /// Events put in the buffer, and so acknowledged.
    pub accepted: u64,
    /// Events the gateway made itself (aggregator summaries flushed by the
    /// timer or at shutdown). They count in `accepted` too.
    pub generated: u64,
    /// Events that middleware dropped on purpose.
    pub dropped: u64,
    /// Events refused, by reason (only reasons with a count).
    pub rejected_events: BTreeMap<RejectReason, u64>,
    /// Whole requests refused, by reason (only reasons with a count).
    pub rejected_requests: BTreeMap<RejectReason, u64>,
    /// Events in the buffer: accepted and not yet done by every emitter.
    pub buffer_depth: u64,
    /// The buffer's capacity in events.
    pub buffer_capacity: u64,
    /// Bytes of accepted events not yet done by every emitter.
    pub buffer_bytes: u64,
    /// The buffer's byte budget (`POLKU_BUFFER_MAX_BYTES`).
    pub buffer_max_bytes: u64,
    /// Per emitter, by name.
    pub emitters: BTreeMap<String, EmitterSnapshot>,
    /// Per middleware that counts its drops, in chain order.
    pub middleware: Vec<MiddlewareSnapshot>,
    /// The durable buffer's figures, when `POLKU_BUFFER_DIR` is set.
    pub durable: Option<DurableSnapshot>,
    /// Per source that reads by itself (Kafka).
    pub sources: Vec<polku_core::source::SourceStats>,
}

/// A point-in-time copy of the durable buffer's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DurableSnapshot {
    /// Bytes the log takes on disk now.
    pub disk_bytes: u64,
    /// The disk budget (`POLKU_BUFFER_MAX_DISK_BYTES`).
    pub max_disk_bytes: u64,
    /// Records (accepted batches) written and synced.
    pub records: u64,
    /// Syncs, each covering every record that arrived meanwhile.
    pub syncs: u64,
    /// Bytes written to the log.
    pub written_bytes: u64,
    /// Records refused because the disk budget was full.
    pub refused_full: u64,
    /// Records refused because a write or sync failed.
    pub refused_io: u64,
    /// Segments removed once every emitter was past them.
    pub trimmed_segments: u64,
    /// Events queued again by replays after restarts.
    pub replayed_events: u64,
    /// Cursor saves done.
    pub cursor_saves: u64,
    /// Cursor saves that failed.
    pub cursor_failures: u64,
    /// Saved cursors dropped because their emitter did not come back (what
    /// it owed went to its failure store's file).
    pub cursors_dropped: u64,
    /// Events put in the failure stores of emitters that did not come back.
    pub orphaned_events: u64,
    /// The cursors file was damaged at this start (set aside; every emitter
    /// got the whole log again).
    pub cursors_damaged: bool,
    /// Bytes of a torn last record cut off at start-up.
    pub torn_bytes: u64,
    /// Damaged segments found at start-up.
    pub corrupt_segments: u64,
    /// Records a replay could not decode.
    pub undecodable_records: u64,
    /// Bytes the failure stores' files take on disk.
    pub failure_disk_bytes: u64,
    /// Writes of the failure stores' files that failed.
    pub failure_write_failures: u64,
    /// With `POLKU_BUFFER_SYNC_INTERVAL`: syncs that failed after their
    /// records were acknowledged.
    pub late_sync_failures: u64,
}

/// A point-in-time copy of one middleware's drop counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MiddlewareSnapshot {
    /// Its place in the chain among the middleware that count, from zero.
    pub position: usize,
    /// Its kind, for example `dedup`.
    pub name: &'static str,
    /// Events dropped on purpose, by reason (only reasons with a count).
    pub dropped: BTreeMap<polku_middleware::DropReason, u64>,
}

/// A point-in-time copy of one emitter's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EmitterSnapshot {
    /// Events delivered.
    pub emitted: u64,
    /// Events the emitter could not deliver.
    pub failed: u64,
    /// Events waiting in the emitter's queue or being sent.
    pub queued: u64,
    /// Events its queue dropped because it was full (drop policies only).
    pub dropped_queue_full: u64,
    /// Events sent again from its failure store.
    pub resent: u64,
    /// Its circuit breaker's state, if it has one (and is running).
    pub breaker: Option<polku_core::delivery::BreakerState>,
    /// Times its breaker has opened.
    pub breaker_opened: u64,
    /// Calls it retried.
    pub retries: u64,
    /// Events it sent again in retries (the most duplicates a destination
    /// can have seen).
    pub retried_events: u64,
    /// Calls that ran out of time.
    pub timeouts: u64,
    /// Events in its failure store now.
    pub failure_store_events: u64,
    /// Bytes in its failure store now.
    pub failure_store_bytes: u64,
    /// Events ever put in its failure store.
    pub failure_store_stored: u64,
    /// Events its failure store discarded to stay within bounds (lost).
    pub failure_store_evicted: u64,
}

impl EmitterSnapshot {
    /// Adds what a running emitter's delivery machinery reports.
    pub(crate) fn with_delivery(mut self, d: &polku_core::delivery::DeliveryState) -> Self {
        self.breaker = d.breaker();
        self.breaker_opened = d.breaker_opened();
        self.retries = d.retries();
        self.retried_events = d.retried_events();
        self.timeouts = d.timeouts();
        if let Some(store) = d.failure_store() {
            self.failure_store_events = store.len() as u64;
            self.failure_store_bytes = store.bytes() as u64;
            self.failure_store_stored = store.stored_total();
            self.failure_store_evicted = store.evicted_total();
        }
        self
    }
}

impl StatsSnapshot {
    /// Events refused for this reason.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected_events.get(&reason).copied().unwrap_or(0)
    }

    /// Requests refused for this reason.
    pub fn rejected_requests(&self, reason: RejectReason) -> u64 {
        self.rejected_requests.get(&reason).copied().unwrap_or(0)
    }
}

impl Stats {
    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let by_reason = |arr: &[AtomicU64]| {
            RejectReason::ALL
                .iter()
                .zip(arr)
                .filter_map(|(r, c)| {
                    let v = c.load(Relaxed);
                    (v > 0).then_some((*r, v))
                })
                .collect()
        };
        StatsSnapshot {
            received: self.received.load(Relaxed),
            accepted: self.accepted.load(Relaxed),
            generated: self.generated.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            rejected_events: by_reason(&self.rejected_events),
            rejected_requests: by_reason(&self.rejected_requests),
            ..Default::default()
        }
    }
}

impl EmitterStats {
    pub(crate) fn snapshot(&self) -> EmitterSnapshot {
        EmitterSnapshot {
            emitted: self.emitted.load(Relaxed),
            failed: self.failed.load(Relaxed),
            queued: self.queued.load(Relaxed),
            dropped_queue_full: self.dropped_queue_full.load(Relaxed),
            resent: self.resent.load(Relaxed),
            ..EmitterSnapshot::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_by_name() {
        for r in RejectReason::ALL {
            assert_eq!(RejectReason::from_str_name(r.as_str()), Some(r));
        }
    }

    #[test]
    fn snapshot_lists_only_counted_reasons() {
        let s = Stats::default();
        s.rejected_events(RejectReason::NoRoute, 3);
        s.rejected_request(RejectReason::TooLarge);
        let snap = s.snapshot();
        assert_eq!(snap.rejected(RejectReason::NoRoute), 3);
        assert_eq!(snap.rejected_requests(RejectReason::TooLarge), 1);
        assert_eq!(snap.rejected_events.len(), 1);
    }
}
