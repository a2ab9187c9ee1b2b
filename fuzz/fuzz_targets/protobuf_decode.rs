//! Any bytes as an Event, an EventBatch or a SendEventRequest: the decoder
//! never panics, and whatever it accepts encodes and decodes back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use polku_core::Event;
use polku_proto::v1::{EventBatch, SendEventRequest};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = Event::decode(data) {
        let again = Event::decode(event.encode_to_vec().as_slice()).expect("re-encoded event decodes");
        assert_eq!(again, event);
    }
    if let Ok(batch) = EventBatch::decode(bytes::Bytes::copy_from_slice(data)) {
        let again = EventBatch::decode(batch.encode_to_vec().as_slice()).expect("re-encoded batch decodes");
        assert_eq!(again, batch);
    }
    let _ = SendEventRequest::decode(data);
});
