//! The Hub builder, and the gateway it builds.

use crate::auth::IngestTokens;
use crate::config::Config;
use crate::error::{ShutdownError, StartError, SubmitError};
use crate::grpc::{CountRejections, GatewayService};
use crate::http::HttpState;
use crate::pipeline::queue::EmitterOptions;
use crate::pipeline::{IngestorTable, Pipeline, Wait};
use crate::stats::StatsSnapshot;
use polku_core::{BoxError, Emitter, Event, Ingestor};
use polku_middleware::BatchService;
use polku_proto::v1::gateway_server::GatewayServer;
use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service};
use tracing::{error, info, warn};

type LayerFn = Box<dyn FnOnce(BatchService) -> BatchService + Send>;

/// Builds a gateway: ingestors, a middleware chain, a buffer, and emitters.
///
/// ```
/// use polku_gateway::*;
///
/// let gateway = Hub::new()
///     .ingestor(JsonIngestor::new())
///     .emitter(StdoutEmitter::new())
///     .buffer_capacity(50_000)
///     .build();
/// # drop(gateway);
/// ```
pub struct Hub {
    ingestors: Vec<Arc<dyn Ingestor>>,
    layers: Vec<LayerFn>,
    emitters: Vec<(Arc<dyn Emitter>, EmitterOptions)>,
    buffer_capacity: usize,
    flush_interval: Duration,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("ingestors", &self.ingestors)
            .field("middleware", &self.layers.len())
            .field("emitters", &self.emitters)
            .field("buffer_capacity", &self.buffer_capacity)
            .finish()
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    /// An empty hub with the default buffer (10000 events).
    pub fn new() -> Self {
        Hub {
            ingestors: Vec::new(),
            layers: Vec::new(),
            emitters: Vec::new(),
            buffer_capacity: Config::default().buffer_capacity,
            flush_interval: Duration::from_millis(100),
        }
    }

    /// Adds an ingestor for raw bytes, chosen by the format or source it serves.
    pub fn ingestor(mut self, ingestor: impl Ingestor) -> Self {
        self.ingestors.push(Arc::new(ingestor));
        self
    }

    /// Adds a middleware: any tower layer over the batch service. They run in
    /// the order they are added.
    pub fn middleware<L>(mut self, layer: L) -> Self
    where
        L: Layer<BatchService> + Send + 'static,
        L::Service: Service<Vec<Event>, Response = Vec<Event>> + Clone + Send + Sync + 'static,
        <L::Service as Service<Vec<Event>>>::Error: Into<BoxError>,
        <L::Service as Service<Vec<Event>>>::Future: Send + 'static,
    {
        self.layers.push(Box::new(move |inner: BatchService| {
            BoxCloneSyncService::new(tower::ServiceExt::map_err(layer.layer(inner), Into::into))
        }));
        self
    }

    /// Adds an emitter. Each runs on its own task; `route_to` addresses it by
    /// name. Its queue blocks when full (see [`QueueFull`](crate::QueueFull)).
    /// To give it retries, a breaker and a failure store, wrap it first:
    /// `.emitter(Resilience::default().wrap(webhook))`.
    pub fn emitter(self, emitter: impl Emitter) -> Self {
        self.emitter_arc_with(Arc::new(emitter), EmitterOptions::default())
    }

    /// Adds an emitter that is already shared.
    pub fn emitter_arc(self, emitter: Arc<dyn Emitter>) -> Self {
        self.emitter_arc_with(emitter, EmitterOptions::default())
    }

    /// Adds an emitter with its queue policy and lingering.
    pub fn emitter_with(self, emitter: impl Emitter, options: EmitterOptions) -> Self {
        self.emitter_arc_with(Arc::new(emitter), options)
    }

    /// Adds a shared emitter with its options (as [`Config::emitters`] gives them).
    pub fn emitter_arc_with(mut self, emitter: Arc<dyn Emitter>, options: EmitterOptions) -> Self {
        self.emitters.push((emitter, options));
        self
    }

    /// Sets how many accepted events the buffer holds (`POLKU_BUFFER_CAPACITY`).
    pub fn buffer_capacity(mut self, events: usize) -> Self {
        self.buffer_capacity = events;
        self
    }

    /// How often middleware that hold events back (an [`Aggregator`]'s
    /// windows) are asked for what is due (default 100 ms).
    ///
    /// [`Aggregator`]: polku_middleware::Aggregator
    pub fn flush_interval(mut self, every: Duration) -> Self {
        self.flush_interval = every.max(Duration::from_millis(1));
        self
    }

    /// Puts the pieces together. Nothing runs until [`Gateway::start`] or
    /// [`Gateway::serve`].
    pub fn build(self) -> Gateway {
        // The first middleware added is the outermost: it sees a batch first.
        // Middleware register their drop counters while their layers are
        // applied; applying goes innermost first, so reverse to chain order.
        let layers = self.layers;
        let (svc, registry) = polku_middleware::Registry::collect(move || {
            let mut svc = polku_middleware::identity();
            for layer in layers.into_iter().rev() {
                svc = layer(svc);
            }
            svc
        });
        let mut middleware_drops = registry.entries().to_vec();
        middleware_drops.reverse();
        Gateway {
            ingestors: self.ingestors,
            middleware: svc,
            middleware_drops,
            emitters: self.emitters,
            buffer_capacity: self.buffer_capacity,
            flush_interval: self.flush_interval,
        }
    }
}

/// A gateway that is built but not yet running.
#[derive(Debug)]
pub struct Gateway {
    ingestors: Vec<Arc<dyn Ingestor>>,
    middleware: BatchService,
    middleware_drops: Vec<polku_middleware::drops::Registered>,
    emitters: Vec<(Arc<dyn Emitter>, EmitterOptions)>,
    buffer_capacity: usize,
    flush_interval: Duration,
}

impl Gateway {
    /// Runs until `shutdown` completes, then drains: see [`RunningGateway::shutdown`].
    pub async fn serve(
        self,
        config: &Config,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), BoxError> {
        let running = self.start(config).await?;
        shutdown.await;
        running.shutdown().await?;
        Ok(())
    }

    /// Binds the listeners and starts the emitters and the gRPC server.
    pub async fn start(self, config: &Config) -> Result<RunningGateway, StartError> {
        if self.buffer_capacity == 0 {
            return Err(StartError::Invalid(
                "the buffer capacity must be at least 1".into(),
            ));
        }
        let mut names = BTreeSet::new();
        for (e, _) in &self.emitters {
            if !names.insert(e.name().to_owned()) {
                return Err(StartError::Invalid(format!(
                    "two emitters are named {:?}; route_to needs unique names",
                    e.name()
                )));
            }
        }
        let table = IngestorTable::new(&self.ingestors).map_err(StartError::Invalid)?;

        let listen = crate::listener::ListenerConfig {
            tls: config.tls.as_ref().map(|t| t.server_config()).transpose()?,
            max_connections: config.max_connections,
            idle_timeout: config.idle_timeout,
            header_timeout: config.header_timeout,
            body_timeout: config.body_timeout,
            reserved: config.reserved_connections,
        };
        let grpc_conns = Arc::new(crate::listener::ConnStats::default());
        let http_conns = Arc::new(crate::listener::ConnStats::default());
        let listener = tokio::net::TcpListener::bind(config.grpc_addr)
            .await
            .and_then(|l| crate::listener::Accepted::start(l, listen.clone(), grpc_conns.clone()))
            .map_err(|source| StartError::Listen {
                addr: config.grpc_addr,
                source,
            })?;
        let grpc_addr =
            axum::serve::Listener::local_addr(&listener).map_err(|source| StartError::Listen {
                addr: config.grpc_addr,
                source,
            })?;

        let emitter_names: Vec<String> = self
            .emitters
            .iter()
            .map(|(e, _)| e.name().to_owned())
            .collect();
        let ingestor_names: Vec<String> =
            self.ingestors.iter().map(|i| i.name().to_owned()).collect();
        let pipeline = Pipeline::start(
            table,
            self.middleware,
            self.buffer_capacity,
            self.emitters,
            crate::pipeline::Limits::from_config(config),
        );
        let middleware_names: Vec<&str> = self.middleware_drops.iter().map(|m| m.name()).collect();
        pipeline.set_middleware_drops(self.middleware_drops.clone());
        let flushers: Vec<Arc<dyn polku_middleware::Flush>> = self
            .middleware_drops
            .iter()
            .filter_map(|m| m.flush().cloned())
            .collect();

        let (stop_tx, stop_rx) = watch::channel(false);
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<GatewayServer<GatewayService>>().await;
        // Advertise only what this gateway serves (plugin.proto's services are
        // in the same descriptor set, but they are served elsewhere).
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(polku_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .with_service_name("polku.v1.Gateway")
                .with_service_name("polku.v1.PluginRegistry")
                .with_service_name("grpc.health.v1.Health")
        };
        let reflection_v1 = reflection()
            .build_v1()
            .map_err(|e| StartError::Reflection(e.to_string()))?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(|e| StartError::Reflection(e.to_string()))?;

        let tokens = IngestTokens::new(&config.ingest_tokens);
        let grpc_tokens = tokens.clone();
        let gateway_service = GatewayService {
            pipeline: pipeline.clone(),
            buffer_timeout: config.buffer_timeout,
            stopping: stop_rx.clone(),
        };
        // Plain SendEvent calls take the direct path; the rest go to tonic.
        let direct = crate::unary::DirectLayer::new(
            gateway_service.clone(),
            tokens.clone(),
            config.max_message_bytes,
        );
        let gateway = tonic::service::interceptor::InterceptedService::new(
            crate::grpc::GatewayRoutes::new(gateway_service, config.max_message_bytes),
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

        let mut registry_config = polku_discovery::RegistryConfig::default();
        registry_config.token = config.plugin_token.clone();
        registry_config.trust_loopback = config.trust_loopback;
        registry_config.allowed_hosts = config.plugin_allowed_hosts.clone();
        registry_config.max_plugins = config.plugin_max;
        registry_config.heartbeat_interval = config.plugin_heartbeat_interval;
        registry_config.heartbeat_timeout = config.plugin_heartbeat_timeout;
        registry_config.call_timeout = config.plugin_timeout;
        registry_config.tls = config.plugin_tls.clone();
        let registry = polku_discovery::Registry::new(
            registry_config,
            Arc::new(crate::plugins::GatewayPluginHost::new(
                pipeline.clone(),
                config.plugin_timeout,
                config.resilience(),
                config.emitter_options(),
                config.plugin_tls.clone(),
                pipeline.stopping(),
            )),
        );
        registry.spawn_reaper(stop_rx.clone());

        let mut server_stop = stop_rx.clone();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(config.keepalive_interval))
                .http2_keepalive_timeout(Some(config.keepalive_timeout))
                .max_concurrent_streams(config.max_concurrent_streams)
                .initial_stream_window_size(Some(1 << 20))
                .initial_connection_window_size(Some(4 << 20))
                .layer(crate::listener::TrackConnLayer::new(
                    crate::listener::Reserve::Grpc,
                ))
                .layer(direct)
                .add_service(gateway)
                .add_service(registry.service())
                .add_service(health_service)
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
                .serve_with_incoming_shutdown(listener, async move {
                    let _ = server_stop.wait_for(|s| *s).await;
                }),
        );

        // HTTP: bound before anything is announced, so a taken port fails start-up.
        let (http_stop_tx, http_stop_rx) = watch::channel(false);
        let (http_addr, http) = match config.http_addr {
            None => (None, None),
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .and_then(|l| {
                        crate::listener::Accepted::start(l, listen.clone(), http_conns.clone())
                    })
                    .map_err(|source| StartError::HttpListen { addr, source })?;
                let local = axum::serve::Listener::local_addr(&listener)
                    .map_err(|source| StartError::HttpListen { addr, source })?;
                let state = Arc::new(HttpState {
                    pipeline: pipeline.clone(),
                    tokens: tokens.clone(),
                    buffer_timeout: config.buffer_timeout,
                    max_body: config.max_message_bytes,
                    stopping: stop_rx.clone(),
                    metrics: Default::default(),
                    registry: registry.clone(),
                    admin_token: config.admin_token.as_ref().map(|t| t.as_bytes().to_vec()),
                    trust_loopback: config.trust_loopback,
                    connections: vec![("grpc", grpc_conns.clone()), ("http", http_conns.clone())],
                });
                // HTTP outlives the drain: health and metrics keep answering
                // (readyz says 503) while ingestion refuses with 503.
                let mut http_stop = http_stop_rx;
                let task = tokio::spawn(async move {
                    axum::serve(
                        listener,
                        crate::http::router(state)
                            .layer(crate::listener::TrackConnLayer::new(
                                crate::listener::Reserve::Http,
                            ))
                            .into_make_service_with_connect_info::<crate::listener::ConnInfo>(),
                    )
                    .with_graceful_shutdown(async move {
                        let _ = http_stop.wait_for(|s| *s).await;
                    })
                    .await
                });
                (Some(local), Some(task))
            }
        };

        // gRPC health follows what /readyz says: NOT_SERVING when no
        // emitter can deliver.
        let health_watch = tokio::spawn(run_health_watch(
            pipeline.clone(),
            health.clone(),
            stop_rx.clone(),
        ));

        let flusher = (!flushers.is_empty()).then(|| {
            tokio::spawn(run_flusher(
                flushers.clone(),
                pipeline.clone(),
                self.flush_interval,
                stop_rx.clone(),
            ))
        });

        info!(
            grpc = %grpc_addr,
            http = ?http_addr,
            ingest_auth = !tokens.is_open(),
            tls = config.tls.is_some(),
            client_certs = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
            ingestors = ?ingestor_names,
            middleware = ?middleware_names,
            emitters = ?emitter_names,
            buffer_capacity = self.buffer_capacity,
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
            shutdown_timeout: config.shutdown_timeout,
        })
    }
}

/// A running gateway. Drop it only after [`shutdown`](RunningGateway::shutdown):
/// that is what delivers every accepted event.
#[derive(Debug)]
pub struct RunningGateway {
    registry: Arc<polku_discovery::Registry>,
    grpc_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    http: Option<JoinHandle<std::io::Result<()>>>,
    http_stop_tx: watch::Sender<bool>,
    health_watch: JoinHandle<()>,
    pipeline: Arc<Pipeline>,
    stop_tx: watch::Sender<bool>,
    health: tonic_health::server::HealthReporter,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    flushers: Vec<Arc<dyn polku_middleware::Flush>>,
    flusher: Option<JoinHandle<()>>,
    shutdown_timeout: Duration,
}

/// How often gRPC health re-checks the emitters.
const HEALTH_EVERY: Duration = Duration::from_millis(500);

/// Keeps grpc.health.v1 in step with /readyz until shutdown starts (which
/// sets NOT_SERVING itself).
async fn run_health_watch(
    pipeline: Arc<Pipeline>,
    health: tonic_health::server::HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    let mut serving = true;
    loop {
        let now = pipeline.any_emitter_healthy().await;
        pipeline
            .emitters_healthy
            .store(now, std::sync::atomic::Ordering::Relaxed);
        if now != serving && !*stop.borrow() {
            serving = now;
            let status = if now {
                tonic_health::ServingStatus::Serving
            } else {
                warn!("no emitter can deliver: health is NOT_SERVING");
                tonic_health::ServingStatus::NotServing
            };
            health.set_service_status("", status).await;
            health
                .set_service_status(
                    <GatewayServer<GatewayService> as tonic::server::NamedService>::NAME,
                    status,
                )
                .await;
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(HEALTH_EVERY) => {}
        }
    }
}

/// Asks the middleware that hold events back for what is due, on a timer,
/// and puts it in the buffer. Stops when shutdown starts (shutdown flushes
/// the rest itself).
async fn run_flusher(
    flushers: Vec<Arc<dyn polku_middleware::Flush>>,
    pipeline: Arc<Pipeline>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let now = tokio::time::Instant::now();
        for f in &flushers {
            let due = f.flush_due(now);
            if !due.is_empty() {
                // Waits for room like a stream does; the error is logged and
                // counted inside.
                // Drain: shutdown must not interrupt this, or summaries of
                // events already acknowledged would be lost; shutdown waits
                // for this task instead.
                let _ = pipeline
                    .accept_generated(due, Wait::Drain(Duration::from_secs(3600)))
                    .await;
            }
        }
    }
}

/// What became of a batch sent with [`RunningGateway::send`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SendReport {
    /// Events now in the buffer.
    pub accepted: usize,
    /// Events middleware dropped on purpose.
    pub dropped: usize,
    /// Events refused: (id, what went wrong).
    pub rejected: Vec<(String, String)>,
}

impl RunningGateway {
    /// The address gRPC listens on (useful with port 0).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The address HTTP listens on, if HTTP is on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// How many plugins are registered now.
    pub fn plugins(&self) -> usize {
        self.registry.len()
    }

    /// A copy of the counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.pipeline.snapshot()
    }

    /// Sends a batch from inside the process, as SendEvent would; waits for
    /// room in the buffer up to `wait`.
    pub async fn send(
        &self,
        source: &str,
        events: Vec<Event>,
        wait: Duration,
    ) -> Result<SendReport, SubmitError> {
        let o = self
            .pipeline
            .accept(source, events, Wait::For(wait))
            .await?;
        Ok(SendReport {
            accepted: o.accepted,
            dropped: o.dropped,
            rejected: o.rejected.into_iter().map(|r| (r.id, r.message)).collect(),
        })
    }

    /// Queues up to `limit` of the oldest events in an emitter's failure
    /// store to that emitter again, waiting up to `wait` for room in the
    /// buffer; returns how many. Those that fail again go back in the store.
    pub async fn resend_failures(
        &self,
        emitter: &str,
        limit: usize,
        wait: Duration,
    ) -> Result<usize, crate::ResendError> {
        self.pipeline
            .resend_failures(emitter, limit, Wait::For(wait))
            .await
    }

    /// Stops the HTTP server (health and metrics served until now).
    async fn stop_http(&mut self) {
        let _ = self.http_stop_tx.send(true);
        if let Some(mut http) = self.http.take() {
            match tokio::time::timeout(Duration::from_secs(2), &mut http).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(err))) => error!(error = %err, "HTTP server failed"),
                Ok(Err(err)) => error!(error = %err, "HTTP server task failed"),
                Err(_) => http.abort(),
            }
        }
    }

    /// Stops taking events and delivers everything accepted, within the
    /// shutdown timeout:
    /// 1. health turns NOT_SERVING and streams stop reading;
    /// 2. the server stops accepting and waits for calls in flight;
    /// 3. the buffer closes and each emitter delivers its queue, then flushes.
    pub async fn shutdown(mut self) -> Result<(), ShutdownError> {
        let started = tokio::time::Instant::now();
        let deadline = started + self.shutdown_timeout;
        // The server gets at most half the budget to finish calls in flight,
        // so that at least half is left to deliver what they accepted.
        let server_deadline = started + self.shutdown_timeout / 2;
        info!("shutting down: no longer accepting events");
        // The health watch must not turn health back to SERVING.
        self.health_watch.abort();
        self.health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        self.health
            .set_not_serving::<GatewayServer<GatewayService>>()
            .await;
        // Calls waiting for buffer room fail at once (UNAVAILABLE) instead of
        // waiting out their timeout; streams stop reading.
        self.pipeline.stop_admitting();
        let _ = self.stop_tx.send(true);

        match tokio::time::timeout_at(server_deadline, &mut self.server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => error!(error = %err, "gRPC server failed"),
            Ok(Err(err)) => error!(error = %err, "gRPC server task failed"),
            Err(_) => {
                warn!("calls still in flight at half the shutdown timeout; closing them");
                self.server.abort();
            }
        }

        // Requests that got buffer room before shutdown started (HTTP ones
        // included) finish their way into the buffer.
        let still = self.pipeline.wait_idle(server_deadline).await;
        if still > 0 {
            warn!(
                requests = still,
                "requests still on their way into the buffer at half the shutdown timeout"
            );
        }

        // Middleware that hold events back give them up now, while the
        // emitters still run and can make room for them.
        if let Some(mut f) = self.flusher.take() {
            if tokio::time::timeout_at(deadline, &mut f).await.is_err() {
                f.abort();
                error!("the flush timer could not place its summaries before the deadline");
            }
        }
        for f in std::mem::take(&mut self.flushers) {
            let rest = f.flush_all();
            if !rest.is_empty() {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let n = rest.len();
                match self
                    .pipeline
                    .accept_generated(rest, Wait::Drain(left))
                    .await
                {
                    Ok(_) => info!(
                        events = n,
                        "flushed held-back events (open aggregation windows)"
                    ),
                    Err(err) => {
                        error!(events = n, error = %err, "could not flush held-back events")
                    }
                }
            }
        }

        // Kept past close, to tell what their failure stores hold at the end.
        let emitters = self.pipeline.emitters();
        self.pipeline.close();
        let pending = self.pipeline.depth();
        info!(pending, "draining accepted events to the emitters");
        let tasks = self.pipeline.take_tasks();
        let all = futures_util::future::join_all(tasks);
        let drained = tokio::time::timeout_at(deadline, all).await;
        self.stop_http().await;
        match drained {
            Err(_) => {
                let undelivered = self.pipeline.depth();
                error!(
                    undelivered,
                    "shutdown timeout passed with accepted events undelivered"
                );
                Err(ShutdownError::Timeout {
                    timeout: self.shutdown_timeout,
                    undelivered,
                })
            }
            Ok(results) => {
                let failed = results.iter().filter(|r| r.is_err()).count();
                if failed > 0 {
                    // The emitter task loop catches panics in `emit`; this
                    // is a panic in an emitter's `shutdown` (its flush).
                    error!(emitters = failed, "emitter tasks failed while flushing");
                    return Err(ShutdownError::EmitterFailed { emitters: failed });
                }
                // What the failure stores hold lives in memory: say so, per
                // emitter, before the process takes it away.
                let mut held = 0;
                for e in &emitters {
                    let Some(store) = e.delivery_state().and_then(|d| d.failure_store()) else {
                        continue;
                    };
                    if !store.is_empty() {
                        held += store.len();
                        warn!(
                            emitter = %e.name(),
                            events = store.len(),
                            bytes = store.bytes(),
                            "shutdown: this emitter's failure store still holds undelivered events; they are lost when the process exits (list or resend them before stopping)"
                        );
                    }
                }
                info!(
                    failure_store_events = held,
                    "shutdown complete: every accepted event was handed to its emitters"
                );
                Ok(())
            }
        }
    }
}
