//! Errors: why a request was refused, why start-up or shutdown failed.

use crate::stats::RejectReason;
use std::time::Duration;

/// Why failed events could not be sent again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResendError {
    /// No running emitter has that name.
    #[error("no running emitter is named {name:?} (running: {running})")]
    UnknownEmitter {
        /// The name asked for.
        name: String,
        /// The running emitters' names.
        running: String,
    },
    /// The emitter keeps no failure store.
    #[error("emitter {name:?} keeps no failure store")]
    NoFailureStore {
        /// The emitter's name.
        name: String,
    },
    /// A removed plugin's emitter: its failures stay in the store until the
    /// plugin registers again.
    #[error(
        "plugin emitter {name:?} is not registered now: its failures stay in the store; resend them once it registers again"
    )]
    NotRegistered {
        /// The emitter's name.
        name: String,
    },
    /// The buffer had no room (or the gateway is shutting down); the
    /// failures stay in the store.
    #[error("{0}")]
    Buffer(#[from] SubmitError),
}

/// Why a whole request was refused. Nothing of it was accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// Neither events nor raw bytes.
    #[error(
        "request has no payload: set `events` (a batch of events) or `raw` (bytes for an ingestor)"
    )]
    EmptyRequest,
    /// Raw bytes in a format that no ingestor reads.
    #[error("unknown format {format:?}: no ingestor reads it (known formats: {known})")]
    UnknownFormat {
        /// The format that was asked for.
        format: String,
        /// The formats there are.
        known: String,
    },
    /// Raw bytes with no format, from a source that no ingestor serves.
    #[error(
        "no ingestor serves source {source_name:?} (sources with an ingestor: {known}); \
         or name a format in raw.format (known formats: {formats})"
    )]
    UnknownSource {
        /// The request's source.
        source_name: String,
        /// The sources that have an ingestor.
        known: String,
        /// The formats there are.
        formats: String,
    },
    /// The ingestor could not read the bytes at all.
    #[error("{0}")]
    MalformedInput(String),
    /// The ingestor could not be reached, or failed for now.
    #[error("{0}")]
    IngestorUnavailable(#[source] polku_core::IngestError),
    /// More events than the whole buffer holds.
    #[error(
        "batch of {events} events is larger than the whole buffer ({capacity} events, \
         POLKU_BUFFER_CAPACITY); send smaller batches"
    )]
    BatchTooLarge {
        /// Events in the request.
        events: usize,
        /// The buffer's capacity.
        capacity: usize,
    },
    /// More events in one request than the limit.
    #[error(
        "request has at least {events} events, over the limit of {limit} per request \
         (POLKU_MAX_EVENTS_PER_REQUEST); send smaller batches"
    )]
    TooManyEvents {
        /// Events (and bad records) read from the request: decoders stop one
        /// past the limit, so there may be more.
        events: usize,
        /// The limit.
        limit: usize,
    },
    /// The buffer stayed full for the whole wait.
    #[error(
        "buffer full: no room for the events within {waited:?} (capacity {capacity} events, \
         {max_bytes} bytes); the emitters are behind, retry later"
    )]
    BufferFull {
        /// How long the request waited.
        waited: Duration,
        /// The buffer's capacity.
        capacity: usize,
        /// The buffer's byte budget.
        max_bytes: usize,
    },
    /// A batch bigger in bytes than the whole buffer's budget.
    #[error(
        "batch of {bytes} bytes is larger than the buffer's whole budget ({max_bytes} bytes, \
         POLKU_BUFFER_MAX_BYTES); send smaller batches"
    )]
    BatchOverBudget {
        /// What the batch counts.
        bytes: usize,
        /// The budget.
        max_bytes: usize,
    },
    /// A middleware failed (this is not a deliberate drop).
    #[error("middleware failed: {0}")]
    MiddlewareFailed(#[source] polku_core::BoxError),
    /// The gateway is shutting down.
    #[error("the gateway is shutting down and takes no more events")]
    ShuttingDown,
    /// The durable buffer's disk budget is full: the emitters are behind.
    #[error(
        "durable buffer full: its log takes {used} of {max} bytes on disk \
         (POLKU_BUFFER_MAX_DISK_BYTES); the emitters are behind, retry later"
    )]
    DiskFull {
        /// Bytes the log takes.
        used: u64,
        /// The budget.
        max: u64,
    },
    /// The durable buffer could not write or sync the events: they are not
    /// on disk, so not accepted.
    #[error(
        "durable buffer could not write the events to disk, so they are not accepted: {0}; retry later"
    )]
    DiskFailed(String),
}

impl SubmitError {
    /// The reason, for counters.
    pub fn reason(&self) -> RejectReason {
        match self {
            SubmitError::EmptyRequest => RejectReason::EmptyRequest,
            SubmitError::UnknownFormat { .. } => RejectReason::UnknownFormat,
            SubmitError::UnknownSource { .. } => RejectReason::UnknownSource,
            SubmitError::MalformedInput(_) => RejectReason::MalformedInput,
            SubmitError::IngestorUnavailable(_) => RejectReason::IngestorUnavailable,
            SubmitError::BatchTooLarge { .. } | SubmitError::BatchOverBudget { .. } => {
                RejectReason::BatchTooLarge
            }
            SubmitError::TooManyEvents { .. } => RejectReason::TooManyEvents,
            SubmitError::BufferFull { .. } => RejectReason::BufferFull,
            SubmitError::MiddlewareFailed(_) => RejectReason::MiddlewareFailed,
            SubmitError::ShuttingDown => RejectReason::ShuttingDown,
            SubmitError::DiskFull { .. } => RejectReason::DiskFull,
            SubmitError::DiskFailed(_) => RejectReason::DiskError,
        }
    }

    /// The gRPC status code that fits.
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            SubmitError::EmptyRequest
            | SubmitError::UnknownFormat { .. }
            | SubmitError::UnknownSource { .. }
            | SubmitError::MalformedInput(_)
            | SubmitError::BatchTooLarge { .. }
            | SubmitError::BatchOverBudget { .. }
            | SubmitError::TooManyEvents { .. } => Code::InvalidArgument,
            SubmitError::BufferFull { .. }
            | SubmitError::DiskFull { .. }
            | SubmitError::DiskFailed(_) => Code::ResourceExhausted,
            SubmitError::IngestorUnavailable(_)
            | SubmitError::MiddlewareFailed(_)
            | SubmitError::ShuttingDown => Code::Unavailable,
        }
    }

    /// The gRPC status, with the reason in the `polku-reject-reason` metadata.
    pub fn to_status(&self) -> tonic::Status {
        let mut status = tonic::Status::new(self.grpc_code(), self.to_string());
        status.metadata_mut().insert(
            polku_proto::codec::REJECT_REASON_KEY,
            tonic::metadata::MetadataValue::from_static(self.reason().as_str()),
        );
        status
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A source (a Kafka consumer) could not start.
    #[error(transparent)]
    Source(polku_core::source::SourceError),
    /// The listen address is taken or not allowed.
    #[error("cannot listen for gRPC on {addr} (POLKU_GRPC_ADDR): {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP listen address is taken or not allowed.
    #[error("cannot listen for HTTP on {addr} (POLKU_HTTP_ADDR): {source}")]
    HttpListen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The buffer was given no room.
    #[error("invalid gateway: the buffer capacity must be at least 1")]
    ZeroCapacity,
    /// Two emitters have one name; `route_to` needs unique names.
    #[error("invalid gateway: two emitters are named {name:?}; route_to needs unique names")]
    DuplicateEmitter {
        /// The name they share.
        name: String,
    },
    /// Two ingestors claim one format or source.
    #[error("invalid gateway: {0}")]
    Ingestors(#[from] IngestorClash),
    /// A setting the gateway starts with cannot be used.
    #[error("invalid setting: {0}")]
    Config(#[from] crate::ConfigError),
    /// The reflection service could not be built.
    #[error("cannot build gRPC reflection: {0}")]
    Reflection(#[source] tonic_reflection::server::Error),
    /// The TLS certificate, key or client CA could not be used.
    #[error(transparent)]
    Tls(#[from] crate::TlsError),
    /// Another gateway runs on the durable buffer's directory.
    #[error(
        "buffer directory {dir} (POLKU_BUFFER_DIR) is in use by another gateway (its LOCK file is held); \
         give each gateway its own directory"
    )]
    BufferLocked {
        /// The directory.
        dir: std::path::PathBuf,
    },
    /// The durable buffer's directory could not be read or written.
    #[error("cannot use buffer directory {dir} (POLKU_BUFFER_DIR): {source}")]
    BufferDir {
        /// The directory.
        dir: std::path::PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
}

/// Two ingestors claim one format or one source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {key:?} is {} by two ingestors ({first} and {second})", if *.kind == "format" { "read" } else { "served" })]
pub struct IngestorClash {
    /// `format` or `source`.
    pub kind: &'static str,
    /// The format or source they both claim.
    pub key: String,
    /// The ingestor that claimed it first.
    pub first: String,
    /// The one that claimed it again.
    pub second: String,
}

/// Why [`Gateway::serve`](crate::Gateway::serve) ended with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The gateway did not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// It ran, and its shutdown did not deliver everything it accepted.
    #[error(transparent)]
    Shutdown(#[from] ShutdownError),
}

/// Why shutdown did not deliver everything.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShutdownError {
    /// The shutdown timeout passed with accepted events still undelivered.
    #[error(
        "shutdown timeout ({timeout:?}, POLKU_SHUTDOWN_TIMEOUT) passed with {undelivered} \
         accepted events not yet delivered"
    )]
    Timeout {
        /// The timeout.
        timeout: Duration,
        /// Accepted events still in the buffer.
        undelivered: usize,
    },
    /// An emitter's task failed while it flushed.
    #[error("{emitters} emitter(s) failed while flushing on shutdown")]
    EmitterFailed {
        /// How many emitter tasks failed.
        emitters: usize,
    },
}
