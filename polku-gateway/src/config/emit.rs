//! The emitters the environment configures (stdout, null, webhooks, other
//! gateways over gRPC) and the delivery settings the networked ones wear.

use super::{ConfigError, Env, MAX_BUFFER_CAPACITY, Secret};
use crate::{EmitterOptions, QueueFull};
use polku_emit::resilience::{BreakerConfig, Resilience, RetryPolicy};
use std::sync::Arc;
use std::time::Duration;

/// An emitter the environment configures, with how the gateway runs it.
pub type ConfiguredEmitter = (Arc<dyn polku_core::Emitter>, EmitterOptions);

/// How the stdout emitter writes events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StdoutMode {
    /// One JSON line per event.
    #[default]
    Json,
    /// Readable lines for people.
    Pretty,
}

/// The webhook emitters: one per URL.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WebhookSettings {
    /// `POLKU_EMIT_WEBHOOK_URL`: webhook URLs (comma-separated); one
    /// [`WebhookEmitter`](polku_emit::WebhookEmitter) each, named `webhook`
    /// (or `webhook-1`, `webhook-2`, ... when there are several).
    pub urls: Vec<String>,
    /// `POLKU_EMIT_WEBHOOK_HEADERS`: headers for every webhook POST,
    /// `Name: value` pairs separated by `;` (the values may be credentials).
    pub headers: Vec<(String, Secret)>,
    /// `POLKU_EMIT_WEBHOOK_SECRET`: sign webhook POSTs (Standard Webhooks).
    pub secret: Option<Secret>,
    /// `POLKU_EMIT_WEBHOOK_BATCH_SIZE`: most events per webhook POST. Default 500.
    pub batch_size: usize,
    /// `POLKU_EMIT_WEBHOOK_LINGER`: how long a webhook batch waits for more
    /// events (up to the batch size) before it is sent. Default `0` (off).
    pub linger: Duration,
    /// `POLKU_EMIT_WEBHOOK_IN_FLIGHT`: POSTs under way at once. Default 1
    /// (one at a time, in order); more overlaps the round trips, and
    /// batches may then arrive out of order.
    pub in_flight: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            urls: Vec::new(),
            headers: Vec::new(),
            secret: None,
            batch_size: 500,
            linger: Duration::ZERO,
            in_flight: 1,
        }
    }
}

/// Forwarding to other gateways over gRPC.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GrpcForwardSettings {
    /// `POLKU_EMIT_GRPC_ENDPOINTS`: other gateways to forward to
    /// (comma-separated `host:port`); one [`GrpcEmitter`](polku_emit::GrpcEmitter)
    /// named `grpc` over all of them.
    pub endpoints: Vec<String>,
    /// `POLKU_EMIT_GRPC_TLS_CA`, `..._CERT`, `..._KEY`: the CA that signs
    /// `https://` endpoints (default: the public web roots) and the client
    /// certificate to present to them.
    pub tls: polku_proto::tls::ClientTls,
    /// `POLKU_EMIT_GRPC_IN_FLIGHT`: forwarding calls under way at once.
    /// Default 1 (one at a time, in order); more overlaps the round trips,
    /// and batches may then arrive out of order.
    pub in_flight: usize,
}

impl Default for GrpcForwardSettings {
    fn default() -> Self {
        GrpcForwardSettings {
            endpoints: Vec::new(),
            tls: Default::default(),
            in_flight: 1,
        }
    }
}

/// The emitters the environment configures.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EmitSettings {
    /// `POLKU_EMIT_STDOUT`: print events to stdout. Default: on when no
    /// other emitter is configured.
    pub stdout: Option<bool>,
    /// `POLKU_STDOUT_FORMAT`: `json` or `pretty`. Default `json`.
    pub stdout_format: StdoutMode,
    /// `POLKU_EMIT_NULL`: count events and drop them (emitter `null`), for
    /// benchmarks. Default off.
    pub null: bool,
    /// Webhooks.
    pub webhook: WebhookSettings,
    /// Other gateways.
    pub grpc: GrpcForwardSettings,
    /// Apache Kafka.
    pub kafka: super::KafkaEmitSettings,
    /// S3 and S3-compatible stores.
    pub s3: super::S3EmitSettings,
    /// `POLKU_EMIT_TIMEOUT`: time limit of each delivery attempt by the
    /// webhook, gRPC and plugin emitters. Default `10s`.
    pub timeout: Duration,
    /// `POLKU_EMIT_QUEUE_FULL` (`block`, `drop_oldest`, `drop_newest`) with
    /// `POLKU_EMIT_QUEUE_MAX_EVENTS` (default 10000): what each emitter's
    /// queue does when full. Default `block`.
    pub queue_full: QueueFull,
}

impl Default for EmitSettings {
    fn default() -> Self {
        EmitSettings {
            stdout: None,
            stdout_format: StdoutMode::Json,
            null: false,
            webhook: WebhookSettings::default(),
            grpc: GrpcForwardSettings::default(),
            kafka: super::KafkaEmitSettings::default(),
            s3: super::S3EmitSettings::default(),
            timeout: Duration::from_secs(10),
            queue_full: QueueFull::Block,
        }
    }
}

impl EmitSettings {
    pub(super) fn read(&mut self, env: &Env<'_>) -> Result<(), ConfigError> {
        if let Some(b) = env.switch("POLKU_EMIT_STDOUT", "on or off")? {
            self.stdout = Some(b);
        }
        if let Some(m) = env.choice(
            "POLKU_STDOUT_FORMAT",
            &[("json", StdoutMode::Json), ("pretty", StdoutMode::Pretty)],
            "json or pretty",
        )? {
            self.stdout_format = m;
        }
        if let Some(b) = env.switch("POLKU_EMIT_NULL", "on or off")? {
            self.null = b;
        }
        if let Some((v, urls)) = env.list("POLKU_EMIT_WEBHOOK_URL") {
            if urls.is_empty()
                || urls
                    .iter()
                    .any(|u| polku_emit::WebhookEmitter::new(u).is_err())
            {
                return Err(Env::bad(
                    "POLKU_EMIT_WEBHOOK_URL",
                    &v,
                    "one or more http(s) URLs, comma-separated",
                ));
            }
            self.webhook.urls = urls;
        }
        if let Some(v) = env.raw("POLKU_EMIT_WEBHOOK_HEADERS") {
            self.webhook.headers = headers(&v)?;
        }
        if let Some(v) = env.raw("POLKU_EMIT_WEBHOOK_SECRET") {
            let secret = Secret::new(v.trim());
            if probe().signing_secret(secret.expose()).is_err() {
                return Err(Env::hidden(
                    "POLKU_EMIT_WEBHOOK_SECRET",
                    "a non-empty secret, or whsec_<base64>",
                ));
            }
            self.webhook.secret = Some(secret);
        }
        if let Some(n) = env.number(
            "POLKU_EMIT_WEBHOOK_BATCH_SIZE",
            1,
            1_000_000,
            "a number of events from 1 to 1000000",
        )? {
            self.webhook.batch_size = n as usize;
        }
        if let Some(d) = env.duration("POLKU_EMIT_WEBHOOK_LINGER", false)? {
            self.webhook.linger = d;
        }
        if let Some(n) = env.calls_in_flight("POLKU_EMIT_WEBHOOK_IN_FLIGHT")? {
            self.webhook.in_flight = n;
        }
        if let Some(n) = env.calls_in_flight("POLKU_EMIT_GRPC_IN_FLIGHT")? {
            self.grpc.in_flight = n;
        }
        if let Some((v, endpoints)) = env.list("POLKU_EMIT_GRPC_ENDPOINTS") {
            let bad = endpoints
                .iter()
                .any(|e| polku_core::address::normalize_address(e).is_err());
            if endpoints.is_empty() || bad {
                return Err(Env::bad(
                    "POLKU_EMIT_GRPC_ENDPOINTS",
                    &v,
                    "host:port endpoints (http:// optional), comma-separated",
                ));
            }
            self.grpc.endpoints = endpoints;
        }
        self.grpc.tls = super::plugins::client_tls(
            env,
            polku_proto::tls::ClientTlsVars {
                ca: "POLKU_EMIT_GRPC_TLS_CA",
                cert: "POLKU_EMIT_GRPC_TLS_CERT",
                key: "POLKU_EMIT_GRPC_TLS_KEY",
            },
        )?;
        if let Some(d) = env.duration("POLKU_EMIT_TIMEOUT", true)? {
            self.timeout = d;
        }
        self.kafka.read(env)?;
        self.s3.read(env)?;
        let queue_max = env
            .number(
                "POLKU_EMIT_QUEUE_MAX_EVENTS",
                1,
                MAX_BUFFER_CAPACITY as u64,
                "a number of events from 1 to 100000000",
            )?
            .map_or(10_000, |n| n as usize);
        if let Some(q) = env.choice(
            "POLKU_EMIT_QUEUE_FULL",
            &[
                ("block", QueueFull::Block),
                (
                    "drop_oldest",
                    QueueFull::DropOldest {
                        max_events: queue_max,
                    },
                ),
                (
                    "drop_newest",
                    QueueFull::DropNewest {
                        max_events: queue_max,
                    },
                ),
            ],
            "block, drop_oldest or drop_newest",
        )? {
            self.queue_full = q;
        }
        Ok(())
    }

    /// The emitters these settings ask for: other gateways and webhooks
    /// (wearing `resilience`), null if asked, and stdout when nothing else
    /// is configured (or when asked for). A value the emitters refuse (set
    /// in code: the environment's were checked when read) is an error that
    /// names its variable.
    pub(super) fn build(
        &self,
        resilience: &Resilience,
        options: EmitterOptions,
    ) -> Result<Vec<ConfiguredEmitter>, ConfigError> {
        let mut out: Vec<ConfiguredEmitter> = Vec::new();
        let refused =
            |var: &'static str, value: &str, expected: &'static str| Env::bad(var, value, expected);
        if !self.grpc.endpoints.is_empty() {
            let g = polku_emit::GrpcEmitter::with_tls(&self.grpc.endpoints, &self.grpc.tls)
                .map_err(|_| {
                    refused(
                        "POLKU_EMIT_GRPC_ENDPOINTS",
                        &self.grpc.endpoints.join(","),
                        "host:port endpoints (http:// optional), comma-separated",
                    )
                })?;
            // Each call takes the batches already queued (see
            // GATHERED_CALL_EVENTS).
            let opts = options
                .linger(Duration::ZERO, GATHERED_CALL_EVENTS)
                .in_flight(self.grpc.in_flight);
            out.push((Arc::new(resilience.wrap(g)), opts));
        }
        // Kafka: librdkafka tries each record for POLKU_EMIT_TIMEOUT and
        // reports; the call's own limit is a little longer, so that it is
        // the client that says what became of every record.
        if let Some(k) = self.kafka.emitter(self.timeout)? {
            let r = resilience
                .clone()
                .timeout(self.timeout + KAFKA_REPORT_MARGIN);
            // Each call takes every batch already queued (unary calls of one
            // event become one call), and several calls wait for their
            // acknowledgements at once.
            let opts = options
                .in_flight(self.kafka.in_flight)
                .linger(Duration::ZERO, GATHERED_CALL_EVENTS);
            out.push((Arc::new(r.wrap(k)), opts));
        }
        // S3: each call waits until its object is written (at most the
        // object's age, then the upload with its retries), and many calls
        // wait at once, their events joining the same objects.
        if let Some(s3) = self.s3.emitter()? {
            let r = resilience.clone().timeout(s3.max_age() + S3_UPLOAD_MARGIN);
            out.push((Arc::new(r.wrap(s3)), options));
        }
        let many = self.webhook.urls.len() > 1;
        for (i, url) in self.webhook.urls.iter().enumerate() {
            let w = self.webhook(url).map_err(|(var, expected)| {
                if var == "POLKU_EMIT_WEBHOOK_URL" {
                    refused(var, url, expected)
                } else {
                    Env::hidden(var, expected)
                }
            })?;
            let w = w.named(if many {
                format!("webhook-{}", i + 1)
            } else {
                "webhook".to_owned()
            });
            // A POST takes the batches already queued, up to its size, and
            // waits up to POLKU_EMIT_WEBHOOK_LINGER for more (0: no wait).
            let opts = options
                .linger(self.webhook.linger, self.webhook.batch_size)
                .in_flight(self.webhook.in_flight);
            out.push((Arc::new(resilience.wrap(w)), opts));
        }
        if self.null {
            out.push((
                Arc::new(polku_emit::NullEmitter::new()),
                EmitterOptions::default(),
            ));
        }
        if self.stdout.unwrap_or(out.is_empty()) {
            out.push((
                Arc::new(match self.stdout_format {
                    StdoutMode::Json => polku_emit::StdoutEmitter::new(),
                    StdoutMode::Pretty => polku_emit::StdoutEmitter::pretty(),
                }),
                // It asks to gather what is queued, a few calls at once.
                EmitterOptions::default(),
            ));
        }
        Ok(out)
    }

    /// One webhook emitter for `url`, or the variable whose value it refused.
    fn webhook(
        &self,
        url: &str,
    ) -> Result<polku_emit::WebhookEmitter, (&'static str, &'static str)> {
        let mut w = polku_emit::WebhookEmitter::new(url)
            .map_err(|_| {
                (
                    "POLKU_EMIT_WEBHOOK_URL",
                    "one or more http(s) URLs, comma-separated",
                )
            })?
            .timeout(self.timeout)
            .batch_size(self.webhook.batch_size)
            .map_err(|_| {
                (
                    "POLKU_EMIT_WEBHOOK_BATCH_SIZE",
                    "a number of events from 1 to 1000000",
                )
            })?;
        for (n, v) in &self.webhook.headers {
            w = w.header(n, v.expose()).map_err(|_| {
                (
                    "POLKU_EMIT_WEBHOOK_HEADERS",
                    "valid header names and values, `Name: value` pairs separated by `;`",
                )
            })?;
        }
        if let Some(s) = &self.webhook.secret {
            w = w.signing_secret(s.expose()).map_err(|_| {
                (
                    "POLKU_EMIT_WEBHOOK_SECRET",
                    "a non-empty secret, or whsec_<base64>",
                )
            })?;
        }
        Ok(w)
    }
}

/// How long past an S3 object's age its upload (and object_store's own
/// tries) may take before the call is cut.
const S3_UPLOAD_MARGIN: Duration = Duration::from_secs(120);

/// The most events one call of an emitter whose calls take a round trip
/// (Kafka, gRPC, plugins) gathers from its queue: each call takes every batch
/// already queued, without waiting for more, so that unary calls of one
/// event do not each wait for a round trip of their own. A batch this big
/// goes alone: gathering copies events into one list, which costs more than
/// a call for a batch that is big already.
pub(super) const GATHERED_CALL_EVENTS: usize = 1_000;

/// How much longer a Kafka call may take than the client's delivery timeout.
const KAFKA_REPORT_MARGIN: Duration = Duration::from_secs(5);

/// A webhook emitter to try settings on.
fn probe() -> polku_emit::WebhookEmitter {
    polku_emit::WebhookEmitter::new("http://127.0.0.1/").expect("a valid URL")
}

/// `Name: value` pairs separated by `;`, each one a header a webhook takes.
/// Errors never show the values (they may be credentials).
fn headers(v: &str) -> Result<Vec<(String, Secret)>, ConfigError> {
    let var = "POLKU_EMIT_WEBHOOK_HEADERS";
    let mut out = Vec::new();
    let mut w = probe();
    for pair in v.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, value)) = pair.split_once(':').filter(|(n, _)| !n.trim().is_empty()) else {
            return Err(Env::hidden(var, "`Name: value` pairs separated by `;`"));
        };
        let (name, value) = (name.trim(), value.trim());
        w = w.header(name, value).map_err(|_| {
            Env::hidden(
                var,
                "valid header names and values, `Name: value` pairs separated by `;`",
            )
        })?;
        out.push((name.to_owned(), Secret::new(value)));
    }
    Ok(out)
}

/// Retries, circuit breaker and failure store of the emitters that deliver
/// over the network (webhook, gRPC, plugins).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeliverySettings {
    /// `POLKU_EMIT_RETRY_MAX_ATTEMPTS`: tries per batch, the first included
    /// (`1`: no retries). Default 10.
    pub retry_max_attempts: u32,
    /// `POLKU_EMIT_RETRY_MAX_AGE`: no retry starts later than this after the
    /// first try. Default `5m`.
    pub retry_max_age: Duration,
    /// `POLKU_EMIT_RETRY_BACKOFF`: the first wait between tries; it doubles
    /// each time (with jitter). Default `100ms`.
    pub retry_backoff: Duration,
    /// `POLKU_EMIT_RETRY_MAX_BACKOFF`: the longest wait between tries. Default `10s`.
    pub retry_max_backoff: Duration,
    /// `POLKU_EMIT_BREAKER_FAILURES`: consecutive failed calls that open an
    /// emitter's circuit breaker (`0`: no breaker). Default 5.
    pub breaker_failures: u32,
    /// `POLKU_EMIT_BREAKER_COOLDOWN`: how long an open breaker waits before a
    /// probe. Default `5s`.
    pub breaker_cooldown: Duration,
    /// `POLKU_EMIT_FAILURE_STORE_EVENTS`: events each emitter's failure store
    /// keeps (`0`: no store). Default 10000.
    pub failure_store_events: usize,
    /// `POLKU_EMIT_FAILURE_STORE_BYTES`: bytes each emitter's failure store
    /// keeps. Default 16 MiB.
    pub failure_store_bytes: usize,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            retry_max_attempts: 10,
            retry_max_age: Duration::from_secs(300),
            retry_backoff: Duration::from_millis(100),
            retry_max_backoff: Duration::from_secs(10),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(5),
            failure_store_events: 10_000,
            failure_store_bytes: 16 << 20,
        }
    }
}

impl DeliverySettings {
    pub(super) fn read(&mut self, env: &Env<'_>) -> Result<(), ConfigError> {
        if let Some(n) = env.number(
            "POLKU_EMIT_RETRY_MAX_ATTEMPTS",
            1,
            1_000_000,
            "a number of tries from 1 (no retries) to 1000000",
        )? {
            self.retry_max_attempts = n as u32;
        }
        if let Some(d) = env.duration("POLKU_EMIT_RETRY_MAX_AGE", false)? {
            self.retry_max_age = d;
        }
        if let Some(d) = env.duration("POLKU_EMIT_RETRY_BACKOFF", true)? {
            self.retry_backoff = d;
        }
        if let Some(d) = env.duration("POLKU_EMIT_RETRY_MAX_BACKOFF", true)? {
            self.retry_max_backoff = d;
        }
        if self.retry_max_backoff < self.retry_backoff {
            return Err(ConfigError {
                var: "POLKU_EMIT_RETRY_MAX_BACKOFF",
                value: format!("{:?}", self.retry_max_backoff),
                expected: "a duration no shorter than POLKU_EMIT_RETRY_BACKOFF",
            });
        }
        if let Some(n) = env.number(
            "POLKU_EMIT_BREAKER_FAILURES",
            0,
            1_000_000,
            "a number of failures from 1 to 1000000, or 0 for no breaker",
        )? {
            self.breaker_failures = n as u32;
        }
        if let Some(d) = env.duration("POLKU_EMIT_BREAKER_COOLDOWN", true)? {
            self.breaker_cooldown = d;
        }
        if let Some(n) = env.number(
            "POLKU_EMIT_FAILURE_STORE_EVENTS",
            0,
            100_000_000,
            "a number of events up to 100000000, or 0 for no failure store",
        )? {
            self.failure_store_events = n as usize;
        }
        if let Some(n) = env.number(
            "POLKU_EMIT_FAILURE_STORE_BYTES",
            1,
            1 << 40,
            "a number of bytes above zero",
        )? {
            self.failure_store_bytes = n as usize;
        }
        Ok(())
    }

    /// The resilience these settings describe, each attempt limited to
    /// `timeout`. A value set in code that does not fit is an error naming
    /// its variable.
    pub(super) fn resilience(&self, timeout: Duration) -> Result<Resilience, ConfigError> {
        let refused = |var: &'static str, value: String, expected: &'static str| ConfigError {
            var,
            value,
            expected,
        };
        let retry = RetryPolicy::new(self.retry_max_attempts, self.retry_max_age)
            .map_err(|_| {
                refused(
                    "POLKU_EMIT_RETRY_MAX_ATTEMPTS",
                    self.retry_max_attempts.to_string(),
                    "a number of tries from 1 (no retries) to 1000000",
                )
            })?
            .backoff(self.retry_backoff, self.retry_max_backoff)
            .map_err(|_| {
                refused(
                    "POLKU_EMIT_RETRY_MAX_BACKOFF",
                    format!("{:?}", self.retry_max_backoff),
                    "a duration no shorter than POLKU_EMIT_RETRY_BACKOFF",
                )
            })?;
        let mut r = Resilience::new().timeout(timeout).retry(retry);
        if self.breaker_failures > 0 {
            let b =
                BreakerConfig::new(self.breaker_failures, self.breaker_cooldown).map_err(|_| {
                    refused(
                        "POLKU_EMIT_BREAKER_COOLDOWN",
                        format!("{:?}", self.breaker_cooldown),
                        "a duration above zero and at most a year, such as 5s, 500ms or 1m",
                    )
                })?;
            r = r.breaker(b);
        }
        if self.failure_store_events > 0 {
            r = r
                .failure_store(self.failure_store_events, self.failure_store_bytes)
                .map_err(|_| {
                    refused(
                        "POLKU_EMIT_FAILURE_STORE_BYTES",
                        self.failure_store_bytes.to_string(),
                        "a number of bytes above zero",
                    )
                })?;
        }
        Ok(r)
    }
}
