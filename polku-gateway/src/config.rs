//! Configuration from `POLKU_*` environment variables.

use std::net::SocketAddr;
use std::time::Duration;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Which tokio scheduler runs the gateway (`POLKU_SCHEDULER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheduler {
    /// Work-stealing, one worker per CPU (or `POLKU_WORKER_THREADS`). A task
    /// just woken runs next, so an emitter starts on events the moment they
    /// are handed over: the lowest ingest-to-emit latency.
    #[default]
    WorkStealing,
    /// One thread, tasks in the order they were woken. On one CPU it serves
    /// many small calls faster (replies of several calls leave in one
    /// write), at the cost of a longer ingest-to-emit tail for large
    /// batches. See BENCHMARKS.md.
    SingleThread,
}

/// How the stdout emitter writes events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StdoutMode {
    /// One JSON line per event.
    #[default]
    Json,
    /// Readable lines for people.
    Pretty,
}

/// Everything the gateway reads from its environment. `Default` gives the
/// documented defaults. Its `Debug` hides the tokens.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// `POLKU_GRPC_ADDR`: where gRPC listens. Default `0.0.0.0:50051`.
    pub grpc_addr: SocketAddr,
    /// `POLKU_HTTP_ADDR`: where HTTP listens, or `None` (`off`). Default `0.0.0.0:8080`.
    pub http_addr: Option<SocketAddr>,
    /// `POLKU_INGEST_TOKENS`: bearer tokens that may ingest (comma-separated);
    /// empty means ingestion is open. Health and metrics stay open.
    pub ingest_tokens: Vec<String>,
    /// `POLKU_PLUGIN_TOKEN`: when set, plugin registration needs this bearer
    /// token; when not, only loopback peers may register.
    pub plugin_token: Option<String>,
    /// `POLKU_PLUGIN_ALLOWED_HOSTS`: hosts a plugin address may name
    /// (comma-separated). Default `localhost,127.0.0.1,::1`.
    pub plugin_allowed_hosts: Vec<String>,
    /// `POLKU_PLUGIN_MAX`: the most plugins registered at once. Default 64.
    pub plugin_max: usize,
    /// `POLKU_PLUGIN_HEARTBEAT_INTERVAL`: how often plugins send heartbeats. Default `5s`.
    pub plugin_heartbeat_interval: Duration,
    /// `POLKU_PLUGIN_HEARTBEAT_TIMEOUT`: a plugin silent this long is removed.
    /// Default three intervals.
    pub plugin_heartbeat_timeout: Duration,
    /// `POLKU_PLUGIN_TIMEOUT`: timeout of every call to a plugin. Default `5s`.
    pub plugin_timeout: Duration,
    /// `POLKU_EMIT_STDOUT`: print events to stdout. Default: on when no
    /// other emitter is configured.
    pub emit_stdout: Option<bool>,
    /// `POLKU_EMIT_NULL`: count events and drop them (emitter `null`), for
    /// benchmarks. Default off.
    pub emit_null: bool,
    /// `POLKU_EMIT_WEBHOOK_URL`: webhook URLs (comma-separated); one
    /// [`WebhookEmitter`](polku_emit::WebhookEmitter) each, named `webhook`
    /// (or `webhook-1`, `webhook-2`, ... when there are several).
    pub webhook_urls: Vec<String>,
    /// `POLKU_EMIT_WEBHOOK_HEADERS`: headers for every webhook POST,
    /// `Name: value` pairs separated by `;`.
    pub webhook_headers: Vec<(String, String)>,
    /// `POLKU_EMIT_WEBHOOK_SECRET`: sign webhook POSTs (Standard Webhooks).
    pub webhook_secret: Option<String>,
    /// `POLKU_EMIT_GRPC_ENDPOINTS`: other gateways to forward to
    /// (comma-separated `host:port`); one [`GrpcEmitter`](polku_emit::GrpcEmitter)
    /// named `grpc` over all of them.
    pub grpc_endpoints: Vec<String>,
    /// `POLKU_EMIT_WEBHOOK_BATCH_SIZE`: most events per webhook POST. Default 500.
    pub webhook_batch_size: usize,
    /// `POLKU_EMIT_WEBHOOK_LINGER`: how long a webhook batch waits for more
    /// events (up to the batch size) before it is sent. Default `0` (off).
    pub webhook_linger: Duration,
    /// `POLKU_EMIT_TIMEOUT`: time limit of each delivery attempt by the
    /// webhook, gRPC and plugin emitters. Default `10s`.
    pub emit_timeout: Duration,
    /// `POLKU_EMIT_RETRY_MAX_ATTEMPTS`: tries per batch, the first included
    /// (`1`: no retries). Default 10.
    pub emit_retry_max_attempts: u32,
    /// `POLKU_EMIT_RETRY_MAX_AGE`: no retry starts later than this after the
    /// first try. Default `5m`.
    pub emit_retry_max_age: Duration,
    /// `POLKU_EMIT_RETRY_BACKOFF`: the first wait between tries; it doubles
    /// each time (with jitter). Default `100ms`.
    pub emit_retry_backoff: Duration,
    /// `POLKU_EMIT_RETRY_MAX_BACKOFF`: the longest wait between tries. Default `10s`.
    pub emit_retry_max_backoff: Duration,
    /// `POLKU_EMIT_BREAKER_FAILURES`: consecutive failed calls that open an
    /// emitter's circuit breaker (`0`: no breaker). Default 5.
    pub emit_breaker_failures: u32,
    /// `POLKU_EMIT_BREAKER_COOLDOWN`: how long an open breaker waits before a
    /// probe. Default `5s`.
    pub emit_breaker_cooldown: Duration,
    /// `POLKU_EMIT_FAILURE_STORE_EVENTS`: events each emitter's failure store
    /// keeps (`0`: no store). Default 10000.
    pub emit_failure_store_events: usize,
    /// `POLKU_EMIT_FAILURE_STORE_BYTES`: bytes each emitter's failure store
    /// keeps. Default 16 MiB.
    pub emit_failure_store_bytes: usize,
    /// `POLKU_EMIT_QUEUE_FULL` (`block`, `drop_oldest`, `drop_newest`) with
    /// `POLKU_EMIT_QUEUE_MAX_EVENTS` (default 10000): what each emitter's
    /// queue does when full. Default `block`.
    pub emit_queue_full: crate::QueueFull,
    /// `POLKU_ADMIN_TOKEN`: when set, the admin endpoints (failure stores)
    /// need this bearer token; when not, only loopback peers may use them.
    pub admin_token: Option<String>,
    /// `POLKU_BUFFER_CAPACITY`: events the buffer holds. Default 10000.
    pub buffer_capacity: usize,
    /// `POLKU_BUFFER_MAX_BYTES`: the buffer's budget in bytes (each event's
    /// strings, metadata and payload, plus its own size): events beyond it
    /// are refused like a full buffer. Default 64 MiB.
    pub buffer_max_bytes: usize,
    /// `POLKU_BUFFER_TIMEOUT`: how long SendEvent waits for room in a full
    /// buffer before RESOURCE_EXHAUSTED. Default `5s`.
    pub buffer_timeout: Duration,
    /// `POLKU_MAX_CONCURRENT_STREAMS`: most gRPC calls (HTTP/2 streams) at
    /// once on one connection. Default 256.
    pub max_concurrent_streams: u32,
    /// `POLKU_SCHEDULER`: `work-stealing` (the default) or `single-thread`,
    /// for [`crate::runtime()`].
    pub scheduler: Scheduler,
    /// `POLKU_WORKER_THREADS`: worker threads of the work-stealing
    /// scheduler. `None` (the default) is one per CPU the process may use.
    pub worker_threads: Option<usize>,
    /// `POLKU_KEEPALIVE_INTERVAL`: how often an idle gRPC connection is
    /// pinged. Default `30s`.
    pub keepalive_interval: Duration,
    /// `POLKU_KEEPALIVE_TIMEOUT`: a connection whose ping is not answered
    /// within this is closed. Default `20s`.
    pub keepalive_timeout: Duration,
    /// `POLKU_MAX_CONNECTIONS`: open connections at most, per listener
    /// (gRPC and HTTP each); more are closed as soon as they are accepted.
    /// Default 4096.
    pub max_connections: usize,
    /// `POLKU_RESERVED_CONNECTIONS`: connections each listener still accepts
    /// over `max_connections`, that serve health, readiness and metrics only
    /// (`/healthz`, `/readyz`, `/metrics`, `grpc.health.v1.Health`), so a
    /// listener full of clients can still be watched. Default 64.
    pub reserved_connections: usize,
    /// `POLKU_IDLE_TIMEOUT`: a connection with no request in flight for this
    /// long is closed (`0` keeps idle connections open). Default `5m`.
    pub idle_timeout: Option<Duration>,
    /// `POLKU_TRUST_LOOPBACK`: without `POLKU_ADMIN_TOKEN` (or
    /// `POLKU_PLUGIN_TOKEN`), loopback peers may use the admin endpoints (or
    /// the plugin registry). Turn it off behind a same-host proxy or sidecar,
    /// whose callers all arrive from loopback. A token, when set, is always
    /// required. Default true.
    pub trust_loopback: bool,
    /// `POLKU_HEADER_TIMEOUT`: a client must send a request's headers
    /// within this: from the connection's start for its first request, and
    /// from the first byte of each later HTTP/1.1 request. A connection that
    /// does not is closed (`0` turns this off). Default `10s`.
    pub header_timeout: Option<Duration>,
    /// `POLKU_BODY_TIMEOUT`: an HTTP request body must arrive in full within
    /// this of its headers, and each gRPC message within this of its first
    /// byte; a connection whose replies make no progress for this long is
    /// closed (`0` turns this off). Default `30s`.
    pub body_timeout: Option<Duration>,
    /// `POLKU_TLS_CERT`, `POLKU_TLS_KEY` and `POLKU_TLS_CLIENT_CA`: TLS on
    /// the gRPC and HTTP listeners, and client certificates when a CA is
    /// given. Default off.
    pub tls: Option<crate::TlsConfig>,
    /// `POLKU_EMIT_GRPC_TLS_CA`, `..._CERT`, `..._KEY`: the CA that signs
    /// `https://` gRPC endpoints (default: the public web roots) and the
    /// client certificate to present to them.
    pub emit_grpc_tls: polku_proto::tls::ClientTls,
    /// `POLKU_PLUGIN_TLS_CA`, `..._CERT`, `..._KEY`: the same for plugins
    /// that register an `https://` address.
    pub plugin_tls: polku_proto::tls::ClientTls,
    /// `POLKU_MAX_EVENTS_PER_REQUEST`: most events in one request (the
    /// whole request is refused past it). Default 10000.
    pub max_events_per_request: usize,
    /// `POLKU_MAX_ID_BYTES`: longest event id; a longer one refuses that
    /// event. Default 256.
    pub max_id_bytes: usize,
    /// `POLKU_MAX_SOURCE_BYTES`: longest `source`, the event's or the
    /// request's; a longer one refuses that event. Default 256.
    pub max_source_bytes: usize,
    /// `POLKU_MAX_EVENT_TYPE_BYTES`: longest `event_type`; a longer one
    /// refuses that event. Default 256.
    pub max_event_type_bytes: usize,
    /// `POLKU_MAX_ROUTES`: most `route_to` entries per event (each name at
    /// most 256 bytes); more refuses that event. Default 16.
    pub max_routes: usize,
    /// `POLKU_MAX_METADATA_ENTRIES`: most metadata entries per event. Default 64.
    pub max_metadata_entries: usize,
    /// `POLKU_MAX_METADATA_BYTES`: most bytes of metadata keys and values
    /// per event. Default 16384.
    pub max_metadata_bytes: usize,
    /// `POLKU_MAX_MESSAGE_BYTES`: largest request message. Default 4 MiB.
    pub max_message_bytes: usize,
    /// `POLKU_SHUTDOWN_TIMEOUT`: how long shutdown may take to deliver what
    /// was accepted. Default `30s`.
    pub shutdown_timeout: Duration,
    /// `POLKU_LOG_LEVEL`: a tracing filter such as `info` or `polku=debug`. Default `info`.
    pub log_level: String,
    /// `POLKU_LOG_FORMAT`: `text` or `json`. Default `text`.
    pub log_format: LogFormat,
    /// `POLKU_STDOUT_FORMAT`: `json` or `pretty`. Default `json`.
    pub stdout_format: StdoutMode,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("grpc_addr", &self.grpc_addr)
            .field("http_addr", &self.http_addr)
            .field(
                "ingest_tokens",
                &format_args!("<{} hidden>", self.ingest_tokens.len()),
            )
            .field(
                "plugin_token",
                &self.plugin_token.as_ref().map(|_| "<hidden>"),
            )
            .field("plugin_allowed_hosts", &self.plugin_allowed_hosts)
            .field("plugin_max", &self.plugin_max)
            .field("plugin_heartbeat_interval", &self.plugin_heartbeat_interval)
            .field("plugin_heartbeat_timeout", &self.plugin_heartbeat_timeout)
            .field("plugin_timeout", &self.plugin_timeout)
            .field("emit_stdout", &self.emit_stdout)
            .field("emit_null", &self.emit_null)
            .field("webhook_urls", &self.webhook_urls)
            .field(
                "webhook_headers",
                &format_args!("<{} hidden>", self.webhook_headers.len()),
            )
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "<hidden>"),
            )
            .field("grpc_endpoints", &self.grpc_endpoints)
            .field("webhook_batch_size", &self.webhook_batch_size)
            .field("webhook_linger", &self.webhook_linger)
            .field("emit_timeout", &self.emit_timeout)
            .field("emit_retry_max_attempts", &self.emit_retry_max_attempts)
            .field("emit_retry_max_age", &self.emit_retry_max_age)
            .field("emit_retry_backoff", &self.emit_retry_backoff)
            .field("emit_retry_max_backoff", &self.emit_retry_max_backoff)
            .field("emit_breaker_failures", &self.emit_breaker_failures)
            .field("emit_breaker_cooldown", &self.emit_breaker_cooldown)
            .field("emit_failure_store_events", &self.emit_failure_store_events)
            .field("emit_failure_store_bytes", &self.emit_failure_store_bytes)
            .field("emit_queue_full", &self.emit_queue_full)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<hidden>"),
            )
            .field("buffer_capacity", &self.buffer_capacity)
            .field("buffer_max_bytes", &self.buffer_max_bytes)
            .field("buffer_timeout", &self.buffer_timeout)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_concurrent_streams", &self.max_concurrent_streams)
            .field("scheduler", &self.scheduler)
            .field("worker_threads", &self.worker_threads)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("keepalive_timeout", &self.keepalive_timeout)
            .field("max_connections", &self.max_connections)
            .field("reserved_connections", &self.reserved_connections)
            .field("idle_timeout", &self.idle_timeout)
            .field("trust_loopback", &self.trust_loopback)
            .field("header_timeout", &self.header_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("tls", &self.tls)
            .field("emit_grpc_tls", &self.emit_grpc_tls)
            .field("plugin_tls", &self.plugin_tls)
            .field("max_events_per_request", &self.max_events_per_request)
            .field("max_id_bytes", &self.max_id_bytes)
            .field("max_source_bytes", &self.max_source_bytes)
            .field("max_event_type_bytes", &self.max_event_type_bytes)
            .field("max_routes", &self.max_routes)
            .field("max_metadata_entries", &self.max_metadata_entries)
            .field("max_metadata_bytes", &self.max_metadata_bytes)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("log_level", &self.log_level)
            .field("log_format", &self.log_format)
            .field("stdout_format", &self.stdout_format)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grpc_addr: SocketAddr::from(([0, 0, 0, 0], 50051)),
            http_addr: Some(SocketAddr::from(([0, 0, 0, 0], 8080))),
            ingest_tokens: Vec::new(),
            plugin_token: None,
            plugin_allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            plugin_max: 64,
            plugin_heartbeat_interval: Duration::from_secs(5),
            plugin_heartbeat_timeout: Duration::from_secs(15),
            plugin_timeout: Duration::from_secs(5),
            emit_stdout: None,
            emit_null: false,
            webhook_urls: Vec::new(),
            webhook_headers: Vec::new(),
            webhook_secret: None,
            grpc_endpoints: Vec::new(),
            webhook_batch_size: 500,
            webhook_linger: Duration::ZERO,
            emit_timeout: Duration::from_secs(10),
            emit_retry_max_attempts: 10,
            emit_retry_max_age: Duration::from_secs(300),
            emit_retry_backoff: Duration::from_millis(100),
            emit_retry_max_backoff: Duration::from_secs(10),
            emit_breaker_failures: 5,
            emit_breaker_cooldown: Duration::from_secs(5),
            emit_failure_store_events: 10_000,
            emit_failure_store_bytes: 16 << 20,
            emit_queue_full: crate::QueueFull::Block,
            admin_token: None,
            buffer_capacity: 10_000,
            buffer_max_bytes: 64 << 20,
            buffer_timeout: Duration::from_secs(5),
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent_streams: 256,
            scheduler: Scheduler::WorkStealing,
            worker_threads: None,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            max_connections: 4096,
            reserved_connections: 64,
            idle_timeout: Some(Duration::from_secs(300)),
            trust_loopback: true,
            header_timeout: Some(Duration::from_secs(10)),
            body_timeout: Some(Duration::from_secs(30)),
            tls: None,
            emit_grpc_tls: polku_proto::tls::ClientTls::new(),
            plugin_tls: polku_proto::tls::ClientTls::new(),
            max_events_per_request: 10_000,
            max_id_bytes: 256,
            max_source_bytes: 256,
            max_event_type_bytes: 256,
            max_routes: 16,
            max_metadata_entries: 64,
            max_metadata_bytes: 16 * 1024,
            shutdown_timeout: Duration::from_secs(30),
            log_level: "info".to_owned(),
            log_format: LogFormat::Text,
            stdout_format: StdoutMode::Json,
        }
    }
}

/// A `POLKU_*` variable with a value the gateway cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?} is not valid: expected {expected}")]
pub struct ConfigError {
    /// The variable's name.
    pub var: &'static str,
    /// The value it had.
    pub value: String,
    /// What it should be.
    pub expected: &'static str,
}

/// The largest buffer POLKU_BUFFER_CAPACITY allows.
pub(crate) const MAX_BUFFER_CAPACITY: usize = 100_000_000;

impl Config {
    /// The delivery resilience the environment asks for, which the
    /// webhook, gRPC and plugin emitters wear.
    pub fn resilience(&self) -> polku_emit::resilience::Resilience {
        use polku_emit::resilience::{BreakerConfig, Resilience, RetryPolicy};
        let mut r = Resilience::new().timeout(self.emit_timeout);
        // Values were checked when the configuration was read.
        if let Ok(p) = RetryPolicy::new(self.emit_retry_max_attempts, self.emit_retry_max_age)
            .and_then(|p| p.backoff(self.emit_retry_backoff, self.emit_retry_max_backoff))
        {
            r = r.retry(p);
        }
        if let Ok(b) = BreakerConfig::new(self.emit_breaker_failures, self.emit_breaker_cooldown) {
            r = r.breaker(b);
        }
        if self.emit_failure_store_events > 0 {
            if let Ok(with_store) = r.clone().failure_store(
                self.emit_failure_store_events,
                self.emit_failure_store_bytes,
            ) {
                r = with_store;
            }
        }
        r
    }

    /// How the gateway runs each emitter the environment configures.
    pub fn emitter_options(&self) -> crate::EmitterOptions {
        crate::EmitterOptions::default().queue_full(self.emit_queue_full)
    }

    /// The emitters the environment asks for, with how to run each: webhooks
    /// and other gateways (wearing [`resilience`](Self::resilience)), and
    /// stdout when nothing else is configured (or when asked for).
    pub fn emitters(
        &self,
    ) -> Vec<(
        std::sync::Arc<dyn polku_core::Emitter>,
        crate::EmitterOptions,
    )> {
        use std::sync::Arc;
        let resilience = self.resilience();
        let options = self.emitter_options();
        let mut out: Vec<(Arc<dyn polku_core::Emitter>, crate::EmitterOptions)> = Vec::new();
        if !self.grpc_endpoints.is_empty() {
            // Checked when the configuration was read.
            if let Ok(g) =
                polku_emit::GrpcEmitter::with_tls(&self.grpc_endpoints, &self.emit_grpc_tls)
            {
                out.push((Arc::new(resilience.wrap(g)), options));
            }
        }
        let many = self.webhook_urls.len() > 1;
        for (i, url) in self.webhook_urls.iter().enumerate() {
            // Checked when the configuration was read.
            let Ok(mut w) = polku_emit::WebhookEmitter::new(url) else {
                continue;
            };
            w = w
                .named(if many {
                    format!("webhook-{}", i + 1)
                } else {
                    "webhook".to_owned()
                })
                .timeout(self.emit_timeout);
            if let Ok(next) = w.clone().batch_size(self.webhook_batch_size) {
                w = next;
            }
            for (n, v) in &self.webhook_headers {
                if let Ok(next) = w.clone().header(n, v) {
                    w = next;
                }
            }
            if let Some(s) = &self.webhook_secret {
                if let Ok(next) = w.clone().signing_secret(s) {
                    w = next;
                }
            }
            let mut opts = options;
            if !self.webhook_linger.is_zero() {
                opts = opts.linger(self.webhook_linger, self.webhook_batch_size);
            }
            out.push((Arc::new(resilience.wrap(w)), opts));
        }
        if self.emit_null {
            out.push((
                Arc::new(polku_emit::NullEmitter::new()),
                crate::EmitterOptions::default(),
            ));
        }
        if self.emit_stdout.unwrap_or(out.is_empty()) {
            out.push((
                Arc::new(match self.stdout_format {
                    StdoutMode::Json => polku_emit::StdoutEmitter::new(),
                    StdoutMode::Pretty => polku_emit::StdoutEmitter::pretty(),
                }),
                crate::EmitterOptions::default(),
            ));
        }
        out
    }

    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `get` (a variable's value, if set).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut c = Config::default();
        let bad = |var: &'static str, value: &str, expected: &'static str| ConfigError {
            var,
            value: value.to_owned(),
            expected,
        };
        if let Some(v) = get("POLKU_GRPC_ADDR") {
            c.grpc_addr = v.trim().parse().map_err(|_| {
                bad(
                    "POLKU_GRPC_ADDR",
                    &v,
                    "an IP address and port, such as 0.0.0.0:50051 or [::1]:50051",
                )
            })?;
        }
        if let Some(v) = get("POLKU_HTTP_ADDR") {
            c.http_addr = if v.trim().eq_ignore_ascii_case("off") {
                None
            } else {
                Some(v.trim().parse().map_err(|_| {
                    bad(
                        "POLKU_HTTP_ADDR",
                        &v,
                        "an IP address and port, such as 0.0.0.0:8080, or off",
                    )
                })?)
            };
        }
        if let Some(v) = get("POLKU_INGEST_TOKENS") {
            let tokens: Vec<String> = v
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect();
            let printable = tokens
                .iter()
                .all(|t| t.bytes().all(|b| b.is_ascii_graphic()));
            if tokens.is_empty() || !printable {
                // Never echo the value: it holds secrets.
                return Err(ConfigError {
                    var: "POLKU_INGEST_TOKENS",
                    value: "<hidden>".to_owned(),
                    expected: "one or more tokens of printable characters, comma-separated",
                });
            }
            c.ingest_tokens = tokens;
        }
        if let Some(v) = get("POLKU_PLUGIN_TOKEN") {
            let t = v.trim();
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError {
                    var: "POLKU_PLUGIN_TOKEN",
                    value: "<hidden>".to_owned(),
                    expected: "a token of printable characters, without spaces",
                });
            }
            c.plugin_token = Some(t.to_owned());
        }
        if let Some(v) = get("POLKU_PLUGIN_ALLOWED_HOSTS") {
            let hosts: Vec<String> = v
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(str::to_owned)
                .collect();
            if hosts.is_empty()
                || hosts.iter().any(|h| {
                    h.contains(['/', ' ', ':'])
                        && !h.contains("::")
                        && h.parse::<std::net::IpAddr>().is_err()
                })
            {
                return Err(bad(
                    "POLKU_PLUGIN_ALLOWED_HOSTS",
                    &v,
                    "host names or IP addresses, comma-separated, such as localhost,10.0.0.5",
                ));
            }
            c.plugin_allowed_hosts = hosts;
        }
        if let Some(v) = get("POLKU_PLUGIN_MAX") {
            c.plugin_max = v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=10_000).contains(n))
                .ok_or_else(|| {
                    bad(
                        "POLKU_PLUGIN_MAX",
                        &v,
                        "a number of plugins from 1 to 10000",
                    )
                })?;
        }
        let mut timeout_set = false;
        if let Some(v) = get("POLKU_PLUGIN_HEARTBEAT_INTERVAL") {
            c.plugin_heartbeat_interval =
                parse_duration(&v).filter(|d| !d.is_zero()).ok_or_else(|| {
                    bad(
                        "POLKU_PLUGIN_HEARTBEAT_INTERVAL",
                        &v,
                        "a duration of at most a year, such as 5s or 500ms",
                    )
                })?;
        }
        if let Some(v) = get("POLKU_PLUGIN_HEARTBEAT_TIMEOUT") {
            c.plugin_heartbeat_timeout =
                parse_duration(&v).filter(|d| !d.is_zero()).ok_or_else(|| {
                    bad(
                        "POLKU_PLUGIN_HEARTBEAT_TIMEOUT",
                        &v,
                        "a duration of at most a year, such as 15s",
                    )
                })?;
            timeout_set = true;
        }
        if !timeout_set {
            c.plugin_heartbeat_timeout = c.plugin_heartbeat_interval * 3;
        }
        if c.plugin_heartbeat_timeout <= c.plugin_heartbeat_interval {
            return Err(ConfigError {
                var: "POLKU_PLUGIN_HEARTBEAT_TIMEOUT",
                value: format!("{:?}", c.plugin_heartbeat_timeout),
                expected: "a duration longer than POLKU_PLUGIN_HEARTBEAT_INTERVAL",
            });
        }
        if let Some(v) = get("POLKU_PLUGIN_TIMEOUT") {
            c.plugin_timeout = parse_duration(&v).filter(|d| !d.is_zero()).ok_or_else(|| {
                bad(
                    "POLKU_PLUGIN_TIMEOUT",
                    &v,
                    "a duration of at most a year, such as 5s or 500ms",
                )
            })?;
        }
        if let Some(v) = get("POLKU_EMIT_STDOUT") {
            c.emit_stdout = Some(match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "on" | "yes" => true,
                "0" | "false" | "off" | "no" => false,
                _ => return Err(bad("POLKU_EMIT_STDOUT", &v, "on or off")),
            });
        }
        if let Some(v) = get("POLKU_EMIT_NULL") {
            c.emit_null = match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "on" | "yes" => true,
                "0" | "false" | "off" | "no" => false,
                _ => return Err(bad("POLKU_EMIT_NULL", &v, "on or off")),
            };
        }
        if let Some(v) = get("POLKU_EMIT_WEBHOOK_URL") {
            c.webhook_urls = v
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect();
            if c.webhook_urls.is_empty()
                || c.webhook_urls
                    .iter()
                    .any(|u| polku_emit::WebhookEmitter::new(u).is_err())
            {
                return Err(bad(
                    "POLKU_EMIT_WEBHOOK_URL",
                    &v,
                    "one or more http(s) URLs, comma-separated",
                ));
            }
        }
        if let Some(v) = get("POLKU_EMIT_GRPC_ENDPOINTS") {
            c.grpc_endpoints = v
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_owned)
                .collect();
            if c.grpc_endpoints.is_empty()
                || c.grpc_endpoints
                    .iter()
                    .any(|e| polku_core::address::normalize_address(e).is_err())
            {
                return Err(bad(
                    "POLKU_EMIT_GRPC_ENDPOINTS",
                    &v,
                    "host:port endpoints (http:// optional), comma-separated",
                ));
            }
        }
        if let Some(v) = get("POLKU_EMIT_WEBHOOK_HEADERS") {
            let mut headers = Vec::new();
            for pair in v.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                let ok = pair.split_once(':').filter(|(n, _)| !n.trim().is_empty());
                let Some((name, value)) = ok else {
                    return Err(ConfigError {
                        var: "POLKU_EMIT_WEBHOOK_HEADERS",
                        value: "<hidden>".to_owned(),
                        expected: "`Name: value` pairs separated by `;`",
                    });
                };
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
            let probe = headers.iter().try_fold(
                polku_emit::WebhookEmitter::new("http://127.0.0.1/").map_err(|_| ()),
                |w, (n, val)| Ok::<_, ()>(w.and_then(|w| w.header(n, val).map_err(|_| ()))),
            );
            if !matches!(probe, Ok(Ok(_))) {
                return Err(ConfigError {
                    var: "POLKU_EMIT_WEBHOOK_HEADERS",
                    value: "<hidden>".to_owned(),
                    expected: "valid header names and values, `Name: value` pairs separated by `;`",
                });
            }
            c.webhook_headers = headers;
        }
        if let Some(v) = get("POLKU_EMIT_WEBHOOK_SECRET") {
            let usable = polku_emit::WebhookEmitter::new("http://127.0.0.1/")
                .ok()
                .and_then(|w| w.signing_secret(v.trim()).ok())
                .is_some();
            if !usable {
                return Err(ConfigError {
                    var: "POLKU_EMIT_WEBHOOK_SECRET",
                    value: "<hidden>".to_owned(),
                    expected: "a non-empty secret, or whsec_<base64>",
                });
            }
            c.webhook_secret = Some(v.trim().to_owned());
        }
        let duration = |var: &'static str, v: &str, nonzero: bool| {
            parse_duration(v)
                .filter(|d| !(nonzero && d.is_zero()))
                .ok_or_else(|| ConfigError {
                    var,
                    value: v.to_owned(),
                    expected: if nonzero {
                        "a duration above zero and at most a year, such as 5s, 500ms or 1m"
                    } else {
                        "a duration of at most a year, such as 5s, 500ms or 1m"
                    },
                })
        };
        let number = |var: &'static str, v: &str, min: u64, max: u64, expected: &'static str| {
            v.trim()
                .parse::<u64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| ConfigError {
                    var,
                    value: v.to_owned(),
                    expected,
                })
        };
        if let Some(v) = get("POLKU_EMIT_WEBHOOK_BATCH_SIZE") {
            c.webhook_batch_size = number(
                "POLKU_EMIT_WEBHOOK_BATCH_SIZE",
                &v,
                1,
                1_000_000,
                "a number of events from 1 to 1000000",
            )? as usize;
        }
        if let Some(v) = get("POLKU_EMIT_WEBHOOK_LINGER") {
            c.webhook_linger = duration("POLKU_EMIT_WEBHOOK_LINGER", &v, false)?;
        }
        if let Some(v) = get("POLKU_EMIT_TIMEOUT") {
            c.emit_timeout = duration("POLKU_EMIT_TIMEOUT", &v, true)?;
        }
        if let Some(v) = get("POLKU_EMIT_RETRY_MAX_ATTEMPTS") {
            c.emit_retry_max_attempts = number(
                "POLKU_EMIT_RETRY_MAX_ATTEMPTS",
                &v,
                1,
                1_000_000,
                "a number of tries from 1 (no retries) to 1000000",
            )? as u32;
        }
        if let Some(v) = get("POLKU_EMIT_RETRY_MAX_AGE") {
            c.emit_retry_max_age = duration("POLKU_EMIT_RETRY_MAX_AGE", &v, false)?;
        }
        if let Some(v) = get("POLKU_EMIT_RETRY_BACKOFF") {
            c.emit_retry_backoff = duration("POLKU_EMIT_RETRY_BACKOFF", &v, true)?;
        }
        if let Some(v) = get("POLKU_EMIT_RETRY_MAX_BACKOFF") {
            c.emit_retry_max_backoff = duration("POLKU_EMIT_RETRY_MAX_BACKOFF", &v, true)?;
        }
        if c.emit_retry_max_backoff < c.emit_retry_backoff {
            return Err(ConfigError {
                var: "POLKU_EMIT_RETRY_MAX_BACKOFF",
                value: format!("{:?}", c.emit_retry_max_backoff),
                expected: "a duration no shorter than POLKU_EMIT_RETRY_BACKOFF",
            });
        }
        if let Some(v) = get("POLKU_EMIT_BREAKER_FAILURES") {
            c.emit_breaker_failures = number(
                "POLKU_EMIT_BREAKER_FAILURES",
                &v,
                0,
                1_000_000,
                "a number of failures from 1 to 1000000, or 0 for no breaker",
            )? as u32;
        }
        if let Some(v) = get("POLKU_EMIT_BREAKER_COOLDOWN") {
            c.emit_breaker_cooldown = duration("POLKU_EMIT_BREAKER_COOLDOWN", &v, true)?;
        }
        if let Some(v) = get("POLKU_EMIT_FAILURE_STORE_EVENTS") {
            c.emit_failure_store_events = number(
                "POLKU_EMIT_FAILURE_STORE_EVENTS",
                &v,
                0,
                100_000_000,
                "a number of events up to 100000000, or 0 for no failure store",
            )? as usize;
        }
        if let Some(v) = get("POLKU_EMIT_FAILURE_STORE_BYTES") {
            c.emit_failure_store_bytes = number(
                "POLKU_EMIT_FAILURE_STORE_BYTES",
                &v,
                1,
                1 << 40,
                "a number of bytes above zero",
            )? as usize;
        }
        let queue_max = match get("POLKU_EMIT_QUEUE_MAX_EVENTS") {
            Some(v) => number(
                "POLKU_EMIT_QUEUE_MAX_EVENTS",
                &v,
                1,
                MAX_BUFFER_CAPACITY as u64,
                "a number of events from 1 to 100000000",
            )? as usize,
            None => 10_000,
        };
        if let Some(v) = get("POLKU_EMIT_QUEUE_FULL") {
            c.emit_queue_full = match v.trim().to_ascii_lowercase().as_str() {
                "block" => crate::QueueFull::Block,
                "drop_oldest" => crate::QueueFull::DropOldest {
                    max_events: queue_max,
                },
                "drop_newest" => crate::QueueFull::DropNewest {
                    max_events: queue_max,
                },
                _ => {
                    return Err(bad(
                        "POLKU_EMIT_QUEUE_FULL",
                        &v,
                        "block, drop_oldest or drop_newest",
                    ));
                }
            };
        }
        if let Some(v) = get("POLKU_ADMIN_TOKEN") {
            if v.trim().is_empty() {
                return Err(ConfigError {
                    var: "POLKU_ADMIN_TOKEN",
                    value: String::new(),
                    expected: "a non-empty token",
                });
            }
            c.admin_token = Some(v.trim().to_owned());
        }
        if let Some(v) = get("POLKU_MAX_CONCURRENT_STREAMS") {
            c.max_concurrent_streams = number(
                "POLKU_MAX_CONCURRENT_STREAMS",
                &v,
                1,
                1_000_000,
                "a number of streams from 1 to 1000000",
            )? as u32;
        }
        if let Some(v) = get("POLKU_SCHEDULER") {
            c.scheduler = match v.trim().to_ascii_lowercase().as_str() {
                "work-stealing" => Scheduler::WorkStealing,
                "single-thread" => Scheduler::SingleThread,
                _ => {
                    return Err(bad("POLKU_SCHEDULER", &v, "work-stealing or single-thread"));
                }
            };
        }
        if let Some(v) = get("POLKU_WORKER_THREADS") {
            c.worker_threads = Some(number(
                "POLKU_WORKER_THREADS",
                &v,
                1,
                1024,
                "a number of threads from 1 to 1024",
            )? as usize);
        }
        if let Some(v) = get("POLKU_KEEPALIVE_INTERVAL") {
            c.keepalive_interval = duration("POLKU_KEEPALIVE_INTERVAL", &v, true)?;
        }
        if let Some(v) = get("POLKU_KEEPALIVE_TIMEOUT") {
            c.keepalive_timeout = duration("POLKU_KEEPALIVE_TIMEOUT", &v, true)?;
        }
        if let Some(v) = get("POLKU_MAX_CONNECTIONS") {
            c.max_connections = number(
                "POLKU_MAX_CONNECTIONS",
                &v,
                1,
                1_000_000,
                "a number of connections from 1 to 1000000",
            )? as usize;
        }
        if let Some(v) = get("POLKU_RESERVED_CONNECTIONS") {
            c.reserved_connections = number(
                "POLKU_RESERVED_CONNECTIONS",
                &v,
                0,
                4096,
                "a number of connections from 0 to 4096",
            )? as usize;
        }
        if let Some(v) = get("POLKU_IDLE_TIMEOUT") {
            let d = duration("POLKU_IDLE_TIMEOUT", &v, false)?;
            c.idle_timeout = (!d.is_zero()).then_some(d);
        }
        if let Some(v) = get("POLKU_TRUST_LOOPBACK") {
            c.trust_loopback = match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "on" | "yes" => true,
                "0" | "false" | "off" | "no" => false,
                _ => return Err(bad("POLKU_TRUST_LOOPBACK", &v, "true or false")),
            };
        }
        if let Some(v) = get("POLKU_HEADER_TIMEOUT") {
            let d = duration("POLKU_HEADER_TIMEOUT", &v, false)?;
            c.header_timeout = (!d.is_zero()).then_some(d);
        }
        if let Some(v) = get("POLKU_BODY_TIMEOUT") {
            let d = duration("POLKU_BODY_TIMEOUT", &v, false)?;
            c.body_timeout = (!d.is_zero()).then_some(d);
        }
        let file = |var: &'static str| {
            get(var)
                .map(|v| {
                    let v = v.trim().to_owned();
                    if v.is_empty() {
                        Err(bad(var, &v, "the path of a PEM file"))
                    } else {
                        Ok(std::path::PathBuf::from(v))
                    }
                })
                .transpose()
        };
        let cert = file("POLKU_TLS_CERT")?;
        let key = file("POLKU_TLS_KEY")?;
        let client_ca = file("POLKU_TLS_CLIENT_CA")?;
        c.tls = match (cert, key) {
            (Some(cert), Some(key)) => Some(crate::TlsConfig {
                cert,
                key,
                client_ca,
            }),
            (None, None) if client_ca.is_none() => None,
            (None, None) => {
                return Err(bad(
                    "POLKU_TLS_CLIENT_CA",
                    &get("POLKU_TLS_CLIENT_CA").unwrap_or_default(),
                    "POLKU_TLS_CERT and POLKU_TLS_KEY set as well (client certificates need TLS)",
                ));
            }
            (Some(_), None) => {
                return Err(bad(
                    "POLKU_TLS_KEY",
                    "",
                    "the server key's PEM file, set together with POLKU_TLS_CERT",
                ));
            }
            (None, Some(_)) => {
                return Err(bad(
                    "POLKU_TLS_CERT",
                    "",
                    "the server certificate's PEM file, set together with POLKU_TLS_KEY",
                ));
            }
        };
        for (vars, slot) in [
            (
                polku_proto::tls::ClientTlsVars {
                    ca: "POLKU_EMIT_GRPC_TLS_CA",
                    cert: "POLKU_EMIT_GRPC_TLS_CERT",
                    key: "POLKU_EMIT_GRPC_TLS_KEY",
                },
                &mut c.emit_grpc_tls,
            ),
            (
                polku_proto::tls::ClientTlsVars {
                    ca: "POLKU_PLUGIN_TLS_CA",
                    cert: "POLKU_PLUGIN_TLS_CERT",
                    key: "POLKU_PLUGIN_TLS_KEY",
                },
                &mut c.plugin_tls,
            ),
        ] {
            let (ca, cert, key) = (file(vars.ca)?, file(vars.cert)?, file(vars.key)?);
            *slot = polku_proto::tls::ClientTls::from_files(
                vars,
                ca.as_deref(),
                cert.as_deref(),
                key.as_deref(),
            )
            .map_err(|e| {
                let var = match &e {
                    polku_proto::tls::ClientTlsError::Read { var, .. }
                    | polku_proto::tls::ClientTlsError::NotPem { var, .. }
                    | polku_proto::tls::ClientTlsError::HalfIdentity(var, _) => *var,
                    _ => vars.ca,
                };
                bad(
                    var,
                    &get(var).unwrap_or_default(),
                    match e {
                        polku_proto::tls::ClientTlsError::HalfIdentity(..) => {
                            "a client certificate and its key, set together"
                        }
                        _ => "a readable PEM file (a certificate, or a private key for _KEY)",
                    },
                )
            })?;
        }
        if let Some(v) = get("POLKU_MAX_EVENTS_PER_REQUEST") {
            c.max_events_per_request = number(
                "POLKU_MAX_EVENTS_PER_REQUEST",
                &v,
                1,
                MAX_BUFFER_CAPACITY as u64,
                "a number of events from 1 to 100000000",
            )? as usize;
        }
        if let Some(v) = get("POLKU_MAX_ID_BYTES") {
            c.max_id_bytes = number(
                "POLKU_MAX_ID_BYTES",
                &v,
                36,
                65_536,
                "a number of bytes from 36 (a UUID) to 65536",
            )? as usize;
        }
        if let Some(v) = get("POLKU_MAX_SOURCE_BYTES") {
            c.max_source_bytes = number(
                "POLKU_MAX_SOURCE_BYTES",
                &v,
                1,
                65_536,
                "a number of bytes from 1 to 65536",
            )? as usize;
        }
        if let Some(v) = get("POLKU_MAX_EVENT_TYPE_BYTES") {
            c.max_event_type_bytes = number(
                "POLKU_MAX_EVENT_TYPE_BYTES",
                &v,
                1,
                65_536,
                "a number of bytes from 1 to 65536",
            )? as usize;
        }
        if let Some(v) = get("POLKU_MAX_ROUTES") {
            c.max_routes = number(
                "POLKU_MAX_ROUTES",
                &v,
                1,
                1_024,
                "a number of routes from 1 to 1024",
            )? as usize;
        }
        if let Some(v) = get("POLKU_MAX_METADATA_ENTRIES") {
            c.max_metadata_entries = number(
                "POLKU_MAX_METADATA_ENTRIES",
                &v,
                0,
                100_000,
                "a number of entries from 0 to 100000",
            )? as usize;
        }
        if let Some(v) = get("POLKU_MAX_METADATA_BYTES") {
            c.max_metadata_bytes = number(
                "POLKU_MAX_METADATA_BYTES",
                &v,
                0,
                1 << 30,
                "a number of bytes up to 1073741824",
            )? as usize;
        }
        if let Some(v) = get("POLKU_BUFFER_CAPACITY") {
            c.buffer_capacity = v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_BUFFER_CAPACITY).contains(n))
                .ok_or_else(|| {
                    bad(
                        "POLKU_BUFFER_CAPACITY",
                        &v,
                        "a whole number of events from 1 to 100000000",
                    )
                })?;
        }
        if let Some(v) = get("POLKU_BUFFER_MAX_BYTES") {
            c.buffer_max_bytes = number(
                "POLKU_BUFFER_MAX_BYTES",
                &v,
                1 << 16,
                u64::from(u32::MAX),
                "a number of bytes from 65536 to 4294967295",
            )? as usize;
        }
        if let Some(v) = get("POLKU_BUFFER_TIMEOUT") {
            c.buffer_timeout = parse_duration(&v).ok_or_else(|| {
                bad(
                    "POLKU_BUFFER_TIMEOUT",
                    &v,
                    "a duration of at most a year, such as 5s, 500ms or 1m",
                )
            })?;
        }
        if let Some(v) = get("POLKU_MAX_MESSAGE_BYTES") {
            c.max_message_bytes = v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1024..=1 << 30).contains(n))
                .ok_or_else(|| {
                    bad(
                        "POLKU_MAX_MESSAGE_BYTES",
                        &v,
                        "a number of bytes from 1024 to 1073741824",
                    )
                })?;
        }
        if let Some(v) = get("POLKU_SHUTDOWN_TIMEOUT") {
            c.shutdown_timeout = parse_duration(&v).ok_or_else(|| {
                bad(
                    "POLKU_SHUTDOWN_TIMEOUT",
                    &v,
                    "a duration of at most a year, such as 30s, 500ms or 1m",
                )
            })?;
        }
        if let Some(v) = get("POLKU_LOG_LEVEL") {
            let ok =
                !v.trim().is_empty() && tracing_subscriber::EnvFilter::try_new(v.trim()).is_ok();
            if !ok {
                return Err(bad(
                    "POLKU_LOG_LEVEL",
                    &v,
                    "a level (error, warn, info, debug, trace) or a filter such as polku=debug",
                ));
            }
            c.log_level = v.trim().to_owned();
        }
        if let Some(v) = get("POLKU_LOG_FORMAT") {
            c.log_format = match v.trim().to_ascii_lowercase().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                _ => return Err(bad("POLKU_LOG_FORMAT", &v, "text or json")),
            };
        }
        if let Some(v) = get("POLKU_STDOUT_FORMAT") {
            c.stdout_format = match v.trim().to_ascii_lowercase().as_str() {
                "json" => StdoutMode::Json,
                "pretty" => StdoutMode::Pretty,
                _ => return Err(bad("POLKU_STDOUT_FORMAT", &v, "json or pretty")),
            };
        }
        Ok(c)
    }
}

/// `250ms`, `5s`, `2m`, `1h`, or a plain number of seconds.
/// The longest duration a setting takes: a year. Longer ones are refused at
/// start-up (every timeout is added to the clock somewhere; a hundred years
/// would overflow it at run time).
const MAX_DURATION: Duration = Duration::from_secs(366 * 86_400);

fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    };
    (d <= MAX_DURATION).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_readme() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.grpc_addr.to_string(), "0.0.0.0:50051");
        assert_eq!(c.buffer_capacity, 10_000);
        assert_eq!(c.log_level, "info");
        assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(c.max_message_bytes, 4 << 20);
        assert_eq!(c.worker_threads, None, "one per CPU");
        assert_eq!(c.scheduler, Scheduler::WorkStealing);
        assert!(c.trust_loopback);
    }

    #[test]
    fn values_are_read() {
        let c = cfg(&[
            ("POLKU_GRPC_ADDR", "127.0.0.1:6000"),
            ("POLKU_BUFFER_CAPACITY", "42"),
            ("POLKU_BUFFER_TIMEOUT", "250ms"),
            ("POLKU_SHUTDOWN_TIMEOUT", "2m"),
            ("POLKU_LOG_LEVEL", "polku=debug,warn"),
            ("POLKU_LOG_FORMAT", "JSON"),
            ("POLKU_STDOUT_FORMAT", "pretty"),
            ("POLKU_MAX_MESSAGE_BYTES", "65536"),
            ("POLKU_WORKER_THREADS", "3"),
            ("POLKU_SCHEDULER", "Single-Thread"),
        ])
        .unwrap();
        assert_eq!(c.worker_threads, Some(3));
        assert_eq!(c.scheduler, Scheduler::SingleThread);
        assert_eq!(c.grpc_addr.port(), 6000);
        assert_eq!(c.buffer_capacity, 42);
        assert_eq!(c.buffer_timeout, Duration::from_millis(250));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(120));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.stdout_format, StdoutMode::Pretty);
        assert_eq!(c.max_message_bytes, 65536);
    }

    #[test]
    fn emitters_from_the_environment() {
        let names = |c: &Config| {
            c.emitters()
                .iter()
                .map(|(e, _)| e.name().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&cfg(&[]).unwrap()), ["stdout"], "stdout by default");
        let one = cfg(&[("POLKU_EMIT_WEBHOOK_URL", "http://127.0.0.1:9/h")]).unwrap();
        assert_eq!(
            names(&one),
            ["webhook"],
            "stdout off once another emitter is set"
        );
        let two = cfg(&[
            (
                "POLKU_EMIT_WEBHOOK_URL",
                "http://a.invalid/1, http://b.invalid/2",
            ),
            ("POLKU_EMIT_STDOUT", "on"),
            (
                "POLKU_EMIT_WEBHOOK_HEADERS",
                "Authorization: Bearer x; X-Team: core",
            ),
        ])
        .unwrap();
        assert_eq!(names(&two), ["webhook-1", "webhook-2", "stdout"]);
        let null = cfg(&[("POLKU_EMIT_NULL", "on")]).unwrap();
        assert_eq!(names(&null), ["null"], "null alone: no stdout");
        assert_eq!(
            two.webhook_headers[1],
            ("X-Team".to_owned(), "core".to_owned())
        );
        assert!(
            !format!("{two:?}").contains("Bearer x"),
            "headers hidden in Debug"
        );
    }

    #[test]
    fn bad_values_name_the_variable_and_what_it_expects() {
        for (var, value) in [
            ("POLKU_GRPC_ADDR", "localhost"),
            ("POLKU_BUFFER_CAPACITY", "0"),
            ("POLKU_BUFFER_CAPACITY", "lots"),
            ("POLKU_BUFFER_TIMEOUT", "5 parsecs"),
            ("POLKU_SHUTDOWN_TIMEOUT", "-1s"),
            ("POLKU_LOG_LEVEL", "info,[broken"),
            ("POLKU_LOG_FORMAT", "xml"),
            ("POLKU_STDOUT_FORMAT", "yaml"),
            ("POLKU_MAX_MESSAGE_BYTES", "1"),
            ("POLKU_EMIT_STDOUT", "maybe"),
            ("POLKU_EMIT_WEBHOOK_URL", "ftp://x/y"),
            ("POLKU_EMIT_WEBHOOK_HEADERS", "no colon here"),
            ("POLKU_EMIT_WEBHOOK_SECRET", "whsec_!!!"),
            ("POLKU_EMIT_GRPC_ENDPOINTS", "no-port-here"),
            ("POLKU_PLUGIN_MAX", "0"),
            ("POLKU_PLUGIN_HEARTBEAT_INTERVAL", "never"),
            ("POLKU_EMIT_TIMEOUT", "0s"),
            ("POLKU_EMIT_RETRY_MAX_ATTEMPTS", "0"),
            ("POLKU_EMIT_RETRY_MAX_AGE", "forever"),
            ("POLKU_EMIT_RETRY_BACKOFF", "0ms"),
            ("POLKU_EMIT_RETRY_MAX_BACKOFF", "1ms"),
            ("POLKU_EMIT_BREAKER_FAILURES", "-1"),
            ("POLKU_EMIT_BREAKER_COOLDOWN", "0s"),
            ("POLKU_EMIT_FAILURE_STORE_EVENTS", "many"),
            ("POLKU_EMIT_FAILURE_STORE_BYTES", "0"),
            ("POLKU_EMIT_QUEUE_FULL", "drop_random"),
            ("POLKU_EMIT_QUEUE_MAX_EVENTS", "0"),
            ("POLKU_EMIT_WEBHOOK_BATCH_SIZE", "0"),
            ("POLKU_EMIT_WEBHOOK_LINGER", "soon"),
            ("POLKU_ADMIN_TOKEN", " "),
            ("POLKU_MAX_EVENTS_PER_REQUEST", "0"),
            ("POLKU_MAX_ID_BYTES", "8"),
            ("POLKU_MAX_SOURCE_BYTES", "0"),
            ("POLKU_MAX_EVENT_TYPE_BYTES", "100000"),
            ("POLKU_MAX_ROUTES", "none"),
            ("POLKU_MAX_METADATA_ENTRIES", "lots"),
            ("POLKU_MAX_METADATA_BYTES", "-1"),
            ("POLKU_BUFFER_MAX_BYTES", "1000"),
            ("POLKU_MAX_CONCURRENT_STREAMS", "0"),
            ("POLKU_WORKER_THREADS", "0"),
            ("POLKU_WORKER_THREADS", "all"),
            ("POLKU_SCHEDULER", "fifo"),
            ("POLKU_KEEPALIVE_INTERVAL", "0s"),
            ("POLKU_KEEPALIVE_TIMEOUT", "never"),
            ("POLKU_MAX_CONNECTIONS", "0"),
            ("POLKU_IDLE_TIMEOUT", "later"),
            ("POLKU_HEADER_TIMEOUT", "slow"),
            ("POLKU_TRUST_LOOPBACK", "maybe"),
            ("POLKU_RESERVED_CONNECTIONS", "5000"),
            ("POLKU_BODY_TIMEOUT", "-3s"),
            ("POLKU_IDLE_TIMEOUT", "99999999999h"),
            ("POLKU_SHUTDOWN_TIMEOUT", "9000h"),
            ("POLKU_BUFFER_TIMEOUT", "5124095576030431h"),
            ("POLKU_TLS_CERT", " "),
        ] {
            let err = cfg(&[(var, value)]).unwrap_err();
            assert_eq!(err.var, var);
            let msg = err.to_string();
            assert!(msg.starts_with(&format!("{var}=")), "{msg}");
            assert!(msg.contains("expected"), "{msg}");
        }
    }

    #[test]
    fn tls_files_come_in_pairs_and_client_ca_needs_them() {
        let c = cfg(&[
            ("POLKU_TLS_CERT", "/etc/polku/cert.pem"),
            ("POLKU_TLS_KEY", "/etc/polku/key.pem"),
            ("POLKU_TLS_CLIENT_CA", "/etc/polku/ca.pem"),
            ("POLKU_IDLE_TIMEOUT", "0"),
            ("POLKU_HEADER_TIMEOUT", "0"),
            ("POLKU_BODY_TIMEOUT", "2s"),
            ("POLKU_TRUST_LOOPBACK", "off"),
            ("POLKU_MAX_CONNECTIONS", "10"),
        ])
        .unwrap();
        assert_eq!(c.header_timeout, None);
        assert!(!c.trust_loopback);
        assert_eq!(c.body_timeout, Some(Duration::from_secs(2)));
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert, std::path::Path::new("/etc/polku/cert.pem"));
        assert_eq!(tls.key, std::path::Path::new("/etc/polku/key.pem"));
        assert_eq!(
            tls.client_ca.as_deref(),
            Some(std::path::Path::new("/etc/polku/ca.pem"))
        );
        assert_eq!(c.idle_timeout, None);
        assert_eq!(c.max_connections, 10);
        let err = cfg(&[("POLKU_TLS_CERT", "/c.pem")]).unwrap_err();
        assert_eq!(err.var, "POLKU_TLS_KEY");
        let err = cfg(&[("POLKU_TLS_KEY", "/k.pem")]).unwrap_err();
        assert_eq!(err.var, "POLKU_TLS_CERT");
        let err = cfg(&[("POLKU_EMIT_GRPC_TLS_CA", "/no/such/ca.pem")]).unwrap_err();
        assert_eq!(err.var, "POLKU_EMIT_GRPC_TLS_CA");
        let err = cfg(&[("POLKU_PLUGIN_TLS_CERT", "/no/such/cert.pem")]).unwrap_err();
        assert_eq!(err.var, "POLKU_PLUGIN_TLS_CERT");
        assert!(err.to_string().contains("set together"), "{err}");
        let err = cfg(&[("POLKU_TLS_CLIENT_CA", "/ca.pem")]).unwrap_err();
        assert_eq!(err.var, "POLKU_TLS_CLIENT_CA");
        assert!(err.to_string().contains("POLKU_TLS_CERT"), "{err}");
    }

    #[test]
    fn delivery_settings_from_the_environment() {
        let c = cfg(&[
            ("POLKU_EMIT_WEBHOOK_URL", "http://127.0.0.1:9/h"),
            ("POLKU_EMIT_STDOUT", "on"),
            ("POLKU_EMIT_TIMEOUT", "3s"),
            ("POLKU_EMIT_RETRY_MAX_ATTEMPTS", "4"),
            ("POLKU_EMIT_RETRY_MAX_AGE", "1m"),
            ("POLKU_EMIT_RETRY_BACKOFF", "50ms"),
            ("POLKU_EMIT_RETRY_MAX_BACKOFF", "2s"),
            ("POLKU_EMIT_BREAKER_FAILURES", "0"),
            ("POLKU_EMIT_FAILURE_STORE_EVENTS", "500"),
            ("POLKU_EMIT_FAILURE_STORE_BYTES", "65536"),
            ("POLKU_EMIT_QUEUE_FULL", "drop_oldest"),
            ("POLKU_EMIT_QUEUE_MAX_EVENTS", "2000"),
            ("POLKU_EMIT_WEBHOOK_BATCH_SIZE", "100"),
            ("POLKU_EMIT_WEBHOOK_LINGER", "250ms"),
            ("POLKU_ADMIN_TOKEN", "adm"),
        ])
        .unwrap();
        assert_eq!(c.emit_timeout, Duration::from_secs(3));
        assert_eq!(c.emit_retry_max_attempts, 4);
        assert_eq!(c.emit_breaker_failures, 0);
        assert_eq!(c.admin_token.as_deref(), Some("adm"));
        assert!(
            !format!("{c:?}").contains("adm\""),
            "the admin token is hidden"
        );
        let r = c.resilience();
        assert_eq!(
            r,
            polku_emit::resilience::Resilience::new()
                .timeout(Duration::from_secs(3))
                .retry(
                    polku_emit::resilience::RetryPolicy::new(4, Duration::from_secs(60))
                        .unwrap()
                        .backoff(Duration::from_millis(50), Duration::from_secs(2))
                        .unwrap()
                )
                .failure_store(500, 65536)
                .unwrap(),
            "no breaker when its threshold is 0"
        );
        let emitters = c.emitters();
        let (hook, opts) = &emitters[0];
        assert_eq!(hook.name(), "webhook");
        let store = hook
            .delivery_state()
            .and_then(|d| d.failure_store())
            .unwrap();
        assert_eq!(store.bounds(), (500, 65536));
        assert_eq!(
            opts.queue_full,
            crate::QueueFull::DropOldest { max_events: 2000 }
        );
        assert_eq!(
            opts.linger,
            Some(crate::Linger {
                max_wait: Duration::from_millis(250),
                max_events: 100
            })
        );
        let (stdout, opts) = &emitters[1];
        assert!(
            stdout.delivery_state().is_none(),
            "stdout is local: no retries"
        );
        assert_eq!(*opts, crate::EmitterOptions::default());

        let defaults = Config::default().resilience();
        assert_eq!(defaults, polku_emit::resilience::Resilience::default());
    }
}
