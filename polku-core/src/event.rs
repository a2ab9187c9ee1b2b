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
            self.id = new_id();
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

/// A fresh UUIDv7 (RFC 9562) as text: 48 bits of Unix milliseconds, a 12-bit
/// sequence that keeps ids from one process strictly increasing (method 1 of
/// the RFC: when more than 4096 ids fall in one millisecond the timestamp runs
/// a little ahead), and 62 random bits.
///
/// The random bits come from a per-thread generator seeded once from the OS,
/// not one `getrandom` call per id: at a million ids a second the system call
/// alone cost more than everything else the gateway does with an event. They
/// are unique, not secret; an id is not a credential.
pub fn new_id() -> String {
    format_id(reserve_stamps(1))
}

/// Gives every event of `events` without an id a fresh UUIDv7, like
/// [`Event::ensure_id`], reading the clock once for the whole batch.
pub fn ensure_ids(events: &mut [Event]) {
    let missing = events.iter().filter(|e| e.id.is_empty()).count();
    if missing == 0 {
        return;
    }
    let first = reserve_stamps(missing as u64);
    for (stamp, e) in (first..).zip(events.iter_mut().filter(|e| e.id.is_empty())) {
        e.id = format_id(stamp);
    }
}

/// Reserves `n` consecutive (millisecond << 12 | sequence) stamps, after
/// every stamp handed out before; returns the first.
fn reserve_stamps(n: u64) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
        & ((1 << 48) - 1);
    let mut first = 0;
    let _ = LAST.fetch_update(Relaxed, Relaxed, |last| {
        first = (now_ms << 12).max(last + 1);
        Some(first + n - 1)
    });
    first
}

fn format_id(stamp: u64) -> String {
    let ms = (stamp >> 12) & ((1 << 48) - 1);
    let seq = stamp & 0xfff;
    let rand = next_random();
    let hi: u64 = (ms << 16) | 0x7000 | seq; // version 7
    let lo: u64 = (rand & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000; // variant 10
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for i in 0..32 {
        if matches!(i, 8 | 12 | 16 | 20) {
            out.push('-');
        }
        let word = if i < 16 { hi } else { lo };
        out.push(HEX[((word >> (60 - 4 * (i % 16))) & 0xf) as usize] as char);
    }
    out
}

/// A per-thread wyrand stream, seeded once per thread from the OS.
fn next_random() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x2d35_8dcc_aa6c_78a5);
            h.finish()
        });
    }
    STATE.with(|s| {
        let x = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(x);
        let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
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
    fn generated_ids_are_valid_uuidv7_strictly_increasing_and_distinct() {
        let ids: Vec<String> = (0..20_000).map(|_| new_id()).collect();
        for w in ids.windows(2) {
            assert!(w[0] < w[1], "{} then {}", w[0], w[1]);
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        for id in [&ids[0], &ids[19_999]] {
            let u = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(u.get_version_num(), 7, "{id}");
            assert_eq!(u.get_variant(), uuid::Variant::RFC4122, "{id}");
            let (secs, nanos) = u.get_timestamp().unwrap().to_unix();
            let ms = secs * 1000 + u64::from(nanos) / 1_000_000;
            // 20,000 ids may run the clock ahead by a few ms, never behind.
            assert!(ms.abs_diff(now_ms) < 1000, "{id}: {ms} vs {now_ms}");
        }
        let distinct: std::collections::BTreeSet<&str> = ids.iter().map(|s| &s[24..]).collect();
        assert_eq!(distinct.len(), ids.len(), "random tails differ");
        // A batch gets ids that follow the last, in order; given ids stay.
        let mut batch = vec![
            Event::new("a"),
            Event::new("b").with_id("mine"),
            Event::new("c"),
        ];
        ensure_ids(&mut batch);
        assert!(ids[19_999] < batch[0].id && batch[0].id < batch[2].id);
        assert_eq!(batch[1].id, "mine");
        assert!(uuid::Uuid::parse_str(&batch[2].id).is_ok());
        // From many threads at once: still no duplicates.
        let all: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..5000).map(|_| new_id()).collect::<Vec<_>>()))
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let set: std::collections::BTreeSet<&String> = all.iter().collect();
        assert_eq!(set.len(), 20_000);
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
