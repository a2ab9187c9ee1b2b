//! The gRPC codec for POLKU's services.
//!
//! It is prost's codec with one difference: a request that does not decode is
//! the client's mistake, so it fails with `INVALID_ARGUMENT` and a message that
//! says so, not with the `INTERNAL` that tonic's default gives. The status
//! carries the metadata key [`REJECT_REASON_KEY`] so that the gateway can count
//! the rejection by reason.

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
