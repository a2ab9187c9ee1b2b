//! POLKU's built-in ingestors: they turn raw bytes into events.
//!
//! - [`JsonIngestor`]: a JSON event, an array of events, or `{"events": [...]}`.
//! - [`PassthroughIngestor`]: events already encoded as a protobuf `EventBatch`.
//! - [`ExternalIngestor`]: delegates to an ingestor plugin in any language, over gRPC.
//! - `KafkaSource` (feature `kafka`): a source, not an ingestor: it reads
//!   topics as a member of a consumer group and hands each record to the
//!   ingestor of its format.
//!
//! The gateway picks one for a raw payload by the format the sender names
//! (`json`, `protobuf`), or else by the request's source.
//!
//! ```
//! use bytes::Bytes;
//! use polku_core::Ingestor;
//! use polku_ingest::JsonIngestor;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let json = JsonIngestor::new();
//! let out = json
//!     .ingest("my-app", Bytes::from_static(br#"{"event_type": "user.signup"}"#))
//!     .await
//!     .unwrap();
//! assert_eq!(out.events[0].event_type, "user.signup");
//! # });
//! ```

mod external;
mod json;
#[cfg(feature = "kafka")]
mod kafka;
mod passthrough;

pub use external::{DEFAULT_PLUGIN_TIMEOUT, ExternalIngestor};
pub use json::JsonIngestor;
#[cfg(feature = "kafka")]
pub use kafka::{DEFAULT_GROUP, KafkaSource, KafkaSourceBuilder, KafkaSourceError};
pub use passthrough::PassthroughIngestor;
