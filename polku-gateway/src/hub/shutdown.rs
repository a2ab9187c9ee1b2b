//! Stopping a running gateway without losing what it accepted. The steps, in
//! order, each a method below:
//!
//! 1. [`stop_admitting`](RunningGateway::stop_admitting): health turns
//!    NOT_SERVING, calls waiting for buffer room fail at once, streams stop
//!    reading, the servers stop accepting.
//! 2. [`finish_calls`](RunningGateway::finish_calls): the gRPC server and
//!    every request that already holds room finish, within half the budget.
//! 3. [`flush_held_back`](RunningGateway::flush_held_back): middleware that
//!    hold events back (aggregation windows) give them up, while the
//!    emitters still run and can make room for them.
//! 4. [`drain_emitters`](RunningGateway::drain_emitters): the buffer closes
//!    and each emitter delivers its queue, then flushes; HTTP (health and
//!    metrics) stops last.

use super::running::RunningGateway;
use crate::error::ShutdownError;
use crate::grpc::GatewayService;
use crate::pipeline::Wait;
use polku_core::Emitter;
use polku_proto::v1::gateway_server::GatewayServer;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{error, info, warn};

impl RunningGateway {
    /// Stops taking events and delivers everything accepted, within the
    /// shutdown timeout:
    /// 1. health turns NOT_SERVING and streams stop reading;
    /// 2. the server stops accepting and waits for calls in flight;
    /// 3. the buffer closes and each emitter delivers its queue, then flushes.
    pub async fn shutdown(self) -> Result<(), ShutdownError> {
        let span = tracing::info_span!("polku.gateway.shutdown");
        tracing::Instrument::instrument(self.shut_down(), span).await
    }

    async fn shut_down(mut self) -> Result<(), ShutdownError> {
        let started = Instant::now();
        let deadline = started + self.shutdown_timeout;
        // The server gets at most half the budget to finish calls in flight,
        // so that at least half is left to deliver what they accepted.
        let server_deadline = started + self.shutdown_timeout / 2;
        info!("shutting down: no longer accepting events");
        // Sources stop reading first; they commit once the emitters drained.
        let sources = self.pipeline.sources();
        for s in &sources {
            s.stop_reading();
        }
        self.stop_admitting().await;
        self.finish_calls(server_deadline).await;
        self.flush_held_back(deadline).await;
        // Kept past close, to tell what their failure stores hold at the end.
        let emitters = self.pipeline.emitters();
        let drained = self.drain_emitters(deadline).await;
        // What the emitters finished is safe now: the sources commit it.
        for s in &sources {
            if tokio::time::timeout_at(deadline + Duration::from_secs(5), s.finish())
                .await
                .is_err()
            {
                warn!("a source did not stop in time; it reads again what it did not commit");
            }
        }
        drained?;
        report_failure_stores(&emitters);
        Ok(())
    }

    /// Step 1: health says NOT_SERVING (and the health watch can no longer
    /// turn it back), waiters for room fail (UNAVAILABLE) instead of waiting
    /// out their timeout, and the servers stop accepting.
    async fn stop_admitting(&mut self) {
        self.health_watch.abort();
        self.health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        self.health
            .set_not_serving::<GatewayServer<GatewayService>>()
            .await;
        self.pipeline.stop_admitting();
        let _ = self.stop_tx.send(true);
    }

    /// Step 2: calls in flight finish (closed past `server_deadline`), and
    /// requests that got buffer room before shutdown started (HTTP ones
    /// included) finish their way into the buffer.
    async fn finish_calls(&mut self, server_deadline: Instant) {
        match tokio::time::timeout_at(server_deadline, &mut self.server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => error!(error = %err, "gRPC server failed"),
            Ok(Err(err)) => error!(error = %err, "gRPC server task failed"),
            Err(_) => {
                warn!("calls still in flight at half the shutdown timeout; closing them");
                self.server.abort();
            }
        }
        let still = self.pipeline.wait_idle(server_deadline).await;
        if still > 0 {
            warn!(
                requests = still,
                "requests still on their way into the buffer at half the shutdown timeout"
            );
        }
    }

    /// Step 3: the flush timer places what it has, then every middleware
    /// that holds events back gives up the rest, into the buffer.
    async fn flush_held_back(&mut self, deadline: Instant) {
        if let Some(mut f) = self.flusher.take()
            && tokio::time::timeout_at(deadline, &mut f).await.is_err()
        {
            f.abort();
            error!("the flush timer could not place its summaries before the deadline");
        }
        for f in std::mem::take(&mut self.flushers) {
            let rest = f.flush_all();
            if rest.is_empty() {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
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
                Err(err) => error!(events = n, error = %err, "could not flush held-back events"),
            }
        }
    }

    /// Step 4: the buffer and the queues close, each emitter task delivers
    /// what its queue holds and flushes its emitter, by `deadline`; then
    /// HTTP stops.
    async fn drain_emitters(&mut self, deadline: Instant) -> Result<(), ShutdownError> {
        self.pipeline.close();
        let pending = self.pipeline.depth();
        info!(pending, "draining accepted events to the emitters");
        let tasks = self.pipeline.take_tasks();
        let drained =
            tokio::time::timeout_at(deadline, futures_util::future::join_all(tasks)).await;
        if let Some(journal) = self.pipeline.journal() {
            // The last cursors: what is still undelivered now stays in the
            // log, for the next start.
            journal.close().await;
        }
        self.stop_http().await;
        let Ok(results) = drained else {
            let undelivered = self.pipeline.depth();
            if let Some(journal) = self.pipeline.journal() {
                warn!(
                    undelivered,
                    dir = %journal.dir().display(),
                    "shutdown timeout passed with accepted events undelivered; they are kept in the durable buffer and delivered after the next start"
                );
                return Ok(());
            }
            error!(
                undelivered,
                "shutdown timeout passed with accepted events undelivered"
            );
            return Err(ShutdownError::Timeout {
                timeout: self.shutdown_timeout,
                undelivered,
            });
        };
        let failed = results.iter().filter(|r| r.is_err()).count();
        if failed > 0 {
            // The emitter task loop catches panics in `emit`; this is a
            // panic in an emitter's `shutdown` (its flush).
            error!(emitters = failed, "emitter tasks failed while flushing");
            return Err(ShutdownError::EmitterFailed { emitters: failed });
        }
        Ok(())
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
}

/// What the failure stores hold lives in memory: says so, per emitter,
/// before the process takes it away.
fn report_failure_stores(emitters: &[Arc<dyn Emitter>]) {
    let mut held = 0;
    for e in emitters {
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
}
