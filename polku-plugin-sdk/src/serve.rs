//! Serving a plugin: the gRPC server, registration and heartbeats.

use crate::proto::emitter_plugin_server::{EmitterPlugin, EmitterPluginServer};
use crate::proto::ingestor_plugin_server::{IngestorPlugin, IngestorPluginServer};
use crate::proto::plugin_registry_client::PluginRegistryClient;
use crate::proto::{
    EmitFailure, EmitRequest, EmitResponse, HealthResponse, HeartbeatRequest, IngestRequest,
    IngestResponse, PluginInfo, PluginType, RegisterRequest, UnregisterRequest,
};
use polku_core::{EmitError, Emitter, IngestError, Ingestor};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

/// Where the plugin listens and which gateway it registers with.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServeConfig {
    /// Where the plugin's gRPC server listens (`PLUGIN_ADDR`, default
    /// `127.0.0.1:0`: a free loopback port).
    pub listen: SocketAddr,
    /// The address to register (`PLUGIN_ADVERTISE_ADDR`); default: the
    /// address it listens on.
    pub advertise: Option<String>,
    /// The gateway to register with (`POLKU_ADDR`, default
    /// `localhost:50051`); `None` (`POLKU_ADDR=off`) serves without registering.
    pub gateway: Option<String>,
    /// The registry token (`POLKU_PLUGIN_TOKEN`).
    pub token: Option<String>,
    /// The plugin's version, reported in Info.
    pub version: String,
    /// One line on what it does, reported in Info.
    pub description: String,
    /// TLS for the plugin's own server (`PLUGIN_TLS_CERT`, `PLUGIN_TLS_KEY`,
    /// `PLUGIN_TLS_CLIENT_CA`); with it, the advertised address is `https://`.
    pub tls: Option<PluginTls>,
    /// TLS towards an `https://` gateway (`POLKU_TLS_CA`,
    /// `POLKU_TLS_CLIENT_CERT`, `POLKU_TLS_CLIENT_KEY`).
    pub gateway_tls: polku_proto::tls::ClientTls,
}

/// The plugin server's certificate and key, and the CA that must sign the
/// gateway's client certificate (when the gateway is to present one).
#[derive(Clone, PartialEq, Eq)]
pub struct PluginTls {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for PluginTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginTls")
            .field("client_ca", &self.client_ca.is_some())
            .finish_non_exhaustive()
    }
}

impl PluginTls {
    /// Serves with this certificate chain and key (PEM).
    pub fn new(cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        Self {
            cert: cert_pem.into(),
            key: key_pem.into(),
            client_ca: None,
        }
    }

    /// Requires callers (the gateway) to present a certificate signed by
    /// this CA (PEM).
    pub fn with_client_ca(mut self, ca_pem: impl Into<Vec<u8>>) -> Self {
        self.client_ca = Some(ca_pem.into());
        self
    }

    fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        let mut c = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&self.cert, &self.key));
        if let Some(ca) = &self.client_ca {
            c = c.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        c
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            gateway: Some("localhost:50051".into()),
            token: None,
            version: String::new(),
            description: String::new(),
            tls: None,
            gateway_tls: polku_proto::tls::ClientTls::new(),
        }
    }
}

/// Why a plugin could not be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// A variable has a value that cannot work.
    #[error("{var}={value:?} is not valid: expected {expected}")]
    Config {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("plugin server failed: {0}")]
    Server(#[from] tonic::transport::Error),
}

impl ServeConfig {
    /// Listens here.
    pub fn with_listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Registers with this gateway (`host:port`, with or without `http://`);
    /// `None` serves without registering.
    pub fn with_gateway(mut self, gateway: Option<String>) -> Self {
        self.gateway = gateway;
        self
    }

    /// Registers this address instead of the one it listens on.
    pub fn with_advertise(mut self, address: impl Into<String>) -> Self {
        self.advertise = Some(address.into());
        self
    }

    /// Sends this registry token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Reports this version in Info.
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Reports this description in Info.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Serves over TLS.
    pub fn with_tls(mut self, tls: PluginTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Uses this CA and client certificate to reach an `https://` gateway.
    pub fn with_gateway_tls(mut self, tls: polku_proto::tls::ClientTls) -> Self {
        self.gateway_tls = tls;
        self
    }

    /// Reads `PLUGIN_ADDR`, `PLUGIN_ADVERTISE_ADDR`, `POLKU_ADDR`,
    /// `POLKU_PLUGIN_TOKEN`, and the TLS files: `PLUGIN_TLS_CERT`,
    /// `PLUGIN_TLS_KEY`, `PLUGIN_TLS_CLIENT_CA` for its own server, and
    /// `POLKU_TLS_CA`, `POLKU_TLS_CLIENT_CERT`, `POLKU_TLS_CLIENT_KEY`
    /// towards the gateway.
    pub fn from_env() -> Result<Self, ServeError> {
        let mut c = ServeConfig::default();
        if let Ok(v) = std::env::var("PLUGIN_ADDR") {
            c.listen = v.trim().parse().map_err(|_| ServeError::Config {
                var: "PLUGIN_ADDR",
                value: v.clone(),
                expected: "an IP address and port, such as 127.0.0.1:9001",
            })?;
        }
        if let Ok(v) = std::env::var("PLUGIN_ADVERTISE_ADDR") {
            c.advertise = Some(v.trim().to_owned());
        }
        if let Ok(v) = std::env::var("POLKU_ADDR") {
            c.gateway = (!v.trim().eq_ignore_ascii_case("off")).then(|| v.trim().to_owned());
        }
        if let Ok(v) = std::env::var("POLKU_PLUGIN_TOKEN") {
            c.token = Some(v.trim().to_owned()).filter(|t| !t.is_empty());
        }
        let path = |var: &str| {
            std::env::var(var)
                .ok()
                .map(|v| std::path::PathBuf::from(v.trim()))
        };
        let read = |var: &'static str| -> Result<Option<Vec<u8>>, ServeError> {
            path(var)
                .map(|p| {
                    std::fs::read(&p).map_err(|e| ServeError::Config {
                        var,
                        value: format!("{} ({e})", p.display()),
                        expected: "a readable PEM file",
                    })
                })
                .transpose()
        };
        match (read("PLUGIN_TLS_CERT")?, read("PLUGIN_TLS_KEY")?) {
            (Some(cert), Some(key)) => {
                let mut tls = PluginTls::new(cert, key);
                if let Some(ca) = read("PLUGIN_TLS_CLIENT_CA")? {
                    tls = tls.with_client_ca(ca);
                }
                c.tls = Some(tls);
            }
            (None, None) => {}
            (cert, _) => {
                let var = if cert.is_some() {
                    "PLUGIN_TLS_KEY"
                } else {
                    "PLUGIN_TLS_CERT"
                };
                return Err(ServeError::Config {
                    var,
                    value: String::new(),
                    expected: "PLUGIN_TLS_CERT and PLUGIN_TLS_KEY set together",
                });
            }
        }
        let vars = polku_proto::tls::ClientTlsVars {
            ca: "POLKU_TLS_CA",
            cert: "POLKU_TLS_CLIENT_CERT",
            key: "POLKU_TLS_CLIENT_KEY",
        };
        c.gateway_tls = polku_proto::tls::ClientTls::from_files(
            vars,
            path(vars.ca).as_deref(),
            path(vars.cert).as_deref(),
            path(vars.key).as_deref(),
        )
        .map_err(|e| ServeError::Config {
            var: vars.ca,
            value: e.to_string(),
            expected: "readable PEM files for the gateway's CA and the client certificate",
        })?;
        Ok(c)
    }
}

/// Serves an [`Emitter`] as an emitter plugin until `shutdown` completes:
/// registers with the gateway, keeps the registration alive, and on shutdown
/// unregisters, stops serving and flushes the emitter.
pub async fn serve_emitter<E: Emitter>(
    emitter: E,
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let emitter = Arc::new(emitter);
    let info = PluginInfo {
        name: emitter.name().to_owned(),
        version: config.version.clone(),
        r#type: PluginType::Emitter as i32,
        emitter_name: emitter.name().to_owned(),
        sources: Vec::new(),
        description: config.description.clone(),
        formats: Vec::new(),
    };
    let service = EmitterPluginServer::new(EmitterAdapter {
        emitter: emitter.clone(),
        info: info.clone(),
    });
    run(service, info, config, shutdown).await?;
    if let Err(err) = emitter.shutdown().await {
        warn!(error = %err, "emitter failed to flush");
    }
    Ok(())
}

/// Serves an [`Ingestor`] as an ingestor plugin until `shutdown` completes,
/// registered for the ingestor's sources and formats.
pub async fn serve_ingestor<I: Ingestor>(
    ingestor: I,
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let ingestor = Arc::new(ingestor);
    let info = PluginInfo {
        name: ingestor.name().to_owned(),
        version: config.version.clone(),
        r#type: PluginType::Ingestor as i32,
        emitter_name: String::new(),
        sources: ingestor.sources(),
        description: config.description.clone(),
        formats: ingestor.formats(),
    };
    let service = IngestorPluginServer::new(IngestorAdapter {
        ingestor,
        info: info.clone(),
    });
    run(service, info, config, shutdown).await
}

async fn run<S>(
    service: S,
    info: PluginInfo,
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError>
where
    S: tonic::codegen::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: config.listen,
        source,
    })?;
    let advertise = config.advertise.clone().unwrap_or_else(|| {
        if config.tls.is_some() {
            format!("https://{local}")
        } else {
            local.to_string()
        }
    });
    info!(listen = %local, plugin = %info.name, "plugin serving");

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut server_stop = stop_rx.clone();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(tls.server_config())?;
    }
    let server = tokio::spawn(builder.add_service(service).serve_with_incoming_shutdown(
        // TCP_NODELAY, or small replies wait ~40 ms for delayed ACKs.
        tokio_stream::StreamExt::map(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            |s| s.and_then(|s| s.set_nodelay(true).map(|()| s)),
        ),
        async move {
            let _ = server_stop.wait_for(|s| *s).await;
        },
    ));

    let registration = config.gateway.clone().map(|gateway| {
        tokio::spawn(keep_registered(
            gateway,
            config.token.clone(),
            config.gateway_tls.clone(),
            info,
            advertise,
            stop_rx.clone(),
        ))
    });

    shutdown.await;
    info!("plugin shutting down");
    let _ = stop_tx.send(true);
    if let Some(r) = registration {
        // It unregisters as it stops.
        let _ = tokio::time::timeout(Duration::from_secs(5), r).await;
    }
    match server.await {
        Ok(result) => result?,
        Err(err) => warn!(error = %err, "plugin server task failed"),
    }
    Ok(())
}

fn with_token<T>(msg: T, token: &Option<String>) -> Request<T> {
    let mut req = Request::new(msg);
    req.set_timeout(Duration::from_secs(5));
    if let Some(t) = token
        && let Ok(v) = format!("Bearer {t}").parse()
    {
        req.metadata_mut().insert("authorization", v);
    }
    req
}

/// Registers, sends heartbeats, registers again when the gateway forgot the
/// plugin (it restarted, or heartbeats were missed) or was unreachable, and
/// unregisters when `stop` turns true.
async fn keep_registered(
    gateway: String,
    token: Option<String>,
    tls: polku_proto::tls::ClientTls,
    info: PluginInfo,
    advertise: String,
    mut stop: watch::Receiver<bool>,
) {
    let uri = polku_core::address::normalize_address(&gateway).unwrap_or(gateway);
    let channel: Channel = match tls.endpoint(&uri) {
        Ok(e) => e
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect_lazy(),
        Err(err) => {
            warn!(gateway = %uri, error = %err, "invalid gateway address; not registering");
            return;
        }
    };
    let mut registry = PluginRegistryClient::new(channel);
    let mut plugin_id: Option<String> = None;
    let mut every = Duration::from_secs(1);
    let mut backoff = Duration::from_millis(200);
    loop {
        match &plugin_id {
            None => {
                let req = with_token(
                    RegisterRequest {
                        info: Some(info.clone()),
                        address: advertise.clone(),
                    },
                    &token,
                );
                match registry.register(req).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        info!(plugin_id = %r.plugin_id, gateway = %uri, "registered with the gateway");
                        every = Duration::from_millis(r.heartbeat_interval_ms.max(50));
                        plugin_id = Some(r.plugin_id);
                        backoff = Duration::from_millis(200);
                    }
                    Err(status) => {
                        warn!(gateway = %uri, code = ?status.code(), error = %status.message(), "registration failed; retrying");
                        every = backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            Some(id) => {
                let req = with_token(
                    HeartbeatRequest {
                        plugin_id: id.clone(),
                    },
                    &token,
                );
                match registry.heartbeat(req).await {
                    Ok(_) => debug!(plugin_id = %id, "heartbeat"),
                    Err(status) if status.code() == tonic::Code::NotFound => {
                        warn!(plugin_id = %id, "the gateway forgot this plugin; registering again");
                        plugin_id = None;
                        continue;
                    }
                    Err(status) => {
                        warn!(plugin_id = %id, error = %status.message(), "heartbeat failed");
                    }
                }
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    if let Some(id) = plugin_id {
        let req = with_token(
            UnregisterRequest {
                plugin_id: id.clone(),
            },
            &token,
        );
        match registry.unregister(req).await {
            Ok(_) => info!(plugin_id = %id, "unregistered"),
            Err(status) => warn!(plugin_id = %id, error = %status.message(), "unregister failed"),
        }
    }
}

/// Serves an [`Emitter`] as `EmitterPlugin`.
#[derive(Debug)]
struct EmitterAdapter<E> {
    emitter: Arc<E>,
    info: PluginInfo,
}

#[tonic::async_trait]
impl<E: Emitter> EmitterPlugin for EmitterAdapter<E> {
    async fn info(&self, _: Request<()>) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(self.info.clone()))
    }

    async fn health(&self, _: Request<()>) -> Result<Response<HealthResponse>, Status> {
        let healthy = self.emitter.healthy().await;
        Ok(Response::new(HealthResponse {
            healthy,
            message: if healthy {
                String::new()
            } else {
                "emitter reports unhealthy".into()
            },
        }))
    }

    async fn emit(&self, request: Request<EmitRequest>) -> Result<Response<EmitResponse>, Status> {
        let events = request.into_inner().events;
        let n = events.len();
        let reply = match self.emitter.emit(&events).await {
            Ok(()) => EmitResponse {
                success_count: n as u32,
                failures: Vec::new(),
            },
            Err(err) => {
                let failures: Vec<EmitFailure> = match err {
                    EmitError::Partial { failures } => failures
                        .into_iter()
                        .filter(|f| f.index < n)
                        .map(|f| EmitFailure {
                            event_id: events[f.index].id.to_string(),
                            message: f.message,
                            retryable: f.retryable,
                            index: f.index as u32,
                        })
                        .collect(),
                    other => {
                        let retryable = !matches!(other, EmitError::Rejected { .. });
                        let message = other.to_string();
                        events
                            .iter()
                            .enumerate()
                            .map(|(i, e)| EmitFailure {
                                event_id: e.id.to_string(),
                                message: message.clone(),
                                retryable,
                                index: i as u32,
                            })
                            .collect()
                    }
                };
                EmitResponse {
                    success_count: (n - failures.len().min(n)) as u32,
                    failures,
                }
            }
        };
        Ok(Response::new(reply))
    }

    async fn shutdown(&self, _: Request<()>) -> Result<Response<()>, Status> {
        self.emitter
            .shutdown()
            .await
            .map(Response::new)
            .map_err(|e| Status::unavailable(e.to_string()))
    }
}

/// Serves an [`Ingestor`] as `IngestorPlugin`.
#[derive(Debug)]
struct IngestorAdapter<I> {
    ingestor: Arc<I>,
    info: PluginInfo,
}

#[tonic::async_trait]
impl<I: Ingestor> IngestorPlugin for IngestorAdapter<I> {
    async fn info(&self, _: Request<()>) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(self.info.clone()))
    }

    async fn health(&self, _: Request<()>) -> Result<Response<HealthResponse>, Status> {
        Ok(Response::new(HealthResponse {
            healthy: true,
            message: String::new(),
        }))
    }

    async fn ingest(
        &self,
        request: Request<IngestRequest>,
    ) -> Result<Response<IngestResponse>, Status> {
        let IngestRequest { source, data, .. } = request.into_inner();
        match self.ingestor.ingest(&source, data).await {
            Ok(out) => Ok(Response::new(IngestResponse {
                events: out.events,
                errors: out
                    .errors
                    .into_iter()
                    .map(|e| crate::proto::RecordError {
                        index: e.index as u32,
                        message: e.message,
                    })
                    .collect(),
            })),
            Err(e @ IngestError::Malformed { .. }) => Err(Status::invalid_argument(e.to_string())),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }
}
