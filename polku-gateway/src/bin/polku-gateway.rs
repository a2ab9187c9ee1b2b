//! The `polku-gateway` binary: reads `POLKU_*` variables, builds the default
//! Hub (JSON and protobuf ingestors, stdout emitter), serves until SIGINT or
//! SIGTERM, then delivers what it accepted and exits.

use anyhow::Context as _;
use polku_gateway::{Config, Hub, JsonIngestor, LogFormat, PassthroughIngestor};

fn main() -> anyhow::Result<()> {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(err) => {
            // Logging is not set up yet: this is the one message that goes
            // straight to stderr.
            eprintln!("polku-gateway: {err}");
            std::process::exit(2);
        }
    };
    init_logs(&config);
    // POLKU_SCHEDULER and POLKU_WORKER_THREADS.
    polku_gateway::runtime(&config)
        .context("cannot start the async runtime")?
        .block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let handle = tokio::runtime::Handle::current();
    tracing::info!(
        scheduler = ?config.runtime.scheduler,
        workers = handle.metrics().num_workers(),
        "runtime"
    );
    let mut hub = Hub::new()
        .ingestor(JsonIngestor::new())
        .ingestor(PassthroughIngestor::new())
        .buffer_capacity(config.buffer.capacity);
    for (emitter, options) in config.emitters().context("cannot build the emitters")? {
        hub = hub.emitter_arc_with(emitter, options);
    }
    if let Some(kafka) = config
        .kafka_source
        .source()
        .context("cannot build the Kafka source")?
    {
        hub = hub.source(kafka);
    }
    let gateway = hub.build();

    let running = gateway.start(&config).await.context("cannot start")?;
    shutdown_signal().await;
    running.shutdown().await.context("shutdown lost events")?;
    Ok(())
}

fn init_logs(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::new(&config.log.level);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}
