//! POLKU's wire protocol: `event.proto`, `gateway.proto`, `plugin.proto` and
//! `admin.proto` (what the `polku` command talks to),
//! the one source for Rust, Python and Go, and the Rust code generated from
//! them at build time (with protox, so no system `protoc` is needed).
//!
//! The `Event`, `EventBatch` and `Severity` messages are [`polku_core`]'s own types, so a
//! batch decodes straight into the pipeline's events:
//!
//! ```
//! use polku_proto::v1::{EventBatch, SendEventRequest, send_event_request::Payload};
//! use prost::Message;
//!
//! let req = SendEventRequest {
//!     source: "my-app".into(),
//!     payload: Some(Payload::Events(EventBatch {
//!         events: vec![polku_core::Event::new("user.signup").with_id("1")],
//!     })),
//! };
//! let back = SendEventRequest::decode(req.encode_to_vec().as_slice()).unwrap();
//! assert_eq!(back, req);
//! ```
//!
//! [`FILE_DESCRIPTOR_SET`] holds the encoded descriptors, for gRPC server reflection.

pub mod codec;
pub mod framing;
pub mod status;
pub mod tls;

/// Generated code for the `polku.v1` package: messages, clients and servers.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("polku.v1");
    pub use polku_core::EventBatch;
}

/// The encoded `FileDescriptorSet` of every POLKU .proto file (and their imports).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/polku_descriptor.bin"));

/// The .proto sources, by path, for tools that want the files themselves.
pub const PROTO_FILES: &[(&str, &str)] = &[
    (
        "polku/v1/event.proto",
        include_str!("../proto/polku/v1/event.proto"),
    ),
    (
        "polku/v1/gateway.proto",
        include_str!("../proto/polku/v1/gateway.proto"),
    ),
    (
        "polku/v1/plugin.proto",
        include_str!("../proto/polku/v1/plugin.proto"),
    ),
    (
        "polku/v1/admin.proto",
        include_str!("../proto/polku/v1/admin.proto"),
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use prost_types::field_descriptor_proto::{Label, Type};

    /// polku-core's hand-written `Event` must match event.proto field for
    /// field: same numbers, same types. A drift here would corrupt the wire.
    #[test]
    fn core_event_matches_event_proto() {
        let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let file = fds
            .file
            .iter()
            .find(|f| f.name() == "polku/v1/event.proto")
            .unwrap();
        let event = file
            .message_type
            .iter()
            .find(|m| m.name() == "Event")
            .unwrap();
        let fields: Vec<(String, i32, Type, Label)> = event
            .field
            .iter()
            .map(|f| (f.name().to_owned(), f.number(), f.r#type(), f.label()))
            .collect();
        let expect = [
            ("id", 1, Type::String, Label::Optional),
            ("timestamp_unix_ns", 2, Type::Int64, Label::Optional),
            ("source", 3, Type::String, Label::Optional),
            ("event_type", 4, Type::String, Label::Optional),
            ("metadata", 5, Type::Message, Label::Repeated),
            ("payload", 6, Type::Bytes, Label::Optional),
            ("route_to", 7, Type::String, Label::Repeated),
            ("severity", 8, Type::Enum, Label::Optional),
        ];
        assert_eq!(fields.len(), expect.len());
        for (got, want) in fields.iter().zip(expect) {
            assert_eq!(
                (got.0.as_str(), got.1, got.2, got.3),
                want,
                "event.proto and polku_core::Event disagree"
            );
        }

        // And the bytes agree: an Event encoded by core decodes by field number.
        let mut e = polku_core::Event::new("t")
            .with_id("i")
            .with_source("s")
            .with_payload(&b"p"[..])
            .with_metadata("k", "v")
            .with_route_to(["r"]);
        e.timestamp_unix_ns = 7;
        e.set_severity(polku_core::Severity::Critical);
        let bytes = e.encode_to_vec();
        let wire_fields: Vec<u64> = {
            let mut buf = bytes.as_slice();
            let mut tags = Vec::new();
            while !buf.is_empty() {
                let (tag, wt) = prost::encoding::decode_key(&mut buf).unwrap();
                tags.push(u64::from(tag));
                prost::encoding::skip_field(wt, tag, &mut buf, Default::default()).unwrap();
            }
            tags
        };
        assert_eq!(wire_fields, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn severity_enum_matches() {
        let fds = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let sev = fds
            .file
            .iter()
            .flat_map(|f| f.enum_type.iter())
            .find(|e| e.name() == "Severity")
            .unwrap();
        for v in &sev.value {
            let core = polku_core::Severity::try_from(v.number()).unwrap();
            assert_eq!(core.as_str_name(), v.name());
        }
    }
}
