//! Plugin components against real gRPC plugin servers (in this process, on
//! 127.0.0.1:0): ExternalIngestor and ExternalEmitter in a running gateway.

mod common;

use common::*;
use polku_gateway::proto::v1::emitter_plugin_server::{EmitterPlugin, EmitterPluginServer};
use polku_gateway::proto::v1::ingestor_plugin_server::{IngestorPlugin, IngestorPluginServer};
use polku_gateway::proto::v1::{
    EmitFailure, EmitRequest, EmitResponse, HealthResponse, IngestRequest, IngestResponse,
    PluginInfo, PluginType, RecordError, RejectCode,
};
use polku_gateway::*;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Code, Request, Response, Status};

const WAIT: Duration = Duration::from_secs(10);

/// A CSV ingestor plugin: header row, then one event per row; a row with the
/// wrong number of fields is a record error.
#[derive(Debug, Default)]
struct Csv;

#[tonic::async_trait]
impl IngestorPlugin for Csv {
    async fn info(&self, _: Request<()>) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(PluginInfo {
            name: "csv-ingestor".into(),
            r#type: PluginType::Ingestor as i32,
            sources: vec!["csv".into()],
            ..Default::default()
        }))
    }
    async fn health(&self, _: Request<()>) -> Result<Response<HealthResponse>, Status> {
        Ok(Response::new(HealthResponse {
            healthy: true,
            message: String::new(),
        }))
    }
    async fn ingest(
        &self,
        req: Request<IngestRequest>,
    ) -> Result<Response<IngestResponse>, Status> {
        let text = String::from_utf8(req.into_inner().data.to_vec())
            .map_err(|_| Status::invalid_argument("CSV must be UTF-8"))?;
        let mut lines = text.lines();
        let headers: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
        let mut out = IngestResponse::default();
        for (i, line) in lines.enumerate() {
            let cells: Vec<&str> = line.split(',').collect();
            if cells.len() != headers.len() {
                out.errors.push(RecordError {
                    index: i as u32,
                    message: format!(
                        "row {i} has {} fields, expected {}",
                        cells.len(),
                        headers.len()
                    ),
                });
                continue;
            }
            let mut e = Event::new("csv.row");
            for (h, c) in headers.iter().zip(&cells) {
                if *h == "event_type" {
                    e.event_type = (*c).to_owned();
                }
                e.metadata.insert((*h).to_owned(), (*c).to_owned());
            }
            out.events.push(e);
        }
        Ok(Response::new(out))
    }
}

/// An emitter plugin that records what it gets; it can hang, or fail the
/// events whose type is "fail-me".
#[derive(Debug, Clone, Default)]
struct Recorder {
    got: Arc<Mutex<Vec<Event>>>,
    hang: bool,
    shutdowns: Arc<Mutex<u32>>,
}

#[tonic::async_trait]
impl EmitterPlugin for Recorder {
    async fn info(&self, _: Request<()>) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(PluginInfo::default()))
    }
    async fn health(&self, _: Request<()>) -> Result<Response<HealthResponse>, Status> {
        Ok(Response::new(HealthResponse {
            healthy: !self.hang,
            message: String::new(),
        }))
    }
    async fn emit(&self, req: Request<EmitRequest>) -> Result<Response<EmitResponse>, Status> {
        if self.hang {
            std::future::pending::<()>().await;
        }
        let events = req.into_inner().events;
        let mut failures = Vec::new();
        let mut ok = 0;
        for (i, e) in events.into_iter().enumerate() {
            if e.event_type == "fail-me" {
                failures.push(EmitFailure {
                    event_id: e.id.clone(),
                    message: "refused".into(),
                    retryable: false,
                    index: i as u32,
                });
            } else {
                ok += 1;
                self.got.lock().unwrap().push(e);
            }
        }
        Ok(Response::new(EmitResponse {
            success_count: ok,
            failures,
        }))
    }
    async fn shutdown(&self, _: Request<()>) -> Result<Response<()>, Status> {
        *self.shutdowns.lock().unwrap() += 1;
        Ok(Response::new(()))
    }
}

async fn serve_ingestor(p: Csv) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IngestorPluginServer::new(p))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

async fn serve_emitter(p: Recorder) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EmitterPluginServer::new(p))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

#[tokio::test]
async fn the_readme_builder_with_real_plugins() {
    let csv = serve_ingestor(Csv).await;
    let slack = Recorder::default();
    let slack_addr = serve_emitter(slack.clone()).await;
    let mem = MemoryEmitter::new("stdout");

    let hub = Hub::new()
        .ingestor(JsonIngestor::new())
        .ingestor(ExternalIngestor::new("csv", format!("http://{csv}")))
        .middleware(Filter::new(|e| e.event_type.starts_with("user.")))
        .middleware(Transform::new(|mut e| {
            e.metadata.insert("env".into(), "prod".into());
            e
        }))
        .emitter(mem.clone())
        // No scheme: host:port is enough.
        .emitter(ExternalEmitter::new("slack", slack_addr.to_string()));
    let gw = start(hub).await;
    let mut c = client(&gw).await;

    let r = c
        .send_event(raw_req(
            "csv",
            "",
            b"event_type,user\nuser.signup,ann\nsystem.tick,-\nuser.login,bob,extra\nuser.login,cid\n",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 2, "{r:?}");
    assert_eq!(r.dropped, 1, "the system.tick row is filtered");
    assert_eq!(r.rejected.len(), 1);
    assert_eq!(r.rejected[0].code, RejectCode::IngestFailed as i32);
    assert_eq!(r.rejected[0].index, Some(2));
    assert!(
        r.rejected[0].message.contains("3 fields"),
        "{}",
        r.rejected[0].message
    );

    assert_eq!(mem.wait_for(2, WAIT).await, 2);
    let mut delivered = 0;
    for _ in 0..100 {
        delivered = slack.got.lock().unwrap().len();
        if delivered == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(delivered, 2, "the Slack plugin got both user events");
    let got = slack.got.lock().unwrap().clone();
    assert_eq!(got[0].metadata["user"], "ann");
    assert_eq!(got[0].metadata["env"], "prod");
    assert_eq!(got[1].metadata["user"], "cid");
    gw.shutdown().await.unwrap();
    assert_eq!(
        *slack.shutdowns.lock().unwrap(),
        1,
        "the plugin was told to flush"
    );
}

#[tokio::test]
async fn plugin_failures_are_counted_and_a_hanging_plugin_stalls_nobody() {
    let picky = Recorder::default();
    let picky_addr = serve_emitter(picky.clone()).await;
    let hung = Recorder {
        hang: true,
        ..Default::default()
    };
    let hung_addr = serve_emitter(hung.clone()).await;
    let fast = MemoryEmitter::new("fast");
    let gw = start(
        Hub::new()
            .emitter(ExternalEmitter::new("picky", picky_addr.to_string()))
            .emitter(
                ExternalEmitter::new("hung", hung_addr.to_string())
                    .with_timeout(Duration::from_millis(200)),
            )
            .emitter(fast.clone()),
    )
    .await;
    let mut c = client(&gw).await;
    let started = std::time::Instant::now();
    for b in 0..5 {
        let events = vec![
            Event::new("ok").with_id(format!("ok-{b}")),
            Event::new("fail-me").with_id(format!("bad-{b}")),
        ];
        let r = c
            .send_event(events_req("s", events))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.accepted, 2);
    }
    assert_eq!(fast.wait_for(10, WAIT).await, 10);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the healthy emitter was not held up by the hung one: {:?}",
        started.elapsed()
    );
    // The picky plugin refused one event per batch: counted as failed.
    let mut s = gw.stats();
    for _ in 0..100 {
        s = gw.stats();
        if s.emitters["picky"].emitted + s.emitters["picky"].failed == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        (s.emitters["picky"].emitted, s.emitters["picky"].failed),
        (5, 5)
    );
    // The hung plugin times out on every batch: its events count as failed.
    for _ in 0..200 {
        s = gw.stats();
        if s.emitters["hung"].failed == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.emitters["hung"].failed, 10);
    assert_eq!(s.emitters["hung"].emitted, 0);
    gw.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_ingestor_plugin_that_is_down_gets_a_clear_error() {
    // A port with nothing behind it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = start(
        Hub::new()
            .ingestor(
                ExternalIngestor::new("csv", dead.to_string())
                    .with_timeout(Duration::from_millis(500)),
            )
            .emitter(MemoryEmitter::new("m")),
    )
    .await;
    let mut c = client(&gw).await;
    let status = c
        .send_event(raw_req("csv", "", b"a,b\n1,2\n"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("plugin:csv"), "{status:?}");
    // The gateway goes on.
    let ok = c
        .send_event(events_req("s", vec![Event::new("t")]))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().accepted, 1);
    assert_eq!(
        gw.stats()
            .rejected_requests(RejectReason::IngestorUnavailable),
        1
    );
    gw.shutdown().await.unwrap();
}

#[test]
fn a_bad_address_is_reported_not_a_panic() {
    let e = ExternalEmitter::new("x", "not an address");
    assert!(e.address().unwrap_err().contains("no port"));
}
