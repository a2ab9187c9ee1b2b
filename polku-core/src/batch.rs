//! [`EventBatch`]: event.proto's `EventBatch`, decoded into a vector sized
//! once.

use crate::Event;
use bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType};

/// A batch of events: event.proto's `EventBatch`, as the gRPC requests carry
/// it.
///
/// It implements [`prost::Message`] by hand for one reason: when its first
/// event arrives, it counts the events that follow in the buffer and sizes its
/// vector once, instead of growing it (and copying every event decoded so
/// far) about ten times for a batch of a thousand.
///
/// ```
/// use polku_core::{Event, EventBatch};
/// use prost::Message;
///
/// let batch = EventBatch { events: vec![Event::new("a"), Event::new("b")] };
/// let back = EventBatch::decode(batch.encode_to_vec().as_slice()).unwrap();
/// assert_eq!(back, batch);
/// assert_eq!(back.events.capacity(), 2);
/// ```
#[derive(Clone, PartialEq, Default, Debug)]
pub struct EventBatch {
    /// The events, in order.
    pub events: Vec<Event>,
}

/// The most events a capacity hint asks for; a batch can hold more, its
/// vector then grows as usual.
const MAX_HINT: usize = 65_536;

/// How many length-delimited fields 1 follow one another in `rest`, which
/// starts at the first one's length (its key already read).
fn count_events(mut rest: &[u8]) -> usize {
    let mut n = 0;
    while n < MAX_HINT {
        let Ok(len) = prost::encoding::decode_varint(&mut rest) else {
            break;
        };
        n += 1;
        let Some(after) = usize::try_from(len).ok().and_then(|l| rest.get(l..)) else {
            break;
        };
        // The next field's key: field 1, length-delimited.
        match after.split_first() {
            Some((0x0a, next)) => rest = next,
            _ => break,
        }
    }
    n
}

/// Decodes one event straight into its place at the end of `events`, as
/// prost's `merge_repeated` does but without building it aside and moving it
/// in (a copy of the whole event, and of strings written a moment before).
/// An event that does not decode is not kept.
fn merge_in_place(
    wire_type: WireType,
    events: &mut Vec<Event>,
    buf: &mut impl Buf,
    ctx: DecodeContext,
) -> Result<(), prost::DecodeError> {
    prost::encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
    events.push(Event::default());
    let event = events.last_mut().expect("just pushed");
    let decoded = prost::encoding::message::merge(wire_type, event, buf, ctx);
    if decoded.is_err() {
        events.pop();
    }
    decoded
}

impl EventBatch {
    /// Decodes a batch, keeping at most `max_events + 1` events: one past the
    /// limit, so the caller can tell the batch is over it and refuse it,
    /// without holding millions of events decoded from a hostile request.
    /// The events past that are skipped (their framing is still checked), so
    /// the memory a batch takes is bounded by the limit, not by its length.
    ///
    /// ```
    /// use polku_core::{Event, EventBatch};
    /// use prost::Message;
    ///
    /// let wire = EventBatch { events: vec![Event::default(); 1000] }.encode_to_vec();
    /// let batch = EventBatch::decode_at_most(wire.as_slice(), 10).unwrap();
    /// assert_eq!(batch.events.len(), 11);
    /// ```
    pub fn decode_at_most(buf: impl Buf, max_events: usize) -> Result<Self, prost::DecodeError> {
        let mut batch = EventBatch::default();
        batch.merge_at_most(buf, max_events)?;
        Ok(batch)
    }

    /// Merges the encoded batch in `buf` into this one, as [`decode_at_most`]
    /// does: events past `max_events + 1` in all are skipped.
    ///
    /// [`decode_at_most`]: EventBatch::decode_at_most
    pub fn merge_at_most(
        &mut self,
        mut buf: impl Buf,
        max_events: usize,
    ) -> Result<(), prost::DecodeError> {
        let ctx = DecodeContext::default();
        let keep = max_events.saturating_add(1);
        while buf.has_remaining() {
            let (tag, wire_type) = prost::encoding::decode_key(&mut buf)?;
            if tag == 1 && self.events.len() < keep {
                if self.events.capacity() == 0 && wire_type == WireType::LengthDelimited {
                    self.events
                        .reserve_exact(count_events(buf.chunk()).min(keep));
                }
                merge_in_place(wire_type, &mut self.events, &mut buf, ctx.clone()).map_err(
                    |mut e| {
                        e.push("EventBatch", "events");
                        e
                    },
                )?;
            } else {
                prost::encoding::skip_field(wire_type, tag, &mut buf, ctx.clone())?;
            }
        }
        Ok(())
    }
}

impl prost::Message for EventBatch {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for e in &self.events {
            prost::encoding::message::encode(1, e, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        if tag != 1 {
            return prost::encoding::skip_field(wire_type, tag, buf, ctx);
        }
        if self.events.capacity() == 0 && wire_type == WireType::LengthDelimited {
            self.events.reserve_exact(count_events(buf.chunk()));
        }
        merge_in_place(wire_type, &mut self.events, buf, ctx).map_err(|mut e| {
            e.push("EventBatch", "events");
            e
        })
    }

    fn encoded_len(&self) -> usize {
        prost::encoding::message::encoded_len_repeated(1, &self.events)
    }

    fn clear(&mut self) {
        self.events.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn a_batch_is_sized_once_and_round_trips() {
        let events: Vec<Event> = (0..1000)
            .map(|i| Event::new("t").with_id(format!("id-{i}")))
            .collect();
        let batch = EventBatch { events };
        let wire = batch.encode_to_vec();
        let back = EventBatch::decode(wire.as_slice()).unwrap();
        assert_eq!(back, batch);
        assert_eq!(back.events.capacity(), 1000);
        // Empty events (two bytes each) count too.
        let empties = EventBatch {
            events: vec![Event::default(); 5],
        };
        let back = EventBatch::decode(empties.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back.events.len(), 5);
        assert_eq!(back.events.capacity(), 5);
    }

    #[test]
    fn decoding_at_most_keeps_one_past_the_limit_and_checks_the_rest() {
        // Two million empty events (two bytes each on the wire): decoding
        // them all would take hundreds of megabytes.
        let wire: Vec<u8> = [0x0a, 0x00].repeat(2_000_000);
        let batch = EventBatch::decode_at_most(wire.as_slice(), 10_000).unwrap();
        assert_eq!(batch.events.len(), 10_001);
        assert!(batch.events.capacity() <= 10_001);
        // Under the limit: everything, as a plain decode gives.
        let small = EventBatch {
            events: vec![Event::new("a"), Event::new("b")],
        };
        let back = EventBatch::decode_at_most(small.encode_to_vec().as_slice(), 2).unwrap();
        assert_eq!(back, small);
        // A damaged event past the limit is still an error: skipping checks
        // the framing.
        let mut bad = [0x0a, 0x00].repeat(5);
        bad.extend_from_slice(&[0x0a, 0x05, 0x00]);
        assert!(EventBatch::decode_at_most(bad.as_slice(), 1).is_err());
    }

    #[test]
    fn a_damaged_batch_is_an_error_and_a_short_count_only_a_hint() {
        let batch = EventBatch {
            events: vec![Event::new("a"), Event::new("b")],
        };
        let mut wire = batch.encode_to_vec();
        // A length that runs past the end: the hint stops, decoding fails.
        wire[1] = 0x7f;
        assert!(EventBatch::decode(wire.as_slice()).is_err());
        // Another field between the events: the hint counts only the first
        // run, and the vector grows for the rest.
        let mut wire = Vec::new();
        prost::encoding::message::encode(1, &Event::new("a"), &mut wire);
        prost::encoding::string::encode(2, &"other".to_owned(), &mut wire);
        prost::encoding::message::encode(1, &Event::new("b"), &mut wire);
        let back = EventBatch::decode(wire.as_slice()).unwrap();
        assert_eq!(back.events, [Event::new("a"), Event::new("b")]);
        assert_eq!(count_events(&[0x02, 0x0a, 0x00, 0x0a]), 1);
        assert_eq!(count_events(&[0x00, 0x0a, 0x00, 0x0a, 0x00]), 3);
        assert_eq!(count_events(&[0xff]), 0);
    }

    #[test]
    fn an_event_that_does_not_decode_is_not_kept() {
        // Events are decoded where they will lie; one that fails half-way
        // must not stay behind, half filled, after those before it.
        let good = Event::new("a").with_source("s");
        let mut wire = Vec::new();
        prost::encoding::message::encode(1, &good, &mut wire);
        // The second event: its source (field 3) is not UTF-8.
        wire.extend_from_slice(&[0x0a, 0x04, 0x1a, 0x02, 0xff, 0xfe]);
        let mut batch = EventBatch::default();
        let err = batch.merge_at_most(wire.as_slice(), 10).unwrap_err();
        assert!(err.to_string().contains("source"), "{err}");
        assert_eq!(batch.events, std::slice::from_ref(&good));
        // The same through prost's own entry point.
        let mut batch = EventBatch::default();
        assert!(batch.merge(wire.as_slice()).is_err());
        assert_eq!(batch.events, [good]);
        // Not length-delimited: refused before anything is pushed.
        let mut batch = EventBatch::default();
        assert!(batch.merge_at_most(&[0x08, 0x01][..], 10).is_err());
        assert!(batch.events.is_empty());
    }
}
