//! Plugins for tests: real gRPC servers (in this process, on 127.0.0.1:0).

use polku_gateway::Event;
use polku_gateway::proto::v1::emitter_plugin_server::{EmitterPlugin, EmitterPluginServer};
use polku_gateway::proto::v1::ingestor_plugin_server::{IngestorPlugin, IngestorPluginServer};
use polku_gateway::proto::v1::{
    EmitFailure, EmitRequest, EmitResponse, HealthResponse, IngestRequest, IngestResponse,
    PluginInfo, PluginType, RecordError,
};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

/// A CSV ingestor plugin: header row, then one event per row; a row with the
/// wrong number of fields is a record error.
#[derive(Debug, Default)]
pub struct Csv;

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
                    e.event_type = (*c).to_owned().into();
                }
                e.metadata
                    .insert((*h).to_owned().into(), (*c).to_owned().into());
            }
            out.events.push(e);
        }
        Ok(Response::new(out))
    }
}

/// An emitter plugin that records what it gets; it can hang, or fail the
/// events whose type is "fail-me".
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    pub got: Arc<Mutex<Vec<Event>>>,
    pub hang: bool,
    pub shutdowns: Arc<Mutex<u32>>,
    /// What Info says the emitter is called.
    pub emitter_name: String,
    /// Calls still to answer with every event failed as retryable ("busy").
    pub flaky: Arc<std::sync::atomic::AtomicUsize>,
    /// Emit calls received.
    pub calls: Arc<std::sync::atomic::AtomicUsize>,
}

#[tonic::async_trait]
impl EmitterPlugin for Recorder {
    async fn info(&self, _: Request<()>) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(PluginInfo {
            name: format!("{}-emitter", self.emitter_name),
            r#type: PluginType::Emitter as i32,
            emitter_name: self.emitter_name.clone(),
            ..Default::default()
        }))
    }
    async fn health(&self, _: Request<()>) -> Result<Response<HealthResponse>, Status> {
        Ok(Response::new(HealthResponse {
            healthy: !self.hang,
            message: String::new(),
        }))
    }
    async fn emit(&self, req: Request<EmitRequest>) -> Result<Response<EmitResponse>, Status> {
        use std::sync::atomic::Ordering::Relaxed;
        self.calls.fetch_add(1, Relaxed);
        if self.hang {
            std::future::pending::<()>().await;
        }
        let events = req.into_inner().events;
        if self
            .flaky
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .is_ok()
        {
            return Ok(Response::new(EmitResponse {
                success_count: 0,
                failures: events
                    .iter()
                    .enumerate()
                    .map(|(i, e)| EmitFailure {
                        event_id: e.id.to_string(),
                        message: "busy, try again".into(),
                        retryable: true,
                        index: i as u32,
                    })
                    .collect(),
            }));
        }
        let mut failures = Vec::new();
        let mut ok = 0;
        for (i, e) in events.into_iter().enumerate() {
            if e.event_type == "fail-me" {
                failures.push(EmitFailure {
                    event_id: e.id.to_string(),
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

pub async fn serve_ingestor(p: Csv) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IngestorPluginServer::new(p))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

pub async fn serve_emitter(p: Recorder) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EmitterPluginServer::new(p))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

impl Recorder {
    /// A recorder that says it is the emitter `name`.
    pub fn named(name: &str) -> Self {
        Recorder {
            emitter_name: name.to_owned(),
            ..Default::default()
        }
    }

    /// How many events it has received.
    pub fn len(&self) -> usize {
        self.got.lock().unwrap().len()
    }
}

/// Serves `p` on `addr` until the returned sender is sent to (or dropped);
/// then the server closes its connections, as a process that exits would.
#[allow(dead_code)]
pub async fn serve_emitter_at(p: Recorder, addr: SocketAddr) -> tokio::sync::oneshot::Sender<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EmitterPluginServer::new(p))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = rx.await;
                },
            ),
    );
    tx
}
