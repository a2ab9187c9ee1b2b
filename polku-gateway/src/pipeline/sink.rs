//! The way in for sources that read by themselves (a Kafka consumer group):
//! each record decoded alone by the ingestor of the source's format, the
//! events accepted as one batch (waiting for room: that is the source's
//! backpressure), and the source told through [`Settled`] when they are
//! safe, so it can commit its position.

use super::{Pipeline, Wait};
use crate::SubmitError;
use crate::stats::RejectReason;
use async_trait::async_trait;
use polku_core::delivery::{FailureStore, StoredFailure};
use polku_core::source::{BatchOutcome, RecordBatch, Settled, Sink, SinkError, Unreadable};
use polku_core::{Event, now_unix_ns};
use std::sync::{Arc, PoisonError};

/// The event type of an unreadable record kept in a source's store.
pub(crate) const UNREADABLE_EVENT_TYPE: &str = "polku.unreadable";

/// The pipeline, as sources see it.
#[derive(Debug, Clone)]
pub(crate) struct PipelineSink {
    pub(crate) pipeline: Arc<Pipeline>,
    /// Where the source's unreadable records are kept (none when failure
    /// stores are turned off).
    pub(crate) unreadable: Option<Arc<FailureStore>>,
}

impl PipelineSink {
    /// A sink that keeps no unreadable records.
    #[cfg(test)]
    pub(crate) fn new(pipeline: Arc<Pipeline>) -> Self {
        PipelineSink {
            pipeline,
            unreadable: None,
        }
    }
}

#[async_trait]
impl Sink for PipelineSink {
    async fn accept_records(
        &self,
        batch: RecordBatch,
        settled: Settled,
    ) -> Result<BatchOutcome, SinkError> {
        let p = &self.pipeline;
        // An unknown format may be a plugin's that has not registered yet.
        let ingestor = p
            .ingestors
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .select(&batch.source, &batch.format)
            .map_err(|e| SinkError::Busy(e.to_string()))?;
        let max = p.limits.max_events_per_request;
        let ingested = ingestor
            .ingest_records(&batch.source, &batch.records, max)
            .await
            .map_err(|e| SinkError::Busy(e.to_string()))?;
        let undecodable = ingested.errors;
        p.stats.received(undecodable.len());
        p.stats
            .rejected_events(RejectReason::IngestFailed, undecodable.len());
        let wait = Wait::UntilShutdown(p.stopping());
        match p
            .accept_settled(&batch.source, ingested.events, wait, Some(settled))
            .await
        {
            Ok(o) => Ok(BatchOutcome {
                accepted: o.accepted,
                dropped: o.dropped,
                refused: o.rejected.len(),
                first_refusal: o.rejected.first().map(|r| r.message.clone()),
                undecodable,
            }),
            Err(e) => Err(match e {
                SubmitError::ShuttingDown => SinkError::ShuttingDown,
                SubmitError::BufferFull { .. }
                | SubmitError::DiskFull { .. }
                | SubmitError::DiskFailed(_)
                | SubmitError::IngestorUnavailable(_) => SinkError::Busy(e.to_string()),
                other => SinkError::Refused(other.to_string()),
            }),
        }
    }

    async fn keep_unreadable(
        &self,
        source: &str,
        records: Vec<Unreadable>,
    ) -> Result<(), SinkError> {
        let Some(store) = &self.unreadable else {
            return Err(SinkError::Refused(
                "failure stores are turned off (POLKU_EMIT_FAILURE_STORE_EVENTS=0)".into(),
            ));
        };
        let at = now_unix_ns();
        let evicted = store.push(records.into_iter().map(|r| {
            let mut event = Event::new(UNREADABLE_EVENT_TYPE)
                .with_source(source)
                .with_payload(r.payload);
            event.timestamp_unix_ns = at;
            for (k, v) in r.origin {
                event.metadata.insert(k.into(), v.into());
            }
            StoredFailure {
                event,
                reason: r.reason,
                retryable: false,
                failed_at_unix_ns: at,
            }
        }));
        if evicted > 0 {
            tracing::warn!(
                source,
                evicted,
                "the store of unreadable records is full: its oldest were let go"
            );
        }
        // On disk before the source moves past them.
        store.flush().await.map_err(|e| {
            SinkError::Busy(format!("cannot write the unreadable records to disk: {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::log::tests::TempDir;
    use crate::pipeline::testing::{TestEmitter, durable_pipeline, finish, limits, pipeline};
    use bytes::Bytes;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

    fn flag() -> (Arc<AtomicBool>, Settled) {
        let f = Arc::new(AtomicBool::new(false));
        let g = f.clone();
        (f, Settled::new(move || g.store(true, SeqCst)))
    }

    fn records(values: &[&'static str]) -> RecordBatch {
        RecordBatch {
            source: "topic".into(),
            format: "json".into(),
            records: values
                .iter()
                .map(|v| Bytes::from_static(v.as_bytes()))
                .collect(),
        }
    }

    #[tokio::test]
    async fn in_memory_a_batch_is_settled_once_every_emitter_is_done() {
        let (a, b) = (TestEmitter::new("a"), TestEmitter::new("b"));
        let p = pipeline(
            vec![a.clone(), b.clone()],
            100,
            polku_middleware::identity(),
            limits(),
        );
        a.hold();
        let sink = PipelineSink::new(p.clone());
        let (safe, settled) = flag();
        let out = sink
            .accept_records(
                records(&[
                    r#"{"id":"1","event_type":"t"}"#,
                    "nope",
                    r#"[{"id":"2","event_type":"t"}]"#,
                ]),
                settled,
            )
            .await
            .unwrap();
        assert_eq!(out.accepted, 2);
        assert_eq!(out.undecodable.len(), 1);
        assert_eq!(out.undecodable[0].index, 1, "the record's own index");
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert_eq!(b.ids(), ["1", "2"]);
        assert!(!safe.load(SeqCst), "a still holds the batch");
        a.release();
        finish(&p).await;
        assert!(safe.load(SeqCst), "settled once a delivered too");
    }

    #[tokio::test]
    async fn a_refused_batch_is_settled_at_once_and_says_why() {
        let a = TestEmitter::new("a");
        let p = pipeline(vec![a.clone()], 100, polku_middleware::identity(), limits());
        let sink = PipelineSink::new(p.clone());
        let (safe, settled) = flag();
        let mut batch = records(&["{}"]);
        batch.format = "avro".into();
        let err = sink.accept_records(batch, settled).await.unwrap_err();
        assert!(
            matches!(err, SinkError::Busy(ref m) if m.contains("avro")),
            "{err}"
        );
        assert!(safe.load(SeqCst), "dropped on an error");
        finish(&p).await;
        let (safe, settled) = flag();
        let err = sink
            .accept_records(records(&[r#"{"event_type":"t"}"#]), settled)
            .await
            .unwrap_err();
        assert_eq!(err, SinkError::ShuttingDown);
        assert!(safe.load(SeqCst));
    }

    #[tokio::test]
    async fn with_the_durable_buffer_a_batch_is_settled_once_on_disk() {
        let dir = TempDir::new();
        let a = TestEmitter::new("a");
        a.hold();
        let p = durable_pipeline(vec![a.clone()], 100, &dir.0, 64 << 20);
        let sink = PipelineSink::new(p.clone());
        let (safe, settled) = flag();
        let out = sink
            .accept_records(records(&[r#"{"id":"1","event_type":"t"}"#]), settled)
            .await
            .unwrap();
        assert_eq!(out.accepted, 1);
        assert!(safe.load(SeqCst), "synced: safe though not yet delivered");
        a.release();
        finish(&p).await;
        if let Some(j) = p.journal() {
            j.close().await;
        }
    }

    #[tokio::test]
    async fn unreadable_records_are_kept_with_where_they_came_from_or_refused_without_a_store() {
        let a = TestEmitter::new("a");
        let p = pipeline(vec![a.clone()], 100, polku_middleware::identity(), limits());
        let record = || Unreadable {
            payload: Bytes::from_static(b"\xff not json"),
            reason: "expected value at line 1".into(),
            origin: vec![("kafka.offset".into(), "41".into())],
        };
        let err = PipelineSink::new(p.clone())
            .keep_unreadable("kafka", vec![record()])
            .await
            .unwrap_err();
        assert!(
            matches!(err, SinkError::Refused(ref m) if m.contains("FAILURE_STORE_EVENTS")),
            "{err}"
        );
        let store = p.unreadable_store("kafka", (10, 1 << 20)).unwrap().unwrap();
        let sink = PipelineSink {
            pipeline: p.clone(),
            unreadable: Some(store.clone()),
        };
        sink.keep_unreadable("kafka", vec![record(), record()])
            .await
            .unwrap();
        let kept = p.unreadable("kafka").unwrap().list(0, 10);
        assert_eq!(kept.len(), 2);
        let e = &kept[0].event;
        assert_eq!(e.event_type, UNREADABLE_EVENT_TYPE);
        assert_eq!(e.source, "kafka");
        assert_eq!(&e.payload[..], b"\xff not json");
        assert_eq!(e.metadata.get("kafka.offset").map(|v| &**v), Some("41"));
        assert_eq!(kept[0].reason, "expected value at line 1");
        assert!(!kept[0].retryable);
        assert!(a.ids().is_empty(), "not handed to any emitter");
        assert!(p.unreadable("other").is_none());
        assert!(p.unreadable_store("off", (0, 0)).unwrap().is_none());
        finish(&p).await;
    }
}
