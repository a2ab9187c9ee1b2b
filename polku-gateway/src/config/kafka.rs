//! The Kafka emitter's settings (`POLKU_EMIT_KAFKA_*`).

use super::env::Env;
use super::{ConfigError, Secret};
use polku_emit::{KafkaEmitter, KafkaFormat, KafkaKey};
use std::time::Duration;

/// The Kafka emitter (named `kafka`), on when brokers are given.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KafkaEmitSettings {
    /// `POLKU_EMIT_KAFKA_BROKERS`: the brokers to bootstrap from
    /// (comma-separated `host:port`). Set, events go to Kafka.
    pub brokers: Vec<String>,
    /// `POLKU_EMIT_KAFKA_TOPIC`: the topic, or a template with `{source}`
    /// and `{event_type}` (characters a topic cannot hold become `_`).
    /// Default `polku-events`.
    pub topic: String,
    /// `POLKU_EMIT_KAFKA_KEY`: each record's key: `id` (the default),
    /// `source`, `event_type`, `metadata.NAME` or `none`.
    pub key: KafkaKey,
    /// `POLKU_EMIT_KAFKA_FORMAT`: `json` (the default: the JSON line the
    /// stdout emitter prints) or `protobuf` (an encoded `polku.v1.Event`).
    pub format: KafkaFormat,
    /// `POLKU_EMIT_KAFKA_OPTIONS`: librdkafka options, `key=value` pairs
    /// separated by `;` (SASL, TLS, batching); the values may be
    /// credentials and are never shown.
    pub options: Vec<(String, Secret)>,
    /// `POLKU_EMIT_KAFKA_IN_FLIGHT`: calls the emitter has under way at
    /// once (each waits for its records' acknowledgements). Default 8.
    pub in_flight: usize,
}

impl Default for KafkaEmitSettings {
    fn default() -> Self {
        KafkaEmitSettings {
            brokers: Vec::new(),
            topic: polku_emit::DEFAULT_KAFKA_TOPIC.to_owned(),
            key: KafkaKey::Id,
            format: KafkaFormat::Json,
            options: Vec::new(),
            in_flight: 8,
        }
    }
}

const BROKERS: &str = "host:port brokers, comma-separated";
const OPTIONS: &str = "librdkafka options, `key=value` pairs separated by `;`";

impl KafkaEmitSettings {
    pub(super) fn read(&mut self, env: &Env<'_>) -> Result<(), ConfigError> {
        if let Some((v, brokers)) = env.list("POLKU_EMIT_KAFKA_BROKERS") {
            if brokers.is_empty() || brokers.iter().any(|b| !b.contains(':')) {
                return Err(Env::bad("POLKU_EMIT_KAFKA_BROKERS", &v, BROKERS));
            }
            self.brokers = brokers;
        }
        if let Some(t) = env.raw("POLKU_EMIT_KAFKA_TOPIC") {
            self.topic = t.trim().to_owned();
        }
        if let Some(k) = env.raw("POLKU_EMIT_KAFKA_KEY") {
            self.key = k.trim().parse().map_err(|_| {
                Env::bad(
                    "POLKU_EMIT_KAFKA_KEY",
                    &k,
                    "id, source, event_type, metadata.NAME or none",
                )
            })?;
        }
        if let Some(f) = env.choice(
            "POLKU_EMIT_KAFKA_FORMAT",
            &[
                ("json", KafkaFormat::Json),
                ("protobuf", KafkaFormat::Protobuf),
            ],
            "json or protobuf",
        )? {
            self.format = f;
        }
        if let Some(n) = env.calls_in_flight("POLKU_EMIT_KAFKA_IN_FLIGHT")? {
            self.in_flight = n;
        }
        if let Some(v) = env.raw("POLKU_EMIT_KAFKA_OPTIONS") {
            self.options =
                options(&v).ok_or_else(|| Env::hidden("POLKU_EMIT_KAFKA_OPTIONS", OPTIONS))?;
        }
        if !self.brokers.is_empty() {
            // Refuse what the client would refuse now, not at the first event.
            self.emitter(Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// The emitter these settings describe, each record tried for
    /// `delivery_timeout`; `None` without brokers.
    pub(super) fn emitter(
        &self,
        delivery_timeout: Duration,
    ) -> Result<Option<KafkaEmitter>, ConfigError> {
        if self.brokers.is_empty() {
            return Ok(None);
        }
        let mut b = KafkaEmitter::builder(self.brokers.iter().cloned())
            .topic(self.topic.clone())
            .key(self.key.clone())
            .format(self.format)
            .delivery_timeout(delivery_timeout);
        for (k, v) in &self.options {
            b = b.option(k.clone(), v.expose());
        }
        b.build().map(Some).map_err(|e| match e {
            polku_emit::KafkaEmitterError::Topic(_) => Env::bad(
                "POLKU_EMIT_KAFKA_TOPIC",
                &self.topic,
                "a topic name, or a template with {source} and {event_type}",
            ),
            polku_emit::KafkaEmitterError::NoBrokers => {
                Env::bad("POLKU_EMIT_KAFKA_BROKERS", "", BROKERS)
            }
            polku_emit::KafkaEmitterError::Client(message) => {
                refused_options("POLKU_EMIT_KAFKA_OPTIONS", &self.options, &message)
            }
            other => Env::bad("POLKU_EMIT_KAFKA_BROKERS", &other.to_string(), BROKERS),
        })
    }
}

/// Options librdkafka refused, as a [`ConfigError`] for `var`. The client's
/// message may quote a value (a credential): only the key it names is
/// shown, or its message when it quotes no value.
fn refused_options(var: &'static str, options: &[(String, Secret)], message: &str) -> ConfigError {
    let key = options
        .iter()
        .map(|(k, _)| k.as_str())
        .find(|k| message.contains(&format!("\"{k}\"")));
    let quotes_a_value = options
        .iter()
        .any(|(_, v)| !v.expose().is_empty() && message.contains(v.expose()));
    let value = match (key, quotes_a_value) {
        (Some(k), _) => format!("{k}=<hidden>"),
        (None, false) => format!("<hidden> (the client says: {message})"),
        (None, true) => "<hidden>".to_owned(),
    };
    ConfigError {
        var,
        value,
        expected: "options librdkafka takes, with values it accepts",
    }
}

/// `key=value;key=value`, each key non-empty.
fn options(v: &str) -> Option<Vec<(String, Secret)>> {
    v.split(';')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_owned(), Secret::new(v.trim())))
        })
        .collect()
}

/// The Kafka source: `POLKU_INGEST_KAFKA_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KafkaIngestSettings {
    /// `POLKU_INGEST_KAFKA_BROKERS`: brokers to bootstrap from; the source
    /// runs only when set.
    pub brokers: Vec<String>,
    /// `POLKU_INGEST_KAFKA_TOPICS`: the topics to read, comma-separated.
    pub topics: Vec<String>,
    /// `POLKU_INGEST_KAFKA_GROUP`: the consumer group (default `polku`).
    pub group: String,
    /// `POLKU_INGEST_KAFKA_FORMAT`: how each record is read: `json`
    /// (default), `protobuf`, or any ingestor's format.
    pub format: String,
    /// `POLKU_INGEST_KAFKA_DLQ_TOPIC`: where undecodable records go.
    pub dead_letter_topic: Option<String>,
    /// `POLKU_INGEST_KAFKA_OPTIONS`: librdkafka options, `key=value` pairs
    /// separated by `;`; never shown.
    pub options: Vec<(String, Secret)>,
}

impl Default for KafkaIngestSettings {
    fn default() -> Self {
        KafkaIngestSettings {
            brokers: Vec::new(),
            topics: Vec::new(),
            group: polku_ingest::DEFAULT_GROUP.to_owned(),
            format: "json".to_owned(),
            dead_letter_topic: None,
            options: Vec::new(),
        }
    }
}

impl KafkaIngestSettings {
    pub(super) fn read(&mut self, env: &Env<'_>) -> Result<(), ConfigError> {
        if let Some((v, brokers)) = env.list("POLKU_INGEST_KAFKA_BROKERS") {
            if brokers.is_empty() || brokers.iter().any(|b| !b.contains(':')) {
                return Err(Env::bad("POLKU_INGEST_KAFKA_BROKERS", &v, BROKERS));
            }
            self.brokers = brokers;
        }
        if let Some((_, topics)) = env.list("POLKU_INGEST_KAFKA_TOPICS") {
            self.topics = topics;
        }
        if let Some(g) = env.raw("POLKU_INGEST_KAFKA_GROUP") {
            self.group = g.trim().to_owned();
        }
        if let Some(f) = env.raw("POLKU_INGEST_KAFKA_FORMAT") {
            self.format = f.trim().to_ascii_lowercase();
        }
        if let Some(t) = env.raw("POLKU_INGEST_KAFKA_DLQ_TOPIC") {
            let t = t.trim();
            self.dead_letter_topic = (!t.is_empty()).then(|| t.to_owned());
        }
        if let Some(v) = env.raw("POLKU_INGEST_KAFKA_OPTIONS") {
            self.options =
                options(&v).ok_or_else(|| Env::hidden("POLKU_INGEST_KAFKA_OPTIONS", OPTIONS))?;
        }
        if self.brokers.is_empty() {
            return Ok(());
        }
        if self.topics.is_empty() {
            return Err(Env::bad(
                "POLKU_INGEST_KAFKA_TOPICS",
                "",
                "the topics to read, comma-separated (POLKU_INGEST_KAFKA_BROKERS is set)",
            ));
        }
        if self.group.is_empty() {
            return Err(Env::bad(
                "POLKU_INGEST_KAFKA_GROUP",
                "",
                "a consumer group name",
            ));
        }
        if self.format.is_empty() {
            return Err(Env::bad(
                "POLKU_INGEST_KAFKA_FORMAT",
                "",
                "json, protobuf, or the format of an ingestor the gateway runs",
            ));
        }
        // Refuse what the client would refuse now, not once running.
        self.source()?;
        Ok(())
    }

    /// The source these settings describe; `None` without brokers.
    pub fn source(&self) -> Result<Option<polku_ingest::KafkaSource>, ConfigError> {
        if self.brokers.is_empty() {
            return Ok(None);
        }
        let mut b = polku_ingest::KafkaSource::builder(
            self.brokers.iter().cloned(),
            self.topics.iter().cloned(),
        )
        .group(self.group.clone())
        .format(self.format.clone());
        if let Some(t) = &self.dead_letter_topic {
            b = b.dead_letter_topic(t.clone());
        }
        for (k, v) in &self.options {
            b = b.option(k.clone(), v.expose());
        }
        b.build().map(Some).map_err(|e| match e {
            polku_ingest::KafkaSourceError::Client(message) => {
                refused_options("POLKU_INGEST_KAFKA_OPTIONS", &self.options, &message)
            }
            other => Env::bad("POLKU_INGEST_KAFKA_BROKERS", &other.to_string(), BROKERS),
        })
    }
}
