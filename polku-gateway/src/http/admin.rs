//! The admin endpoints over HTTP: emitters' delivery state and their failure
//! stores (list, send again, discard).
//!
//! - `GET /v1/emitters`: each emitter's counters, breaker and failure store.
//! - `GET /v1/emitters/{name}/failures?offset=0&limit=100`: stored failures,
//!   oldest first, each with its event, reason and time.
//! - `POST /v1/emitters/{name}/failures/resend?limit=1000`: queues the oldest
//!   stored failures to the emitter again (those that fail again come back).
//! - `DELETE /v1/emitters/{name}/failures`: discards them.
//!
//! A stored event may hold anything a client sent, so these endpoints are
//! guarded: with `POLKU_ADMIN_TOKEN` set they need `Authorization: Bearer
//! <token>`; without it only loopback peers may use them.

use super::HttpState;
use super::reply::{error_response, json_response, submit_error};
use crate::ResendError;
use crate::listener::ConnInfo;
use crate::pipeline::Wait;
use axum::Router;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use polku_core::auth::{AccessPolicy, Denied};
use std::sync::Arc;

/// The most failures one list or resend handles.
const MAX_PAGE: usize = 10_000;

/// The admin routes, each behind [`guard`].
pub(super) fn routes(state: Arc<HttpState>) -> Router<Arc<HttpState>> {
    Router::new()
        .route("/v1/emitters", get(list_emitters))
        .route(
            "/v1/emitters/{name}/failures",
            get(list_failures).delete(discard_failures),
        )
        .route("/v1/emitters/{name}/failures/resend", post(resend_failures))
        .route(
            "/v1/sources/{name}/unreadable",
            get(list_unreadable).delete(discard_unreadable),
        )
        .route_layer(axum::middleware::from_fn_with_state(state, guard))
}

/// Lets a request through to an admin endpoint only if the admin policy
/// admits its caller.
async fn guard(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<ConnInfo>,
    req: Request,
    next: Next,
) -> Response {
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match admit(&state.admin, auth, peer.remote_addr) {
        Ok(()) => next.run(req).await,
        Err(resp) => *resp,
    }
}

/// The admin policy's answer for one caller, as an HTTP refusal.
fn admit(
    policy: &AccessPolicy,
    authorization: Option<&[u8]>,
    peer: std::net::SocketAddr,
) -> Result<(), Box<Response>> {
    policy.check(authorization, Some(peer)).map_err(|denied| {
        Box::new(match denied {
            Denied::BadToken => {
                let mut resp = error_response(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "missing or invalid admin token: send `Authorization: Bearer <POLKU_ADMIN_TOKEN>`",
                );
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                resp
            }
            Denied::LoopbackNotTrusted => error_response(
                StatusCode::FORBIDDEN,
                "forbidden",
                "admin endpoints need POLKU_ADMIN_TOKEN: loopback peers are not trusted (POLKU_TRUST_LOOPBACK=false)",
            ),
            Denied::NotLoopback => error_response(
                StatusCode::FORBIDDEN,
                "forbidden",
                "admin endpoints answer loopback peers only; set POLKU_ADMIN_TOKEN to allow others",
            ),
        })
    })
}

fn resend_error(state: &HttpState, err: &ResendError) -> Response {
    match err {
        ResendError::UnknownEmitter { .. } => {
            error_response(StatusCode::NOT_FOUND, "unknown_emitter", err.to_string())
        }
        ResendError::NoFailureStore { .. } => {
            error_response(StatusCode::NOT_FOUND, "no_failure_store", err.to_string())
        }
        ResendError::NotRegistered { .. } => {
            error_response(StatusCode::CONFLICT, "not_registered", err.to_string())
        }
        ResendError::Buffer(e) => submit_error(state, e),
    }
}

async fn list_emitters(State(state): State<Arc<HttpState>>) -> Response {
    let snapshot = state.pipeline.snapshot();
    let running: Vec<String> = state
        .pipeline
        .emitters()
        .iter()
        .map(|e| e.name().to_owned())
        .collect();
    // Removed plugins are listed while their failure stores are kept.
    let removed: Vec<String> = state
        .pipeline
        .retired_emitters()
        .iter()
        .map(|e| e.name().to_owned())
        .collect();
    let emitters: Vec<serde_json::Value> = snapshot
        .emitters
        .iter()
        .filter(|(name, _)| running.contains(name) || removed.contains(name))
        .map(|(name, e)| {
            serde_json::json!({
                "name": name,
                "registered": running.contains(name),
                "breaker": e.breaker.map(|b| b.as_str()),
                "queued": e.queued,
                "emitted": e.emitted,
                "failed": e.failed,
                "dropped_queue_full": e.dropped_queue_full,
                "retries": e.retries,
                "retried_events": e.retried_events,
                "timeouts": e.timeouts,
                "resent": e.resent,
                "failure_store": {
                    "events": e.failure_store_events,
                    "bytes": e.failure_store_bytes,
                    "stored_total": e.failure_store_stored,
                    "evicted_total": e.failure_store_evicted,
                },
            })
        })
        .collect();
    json_response(StatusCode::OK, serde_json::json!({ "emitters": emitters }))
}

/// A whole-number query parameter: absent, or a bad-request answer naming it.
fn query_number(uri: &Uri, key: &str) -> Result<Option<usize>, Box<Response>> {
    let Some(query) = uri.query() else {
        return Ok(None);
    };
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == key {
            return v.parse().map(Some).map_err(|_| {
                Box::new(error_response(
                    StatusCode::BAD_REQUEST,
                    "bad_query",
                    format!("query parameter {key}={v:?} is not a whole number"),
                ))
            });
        }
    }
    Ok(None)
}

/// `?offset=&limit=` of a listing: from 0, 100 at a time, at most
/// [`MAX_PAGE`].
fn page(uri: &Uri) -> Result<(usize, usize), Box<Response>> {
    Ok((
        query_number(uri, "offset")?.unwrap_or(0),
        query_number(uri, "limit")?.unwrap_or(100).min(MAX_PAGE),
    ))
}

async fn list_failures(
    State(state): State<Arc<HttpState>>,
    Path(name): Path<String>,
    uri: Uri,
) -> Response {
    let (offset, limit) = match page(&uri) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let emitter = match state.pipeline.emitter(&name) {
        Ok(e) => e,
        Err(e) => return resend_error(&state, &e),
    };
    let Some(store) = emitter.delivery_state().and_then(|d| d.failure_store()) else {
        return resend_error(&state, &ResendError::NoFailureStore { name });
    };
    json_response(
        StatusCode::OK,
        serde_json::json!({
            "emitter": name,
            "total": store.len(),
            "offset": offset,
            "failures": failures_page(store, offset, limit),
        }),
    )
}

/// A page of a failure store, each failure with its event in JSON form.
fn failures_page(
    store: &polku_core::delivery::FailureStore,
    offset: usize,
    limit: usize,
) -> Vec<serde_json::Value> {
    store
        .list(offset, limit)
        .into_iter()
        .map(|f| {
            serde_json::json!({
                "reason": f.reason,
                "retryable": f.retryable,
                "failed_at_unix_ns": f.failed_at_unix_ns,
                "event": polku_core::json::event_value(&f.event),
            })
        })
        .collect()
}

/// A source's records that could not be read (no dead-letter topic), in
/// pages: each with why, and where it came from as its event's metadata.
async fn list_unreadable(
    State(state): State<Arc<HttpState>>,
    Path(name): Path<String>,
    uri: Uri,
) -> Response {
    let (offset, limit) = match page(&uri) {
        Ok(p) => p,
        Err(resp) => return *resp,
    };
    let Some(store) = state.pipeline.unreadable(&name) else {
        return no_unreadable_store(&name);
    };
    json_response(
        StatusCode::OK,
        serde_json::json!({
            "source": name,
            "total": store.len(),
            "offset": offset,
            "records": failures_page(&store, offset, limit),
        }),
    )
}

async fn discard_unreadable(
    State(state): State<Arc<HttpState>>,
    Path(name): Path<String>,
) -> Response {
    let Some(store) = state.pipeline.unreadable(&name) else {
        return no_unreadable_store(&name);
    };
    let n = store.clear();
    tracing::warn!(source = %name, records = n, "unreadable records discarded by an operator");
    json_response(StatusCode::OK, serde_json::json!({ "discarded": n }))
}

fn no_unreadable_store(name: &str) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "unknown_source",
        format!(
            "no source named {name:?} keeps unreadable records (a Kafka source without a dead-letter topic does, unless failure stores are off)"
        ),
    )
}

async fn resend_failures(
    State(state): State<Arc<HttpState>>,
    Path(name): Path<String>,
    uri: Uri,
) -> Response {
    let limit = match query_number(&uri, "limit") {
        Ok(l) => l.unwrap_or(1000).min(MAX_PAGE),
        Err(resp) => return *resp,
    };
    match state
        .pipeline
        .resend_failures(&name, limit, Wait::For(state.buffer_timeout))
        .await
    {
        Ok(n) => {
            let remaining = state
                .pipeline
                .emitter(&name)
                .ok()
                .and_then(|e| {
                    e.delivery_state()
                        .and_then(|d| d.failure_store())
                        .map(|s| s.len())
                })
                .unwrap_or(0);
            json_response(
                StatusCode::ACCEPTED,
                serde_json::json!({ "resent": n, "remaining": remaining }),
            )
        }
        Err(e) => resend_error(&state, &e),
    }
}

async fn discard_failures(
    State(state): State<Arc<HttpState>>,
    Path(name): Path<String>,
) -> Response {
    let emitter = match state.pipeline.emitter(&name) {
        Ok(e) => e,
        Err(e) => return resend_error(&state, &e),
    };
    let Some(store) = emitter.delivery_state().and_then(|d| d.failure_store()) else {
        return resend_error(&state, &ResendError::NoFailureStore { name });
    };
    let n = store.clear();
    tracing::warn!(emitter = %name, events = n, "failure store discarded by an operator");
    json_response(StatusCode::OK, serde_json::json!({ "discarded": n }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(token: Option<&[u8]>, peer: &str, auth: Option<&str>) -> u16 {
        status_with(token, true, peer, auth)
    }

    fn status_with(token: Option<&[u8]>, trust: bool, peer: &str, auth: Option<&str>) -> u16 {
        let token = token.map(|t| std::str::from_utf8(t).unwrap());
        let policy = AccessPolicy::new(token, trust);
        match admit(&policy, auth.map(str::as_bytes), peer.parse().unwrap()) {
            Ok(()) => 200,
            Err(resp) => resp.status().as_u16(),
        }
    }

    #[test]
    fn without_a_token_only_loopback_peers_get_in() {
        assert_eq!(status(None, "127.0.0.1:5000", None), 200);
        assert_eq!(status(None, "[::1]:5000", None), 200);
        // 127.0.0.1 as a dual-stack `[::]` listener sees it.
        assert_eq!(status(None, "[::ffff:127.0.0.1]:5000", None), 200);
        assert_eq!(status(None, "[::ffff:10.1.2.3]:5000", None), 403);
        assert_eq!(status(None, "10.1.2.3:5000", None), 403);
        assert_eq!(status(None, "10.1.2.3:5000", Some("Bearer anything")), 403);
    }

    #[test]
    fn loopback_trust_can_be_turned_off() {
        assert_eq!(status_with(None, false, "127.0.0.1:5000", None), 403);
        assert_eq!(status_with(None, false, "[::1]:5000", None), 403);
        let t = Some(&b"s3cret"[..]);
        assert_eq!(
            status_with(t, false, "127.0.0.1:5000", Some("Bearer s3cret")),
            200
        );
        assert_eq!(status_with(t, false, "127.0.0.1:5000", None), 401);
    }

    #[test]
    fn with_a_token_everyone_needs_it_even_loopback() {
        let t = Some(&b"s3cret"[..]);
        assert_eq!(status(t, "127.0.0.1:5000", None), 401);
        assert_eq!(status(t, "127.0.0.1:5000", Some("Bearer s3cre")), 401);
        assert_eq!(status(t, "10.1.2.3:5000", Some("Bearer s3cret")), 200);
    }

    #[test]
    fn query_numbers_are_checked() {
        let uri: Uri = "/x?offset=5&limit=abc".parse().unwrap();
        assert_eq!(query_number(&uri, "offset").unwrap(), Some(5));
        assert!(query_number(&uri, "limit").is_err());
        assert_eq!(query_number(&uri, "other").unwrap(), None);
        assert_eq!(query_number(&"/x".parse().unwrap(), "limit").unwrap(), None);
    }
}
