//! Events as JSON, in event.proto's field names.
//!
//! Reading ([`events_from_json`]) takes one event object, an array of them, or
//! `{"events": [...]}`. Field names are event.proto's (`event_type`), and the
//! proto3 JSON names (`eventType`) work too. Unknown fields are an error, so a
//! typo is reported instead of silently ignored. The payload may be:
//! - any JSON value but a string (object, array, number, boolean): kept as its JSON text;
//! - a string: kept as the string's UTF-8 bytes;
//! - `payload_base64`: base64 for binary payloads.
//!
//! Writing ([`write_event`]) gives one line of JSON per event. A payload that
//! is a JSON object or array is embedded as JSON, other UTF-8 as a string,
//! anything else as `payload_base64`, so that every line reads back in as the
//! same event, byte for byte.
//!
//! ```
//! use bytes::Bytes;
//! use polku_core::json::{events_from_json, write_event};
//!
//! let input = Bytes::from_static(br#"[{"id": "1", "event_type": "user.signup", "payload": {"plan": "pro"}}]"#);
//! let parsed = events_from_json(&input).unwrap();
//! assert_eq!(parsed.events[0].payload, Bytes::from_static(br#"{"plan": "pro"}"#));
//!
//! let mut line = Vec::new();
//! write_event(&mut line, &parsed.events[0]);
//! assert_eq!(
//!     String::from_utf8(line).unwrap(),
//!     r#"{"id":"1","timestamp_unix_ns":0,"source":"","event_type":"user.signup","payload":{"plan": "pro"}}"#
//! );
//! ```

use crate::{Event, IngestError, Ingested, Metadata, RecordError, Severity, Str};
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use std::borrow::Cow;

const FORMAT: &str = "JSON";

/// Parses JSON into events: one event object, an array of events, or
/// `{"events": [...]}` (optionally with a `"source"` for events that have none).
///
/// A document that is not JSON, or not of these shapes, is an error; a single
/// bad event in an array is reported in [`Ingested::errors`] with its index
/// and the others are kept. Payloads are slices of `data`, never copies.
pub fn events_from_json(data: &Bytes) -> Result<Ingested, IngestError> {
    events_from_json_at_most(data, usize::MAX)
}

/// The longest message kept for one bad record; the rest is cut, so that a
/// record with a megabyte-long unknown field name gets a readable error.
const MAX_RECORD_MESSAGE: usize = 300;

/// Parses JSON as [`events_from_json`] does, but reads at most
/// `max_records + 1` records (events and bad records together): one past the
/// limit, so the caller can refuse the request, without holding millions of
/// records or their errors. The records past that are only checked for JSON
/// syntax, which allocates nothing.
///
/// ```
/// use bytes::Bytes;
/// use polku_core::json::events_from_json_at_most;
///
/// let many = Bytes::from(format!("[{}1]", "1,".repeat(100_000)));
/// let out = events_from_json_at_most(&many, 10).unwrap();
/// assert_eq!(out.events.len() + out.errors.len(), 11);
/// ```
pub fn events_from_json_at_most(data: &Bytes, max_records: usize) -> Result<Ingested, IngestError> {
    let malformed = |e: serde_json::Error| IngestError::Malformed {
        format: FORMAT,
        message: e.to_string(),
    };
    let keep = max_records.saturating_add(1);
    let first = data.iter().find(|b| !b.is_ascii_whitespace()).copied();
    match first {
        Some(b'[') => {
            let mut de = serde_json::Deserializer::from_slice(data);
            let raws = serde::de::DeserializeSeed::deserialize(AtMost(keep), &mut de)
                .and_then(|raws| de.end().map(|()| raws))
                .map_err(malformed)?;
            Ok(parse_each(data, &raws, None))
        }
        Some(b'{') => {
            let top: TopLevel<'_> = serde_json::from_slice(data).map_err(malformed)?;
            let Some(events) = top.events else {
                let mut out = Ingested::default();
                match event_from_json(data, data) {
                    Ok(e) => out.events.push(e),
                    Err(message) => out.errors.push(RecordError {
                        index: 0,
                        message: shorten(message),
                    }),
                }
                return Ok(out);
            };
            if let Some(other) = top.other {
                return Err(IngestError::Malformed {
                    format: FORMAT,
                    message: format!(
                        "unknown field `{other}` next to `events`, expected only `source`"
                    ),
                });
            }
            let batch_error = |e: serde_json::Error| IngestError::Malformed {
                format: FORMAT,
                message: format!(
                    "expected {{\"events\": [event objects], \"source\": \"...\"}}: {e}"
                ),
            };
            let source: Option<String> = match top.source {
                Some(raw) => serde_json::from_str(raw.get()).map_err(batch_error)?,
                None => None,
            };
            let mut de = serde_json::Deserializer::from_str(events.get());
            let raws = serde::de::DeserializeSeed::deserialize(AtMost(keep), &mut de)
                .map_err(batch_error)?;
            Ok(parse_each(data, &raws, source.as_deref()))
        }
        Some(_) => {
            // Let serde_json say precisely what is wrong and where.
            let err = serde_json::from_slice::<serde::de::IgnoredAny>(data)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "expected a JSON object or array of events".to_owned());
            Err(IngestError::Malformed {
                format: FORMAT,
                message: if err.starts_with("expected") || err.contains("line") {
                    format!("{err}; expected a JSON object or array of events")
                } else {
                    err
                },
            })
        }
        None => Err(IngestError::Malformed {
            format: FORMAT,
            message: "empty input, expected a JSON object or array of events".to_owned(),
        }),
    }
}

/// Cuts a record's error message to [`MAX_RECORD_MESSAGE`] bytes (on a
/// character boundary).
fn shorten(mut message: String) -> String {
    if message.len() > MAX_RECORD_MESSAGE {
        let mut cut = MAX_RECORD_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("...");
    }
    message
}

/// A JSON array read as raw values, keeping the first `.0` of them; the rest
/// are checked and skipped.
struct AtMost(usize);

impl<'de> serde::de::DeserializeSeed<'de> for AtMost {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for AtMost {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of event objects")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut raws = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.0).min(4096));
        while raws.len() < self.0 {
            match seq.next_element::<&RawValue>()? {
                Some(r) => raws.push(r),
                None => return Ok(raws),
            }
        }
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(raws)
    }
}

/// A top-level JSON object, read only as far as telling a batch
/// (`{"events": [...]}`) from a single event: its `events` and `source`
/// values, and the first other field's name. Nothing else is kept, so an
/// object of a million fields costs no memory.
struct TopLevel<'a> {
    events: Option<&'a RawValue>,
    source: Option<&'a RawValue>,
    other: Option<String>,
}

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TopLevel<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut top = TopLevel {
                    events: None,
                    source: None,
                    other: None,
                };
                while let Some(key) = map.next_key::<Text<'de>>()? {
                    match &*key.0 {
                        "events" => {
                            if top.events.is_some() {
                                return Err(serde::de::Error::duplicate_field("events"));
                            }
                            top.events = Some(map.next_value()?);
                        }
                        "source" => {
                            if top.source.is_some() {
                                return Err(serde::de::Error::duplicate_field("source"));
                            }
                            top.source = Some(map.next_value()?);
                        }
                        other => {
                            if top.other.is_none() {
                                top.other = Some(shorten(other.to_owned()));
                            }
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(top)
            }
        }
        d.deserialize_map(V)
    }
}

fn parse_each(data: &Bytes, raws: &[&RawValue], source: Option<&str>) -> Ingested {
    let mut out = Ingested {
        events: Vec::with_capacity(raws.len()),
        errors: Vec::new(),
    };
    for (index, raw) in raws.iter().enumerate() {
        match event_from_json(data, raw.get().as_bytes()) {
            Ok(mut e) => {
                if let (Some(s), true) = (source, e.source.is_empty()) {
                    e.source = Str::from(s);
                }
                out.events.push(e)
            }
            Err(message) => out.errors.push(RecordError {
                index,
                message: shorten(message),
            }),
        }
    }
    out
}

/// Parses one event object. `text` must be a slice of `data`, so that the
/// payload can be a zero-copy slice of it.
fn event_from_json(data: &Bytes, text: &[u8]) -> Result<Event, String> {
    let j: EventJson<'_> = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    let payload = match (j.payload, j.payload_base64) {
        (Some(_), Some(_)) => {
            return Err("give `payload` or `payload_base64`, not both".to_owned());
        }
        (Some(raw), None) => {
            let t = raw.get();
            if t == "null" {
                Bytes::new()
            } else if t.starts_with('"') {
                let s: String = serde_json::from_str(t).map_err(|e| e.to_string())?;
                Bytes::from(s)
            } else {
                data.slice_ref(t.as_bytes())
            }
        }
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map(Bytes::from)
            .map_err(|e| format!("`payload_base64` is not valid base64: {e}"))?,
        (None, None) => Bytes::new(),
    };
    // Strings without escapes are read straight from the input (no
    // intermediate `String`); short ones are held inline.
    fn own<T: From<String> + for<'s> From<&'s str>>(c: Cow<'_, str>) -> T {
        match c {
            Cow::Borrowed(b) => T::from(b),
            Cow::Owned(o) => T::from(o),
        }
    }
    Ok(Event {
        id: own(j.id),
        timestamp_unix_ns: j.timestamp_unix_ns,
        source: own::<Str>(j.source),
        event_type: own::<Str>(j.event_type),
        metadata: j.metadata,
        payload,
        route_to: j.route_to.into_iter().map(Str::from).collect(),
        severity: j.severity,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventJson<'a> {
    #[serde(default, borrow)]
    id: Cow<'a, str>,
    #[serde(default, alias = "timestampUnixNs", deserialize_with = "int_or_string")]
    timestamp_unix_ns: i64,
    #[serde(default, borrow)]
    source: Cow<'a, str>,
    #[serde(default, alias = "eventType", borrow)]
    event_type: Cow<'a, str>,
    #[serde(default, deserialize_with = "metadata")]
    metadata: Metadata,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
    #[serde(default, alias = "payloadBase64")]
    payload_base64: Option<String>,
    #[serde(default, alias = "routeTo")]
    route_to: Vec<String>,
    #[serde(default, deserialize_with = "severity")]
    severity: i32,
}

/// A JSON string, borrowed from the input when it has no escapes: metadata
/// keys and values become [`Str`]s without a `String` in between.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Text<'a>(Cow<'a, str>);

impl Text<'_> {
    fn into_str(self) -> Str {
        match self.0 {
            Cow::Borrowed(b) => Str::from(b),
            Cow::Owned(o) => Str::from(o),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A JSON object of strings, read straight into [`Metadata`] (a later
/// duplicate key replaces an earlier one).
fn metadata<'de, D: Deserializer<'de>>(d: D) -> Result<Metadata, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Metadata;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of strings")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Metadata, A::Error> {
            let mut entries = Vec::new();
            while let Some((k, v)) = map.next_entry::<Text<'de>, Text<'de>>()? {
                if entries.capacity() == 0 {
                    // Most events carry one or two entries.
                    entries.reserve_exact(2);
                }
                entries.push((k.into_str(), v.into_str()));
            }
            Ok(Metadata::from_entries(entries))
        }
    }
    d.deserialize_map(V)
}

/// proto3 JSON writes 64-bit integers as strings; people write numbers. Take both.
fn int_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum IntOrString<'a> {
        Int(i64),
        Str(&'a str),
    }
    match IntOrString::deserialize(d)? {
        IntOrString::Int(i) => Ok(i),
        IntOrString::Str(s) => s.parse().map_err(|_| {
            serde::de::Error::custom(format!(
                "timestamp_unix_ns must be an integer (nanoseconds), got {s:?}"
            ))
        }),
    }
}

fn severity<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrName<'a> {
        Num(i32),
        Name(&'a str),
    }
    let sev = match NumOrName::deserialize(d)? {
        NumOrName::Num(n) => Severity::try_from(n).ok(),
        NumOrName::Name(s) => Severity::from_name(s),
    };
    sev.map(|s| s as i32).ok_or_else(|| {
        serde::de::Error::custom(
            "unknown severity, expected one of debug, info, warn, error, critical (or SEVERITY_*)",
        )
    })
}

/// The payload as raw JSON, when embedding it reads back to the same bytes:
/// an object or array, with nothing around it. A JSON string, number or
/// `null` would come back changed (a string loses its quotes), so those are
/// written as text instead.
fn embeddable_json(p: &[u8]) -> Option<&str> {
    crate::json_syntax::json_container(p)
}

/// An event's JSON form (what [`write_event`] writes) as a value, for
/// replies and tools that wrap events in JSON of their own.
pub fn event_value(event: &Event) -> serde_json::Value {
    let mut line = Vec::with_capacity(256);
    write_event(&mut line, event);
    serde_json::from_slice(&line).unwrap_or(serde_json::Value::Null)
}

/// Writes one event as a single line of JSON (without the newline).
///
/// Written by hand, not through serde: this is the stdout emitter's (and
/// every JSON emitter's) per-event cost. Strings without anything to escape
/// (the usual case) are found eight bytes at a time and copied whole; the
/// output is byte for byte what serde_json writes for the same fields.
pub fn write_event(out: &mut Vec<u8>, event: &Event) {
    out.extend_from_slice(b"{\"id\":");
    write_str(out, &event.id);
    out.extend_from_slice(b",\"timestamp_unix_ns\":");
    out.extend_from_slice(
        itoa::Buffer::new()
            .format(event.timestamp_unix_ns)
            .as_bytes(),
    );
    out.extend_from_slice(b",\"source\":");
    write_str(out, &event.source);
    out.extend_from_slice(b",\"event_type\":");
    write_str(out, &event.event_type);
    match event.severity() {
        Severity::Unspecified => {}
        s => {
            out.extend_from_slice(b",\"severity\":");
            write_str(out, s.as_str_name());
        }
    }
    if !event.metadata.is_empty() {
        out.extend_from_slice(b",\"metadata\":{");
        for (i, (k, v)) in event.metadata.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(out, k);
            out.push(b':');
            write_str(out, v);
        }
        out.push(b'}');
    }
    if !event.route_to.is_empty() {
        out.extend_from_slice(b",\"route_to\":[");
        for (i, r) in event.route_to.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(out, r);
        }
        out.push(b']');
    }
    let p = &event.payload;
    if !p.is_empty() {
        if let Some(raw) = embeddable_json(p) {
            out.extend_from_slice(b",\"payload\":");
            if memchr2(b'\n', b'\r', raw.as_bytes()) {
                // Keep it one line: re-encode pretty JSON compactly.
                match serde_json::from_str::<serde_json::Value>(raw) {
                    Ok(v) => {
                        let _ = serde_json::to_writer(&mut *out, &v);
                    }
                    Err(_) => write_str(out, raw),
                }
            } else {
                out.extend_from_slice(raw.as_bytes());
            }
        } else if let Ok(text) = std::str::from_utf8(p) {
            out.extend_from_slice(b",\"payload\":");
            write_str(out, text);
        } else {
            out.extend_from_slice(b",\"payload_base64\":\"");
            let start = out.len();
            out.resize(start + base64::encoded_len(p.len(), true).unwrap_or(0), 0);
            let n = base64::engine::general_purpose::STANDARD
                .encode_slice(p, &mut out[start..])
                .unwrap_or(0);
            out.truncate(start + n);
            out.push(b'"');
        }
    }
    out.push(b'}');
}

/// Whether `s` holds either byte: eight bytes at a time (payloads are
/// checked for line breaks on every line the stdout emitter writes).
fn memchr2(a: u8, b: u8, s: &[u8]) -> bool {
    const LO: u64 = splat(1);
    const HI: u64 = splat(0x80);
    let has = |w: u64, byte: u8| {
        let x = w ^ splat(byte);
        x.wrapping_sub(LO) & !x & HI != 0
    };
    let mut words = s.chunks_exact(8);
    for chunk in &mut words {
        let w = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        if has(w, a) || has(w, b) {
            return true;
        }
    }
    words.remainder().iter().any(|&c| c == a || c == b)
}

/// Eight copies of a byte.
const fn splat(b: u8) -> u64 {
    0x0101_0101_0101_0101 * b as u64
}

/// Whether any of the eight bytes of `w` must be escaped in a JSON string:
/// a control character, `"` or `\`.
#[inline]
fn word_needs_escape(w: u64) -> bool {
    escapes(w) != 0
}

/// The bytes of `w` (little-endian) that a JSON string must escape, as the
/// top bit of each: a quote, a backslash or a control byte. The lowest set
/// bit is always one of them (a byte above one may be marked too, by the
/// borrow), so `trailing_zeros() / 8` finds the first.
pub(crate) fn escapes(w: u64) -> u64 {
    const LO: u64 = splat(1);
    const HI: u64 = splat(0x80);
    let control = w.wrapping_sub(splat(0x20)) & !w & HI;
    let q = w ^ splat(b'"');
    let quote = q.wrapping_sub(LO) & !q & HI;
    let s = w ^ splat(b'\\');
    let slash = s.wrapping_sub(LO) & !s & HI;
    control | quote | slash
}

/// Writes `s` as a JSON string, escaped as serde_json escapes.
#[inline]
fn write_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    // Skip the clean prefix eight bytes at a time.
    let mut clean = 0;
    while clean + 8 <= bytes.len() {
        let w = u64::from_le_bytes(bytes[clean..clean + 8].try_into().unwrap_or([0; 8]));
        if word_needs_escape(w) {
            break;
        }
        clean += 8;
    }
    out.push(b'"');
    out.extend_from_slice(&bytes[..clean]);
    let mut start = clean;
    for (i, &b) in bytes.iter().enumerate().skip(clean) {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x09 => b't',
            0x0a => b'n',
            0x0c => b'f',
            0x0d => b'r',
            0x00..=0x1f => b'u',
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.push(b'\\');
        out.push(short);
        if short == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[test]
    fn line_breaks_are_found_wherever_they_are() {
        // Eight bytes at a time must agree with one at a time: at every
        // position of every length, among bytes one bit away.
        for fill in [b'x', 0x00, 0x0b, 0x0c, 0x0e, 0x8a, 0x8d, 0xff] {
            for len in 0..40 {
                let clean = vec![fill; len];
                assert!(!memchr2(b'\n', b'\r', &clean), "fill {fill:#x} len {len}");
                for at in 0..len {
                    for brk in [b'\n', b'\r'] {
                        let mut s = clean.clone();
                        s[at] = brk;
                        assert!(memchr2(b'\n', b'\r', &s), "{brk:#x} at {at} of {len}");
                    }
                }
            }
        }
    }

    /// The serde form `write_event` must match byte for byte.
    #[derive(Serialize)]
    struct EventOut<'a> {
        id: &'a str,
        timestamp_unix_ns: i64,
        source: &'a str,
        event_type: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        severity: Option<&'static str>,
        #[serde(skip_serializing_if = "Metadata::is_empty")]
        metadata: &'a Metadata,
        #[serde(skip_serializing_if = "<[Str]>::is_empty")]
        route_to: &'a [Str],
        #[serde(skip_serializing_if = "Option::is_none")]
        payload: Option<PayloadOut<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        payload_base64: Option<String>,
    }

    #[derive(Serialize)]
    #[serde(untagged)]
    enum PayloadOut<'a> {
        Json(&'a RawValue),
        OwnedJson(Box<RawValue>),
        Text(&'a str),
    }

    /// serde_json's own reading of a payload it can embed.
    fn serde_embeddable(p: &[u8]) -> Option<&RawValue> {
        if !matches!(p.first(), Some(b'{' | b'[')) {
            return None;
        }
        let raw = serde_json::from_slice::<&RawValue>(p).ok()?;
        (raw.get().len() == p.len()).then_some(raw)
    }

    fn write_event_serde(out: &mut Vec<u8>, event: &Event) {
        let p = &event.payload;
        let mut payload_base64 = None;
        let payload = if p.is_empty() {
            None
        } else if let Some(raw) = serde_embeddable(p) {
            if raw.get().contains(['\n', '\r']) {
                match serde_json::from_str::<serde_json::Value>(raw.get())
                    .ok()
                    .and_then(|v| serde_json::value::to_raw_value(&v).ok())
                {
                    Some(compact) => Some(PayloadOut::OwnedJson(compact)),
                    None => Some(PayloadOut::Text(raw.get())),
                }
            } else {
                Some(PayloadOut::Json(raw))
            }
        } else if let Ok(text) = std::str::from_utf8(p) {
            Some(PayloadOut::Text(text))
        } else {
            payload_base64 = Some(base64::engine::general_purpose::STANDARD.encode(p));
            None
        };
        let severity = match event.severity() {
            Severity::Unspecified => None,
            s => Some(s.as_str_name()),
        };
        let view = EventOut {
            id: &event.id,
            timestamp_unix_ns: event.timestamp_unix_ns,
            source: &event.source,
            event_type: &event.event_type,
            severity,
            metadata: &event.metadata,
            route_to: &event.route_to,
            payload,
            payload_base64,
        };
        let _ = serde_json::to_writer(out, &view);
    }

    fn same_as_serde(e: &Event) {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        write_event(&mut ours, e);
        write_event_serde(&mut theirs, e);
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs),
            "{e:?}"
        );
    }

    #[test]
    fn the_hand_written_form_is_serde_jsons_byte_for_byte() {
        let tricky = [
            "",
            "plain",
            "exactly8",
            "sixteen-bytes-ok",
            "a\"quote",
            "back\\slash after eight bytes\\",
            "tab\there, newline\n, cr\r, bell\u{7}, nul\u{0}, esc\u{1b}, del\u{7f}",
            "\u{8}\u{c}\u{1f} ünïcödé ✓ 🚀 \"\\",
            "0123456\"",
            "01234567\u{1}",
        ];
        for (i, s) in tricky.iter().enumerate() {
            let mut e = Event::new(*s)
                .with_id(*s)
                .with_source(*s)
                .with_metadata(*s, *s)
                .with_metadata("k", "v")
                .with_route_to([*s, "b"]);
            e.timestamp_unix_ns = [0, -1, i64::MAX, i64::MIN, 1_764_346_142_123_000_000][i % 5];
            e.severity = (i % 7) as i32;
            for payload in [
                Bytes::new(),
                Bytes::from(s.to_string()),
                Bytes::from(format!(
                    r#"{{"k":"{}"}}"#,
                    s.replace('"', "'").replace('\\', "/")
                )),
                Bytes::from_static(b"{\n  \"pretty\": [1, 2]\n}"),
                Bytes::from_static(b"[1,2"),
                Bytes::from_static(b"\"just a string\""),
                Bytes::from_static(&[0xff, 0x00, 0xfe]),
            ] {
                e.payload = payload;
                same_as_serde(&e);
            }
        }
        // Minimal events too.
        same_as_serde(&Event::new("t"));
    }

    proptest::proptest! {
        #[test]
        fn any_strings_are_written_as_serde_writes_them(
            id in ".*", source in "\\PC*", ty in "[\\x00-\\x7f]*",
            k in ".*", v in "[\"\\\\\\x00-\\x20a-z]*", payload in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
        ) {
            let mut e = Event::new(ty).with_id(id).with_source(source).with_metadata(k, v);
            e.payload = Bytes::from(payload);
            same_as_serde(&e);
        }
    }

    fn parse(s: &'static str) -> Result<Ingested, IngestError> {
        events_from_json(&Bytes::from_static(s.as_bytes()))
    }

    #[test]
    fn metadata_with_and_without_escapes() {
        let input =
            Bytes::from_static(br#"{"event_type":"t","metadata":{"plain":"value","k\"q":"v\nw"}}"#);
        let out = events_from_json(&input).unwrap();
        let md = &out.events[0].metadata;
        assert_eq!(md.get("plain").map(|v| v.as_str()), Some("value"));
        assert_eq!(md.get("k\"q").map(|v| v.as_str()), Some("v\nw"));
        let bad = Bytes::from_static(br#"{"metadata":{"k":1}}"#);
        let err = events_from_json(&bad).unwrap().errors[0].message.clone();
        assert!(err.contains("a string"), "{err}");
        let list = Bytes::from_static(br#"{"metadata":["k","v"]}"#);
        let err = events_from_json(&list).unwrap().errors[0].message.clone();
        assert!(err.contains("an object of strings"), "{err}");
        // Out of order, and a key twice: sorted, the later one kept.
        let dup = Bytes::from_static(br#"{"metadata":{"z":"1","a":"2","z":"3"}}"#);
        let md = &events_from_json(&dup).unwrap().events[0].metadata;
        let got: Vec<(&str, &str)> = md.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, [("a", "2"), ("z", "3")]);
    }

    #[test]
    fn single_object_array_and_wrapper() {
        assert_eq!(parse(r#"{"event_type":"a"}"#).unwrap().events.len(), 1);
        assert_eq!(
            parse(r#" [{"event_type":"a"},{"eventType":"b"}] "#)
                .unwrap()
                .events[1]
                .event_type,
            "b"
        );
        let w = parse(r#"{"source":"s","events":[{"id":"x"},{"id":"y","source":"own"}]}"#).unwrap();
        assert_eq!(w.events[0].source, "s");
        assert_eq!(w.events[1].source, "own");
    }

    #[test]
    fn all_fields() {
        let out = parse(
            r#"{"id":"id-1","timestamp_unix_ns":"42","source":"app","event_type":"t",
                "metadata":{"k":"v"},"payload":"hello","route_to":["stdout"],"severity":"warn"}"#,
        )
        .unwrap();
        let e = &out.events[0];
        assert_eq!(e.id, "id-1");
        assert_eq!(e.timestamp_unix_ns, 42);
        assert_eq!(e.metadata["k"], "v");
        assert_eq!(e.payload, Bytes::from_static(b"hello"));
        assert_eq!(e.route_to, vec!["stdout".to_string()]);
        assert_eq!(e.severity(), Severity::Warn);
    }

    #[test]
    fn bad_records_are_reported_and_good_ones_kept() {
        let out = parse(r#"[{"id":"ok"},{"id":5},{"evnt_type":"typo"},{"id":"ok2"}]"#).unwrap();
        let ids: Vec<_> = out.events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["ok", "ok2"]);
        assert_eq!(out.errors.len(), 2);
        assert_eq!(out.errors[0].index, 1);
        assert_eq!(out.errors[1].index, 2);
        assert!(out.errors[1].message.contains("unknown field `evnt_type`"));
    }

    #[test]
    fn malformed_documents_name_the_problem() {
        for bad in ["", "   ", "{", "[1,", "\"text\"", "42", "{\"events\": 3}"] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("malformed JSON input"), "{bad:?}: {err}");
        }
        let err = parse("{\"id\": \"x\",}").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn payload_forms_round_trip() {
        let mut bin = Event::new("t").with_payload(&b"\xff\x00"[..]);
        bin.id = "b".into();
        for e in [
            Event::new("t").with_payload(&br#"{"a":[1,2]}"#[..]),
            Event::new("t").with_payload(&b"plain text"[..]),
            bin,
            Event::new("t"),
        ] {
            let mut line = Vec::new();
            write_event(&mut line, &e);
            let back = events_from_json(&Bytes::from(line.clone())).unwrap();
            assert_eq!(back.events, vec![e], "{}", String::from_utf8_lossy(&line));
        }
    }

    #[test]
    fn payloads_that_look_like_json_scalars_round_trip_as_bytes() {
        for p in [&br#""hi""#[..], b"null", b"42", b" {\"a\":1} ", b"true"] {
            let e = Event::new("t").with_payload(p);
            let mut line = Vec::new();
            write_event(&mut line, &e);
            let back = events_from_json(&Bytes::from(line.clone())).unwrap();
            assert_eq!(back.events, vec![e], "{}", String::from_utf8_lossy(&line));
        }
    }

    #[test]
    fn reading_stops_one_record_past_the_limit_and_still_checks_the_syntax() {
        // Two million non-objects: each would be a record error.
        let ones = Bytes::from(format!("[{}1]", "1,".repeat(2_000_000)));
        let out = events_from_json_at_most(&ones, 10_000).unwrap();
        assert_eq!(out.events.len(), 0);
        assert_eq!(out.errors.len(), 10_001);
        // The same in a batch object.
        let wrapped = Bytes::from(format!(r#"{{"events": [{}1]}}"#, "1,".repeat(50_000)));
        let out = events_from_json_at_most(&wrapped, 99).unwrap();
        assert_eq!(out.errors.len(), 100);
        // Under the limit: every record.
        let few = Bytes::from_static(br#"[{"id":"a"},1,{"id":"c"}]"#);
        let out = events_from_json_at_most(&few, 3).unwrap();
        assert_eq!((out.events.len(), out.errors.len()), (2, 1));
        // Broken JSON past the limit is still an error.
        let broken = Bytes::from_static(br#"[{"id":"a"},{"id":"b"},{"id":"c"]"#);
        assert!(events_from_json_at_most(&broken, 0).is_err());
    }

    #[test]
    fn a_record_error_message_is_cut_to_a_readable_length() {
        let key = "k".repeat(100_000);
        let doc = Bytes::from(format!(r#"[{{"{key}": 1}}]"#));
        let out = events_from_json(&doc).unwrap();
        let message = &out.errors[0].message;
        assert!(message.len() <= MAX_RECORD_MESSAGE + 3, "{}", message.len());
        assert!(message.starts_with("unknown field `kkk"), "{message}");
        // And the first unknown field next to `events` is named, cut short.
        let doc = Bytes::from(format!(r#"{{"events": [], "{key}": 1}}"#));
        let err = events_from_json(&doc).unwrap_err().to_string();
        assert!(err.len() < 500, "{}", err.len());
        assert!(err.contains("next to `events`"), "{err}");
    }

    #[test]
    fn an_object_of_many_fields_is_one_event_with_an_error() {
        // A million fields that are not a batch: read as one event, whose
        // first unknown field is the error.
        let fields: String = (0..100_000).map(|i| format!(r#""f{i}":1,"#)).collect();
        let doc = Bytes::from(format!("{{{fields}\"id\":\"x\"}}"));
        let out = events_from_json(&doc).unwrap();
        assert_eq!(out.events.len(), 0);
        assert!(out.errors[0].message.contains("unknown field `f0`"));
        let err = parse(r#"{"events":[],"source":"a","source":"b"}"#).unwrap_err();
        assert!(
            err.to_string().contains("duplicate field `source`"),
            "{err}"
        );
    }

    #[test]
    fn a_repeated_events_key_is_an_error() {
        let err = parse(r#"{"events":[{"id":"a"}],"events":[{"id":"b"}]}"#).unwrap_err();
        assert!(
            err.to_string().contains("duplicate field `events`"),
            "{err}"
        );
    }

    #[test]
    fn pretty_json_payload_is_written_on_one_line() {
        let e = Event::new("t").with_payload(&b"{\n  \"a\": 1\n}"[..]);
        let mut line = Vec::new();
        write_event(&mut line, &e);
        assert!(!line.contains(&b'\n'));
        assert!(
            String::from_utf8(line)
                .unwrap()
                .contains(r#""payload":{"a":1}"#)
        );
    }

    #[test]
    fn payload_is_a_slice_of_the_input() {
        let data = Bytes::from_static(br#"{"payload": [1, 2, 3]}"#);
        let out = events_from_json(&data).unwrap();
        let p = &out.events[0].payload;
        assert_eq!(p.as_ref(), b"[1, 2, 3]");
        assert_eq!(p.as_ptr(), data[12..].as_ptr());
    }
}
