//! gRPC message framing: the 5-byte prefix (a compression flag and a
//! big-endian length) before each message. [`UnaryMessage`] reads the one
//! message of a unary call from the data frames it arrives in, refusing it
//! from its prefix alone when it is over the limit; [`frame`] writes one.
//!
//! ```
//! use polku_proto::framing::{UnaryMessage, frame};
//! use polku_proto::v1::SendEventResponse;
//!
//! let framed = frame(&SendEventResponse { accepted: 3, ..Default::default() });
//! let mut reader = UnaryMessage::new(1024);
//! let (a, b) = framed.split_at(2);
//! reader.push(bytes::Bytes::copy_from_slice(a)).unwrap();
//! reader.push(bytes::Bytes::copy_from_slice(b)).unwrap();
//! let message = reader.finish().unwrap();
//! assert_eq!(message.len(), framed.len() - 5);
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use tonic::Status;

/// The message prefix's length: a compression flag and a big-endian length.
pub const PREFIX: usize = 5;

/// One message, framed (not compressed).
pub fn frame(message: &impl Message) -> Bytes {
    let len = message.encoded_len();
    let mut framed = BytesMut::with_capacity(PREFIX + len);
    framed.put_u8(0);
    framed.put_u32(len as u32);
    // A `BytesMut` grows as needed: encoding into it cannot fail.
    message
        .encode(&mut framed)
        .expect("a BytesMut has room for any message");
    framed.freeze()
}

/// Reads the one message of a unary call: the prefix, then exactly as many
/// bytes as it announces. A message that arrives in one data frame is
/// sliced from it, not copied; one in several is put together in a buffer
/// sized by what arrived, never by what the prefix announces.
#[derive(Debug)]
pub struct UnaryMessage {
    /// The first data frame; a second one starts `more`.
    first: Bytes,
    more: Option<BytesMut>,
    /// The announced length, once the prefix is in.
    want: Option<usize>,
    max: usize,
}

impl UnaryMessage {
    /// A reader for a message of at most `max` bytes (prefix not counted).
    pub fn new(max: usize) -> Self {
        UnaryMessage {
            first: Bytes::new(),
            more: None,
            want: None,
            max,
        }
    }

    /// Takes the next data frame. Fails as soon as the prefix is wrong or
    /// over the limit, or more than one message arrives.
    pub fn push(&mut self, data: Bytes) -> Result<(), Status> {
        let have = match &mut self.more {
            None if self.first.is_empty() => {
                self.first = data;
                self.first.len()
            }
            None => {
                // A client must not make the gateway reserve the whole limit
                // by sending two small frames.
                let mut buf = BytesMut::with_capacity(self.first.len() + data.len());
                buf.extend_from_slice(&self.first);
                buf.extend_from_slice(&data);
                let have = buf.len();
                self.more = Some(buf);
                have
            }
            Some(buf) => {
                buf.extend_from_slice(&data);
                buf.len()
            }
        };
        if self.want.is_none() && have >= PREFIX {
            let prefix = self.more.as_deref().unwrap_or(&self.first);
            self.want = Some(check_prefix(&prefix[..PREFIX], self.max)?);
        }
        if let Some(w) = self.want
            && have > PREFIX + w
        {
            return Err(Status::internal(
                "a SendEvent call carries one message; more followed it (use StreamEvents)",
            ));
        }
        Ok(())
    }

    /// The message, once the body has ended.
    pub fn finish(self) -> Result<Bytes, Status> {
        let mut all = match self.more {
            Some(buf) => buf.freeze(),
            None => self.first,
        };
        match self.want {
            None if all.is_empty() => Err(Status::internal(
                "the request has no message: a SendEvent call carries one SendEventRequest",
            )),
            Some(w) if all.len() == PREFIX + w => {
                all.advance(PREFIX);
                Ok(all)
            }
            want => Err(Status::internal(format!(
                "the request ended inside its message: {} bytes arrived{}",
                all.len(),
                want.map_or(String::new(), |w| format!(
                    ", the prefix announced {}",
                    PREFIX + w
                ))
            ))),
        }
    }
}

/// Checks a message prefix: not compressed, not over `max`. Gives the length.
fn check_prefix(prefix: &[u8], max: usize) -> Result<usize, Status> {
    match prefix[0] {
        0 => {}
        1 => {
            return Err(Status::internal(
                "the message is marked compressed but the request names no grpc-encoding",
            ));
        }
        flag => {
            return Err(Status::internal(format!(
                "invalid compression flag {flag} in the message prefix (0 or 1)"
            )));
        }
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if len > max {
        let mut status = Status::out_of_range(format!(
            "message too large: {len} bytes, the limit is {max} (POLKU_MAX_MESSAGE_BYTES)"
        ));
        status.metadata_mut().insert(
            crate::codec::REJECT_REASON_KEY,
            tonic::metadata::MetadataValue::from_static("too_large"),
        );
        return Err(status);
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn framed(flag: u8, message: &[u8]) -> Vec<u8> {
        let mut v = vec![flag];
        v.extend_from_slice(&(message.len() as u32).to_be_bytes());
        v.extend_from_slice(message);
        v
    }

    fn read(frames: Vec<Vec<u8>>, max: usize) -> Result<Bytes, Status> {
        let mut r = UnaryMessage::new(max);
        for f in frames {
            r.push(Bytes::from(f))?;
        }
        r.finish()
    }

    #[test]
    fn a_message_in_one_frame_is_sliced_from_it_not_copied() {
        let frame = Bytes::from(framed(0, b"hello"));
        let mut r = UnaryMessage::new(100);
        r.push(frame.clone()).unwrap();
        let message = r.finish().unwrap();
        assert_eq!(&message[..], b"hello");
        assert_eq!(message.as_ptr(), frame[PREFIX..].as_ptr(), "no copy");
    }

    #[test]
    fn a_message_split_anywhere_is_put_together() {
        let whole = framed(0, b"hello world");
        for cut in 1..whole.len() {
            for cut2 in cut + 1..whole.len() {
                let parts = vec![
                    whole[..cut].to_vec(),
                    whole[cut..cut2].to_vec(),
                    whole[cut2..].to_vec(),
                ];
                let message = read(parts, 100).unwrap();
                assert_eq!(&message[..], b"hello world", "cut at {cut} and {cut2}");
            }
        }
        // Empty data frames change nothing.
        let message = read(vec![vec![], whole.clone(), vec![]], 100).unwrap();
        assert_eq!(&message[..], b"hello world");
    }

    #[test]
    fn an_empty_message_is_a_message() {
        assert_eq!(read(vec![framed(0, b"")], 100).unwrap().len(), 0);
    }

    #[test]
    fn framing_and_reading_agree() {
        let reply = crate::v1::SendEventResponse {
            accepted: 7,
            ..Default::default()
        };
        let message = read(vec![frame(&reply).to_vec()], 100).unwrap();
        let back = crate::v1::SendEventResponse::decode(message).unwrap();
        assert_eq!(back.accepted, 7);
    }

    #[test]
    fn bad_framing_is_refused_with_a_message_that_says_what_is_wrong() {
        let cases: Vec<(&str, Vec<Vec<u8>>, Code, &str)> = vec![
            ("no body", vec![], Code::Internal, "has no message"),
            (
                "a prefix cut short",
                vec![vec![0, 0, 0]],
                Code::Internal,
                "ended inside its message: 3 bytes arrived",
            ),
            (
                "a message cut short",
                vec![framed(0, b"hello")[..7].to_vec()],
                Code::Internal,
                "7 bytes arrived, the prefix announced 10",
            ),
            (
                "two messages",
                vec![framed(0, b"one"), framed(0, b"two")],
                Code::Internal,
                "carries one message; more followed",
            ),
            (
                "two messages in one frame",
                vec![[framed(0, b"one"), framed(0, b"two")].concat()],
                Code::Internal,
                "carries one message; more followed",
            ),
            (
                "compressed without an encoding",
                vec![framed(1, b"hello")],
                Code::Internal,
                "marked compressed but the request names no grpc-encoding",
            ),
            (
                "an unknown flag",
                vec![framed(7, b"hello")],
                Code::Internal,
                "invalid compression flag 7",
            ),
            (
                "over the limit",
                vec![framed(0, &[b'x'; 11])],
                Code::OutOfRange,
                "message too large: 11 bytes, the limit is 10 (POLKU_MAX_MESSAGE_BYTES)",
            ),
        ];
        for (name, frames, code, says) in cases {
            let status = read(frames, 10).unwrap_err();
            assert_eq!(status.code(), code, "{name}: {status:?}");
            assert!(
                status.message().contains(says),
                "{name}: {:?} should say {says:?}",
                status.message()
            );
        }
    }

    #[test]
    fn an_oversized_message_is_refused_from_its_prefix_alone() {
        let mut r = UnaryMessage::new(1 << 20);
        let status = r.push(Bytes::from(vec![0, 0x10, 0, 0, 0])).unwrap_err();
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        assert_eq!(
            status
                .metadata()
                .get(crate::codec::REJECT_REASON_KEY)
                .unwrap(),
            "too_large"
        );
    }
}
