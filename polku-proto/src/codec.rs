//! The gRPC codec for POLKU's services.
//!
//! It is prost's codec with one difference: a request that does not decode is
//! the client's mistake, so it fails with `INVALID_ARGUMENT` and a message that
//! says so, not with the `INTERNAL` that tonic's default gives. The status
//! carries the metadata key [`REJECT_REASON_KEY`] so that the gateway can count
//! the rejection by reason.
//!
//! [`SendEventCodec`] is the gateway's own: it decodes a `SendEventRequest`
//! keeping at most one event past the per-request limit, so that a request of
//! millions of tiny events never becomes millions of events in memory.

use bytes::Buf;
use prost::Message;
use std::marker::PhantomData;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder};

/// Metadata key on error statuses that names the rejection reason for metrics.
pub const REJECT_REASON_KEY: &str = "polku-reject-reason";

/// Prost's codec, with decode errors mapped to `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct PolkuCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for PolkuCodec<T, U> {
    fn default() -> Self {
        PolkuCodec(PhantomData)
    }
}

impl<T, U> Codec for PolkuCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = PolkuDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(Default::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        PolkuDecoder(PhantomData)
    }
}

/// Decodes a prost message; a decode failure is `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct PolkuDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for PolkuDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // The message as one `Bytes` (no copy): reading a `Bytes` is cheaper
        // than going through `DecodeBuf`'s checks for every field.
        decode_message(buf.copy_to_bytes(buf.remaining())).map(Some)
    }
}

/// Decodes one request message as [`PolkuDecoder`] does: a failure is
/// `INVALID_ARGUMENT`, marked `malformed_protobuf` for the metrics. For
/// services that read the gRPC framing themselves.
pub fn decode_message<U: Message + Default>(message: bytes::Bytes) -> Result<U, Status> {
    U::decode(message).map_err(|e| {
        let mut status = Status::invalid_argument(format!("malformed protobuf message: {e}"));
        status.metadata_mut().insert(
            REJECT_REASON_KEY,
            tonic::metadata::MetadataValue::from_static("malformed_protobuf"),
        );
        status
    })
}

/// Decodes a `SendEventRequest` as [`decode_message`] does, but keeps at most
/// `max_events + 1` of its events (one past the limit, so that the caller
/// sees it is over and refuses it); the rest are skipped, their framing
/// checked. A request under the limit decodes exactly as prost decodes it.
pub fn decode_send_event_request(
    message: bytes::Bytes,
    max_events: usize,
) -> Result<crate::v1::SendEventRequest, Status> {
    decode_request_at_most(message, max_events).map_err(|e| {
        let mut status = Status::invalid_argument(format!("malformed protobuf message: {e}"));
        status.metadata_mut().insert(
            REJECT_REASON_KEY,
            tonic::metadata::MetadataValue::from_static("malformed_protobuf"),
        );
        status
    })
}

/// `SendEventRequest`'s fields, decoded by hand so that its batch can be
/// decoded with [`polku_core::EventBatch::merge_at_most`]. Same semantics as
/// prost's generated code: the last of the oneof's fields wins, and two
/// batches in a row merge.
fn decode_request_at_most(
    mut buf: bytes::Bytes,
    max_events: usize,
) -> Result<crate::v1::SendEventRequest, prost::DecodeError> {
    use crate::v1::send_event_request::Payload;
    use prost::encoding::{DecodeContext, decode_key, skip_field};
    let ctx = DecodeContext::default();
    let mut req = crate::v1::SendEventRequest::default();
    while buf.has_remaining() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        match tag {
            1 => prost::encoding::string::merge(wire_type, &mut req.source, &mut buf, ctx.clone())
                .map_err(|mut e| {
                    e.push("SendEventRequest", "source");
                    e
                })?,
            2 => {
                // The batch's bytes, as a slice of the message (no copy);
                // `bytes::merge` checks the wire type and the length.
                let mut inner = bytes::Bytes::new();
                prost::encoding::bytes::merge(wire_type, &mut inner, &mut buf, ctx.clone())
                    .map_err(|mut e| {
                        e.push("SendEventRequest", "events");
                        e
                    })?;
                if !matches!(req.payload, Some(Payload::Events(_))) {
                    req.payload = Some(Payload::Events(Default::default()));
                }
                if let Some(Payload::Events(batch)) = &mut req.payload {
                    batch.merge_at_most(inner, max_events).map_err(|mut e| {
                        e.push("SendEventRequest", "events");
                        e
                    })?;
                }
            }
            3 => {
                if !matches!(req.payload, Some(Payload::Raw(_))) {
                    req.payload = Some(Payload::Raw(Default::default()));
                }
                if let Some(Payload::Raw(raw)) = &mut req.payload {
                    prost::encoding::message::merge(wire_type, raw, &mut buf, ctx.clone())
                        .map_err(|mut e| {
                            e.push("SendEventRequest", "raw");
                            e
                        })?;
                }
            }
            _ => skip_field(wire_type, tag, &mut buf, ctx.clone())?,
        }
    }
    Ok(req)
}

/// The codec of the gateway's `polku.v1.Gateway` service: requests decode
/// with [`decode_send_event_request`], keeping at most one event past
/// `max_events`; replies encode as prost encodes them.
#[derive(Debug, Clone, Copy)]
pub struct SendEventCodec {
    max_events: usize,
}

impl SendEventCodec {
    /// A codec that keeps at most `max_events + 1` events of a request.
    pub fn new(max_events: usize) -> Self {
        SendEventCodec { max_events }
    }
}

impl Codec for SendEventCodec {
    type Encode = crate::v1::SendEventResponse;
    type Decode = crate::v1::SendEventRequest;
    type Encoder = tonic_prost::ProstEncoder<crate::v1::SendEventResponse>;
    type Decoder = SendEventDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(Default::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        SendEventDecoder {
            max_events: self.max_events,
        }
    }
}

/// The decoder of [`SendEventCodec`].
#[derive(Debug)]
pub struct SendEventDecoder {
    max_events: usize,
}

impl Decoder for SendEventDecoder {
    type Item = crate::v1::SendEventRequest;
    type Error = Status;

    fn decode(
        &mut self,
        buf: &mut DecodeBuf<'_>,
    ) -> Result<Option<crate::v1::SendEventRequest>, Status> {
        decode_send_event_request(buf.copy_to_bytes(buf.remaining()), self.max_events).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::send_event_request::Payload;
    use crate::v1::{EventBatch, RawPayload, SendEventRequest};
    use polku_core::Event;

    fn events_of(req: &SendEventRequest) -> usize {
        match &req.payload {
            Some(Payload::Events(b)) => b.events.len(),
            _ => 0,
        }
    }

    #[test]
    fn a_request_under_the_limit_decodes_as_prost_decodes_it() {
        let reqs = [
            SendEventRequest {
                source: "app".into(),
                payload: Some(Payload::Events(EventBatch {
                    events: vec![Event::new("a").with_id("1"), Event::new("b")],
                })),
            },
            SendEventRequest {
                source: "app".into(),
                payload: Some(Payload::Raw(RawPayload {
                    data: bytes::Bytes::from_static(b"{}"),
                    format: "json".into(),
                })),
            },
            SendEventRequest::default(),
        ];
        for req in reqs {
            let wire = bytes::Bytes::from(req.encode_to_vec());
            assert_eq!(decode_send_event_request(wire, 10).unwrap(), req);
        }
        // Two batches merge; a raw payload after them wins, as in prost.
        let mut wire = Vec::new();
        for id in ["1", "2"] {
            let b = EventBatch {
                events: vec![Event::new("t").with_id(id)],
            };
            prost::encoding::message::encode(2, &b, &mut wire);
        }
        let wire = bytes::Bytes::from(wire);
        let ours = decode_send_event_request(wire.clone(), 10).unwrap();
        assert_eq!(ours, SendEventRequest::decode(wire.clone()).unwrap());
        assert_eq!(events_of(&ours), 2);
        let mut with_raw = wire.to_vec();
        prost::encoding::message::encode(3, &RawPayload::default(), &mut with_raw);
        let with_raw = bytes::Bytes::from(with_raw);
        assert_eq!(
            decode_send_event_request(with_raw.clone(), 10).unwrap(),
            SendEventRequest::decode(with_raw).unwrap()
        );
    }

    #[test]
    fn a_request_of_millions_of_empty_events_keeps_one_past_the_limit() {
        let batch: Vec<u8> = [0x0a, 0x00].repeat(2_000_000);
        let mut wire = Vec::new();
        prost::encoding::bytes::encode(2, &batch, &mut wire);
        let req = decode_send_event_request(bytes::Bytes::from(wire), 10_000).unwrap();
        assert_eq!(events_of(&req), 10_001);
    }

    #[test]
    fn damage_is_invalid_argument_marked_malformed() {
        for bad in [&b"\x12\x05\x0a"[..], &b"\x0a\xff"[..], &b"\x13"[..]] {
            let status = decode_send_event_request(bytes::Bytes::from(bad), 10).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad:?}");
            assert!(status.message().starts_with("malformed protobuf message"));
            assert_eq!(
                status.metadata().get(REJECT_REASON_KEY).unwrap(),
                "malformed_protobuf"
            );
        }
    }
}
