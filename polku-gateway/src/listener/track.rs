//! Each request on a tracked connection: counted in flight (for the idle
//! timeout), given its body deadline, and, on a reserved connection, refused
//! unless it is a health, readiness or metrics request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

use bytes::Bytes;

use super::body::Timed;
use super::{ConnInfo, ConnState, NOT_PENDING};

/// Which requests a reserved connection (one over `POLKU_MAX_CONNECTIONS`)
/// may make, and the answer to the others.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reserve {
    /// The HTTP listener: `/healthz`, `/readyz` and `/metrics`.
    Http,
    /// The gRPC listener: `grpc.health.v1.Health`.
    Grpc,
}

impl Reserve {
    fn allows(self, path: &str) -> bool {
        match self {
            Reserve::Http => matches!(path, "/healthz" | "/readyz" | "/metrics"),
            Reserve::Grpc => path.starts_with("/grpc.health.v1.Health/"),
        }
    }

    fn refusal(self) -> http::Response<Option<Bytes>> {
        match self {
            Reserve::Http => {
                let body = serde_json::json!({
                    "error": "the gateway has POLKU_MAX_CONNECTIONS connections open; a connection over the limit serves only /healthz, /readyz and /metrics",
                    "reason": "too_many_connections",
                });
                let mut resp = http::Response::new(Some(Bytes::from(body.to_string())));
                *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                let h = resp.headers_mut();
                h.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                h.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
                h.insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                resp
            }
            Reserve::Grpc => tonic::Status::resource_exhausted(
                "the gateway has POLKU_MAX_CONNECTIONS connections open; a connection over the limit serves only grpc.health.v1.Health",
            )
            .into_http(),
        }
    }
}

/// Counts requests in flight per connection (for the idle timeout), puts
/// the peer's address where tonic's `remote_addr()` finds it, gives each
/// request body its deadline ([`Timed`]), and answers reserved connections'
/// requests other than health and metrics with a refusal.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TrackConnLayer {
    reserve: Reserve,
}

impl TrackConnLayer {
    /// For the listener whose reserved connections `reserve` describes.
    pub(crate) fn new(reserve: Reserve) -> Self {
        Self { reserve }
    }
}

impl<S> tower::Layer<S> for TrackConnLayer {
    type Service = TrackConn<S>;

    fn layer(&self, inner: S) -> TrackConn<S> {
        TrackConn {
            inner,
            reserve: self.reserve,
        }
    }
}

/// The service of [`TrackConnLayer`].
#[derive(Debug, Clone)]
pub(crate) struct TrackConn<S> {
    inner: S,
    reserve: Reserve,
}

/// Marks a request in flight until dropped.
#[derive(Debug)]
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn new(state: Arc<ConnState>) -> Self {
        state.active.fetch_add(1, Relaxed);
        state.any_request.store(true, Relaxed);
        state.pending_ms.store(NOT_PENDING, Relaxed);
        state.touch();
        Self(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.finished.fetch_add(1, Relaxed);
        self.0.active.fetch_sub(1, Relaxed);
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for TrackConn<S>
where
    S: tower::Service<http::Request<Timed<B>>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes>,
{
    type Response = http::Response<Tracked<R>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let ext = req.extensions();
        let info = ext.get::<ConnInfo>().cloned().or_else(|| {
            ext.get::<axum::extract::ConnectInfo<ConnInfo>>()
                .map(|c| c.0.clone())
        });
        let Some(info) = info else {
            return TrackedFuture::Inner {
                inner: self
                    .inner
                    .call(req.map(|b| Timed::new(b, None, None, false))),
                guard: None,
            };
        };
        req.extensions_mut()
            .insert(tonic::transport::server::TcpConnectInfo {
                local_addr: Some(info.local_addr),
                remote_addr: Some(info.remote_addr),
            });
        let guard = InFlight::new(info.state.clone());
        if info.state.reserved && !self.reserve.allows(req.uri().path()) {
            info.state.stats.reserved_refused.fetch_add(1, Relaxed);
            return TrackedFuture::Refused {
                resp: Some(self.reserve.refusal()),
                guard: Some(guard),
            };
        }
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let state = &info.state;
        let limit = state.body_timeout;
        let stats = limit.map(|_| state.stats.clone());
        TrackedFuture::Inner {
            inner: self
                .inner
                .call(req.map(|b| Timed::new(b, limit, stats, grpc))),
            guard: Some(guard),
        }
    }
}

pin_project_lite::pin_project! {
    /// [`TrackConn`]'s future: the inner service's, whose response body
    /// takes over the in-flight mark, or a refusal (a plain enum, not a
    /// boxed future: this runs for every request).
    #[project = TrackedFutureProj]
    pub(crate) enum TrackedFuture<F> {
        // Served by the inner service.
        Inner {
            #[pin]
            inner: F,
            guard: Option<InFlight>,
        },
        // Refused on a reserved connection.
        Refused {
            resp: Option<http::Response<Option<Bytes>>>,
            guard: Option<InFlight>,
        },
    }
}

impl<F, R, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<http::Response<R>, E>>,
{
    type Output = Result<http::Response<Tracked<R>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            TrackedFutureProj::Inner { inner, guard } => {
                let res = std::task::ready!(inner.poll(cx))?;
                let guard = guard.take();
                Poll::Ready(Ok(res.map(|body| Tracked {
                    inner: TrackedBody::Inner { body },
                    _guard: guard,
                })))
            }
            TrackedFutureProj::Refused { resp, guard } => {
                let resp = resp.take().expect("a refusal is answered once");
                let guard = guard.take();
                Poll::Ready(Ok(resp.map(|body| Tracked {
                    inner: TrackedBody::Refused { body },
                    _guard: guard,
                })))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted until it ends.
    pub(crate) struct Tracked<B> {
        #[pin]
        inner: TrackedBody<B>,
        _guard: Option<InFlight>,
    }
}

pin_project_lite::pin_project! {
    /// The inner service's body, or a refusal's.
    #[project = TrackedBodyProj]
    enum TrackedBody<B> {
        Inner { #[pin] body: B },
        Refused { body: Option<Bytes> },
    }
}

impl<B: http_body::Body<Data = Bytes>> http_body::Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        match self.project().inner.project() {
            TrackedBodyProj::Inner { body } => body.poll_frame(cx),
            TrackedBodyProj::Refused { body } => {
                Poll::Ready(body.take().map(|b| Ok(http_body::Frame::data(b))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            TrackedBody::Inner { body } => body.is_end_stream(),
            TrackedBody::Refused { body } => body.is_none(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.inner {
            TrackedBody::Inner { body } => body.size_hint(),
            TrackedBody::Refused { body } => {
                http_body::SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
