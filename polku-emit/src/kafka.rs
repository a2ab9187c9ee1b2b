//! Events to Apache Kafka: one record per event, delivered once the broker
//! acknowledged it (`acks=all`, idempotent producer).
//!
//! The client is librdkafka (through `rdkafka`), kept behind this emitter:
//! nothing of it shows in the public API, so it can change.

use async_trait::async_trait;
use polku_core::{EmitError, Emitter, Event, EventFailure};
use rdkafka::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::oneshot;

/// The topic events go to when none is set.
pub const DEFAULT_TOPIC: &str = "polku-events";

/// The longest topic name Kafka takes.
const MAX_TOPIC: usize = 249;

/// How a Kafka emitter writes each event as a record's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum KafkaFormat {
    /// The event's JSON form, as the stdout emitter prints it.
    #[default]
    Json,
    /// An encoded `polku.v1.Event`.
    Protobuf,
}

/// What a record's key is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum KafkaKey {
    /// The event's id (the default): events spread over the partitions.
    #[default]
    Id,
    /// The event's source: one source's events stay in order in one partition.
    Source,
    /// The event's type.
    EventType,
    /// A metadata entry (no key when the event lacks it).
    Metadata(String),
    /// No key: the producer spreads records as it likes (sticky batches).
    None,
}

impl std::str::FromStr for KafkaKey {
    type Err = KafkaEmitterError;

    /// `id`, `source`, `event_type`, `metadata.NAME` or `none`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "id" => KafkaKey::Id,
            "source" => KafkaKey::Source,
            "event_type" => KafkaKey::EventType,
            "none" => KafkaKey::None,
            m => match m.strip_prefix("metadata.") {
                Some(name) if !name.is_empty() => KafkaKey::Metadata(name.to_owned()),
                _ => return Err(KafkaEmitterError::Key(s.to_owned())),
            },
        })
    }
}

/// A Kafka emitter setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaEmitterError {
    /// No broker given.
    #[error("a Kafka emitter needs at least one broker (host:port)")]
    NoBrokers,
    /// The key is not one of the choices.
    #[error("invalid Kafka key {0:?}: expected id, source, event_type, metadata.NAME or none")]
    Key(String),
    /// The topic template has an unknown placeholder or an unclosed brace.
    #[error(
        "invalid Kafka topic {0:?}: only the placeholders {{source}} and {{event_type}} are known"
    )]
    Topic(String),
    /// librdkafka refused the configuration (an unknown option, a bad value).
    #[error("the Kafka client refused its configuration: {0}")]
    Client(String),
}

/// One piece of a topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Source,
    EventType,
}

/// Where each event goes: one topic, or a template filled per event.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Topic {
    Fixed(String),
    Template(Vec<Piece>),
}

impl Topic {
    fn parse(template: &str) -> Result<Topic, KafkaEmitterError> {
        use crate::template::Part;
        let bad = || KafkaEmitterError::Topic(template.to_owned());
        let pieces = crate::template::parts(template)
            .ok_or_else(bad)?
            .into_iter()
            .map(|p| match p {
                Part::Text(t) => Ok(Piece::Text(t.to_owned())),
                Part::Name("source") => Ok(Piece::Source),
                Part::Name("event_type") => Ok(Piece::EventType),
                Part::Name(_) => Err(bad()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if pieces.iter().all(|p| matches!(p, Piece::Text(_))) {
            let mut name = String::new();
            push_valid(&mut name, template);
            if name.is_empty() {
                return Err(bad());
            }
            return Ok(Topic::Fixed(name));
        }
        Ok(Topic::Template(pieces))
    }

    /// The topic of `event`, written into `out` (made a valid name).
    fn fill<'a>(&'a self, event: &Event, out: &'a mut String) -> &'a str {
        match self {
            Topic::Fixed(name) => name,
            Topic::Template(pieces) => {
                out.clear();
                for p in pieces {
                    match p {
                        Piece::Text(t) => push_valid(out, t),
                        Piece::Source => push_valid(out, &event.source),
                        Piece::EventType => push_valid(out, &event.event_type),
                    }
                }
                if out.is_empty() {
                    out.push('_');
                }
                // Kafka refuses `.` and `..` as names.
                if out.bytes().all(|b| b == b'.') {
                    out.replace_range(.., &"_".repeat(out.len()));
                }
                out
            }
        }
    }
}

/// Appends `s` with every character a topic name cannot hold as `_`, up to
/// the longest name Kafka takes.
fn push_valid(out: &mut String, s: &str) {
    for c in s.chars() {
        if out.len() >= MAX_TOPIC {
            return;
        }
        out.push(
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '_'
            },
        );
    }
}

/// Builds a [`KafkaEmitter`].
#[derive(Debug, Clone)]
pub struct KafkaEmitterBuilder {
    brokers: Vec<String>,
    name: String,
    topic: String,
    key: KafkaKey,
    format: KafkaFormat,
    delivery_timeout: Duration,
    options: Vec<(String, String)>,
}

impl KafkaEmitterBuilder {
    /// The emitter's name (default `kafka`), for `route_to` and metrics.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The topic, or a template with `{source}` and `{event_type}` (default
    /// [`DEFAULT_TOPIC`]); characters a topic name cannot hold become `_`.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = topic.into();
        self
    }

    /// What each record's key is (default the event's id).
    pub fn key(mut self, key: KafkaKey) -> Self {
        self.key = key;
        self
    }

    /// How each event is written (default JSON).
    pub fn format(mut self, format: KafkaFormat) -> Self {
        self.format = format;
        self
    }

    /// How long the producer keeps trying to deliver a record (librdkafka's
    /// `message.timeout.ms`) before the call fails as retryable. Default 10 s.
    pub fn delivery_timeout(mut self, timeout: Duration) -> Self {
        self.delivery_timeout = timeout;
        self
    }

    /// A librdkafka option (SASL, TLS, batching), applied after POLKU's own,
    /// so it can override them.
    pub fn option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.push((key.into(), value.into()));
        self
    }

    /// The emitter, with its producer (which connects in the background).
    pub fn build(self) -> Result<KafkaEmitter, KafkaEmitterError> {
        if self.brokers.iter().all(|b| b.trim().is_empty()) {
            return Err(KafkaEmitterError::NoBrokers);
        }
        let topic = Topic::parse(&self.topic)?;
        let brokers = self.brokers.join(",");
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            // Java's default: a key lands in the partition a Java producer
            // (Kafka Streams, Connect) puts it in; no key, sticky batches.
            // It also hashes faster than the default CRC32.
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "2")
            .set("batch.num.messages", "10000")
            .set("batch.size", "1000000")
            // Bounded: what waits for the broker is at most this much.
            .set("queue.buffering.max.messages", "100000")
            .set("queue.buffering.max.kbytes", "16384")
            .set(
                "message.timeout.ms",
                self.delivery_timeout.as_millis().max(1).to_string(),
            )
            .set_log_level(RDKafkaLogLevel::Warning);
        for (k, v) in &self.options {
            config.set(k, v);
        }
        let producer: ThreadedProducer<Context> = config
            .create_with_context(Context {
                name: self.name.clone(),
                calls: Calls::default(),
            })
            .map_err(|e| KafkaEmitterError::Client(e.to_string()))?;
        Ok(KafkaEmitter {
            name: self.name,
            producer,
            topic,
            key: self.key,
            format: self.format,
            brokers,
        })
    }
}

/// Sends each event as one record to Kafka and counts it delivered only once
/// the broker acknowledged it.
///
/// ```no_run
/// use polku_emit::{KafkaEmitter, KafkaKey};
///
/// let kafka = KafkaEmitter::builder(["127.0.0.1:9092"])
///     .topic("events-{source}")
///     .key(KafkaKey::Source)
///     .build()
///     .unwrap();
/// # drop(kafka);
/// ```
///
/// The producer is idempotent with `acks=all` and lz4 compression; an
/// event's metadata goes as the record's headers. A broker that is down
/// makes the producer wait and try again for the delivery timeout, then the
/// call fails as retryable (for the retries, breaker and failure store to
/// handle). A record the broker refuses for good (too large, an invalid or
/// forbidden topic) fails that event alone, not retryable, with the reason.
pub struct KafkaEmitter {
    name: String,
    producer: ThreadedProducer<Context>,
    topic: Topic,
    key: KafkaKey,
    format: KafkaFormat,
    brokers: String,
}

impl std::fmt::Debug for KafkaEmitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaEmitter")
            .field("name", &self.name)
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("key", &self.key)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl KafkaEmitter {
    /// A builder for an emitter named `kafka` writing JSON records keyed by
    /// event id to [`DEFAULT_TOPIC`] on these brokers (`host:port`).
    pub fn builder<I, S>(brokers: I) -> KafkaEmitterBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        KafkaEmitterBuilder {
            brokers: brokers.into_iter().map(Into::into).collect(),
            name: "kafka".to_owned(),
            topic: DEFAULT_TOPIC.to_owned(),
            key: KafkaKey::Id,
            format: KafkaFormat::Json,
            delivery_timeout: Duration::from_secs(10),
            options: Vec::new(),
        }
    }

    /// Records handed to the producer and not yet acknowledged or failed.
    pub fn in_flight(&self) -> usize {
        self.producer.in_flight_count().max(0) as usize
    }

    fn key_of<'e>(&self, e: &'e Event) -> Option<&'e [u8]> {
        match &self.key {
            KafkaKey::Id => Some(e.id.as_str().as_bytes()),
            KafkaKey::Source => Some(e.source.as_bytes()),
            KafkaKey::EventType => Some(e.event_type.as_bytes()),
            KafkaKey::Metadata(name) => e.metadata.get(name.as_str()).map(|v| v.as_bytes()),
            KafkaKey::None => None,
        }
    }
}

impl KafkaEmitter {
    /// Sends at most [`PART`] events under one call id and waits until the
    /// broker settled every record: the failures, by index in `events`.
    async fn emit_part(&self, events: &[Event]) -> Result<Vec<EventFailure>, EmitError> {
        let calls = &self.producer.context().calls;
        let (tx, rx) = oneshot::channel();
        let (id, call) = calls.open(tx);
        let sending = Sending {
            calls,
            id,
            call: call.clone(),
        };
        let mut value = Vec::with_capacity(512);
        let mut topic_buf = String::new();
        for (index, e) in events.iter().enumerate() {
            value.clear();
            match self.format {
                KafkaFormat::Json => polku_core::json::write_event(&mut value, e),
                KafkaFormat::Protobuf => {
                    prost::Message::encode(e, &mut value).expect("a Vec grows");
                }
            }
            let topic = self.topic.fill(e, &mut topic_buf);
            let mut record: BaseRecord<'_, [u8], [u8], usize> =
                BaseRecord::with_opaque_to(topic, Calls::ticket(id, index)).payload(&value[..]);
            if let Some(k) = self.key_of(e) {
                record = record.key(k);
            }
            if !e.metadata.is_empty() {
                let mut h = OwnedHeaders::new_with_capacity(e.metadata.len());
                for (k, v) in &e.metadata {
                    h = h.insert(Header {
                        key: k.as_str(),
                        value: Some(v.as_bytes()),
                    });
                }
                record = record.headers(h);
            }
            // The record's share, settled by its delivery report (or below
            // when the producer refuses it).
            call.left.fetch_add(1, Relaxed);
            loop {
                match self.producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // The producer's queue is full: wait for the broker.
                        record = back;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err((err, back)) => {
                        // Refused before it was queued (too large, say): no
                        // delivery report will come for it.
                        drop(back);
                        call.fail(index, &err);
                        calls.settle(id, &call);
                        break;
                    }
                }
            }
        }
        drop(sending);
        rx.await.map_err(|_| {
            EmitError::unavailable("the Kafka producer stopped before it reported", None)
        })?;
        let failures =
            std::mem::take(&mut *call.failures.lock().unwrap_or_else(PoisonError::into_inner));
        Ok(failures)
    }
}

/// What one call is waiting for: how many records are not settled yet (plus
/// one for the call itself while it is still sending), the failures so far,
/// and who to wake when the last one settles.
#[derive(Debug)]
struct Pending {
    left: AtomicUsize,
    failures: Mutex<Vec<EventFailure>>,
    done: Mutex<Option<oneshot::Sender<()>>>,
}

impl Pending {
    fn fail(&self, index: usize, err: &KafkaError) {
        let (message, retryable) = describe(err);
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(EventFailure {
                index,
                message,
                retryable,
            });
    }
}

/// How many low bits of a record's ticket hold its index in the call; the
/// rest hold the call's id. A call of more events is sent in parts.
const INDEX_BITS: u32 = 24;

/// The most events one part of a call sends under one id.
const PART: usize = 1 << INDEX_BITS;

/// The calls with records in the producer, by id.
///
/// Each record carries a ticket (a `usize`: the call's id and the record's
/// index) instead of a boxed pointer back to its call: a box per record was
/// one allocation on the gateway's thread and one free on the delivery
/// thread for every event. The delivery thread keeps the call it saw last
/// (records of one call come back together), so it takes this lock about
/// once per call, not once per record.
#[derive(Debug, Default)]
struct Calls {
    next: AtomicUsize,
    open: Mutex<std::collections::HashMap<usize, Arc<Pending>>>,
}

impl Calls {
    /// A new call with one unsettled share (the caller's own, while it
    /// sends); its id is one that no open call holds.
    fn open(&self, done: oneshot::Sender<()>) -> (usize, Arc<Pending>) {
        let call = Arc::new(Pending {
            left: AtomicUsize::new(1),
            failures: Mutex::new(Vec::new()),
            done: Mutex::new(Some(done)),
        });
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let id = self.next.fetch_add(1, Relaxed) & (usize::MAX >> INDEX_BITS);
            if let std::collections::hash_map::Entry::Vacant(v) = open.entry(id) {
                v.insert(call.clone());
                return (id, call);
            }
        }
    }

    /// The open call `id`.
    fn get(&self, id: usize) -> Option<Arc<Pending>> {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    /// Settles one share of call `id`; the last one closes the call and
    /// wakes its caller. Says whether it was the last.
    fn settle(&self, id: usize, call: &Pending) -> bool {
        if call.left.fetch_sub(1, AcqRel) != 1 {
            return false;
        }
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if let Some(tx) = call
            .done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = tx.send(());
        }
        true
    }

    /// A record's ticket.
    fn ticket(id: usize, index: usize) -> usize {
        (id << INDEX_BITS) | index
    }

    /// The call id and the index in a ticket.
    fn parts(ticket: usize) -> (usize, usize) {
        (ticket >> INDEX_BITS, ticket & (PART - 1))
    }
}

/// The caller's own share of a call, settled when it has sent everything,
/// or when its future is dropped half-way (so the call still closes once
/// the records it did send are settled).
struct Sending<'a> {
    calls: &'a Calls,
    id: usize,
    call: Arc<Pending>,
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.calls.settle(self.id, &self.call);
    }
}

thread_local! {
    /// The call whose records this thread settled last, and whose producer
    /// it belongs to (by the address of its context).
    static LAST: std::cell::RefCell<Option<(usize, usize, Arc<Pending>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Why a record failed, and whether trying again may help.
fn describe(err: &KafkaError) -> (String, bool) {
    use RDKafkaErrorCode as C;
    match err.rdkafka_error_code() {
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge) => (
            format!(
                "the record is too large for the broker (its message.max.bytes, or the producer's): {err}"
            ),
            false,
        ),
        Some(C::InvalidTopic | C::TopicAuthorizationFailed | C::InvalidRecord) => {
            (format!("the broker refused the record: {err}"), false)
        }
        Some(C::MessageTimedOut) => (
            format!("no broker acknowledged the record within the delivery timeout: {err}"),
            true,
        ),
        _ => (format!("Kafka: {err}"), true),
    }
}

/// The producer's context: delivery reports settle their calls; the
/// client's own logs go to `tracing`.
struct Context {
    name: String,
    calls: Calls,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        use RDKafkaLogLevel as L;
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(emitter = %self.name, facility = fac, "librdkafka: {message}");
            }
            L::Warning => {
                tracing::warn!(emitter = %self.name, facility = fac, "librdkafka: {message}");
            }
            _ => tracing::debug!(emitter = %self.name, facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(emitter = %self.name, error = %error, "Kafka client: {reason}");
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: usize) {
        let (id, index) = Calls::parts(ticket);
        let me = std::ptr::from_ref(self) as usize;
        LAST.with(|last| {
            let mut last = last.borrow_mut();
            let hit = matches!(&*last, Some((ctx, i, call))
                if *ctx == me && *i == id && call.left.load(Acquire) > 0);
            if !hit {
                *last = self.calls.get(id).map(|call| (me, id, call));
            }
            let Some((_, _, call)) = last.as_ref() else {
                tracing::error!(emitter = %self.name, ticket, "a Kafka delivery report for no open call");
                return;
            };
            if let Err((err, _)) = result {
                call.fail(index, err);
            }
            if self.calls.settle(id, call) {
                *last = None;
            }
        });
    }
}

#[async_trait]
impl Emitter for KafkaEmitter {
    fn name(&self) -> &str {
        &self.name
    }

    async fn emit(&self, events: &[Event]) -> Result<(), EmitError> {
        let mut failures = Vec::new();
        for (part, chunk) in events.chunks(PART).enumerate() {
            let base = part * PART;
            failures.extend(self.emit_part(chunk).await?.into_iter().map(|mut f| {
                f.index += base;
                f
            }));
        }
        if failures.is_empty() {
            return Ok(());
        }
        failures.sort_by_key(|f| f.index);
        Err(EmitError::Partial { failures })
    }

    async fn shutdown(&self) -> Result<(), EmitError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10)))
            .await
            .map_err(|e| EmitError::unavailable(format!("Kafka flush: {e}"), None))?
            .map_err(|e| EmitError::unavailable(format!("Kafka flush: {e}"), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_closes_when_its_records_and_its_sender_have_settled() {
        let calls = Calls::default();
        let (tx, mut rx) = oneshot::channel();
        let (id, call) = calls.open(tx);
        let sending = Sending {
            calls: &calls,
            id,
            call: call.clone(),
        };
        for _ in 0..3 {
            call.left.fetch_add(1, Relaxed);
        }
        // Two reports come back before the sender is done, one after.
        assert!(!calls.settle(id, &call));
        assert!(!calls.settle(id, &call));
        drop(sending);
        assert!(calls.get(id).is_some());
        assert!(rx.try_recv().is_err(), "woken with a record unsettled");
        assert!(calls.settle(id, &call));
        assert!(rx.try_recv().is_ok());
        assert!(calls.get(id).is_none(), "a closed call stays open");
    }

    #[test]
    fn a_sender_dropped_half_way_still_lets_its_call_close() {
        let calls = Calls::default();
        let (tx, _rx) = oneshot::channel();
        let (id, call) = calls.open(tx);
        {
            let _sending = Sending {
                calls: &calls,
                id,
                call: call.clone(),
            };
            call.left.fetch_add(1, Relaxed);
            // The future is dropped here, before it sent the rest.
        }
        assert!(calls.get(id).is_some());
        assert!(calls.settle(id, &call));
        assert!(calls.open.lock().unwrap().is_empty());
    }

    #[test]
    fn ids_wrap_around_the_calls_still_open() {
        let calls = Calls::default();
        let max = usize::MAX >> INDEX_BITS;
        let (tx, _rx1) = oneshot::channel();
        let (first, _) = calls.open(tx);
        assert_eq!(first, 0);
        // The next ids to come are max, then 0 (still open), then 1.
        calls.next.store(max, Relaxed);
        let (tx, _rx2) = oneshot::channel();
        assert_eq!(calls.open(tx).0, max);
        let (tx, _rx3) = oneshot::channel();
        assert_eq!(calls.open(tx).0, 1);
        for (id, index) in [(0, 0), (max, PART - 1), (1, 12345)] {
            assert_eq!(Calls::parts(Calls::ticket(id, index)), (id, index));
        }
    }

    #[test]
    fn keys_parse_from_their_names() {
        assert_eq!("id".parse::<KafkaKey>().unwrap(), KafkaKey::Id);
        assert_eq!(
            "event_type".parse::<KafkaKey>().unwrap(),
            KafkaKey::EventType
        );
        assert_eq!(
            "metadata.tenant".parse::<KafkaKey>().unwrap(),
            KafkaKey::Metadata("tenant".into())
        );
        assert_eq!("none".parse::<KafkaKey>().unwrap(), KafkaKey::None);
        let err = "metadata.".parse::<KafkaKey>().unwrap_err().to_string();
        assert!(err.contains("metadata.NAME"), "{err}");
        assert!("partition".parse::<KafkaKey>().is_err());
    }

    #[test]
    fn topics_are_filled_and_made_valid() {
        let e = Event::new("user signup/v2").with_source("web:eu");
        let mut buf = String::new();
        let t = Topic::parse("events-{source}.{event_type}").unwrap();
        assert_eq!(t.fill(&e, &mut buf), "events-web_eu.user_signup_v2");
        let fixed = Topic::parse("polku events").unwrap();
        assert_eq!(fixed, Topic::Fixed("polku_events".into()));
        let long = Event::new("t").with_source("s".repeat(400));
        let t = Topic::parse("{source}").unwrap();
        assert_eq!(t.fill(&long, &mut buf).len(), MAX_TOPIC);
        let dots = Event::new("..");
        let t = Topic::parse("{event_type}").unwrap();
        assert_eq!(t.fill(&dots, &mut buf), "__");
        for bad in ["{tenant}", "a{source", "a}b", ""] {
            let err = Topic::parse(bad).unwrap_err().to_string();
            assert!(err.contains("placeholders"), "{bad}: {err}");
        }
    }

    #[test]
    fn permanent_and_passing_failures_are_told_apart() {
        let too_big = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        let (why, retry) = describe(&too_big);
        assert!(!retry);
        assert!(why.contains("too large"), "{why}");
        let timed_out = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        let (why, retry) = describe(&timed_out);
        assert!(retry);
        assert!(why.contains("delivery timeout"), "{why}");
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let none: [&str; 0] = [];
        assert_eq!(
            KafkaEmitter::builder(none).build().unwrap_err(),
            KafkaEmitterError::NoBrokers
        );
        let err = KafkaEmitter::builder(["127.0.0.1:9092"])
            .option("no.such.option", "1")
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("no.such.option"), "{err}");
    }
}
