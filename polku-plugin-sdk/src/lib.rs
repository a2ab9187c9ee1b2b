//! The POLKU plugin SDK for Rust: serve `plugin.proto` from your own process.
//!
//! A plugin is a separate process that POLKU calls over gRPC. Today this crate
//! gives you the protocol (the generated servers and messages, re-exported
//! from `polku-proto`) and the event type, so you never compile the gateway.
//! The one-trait, one-call `serve` with registration and heartbeats comes with
//! the plugins work; until then you serve the generated trait with tonic:
//!
//! ```no_run
//! use polku_plugin_sdk::proto::emitter_plugin_server::{EmitterPlugin, EmitterPluginServer};
//! use polku_plugin_sdk::proto::{EmitRequest, EmitResponse, HealthResponse, PluginInfo, PluginType};
//! use polku_plugin_sdk::tonic::{self, Request, Response, Status};
//!
//! #[derive(Debug)]
//! struct Printer;
//!
//! #[tonic::async_trait]
//! impl EmitterPlugin for Printer {
//!     async fn info(&self, _: Request<()>) -> Result<Response<PluginInfo>, Status> {
//!         Ok(Response::new(PluginInfo {
//!             name: "printer".into(),
//!             r#type: PluginType::Emitter as i32,
//!             emitter_name: "printer".into(),
//!             ..Default::default()
//!         }))
//!     }
//!     async fn health(&self, _: Request<()>) -> Result<Response<HealthResponse>, Status> {
//!         Ok(Response::new(HealthResponse { healthy: true, message: String::new() }))
//!     }
//!     async fn emit(&self, req: Request<EmitRequest>) -> Result<Response<EmitResponse>, Status> {
//!         let events = req.into_inner().events;
//!         for e in &events {
//!             eprintln!("{} {}", e.id, e.event_type);
//!         }
//!         Ok(Response::new(EmitResponse { success_count: events.len() as u32, failures: vec![] }))
//!     }
//!     async fn shutdown(&self, _: Request<()>) -> Result<Response<()>, Status> {
//!         Ok(Response::new(()))
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! tonic::transport::Server::builder()
//!     .add_service(EmitterPluginServer::new(Printer))
//!     .serve("127.0.0.1:9001".parse()?)
//!     .await?;
//! # Ok(())
//! # }
//! ```

/// The plugin protocol: messages, and the client and server for each service.
pub use polku_proto::v1 as proto;

/// The event type that plugins receive and return.
pub use polku_core::{Event, Severity};

/// The gRPC library the protocol is generated for.
pub use tonic;
