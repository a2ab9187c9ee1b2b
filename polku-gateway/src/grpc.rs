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
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
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
    /// direct path in [`crate::unary`]: submits the request, waiting up to
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

    type StreamEventsStream = ReceiverStream<Result<SendEventResponse, Status>>;

    async fn stream_events(
        &self,
        request: Request<Streaming<SendEventRequest>>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_REPLY_QUEUE);
        let pipeline = self.pipeline.clone();
        let mut stopping = self.stopping.clone();
        tokio::spawn(async move {
            // One message at a time, in order: the reply order is the request
            // order, and while a message waits for buffer room nothing more is
            // read from the client.
            loop {
                let next = tokio::select! {
                    biased;
                    _ = stopping.wait_for(|s| *s) => {
                        debug!("shutdown: stream stops reading");
                        // Tell the client plainly: an OK end would read as
                        // "everything was taken". Replies it has are valid.
                        let _ = tx.try_send(Err(Status::unavailable(
                            "the gateway is shutting down: messages after the last reply were not read",
                        )));
                        break;
                    }
                    next = inbound.message() => next,
                };
                let req = match next {
                    Ok(Some(req)) => req,
                    Ok(None) => break,
                    Err(status) => {
                        if let Some(reason) = reason_of(&status) {
                            pipeline.stats.rejected_request(reason);
                        }
                        // The client may be gone already; nothing to do then.
                        let _ = tx.send(Err(status)).await;
                        break;
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
                        break;
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
                // shutdown up.
                let sent = tokio::select! {
                    r = tx.send(Ok(reply)) => r.is_ok(),
                    _ = stopping.wait_for(|s| *s) => false,
                };
                if !sent {
                    debug!("stream ends: client gone or shutdown");
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
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
        // An index into `metrics::GRPC_METHODS`.
        let method: Option<usize> = match req.uri().path() {
            "/polku.v1.Gateway/SendEvent" => Some(0),
            "/polku.v1.Gateway/StreamEvents" => Some(1),
            _ => None,
        };
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
