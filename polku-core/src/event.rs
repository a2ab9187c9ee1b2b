//! The event type.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// How serious an event is (event.proto's `Severity`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Severity {
    /// The producer did not say.
    Unspecified = 0,
    /// Detail for debugging.
    Debug = 1,
    /// Normal operation.
    Info = 2,
    /// Something may be wrong.
    Warn = 3,
    /// Something is wrong.
    Error = 4,
    /// Something is badly wrong.
    Critical = 5,
}

impl Severity {
    /// The name used in event.proto, for example `SEVERITY_INFO`.
    pub fn as_str_name(self) -> &'static str {
        match self {
            Severity::Unspecified => "SEVERITY_UNSPECIFIED",
            Severity::Debug => "SEVERITY_DEBUG",
            Severity::Info => "SEVERITY_INFO",
            Severity::Warn => "SEVERITY_WARN",
            Severity::Error => "SEVERITY_ERROR",
            Severity::Critical => "SEVERITY_CRITICAL",
        }
    }

    /// Parses either the proto name (`SEVERITY_WARN`) or the short one
    /// (`warn`, `warning`), in any case.
    pub fn from_name(name: &str) -> Option<Severity> {
        let lower = name.to_ascii_lowercase();
        let short = lower.strip_prefix("severity_").unwrap_or(&lower);
        Some(match short {
            "unspecified" | "" => Severity::Unspecified,
            "debug" => Severity::Debug,
            "info" => Severity::Info,
            "warn" | "warning" => Severity::Warn,
            "error" => Severity::Error,
            "critical" => Severity::Critical,
            _ => return None,
        })
    }
}

/// One event, as it flows through the pipeline.
///
/// The struct is event.proto's `Event` itself: it derives [`prost::Message`] by
/// hand, so the gateway decodes events straight off the wire with no per-event
/// conversion. The payload is [`Bytes`], so it is never copied: cloning an
/// event shares the payload and copies only the small strings. The pipeline
/// shares whole batches between emitters behind an `Arc`, so fan-out clones
/// nothing at all.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Unique id; empty until the gateway assigns a UUIDv7. A given id is kept as is.
    #[prost(string, tag = "1")]
    pub id: String,
    /// When it happened, nanoseconds since the Unix epoch; zero means not given.
    #[prost(int64, tag = "2")]
    pub timestamp_unix_ns: i64,
    /// Who produced it.
    #[prost(string, tag = "3")]
    pub source: String,
    /// What happened, for example `user.signup`.
    #[prost(string, tag = "4")]
    pub event_type: String,
    /// Free-form key/value pairs, kept sorted so that output is stable.
    #[prost(btree_map = "string, string", tag = "5")]
    pub metadata: BTreeMap<String, String>,
    /// The body, opaque to POLKU.
    #[prost(bytes = "bytes", tag = "6")]
    pub payload: Bytes,
    /// Emitters that should receive it; empty means every emitter.
    #[prost(string, repeated, tag = "7")]
    pub route_to: Vec<String>,
    /// How serious it is; see [`Event::severity`] and [`Event::set_severity`].
    #[prost(enumeration = "Severity", tag = "8")]
    pub severity: i32,
}

impl Event {
    /// A new event of the given type, with no id yet.
    pub fn new(event_type: impl Into<String>) -> Self {
        Event {
            event_type: event_type.into(),
            ..Default::default()
        }
    }

    /// Sets the id.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Sets the source.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// Sets the payload.
    pub fn with_payload(mut self, payload: impl Into<Bytes>) -> Self {
        self.payload = payload.into();
        self
    }

    /// Adds one metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets the emitters that should receive the event.
    pub fn with_route_to<I, S>(mut self, emitters: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.route_to = emitters.into_iter().map(Into::into).collect();
        self
    }

    /// Gives the event a fresh, time-ordered UUIDv7 id if it has none.
    /// An id that is already set is left untouched.
    pub fn ensure_id(&mut self) {
        if self.id.is_empty() {
            self.id = uuid::Uuid::now_v7().to_string();
        }
    }

    /// Whether an emitter of this name should receive the event.
    pub fn is_routed_to(&self, emitter: &str) -> bool {
        self.route_to.is_empty() || self.route_to.iter().any(|r| r == emitter)
    }

    /// Approximate bytes the event holds in memory (payload, strings, metadata).
    pub fn approx_size(&self) -> usize {
        self.id.len()
            + self.source.len()
            + self.event_type.len()
            + self.payload.len()
            + self
                .metadata
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + self.route_to.iter().map(String::len).sum::<usize>()
    }
}

/// The current time in nanoseconds since the Unix epoch.
pub fn now_unix_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn round_trips_through_protobuf() {
        let mut e = Event::new("user.signup")
            .with_id("1")
            .with_source("my-app")
            .with_payload(&b"\x00\xffraw"[..])
            .with_metadata("env", "prod")
            .with_route_to(["stdout", "slack"]);
        e.timestamp_unix_ns = 1_700_000_000_000_000_000;
        e.set_severity(Severity::Warn);
        let decoded = Event::decode(e.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, e);
        assert_eq!(decoded.severity(), Severity::Warn);
    }

    #[test]
    fn ensure_id_keeps_a_given_id_and_fills_a_missing_one() {
        let mut given = Event::new("t").with_id(" odd id ✓ ");
        given.ensure_id();
        assert_eq!(given.id, " odd id ✓ ");

        let mut a = Event::new("t");
        let mut b = Event::new("t");
        a.ensure_id();
        b.ensure_id();
        assert_ne!(a.id, b.id);
        let ua = uuid::Uuid::parse_str(&a.id).unwrap();
        assert_eq!(ua.get_version_num(), 7);
        // UUIDv7 is time-ordered: a later id sorts after an earlier one.
        assert!(a.id < b.id);
    }

    #[test]
    fn routing_empty_means_everyone() {
        let e = Event::new("t");
        assert!(e.is_routed_to("anything"));
        let e = e.with_route_to(["slack"]);
        assert!(e.is_routed_to("slack"));
        assert!(!e.is_routed_to("stdout"));
    }

    #[test]
    fn severity_names_parse() {
        assert_eq!(Severity::from_name("SEVERITY_WARN"), Some(Severity::Warn));
        assert_eq!(Severity::from_name("warning"), Some(Severity::Warn));
        assert_eq!(Severity::from_name("Critical"), Some(Severity::Critical));
        assert_eq!(Severity::from_name("loud"), None);
    }
}
