//! The framework floor for unary calls: `polku.v1.Gateway` served by tonic
//! with the gateway's HTTP/2 settings, whose `SendEvent` decodes the request
//! (as the gateway does) and answers at once, without a pipeline. Calls per
//! second against it are what tonic, hyper and h2 allow on this machine; the
//! gap to `polku-bench-gateway` is what POLKU's own work costs. See
//! BENCHMARKS.md ("What bounds unary calls").
//!
//! Listens on `POLKU_GRPC_ADDR` (default 127.0.0.1:50051); stops on Ctrl-C.

use anyhow::Context as _;
use polku_proto::v1::gateway_server::{Gateway, GatewayServer};
use polku_proto::v1::send_event_request::Payload;
use polku_proto::v1::{SendEventRequest, SendEventResponse};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

struct Floor;

#[tonic::async_trait]
impl Gateway for Floor {
    async fn send_event(
        &self,
        request: Request<SendEventRequest>,
    ) -> Result<Response<SendEventResponse>, Status> {
        let accepted = match request.into_inner().payload {
            Some(Payload::Events(batch)) => batch.events.len(),
            _ => 0,
        };
        Ok(Response::new(SendEventResponse {
            accepted: accepted as u32,
            ..Default::default()
        }))
    }

    type StreamEventsStream = ReceiverStream<Result<SendEventResponse, Status>>;

    async fn stream_events(
        &self,
        _request: Request<Streaming<SendEventRequest>>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        Err(Status::unimplemented(
            "the floor server measures unary calls only",
        ))
    }
}

fn main() -> anyhow::Result<()> {
    // The same runtime as the gateway's, so that the two compare.
    let config = polku_gateway::Config::from_env().context("configuration")?;
    polku_gateway::runtime(&config)?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let addr = std::env::var("POLKU_GRPC_ADDR").unwrap_or_else(|_| "127.0.0.1:50051".into());
    let addr = addr
        .parse()
        .with_context(|| format!("POLKU_GRPC_ADDR={addr}"))?;
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(256)
        .initial_stream_window_size(Some(1 << 20))
        .initial_connection_window_size(Some(4 << 20))
        .add_service(GatewayServer::new(Floor))
        .serve_with_shutdown(addr, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving")
}
