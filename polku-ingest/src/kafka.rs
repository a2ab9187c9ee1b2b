//! Events from Apache Kafka: a consumer group reads topics and hands the
//! records to the pipeline in batches; offsets are committed only for
//! records whose events are safe.
//!
//! One thread owns the consumer (librdkafka's `BaseConsumer`): it polls,
//! gathers records into batches, and serves rebalances, where it may block
//! (it is not a runtime worker). A task hands each batch to the
//! [`Sink`] and learns, through [`Settled`], when its events are safe. Per
//! partition, the offsets of batches are kept in read order; the thread
//! commits, every commit interval, up to the first batch that is not safe
//! yet. So a crash, a kill or a rebalance replays records (at least once),
//! never skips one.
//!
//! Backpressure: the hand-over channel holds two batches. When it is full,
//! the thread waits for room; if the pipeline stays full for a second, it
//! pauses its partitions (librdkafka then drops what it had fetched ahead
//! and fetches nothing) and keeps polling, so the group does not think it
//! dead; it resumes once the pipeline took the batch.
//!
//! ```no_run
//! use polku_ingest::KafkaSource;
//!
//! let source = KafkaSource::builder(["127.0.0.1:9092"], ["orders"])
//!     .group("polku")
//!     .format("json")
//!     .dead_letter_topic("orders-dlq")
//!     .build()
//!     .unwrap();
//! # drop(source);
//! ```

use bytes::{Bytes, BytesMut};
use polku_core::source::{
    BatchOutcome, RecordBatch, RunningSource, Settled, Sink, SinkError, Source, SourceError,
    SourceStats, Unreadable,
};
use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::AcqRel, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

/// The consumer group a source joins when none is set.
pub const DEFAULT_GROUP: &str = "polku";

/// How long a rebalance waits for the records of the partitions being taken
/// away to be safe before it lets them go unsettled (the next owner then
/// reads them again).
const REVOKE_WAIT: Duration = Duration::from_secs(30);

/// A Kafka source setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaSourceError {
    /// No broker given.
    #[error("a Kafka source needs at least one broker (host:port)")]
    NoBrokers,
    /// No topic given.
    #[error("a Kafka source needs at least one topic")]
    NoTopics,
    /// librdkafka refused the configuration (an unknown option, a bad value).
    #[error("the Kafka client refused its configuration: {0}")]
    Client(String),
}

/// Builds a [`KafkaSource`].
#[derive(Debug, Clone)]
pub struct KafkaSourceBuilder {
    brokers: Vec<String>,
    topics: Vec<String>,
    group: String,
    format: String,
    name: String,
    dead_letter_topic: Option<String>,
    max_batch: usize,
    linger: Duration,
    commit_interval: Duration,
    options: Vec<(String, String)>,
}

impl KafkaSourceBuilder {
    /// The consumer group (default [`DEFAULT_GROUP`]): gateways in one group
    /// share the topics' partitions.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// How each record is read: `json` (default: an event's JSON form, as
    /// the Kafka emitter writes it), `protobuf` (an encoded
    /// `polku.v1.Event`), or the format of any ingestor the gateway runs, a
    /// plugin's included.
    pub fn format(mut self, format: impl Into<String>) -> Self {
        self.format = format.into();
        self
    }

    /// The source's name (default `kafka`), for logs and metrics.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Where records that cannot be read go, with why in their headers
    /// (`polku-error`, and the topic, partition and offset they came from).
    /// Without one they are kept by the gateway (its store of unreadable
    /// records, as the sink keeps them), else logged, counted and passed
    /// over.
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self
    }

    /// Most records per batch handed to the pipeline (default 1000).
    pub fn max_batch(mut self, records: usize) -> Self {
        self.max_batch = records.max(1);
        self
    }

    /// How long a batch waits for more records before it is handed over
    /// (default 5 ms).
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// How often safe offsets are committed (default 1 s): after a crash,
    /// at most about this much is read again.
    pub fn commit_interval(mut self, every: Duration) -> Self {
        self.commit_interval = every.max(Duration::from_millis(10));
        self
    }

    /// A librdkafka option (SASL, TLS, fetch sizes), applied after POLKU's
    /// own, so it can override them.
    pub fn option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.push((key.into(), value.into()));
        self
    }

    /// The source; it checks its configuration now and connects when the
    /// gateway starts it.
    pub fn build(self) -> Result<KafkaSource, KafkaSourceError> {
        if self.brokers.iter().all(|b| b.trim().is_empty()) {
            return Err(KafkaSourceError::NoBrokers);
        }
        if self.topics.iter().all(|t| t.trim().is_empty()) {
            return Err(KafkaSourceError::NoTopics);
        }
        let source = KafkaSource { cfg: self };
        // Let librdkafka judge the options now, not at start.
        let _: BaseConsumer = source
            .consumer_config()
            .create()
            .map_err(|e| KafkaSourceError::Client(e.to_string()))?;
        if source.cfg.dead_letter_topic.is_some() {
            let _: FutureProducer = source
                .producer_config()
                .create()
                .map_err(|e| KafkaSourceError::Client(e.to_string()))?;
        }
        Ok(source)
    }
}

/// Reads topics as one member of a consumer group and hands the records to
/// the gateway's pipeline (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct KafkaSource {
    cfg: KafkaSourceBuilder,
}

impl KafkaSource {
    /// A builder for a source named `kafka` in group [`DEFAULT_GROUP`]
    /// reading JSON records of these topics from these brokers.
    pub fn builder<B, S, T, U>(brokers: B, topics: T) -> KafkaSourceBuilder
    where
        B: IntoIterator<Item = S>,
        S: Into<String>,
        T: IntoIterator<Item = U>,
        U: Into<String>,
    {
        KafkaSourceBuilder {
            brokers: brokers.into_iter().map(Into::into).collect(),
            topics: topics.into_iter().map(Into::into).collect(),
            group: DEFAULT_GROUP.to_owned(),
            format: "json".to_owned(),
            name: "kafka".to_owned(),
            dead_letter_topic: None,
            max_batch: 1000,
            linger: Duration::from_millis(5),
            commit_interval: Duration::from_secs(1),
            options: Vec::new(),
        }
    }

    fn consumer_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.cfg.brokers.join(","))
            .set("group.id", &self.cfg.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // What librdkafka fetches ahead is small and bounded (the
            // pipeline's buffer is the buffer): with these, one core reads
            // about 540k events/s in about 30 MB (BENCHMARKS.md, "Kafka").
            .set("queued.max.messages.kbytes", "512")
            .set("fetch.max.bytes", "1048576")
            .set("max.partition.fetch.bytes", "131072")
            // Fetch again soon once the pipeline has taken what was
            // fetched (librdkafka waits a second by default).
            .set("fetch.queue.backoff.ms", "5")
            // For the lag metric.
            .set("statistics.interval.ms", "2000")
            .set("enable.partition.eof", "false")
            // A topic created after the start is picked up within 10 s.
            .set("topic.metadata.refresh.interval.ms", "10000")
            .set_log_level(RDKafkaLogLevel::Warning);
        for (k, v) in &self.cfg.options {
            c.set(k, v);
        }
        c
    }

    fn producer_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.cfg.brokers.join(","))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set_log_level(RDKafkaLogLevel::Warning);
        for (k, v) in &self.cfg.options {
            // Consumer-only options would be refused by a producer.
            if !k.starts_with("group.")
                && !k.starts_with("fetch.")
                && !k.starts_with("auto.")
                && !k.starts_with("enable.auto")
                && !k.starts_with("session.")
                && !k.starts_with("max.poll")
                && !k.starts_with("partition.assignment")
                && !k.starts_with("queued.")
                && !k.starts_with("isolation.")
                && !k.starts_with("heartbeat.")
            {
                c.set(k, v);
            }
        }
        c
    }
}

impl Source for KafkaSource {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn start(&self, sink: Arc<dyn Sink>) -> Result<Box<dyn RunningSource>, SourceError> {
        let fail = |message: String| SourceError {
            source_name: self.cfg.name.clone(),
            message,
        };
        let shared = Arc::new(Shared {
            name: self.cfg.name.clone(),
            ..Shared::default()
        });
        let consumer: BaseConsumer<Context> = self
            .consumer_config()
            .create_with_context(Context {
                shared: shared.clone(),
            })
            .map_err(|e| fail(e.to_string()))?;
        let topics: Vec<&str> = self.cfg.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| fail(format!("subscribing to {topics:?}: {e}")))?;
        let dead_letter = match &self.cfg.dead_letter_topic {
            Some(topic) => Some(DeadLetter {
                topic: topic.clone(),
                producer: self
                    .producer_config()
                    .create()
                    .map_err(|e| fail(e.to_string()))?,
            }),
            None => None,
        };
        let (tx, rx) = mpsc::channel(2);
        let reader = Reader {
            handle: tokio::runtime::Handle::try_current()
                .map_err(|e| fail(format!("needs a tokio runtime: {e}")))?,
            consumer,
            shared: shared.clone(),
            tx: Some(tx),
            max_batch: self.cfg.max_batch,
            linger: self.cfg.linger,
            commit_interval: self.cfg.commit_interval,
        };
        let thread = std::thread::Builder::new()
            .name(format!("polku-kafka-{}", self.cfg.name))
            .spawn(move || {
                let shared = reader.shared.clone();
                // A bug here must not go unseen: the source stops, and says so.
                let run = std::panic::AssertUnwindSafe(|| reader.run());
                if std::panic::catch_unwind(run).is_err() {
                    shared.stop.store(true, Relaxed);
                    error!(source = %shared.name, "the Kafka source's reader failed (a bug); it reads nothing more until the gateway restarts, and what it had not committed is read again then");
                }
            })
            .map_err(|e| fail(format!("cannot start its thread: {e}")))?;
        let feeder = Feeder {
            sink,
            shared: shared.clone(),
            format: self.cfg.format.clone(),
            dead_letter,
        };
        let task = tokio::spawn(feeder.run(rx));
        info!(source = %self.cfg.name, group = %self.cfg.group, ?topics, "Kafka source started");
        Ok(Box::new(Running {
            shared,
            thread: Mutex::new(Some(thread)),
            task: Mutex::new(Some(task)),
        }))
    }
}

/// A topic's partition.
type Partition = (Arc<str>, i32);

/// What the reading thread and the feeding task share.
#[derive(Debug, Default)]
struct Shared {
    name: String,
    /// Set by `stop_reading`: no more records are read or handed over.
    stop: AtomicBool,
    /// Set by `finish`: commit a last time and leave the group.
    finish: AtomicBool,
    /// Per partition, the batches handed over in read order.
    marks: Mutex<HashMap<Partition, VecDeque<Mark>>>,
    /// Woken when a batch becomes safe (a rebalance may be waiting).
    safe: Condvar,
    /// Offsets whose commit failed, tried again with the next commit.
    retry: Mutex<Vec<(Arc<str>, i32, i64)>>,
    counters: Counters,
}

#[derive(Debug, Default)]
struct Counters {
    records: AtomicU64,
    accepted: AtomicU64,
    undecodable: AtomicU64,
    dead_lettered: AtomicU64,
    unreadable_kept: AtomicU64,
    unreadable_skipped: AtomicU64,
    refused: AtomicU64,
    retried: AtomicU64,
    commits: AtomicU64,
    commit_failures: AtomicU64,
    pauses: AtomicU64,
    paused: AtomicBool,
    assigned: AtomicU64,
    rebalances: AtomicU64,
    unsettled_at_revoke: AtomicU64,
    lag: AtomicU64,
}

/// One batch's place in one partition: the offset to commit once it (and
/// every batch before it in the partition) is safe.
#[derive(Debug)]
struct Mark {
    batch: u64,
    next_offset: i64,
    records: u64,
    state: Arc<BatchState>,
}

/// How many things a batch still waits for: the feeding task's own hold,
/// plus one per hand-over to the sink not yet settled. Safe at zero.
#[derive(Debug)]
struct BatchState {
    waiting: AtomicUsize,
}

impl BatchState {
    fn safe(&self) -> bool {
        self.waiting.load(Relaxed) == 0
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// One thing the batch waited for is done.
    fn release(&self, state: &BatchState) {
        if state.waiting.fetch_sub(1, AcqRel) == 1 {
            // Taken so that a rebalance that checked just before waits on
            // the condvar already.
            let _g = lock(&self.marks);
            self.safe.notify_all();
        }
    }

    /// For each partition, the offset after its last safe batch, if that
    /// moved; the marks of safe batches are dropped.
    fn safe_offsets(&self, only: Option<&[Partition]>) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        let mut marks = lock(&self.marks);
        for ((topic, partition), queue) in marks.iter_mut() {
            if only.is_some_and(|o| !o.iter().any(|(t, p)| t == topic && p == partition)) {
                continue;
            }
            let mut next = None;
            while queue.front().is_some_and(|m| m.state.safe()) {
                next = queue.pop_front().map(|m| m.next_offset);
            }
            if let Some(n) = next {
                let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(n));
            }
        }
        tpl
    }

    fn stats(&self) -> SourceStats {
        let c = &self.counters;
        SourceStats {
            name: self.name.clone(),
            records: c.records.load(Relaxed),
            accepted: c.accepted.load(Relaxed),
            undecodable: c.undecodable.load(Relaxed),
            dead_lettered: c.dead_lettered.load(Relaxed),
            unreadable_kept: c.unreadable_kept.load(Relaxed),
            unreadable_skipped: c.unreadable_skipped.load(Relaxed),
            refused: c.refused.load(Relaxed),
            retried_batches: c.retried.load(Relaxed),
            commits: c.commits.load(Relaxed),
            commit_failures: c.commit_failures.load(Relaxed),
            pauses: c.pauses.load(Relaxed),
            paused: c.paused.load(Relaxed),
            assigned: c.assigned.load(Relaxed),
            rebalances: c.rebalances.load(Relaxed),
            unsettled_at_revoke: c.unsettled_at_revoke.load(Relaxed),
            lag: c.lag.load(Relaxed),
        }
    }
}

/// One record's origin, for commits and dead letters.
#[derive(Debug, Clone)]
struct Origin {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
}

/// Records read and not yet handed over.
#[derive(Debug, Default)]
struct Gathering {
    data: BytesMut,
    /// Each record: its origin and where its value ends in `data`.
    records: Vec<(Origin, usize)>,
    since: Option<Instant>,
}

/// Records handed (or being handed) to the feeding task.
#[derive(Debug)]
struct Batch {
    id: u64,
    values: Vec<Bytes>,
    origins: Vec<Origin>,
    state: Arc<BatchState>,
}

impl Gathering {
    fn push(&mut self, origin: Origin, value: &[u8]) {
        self.data.extend_from_slice(value);
        self.records.push((origin, self.data.len()));
        self.since.get_or_insert_with(Instant::now);
    }

    /// Takes the records out as a batch, and marks each of its partitions.
    fn seal(&mut self, id: u64, shared: &Shared) -> Batch {
        let data = std::mem::take(&mut self.data).freeze();
        let records = std::mem::take(&mut self.records);
        self.since = None;
        let mut values = Vec::with_capacity(records.len());
        let mut origins = Vec::with_capacity(records.len());
        let mut start = 0;
        for (origin, end) in records {
            values.push(data.slice(start..end));
            start = end;
            origins.push(origin);
        }
        let state = Arc::new(BatchState {
            waiting: AtomicUsize::new(1),
        });
        let mut marks = lock(&shared.marks);
        for o in &origins {
            let queue = marks.entry((o.topic.clone(), o.partition)).or_default();
            match queue.back_mut() {
                Some(m) if m.batch == id => {
                    m.next_offset = m.next_offset.max(o.offset + 1);
                    m.records += 1;
                }
                _ => queue.push_back(Mark {
                    batch: id,
                    next_offset: o.offset + 1,
                    records: 1,
                    state: state.clone(),
                }),
            }
        }
        drop(marks);
        Batch {
            id,
            values,
            origins,
            state,
        }
    }

    /// Drops the records of partitions taken away.
    fn forget(&mut self, revoked: &[Partition]) {
        if self.records.is_empty() {
            return;
        }
        let old = std::mem::take(self);
        let mut start = 0;
        for (o, end) in old.records {
            if !revoked
                .iter()
                .any(|(t, p)| *t == o.topic && *p == o.partition)
            {
                self.push(o, &old.data[start..end]);
            }
            start = end;
        }
    }
}

impl Batch {
    /// Drops the records of partitions taken away (their marks went with
    /// the revocation).
    fn forget(&mut self, revoked: &[Partition]) {
        let keep: Vec<bool> = self
            .origins
            .iter()
            .map(|o| {
                !revoked
                    .iter()
                    .any(|(t, p)| *t == o.topic && *p == o.partition)
            })
            .collect();
        let mut k = keep.iter();
        self.values.retain(|_| *k.next().unwrap());
        let mut k = keep.iter();
        self.origins.retain(|_| *k.next().unwrap());
    }
}

/// The consumer's context: rebalances settle what the revoked partitions
/// had handed over, then commit it.
struct Context {
    shared: Arc<Shared>,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        use RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                error!(source = %self.shared.name, facility = fac, "librdkafka: {message}");
            }
            L::Warning => {
                warn!(source = %self.shared.name, facility = fac, "librdkafka: {message}")
            }
            _ => debug!(source = %self.shared.name, facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        warn!(source = %self.shared.name, error = %error, "Kafka client: {reason}");
    }

    /// The client's statistics (every `statistics.interval.ms`): the lag
    /// of the partitions this member reads, end offset less committed (less
    /// the earliest offset while nothing is committed).
    fn stats(&self, s: rdkafka::Statistics) {
        let lag: i64 = s
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0 && p.desired && p.hi_offset >= 0)
            .map(|p| {
                // Nothing committed yet: the group starts from the earliest.
                let from = if p.committed_offset >= 0 {
                    p.committed_offset
                } else {
                    p.lo_offset.max(0)
                };
                (p.hi_offset - from).max(0)
            })
            .sum();
        self.shared.counters.lag.store(lag as u64, Relaxed);
    }
}

/// Partitions of a rebalance as (topic, partition) pairs.
fn pairs(tpl: &TopicPartitionList) -> Vec<Partition> {
    tpl.elements()
        .iter()
        .map(|e| (Arc::from(e.topic()), e.partition()))
        .collect()
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let shared = &self.shared;
        shared.counters.rebalances.fetch_add(1, Relaxed);
        let revoked = pairs(tpl);
        // Wait (this is the consumer's own thread) until what the revoked
        // partitions handed over is safe, up to a bound; not when stopping
        // (the pipeline has drained: what is not safe now will not be).
        let wait = if shared.stop.load(Relaxed) {
            Duration::ZERO
        } else {
            REVOKE_WAIT
        };
        let deadline = Instant::now() + wait;
        let mut marks = lock(&shared.marks);
        loop {
            let pending = revoked.iter().any(|k| {
                marks
                    .get(k)
                    .is_some_and(|q| q.iter().any(|m| !m.state.safe() && !m.is_held()))
            });
            let now = Instant::now();
            if !pending || now >= deadline {
                break;
            }
            marks = shared
                .safe
                .wait_timeout(marks, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        drop(marks);
        let tpl = shared.safe_offsets(Some(&revoked));
        if tpl.count() > 0 {
            commit(consumer, shared, &tpl, CommitMode::Sync);
        }
        // What is still not safe is let go: the next owner reads it again.
        let mut marks = lock(&shared.marks);
        for k in &revoked {
            if let Some(q) = marks.remove(k) {
                let unsettled: u64 = q.iter().filter(|m| !m.is_held()).map(|m| m.records).sum();
                if unsettled > 0 {
                    shared
                        .counters
                        .unsettled_at_revoke
                        .fetch_add(unsettled, Relaxed);
                    warn!(source = %shared.name, topic = %k.0, partition = k.1, records = unsettled, "Kafka partition taken away before its records were safe: its next owner reads them again");
                }
            }
        }
        drop(marks);
        let assigned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        shared
            .counters
            .assigned
            .store(assigned.saturating_sub(revoked.len()) as u64, Relaxed);
        HELD_REVOKED.with(|r| r.borrow_mut().extend(revoked));
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.shared.counters.rebalances.fetch_add(1, Relaxed);
            let assigned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
            self.shared
                .counters
                .assigned
                .store(assigned as u64, Relaxed);
            info!(source = %self.shared.name, partitions = tpl.count(), "Kafka partitions assigned");
            // A paused reader stays paused on what it was just given.
            if self.shared.counters.paused.load(Relaxed)
                && let Err(e) = consumer.pause(tpl)
            {
                warn!(source = %self.shared.name, error = %e, "cannot pause the partitions just assigned");
            }
        }
    }
}

thread_local! {
    /// Partitions revoked during the last poll on this (the consumer's)
    /// thread: the reader drops their records not yet handed over.
    static HELD_REVOKED: std::cell::RefCell<Vec<Partition>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Mark {
    /// A mark of the batch the reader still holds (not handed over): set
    /// apart by its batch id being past the last handed over.
    fn is_held(&self) -> bool {
        self.state.waiting.load(Relaxed) == HELD
    }
}

/// `waiting` of a batch sealed but not handed over: never reached
/// otherwise (a batch waits for a few hand-overs at most).
const HELD: usize = usize::MAX / 2;

fn commit(
    consumer: &BaseConsumer<Context>,
    shared: &Shared,
    tpl: &TopicPartitionList,
    mode: CommitMode,
) {
    match consumer.commit(tpl, mode) {
        Ok(()) => {
            shared.counters.commits.fetch_add(1, Relaxed);
        }
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => {
            shared.counters.commit_failures.fetch_add(1, Relaxed);
            warn!(source = %shared.name, error = %e, "Kafka offset commit failed; it is tried again with the next");
            // The next commit covers these partitions again only if more
            // becomes safe, so keep them for it.
            let mut retry = lock(&shared.retry);
            for e in tpl.elements() {
                if let Offset::Offset(o) = e.offset() {
                    retry.push((Arc::from(e.topic()), e.partition(), o));
                }
            }
        }
    }
}

/// How long the reader waits for room at a time before it serves the
/// consumer again.
const FULL_WAIT: Duration = Duration::from_millis(100);

/// How long the pipeline stays full before the partitions are paused.
const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// The consumer's thread.
struct Reader {
    consumer: BaseConsumer<Context>,
    /// The gateway's runtime, to wait for room in the hand-over.
    handle: tokio::runtime::Handle,
    shared: Arc<Shared>,
    /// Dropped when reading stops, so the feeding task ends.
    tx: Option<mpsc::Sender<Batch>>,
    max_batch: usize,
    linger: Duration,
    commit_interval: Duration,
}

impl Reader {
    fn run(mut self) {
        let shared = self.shared.clone();
        let mut gathering = Gathering::default();
        let mut held: Option<Batch> = None;
        let mut next_id = 0u64;
        let mut last_commit = Instant::now();
        let mut topics: HashMap<String, Arc<str>> = HashMap::new();
        // Since when the pipeline has had no room for the held batch.
        let mut full_since: Option<Instant> = None;
        while !shared.finish.load(Relaxed) {
            if shared.stop.load(Relaxed) {
                // Stopping: nothing more is handed over (what was read and
                // not handed over is read again by whoever comes next), but
                // the group is served until the pipeline has drained.
                if self.tx.take().is_some() {
                    if !shared.counters.paused.swap(true, Relaxed) {
                        self.pause(true);
                    }
                    gathering = Gathering::default();
                    if let Some(b) = held.take() {
                        self.unmark(&b);
                    }
                }
                let _ = self.consumer.poll(Duration::from_millis(50));
                let _ = HELD_REVOKED.with(|r| std::mem::take(&mut *r.borrow_mut()));
                if last_commit.elapsed() >= self.commit_interval {
                    self.commit_safe(CommitMode::Async);
                    last_commit = Instant::now();
                }
                continue;
            }
            if let Some(b) = held.take() {
                b.state.waiting.store(1, Relaxed);
                let Some(tx) = &self.tx else { break };
                match tx.try_send(b) {
                    Ok(()) => {
                        full_since = None;
                        if shared.counters.paused.swap(false, Relaxed) {
                            self.pause(false);
                        }
                    }
                    Err(mpsc::error::TrySendError::Full(b)) => {
                        // Wait for the pipeline a while without reading on
                        // (librdkafka keeps what it fetched ahead, within
                        // its bounds). Pausing throws that away, so it is
                        // only for a pipeline that stays full.
                        let since = *full_since.get_or_insert_with(Instant::now);
                        // The timer is made inside, in the runtime's context.
                        let room = self.handle.block_on(async {
                            tokio::time::timeout(FULL_WAIT, tx.reserve()).await
                        });
                        match room {
                            Ok(Ok(permit)) => {
                                permit.send(b);
                                full_since = None;
                                if shared.counters.paused.swap(false, Relaxed) {
                                    self.pause(false);
                                }
                            }
                            Ok(Err(_)) => {
                                self.unmark(&b);
                                shared.stop.store(true, Relaxed);
                                continue;
                            }
                            Err(_) => {
                                b.state.waiting.store(HELD, Relaxed);
                                held = Some(b);
                                if since.elapsed() >= PAUSE_AFTER
                                    && !shared.counters.paused.swap(true, Relaxed)
                                {
                                    shared.counters.pauses.fetch_add(1, Relaxed);
                                    debug!(source = %shared.name, "pipeline full: Kafka partitions paused");
                                    self.pause(true);
                                }
                            }
                        }
                    }
                    Err(mpsc::error::TrySendError::Closed(b)) => {
                        // The feeding task ended (the gateway is stopping).
                        self.unmark(&b);
                        shared.stop.store(true, Relaxed);
                        continue;
                    }
                }
            }
            let wait = match (&held, gathering.since) {
                (Some(_), _) => Duration::from_millis(10),
                (None, Some(since)) => self.linger.saturating_sub(since.elapsed()),
                (None, None) => Duration::from_millis(100),
            };
            match self.consumer.poll(wait) {
                Some(Ok(m)) => {
                    shared.counters.records.fetch_add(1, Relaxed);
                    let topic = match topics.get(m.topic()) {
                        Some(t) => t.clone(),
                        None => {
                            let t: Arc<str> = Arc::from(m.topic());
                            topics.insert(m.topic().to_owned(), t.clone());
                            t
                        }
                    };
                    let origin = Origin {
                        topic,
                        partition: m.partition(),
                        offset: m.offset(),
                    };
                    gathering.push(origin, m.payload().unwrap_or_default());
                }
                Some(Err(e)) => {
                    warn!(source = %shared.name, error = %e, "Kafka consumer error");
                }
                None => {}
            }
            // Partitions taken away during that poll: their records not
            // handed over are not ours to hand over any more.
            let revoked = HELD_REVOKED.with(|r| std::mem::take(&mut *r.borrow_mut()));
            if !revoked.is_empty() {
                gathering.forget(&revoked);
                if let Some(b) = held.as_mut() {
                    b.forget(&revoked);
                }
            }
            if held.is_none()
                && !gathering.records.is_empty()
                && (gathering.records.len() >= self.max_batch
                    || gathering.since.is_some_and(|s| s.elapsed() >= self.linger))
            {
                let b = gathering.seal(next_id, &shared);
                b.state.waiting.store(HELD, Relaxed);
                next_id += 1;
                held = Some(b);
            }
            if last_commit.elapsed() >= self.commit_interval {
                self.commit_safe(CommitMode::Async);
                last_commit = Instant::now();
            }
        }
        // Finishing: the pipeline has drained; commit what is safe and
        // leave the group (closing runs the last revocation).
        self.commit_safe(CommitMode::Sync);
        info!(source = %shared.name, "Kafka source stopped; offsets committed");
        drop(self.consumer);
    }

    fn commit_safe(&self, mode: CommitMode) {
        let mut tpl = self.shared.safe_offsets(None);
        for (t, p, o) in std::mem::take(&mut *lock(&self.shared.retry)) {
            if tpl.find_partition(&t, p).is_none() {
                let _ = tpl.add_partition_offset(&t, p, Offset::Offset(o));
            }
        }
        if tpl.count() > 0 {
            commit(&self.consumer, &self.shared, &tpl, mode);
        }
    }

    /// Removes a batch that will not be handed over from the marks.
    fn unmark(&self, b: &Batch) {
        let mut marks = lock(&self.shared.marks);
        for q in marks.values_mut() {
            q.retain(|m| m.batch != b.id);
        }
    }

    fn pause(&self, pause: bool) {
        let Ok(assigned) = self.consumer.assignment() else {
            return;
        };
        let r = if pause {
            self.consumer.pause(&assigned)
        } else {
            self.consumer.resume(&assigned)
        };
        if let Err(e) = r {
            warn!(source = %self.shared.name, error = %e, pause, "cannot pause or resume the Kafka partitions");
        }
    }
}

/// Where undecodable records go.
struct DeadLetter {
    topic: String,
    producer: FutureProducer,
}

/// The task that hands batches to the sink.
struct Feeder {
    sink: Arc<dyn Sink>,
    shared: Arc<Shared>,
    format: String,
    dead_letter: Option<DeadLetter>,
}

/// The gateway stopped: the batch stays unsafe (it is read again).
struct Stopped;

impl Feeder {
    async fn run(self, mut rx: mpsc::Receiver<Batch>) {
        while let Some(batch) = rx.recv().await {
            if self.shared.stop.load(Relaxed) {
                break;
            }
            let n = batch.values.len();
            // Runs of one topic: its name is the events' default source.
            let mut start = 0;
            let mut stopped = false;
            while start < n && !stopped {
                let topic = batch.origins[start].topic.clone();
                let mut end = start + 1;
                while end < n && batch.origins[end].topic == topic {
                    end += 1;
                }
                stopped = self.feed(&batch, start..end).await.is_err();
                start = end;
            }
            if stopped {
                break;
            }
            self.shared.release(&batch.state);
        }
        debug!(source = %self.shared.name, "Kafka source: hand-over ended");
    }

    /// Hands records `range` of `batch` to the sink until they are taken,
    /// splitting a batch the pipeline refuses outright down to the record
    /// that it refuses, which becomes a dead letter.
    async fn feed(&self, batch: &Batch, range: std::ops::Range<usize>) -> Result<(), Stopped> {
        let mut todo = vec![range];
        let mut backoff = Duration::from_millis(50);
        let mut last_warn: Option<Instant> = None;
        while let Some(r) = todo.pop() {
            if r.is_empty() {
                continue;
            }
            batch.state.waiting.fetch_add(1, AcqRel);
            let state = batch.state.clone();
            let shared = self.shared.clone();
            let settled = Settled::new(move || shared.release(&state));
            let records = RecordBatch {
                source: batch.origins[r.start].topic.to_string(),
                format: self.format.clone(),
                records: batch.values[r.clone()].to_vec(),
            };
            match self.sink.accept_records(records, settled).await {
                Ok(outcome) => {
                    backoff = Duration::from_millis(50);
                    self.count(&outcome);
                    for bad in &outcome.undecodable {
                        let i = r.start + bad.index;
                        self.dead_letter(batch, i, &bad.message).await?;
                    }
                }
                Err(SinkError::ShuttingDown) => return Err(Stopped),
                Err(SinkError::Refused(why)) if r.len() == 1 => {
                    self.shared.counters.undecodable.fetch_add(1, Relaxed);
                    self.dead_letter(batch, r.start, &why).await?;
                }
                Err(SinkError::Refused(_)) => {
                    let mid = r.start + r.len() / 2;
                    todo.push(mid..r.end);
                    todo.push(r.start..mid);
                }
                Err(e) => {
                    // Passing (a full disk budget, a plugin away, a format no
                    // ingestor reads yet): again later, and said plainly
                    // (every 30 s while it lasts), for it stops the reading.
                    self.shared.counters.retried.fetch_add(1, Relaxed);
                    if last_warn.is_none_or(|t: Instant| t.elapsed() >= Duration::from_secs(30)) {
                        warn!(source = %self.shared.name, error = %e, "Kafka records cannot go in for now; reading waits and tries again");
                        last_warn = Some(Instant::now());
                    }
                    todo.push(r);
                    if self.shared.stop.load(Relaxed) {
                        return Err(Stopped);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        Ok(())
    }

    fn count(&self, o: &BatchOutcome) {
        let c = &self.shared.counters;
        c.accepted.fetch_add(o.accepted as u64, Relaxed);
        c.undecodable.fetch_add(o.undecodable.len() as u64, Relaxed);
        if o.refused > 0 {
            c.refused.fetch_add(o.refused as u64, Relaxed);
            warn!(source = %self.shared.name, events = o.refused, reason = o.first_refusal.as_deref().unwrap_or(""), "events from Kafka refused");
        }
    }

    /// Keeps a record that could not be read, before its offset is
    /// committed: in the dead-letter topic, else in the gateway's store of
    /// unreadable records; with neither, it is logged and passed over.
    async fn dead_letter(&self, batch: &Batch, i: usize, why: &str) -> Result<(), Stopped> {
        let o = &batch.origins[i];
        let Some(dl) = &self.dead_letter else {
            return self.keep_unreadable(batch, i, why).await;
        };
        let partition = o.partition.to_string();
        let offset = o.offset.to_string();
        let mut backoff = Duration::from_millis(100);
        loop {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "polku-error",
                    value: Some(why),
                })
                .insert(Header {
                    key: "polku-topic",
                    value: Some(&*o.topic),
                })
                .insert(Header {
                    key: "polku-partition",
                    value: Some(&partition),
                })
                .insert(Header {
                    key: "polku-offset",
                    value: Some(&offset),
                });
            let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(&dl.topic)
                .payload(&batch.values[i][..])
                .headers(headers);
            match dl.producer.send(record, Duration::from_secs(10)).await {
                Ok(_) => {
                    self.shared.counters.dead_lettered.fetch_add(1, Relaxed);
                    warn!(source = %self.shared.name, topic = %o.topic, partition = o.partition, offset = o.offset, reason = why, dead_letter = %dl.topic, "Kafka record cannot be read; sent to the dead-letter topic");
                    return Ok(());
                }
                Err((e, _)) => {
                    warn!(source = %self.shared.name, error = %e, "cannot write to the dead-letter topic; trying again");
                    if self.shared.stop.load(Relaxed) {
                        return Err(Stopped);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

impl Feeder {
    /// Keeps an unreadable record in the gateway's store of them (no
    /// dead-letter topic), trying again while the gateway cannot write it.
    async fn keep_unreadable(&self, batch: &Batch, i: usize, why: &str) -> Result<(), Stopped> {
        let o = &batch.origins[i];
        let name = &self.shared.name;
        let mut backoff = Duration::from_millis(100);
        loop {
            let record = Unreadable {
                payload: batch.values[i].clone(),
                reason: why.to_owned(),
                origin: vec![
                    ("kafka.topic".to_owned(), o.topic.to_string()),
                    ("kafka.partition".to_owned(), o.partition.to_string()),
                    ("kafka.offset".to_owned(), o.offset.to_string()),
                ],
            };
            match self.sink.keep_unreadable(name, vec![record]).await {
                Ok(()) => {
                    self.shared.counters.unreadable_kept.fetch_add(1, Relaxed);
                    warn!(source = %name, topic = %o.topic, partition = o.partition, offset = o.offset, reason = why, "Kafka record cannot be read; kept in the gateway (GET /v1/sources/{name}/unreadable; set a dead-letter topic to keep such records in Kafka)");
                    return Ok(());
                }
                Err(SinkError::ShuttingDown) => return Err(Stopped),
                Err(SinkError::Busy(e)) => {
                    warn!(source = %name, error = %e, "cannot keep an unreadable Kafka record; trying again");
                    if self.shared.stop.load(Relaxed) {
                        return Err(Stopped);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    self.shared
                        .counters
                        .unreadable_skipped
                        .fetch_add(1, Relaxed);
                    warn!(source = %name, topic = %o.topic, partition = o.partition, offset = o.offset, reason = why, error = %e, "Kafka record cannot be read and cannot be kept; passed over (it stays in its topic at that offset; set a dead-letter topic to keep a copy)");
                    return Ok(());
                }
            }
        }
    }
}

/// A running Kafka source.
struct Running {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl RunningSource for Running {
    fn stop_reading(&self) {
        self.shared.stop.store(true, Relaxed);
    }

    async fn finish(&self) {
        self.stop_reading();
        let task = lock(&self.task).take();
        if let Some(t) = task {
            let _ = t.await;
        }
        self.shared.finish.store(true, Relaxed);
        let thread = lock(&self.thread).take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    fn stats(&self) -> SourceStats {
        self.shared.stats()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shared.stop.store(true, Relaxed);
        self.shared.finish.store(true, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let none: [&str; 0] = [];
        assert_eq!(
            KafkaSource::builder(none, ["t"]).build().unwrap_err(),
            KafkaSourceError::NoBrokers
        );
        assert_eq!(
            KafkaSource::builder(["127.0.0.1:9092"], none)
                .build()
                .unwrap_err(),
            KafkaSourceError::NoTopics
        );
        let err = KafkaSource::builder(["127.0.0.1:9092"], ["t"])
            .option("no.such.option", "1")
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("no.such.option"), "{err}");
    }

    fn origin(p: i32, offset: i64) -> Origin {
        Origin {
            topic: Arc::from("t"),
            partition: p,
            offset,
        }
    }

    #[test]
    fn offsets_are_committed_up_to_the_first_batch_not_yet_safe() {
        let shared = Shared::default();
        let mut g = Gathering::default();
        g.push(origin(0, 10), b"a");
        g.push(origin(1, 5), b"b");
        g.push(origin(0, 11), b"c");
        let first = g.seal(0, &shared);
        assert_eq!(first.values, [&b"a"[..], b"b", b"c"]);
        g.push(origin(0, 12), b"d");
        let second = g.seal(1, &shared);
        assert!(shared.safe_offsets(None).count() == 0, "nothing safe yet");
        // The second is safe first: nothing moves until the first is.
        shared.release(&second.state);
        assert_eq!(shared.safe_offsets(None).count(), 0);
        shared.release(&first.state);
        let tpl = shared.safe_offsets(None);
        assert_eq!(
            tpl.find_partition("t", 0).unwrap().offset(),
            Offset::Offset(13)
        );
        assert_eq!(
            tpl.find_partition("t", 1).unwrap().offset(),
            Offset::Offset(6)
        );
        assert_eq!(shared.safe_offsets(None).count(), 0, "committed once");
    }

    #[test]
    fn a_batch_waits_for_every_hand_over_to_settle() {
        let shared = Arc::new(Shared::default());
        let mut g = Gathering::default();
        g.push(origin(0, 0), b"a");
        let b = g.seal(0, &shared);
        // Two hand-overs (a split batch), each with its settlement.
        let settle = |b: &Batch| {
            b.state.waiting.fetch_add(1, AcqRel);
            let (s, st) = (shared.clone(), b.state.clone());
            Settled::new(move || s.release(&st))
        };
        let one = settle(&b);
        let two = settle(&b);
        shared.release(&b.state); // the feeder is done with it
        drop(one);
        assert!(!b.state.safe());
        assert_eq!(shared.safe_offsets(None).count(), 0);
        drop(two);
        assert!(b.state.safe());
        assert_eq!(shared.safe_offsets(None).count(), 1);
    }

    #[test]
    fn records_of_revoked_partitions_are_forgotten() {
        let shared = Shared::default();
        let mut g = Gathering::default();
        g.push(origin(0, 1), b"keep");
        g.push(origin(1, 1), b"gone");
        g.push(origin(0, 2), b"also");
        g.forget(&[(Arc::from("t"), 1)]);
        let b = g.seal(0, &shared);
        assert_eq!(b.values, [&b"keep"[..], b"also"]);
        let mut g = Gathering::default();
        g.push(origin(0, 3), b"x");
        g.push(origin(1, 3), b"y");
        let mut b = g.seal(1, &shared);
        b.forget(&[(Arc::from("t"), 0)]);
        assert_eq!(b.values, [&b"y"[..]]);
        assert_eq!(b.origins[0].partition, 1);
    }
}
