//! JSON → events.

use async_trait::async_trait;
use bytes::Bytes;
use polku_core::{IngestError, Ingested, Ingestor};

/// Reads events written as JSON in event.proto's field names: one object, an
/// array, or `{"events": [...]}`. See [`polku_core::json`] for the payload rules.
///
/// It serves the format `json` (and `application/json`), and optionally some
/// sources, so that raw bytes from those sources need not name a format.
#[derive(Debug, Clone, Default)]
pub struct JsonIngestor {
    sources: Vec<String>,
}

impl JsonIngestor {
    /// A JSON ingestor for the `json` format.
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
impl Ingestor for JsonIngestor {
    fn name(&self) -> &str {
        "json"
    }

    fn formats(&self) -> Vec<String> {
        vec!["json".into(), "application/json".into()]
    }

    fn sources(&self) -> Vec<String> {
        self.sources.clone()
    }

    async fn ingest(&self, _source: &str, data: Bytes) -> Result<Ingested, IngestError> {
        polku_core::json::events_from_json(&data)
    }

    async fn ingest_at_most(
        &self,
        _source: &str,
        data: Bytes,
        max_records: usize,
    ) -> Result<Ingested, IngestError> {
        polku_core::json::events_from_json_at_most(&data, max_records)
    }

    async fn ingest_records(
        &self,
        _source: &str,
        records: &[Bytes],
        max_events: usize,
    ) -> Result<Ingested, IngestError> {
        // One loop, no future per record.
        let mut out = Ingested::default();
        out.events.reserve(records.len());
        for (index, r) in records.iter().enumerate() {
            let one = polku_core::json::events_from_json_at_most(r, max_events);
            polku_core::take_record(&mut out, index, one, max_events);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_events_and_reports_bad_records() {
        let out = JsonIngestor::new()
            .ingest(
                "s",
                Bytes::from_static(br#"[{"id":"a"},{"severity":"loud"},{"id":"c"}]"#),
            )
            .await
            .unwrap();
        assert_eq!(out.events.len(), 2);
        assert_eq!(out.errors[0].index, 1);
        assert!(out.errors[0].message.contains("unknown severity"));
    }

    #[tokio::test]
    async fn invalid_json_is_malformed() {
        let err = JsonIngestor::new()
            .ingest("s", Bytes::from_static(b"{not json"))
            .await
            .unwrap_err();
        assert!(matches!(err, IngestError::Malformed { format: "JSON", .. }));
    }

    #[test]
    fn serves_json_and_chosen_sources() {
        let j = JsonIngestor::new().with_sources(["github"]);
        assert!(j.formats().contains(&"json".to_string()));
        assert_eq!(j.sources(), vec!["github".to_string()]);
    }

    proptest::proptest! {
        /// Any bytes: events, or an error that says what is wrong; never a panic.
        #[test]
        fn any_bytes_give_events_or_a_clear_error(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            match rt.block_on(JsonIngestor::new().ingest("s", Bytes::from(data))) {
                Ok(out) => {
                    for e in &out.errors {
                        proptest::prop_assert!(!e.message.is_empty());
                    }
                }
                Err(err) => {
                    let msg = err.to_string();
                    proptest::prop_assert!(msg.contains("malformed JSON input"), "{msg}");
                }
            }
        }
    }
}
