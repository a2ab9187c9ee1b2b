//! POLKU's load generator and the gateway it measures.
//!
//! - `polku-loadgen` drives a gateway with unary (`SendEvent`), streaming
//!   (`StreamEvents`) or HTTP (`POST /v1/events`) load, flat out or at a fixed
//!   rate, and reports events sent, acknowledged and delivered per second,
//!   acknowledgement latency percentiles (an HDR histogram), the gateway's
//!   ingest-to-emit latency and its resident memory.
//! - `polku-floor-gateway` is tonic serving the same service with no pipeline:
//!   the framework's own ceiling for unary calls.
//! - `polku-bench-gateway` is the gateway under test: the Hub with the JSON
//!   and protobuf ingestors, a Filter and a Transform, and a counting
//!   [`NullEmitter`](polku_gateway::NullEmitter), configured by the usual
//!   `POLKU_*` variables.
//!
//! "Delivered" is read from the gateway's `/metrics`: the null emitter's
//! `polku_emitter_events_emitted_total`. See BENCHMARKS.md for the method.
//!
//! ```
//! let req = polku_loadgen::batch_request(10, 200, None);
//! assert_eq!(req.len(), 10);
//! ```

use polku_gateway::Event;
use polku_proto::v1::send_event_request::Payload;
use polku_proto::v1::{EventBatch, SendEventRequest};
use prost::Message as _;

/// One event of about `bytes` bytes, encoded: type, source, two metadata
/// entries and a JSON payload padded to size. With `id`, it carries that id.
pub fn sample_event(bytes: usize, id: Option<String>) -> Event {
    let mut e = Event::new("user.signup").with_source("loadgen");
    if let Some(id) = id {
        e.id = id.into();
    }
    e.metadata.insert("region".into(), "eu-north-1".into());
    e.metadata.insert("tenant".into(), "t-0042".into());
    let base = e.encoded_len() + 2 + r#"{"user":"u-1234567","plan":"pro","pad":""}"#.len();
    let pad = bytes.saturating_sub(base);
    e.payload = format!(
        r#"{{"user":"u-1234567","plan":"pro","pad":"{}"}}"#,
        "x".repeat(pad)
    )
    .into_bytes()
    .into();
    e
}

/// `n` sample events (ids `{prefix}-{i}` when a prefix is given).
pub fn batch_request(n: usize, bytes: usize, id_prefix: Option<&str>) -> Vec<Event> {
    (0..n)
        .map(|i| sample_event(bytes, id_prefix.map(|p| format!("{p}-{i}"))))
        .collect()
}

/// A `SendEventRequest` for `events`, encoded.
pub fn encode_request(events: Vec<Event>) -> bytes::Bytes {
    SendEventRequest {
        source: "loadgen".into(),
        payload: Some(Payload::Events(EventBatch { events })),
    }
    .encode_to_vec()
    .into()
}

/// The same events as the body of `POST /v1/events`.
pub fn json_body(events: &[Event]) -> bytes::Bytes {
    let mut out = br#"{"source":"loadgen","events":["#.to_vec();
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        polku_gateway::json::write_event(&mut out, e);
    }
    out.extend_from_slice(b"]}");
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_about_the_size_asked_for() {
        for size in [200, 1000] {
            let e = sample_event(size, None);
            let len = e.encoded_len();
            assert!(len.abs_diff(size) <= 4, "{size} asked, {len} made");
        }
    }

    #[test]
    fn the_json_body_parses_as_the_gateway_reads_it() {
        let events = batch_request(3, 200, Some("x"));
        let body = json_body(&events);
        let parsed = polku_gateway::json::events_from_json(&body).unwrap();
        assert_eq!(parsed.events.len(), 3);
        assert_eq!(parsed.events[2].id, "x-2");
        assert_eq!(parsed.events[0].payload, events[0].payload);
    }
}
