//! What operators and orchestrators ask: `GET /healthz` (the process
//! answers), `GET /readyz` (it takes events: not draining, some emitter can
//! deliver) and `GET /metrics` (Prometheus text).

use super::HttpState;
use crate::metrics::{MetricsSnapshot, render, resident_memory_bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// `GET /healthz`: the process is up.
pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 200 while events are taken, 503 (plain text) otherwise.
pub(super) async fn readyz(State(state): State<Arc<HttpState>>) -> Response {
    if *state.stopping.borrow() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining: shutting down\n").into_response();
    }
    // The health watch probes the emitters; a probe per request would let
    // anyone make the gateway call every plugin.
    if !state
        .pipeline
        .emitters_healthy
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return (StatusCode::SERVICE_UNAVAILABLE, "no emitter can deliver\n").into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

/// `GET /metrics`: every counter, in the Prometheus text format.
pub(super) async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    let p = &state.pipeline;
    let snapshot = MetricsSnapshot {
        stats: p.snapshot(),
        latency: p
            .emitter_stats()
            .iter()
            .map(|(n, s)| (n.clone(), s.latency.snapshot()))
            .collect(),
        http: state.metrics.snapshot(),
        grpc: p.grpc_metrics.snapshot(),
        ready: !*state.stopping.borrow(),
        resident_bytes: resident_memory_bytes(),
        plugins: state.registry.len(),
        connections: state
            .connections
            .iter()
            .map(|(l, c)| (*l, c.snapshot()))
            .collect(),
    };
    let mut resp = render(&snapshot).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}
