//! The ingestor trait: raw bytes in, events out.

use crate::{Event, IngestError};
use bytes::Bytes;

/// A record an ingestor could not turn into an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    /// Position of the record in the input, from zero.
    pub index: usize,
    /// What went wrong, in words.
    pub message: String,
}

/// What an ingestor made of the bytes: the events, and the records that failed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Ingested {
    /// The events, in input order.
    pub events: Vec<Event>,
    /// The records that could not be read; the others are still good.
    pub errors: Vec<RecordError>,
}

/// Turns raw bytes into a batch of events.
///
/// The gateway picks an ingestor for a raw payload by the format the sender
/// named, or else by the request's source.
///
/// ```
/// use async_trait::async_trait;
/// use bytes::Bytes;
/// use polku_core::{Event, IngestError, Ingested, Ingestor};
///
/// /// One event per line of text.
/// #[derive(Debug)]
/// struct Lines;
///
/// #[async_trait]
/// impl Ingestor for Lines {
///     fn name(&self) -> &str { "lines" }
///     fn formats(&self) -> Vec<String> { vec!["lines".into()] }
///     async fn ingest(&self, source: &str, data: Bytes) -> Result<Ingested, IngestError> {
///         let events = data
///             .split(|b| *b == b'\n')
///             .filter(|l| !l.is_empty())
///             .map(|l| Event::new("line").with_source(source).with_payload(data.slice_ref(l)))
///             .collect();
///         Ok(Ingested { events, errors: vec![] })
///     }
/// }
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let out = Lines.ingest("app", Bytes::from_static(b"a\nb\n")).await.unwrap();
/// assert_eq!(out.events.len(), 2);
/// # });
/// ```
#[async_trait::async_trait]
pub trait Ingestor: Send + Sync + std::fmt::Debug + 'static {
    /// The ingestor's name, for logs and metrics.
    fn name(&self) -> &str;

    /// The formats it reads, as a sender names them (for example `json`).
    fn formats(&self) -> Vec<String> {
        Vec::new()
    }

    /// The sources it serves when the sender names no format (for example `csv`).
    fn sources(&self) -> Vec<String> {
        Vec::new()
    }

    /// Turns the bytes into events. Bad records go to [`Ingested::errors`];
    /// an error means nothing could be read at all.
    async fn ingest(&self, source: &str, data: Bytes) -> Result<Ingested, IngestError>;

    /// Turns the bytes into events as [`ingest`](Ingestor::ingest) does, but
    /// need read no more than `max_records + 1` records (events and bad
    /// records together): the gateway refuses a request with more than
    /// `max_records` (`POLKU_MAX_EVENTS_PER_REQUEST`), and one past the limit
    /// is enough to tell. Ingestors that read untrusted input override it so
    /// that a request of millions of tiny records never becomes millions of
    /// events in memory. The default reads everything.
    async fn ingest_at_most(
        &self,
        source: &str,
        data: Bytes,
        max_records: usize,
    ) -> Result<Ingested, IngestError> {
        let _ = max_records;
        self.ingest(source, data).await
    }
}
