//! POLKU's built-in emitters: they deliver batches of events to a destination.
//!
//! - [`StdoutEmitter`]: one JSON line per event, or a pretty line for people.
//! - [`MemoryEmitter`]: keeps events in memory, for tests and for embedding.
//! - [`NullEmitter`]: counts events and drops them, for benchmarks.
//! - [`ExternalEmitter`]: delegates to an emitter plugin in any language, over gRPC.
//! - [`WebhookEmitter`]: HTTP POST of each batch as JSON, optionally signed.
//! - [`GrpcEmitter`]: batches to other POLKU gateways, with failover.
//! - `KafkaEmitter` (feature `kafka`): one record per event to Apache Kafka.
//! - `S3Emitter` (feature `s3`): compressed newline-delimited JSON objects in
//!   S3 or any S3-compatible store.
//!
//! Any of them can wear the [`resilience`] layers: timeout, retries, circuit
//! breaker and failure store.
//!
//! ```
//! use polku_core::{Emitter, Event};
//! use polku_emit::MemoryEmitter;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let mem = MemoryEmitter::new("memory");
//! mem.emit(&[Event::new("user.signup")]).await.unwrap();
//! assert_eq!(mem.events()[0].event_type, "user.signup");
//! # });
//! ```

mod external;
mod grpc;
#[cfg(feature = "kafka")]
mod kafka;
mod memory;
mod null;
pub mod resilience;
#[cfg(feature = "s3")]
mod s3;
mod split;
mod stdout;
#[cfg(any(feature = "kafka", feature = "s3"))]
mod template;
mod webhook;

pub use external::{DEFAULT_PLUGIN_TIMEOUT, ExternalEmitter};
pub use grpc::{GrpcEmitter, GrpcEmitterError};
#[cfg(feature = "kafka")]
pub use kafka::{
    DEFAULT_TOPIC as DEFAULT_KAFKA_TOPIC, KafkaEmitter, KafkaEmitterBuilder, KafkaEmitterError,
    KafkaFormat, KafkaKey,
};
pub use memory::MemoryEmitter;
pub use null::NullEmitter;
#[cfg(feature = "s3")]
pub use s3::{
    DEFAULT_PREFIX as DEFAULT_S3_PREFIX, S3Compression, S3Emitter, S3EmitterBuilder,
    S3EmitterError, S3HttpConnector,
};
pub use split::DEFAULT_MAX_REQUEST_BYTES;
pub use stdout::{StdoutEmitter, StdoutFormat};
pub use webhook::{WebhookEmitter, WebhookError};
