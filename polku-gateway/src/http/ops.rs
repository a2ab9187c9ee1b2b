//! What operators and orchestrators ask: `GET /healthz` (the process
//! answers), `GET /readyz` (it takes events: not draining, some emitter can
//! deliver) and `GET /metrics` (Prometheus text).

use super::HttpState;
use crate::metrics::render;
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
    let ready = !*state.stopping.borrow();
    let p = &state.pipeline;
    let stats = p.emitter_stats();
    let latency: Vec<(String, &crate::metrics::LatencyHistogram)> =
        stats.iter().map(|(n, s)| (n.clone(), &s.latency)).collect();
    let mut body = render(
        &p.snapshot(),
        &latency,
        &state.metrics,
        &p.grpc_metrics,
        ready,
    );
    body.push_str(&format!(
        "# HELP polku_plugins_registered Plugins registered through the registry now.\n# TYPE polku_plugins_registered gauge\npolku_plugins_registered {}\n",
        state.registry.len()
    ));
    crate::metrics::render_connections(&mut body, &state.connections);
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}
