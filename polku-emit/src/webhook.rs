//! Events to an HTTP endpoint: a JSON POST per batch, optionally signed the
//! Standard Webhooks way.

use async_trait::async_trait;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use polku_core::{EmitError, Emitter, Event};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use sha2::Sha256;
use std::time::Duration;

use crate::split::Sent;

/// A webhook setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// The URL is not an http(s) URL.
    #[error("invalid webhook URL {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A header name or value cannot be sent.
    #[error("invalid webhook header {name:?}: {reason}")]
    Header {
        /// The header's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The signing secret is not usable.
    #[error("invalid webhook secret: {0}")]
    Secret(String),
    /// The batch size is zero.
    #[error("the batch size must be at least 1")]
    BatchSize,
}

/// POSTs batches as `{"events": [...]}` (event.proto's field names, one
/// object per event as the stdout emitter writes them) to a URL.
///
/// ```
/// use polku_emit::WebhookEmitter;
/// use std::time::Duration;
///
/// let hook = WebhookEmitter::new("https://example.invalid/hooks/polku")
///     .unwrap()
///     .named("alerts")
///     .header("authorization", "Bearer t0ken")
///     .unwrap()
///     .signing_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
///     .unwrap()
///     .timeout(Duration::from_secs(5))
///     .batch_size(500)
///     .unwrap();
/// # drop(hook);
/// ```
///
/// Outcome of a POST: 2xx is delivered; 408, 429, 5xx and connection errors
/// may work later (retryable; the server's Retry-After, in seconds or as a
/// date, becomes [`EmitError::retry_after`], which the retry layer honours);
/// any other status will not (permanent). A batch larger than `batch_size`
/// goes out in several POSTs, one after the other, each within the timeout;
/// what one POST delivered stays delivered. A POST refused for good fails
/// its own events and the next goes on; once one fails retryably (the
/// destination is down or slow), it and the rest are reported failed,
/// retryable, without being sent. A `413` splits the POST in two and sends
/// the halves.
///
/// Signing (Standard Webhooks): each POST carries `webhook-id` (a fresh
/// UUIDv7), `webhook-timestamp` (Unix seconds) and `webhook-signature:
/// v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`. A secret given as
/// `whsec_<base64>` uses the decoded bytes as the key; any other string uses
/// its own bytes.
#[derive(Debug, Clone)]
pub struct WebhookEmitter {
    name: String,
    url: reqwest::Url,
    headers: HeaderMap,
    secret: Option<Vec<u8>>,
    timeout: Duration,
    batch_size: usize,
    client: reqwest::Client,
}

impl WebhookEmitter {
    /// A webhook emitter named `webhook` for this URL.
    pub fn new(url: impl AsRef<str>) -> Result<Self, WebhookError> {
        let raw = url.as_ref();
        let url = reqwest::Url::parse(raw).map_err(|e| WebhookError::Url {
            url: raw.to_owned(),
            reason: e.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(WebhookError::Url {
                url: raw.to_owned(),
                reason: "the scheme must be http or https".into(),
            });
        }
        Ok(WebhookEmitter {
            name: "webhook".into(),
            url,
            headers: HeaderMap::new(),
            secret: None,
            timeout: Duration::from_secs(10),
            batch_size: 1000,
            client: reqwest::Client::new(),
        })
    }

    /// Names the emitter (what `route_to` uses).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sends this header with every POST (an auth token, say).
    pub fn header(mut self, name: &str, value: &str) -> Result<Self, WebhookError> {
        let bad = |reason: String| WebhookError::Header {
            name: name.to_owned(),
            reason,
        };
        let n = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|e| bad(e.to_string()))?;
        let v = HeaderValue::from_str(value.trim()).map_err(|e| bad(e.to_string()))?;
        self.headers.insert(n, v);
        Ok(self)
    }

    /// Signs every POST with this secret (Standard Webhooks).
    pub fn signing_secret(mut self, secret: &str) -> Result<Self, WebhookError> {
        let key = match secret.strip_prefix("whsec_") {
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| WebhookError::Secret(format!("whsec_ secret is not base64: {e}")))?,
            None => secret.as_bytes().to_vec(),
        };
        if key.is_empty() {
            return Err(WebhookError::Secret("the secret is empty".into()));
        }
        self.secret = Some(key);
        Ok(self)
    }

    /// Gives up on a POST after this long (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// At most this many events per POST (default 1000).
    pub fn batch_size(mut self, events: usize) -> Result<Self, WebhookError> {
        if events == 0 {
            return Err(WebhookError::BatchSize);
        }
        self.batch_size = events;
        Ok(self)
    }

    fn body(events: &[Event]) -> Vec<u8> {
        let mut body = Vec::with_capacity(events.len() * 200 + 16);
        body.extend_from_slice(b"{\"events\":[");
        for (i, e) in events.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            polku_core::json::write_event(&mut body, e);
        }
        body.extend_from_slice(b"]}");
        body
    }

    /// The Standard Webhooks signature of a body.
    fn sign(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
        // HMAC takes keys of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        format!("v1,{sig}")
    }

    /// One POST of these events, within the timeout.
    async fn post(&self, events: &[Event]) -> Sent {
        let body = Self::body(events);
        let mut req = self
            .client
            .post(self.url.clone())
            .timeout(self.timeout)
            .headers(self.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(key) = &self.secret {
            let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
            let ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let sig = Self::sign(key, &id, ts, &body);
            req = req
                .header("webhook-id", id)
                .header("webhook-timestamp", ts.to_string())
                .header("webhook-signature", sig);
        }
        let resp = match req.body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                return Sent::Failed(EmitError::unavailable(
                    format!("POST {} failed: {e}", self.url),
                    Some(Box::new(e) as polku_core::BoxError),
                ));
            }
        };
        let status = resp.status();
        if status.is_success() {
            return Sent::Ok;
        }
        let retry_after_value = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let wait = retry_after_value.as_deref().and_then(parse_retry_after);
        let retry_after = retry_after_value
            .map(|v| format!(" (Retry-After: {v})"))
            .unwrap_or_default();
        let text: String = resp
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect();
        let message = format!("POST {} answered {status}{retry_after}: {text}", self.url);
        if status.as_u16() == 413 {
            Sent::TooLarge(message)
        } else if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
            Sent::Failed(match wait {
                Some(after) => EmitError::unavailable_for(message, after),
                None => EmitError::unavailable(message, None),
            })
        } else {
            Sent::Failed(EmitError::Rejected { message })
        }
    }
}

/// A `Retry-After` value: delay-seconds, or an HTTP date (the wait until then).
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[async_trait]
impl Emitter for WebhookEmitter {
    fn name(&self) -> &str {
        &self.name
    }

    #[tracing::instrument(level = "debug", name = "polku.emit.webhook", skip_all, fields(events = events.len()))]
    async fn emit(&self, events: &[Event]) -> Result<(), EmitError> {
        let ranges = crate::split::by_count(events.len(), self.batch_size);
        crate::split::send_ranges(ranges, |range| self.post(&events[range])).await
    }

    fn requests_for(&self, events: &[Event]) -> usize {
        events.len().div_ceil(self.batch_size).max(1)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        use super::parse_retry_after;
        assert_eq!(parse_retry_after(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("soon"), None);
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        let wait = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(
            wait > Duration::from_secs(27) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
    }

    use super::*;
    use axum::http::{HeaderMap as AxHeaders, StatusCode};
    use std::sync::{Arc, Mutex};

    type Posts = Arc<Mutex<Vec<(AxHeaders, Vec<u8>)>>>;

    #[derive(Clone, Default)]
    struct Seen {
        posts: Posts,
        status: Arc<Mutex<Vec<u16>>>,
        /// How long each answer takes, in ms.
        delay_ms: Arc<std::sync::atomic::AtomicU64>,
    }

    /// A real HTTP server that records POSTs and answers the statuses queued.
    async fn server(seen: Seen) -> String {
        use axum::routing::post;
        let app = axum::Router::new().route(
            "/hook",
            post(move |headers: AxHeaders, body: axum::body::Bytes| {
                let seen = seen.clone();
                async move {
                    let delay = seen.delay_ms.load(std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    seen.posts.lock().unwrap().push((headers, body.to_vec()));
                    let code = seen.status.lock().unwrap().pop().unwrap_or(200);
                    let mut resp = axum::response::Response::new(axum::body::Body::from("nope"));
                    *resp.status_mut() = StatusCode::from_u16(code).unwrap();
                    if code == 429 {
                        resp.headers_mut()
                            .insert("retry-after", HeaderValue::from_static("7"));
                    }
                    resp
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/hook")
    }

    fn events(n: usize) -> Vec<Event> {
        (0..n)
            .map(|i| Event::new("t").with_id(format!("e{i}")))
            .collect()
    }

    #[tokio::test]
    async fn batches_arrive_intact_with_headers_and_split_by_size() {
        let seen = Seen::default();
        let url = server(seen.clone()).await;
        let hook = WebhookEmitter::new(&url)
            .unwrap()
            .header("authorization", "Bearer t")
            .unwrap()
            .batch_size(2)
            .unwrap();
        hook.emit(&events(3)).await.unwrap();
        let posts = seen.posts.lock().unwrap().clone();
        assert_eq!(posts.len(), 2);
        assert_eq!(posts[0].0["authorization"], "Bearer t");
        assert_eq!(posts[0].0["content-type"], "application/json");
        let first: serde_json::Value = serde_json::from_slice(&posts[0].1).unwrap();
        assert_eq!(first["events"][0]["id"], "e0");
        assert_eq!(first["events"][1]["id"], "e1");
        let second: serde_json::Value = serde_json::from_slice(&posts[1].1).unwrap();
        assert_eq!(second["events"][0]["id"], "e2");
    }

    #[tokio::test]
    async fn statuses_are_classified() {
        let seen = Seen::default();
        let url = server(seen.clone()).await;
        let hook = WebhookEmitter::new(&url).unwrap();
        for (code, retryable) in [
            (500, true),
            (503, true),
            (408, true),
            (429, true),
            (400, false),
            (404, false),
        ] {
            seen.status.lock().unwrap().push(code);
            let err = hook.emit(&events(1)).await.unwrap_err();
            assert_eq!(
                !matches!(err, EmitError::Rejected { .. }),
                retryable,
                "{code}: {err}"
            );
            assert!(err.to_string().contains(&code.to_string()), "{err}");
            if code == 429 {
                assert!(err.to_string().contains("Retry-After: 7"), "{err}");
                assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
            } else {
                assert_eq!(err.retry_after(), None);
            }
        }
        // A refused connection may work later.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let hook = WebhookEmitter::new(format!("http://{dead}/x")).unwrap();
        let err = hook.emit(&events(1)).await.unwrap_err();
        assert!(matches!(err, EmitError::Unavailable { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_failed_chunk_reports_exactly_its_events() {
        let seen = Seen::default();
        let url = server(seen.clone()).await;
        // Statuses are popped from the end: the second POST fails.
        seen.status.lock().unwrap().extend([200, 400, 200]);
        let hook = WebhookEmitter::new(&url).unwrap().batch_size(2).unwrap();
        match hook.emit(&events(5)).await {
            Err(EmitError::Partial { failures }) => {
                let idx: Vec<usize> = failures.iter().map(|f| f.index).collect();
                assert_eq!(idx, [2, 3]);
                assert!(failures.iter().all(|f| !f.retryable));
            }
            other => panic!("{other:?}"),
        }
    }

    fn ids_posted(seen: &Seen) -> Vec<String> {
        seen.posts
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(_, body)| {
                let v: serde_json::Value = serde_json::from_slice(body).unwrap();
                v["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["id"].as_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[tokio::test]
    async fn a_slow_destination_gets_a_large_batch_once_post_by_post() {
        let seen = Seen::default();
        // Each POST takes 300 ms; five of them take 1.5 s, past the 800 ms
        // timeout, which is each POST's, not the whole batch's.
        seen.delay_ms
            .store(300, std::sync::atomic::Ordering::Relaxed);
        let url = server(seen.clone()).await;
        let hook = WebhookEmitter::new(&url)
            .unwrap()
            .batch_size(1000)
            .unwrap()
            .timeout(Duration::from_millis(800));
        let resilient = crate::resilience::Resilience::default()
            .timeout(Duration::from_millis(800))
            .wrap(hook);
        assert_eq!(resilient.requests_for(&events(5000)), 5);
        resilient.emit(&events(5000)).await.unwrap();
        let ids = ids_posted(&seen);
        assert_eq!(ids.len(), 5000, "every event once, none again");
        assert_eq!(seen.posts.lock().unwrap().len(), 5);
        let state = resilient.delivery_state().unwrap();
        assert_eq!((state.retries(), state.timeouts()), (0, 0));
    }

    #[tokio::test]
    async fn a_down_destination_stops_the_posts_and_a_413_splits_one() {
        let seen = Seen::default();
        let url = server(seen.clone()).await;
        let hook = WebhookEmitter::new(&url).unwrap().batch_size(2).unwrap();
        // Popped from the end: the second POST answers 503.
        seen.status.lock().unwrap().extend([200, 200, 503, 200]);
        let Err(EmitError::Partial { failures }) = hook.emit(&events(8)).await else {
            panic!("a partial failure")
        };
        let idx: Vec<(usize, bool)> = failures.iter().map(|f| (f.index, f.retryable)).collect();
        assert_eq!(
            idx,
            [
                (2, true),
                (3, true),
                (4, true),
                (5, true),
                (6, true),
                (7, true)
            ]
        );
        assert_eq!(
            seen.posts.lock().unwrap().len(),
            2,
            "nothing sent after the 503"
        );

        // A 413 for four events: two POSTs of two.
        let seen = Seen::default();
        let url = server(seen.clone()).await;
        let hook = WebhookEmitter::new(&url).unwrap().batch_size(4).unwrap();
        seen.status.lock().unwrap().push(413);
        hook.emit(&events(4)).await.unwrap();
        let sizes: Vec<usize> = seen
            .posts
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| {
                serde_json::from_slice::<serde_json::Value>(b).unwrap()["events"]
                    .as_array()
                    .unwrap()
                    .len()
            })
            .collect();
        assert_eq!(sizes, [4, 2, 2]);
        assert_eq!(ids_posted(&seen)[4..], ["e0", "e1", "e2", "e3"]);
    }

    #[tokio::test]
    async fn signatures_verify_with_an_independent_implementation() {
        let seen = Seen::default();
        let url = server(seen.clone()).await;
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let hook = WebhookEmitter::new(&url)
            .unwrap()
            .signing_secret(secret)
            .unwrap();
        hook.emit(&events(2)).await.unwrap();
        let (headers, body) = seen.posts.lock().unwrap()[0].clone();
        let id = headers["webhook-id"].to_str().unwrap().to_owned();
        let ts = headers["webhook-timestamp"].to_str().unwrap().to_owned();
        let sig = headers["webhook-signature"].to_str().unwrap().to_owned();
        // Python's standard library: hmac + hashlib + base64, nothing of ours.
        let script = r#"
import base64, hashlib, hmac, sys
secret, msg_id, ts, sig = sys.argv[1:5]
body = sys.stdin.buffer.read()
key = base64.b64decode(secret.split("_", 1)[1])
expected = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
sys.exit(0 if ("v1," + expected) in sig.split(" ") else 1)
"#;
        let mut child = std::process::Command::new("python3")
            .args(["-c", script, secret, &id, &ts, &sig])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("python3 is needed for this test");
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(&body).unwrap();
        assert!(child.wait().unwrap().success(), "the signature verifies");
        // And a tampered body does not.
        let mut bad = std::process::Command::new("python3")
            .args(["-c", script, secret, &id, &ts, &sig])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        bad.stdin
            .take()
            .unwrap()
            .write_all(b"{\"events\":[]}")
            .unwrap();
        assert!(!bad.wait().unwrap().success());
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(WebhookEmitter::new("not a url").is_err());
        assert!(WebhookEmitter::new("ftp://x/y").is_err());
        let h = WebhookEmitter::new("http://127.0.0.1:1/").unwrap();
        assert!(h.clone().header("bad header", "x").is_err());
        assert!(h.clone().signing_secret("whsec_!!!").is_err());
        assert!(h.batch_size(0).is_err());
    }
}
