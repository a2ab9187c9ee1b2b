//! Any bytes as the JSON the HTTP endpoint and the JSON ingestor read: the
//! parser never panics, errors carry a message, and every event it accepts
//! is written and read back as the same event.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use polku_core::json::{events_from_json, write_event};

fuzz_target!(|data: &[u8]| {
    match events_from_json(&Bytes::copy_from_slice(data)) {
        Err(err) => assert!(!err.to_string().is_empty()),
        Ok(parsed) => {
            for e in &parsed.errors {
                assert!(!e.message.is_empty());
            }
            for event in &parsed.events {
                let mut line = Vec::new();
                write_event(&mut line, event);
                let back = events_from_json(&Bytes::from(line)).expect("a written event reads back");
                assert_eq!(back.events.len(), 1);
                assert_eq!(&back.events[0], event);
            }
        }
    }
});
