//! The event type.

use crate::Metadata;
use bytes::Bytes;
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

pub use crate::id::EventId;
pub use crate::text::Str;

/// One event, as it flows through the pipeline.
///
/// The struct is event.proto's `Event` itself: it implements
/// [`prost::Message`] by hand, so the gateway decodes events straight off the
/// wire with no per-event conversion. Strings are [`Str`]s (inline up to 23
/// bytes), the id is an [`EventId`] (inline up to 40 bytes, so a UUID fits),
/// and the payload is a slice of the request's buffer ([`Bytes`]): decoding a
/// typical event allocates nothing but the vector of its metadata entries.
/// The pipeline shares whole batches between emitters behind an `Arc`, so
/// fan-out clones nothing at all.
#[derive(Clone, PartialEq, Default)]
pub struct Event {
    /// Unique id; empty until the gateway assigns a UUIDv7. A given id is kept as is.
    pub id: EventId,
    /// When it happened, nanoseconds since the Unix epoch; zero means not given.
    pub timestamp_unix_ns: i64,
    /// Who produced it.
    pub source: Str,
    /// What happened, for example `user.signup`.
    pub event_type: Str,
    /// Free-form key/value pairs, kept sorted so that output is stable.
    pub metadata: Metadata,
    /// The body, opaque to POLKU.
    pub payload: Bytes,
    /// Emitters that should receive it; empty means every emitter.
    pub route_to: crate::Routes,
    /// How serious it is; see [`Event::severity`] and [`Event::set_severity`].
    pub severity: i32,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("id", &&*self.id)
            .field("timestamp_unix_ns", &self.timestamp_unix_ns)
            .field("source", &&*self.source)
            .field("event_type", &&*self.event_type)
            .field("metadata", &self.metadata)
            .field("payload", &self.payload)
            .field("route_to", &self.route_to)
            .field("severity", &self.severity)
            .finish()
    }
}

/// The encoded length of one metadata entry's body: its key and value as
/// fields 1 and 2, each left out when empty (as protobuf writes map entries).
fn entry_len(k: &Str, v: &Str) -> usize {
    let f = |tag, s: &Str| {
        if s.is_empty() {
            0
        } else {
            wire_str::encoded_len(tag, s)
        }
    };
    f(1, k) + f(2, v)
}

/// Decodes a length-delimited string field into `value`, in place (for the
/// entries of [`Metadata`]).
pub(crate) fn merge_str(
    wire_type: prost::encoding::WireType,
    value: &mut Str,
    buf: &mut impl bytes::Buf,
    ctx: prost::encoding::DecodeContext,
) -> Result<(), prost::DecodeError> {
    wire_str::merge(wire_type, value, buf, ctx)
}

/// Protobuf for [`Str`] and [`EventId`]: a length-delimited field like
/// `string`, checked to be UTF-8 and read straight from the buffer into the
/// string (inline when it is short enough, with no intermediate `String`).
mod wire_str {
    use super::{EventId, Str};
    use bytes::{Buf, BufMut};
    use prost::DecodeError;
    use prost::encoding::{DecodeContext, WireType};

    /// The text types that events hold: [`Str`] and [`EventId`].
    pub(super) trait Text: std::ops::Deref<Target = str> + From<String> {
        /// Makes this the text of `bytes` if they are UTF-8, else leaves it.
        fn set_utf8(&mut self, bytes: &[u8]) -> Result<(), std::str::Utf8Error>;
    }

    impl Text for Str {
        #[inline(always)]
        fn set_utf8(&mut self, bytes: &[u8]) -> Result<(), std::str::Utf8Error> {
            self.set(std::str::from_utf8(bytes)?);
            Ok(())
        }
    }

    impl Text for EventId {
        #[inline(always)]
        fn set_utf8(&mut self, bytes: &[u8]) -> Result<(), std::str::Utf8Error> {
            self.set(std::str::from_utf8(bytes)?);
            Ok(())
        }
    }

    pub(super) fn encode<T: Text>(tag: u32, value: &T, buf: &mut impl BufMut) {
        prost::encoding::encode_key(tag, WireType::LengthDelimited, buf);
        prost::encoding::encode_varint(value.len() as u64, buf);
        buf.put_slice(value.as_bytes());
    }

    pub(super) fn encoded_len<T: Text>(tag: u32, value: &T) -> usize {
        prost::encoding::key_len(tag)
            + prost::encoding::encoded_len_varint(value.len() as u64)
            + value.len()
    }

    pub(super) fn merge<T: Text>(
        wire_type: WireType,
        value: &mut T,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        prost::encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
        let len = prost::encoding::decode_varint(buf)?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len <= buf.chunk().len() {
            // The usual case: the text is contiguous in the buffer. Short
            // strings are copied inline: no allocation.
            if value.set_utf8(&buf.chunk()[..len]).is_ok() {
                buf.advance(len);
                return Ok(());
            }
        }
        // Split across chunks, too long for the buffer, or not UTF-8: let
        // prost's own string decoding copy it or say what is wrong.
        let mut framed = Vec::with_capacity(len.min(buf.remaining()) + 10);
        prost::encoding::encode_varint(len as u64, &mut framed);
        if len > buf.remaining() {
            framed.extend_from_slice(&buf.copy_to_bytes(buf.remaining()));
        } else {
            framed.extend_from_slice(&buf.copy_to_bytes(len));
        }
        let mut text = String::new();
        prost::encoding::string::merge(wire_type, &mut text, &mut &framed[..], ctx)?;
        *value = T::from(text);
        Ok(())
    }
}

impl prost::Message for Event {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        use prost::encoding::{bytes as pbytes, int32, int64};
        if !self.id.is_empty() {
            wire_str::encode(1, &self.id, buf);
        }
        if self.timestamp_unix_ns != 0 {
            int64::encode(2, &self.timestamp_unix_ns, buf);
        }
        if !self.source.is_empty() {
            wire_str::encode(3, &self.source, buf);
        }
        if !self.event_type.is_empty() {
            wire_str::encode(4, &self.event_type, buf);
        }
        for (k, v) in &self.metadata {
            prost::encoding::encode_key(5, prost::encoding::WireType::LengthDelimited, buf);
            prost::encoding::encode_varint(entry_len(k, v) as u64, buf);
            if !k.is_empty() {
                wire_str::encode(1, k, buf);
            }
            if !v.is_empty() {
                wire_str::encode(2, v, buf);
            }
        }
        if !self.payload.is_empty() {
            pbytes::encode(6, &self.payload, buf);
        }
        for r in &self.route_to {
            wire_str::encode(7, r, buf);
        }
        if self.severity != 0 {
            int32::encode(8, &self.severity, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        use prost::encoding::{bytes as pbytes, int32, int64, skip_field};
        let field = |e: prost::DecodeError, name: &'static str| {
            let mut e = e;
            e.push("Event", name);
            e
        };
        match tag {
            1 => wire_str::merge(wire_type, &mut self.id, buf, ctx).map_err(|e| field(e, "id")),
            2 => int64::merge(wire_type, &mut self.timestamp_unix_ns, buf, ctx)
                .map_err(|e| field(e, "timestamp_unix_ns")),
            3 => wire_str::merge(wire_type, &mut self.source, buf, ctx)
                .map_err(|e| field(e, "source")),
            4 => wire_str::merge(wire_type, &mut self.event_type, buf, ctx)
                .map_err(|e| field(e, "event_type")),
            5 => prost::encoding::check_wire_type(
                prost::encoding::WireType::LengthDelimited,
                wire_type,
            )
            .and_then(|()| self.metadata.merge_entry(buf, ctx))
            .map_err(|e| field(e, "metadata")),
            6 => pbytes::merge(wire_type, &mut self.payload, buf, ctx)
                .map_err(|e| field(e, "payload")),
            7 => {
                let mut r = Str::new();
                wire_str::merge(wire_type, &mut r, buf, ctx).map_err(|e| field(e, "route_to"))?;
                self.route_to.push(r);
                Ok(())
            }
            8 => int32::merge(wire_type, &mut self.severity, buf, ctx)
                .map_err(|e| field(e, "severity")),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        use prost::encoding::{bytes as pbytes, int32, int64};
        let mut n = 0;
        if !self.id.is_empty() {
            n += wire_str::encoded_len(1, &self.id);
        }
        if self.timestamp_unix_ns != 0 {
            n += int64::encoded_len(2, &self.timestamp_unix_ns);
        }
        if !self.source.is_empty() {
            n += wire_str::encoded_len(3, &self.source);
        }
        if !self.event_type.is_empty() {
            n += wire_str::encoded_len(4, &self.event_type);
        }
        n += self
            .metadata
            .iter()
            .map(|(k, v)| {
                let len = entry_len(k, v);
                prost::encoding::key_len(5) + prost::encoding::encoded_len_varint(len as u64) + len
            })
            .sum::<usize>();
        if !self.payload.is_empty() {
            n += pbytes::encoded_len(6, &self.payload);
        }
        n += self
            .route_to
            .iter()
            .map(|r| wire_str::encoded_len(7, r))
            .sum::<usize>();
        if self.severity != 0 {
            n += int32::encoded_len(8, &self.severity);
        }
        n
    }

    fn clear(&mut self) {
        *self = Event::default();
    }
}

impl Event {
    /// The severity, or `Unspecified` when the field holds an unknown value.
    pub fn severity(&self) -> Severity {
        Severity::try_from(self.severity).unwrap_or(Severity::Unspecified)
    }

    /// Sets the severity.
    pub fn set_severity(&mut self, severity: Severity) {
        self.severity = severity as i32;
    }

    /// A new event of the given type, with no id yet.
    pub fn new(event_type: impl Into<Str>) -> Self {
        Event {
            event_type: event_type.into(),
            ..Default::default()
        }
    }

    /// Sets the id.
    pub fn with_id(mut self, id: impl Into<EventId>) -> Self {
        self.id = id.into();
        self
    }

    /// Sets the source.
    pub fn with_source(mut self, source: impl Into<Str>) -> Self {
        self.source = source.into();
        self
    }

    /// Sets the payload.
    pub fn with_payload(mut self, payload: impl Into<Bytes>) -> Self {
        self.payload = payload.into();
        self
    }

    /// Adds one metadata entry.
    pub fn with_metadata(mut self, key: impl Into<Str>, value: impl Into<Str>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets the emitters that should receive the event.
    pub fn with_route_to<I, S>(mut self, emitters: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<Str>,
    {
        self.route_to = emitters.into_iter().map(Into::into).collect();
        self
    }

    /// Gives the event a fresh, time-ordered UUIDv7 id if it has none.
    /// An id that is already set is left untouched.
    pub fn ensure_id(&mut self) {
        if self.id.is_empty() {
            self.id = new_id().into();
        }
    }

    /// Whether an emitter of this name should receive the event.
    pub fn is_routed_to(&self, emitter: &str) -> bool {
        self.route_to.is_empty() || self.route_to.iter().any(|r| r == emitter)
    }

    /// Approximate bytes the event holds in memory beyond its own struct:
    /// the payload, every string, and the bookkeeping of each metadata entry
    /// and each route (what a map node and a string handle take), so that an
    /// event of many tiny entries counts what it really costs.
    pub fn approx_size(&self) -> usize {
        self.approx_size_and_metadata_bytes().0
    }

    /// [`approx_size`](Event::approx_size), and the bytes of the metadata's
    /// keys and values (what a limit on metadata counts), from one walk over
    /// the metadata.
    pub fn approx_size_and_metadata_bytes(&self) -> (usize, usize) {
        let routes = if self.route_to.len() > 1 {
            self.route_to.len() * std::mem::size_of::<Str>()
        } else {
            0
        };
        let metadata: usize = self.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
        let size = self.id.len()
            + self.source.len()
            + self.event_type.len()
            + self.payload.len()
            + self.metadata.len() * METADATA_ENTRY_OVERHEAD
            + metadata
            + routes
            + self.route_to.iter().map(|r| r.len()).sum::<usize>();
        (size, metadata)
    }
}

/// What one metadata entry costs beyond its key's and value's bytes: two
/// string handles and a share of the spare room of the vector (or B-tree)
/// that holds them.
const METADATA_ENTRY_OVERHEAD: usize = 2 * std::mem::size_of::<Str>() + 16;

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
        e.id.set(id_text(stamp).as_str());
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
    id_text(stamp).as_str().to_owned()
}

/// The 36 characters of a UUIDv7, on the stack.
struct IdText([u8; 36]);

impl IdText {
    fn as_str(&self) -> &str {
        // Hex digits and dashes only: always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

fn id_text(stamp: u64) -> IdText {
    let ms = (stamp >> 12) & ((1 << 48) - 1);
    let seq = stamp & 0xfff;
    let rand = next_random();
    let hi: u64 = (ms << 16) | 0x7000 | seq; // version 7
    let lo: u64 = (rand & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000; // variant 10
    // xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx: 8, 4, 4, 4 and 12 hex digits.
    let (h0, h1) = (hex8((hi >> 32) as u32), hex8(hi as u32));
    let (l0, l1) = (hex8((lo >> 32) as u32), hex8(lo as u32));
    let mut out = [b'-'; 36];
    out[0..8].copy_from_slice(&h0);
    out[9..13].copy_from_slice(&h1[..4]);
    out[14..18].copy_from_slice(&h1[4..]);
    out[19..23].copy_from_slice(&l0[..4]);
    out[24..28].copy_from_slice(&l0[4..]);
    out[28..36].copy_from_slice(&l1);
    IdText(out)
}

/// The 8 lowercase hex digits of `x`, most significant first, computed in
/// one 64-bit register (no table, no loop).
#[inline]
fn hex8(x: u32) -> [u8; 8] {
    let mut x = u64::from(x);
    // Spread the 8 nibbles over the 8 bytes, the most significant nibble
    // in the most significant byte.
    x = ((x & 0xffff_0000) << 16) | (x & 0xffff);
    x = ((x & 0x0000_ff00_0000_ff00) << 8) | (x & 0x0000_00ff_0000_00ff);
    x = ((x & 0x00f0_00f0_00f0_00f0) << 4) | (x & 0x000f_000f_000f_000f);
    // 0x01 in each byte whose nibble is 10 or more: those become 'a'..'f'.
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (x + 0x3030_3030_3030_3030 + letters * (b'a' - b'0' - 10) as u64).to_be_bytes()
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
    fn strings_decode_over_what_the_fields_held() {
        // Decoding fills fields in place: a short string over a long one, a
        // long one over a short one, and the last of a repeated field wins.
        let long = "a-source-name-well-past-twenty-three-bytes";
        let mut wire = Event::new("t").with_source(long).encode_to_vec();
        wire.extend(Event::new("t").with_source("short").encode_to_vec());
        wire.extend(Event::new("t").with_source(long).encode_to_vec());
        let e = Event::decode(wire.as_slice()).unwrap();
        assert_eq!(e.source, long);
        let mut e = Event::new("t").with_source(long);
        e.merge(Event::new("t").with_source("s").encode_to_vec().as_slice())
            .unwrap();
        assert_eq!(e.source, "s");
        // Ids: inline (up to 40 bytes) over shared and back.
        let long_id = "i".repeat(41);
        for ids in [
            ["a", long_id.as_str(), "b"],
            [long_id.as_str(), "c", long_id.as_str()],
        ] {
            let mut e = Event::default();
            for id in ids {
                e.merge(Event::new("t").with_id(id).encode_to_vec().as_slice())
                    .unwrap();
                assert_eq!(e.id, id);
            }
        }
        // Exactly the inline limit and one past it.
        for text in ["x".repeat(23), "y".repeat(24), "é".repeat(12)] {
            let e = Event::decode(Event::new(text.as_str()).encode_to_vec().as_slice()).unwrap();
            assert_eq!(e.event_type, text.as_str());
        }
    }

    #[test]
    fn metadata_entries_of_every_shape_decode() {
        // Field 5 entries as raw bytes, in every shape a map entry may take.
        fn entry(body: &[u8]) -> Vec<u8> {
            let mut out = vec![0x2a, body.len() as u8];
            out.extend_from_slice(body);
            out
        }
        let long = "k".repeat(200);
        let mut long_entry = vec![0x2a];
        prost::encoding::encode_varint(long.len() as u64 + 6, &mut long_entry);
        long_entry.extend_from_slice(&[0x0a, 0xc8, 0x01]);
        long_entry.extend_from_slice(long.as_bytes());
        long_entry.extend_from_slice(&[0x12, 0x01, b'L']);
        let wire = [
            entry(b"\x0a\x01a\x12\x02va"),         // the usual shape
            entry(b"\x12\x02vb\x0a\x01b"),         // value first
            entry(b"\x0a\x01c"),                   // no value
            entry(b"\x12\x02vd"),                  // no key
            entry(b"\x0a\x01e\x12\x02ve\x18\x07"), // an unknown field
            entry(b"\x0a\x01a\x12\x03va2"),        // a again: the last wins
            long_entry,                            // a key of 200 bytes
        ]
        .concat();
        let e = Event::decode(wire.as_slice()).unwrap();
        let got: Vec<(&str, &str)> = e.metadata.iter().map(|(k, v)| (&**k, &**v)).collect();
        assert_eq!(
            got,
            [
                ("", "vd"),
                ("a", "va2"),
                ("b", "vb"),
                ("c", ""),
                ("e", "ve"),
                (long.as_str(), "L")
            ]
        );
        // Not UTF-8, in the key or the value: an error that names the field.
        for bad in [&b"\x0a\x01\xff\x12\x01v"[..], &b"\x0a\x01k\x12\x01\xff"[..]] {
            let err = Event::decode(entry(bad).as_slice()).unwrap_err();
            assert!(err.to_string().contains("metadata"), "{err}");
        }
        // An entry whose value runs past the end.
        assert!(Event::decode(&b"\x2a\x06\x0a\x01k\x12\x09v"[..]).is_err());
    }

    #[test]
    fn approx_size_counts_what_tiny_entries_cost() {
        let bare = Event::new("t").with_payload(&b"abc"[..]);
        assert_eq!(bare.approx_size(), 4);
        // 64 one-byte keys and values: 128 bytes of text, but each entry is
        // two string handles in a map node, and that is what memory holds.
        let mut many = bare.clone();
        for i in 0..64u8 {
            many.metadata
                .insert(char::from(b'0' + i).to_string().into(), "v".into());
        }
        assert!(many.approx_size() >= 4 + 64 * (2 + 2 * std::mem::size_of::<Str>()));
        // One route is held inline; more take a handle each.
        let one = bare.clone().with_route_to(["a"]);
        assert_eq!(one.approx_size(), 5);
        let three = bare.with_route_to(["a", "b", "c"]);
        assert_eq!(three.approx_size(), 7 + 3 * std::mem::size_of::<Str>());
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
        assert!(*ids[19_999] < *batch[0].id && batch[0].id < batch[2].id);
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
    fn hex_digits_match_the_formatter() {
        for x in [
            0,
            1,
            0x9,
            0xa,
            0xf,
            0x1234_abcd,
            0xffff_ffff,
            0x0a0b_0c0d,
            0x9f8e_7d6c,
        ] {
            assert_eq!(hex8(x), format!("{x:08x}").as_bytes(), "{x:#x}");
        }
        let text = id_text((0x0123_4567_89ab << 12) | 0x5);
        let u = uuid::Uuid::parse_str(text.as_str()).unwrap();
        assert_eq!(u.as_hyphenated().to_string(), text.as_str());
        assert_eq!(&text.as_str()[..18], "01234567-89ab-7005");
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
