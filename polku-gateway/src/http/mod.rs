//! The HTTP front door, one file per group of endpoints:
//!
//! - [`ingest`]: `POST /v1/events`, `POST /v1/ingest/{source}`.
//! - [`ops`]: `GET /healthz`, `GET /readyz`, `GET /metrics`.
//! - [`admin`]: `/v1/emitters...`, behind the admin guard (a route layer).
//! - [`reply`]: the answers they share.
//!
//! Every request is counted by route template, and every error answer has a
//! JSON body with `error` and `reason`.

mod admin;
mod ingest;
mod ops;
mod reply;

use crate::auth::IngestTokens;
use crate::pipeline::Pipeline;
use crate::stats::RequestMetrics;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use polku_core::auth::AccessPolicy;
use reply::error_response;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tower_http::decompression::RequestDecompressionLayer;

/// What the HTTP handlers share.
#[derive(Debug)]
pub(crate) struct HttpState {
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) tokens: IngestTokens,
    pub(crate) buffer_timeout: Duration,
    pub(crate) max_body: usize,
    pub(crate) stopping: watch::Receiver<bool>,
    pub(crate) metrics: RequestMetrics,
    pub(crate) registry: Arc<polku_discovery::Registry>,
    /// Who may use the admin endpoints: `POLKU_ADMIN_TOKEN`, else loopback
    /// peers (unless `POLKU_TRUST_LOOPBACK=false`).
    pub(crate) admin: AccessPolicy,
    /// Connection counters per listener, for `/metrics`.
    pub(crate) connections: Vec<(&'static str, Arc<crate::listener::ConnStats>)>,
}

/// The HTTP routes.
pub(crate) fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/v1/events", post(ingest::post_events))
        .route("/v1/ingest/{source}", post(ingest::post_ingest))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .merge(admin::routes(state.clone()))
        // Gzip-encoded bodies are decompressed before the handlers count
        // their size, so a small compressed body cannot smuggle a huge one.
        .layer(RequestDecompressionLayer::new())
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Counts every request and its duration, by route template (never by the
/// concrete path, which a client chooses).
async fn observe(State(state): State<Arc<HttpState>>, req: Request, next: Next) -> Response {
    let endpoint: &'static str = match req.extensions().get::<MatchedPath>().map(|p| p.as_str()) {
        Some("/v1/events") => "/v1/events",
        Some("/v1/ingest/{source}") => "/v1/ingest/{source}",
        Some("/healthz") => "/healthz",
        Some("/readyz") => "/readyz",
        Some("/metrics") => "/metrics",
        Some("/v1/emitters") => "/v1/emitters",
        Some("/v1/emitters/{name}/failures") => "/v1/emitters/{name}/failures",
        Some("/v1/emitters/{name}/failures/resend") => "/v1/emitters/{name}/failures/resend",
        _ => "other",
    };
    let started = tokio::time::Instant::now();
    let resp = json_errors(next.run(req).await).await;
    state.metrics.observe(
        endpoint,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

/// Gives every error a JSON body with `error` and `reason`, like the
/// gateway's own: the ones that axum and tower-http make (no such route, a
/// method not allowed, an unsupported `Content-Encoding`, a bad path) come
/// as plain text or empty otherwise. Health and readiness answers (plain
/// text by design) are left alone: they are not errors of the request.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    if parts.status == StatusCode::SERVICE_UNAVAILABLE
        && parts.headers.get(header::RETRY_AFTER).is_none()
    {
        // `/readyz` saying "not ready", in plain text on purpose.
        return Response::from_parts(parts, body);
    }
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_owned();
    let (reason, message) = match parts.status {
        StatusCode::NOT_FOUND => ("not_found", "no such endpoint".to_owned()),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this endpoint does not take that method".to_owned(),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            if parts.headers.get(header::ACCEPT_ENCODING).is_some() {
                "unsupported Content-Encoding: send the body plain or gzip-encoded".to_owned()
            } else {
                "unsupported media type".to_owned()
            },
        ),
        _ => ("bad_request", "the request could not be read".to_owned()),
    };
    let message = if text.is_empty() {
        message
    } else {
        format!("{message}: {text}")
    };
    let mut out = error_response(parts.status, reason, message);
    for (k, v) in &parts.headers {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}
