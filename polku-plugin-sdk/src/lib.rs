//! The POLKU plugin SDK for Rust: implement one trait, call one function.
//!
//! A plugin is a separate process that POLKU calls over gRPC (`plugin.proto`).
//! With this SDK you implement the same trait a built-in component does,
//! [`Emitter`] or [`Ingestor`], and call [`serve_emitter`] or
//! [`serve_ingestor`]. The SDK serves the protocol, registers with the
//! gateway, sends heartbeats, registers again if the gateway restarts, and
//! unregisters when the plugin shuts down. You never compile the gateway.
//!
//! ```no_run
//! use polku_plugin_sdk::{async_trait, EmitError, Emitter, Event, ServeConfig, serve_emitter};
//!
//! /// Prints every event it gets.
//! #[derive(Debug)]
//! struct Printer;
//!
//! #[async_trait]
//! impl Emitter for Printer {
//!     fn name(&self) -> &str {
//!         "printer" // the name route_to uses
//!     }
//!     async fn emit(&self, events: &[Event]) -> Result<(), EmitError> {
//!         for e in events {
//!             eprintln!("{} {} from {}", e.id, e.event_type, e.source);
//!         }
//!         Ok(())
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // PLUGIN_ADDR (default 127.0.0.1:0), POLKU_ADDR (default localhost:50051),
//!     // POLKU_PLUGIN_TOKEN: all optional.
//!     let config = ServeConfig::from_env()?;
//!     serve_emitter(Printer, config, async {
//!         let _ = tokio::signal::ctrl_c().await;
//!     })
//!     .await?;
//!     Ok(())
//! }
//! ```
//!
//! For tests, [`testing::Harness`] serves a plugin in-process on a loopback
//! port and calls it the way the gateway does.

mod serve;
pub mod testing;

pub use async_trait::async_trait;
pub use polku_core::{
    EmitError, Emitter, Event, EventFailure, IngestError, Ingested, Ingestor, RecordError, Severity,
};
pub use polku_proto::tls::ClientTls;
pub use serve::{PluginTls, ServeConfig, ServeError, serve_emitter, serve_ingestor};

/// The plugin protocol: messages, and the client and server for each service.
pub use polku_proto::v1 as proto;

/// Events as JSON lines (the form the stdout emitter writes).
pub use polku_core::json;

/// The gRPC library the protocol is generated for.
pub use tonic;
