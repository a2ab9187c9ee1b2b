//! Starting a built gateway, step by step: check what was built, bind the
//! listeners (a taken port fails start-up before anything is announced),
//! start the pipeline, the plugin registry, the gRPC and HTTP servers, and
//! the background tasks (health watch, flush timer).

use super::Gateway;
use super::running::{RunningGateway, run_flusher, run_health_watch};
use crate::auth::IngestTokens;
use crate::config::Config;
use crate::error::StartError;
use crate::grpc::{CountRejections, GatewayService};
use crate::http::HttpState;
use crate::listener::{Accepted, ConnInfo, ConnStats, ListenerConfig, Reserve, TrackConnLayer};
use crate::pipeline::journal::{Journal, JournalSettings, OpenError};
use crate::pipeline::{IngestorTable, Limits, Pipeline};
use polku_proto::v1::gateway_server::GatewayServer;
use std::collections::BTreeSet;
use std::future::IntoFuture as _;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument as _, info};

/// Opens the durable buffer when a directory is given (the builder's, else
/// `POLKU_BUFFER_DIR`): after the ports are bound, before anything serves.
fn open_journal(
    dir: Option<&std::path::PathBuf>,
    config: &Config,
) -> Result<Option<Arc<Journal>>, StartError> {
    let Some(dir) = dir.or(config.buffer.dir.as_ref()) else {
        return Ok(None);
    };
    let settings = JournalSettings {
        dir: dir.clone(),
        max_disk_bytes: config.buffer.max_disk_bytes,
        cursor_interval: config.buffer.cursor_interval,
        sync_interval: config.buffer.sync_interval,
        orphan_grace: crate::pipeline::journal::ORPHAN_GRACE,
        failure_store: (
            config.delivery.failure_store_events,
            config.delivery.failure_store_bytes,
        ),
    };
    Journal::open(settings).map(Some).map_err(|e| match e {
        OpenError::Log(crate::pipeline::log::LogError::Locked { dir }) => {
            StartError::BufferLocked { dir }
        }
        OpenError::Log(crate::pipeline::log::LogError::Io { dir, source })
        | OpenError::Cursors { dir, source } => StartError::BufferDir { dir, source },
        OpenError::Log(other) => StartError::BufferDir {
            dir: dir.clone(),
            source: std::io::Error::other(other.to_string()),
        },
    })
}

/// The gRPC server's task.
type GrpcTask = JoinHandle<Result<(), tonic::transport::Error>>;

impl Gateway {
    /// Binds the listeners and starts the emitters and the gRPC server.
    pub async fn start(self, config: &Config) -> Result<RunningGateway, StartError> {
        let table = self.check()?;
        let listen = listener_config(config)?;
        let grpc_conns = Arc::new(ConnStats::default());
        let http_conns = Arc::new(ConnStats::default());
        let (grpc_listener, grpc_addr) = bind(config.listen.grpc_addr, &listen, &grpc_conns)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.listen.grpc_addr,
                source,
            })?;
        let http_listener = match config.listen.http_addr {
            None => None,
            Some(addr) => Some(
                bind(addr, &listen, &http_conns)
                    .await
                    .map_err(|source| StartError::HttpListen { addr, source })?,
            ),
        };

        let emitter_names: Vec<String> = self
            .emitters
            .iter()
            .map(|(e, _)| e.name().to_owned())
            .collect();
        let ingestor_names: Vec<String> =
            self.ingestors.iter().map(|i| i.name().to_owned()).collect();
        let middleware_names: Vec<&str> = self.middleware_drops.iter().map(|m| m.name()).collect();
        let journal = open_journal(self.buffer_dir.as_ref(), config)?;
        let durable_dir = journal.as_ref().map(|j| j.dir().display().to_string());
        if let Some(j) = &journal {
            // It stops when the journal closes, at the end of shutdown.
            drop(j.spawn_saver());
        }
        let pipeline = Pipeline::start(
            table,
            self.middleware,
            self.buffer_capacity,
            self.emitters,
            Limits::from_config(config),
            journal,
        );
        pipeline.set_middleware_drops(self.middleware_drops.clone());
        let flushers: Vec<Arc<dyn polku_middleware::Flush>> = self
            .middleware_drops
            .iter()
            .filter_map(|m| m.flush().cloned())
            .collect();

        let (stop_tx, stop_rx) = watch::channel(false);
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<GatewayServer<GatewayService>>().await;
        let tokens = IngestTokens::new(&config.access.ingest_tokens);
        let registry = start_registry(config, &pipeline, &stop_rx)?;
        let server = start_grpc(
            config,
            grpc_listener,
            &pipeline,
            &tokens,
            &registry,
            health_service,
            &stop_rx,
        )?;

        // HTTP outlives the drain: health and metrics keep answering (readyz
        // says 503) while ingestion refuses with 503. It stops on its own signal.
        let (http_stop_tx, http_stop_rx) = watch::channel(false);
        let (http_addr, http) = match http_listener {
            None => (None, None),
            Some((listener, local)) => {
                let state = Arc::new(HttpState {
                    pipeline: pipeline.clone(),
                    tokens: tokens.clone(),
                    buffer_timeout: config.buffer.timeout,
                    max_body: config.limits.max_message_bytes,
                    stopping: stop_rx.clone(),
                    metrics: Default::default(),
                    registry: registry.clone(),
                    admin: config.access.admin_policy(),
                    connections: vec![("grpc", grpc_conns), ("http", http_conns)],
                });
                (Some(local), Some(start_http(listener, state, http_stop_rx)))
            }
        };

        // gRPC health follows what /readyz says: NOT_SERVING when no
        // emitter can deliver.
        let health_watch = tokio::spawn(
            run_health_watch(pipeline.clone(), health.clone(), stop_rx.clone())
                .instrument(tracing::info_span!("polku.gateway.health")),
        );
        let flusher = (!flushers.is_empty()).then(|| {
            tokio::spawn(
                run_flusher(
                    flushers.clone(),
                    pipeline.clone(),
                    self.flush_interval,
                    stop_rx.clone(),
                )
                .instrument(tracing::info_span!("polku.gateway.flusher")),
            )
        });

        // Sources last: everything they hand over has somewhere to go.
        let source_names: Vec<String> = self.sources.iter().map(|s| s.name().to_owned()).collect();
        for source in &self.sources {
            let unreadable = pipeline
                .unreadable_store(
                    source.name(),
                    (
                        config.delivery.failure_store_events,
                        config.delivery.failure_store_bytes,
                    ),
                )
                .map_err(|message| {
                    StartError::Source(polku_core::source::SourceError {
                        source_name: source.name().to_owned(),
                        message,
                    })
                })?;
            let sink = Arc::new(crate::pipeline::PipelineSink {
                pipeline: pipeline.clone(),
                unreadable,
            });
            let running = source.start(sink).map_err(StartError::Source)?;
            pipeline.add_source(Arc::from(running));
        }

        info!(
            grpc = %grpc_addr,
            http = ?http_addr,
            ingest_auth = !tokens.is_open(),
            tls = config.listen.tls.is_some(),
            client_certs = config.listen.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
            ingestors = ?ingestor_names,
            middleware = ?middleware_names,
            emitters = ?emitter_names,
            sources = ?source_names,
            buffer_capacity = self.buffer_capacity,
            durable_buffer = ?durable_dir,
            "POLKU gateway listening"
        );
        Ok(RunningGateway {
            registry,
            grpc_addr,
            http_addr,
            http,
            http_stop_tx,
            health_watch,
            pipeline,
            stop_tx,
            health,
            server,
            flushers,
            flusher,
            shutdown_timeout: config.runtime.shutdown_timeout,
        })
    }

    /// What was built, checked: a buffer, unique emitter names (`route_to`
    /// addresses them), one ingestor per format and source.
    fn check(&self) -> Result<IngestorTable, StartError> {
        if self.buffer_capacity == 0 {
            return Err(StartError::ZeroCapacity);
        }
        let mut names = BTreeSet::new();
        for (e, _) in &self.emitters {
            if !names.insert(e.name().to_owned()) {
                return Err(StartError::DuplicateEmitter {
                    name: e.name().to_owned(),
                });
            }
        }
        Ok(IngestorTable::new(&self.ingestors)?)
    }
}

/// The listeners' settings: TLS, connection cap and deadlines.
fn listener_config(config: &Config) -> Result<ListenerConfig, StartError> {
    Ok(ListenerConfig {
        tls: config
            .listen
            .tls
            .as_ref()
            .map(|t| t.server_config())
            .transpose()?,
        max_connections: config.listen.max_connections,
        idle_timeout: config.listen.idle_timeout,
        header_timeout: config.listen.header_timeout,
        body_timeout: config.listen.body_timeout,
        reserved: config.listen.reserved_connections,
    })
}

/// Binds `addr` and starts accepting on it; returns the bound address too
/// (useful with port 0).
async fn bind(
    addr: SocketAddr,
    listen: &ListenerConfig,
    conns: &Arc<ConnStats>,
) -> std::io::Result<(Accepted, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .and_then(|l| Accepted::start(l, listen.clone(), conns.clone()))?;
    let local = axum::serve::Listener::local_addr(&listener)?;
    Ok((listener, local))
}

/// The plugin registry, with its reaper of plugins whose heartbeats stop.
fn start_registry(
    config: &Config,
    pipeline: &Arc<Pipeline>,
    stop: &watch::Receiver<bool>,
) -> Result<Arc<polku_discovery::Registry>, StartError> {
    let resilience = config.resilience()?;
    let registry = polku_discovery::Registry::new(
        config.plugins.clone(),
        config.access.plugin_policy(),
        Arc::new(crate::plugins::GatewayPluginHost::new(
            pipeline.clone(),
            config.plugins.call_timeout,
            resilience,
            config.plugin_emitter_options(),
            config.plugins.tls.clone(),
            pipeline.stopping(),
        )),
    );
    registry.spawn_reaper(stop.clone());
    Ok(registry)
}

/// The gRPC server: `polku.v1.Gateway` (plain `SendEvent` calls on the
/// direct path, the rest through tonic, both behind the ingest tokens), the
/// plugin registry, health and reflection. Stops when `stop` turns true.
fn start_grpc(
    config: &Config,
    listener: Accepted,
    pipeline: &Arc<Pipeline>,
    tokens: &IngestTokens,
    registry: &Arc<polku_discovery::Registry>,
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    stop: &watch::Receiver<bool>,
) -> Result<GrpcTask, StartError> {
    // Advertise only what this gateway serves (plugin.proto's services are
    // in the same descriptor set, but they are served elsewhere).
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(polku_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("polku.v1.Gateway")
            .with_service_name("polku.v1.PluginRegistry")
            .with_service_name("polku.v1.Admin")
            .with_service_name("grpc.health.v1.Health")
    };
    let reflection_v1 = reflection().build_v1().map_err(StartError::Reflection)?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(StartError::Reflection)?;

    let gateway_service = GatewayService {
        pipeline: pipeline.clone(),
        buffer_timeout: config.buffer.timeout,
        stopping: stop.clone(),
    };
    // Plain SendEvent calls take the direct path; the rest go to tonic.
    let direct = crate::send_event::DirectLayer::new(
        gateway_service.clone(),
        tokens.clone(),
        config.limits.max_message_bytes,
    );
    let grpc_tokens = tokens.clone();
    let gateway = tonic::service::interceptor::InterceptedService::new(
        crate::grpc::GatewayRoutes::new(gateway_service, config.limits.max_message_bytes),
        move |req: tonic::Request<()>| {
            let auth = req.metadata().get("authorization").map(|v| v.as_bytes());
            if grpc_tokens.allows(auth) {
                Ok(req)
            } else {
                Err(crate::grpc::unauthenticated())
            }
        },
    );
    let gateway = CountRejections {
        inner: gateway,
        pipeline: pipeline.clone(),
    };

    let admin = crate::admin_grpc::AdminService {
        pipeline: pipeline.clone(),
        registry: registry.clone(),
        access: config.access.admin_policy(),
        buffer_timeout: config.buffer.timeout,
    }
    .server();

    let mut server_stop = stop.clone();
    Ok(tokio::spawn(
        tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(config.listen.keepalive_interval))
            .http2_keepalive_timeout(Some(config.listen.keepalive_timeout))
            .max_concurrent_streams(config.listen.max_concurrent_streams)
            .initial_stream_window_size(Some(1 << 20))
            .initial_connection_window_size(Some(4 << 20))
            .layer(TrackConnLayer::new(Reserve::Grpc))
            .layer(direct)
            .add_service(gateway)
            .add_service(registry.service())
            .add_service(admin)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .serve_with_incoming_shutdown(listener, async move {
                let _ = server_stop.wait_for(|s| *s).await;
            })
            .instrument(tracing::info_span!("polku.gateway.grpc")),
    ))
}

/// The HTTP server (ingestion, health, metrics, admin); stops when `stop`
/// turns true.
fn start_http(
    listener: Accepted,
    state: Arc<HttpState>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<std::io::Result<()>> {
    tokio::spawn(async move {
        axum::serve(
            listener,
            crate::http::router(state)
                .layer(TrackConnLayer::new(Reserve::Http))
                .into_make_service_with_connect_info::<ConnInfo>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .into_future()
        .instrument(tracing::info_span!("polku.gateway.http"))
        .await
    })
}
