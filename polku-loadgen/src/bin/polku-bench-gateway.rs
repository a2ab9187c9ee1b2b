//! The gateway under test: JSON and protobuf ingestors, a Filter and a
//! Transform, and a counting null emitter (plus whatever `POLKU_EMIT_*`
//! adds). Configured by the usual `POLKU_*` variables; stops on SIGINT/SIGTERM.

use anyhow::Context as _;
use polku_gateway::{
    Config, Filter, Hub, JsonIngestor, NullEmitter, PassthroughIngestor, Transform,
};

fn main() -> anyhow::Result<()> {
    let config = Config::from_env().context("configuration")?;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&config.log.level))
        .with_writer(std::io::stderr)
        .init();
    // The gateway's own runtime: POLKU_SCHEDULER and POLKU_WORKER_THREADS.
    polku_gateway::runtime(&config)?.block_on(run(config))
}

async fn run(mut config: Config) -> anyhow::Result<()> {
    // The null emitter is always here; stdout only when asked for.
    config.emit.stdout = Some(config.emit.stdout.unwrap_or(false));
    let mut hub = Hub::new()
        .ingestor(JsonIngestor::new())
        .ingestor(PassthroughIngestor::new())
        .middleware(Filter::new(|e| e.event_type.starts_with("user.")))
        .middleware(Transform::new(|mut e| {
            e.metadata.insert("env".into(), "bench".into());
            e
        }))
        .buffer_capacity(config.buffer.capacity)
        .emitter(NullEmitter::new());
    config.emit.null = false;
    for (emitter, options) in config.emitters()? {
        hub = hub.emitter_arc_with(emitter, options);
    }
    hub.build()
        .serve(&config, async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await
        .map_err(|e| anyhow::anyhow!(e))
}
