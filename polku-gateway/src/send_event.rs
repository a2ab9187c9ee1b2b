//! The direct `SendEvent` path: `polku.v1.Gateway/SendEvent`, the
//! one-call-per-request method that clients sending a few events at a time
//! use, answered without tonic's generic machinery.
//!
//! tonic serves every method through the same generic machinery: a path
//! router, a streaming decoder with its own buffer, a streaming encoder with
//! another, and boxed futures around each. For a call that carries one small
//! message that machinery costs more than POLKU's own work. [`DirectLayer`]
//! sits in front of tonic's router and answers plain `SendEvent` calls
//! itself: it checks the token, reads the one length-prefixed message
//! straight from the request body (with [`polku_proto::framing`]), hands it to the same
//! [`GatewayService::send_one`] as the tonic handler, and writes the reply as
//! one data frame and the `grpc-status` trailer. It counts the call and any
//! refusal as `CountRejections` does for tonic's path.
//!
//! Anything out of the ordinary goes on to tonic unchanged: another method,
//! a compressed request (`grpc-encoding`), a content type other than gRPC's.
//! So the direct path answers exactly the calls that tonic would have
//! answered the same way, and the gateway's behaviour does not change.

use crate::auth::IngestTokens;
use crate::grpc::{GatewayService, reason_of, unauthenticated};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use polku_proto::v1::{SendEventRequest, SendEventResponse};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::Status;

/// The method this path serves.
const SEND_EVENT: &str = "/polku.v1.Gateway/SendEvent";

/// What the direct path needs; shared by every connection.
#[derive(Debug)]
struct Direct {
    service: GatewayService,
    tokens: IngestTokens,
    /// `POLKU_MAX_MESSAGE_BYTES`: the largest message, prefix not counted.
    max_message: usize,
}

/// Puts the direct `SendEvent` path in front of tonic's router.
#[derive(Debug, Clone)]
pub(crate) struct DirectLayer(Arc<Direct>);

impl DirectLayer {
    /// Serves `SendEvent` with `service`, after checking `tokens`, for
    /// messages up to `max_message` bytes.
    pub(crate) fn new(service: GatewayService, tokens: IngestTokens, max_message: usize) -> Self {
        DirectLayer(Arc::new(Direct {
            service,
            tokens,
            max_message,
        }))
    }
}

impl<S> tower::Layer<S> for DirectLayer {
    type Service = DirectSendEvent<S>;

    fn layer(&self, inner: S) -> DirectSendEvent<S> {
        DirectSendEvent {
            inner,
            direct: self.0.clone(),
        }
    }
}

/// The service of [`DirectLayer`]: plain `SendEvent` calls here, the rest to
/// `inner`.
#[derive(Debug, Clone)]
pub(crate) struct DirectSendEvent<S> {
    inner: S,
    direct: Arc<Direct>,
}

impl<S> DirectSendEvent<S> {
    /// Whether this request is one the direct path answers as tonic would.
    fn takes<B>(req: &Request<B>) -> bool {
        let h = req.headers();
        req.uri().path() == SEND_EVENT
            && req.method() == http::Method::POST
            && h.get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
            && h.get("grpc-encoding")
                .is_none_or(|v| v.as_bytes() == b"identity")
    }
}

impl<S, B, R> tower::Service<Request<B>> for DirectSendEvent<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Reply<R>>;
    type Error = S::Error;
    type Future = DirectFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if Self::takes(&req) {
            DirectFuture::Direct {
                fut: Box::pin(serve(self.direct.clone(), req)),
            }
        } else {
            DirectFuture::Inner {
                fut: self.inner.call(req),
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// [`DirectSendEvent`]'s future: the direct path's, or the inner
    /// service's.
    #[project = DirectFutureProj]
    pub(crate) enum DirectFuture<F> {
        /// Served here.
        Direct { fut: Pin<Box<dyn Future<Output = Response<Option<Bytes>>> + Send>> },
        /// Served by tonic.
        Inner { #[pin] fut: F },
    }
}

impl<F, R, E> Future for DirectFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<Reply<R>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            DirectFutureProj::Direct { fut } => fut.as_mut().poll(cx).map(|resp| {
                Ok(resp.map(|message| Reply::Direct {
                    trailer: message.is_some(),
                    message,
                }))
            }),
            DirectFutureProj::Inner { fut } => fut
                .poll(cx)
                .map(|r| r.map(|resp| resp.map(|inner| Reply::Inner { inner }))),
        }
    }
}

/// Answers one `SendEvent` call, counts it, and counts a refusal by reason.
/// The response's body is the framed reply, or none when the call failed
/// (the status is then in the headers: "trailers-only").
async fn serve<B>(direct: Arc<Direct>, req: Request<B>) -> Response<Option<Bytes>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    let result = answer(&direct, req).await;
    let pipeline = &direct.service.pipeline;
    let (resp, code) = match result {
        Ok(reply) => {
            let mut resp = Response::new(Some(polku_proto::framing::frame(&reply)));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            (resp, 0)
        }
        Err(status) => {
            if let Some(reason) = reason_of(&status) {
                pipeline.stats.rejected_request(reason);
            }
            let code = status.code() as u16;
            (status.into_http::<Option<Bytes>>(), code)
        }
    };
    pipeline.grpc_metrics.observe(
        crate::stats::GrpcMethod::SendEvent,
        code,
        started.elapsed().as_secs_f64(),
    );
    resp
}

/// The call's work: the token, the message, the pipeline.
async fn answer<B>(direct: &Direct, req: Request<B>) -> Result<SendEventResponse, Status>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let auth = req.headers().get(http::header::AUTHORIZATION);
    if !direct.tokens.allows(auth.map(HeaderValue::as_bytes)) {
        return Err(unauthenticated());
    }
    let message = read_message(req.into_body(), direct.max_message).await?;
    let request: SendEventRequest = polku_proto::codec::decode_send_event_request(
        message,
        direct.service.pipeline.max_events_per_request(),
    )?;
    direct.service.send_one(request).await
}

/// Reads the one message of a unary call from its body; an announced length
/// over `max` is refused before the rest is read.
async fn read_message<B>(body: B, max: usize) -> Result<Bytes, Status>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut body = std::pin::pin!(body);
    let mut message = polku_proto::framing::UnaryMessage::new(max);
    loop {
        let frame = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await;
        match frame {
            None => return message.finish(),
            Some(Err(e)) => return Err(Status::from_error(e.into())),
            // Request trailers carry nothing for this method.
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    message.push(data)?;
                }
            }
        }
    }
}

/// The response body of [`DirectSendEvent`]: the direct path's reply, or
/// tonic's body.
#[derive(Debug)]
pub(crate) enum Reply<R> {
    /// One framed message, then the `grpc-status: 0` trailer. Neither when
    /// the call failed: the status is then in the headers.
    Direct {
        /// The framed reply, until it is sent.
        message: Option<Bytes>,
        /// Whether the OK trailer is still to be sent.
        trailer: bool,
    },
    /// tonic's own.
    Inner { inner: R },
}

impl<R> Body for Reply<R>
where
    R: Body<Data = Bytes> + Unpin,
    R::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Reply::Direct { message, trailer } => Poll::Ready(if let Some(m) = message.take() {
                Some(Ok(Frame::data(m)))
            } else if std::mem::take(trailer) {
                let mut ok = HeaderMap::with_capacity(1);
                ok.insert("grpc-status", HeaderValue::from_static("0"));
                Some(Ok(Frame::trailers(ok)))
            } else {
                None
            }),
            Reply::Inner { inner } => Pin::new(inner).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Reply::Direct { message, trailer } => message.is_none() && !trailer,
            Reply::Inner { inner } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            // Not exact: hyper would add a content-length header that a gRPC
            // response does not need, and encode it for every call.
            Reply::Direct { message, .. } => {
                let mut hint = SizeHint::new();
                hint.set_lower(message.as_ref().map_or(0, |m| m.len() as u64));
                hint
            }
            Reply::Inner { inner } => inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A request body that yields the given data frames, then ends, or
    /// (`ends: false`) then waits for ever like a client that stops sending.
    struct Frames {
        frames: VecDeque<Bytes>,
        ends: bool,
    }

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            match self.frames.pop_front() {
                Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                None if self.ends => Poll::Ready(None),
                None => Poll::Pending,
            }
        }
    }

    fn ending(frames: impl IntoIterator<Item = Bytes>) -> Frames {
        Frames {
            frames: frames.into_iter().collect(),
            ends: true,
        }
    }

    fn framed(flag: u8, message: &[u8]) -> Vec<u8> {
        let mut v = vec![flag];
        v.extend_from_slice(&(message.len() as u32).to_be_bytes());
        v.extend_from_slice(message);
        v
    }

    async fn read(frames: Vec<Vec<u8>>, max: usize) -> Result<Bytes, Status> {
        read_message(ending(frames.into_iter().map(Bytes::from)), max).await
    }

    #[tokio::test]
    async fn a_message_in_one_frame_is_sliced_from_it_not_copied() {
        let frame = Bytes::from(framed(0, b"hello"));
        let message = read_message(ending([frame.clone()]), 100).await.unwrap();
        assert_eq!(&message[..], b"hello");
        assert_eq!(message.as_ptr(), frame[5..].as_ptr(), "no copy");
    }

    #[tokio::test]
    async fn bad_framing_and_a_size_refusal_are_counted_by_reason() {
        let status = read(vec![framed(0, b"one"), framed(0, b"two")], 10)
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
        let status = read(vec![framed(0, &[0; 11])], 10).await.unwrap_err();
        assert_eq!(
            reason_of(&status),
            Some(crate::stats::RejectReason::TooLarge)
        );
    }

    /// A body whose first frame announces a message over the limit and
    /// which never ends: the refusal must not wait for the rest.
    #[tokio::test]
    async fn an_oversized_message_is_refused_from_its_prefix_alone() {
        let prefix = Bytes::from(vec![0, 0x10, 0, 0, 0]);
        let status = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            read_message(
                Frames {
                    frames: VecDeque::from([prefix]),
                    ends: false,
                },
                1 << 20,
            ),
        )
        .await
        .expect("answered without the body")
        .unwrap_err();
        assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    }

    #[tokio::test]
    async fn the_reply_body_is_the_message_then_the_ok_trailer() {
        let mut body: Reply<tonic::body::Body> = Reply::Direct {
            message: Some(Bytes::from_static(b"\0\0\0\0\0")),
            trailer: true,
        };
        assert!(!body.is_end_stream());
        let mut body = Pin::new(&mut body);
        let next = |b: &mut Pin<&mut Reply<tonic::body::Body>>| {
            let waker = std::task::Waker::noop();
            match b.as_mut().poll_frame(&mut Context::from_waker(waker)) {
                Poll::Ready(f) => f.map(|f| f.unwrap()),
                Poll::Pending => panic!("the reply never waits"),
            }
        };
        let data = next(&mut body).unwrap().into_data().unwrap();
        assert_eq!(&data[..], b"\0\0\0\0\0");
        let trailers = next(&mut body).unwrap().into_trailers().unwrap();
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
        assert!(next(&mut body).is_none());
        assert!(body.is_end_stream());
        // A failed call's body is empty from the start: trailers-only.
        let failed: Reply<tonic::body::Body> = Reply::Direct {
            message: None,
            trailer: false,
        };
        assert!(failed.is_end_stream());
    }
}
