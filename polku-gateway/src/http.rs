//! The HTTP front door: `POST /v1/events`, `POST /v1/ingest/{source}`,
//! `GET /metrics`, `GET /healthz`, `GET /readyz`, and the admin endpoints
//! (see the `admin` module).

use crate::SubmitError;
use crate::auth::IngestTokens;
use crate::metrics::{RequestMetrics, render};
use crate::pipeline::{Outcome, Pipeline, Wait};
use crate::stats::RejectReason;
use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use polku_proto::v1::RejectCode;
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
    /// `POLKU_ADMIN_TOKEN`, for the admin endpoints.
    pub(crate) admin_token: Option<Vec<u8>>,
    /// `POLKU_TRUST_LOOPBACK`: without an admin token, loopback peers get in.
    pub(crate) trust_loopback: bool,
    /// Connection counters per listener, for `/metrics`.
    pub(crate) connections: Vec<(&'static str, Arc<crate::listener::ConnStats>)>,
}

/// The HTTP routes.
pub(crate) fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/v1/events", post(post_events))
        .route("/v1/ingest/{source}", post(post_ingest))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::admin::routes())
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

pub(crate) fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

pub(crate) fn error_response(
    status: StatusCode,
    reason: &str,
    message: impl Into<String>,
) -> Response {
    json_response(
        status,
        serde_json::json!({ "error": message.into(), "reason": reason }),
    )
}

pub(crate) fn submit_error(state: &HttpState, err: &SubmitError) -> Response {
    state.pipeline.stats.rejected_request(err.reason());
    let status = match err {
        SubmitError::BufferFull { .. } => StatusCode::TOO_MANY_REQUESTS,
        SubmitError::ShuttingDown
        | SubmitError::IngestorUnavailable(_)
        | SubmitError::MiddlewareFailed(_) => StatusCode::SERVICE_UNAVAILABLE,
        SubmitError::BatchTooLarge { .. }
        | SubmitError::BatchOverBudget { .. }
        | SubmitError::TooManyEvents { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        SubmitError::UnknownFormat { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut resp = error_response(status, err.reason().as_str(), err.to_string());
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

fn accepted(mut o: Outcome) -> Response {
    let (total, listed) = o.listed_rejections();
    let rejected: Vec<serde_json::Value> = listed
        .into_iter()
        .map(|r| {
            let code = RejectCode::try_from(r.code)
                .map(|c| c.as_str_name())
                .unwrap_or("REJECT_CODE_UNSPECIFIED");
            let mut v = serde_json::json!({ "id": r.id, "code": code, "message": r.message });
            if let Some(i) = r.index {
                v["index"] = i.into();
            }
            v
        })
        .collect();
    json_response(
        StatusCode::ACCEPTED,
        serde_json::json!({
            "accepted": o.accepted,
            "dropped": o.dropped,
            "rejected": rejected,
            "rejected_total": total,
        }),
    )
}

/// Refuses a request without a valid token (when tokens are configured).
fn authorize(state: &HttpState, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let auth = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    if state.tokens.allows(auth) {
        return Ok(());
    }
    state
        .pipeline
        .stats
        .rejected_request(RejectReason::Unauthenticated);
    let mut resp = error_response(
        StatusCode::UNAUTHORIZED,
        RejectReason::Unauthenticated.as_str(),
        "missing or invalid ingest token: send `Authorization: Bearer <token>`",
    );
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Err(Box::new(resp))
}

/// Reads the (decompressed) body, refusing it as soon as it passes the limit.
async fn read_body(state: &HttpState, body: Body) -> Result<Bytes, Box<Response>> {
    let max = state.max_body;
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            if let Some(t) = body_timeout(&e) {
                let mut resp =
                    error_response(StatusCode::REQUEST_TIMEOUT, "body_timeout", t.to_string());
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return Box::new(resp);
            }
            state
                .pipeline
                .stats
                .rejected_request(RejectReason::MalformedInput);
            Box::new(error_response(
                StatusCode::BAD_REQUEST,
                RejectReason::MalformedInput.as_str(),
                format!("cannot read the request body (bad gzip?): {e}"),
            ))
        })?;
        if buf.len() + chunk.len() > max {
            state
                .pipeline
                .stats
                .rejected_request(RejectReason::TooLarge);
            return Err(Box::new(error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                RejectReason::TooLarge.as_str(),
                format!("request body over the limit of {max} bytes (POLKU_MAX_MESSAGE_BYTES)"),
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// The body deadline, when that is why a body could not be read.
fn body_timeout(e: &axum::Error) -> Option<&crate::listener::BodyTimeout> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<crate::listener::BodyTimeout>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

/// `POST /v1/events`: a JSON event, an array, or `{"source": ..., "events": [...]}`.
async fn post_events(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(resp) = authorize(&state, &headers) {
        return *resp;
    }
    let data = match read_body(&state, body).await {
        Ok(d) => d,
        Err(resp) => return *resp,
    };
    let parsed = match polku_core::json::events_from_json_at_most(
        &data,
        state.pipeline.max_events_per_request(),
    ) {
        Ok(p) => p,
        Err(e) => return submit_error(&state, &SubmitError::MalformedInput(e.to_string())),
    };
    match state
        .pipeline
        .accept_parsed("", parsed, Wait::For(state.buffer_timeout))
        .await
    {
        Ok(o) => accepted(o),
        Err(e) => submit_error(&state, &e),
    }
}

/// `POST /v1/ingest/{source}`: a raw body for the ingestor that serves the
/// source, or else the one for its Content-Type.
async fn post_ingest(
    State(state): State<Arc<HttpState>>,
    Path(source): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(resp) = authorize(&state, &headers) {
        return *resp;
    }
    let data = match read_body(&state, body).await {
        Ok(d) => d,
        Err(resp) => return *resp,
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match state
        .pipeline
        .submit_raw_for_source(&source, content_type, data, Wait::For(state.buffer_timeout))
        .await
    {
        Ok(o) => accepted(o),
        Err(e) => submit_error(&state, &e),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<HttpState>>) -> Response {
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

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
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
