//! Property tests: arbitrary bytes never make the protobuf or JSON decoders
//! panic (they answer with an error that says what is wrong), and any event
//! survives a round trip through either encoding unchanged.

use bytes::Bytes;
use polku_core::json::{events_from_json, write_event};
use polku_core::{Event, IngestError};
use proptest::prelude::*;
use prost::Message;

/// Strings that exercise the inline (up to 23 bytes) and heap forms.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,8}", ".{20,40}"]
}

fn event() -> impl Strategy<Value = Event> {
    (
        (text(), any::<i64>(), text(), text()),
        prop::collection::btree_map(text(), text(), 0..4),
        prop::collection::vec(any::<u8>(), 0..64),
        prop::collection::vec(text(), 0..3),
        0..=5i32,
    )
        .prop_map(
            |((id, ts, source, event_type), metadata, payload, route_to, severity)| {
                let mut e = Event::new(event_type).with_id(id);
                e.timestamp_unix_ns = ts;
                e.source = source.into();
                e.metadata = metadata
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect();
                e.payload = Bytes::from(payload);
                e.route_to = route_to.into_iter().collect();
                e.severity = severity;
                e
            },
        )
}

fn check_json_error(err: IngestError) -> Result<(), TestCaseError> {
    match err {
        IngestError::Malformed { message, .. } => {
            prop_assert!(!message.trim().is_empty(), "an empty error message");
            Ok(())
        }
        other => Err(TestCaseError::fail(format!(
            "unexpected error kind: {other}"
        ))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn protobuf_decode_of_any_bytes_never_panics(data in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = Event::decode(data.as_slice()) {
            prop_assert!(!e.to_string().is_empty());
        }
        let _ = Event::decode_length_delimited(data.as_slice());
    }

    #[test]
    fn protobuf_decode_of_a_damaged_event_never_panics(
        e in event(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut wire = e.encode_to_vec();
        if wire.is_empty() {
            return Ok(());
        }
        for (at, byte) in flips {
            let i = at.index(wire.len());
            wire[i] = byte;
        }
        let _ = Event::decode(&wire[..]);
        let _ = Event::decode(&wire[..cut.index(wire.len())]);
    }

    #[test]
    fn any_event_survives_protobuf(e in event()) {
        let back = Event::decode(e.encode_to_vec().as_slice()).unwrap();
        prop_assert_eq!(back, e);
    }

    #[test]
    fn any_event_survives_json_byte_for_byte(e in event()) {
        let mut line = Vec::new();
        write_event(&mut line, &e);
        let parsed = events_from_json(&Bytes::from(line)).unwrap();
        prop_assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        prop_assert_eq!(parsed.events.len(), 1);
        prop_assert_eq!(&parsed.events[0], &e);
    }

    #[test]
    fn json_decode_of_any_bytes_never_panics(data in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Err(err) = events_from_json(&Bytes::from(data)) {
            check_json_error(err)?;
        }
    }

    #[test]
    fn json_decode_of_json_like_text_never_panics(
        text in r#"[\[\]{}":,. 0-9a-z_\\-]{0,48}"#,
        field in prop::sample::select(vec![
            "id", "event_type", "eventType", "source", "metadata", "payload",
            "payload_base64", "route_to", "severity", "timestamp_unix_ns", "events",
        ]),
    ) {
        for doc in [
            text.clone(),
            format!(r#"{{"{field}": {text}}}"#),
            format!(r#"[{{"{field}": {text}}}]"#),
            format!(r#"{{"events": [{{"{field}": {text}}}]}}"#),
        ] {
            match events_from_json(&Bytes::from(doc)) {
                Ok(parsed) => {
                    for e in &parsed.errors {
                        prop_assert!(!e.message.is_empty());
                    }
                }
                Err(err) => check_json_error(err)?,
            }
        }
    }
}
