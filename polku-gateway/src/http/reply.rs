//! The answers the HTTP handlers share: JSON bodies, errors with a `reason`,
//! a refused submission's status (429 and 503 with `Retry-After`), an
//! accepted one's summary.

use super::HttpState;
use crate::SubmitError;
use crate::pipeline::Outcome;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use polku_proto::v1::RejectCode;

/// A JSON body with its content type.
pub(crate) fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// An error: `{"error": message, "reason": reason}`.
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

/// A refused submission, counted, with the status its reason calls for.
pub(crate) fn submit_error(state: &HttpState, err: &SubmitError) -> Response {
    state.pipeline.stats.rejected_request(err.reason());
    let status = match err {
        SubmitError::BufferFull { .. }
        | SubmitError::DiskFull { .. }
        | SubmitError::DiskFailed(_) => StatusCode::TOO_MANY_REQUESTS,
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

/// `202 Accepted` with what became of the events, listing a bounded
/// number of refusals and counting them all.
pub(crate) fn accepted(mut o: Outcome) -> Response {
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
