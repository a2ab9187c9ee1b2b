//! The POLKU event gateway: the [`Hub`] builder that wires ingestors,
//! middleware, a bounded buffer and emitters together, and serves them over
//! gRPC (`polku.v1.Gateway`, with reflection and `grpc.health.v1`).
//!
//! `use polku_gateway::*;` brings the builder and every built-in component.
//! The `polku-gateway` binary is a thin `main` over the same Hub.
//!
//! The README's builder, word for word:
//!
//! ```
//! use polku_gateway::*;
//!
//! let hub = Hub::new()
//!     // Parse JSON events
//!     .ingestor(JsonIngestor::new())
//!
//!     // External plugin for CSV
//!     .ingestor(ExternalIngestor::new("csv", "http://localhost:9002"))
//!
//!     // Filter to only user events
//!     .middleware(Filter::new(|e| e.event_type.starts_with("user.")))
//!     // Add metadata
//!     .middleware(Transform::new(|mut e| {
//!         e.metadata.insert("env".into(), "prod".into());
//!         e
//!     }))
//!     // Send to stdout and Slack
//!     .emitter(StdoutEmitter::new())
//!     .emitter(ExternalEmitter::new("slack", "http://localhost:9001"))
//!
//!     .build();
//! # drop(hub);
//! ```
//!
//! Running it:
//!
//! ```no_run
//! use polku_gateway::*;
//!
//! # async fn run() -> Result<(), BoxError> {
//! let config = Config::from_env()?;
//! let gateway = Hub::new()
//!     .ingestor(JsonIngestor::new())
//!     .emitter(StdoutEmitter::new())
//!     .buffer_capacity(config.buffer.capacity)
//!     .build();
//! gateway.serve(&config, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(())
//! # }
//! ```

mod admin_grpc;
mod auth;
mod config;
mod error;
mod grpc;
mod http;
mod hub;
mod listener;
mod metrics;
mod pipeline;
mod plugins;
mod runtime;
mod send_event;
mod stats;
mod tap;

pub use config::{
    AccessSettings, BufferSettings, Config, ConfigError, ConfiguredEmitter, DeliverySettings,
    EmitSettings, GrpcForwardSettings, KafkaEmitSettings, KafkaIngestSettings, LimitSettings,
    ListenSettings, LogFormat, LogSettings, RuntimeSettings, S3EmitSettings, Scheduler, Secret,
    StdoutMode, WebhookSettings,
};
pub use error::{IngestorClash, ResendError, ServeError, ShutdownError, StartError, SubmitError};
pub use hub::{Gateway, Hub, Rejection, RunningGateway, SendReport};
pub use listener::{TlsConfig, TlsError};
pub use pipeline::queue::{EmitterOptions, Linger, QueueFull};
pub use runtime::{keep_freed_memory, runtime};
pub use stats::{
    DurableSnapshot, EmitterSnapshot, MiddlewareSnapshot, RejectReason, StatsSnapshot,
};

pub use polku_core::delivery::{BreakerState, DeliveryState, FailureStore, StoredFailure};
/// Sources that read by themselves (the Kafka consumer), and their sink.
pub use polku_core::source;
pub use polku_core::{
    BoxError, EmitError, Emitter, Event, EventFailure, IngestError, Ingested, Ingestor,
    RecordError, Severity,
};
pub use polku_emit::resilience::{BreakerConfig, Resilience, Resilient, RetryPolicy};
pub use polku_emit::{
    ExternalEmitter, GrpcEmitter, GrpcEmitterError, KafkaEmitter, KafkaEmitterBuilder,
    KafkaEmitterError, KafkaFormat, KafkaKey, MemoryEmitter, NullEmitter, S3Compression, S3Emitter,
    S3EmitterBuilder, S3EmitterError, S3HttpConnector, StdoutEmitter, StdoutFormat, WebhookEmitter,
    WebhookError,
};
pub use polku_ingest::{
    ExternalIngestor, JsonIngestor, KafkaSource, KafkaSourceBuilder, KafkaSourceError,
    PassthroughIngestor,
};
pub use polku_middleware::{
    AggregateError, Aggregator, BatchService, DedupError, Deduplicator, DropReason, Enricher,
    Filter, RateLimitError, RateLimiter, Router, SampleError, Sampler, Throttle, ThrottleError,
    Transform, Unroutable, ValidateError, Validator,
};

/// The JSON form of events (what `POST /v1/events` and the stdout emitter use).
pub use polku_core::json;

/// The wire protocol, for clients and plugins written in Rust.
pub use polku_proto as proto;

/// The names a gateway program uses most: the builder, the configuration,
/// events and the component traits, and every built-in component.
///
/// ```
/// use polku_gateway::prelude::*;
///
/// let gateway = Hub::new()
///     .ingestor(JsonIngestor::new())
///     .middleware(Filter::new(|e: &Event| !e.event_type.is_empty()))
///     .emitter(StdoutEmitter::new())
///     .build();
/// # drop(gateway);
/// ```
pub mod prelude {
    pub use crate::{
        Aggregator, Deduplicator, Enricher, Filter, RateLimiter, Router, Sampler, Throttle,
        Transform, Validator,
    };
    pub use crate::{
        BoxError, Config, EmitError, Emitter, EmitterOptions, Event, Gateway, Hub, IngestError,
        Ingested, Ingestor, QueueFull, Resilience, RunningGateway,
    };
    pub use crate::{
        ExternalEmitter, GrpcEmitter, MemoryEmitter, NullEmitter, StdoutEmitter, WebhookEmitter,
    };
    pub use crate::{ExternalIngestor, JsonIngestor, PassthroughIngestor};
}
