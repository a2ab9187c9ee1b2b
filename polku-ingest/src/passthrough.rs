//! Protobuf → events, for producers that already speak event.proto.

use async_trait::async_trait;
use bytes::Bytes;
use polku_core::{Event, IngestError, Ingested, Ingestor, RecordError};
use polku_proto::v1::EventBatch;

/// Reads a protobuf-encoded `polku.v1.EventBatch`. The events are POLKU's own
/// type, so decoding is the only work; payloads are slices of the input.
#[derive(Debug, Clone, Default)]
pub struct PassthroughIngestor {
    sources: Vec<String>,
}

impl PassthroughIngestor {
    /// A passthrough ingestor for the `protobuf` format.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also serve these sources when a request names no format.
    pub fn with_sources<I, S>(mut self, sources: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.sources.extend(sources.into_iter().map(Into::into));
        self
    }
}

#[async_trait]
impl Ingestor for PassthroughIngestor {
    fn name(&self) -> &str {
        "passthrough"
    }

    fn formats(&self) -> Vec<String> {
        vec![
            "protobuf".into(),
            "proto".into(),
            "application/x-protobuf".into(),
            "application/protobuf".into(),
        ]
    }

    fn sources(&self) -> Vec<String> {
        self.sources.clone()
    }

    async fn ingest(&self, source: &str, data: Bytes) -> Result<Ingested, IngestError> {
        self.ingest_at_most(source, data, usize::MAX).await
    }

    async fn ingest_at_most(
        &self,
        _source: &str,
        data: Bytes,
        max_records: usize,
    ) -> Result<Ingested, IngestError> {
        let batch =
            EventBatch::decode_at_most(data, max_records).map_err(|e| IngestError::Malformed {
                format: "protobuf",
                message: format!("not a polku.v1.EventBatch: {e}"),
            })?;
        Ok(Ingested {
            events: batch.events,
            errors: Vec::new(),
        })
    }

    /// Each record is one encoded `polku.v1.Event` (what the Kafka emitter
    /// writes with its `protobuf` format), not a batch.
    async fn ingest_records(
        &self,
        _source: &str,
        records: &[Bytes],
        _max_events: usize,
    ) -> Result<Ingested, IngestError> {
        let mut out = Ingested::default();
        out.events.reserve(records.len());
        for (index, r) in records.iter().enumerate() {
            match <Event as prost::Message>::decode(r.clone()) {
                Ok(e) => out.events.push(e),
                Err(e) => out.errors.push(RecordError {
                    index,
                    message: format!("malformed protobuf input: not a polku.v1.Event: {e}"),
                }),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polku_core::Event;
    use prost::Message;

    #[tokio::test]
    async fn reads_one_event_past_the_limit_and_no_more() {
        // 4 MiB of empty events: two million of them on the wire.
        let data = Bytes::from([0x0a, 0x00].repeat(2 << 20));
        let out = PassthroughIngestor::new()
            .ingest_at_most("s", data, 100)
            .await
            .unwrap();
        assert_eq!(out.events.len(), 101);
    }

    #[tokio::test]
    async fn decodes_a_batch_without_copying_payloads() {
        let batch = EventBatch {
            events: vec![
                Event::new("a")
                    .with_id("1")
                    .with_payload(&b"payload-one"[..]),
                Event::new("b").with_id("2"),
            ],
        };
        let data = Bytes::from(batch.encode_to_vec());
        let out = PassthroughIngestor::new()
            .ingest("s", data.clone())
            .await
            .unwrap();
        assert_eq!(out.events, batch.events);
        let p = &out.events[0].payload;
        let start = p.as_ptr() as usize - data.as_ptr() as usize;
        assert!(start < data.len(), "payload should point into the input");
    }

    #[tokio::test]
    async fn garbage_is_malformed() {
        let err = PassthroughIngestor::new()
            .ingest("s", Bytes::from_static(b"\x0a\xff\xff\xff"))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("not a polku.v1.EventBatch"),
            "{err}"
        );
    }

    proptest::proptest! {
        /// Any bytes: events, or an error that says what is wrong; never a panic.
        #[test]
        fn any_bytes_give_events_or_a_clear_error(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            match rt.block_on(PassthroughIngestor::new().ingest("s", Bytes::from(data))) {
                Ok(out) => {
                    for e in &out.errors {
                        proptest::prop_assert!(!e.message.is_empty());
                    }
                }
                Err(err) => {
                    let msg = err.to_string();
                    proptest::prop_assert!(msg.contains("not a polku.v1.EventBatch"), "{msg}");
                }
            }
        }
    }
}
