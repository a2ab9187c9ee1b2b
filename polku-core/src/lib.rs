//! POLKU's shared vocabulary: the [`Event`] that flows through the pipeline, the
//! batch-oriented [`Ingestor`] and [`Emitter`] traits, and the errors they return.
//!
//! Every other POLKU crate builds on this one, and it depends on none of them.
//!
//! ```
//! use polku_core::{Event, Severity};
//!
//! let mut event = Event::new("user.signup").with_source("my-app");
//! event.metadata.insert("env".into(), "prod".into());
//! event.set_severity(Severity::Info);
//! assert!(event.id.is_empty()); // the gateway gives it a UUIDv7 on ingestion
//! event.ensure_id();
//! assert_eq!(event.id.len(), 36);
//! ```

pub mod address;
pub mod auth;
mod batch;
pub mod delivery;
mod emit;
mod error;
mod event;
mod id;
mod ingest;
pub mod json;
mod json_syntax;
pub mod metadata;
mod plugin;
mod routes;
pub mod source;
mod text;
pub mod time;

pub use batch::EventBatch;
pub use emit::Emitter;
pub use error::{EmitError, EventFailure, IngestError};
pub use event::{Event, EventId, Severity, Str, ensure_ids, new_id, now_unix_ns};
pub use ingest::{Ingested, Ingestor, RecordError, take_record};
pub use metadata::Metadata;
pub use plugin::{DEFAULT_PLUGIN_TIMEOUT, PluginHost};
pub use routes::Routes;

/// A boxed error, for the places (tower services) that need one.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
