//! The way in for sources that read by themselves (a Kafka consumer group):
//! each record decoded alone by the ingestor of the source's format, the
//! events accepted as one batch (waiting for room: that is the source's
//! backpressure), and the source told through [`Settled`] when they are
//! safe, so it can commit its position.

use super::{Pipeline, Wait};
use crate::SubmitError;
use crate::stats::RejectReason;
use async_trait::async_trait;
use polku_core::source::{BatchOutcome, RecordBatch, Settled, Sink, SinkError};
use std::sync::{Arc, PoisonError};

/// The pipeline, as sources see it.
#[derive(Debug, Clone)]
pub(crate) struct PipelineSink(pub(crate) Arc<Pipeline>);

#[async_trait]
impl Sink for PipelineSink {
    async fn accept_records(
        &self,
        batch: RecordBatch,
        settled: Settled,
    ) -> Result<BatchOutcome, SinkError> {
        let p = &self.0;
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
        let sink = PipelineSink(p.clone());
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
        let sink = PipelineSink(p.clone());
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
        let sink = PipelineSink(p.clone());
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
}
