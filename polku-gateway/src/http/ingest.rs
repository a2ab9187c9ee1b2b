//! Ingestion over HTTP: `POST /v1/events` (JSON events) and
//! `POST /v1/ingest/{source}` (a raw body for an ingestor), behind the
//! ingest tokens, with the body read up to its limit and deadline.

use super::HttpState;
use super::reply::{accepted, error_response, submit_error};
use crate::SubmitError;
use crate::pipeline::Wait;
use crate::stats::RejectReason;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use std::sync::Arc;

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

/// The body of an ingestion request from a caller with a valid token.
async fn authorized_body(
    state: &HttpState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, Box<Response>> {
    authorize(state, headers)?;
    read_body(state, body).await
}

/// `POST /v1/events`: a JSON event, an array, or `{"source": ..., "events": [...]}`.
pub(super) async fn post_events(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let data = match authorized_body(&state, &headers, body).await {
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
pub(super) async fn post_ingest(
    State(state): State<Arc<HttpState>>,
    Path(source): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let data = match authorized_body(&state, &headers, body).await {
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
