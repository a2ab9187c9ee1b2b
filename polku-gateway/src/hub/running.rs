//! A running gateway: its addresses, counters, in-process sends and
//! resends, and the background tasks that run beside the servers (the health
//! watch and the flush timer). Stopping it is in [`super::shutdown`].

use crate::error::SubmitError;
use crate::grpc::GatewayService;
use crate::pipeline::{Pipeline, Wait};
use crate::stats::StatsSnapshot;
use polku_core::Event;
use polku_proto::v1::gateway_server::GatewayServer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::warn;

/// A running gateway. Drop it only after [`shutdown`](RunningGateway::shutdown):
/// that is what delivers every accepted event.
#[derive(Debug)]
pub struct RunningGateway {
    pub(super) registry: Arc<polku_discovery::Registry>,
    pub(super) grpc_addr: SocketAddr,
    pub(super) http_addr: Option<SocketAddr>,
    pub(super) http: Option<JoinHandle<std::io::Result<()>>>,
    pub(super) http_stop_tx: watch::Sender<bool>,
    pub(super) health_watch: JoinHandle<()>,
    pub(super) pipeline: Arc<Pipeline>,
    pub(super) stop_tx: watch::Sender<bool>,
    pub(super) health: tonic_health::server::HealthReporter,
    pub(super) server: JoinHandle<Result<(), tonic::transport::Error>>,
    pub(super) flushers: Vec<Arc<dyn polku_middleware::Flush>>,
    pub(super) flusher: Option<JoinHandle<()>>,
    pub(super) shutdown_timeout: Duration,
}

/// What became of a batch sent with [`RunningGateway::send`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SendReport {
    /// Events now in the buffer.
    pub accepted: usize,
    /// Events middleware dropped on purpose.
    pub dropped: usize,
    /// Events refused, each with why.
    pub rejected: Vec<Rejection>,
}

/// One event of a batch that the gateway refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rejection {
    /// The event's id (empty when it had none yet, or one over the limit).
    pub id: String,
    /// Its place in the batch, when the refusal knows it.
    pub index: Option<usize>,
    /// Why, as the gateway's replies name it.
    pub code: polku_proto::v1::RejectCode,
    /// What was wrong, in words.
    pub message: String,
}

impl From<polku_proto::v1::RejectedEvent> for Rejection {
    fn from(r: polku_proto::v1::RejectedEvent) -> Self {
        Rejection {
            id: r.id,
            index: r.index.map(|i| i as usize),
            code: polku_proto::v1::RejectCode::try_from(r.code).unwrap_or_default(),
            message: r.message,
        }
    }
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
            rejected: o.rejected.into_iter().map(Rejection::from).collect(),
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
}

/// How often gRPC health re-checks the emitters.
const HEALTH_EVERY: Duration = Duration::from_millis(500);

/// Keeps grpc.health.v1 in step with /readyz until shutdown starts (which
/// sets NOT_SERVING itself).
pub(super) async fn run_health_watch(
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
pub(super) async fn run_flusher(
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
