//! The `polku.v1.Gateway` gRPC service, and the layer that counts the
//! requests it refuses.

use crate::pipeline::{Pipeline, Wait};
use crate::stats::RejectReason;
use polku_proto::codec::REJECT_REASON_KEY;
use polku_proto::v1::gateway_server::Gateway;
use polku_proto::v1::{RequestError, SendEventRequest, SendEventResponse};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::server::NamedService;
use tonic::{Request, Response, Status, Streaming};
use tracing::debug;

/// Replies a stream may have waiting for the client to read them. Past this
/// the stream stops reading requests: backpressure all the way to the client.
const STREAM_REPLY_QUEUE: usize = 16;

/// Serves `polku.v1.Gateway` over the pipeline.
#[derive(Debug, Clone)]
pub(crate) struct GatewayService {
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) buffer_timeout: Duration,
    /// Turns true when shutdown starts: streams stop reading.
    pub(crate) stopping: watch::Receiver<bool>,
}

impl GatewayService {
    /// One `SendEvent` call's work, shared by the tonic handler and the
    /// direct path in [`crate::send_event`]: submits the request, waiting up to
    /// the buffer timeout for room. Does not count refusals.
    pub(crate) async fn send_one(
        &self,
        req: SendEventRequest,
    ) -> Result<SendEventResponse, Status> {
        match self
            .pipeline
            .submit(req, Wait::For(self.buffer_timeout))
            .await
        {
            Ok(outcome) => Ok(outcome.into()),
            Err(err) => Err(err.to_status()),
        }
    }
}

#[tonic::async_trait]
impl Gateway for GatewayService {
    async fn send_event(
        &self,
        request: Request<SendEventRequest>,
    ) -> Result<Response<SendEventResponse>, Status> {
        // Refusals are counted by `CountRejections`, which also sees the ones
        // that never reach this handler (undecodable or oversized messages).
        self.send_one(request.into_inner()).await.map(Response::new)
    }

    type StreamEventsStream = ReplyStream;

    async fn stream_events(
        &self,
        request: Request<Streaming<SendEventRequest>>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_REPLY_QUEUE);
        // How the stream ends once every queued reply is read: OK, or the
        // status set here. It never waits for room, so a client that reads
        // nothing cannot keep the reason for the end from being told.
        let (end_tx, end_rx) = oneshot::channel::<Status>();
        let pipeline = self.pipeline.clone();
        let mut stopping = self.stopping.clone();
        let span = tracing::debug_span!("polku.gateway.stream");
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                // One message at a time, in order: the reply order is the request
                // order, and while a message waits for buffer room nothing more is
                // read from the client.
                let end = loop {
                    let next = tokio::select! {
                        biased;
                        _ = stopping.wait_for(|s| *s) => {
                            debug!("shutdown: stream stops reading");
                            // Tell the client plainly: an OK end would read as
                            // "everything was taken". Replies it has are valid.
                            break Some(Status::unavailable(
                                "the gateway is shutting down: messages after the last reply were not read",
                            ));
                        }
                        next = inbound.message() => next,
                    };
                    let req = match next {
                        Ok(Some(req)) => req,
                        Ok(None) => break None,
                        Err(status) => {
                            if let Some(reason) = reason_of(&status) {
                                pipeline.stats.rejected_request(reason);
                            }
                            break Some(status);
                        }
                    };
                    // If the client goes away while this waits for buffer room,
                    // stop waiting: nobody would read the acknowledgement. (Safe to
                    // cancel: the hand-over to the buffer has no await point; the
                    // yield after it only delays the reply, and events handed
                    // over are delivered whether or not the reply is sent.)
                    let submitted = tokio::select! {
                        r = pipeline.submit(req, Wait::UntilShutdown(stopping.clone())) => r,
                        _ = tx.closed() => {
                            debug!("stream client went away while its message waited");
                            break None;
                        }
                    };
                    let reply = match submitted {
                        Ok(outcome) => outcome.into(),
                        Err(err) => {
                            pipeline.stats.rejected_request(err.reason());
                            SendEventResponse {
                                error: Some(RequestError {
                                    code: err.grpc_code() as i32,
                                    message: err.to_string(),
                                    reason: err.reason().as_str().to_owned(),
                                }),
                                ..Default::default()
                            }
                        }
                    };
                    // A client that does not read its replies must not hold
                    // shutdown up. Room in the reply queue wins over shutdown, so
                    // a reply that can be queued always is; one that cannot ends
                    // the stream UNAVAILABLE, never OK.
                    let sent = tokio::select! {
                        biased;
                        r = tx.send(Ok(reply)) => r.is_ok(),
                        _ = stopping.wait_for(|s| *s) => {
                            break Some(Status::unavailable(
                                "the gateway is shutting down and the client did not read its replies: \
                                 the reply to the last message was not sent (its events were accepted)",
                            ));
                        }
                    };
                    if !sent {
                        debug!("stream ends: client gone");
                        break None;
                    }
                };
                if let Some(status) = end {
                    let _ = end_tx.send(status);
                }
            },
            span,
        ));
        Ok(Response::new(ReplyStream {
            replies: rx,
            end: Some(end_rx),
        }))
    }
}

/// The replies of one `StreamEvents` call: every reply queued, then the
/// status the stream ends with, if it is not OK.
#[derive(Debug)]
pub(crate) struct ReplyStream {
    replies: mpsc::Receiver<Result<SendEventResponse, Status>>,
    end: Option<oneshot::Receiver<Status>>,
}

impl tokio_stream::Stream for ReplyStream {
    type Item = Result<SendEventResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(reply) = std::task::ready!(self.replies.poll_recv(cx)) {
            return Poll::Ready(Some(reply));
        }
        // Every reply is out and the task is done: how it ended.
        let Some(end) = self.end.as_mut() else {
            return Poll::Ready(None);
        };
        let status = std::task::ready!(Pin::new(end).poll(cx)).ok();
        self.end = None;
        Poll::Ready(status.map(Err))
    }
}

/// The refusal of a call without a valid ingest token.
pub(crate) fn unauthenticated() -> Status {
    let mut status = Status::unauthenticated(
        "missing or invalid ingest token: send `authorization: Bearer <token>` metadata",
    );
    status.metadata_mut().insert(
        REJECT_REASON_KEY,
        tonic::metadata::MetadataValue::from_static("unauthenticated"),
    );
    status
}

/// The reason behind a refusal: our metadata, or tonic's size check.
pub(crate) fn reason_of(status: &Status) -> Option<RejectReason> {
    if let Some(r) = status
        .metadata()
        .get(REJECT_REASON_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(RejectReason::from_str_name)
    {
        return Some(r);
    }
    // tonic refuses an oversized message before any codec sees it.
    (status.code() == tonic::Code::OutOfRange).then_some(RejectReason::TooLarge)
}

/// Counts refused unary `SendEvent` requests by reason, including those that
/// fail before the handler runs: a message that does not decode, or is over
/// the size limit. (Streams count their own.)
#[derive(Debug, Clone)]
pub(crate) struct CountRejections<S> {
    pub(crate) inner: S,
    pub(crate) pipeline: Arc<Pipeline>,
}

impl<S: NamedService> NamedService for CountRejections<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for CountRejections<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // Errors before any reply: a unary call that fails, or a stream
        // refused at the door (no token).
        let method = crate::stats::GrpcMethod::from_path(req.uri().path());
        let unary = method.is_some();
        let started = tokio::time::Instant::now();
        let fut = self.inner.call(req);
        let pipeline = self.pipeline.clone();
        Box::pin(async move {
            let resp = fut.await?;
            if let Some(method) = method {
                // No grpc-status in the headers: the call went on (a unary
                // call's OK comes in the trailers, a stream is open).
                let code = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u16>().ok())
                    .unwrap_or(0);
                pipeline
                    .grpc_metrics
                    .observe(method, code, started.elapsed().as_secs_f64());
            }
            if unary {
                // An error before any reply is "trailers-only": the status is
                // in the headers. A success carries it in the trailers.
                let h = resp.headers();
                let code = h
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok());
                if let Some(code) = code.filter(|c| *c != 0) {
                    let reason = h
                        .get(REJECT_REASON_KEY)
                        .and_then(|v| v.to_str().ok())
                        .and_then(RejectReason::from_str_name)
                        .or_else(|| {
                            (code == tonic::Code::OutOfRange as i32)
                                .then_some(RejectReason::TooLarge)
                        });
                    if let Some(reason) = reason {
                        pipeline.stats.rejected_request(reason);
                    }
                }
            }
            Ok(resp)
        })
    }
}

/// `polku.v1.Gateway`'s routes, written out instead of tonic's generated
/// server for one reason: the generated one builds its codec with
/// `Default`, and this one's codec knows `POLKU_MAX_EVENTS_PER_REQUEST`, so
/// that a request of millions of tiny events is never decoded whole.
#[derive(Debug, Clone)]
pub(crate) struct GatewayRoutes {
    service: Arc<GatewayService>,
    max_message_bytes: usize,
    max_events: usize,
}

impl GatewayRoutes {
    /// Routes for `service`, refusing messages over `max_message_bytes`.
    pub(crate) fn new(service: GatewayService, max_message_bytes: usize) -> Self {
        let max_events = service.pipeline.max_events_per_request();
        GatewayRoutes {
            service: Arc::new(service),
            max_message_bytes,
            max_events,
        }
    }

    fn grpc(&self) -> tonic::server::Grpc<polku_proto::codec::SendEventCodec> {
        tonic::server::Grpc::new(polku_proto::codec::SendEventCodec::new(self.max_events))
            .apply_max_message_size_config(Some(self.max_message_bytes), None)
    }
}

impl NamedService for GatewayRoutes {
    const NAME: &'static str = "polku.v1.Gateway";
}

/// `SendEvent`, as tonic's unary machinery calls it.
struct SendEventMethod(Arc<GatewayService>);

impl tonic::server::UnaryService<SendEventRequest> for SendEventMethod {
    type Response = SendEventResponse;
    type Future = Pin<Box<dyn Future<Output = Result<Response<SendEventResponse>, Status>> + Send>>;

    fn call(&mut self, request: Request<SendEventRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.send_event(request).await })
    }
}

/// `StreamEvents`, as tonic's streaming machinery calls it.
struct StreamEventsMethod(Arc<GatewayService>);

impl tonic::server::StreamingService<SendEventRequest> for StreamEventsMethod {
    type Response = SendEventResponse;
    type ResponseStream = ReplyStream;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ReplyStream>, Status>> + Send>>;

    fn call(&mut self, request: Request<Streaming<SendEventRequest>>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.stream_events(request).await })
    }
}

impl<B> tower::Service<http::Request<B>> for GatewayRoutes
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let mut grpc = self.grpc();
        let service = self.service.clone();
        match req.uri().path() {
            "/polku.v1.Gateway/SendEvent" => {
                Box::pin(async move { Ok(grpc.unary(SendEventMethod(service), req).await) })
            }
            "/polku.v1.Gateway/StreamEvents" => {
                Box::pin(async move { Ok(grpc.streaming(StreamEventsMethod(service), req).await) })
            }
            path => {
                let status = Status::unimplemented(format!(
                    "polku.v1.Gateway has no method {:?}",
                    path.rsplit('/').next().unwrap_or(path)
                ));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}
