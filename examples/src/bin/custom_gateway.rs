//! A gateway of your own, built with the Hub: JSON in, only user events, an
//! `env` tag added, JSON lines out.
//!
//! Run: `cargo run -p polku-examples --bin custom_gateway`, then send it events
//! as in the README (it listens on POLKU_GRPC_ADDR, default 0.0.0.0:50051).

use polku_gateway::*;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let hub = Hub::new()
        .ingestor(JsonIngestor::new())
        .middleware(Filter::new(|e| e.event_type.starts_with("user.")))
        .middleware(Transform::new(|mut e| {
            e.metadata.insert("env".into(), "prod".into());
            e
        }))
        .emitter(StdoutEmitter::new())
        .buffer_capacity(config.buffer.capacity)
        .build();

    let running = hub.start(&config).await?;
    eprintln!(
        "custom gateway listening on {}; Ctrl-C to stop",
        running.grpc_addr()
    );
    tokio::signal::ctrl_c().await?;
    running.shutdown().await?;
    Ok(())
}
