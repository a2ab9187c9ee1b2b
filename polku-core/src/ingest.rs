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

    /// Reads each of `records` alone (one Kafka record each), for a source
    /// that must know which record failed: a record with any bad part
    /// fails whole (none of its events are kept) and its error's index is
    /// the record's; a record of more than `max_events` events fails too.
    /// An error means no record could be read for a passing reason (a
    /// plugin is away), so the same records may be tried again.
    ///
    /// The default calls [`ingest_at_most`](Ingestor::ingest_at_most) once
    /// per record; ingestors that decode in place read them in one loop.
    async fn ingest_records(
        &self,
        source: &str,
        records: &[Bytes],
        max_events: usize,
    ) -> Result<Ingested, IngestError> {
        let mut out = Ingested::default();
        for (index, record) in records.iter().enumerate() {
            match self
                .ingest_at_most(source, record.clone(), max_events)
                .await
            {
                Ok(one) => take_record(&mut out, index, Ok(one), max_events),
                Err(e @ IngestError::Malformed { .. }) => {
                    take_record(&mut out, index, Err(e), max_events)
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

/// Adds what one record became to `out`: its events, or one error for the
/// record if any part of it failed or it holds more than `max_events`.
pub fn take_record(
    out: &mut Ingested,
    index: usize,
    one: Result<Ingested, IngestError>,
    max_events: usize,
) {
    let message = match one {
        Ok(mut one) if one.errors.is_empty() && one.events.len() <= max_events => {
            out.events.append(&mut one.events);
            return;
        }
        Ok(one) if one.errors.is_empty() => {
            format!("the record holds more than {max_events} events")
        }
        Ok(one) => {
            let bad = &one.errors[0];
            format!("part {} of the record: {}", bad.index, bad.message)
        }
        Err(e) => e.to_string(),
    };
    out.errors.push(RecordError { index, message });
}
