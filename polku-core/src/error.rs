//! Typed errors for ingestors and emitters.

/// Why an ingestor could not turn bytes into events at all.
///
/// A failure of single records is not an error: it is reported in
/// [`Ingested::errors`](crate::Ingested) while the good records go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// The bytes are not in the format the ingestor reads.
    #[error("malformed {format} input: {message}")]
    Malformed {
        /// The format, for example "JSON" or "protobuf".
        format: &'static str,
        /// What is wrong, for example where the parser stopped.
        message: String,
    },
    /// The ingestor (for example a plugin) could not be reached or failed.
    #[error("ingestor {ingestor} is unavailable: {message}")]
    Unavailable {
        /// The ingestor's name.
        ingestor: String,
        /// What went wrong.
        message: String,
    },
}

/// One event that an emitter could not deliver, within a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFailure {
    /// Position of the event in the batch handed to the emitter.
    pub index: usize,
    /// What went wrong.
    pub message: String,
    /// True when sending it again may succeed.
    pub retryable: bool,
}

/// Why an emitter could not deliver a batch, or part of it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmitError {
    /// The destination could not be reached or failed for now; sending again may work.
    #[error("destination unavailable: {message}")]
    Unavailable {
        /// What went wrong.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<crate::BoxError>,
        /// How long the destination asked us to wait before trying again
        /// (an HTTP `Retry-After`, an open circuit breaker's cool-down).
        retry_after: Option<std::time::Duration>,
    },
    /// The destination refused the batch; sending it again will not help.
    #[error("destination rejected the batch: {message}")]
    Rejected {
        /// What the destination said.
        message: String,
    },
    /// Some events were delivered and some were not.
    #[error("{} of the batch's events failed", failures.len())]
    Partial {
        /// The events that failed; the others were delivered.
        failures: Vec<EventFailure>,
    },
    /// The emitter has been shut down.
    #[error("emitter is shut down")]
    Closed,
}

impl EmitError {
    /// An [`EmitError::Unavailable`] with the given message and source.
    pub fn unavailable(
        message: impl Into<String>,
        source: impl Into<Option<crate::BoxError>>,
    ) -> Self {
        EmitError::Unavailable {
            message: message.into(),
            source: source.into(),
            retry_after: None,
        }
    }

    /// An [`EmitError::Unavailable`] that asks to wait `after` before the next try.
    pub fn unavailable_for(message: impl Into<String>, after: std::time::Duration) -> Self {
        EmitError::Unavailable {
            message: message.into(),
            source: None,
            retry_after: Some(after),
        }
    }

    /// The wait the destination asked for, if it asked.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            EmitError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether sending the same events again may succeed: true for
    /// [`Unavailable`](EmitError::Unavailable), and for a
    /// [`Partial`](EmitError::Partial) with at least one retryable failure.
    pub fn is_retryable(&self) -> bool {
        match self {
            EmitError::Unavailable { .. } => true,
            EmitError::Partial { failures } => failures.iter().any(|f| f.retryable),
            EmitError::Rejected { .. } | EmitError::Closed => false,
        }
    }

    /// How many events of a batch of `batch_len` this error says failed.
    pub fn failed_count(&self, batch_len: usize) -> usize {
        match self {
            EmitError::Partial { failures } => failures.len().min(batch_len),
            _ => batch_len,
        }
    }
}
