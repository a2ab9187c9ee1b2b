//! Events to other POLKU gateways (or anything serving `polku.v1.Gateway`).

use async_trait::async_trait;
use polku_core::address::normalize_address;
use polku_core::{EmitError, Emitter, Event, EventFailure};
use polku_proto::v1::gateway_client::GatewayClient;
use polku_proto::v1::send_event_request::Payload;
use polku_proto::v1::{EventBatch, RejectCode, SendEventRequest};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::split::Sent;

/// A gRPC emitter setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrpcEmitterError {
    /// No endpoint given.
    #[error("a gRPC emitter needs at least one endpoint")]
    NoEndpoints,
    /// An endpoint is not `host:port` (with or without a scheme).
    #[error("invalid gRPC endpoint: {0}")]
    Endpoint(String),
}

#[derive(Debug)]
struct Target {
    uri: String,
    client: GatewayClient<Channel>,
    /// Skipped until then after a failure (a short cool-down).
    down_until: Mutex<Option<Instant>>,
}

/// Forwards batches to one or more `polku.v1.Gateway` endpoints with
/// `SendEvent`: one POLKU feeding another.
///
/// ```
/// use polku_emit::GrpcEmitter;
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let upstream = GrpcEmitter::new(["10.0.0.5:50051", "http://10.0.0.6:50051"])
///     .unwrap()
///     .named("central");
/// # drop(upstream);
/// # });
/// ```
///
/// Batches go round-robin to the endpoints that are up. An endpoint that fails
/// (unreachable, timeout, `UNAVAILABLE`, its buffer full) is skipped for a
/// second and the batch goes to the next one; connections are made again by
/// themselves. Only when every endpoint fails does the batch fail, as
/// retryable. Events the far side refuses one by one are reported failed one
/// by one (retryable when it was full or shutting down).
///
/// A batch goes in requests of at most [`max_request_bytes`](Self::max_request_bytes)
/// encoded bytes (4 MiB less framing room, the receiver's default limit); a
/// request the far side still refuses as too large (`OUT_OF_RANGE`) is split
/// and sent again, and only an event too large on its own fails for good.
/// What one request delivered stays delivered if a later one fails.
///
/// Events are forwarded without their `route_to`: those name this gateway's
/// emitters, which the far side does not have (it would refuse them as
/// `NO_ROUTE`). [`forward_routes`](Self::forward_routes) keeps them, for
/// gateways that share emitter names.
#[derive(Debug)]
pub struct GrpcEmitter {
    name: String,
    targets: Vec<Target>,
    next: AtomicUsize,
    timeout: Duration,
    cool_down: Duration,
    max_request_bytes: usize,
    forward_routes: bool,
}

impl GrpcEmitter {
    /// An emitter named `grpc` for these endpoints (`host:port`, with or
    /// without `http://`). Connections are made when first used, so this
    /// needs a tokio runtime but no reachable endpoint.
    pub fn new<I, S>(endpoints: I) -> Result<Self, GrpcEmitterError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::with_tls(endpoints, &polku_proto::tls::ClientTls::new())
    }

    /// Like [`new`](Self::new), connecting to `https://` endpoints with this
    /// CA and client certificate.
    pub fn with_tls<I, S>(
        endpoints: I,
        tls: &polku_proto::tls::ClientTls,
    ) -> Result<Self, GrpcEmitterError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut targets = Vec::new();
        for e in endpoints {
            let uri = normalize_address(e.as_ref())
                .map_err(|err| GrpcEmitterError::Endpoint(err.to_string()))?;
            let channel = tls
                .endpoint(&uri)
                .map_err(|err| GrpcEmitterError::Endpoint(format!("{uri}: {err}")))?
                .connect_timeout(Duration::from_secs(2))
                .connect_lazy();
            targets.push(Target {
                uri,
                client: GatewayClient::new(channel),
                down_until: Mutex::new(None),
            });
        }
        if targets.is_empty() {
            return Err(GrpcEmitterError::NoEndpoints);
        }
        Ok(GrpcEmitter {
            name: "grpc".into(),
            targets,
            next: AtomicUsize::new(0),
            timeout: Duration::from_secs(10),
            cool_down: Duration::from_secs(1),
            max_request_bytes: crate::split::DEFAULT_MAX_REQUEST_BYTES,
            forward_routes: false,
        })
    }

    /// Names the emitter (what `route_to` uses).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Gives up on one endpoint's call after this long (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Keeps each request under this many encoded bytes (default
    /// [`DEFAULT_MAX_REQUEST_BYTES`](crate::DEFAULT_MAX_REQUEST_BYTES)); set
    /// it to the far side's `POLKU_MAX_MESSAGE_BYTES` when that is smaller.
    pub fn max_request_bytes(mut self, max: usize) -> Self {
        self.max_request_bytes = max.max(1);
        self
    }

    /// Forwards each event's `route_to` as it is, instead of without it.
    pub fn forward_routes(mut self, forward: bool) -> Self {
        self.forward_routes = forward;
        self
    }

    fn is_down(t: &Target, now: Instant) -> bool {
        t.down_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|until| now < until)
    }

    fn mark(&self, t: &Target, down: bool) {
        *t.down_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            down.then(|| Instant::now() + self.cool_down);
    }
}

impl GrpcEmitter {
    /// One request with these events, to the first endpoint that takes it.
    async fn send_once(&self, events: &[Event]) -> Sent {
        let n = self.targets.len();
        let start = self.next.fetch_add(1, Relaxed);
        let now = Instant::now();
        // Endpoints that are up first, in round-robin order; then the ones
        // cooling down, as a last resort.
        let mut order: Vec<&Target> = (0..n).map(|i| &self.targets[(start + i) % n]).collect();
        order.sort_by_key(|t| Self::is_down(t, now));
        let batch: Vec<Event> = if self.forward_routes {
            events.to_vec()
        } else {
            events
                .iter()
                .map(|e| {
                    let mut e = e.clone();
                    e.route_to = Default::default();
                    e
                })
                .collect()
        };
        let mut errors = Vec::new();
        for t in order {
            let request = SendEventRequest {
                source: String::new(),
                payload: Some(Payload::Events(EventBatch {
                    events: batch.clone(),
                })),
            };
            let mut client = t.client.clone();
            let reply = match tokio::time::timeout(self.timeout, client.send_event(request)).await {
                Err(_) => {
                    self.mark(t, true);
                    errors.push(format!("{}: no answer within {:?}", t.uri, self.timeout));
                    continue;
                }
                Ok(Err(status)) => match polku_proto::status::classify(&status) {
                    // Too large for the far side: smaller requests may do.
                    polku_proto::status::Failure::TooLarge => {
                        self.mark(t, false);
                        return Sent::TooLarge(format!("{}: {}", t.uri, status.message()));
                    }
                    // The far side will never take this batch.
                    polku_proto::status::Failure::BadRequest
                    | polku_proto::status::Failure::Refused => {
                        self.mark(t, false);
                        return Sent::Failed(EmitError::Rejected {
                            message: format!("{} refused the batch: {}", t.uri, status.message()),
                        });
                    }
                    polku_proto::status::Failure::Transient => {
                        self.mark(t, true);
                        errors.push(format!(
                            "{}: {} ({:?})",
                            t.uri,
                            status.message(),
                            status.code()
                        ));
                        continue;
                    }
                },
                Ok(Ok(r)) => r.into_inner(),
            };
            self.mark(t, false);
            if reply.rejected.is_empty() {
                return Sent::Ok;
            }
            let failures = reply
                .rejected
                .into_iter()
                .filter_map(|r| {
                    let index = r
                        .index
                        .map(|i| i as usize)
                        .filter(|i| *i < events.len())
                        .or_else(|| events.iter().position(|e| e.id == r.id))?;
                    let retryable = matches!(
                        RejectCode::try_from(r.code),
                        Ok(RejectCode::BufferFull | RejectCode::ShuttingDown)
                    );
                    Some(EventFailure {
                        index,
                        message: format!("{} refused it: {}", t.uri, r.message),
                        retryable,
                    })
                })
                .collect::<Vec<_>>();
            return if failures.is_empty() {
                Sent::Ok
            } else {
                Sent::Failed(EmitError::Partial { failures })
            };
        }
        Sent::Failed(EmitError::unavailable(
            format!("every endpoint failed: {}", errors.join("; ")),
            None,
        ))
    }
}

#[async_trait]
impl Emitter for GrpcEmitter {
    fn name(&self) -> &str {
        &self.name
    }

    #[tracing::instrument(level = "debug", name = "polku.emit.grpc", skip_all, fields(events = events.len()))]
    async fn emit(&self, events: &[Event]) -> Result<(), EmitError> {
        crate::split::send_chunked(events, self.max_request_bytes, |range| {
            self.send_once(&events[range])
        })
        .await
    }

    fn requests_for(&self, events: &[Event]) -> usize {
        crate::split::chunks(events, self.max_request_bytes)
            .len()
            .max(1)
    }

    async fn healthy(&self) -> bool {
        let now = Instant::now();
        self.targets.iter().any(|t| !Self::is_down(t, now))
    }
}
