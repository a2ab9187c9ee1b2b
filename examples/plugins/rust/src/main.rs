//! `file_emitter`: a POLKU emitter plugin in Rust. It appends every event it
//! gets to a file, one JSON line each, and registers itself with the gateway
//! as the emitter `file` (or `EMITTER_NAME`).
//!
//! Run (with a gateway on localhost:50051):
//!
//! ```text
//! FILE=/tmp/events.jsonl cargo run -p polku-example-rust-plugin
//! ```
//!
//! Environment: `FILE` (required), `EMITTER_NAME` (default `file`),
//! `PLUGIN_ADDR` (default 127.0.0.1:0), `POLKU_ADDR` (default localhost:50051),
//! `POLKU_PLUGIN_TOKEN`.

use polku_plugin_sdk::{EmitError, Emitter, Event, ServeConfig, async_trait, serve_emitter};
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

/// Appends events to a file as JSON lines.
#[derive(Debug)]
struct FileEmitter {
    name: String,
    file: Mutex<tokio::fs::File>,
}

#[async_trait]
impl Emitter for FileEmitter {
    fn name(&self) -> &str {
        &self.name
    }

    async fn emit(&self, events: &[Event]) -> Result<(), EmitError> {
        let mut buf = Vec::with_capacity(events.len() * 160);
        for e in events {
            polku_plugin_sdk::json::write_event(&mut buf, e);
            buf.push(b'\n');
        }
        let mut file = self.file.lock().await;
        // A write that fails may work later (disk full, ...): retryable.
        file.write_all(&buf)
            .await
            .map_err(|e| EmitError::unavailable("cannot write the file", Some(Box::new(e) as _)))?;
        file.flush()
            .await
            .map_err(|e| EmitError::unavailable("cannot flush the file", Some(Box::new(e) as _)))
    }

    async fn shutdown(&self) -> Result<(), EmitError> {
        self.file
            .lock()
            .await
            .sync_all()
            .await
            .map_err(|e| EmitError::unavailable("cannot sync the file", Some(Box::new(e) as _)))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .init();
    let path =
        PathBuf::from(std::env::var("FILE").map_err(|_| "FILE must name the file to write")?);
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .await
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let emitter = FileEmitter {
        name: std::env::var("EMITTER_NAME").unwrap_or_else(|_| "file".into()),
        file: Mutex::new(file),
    };
    let config = ServeConfig::from_env()?.with_description("events to a file as JSON lines");
    serve_emitter(emitter, config, shutdown_signal()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
