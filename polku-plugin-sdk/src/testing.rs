//! An in-process test harness: serve a plugin on a loopback port and call it
//! the way the gateway does, without a gateway.
//!
//! ```
//! use polku_plugin_sdk::testing::Harness;
//! use polku_plugin_sdk::{async_trait, EmitError, Emitter, Event};
//!
//! #[derive(Debug)]
//! struct Null;
//!
//! #[async_trait]
//! impl Emitter for Null {
//!     fn name(&self) -> &str { "null" }
//!     async fn emit(&self, _: &[Event]) -> Result<(), EmitError> { Ok(()) }
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let h = Harness::emitter(Null).await;
//! let reply = h.emit(vec![Event::new("t")]).await.unwrap();
//! assert_eq!(reply.success_count, 1);
//! assert_eq!(h.info().await.unwrap().emitter_name, "null");
//! h.stop().await;
//! # });
//! ```

use crate::proto::emitter_plugin_client::EmitterPluginClient;
use crate::proto::ingestor_plugin_client::IngestorPluginClient;
use crate::proto::{EmitRequest, EmitResponse, IngestRequest, IngestResponse, PluginInfo};
use crate::{Emitter, Event, Ingestor, ServeConfig};
use bytes::Bytes;
use std::net::SocketAddr;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// A plugin served in-process on `127.0.0.1`, not registered anywhere.
#[derive(Debug)]
pub struct Harness {
    addr: SocketAddr,
    channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), crate::ServeError>>,
}

impl Harness {
    async fn start<F, Fut>(serve: F) -> Harness
    where
        F: FnOnce(ServeConfig, oneshot::Receiver<()>) -> Fut,
        Fut: std::future::Future<Output = Result<(), crate::ServeError>> + Send + 'static,
    {
        // Find a free port, then serve on it (the SDK binds it again).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port");
        let config = ServeConfig::default().with_listen(addr).with_gateway(None);
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(serve(config, rx));
        let uri = format!("http://{addr}");
        let mut channel = None;
        for _ in 0..100 {
            if let Ok(c) = Channel::from_shared(uri.clone())
                .expect("uri")
                .connect()
                .await
            {
                channel = Some(c);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Harness {
            addr,
            channel: channel.expect("the plugin serves"),
            stop: Some(tx),
            task,
        }
    }

    /// Serves an emitter.
    pub async fn emitter<E: Emitter>(emitter: E) -> Harness {
        Harness::start(|config, rx| async move {
            crate::serve_emitter(emitter, config, async {
                let _ = rx.await;
            })
            .await
        })
        .await
    }

    /// Serves an ingestor.
    pub async fn ingestor<I: Ingestor>(ingestor: I) -> Harness {
        Harness::start(|config, rx| async move {
            crate::serve_ingestor(ingestor, config, async {
                let _ = rx.await;
            })
            .await
        })
        .await
    }

    /// Where the plugin listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Calls `Emit`.
    pub async fn emit(&self, events: Vec<Event>) -> Result<EmitResponse, tonic::Status> {
        EmitterPluginClient::new(self.channel.clone())
            .emit(EmitRequest { events })
            .await
            .map(|r| r.into_inner())
    }

    /// Calls `Ingest`.
    pub async fn ingest(&self, source: &str, data: Bytes) -> Result<IngestResponse, tonic::Status> {
        IngestorPluginClient::new(self.channel.clone())
            .ingest(IngestRequest {
                source: source.into(),
                data,
                format: String::new(),
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Calls `Info` (on whichever service the plugin serves).
    pub async fn info(&self) -> Result<PluginInfo, tonic::Status> {
        let e = EmitterPluginClient::new(self.channel.clone())
            .info(())
            .await;
        match e {
            Ok(r) => Ok(r.into_inner()),
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                IngestorPluginClient::new(self.channel.clone())
                    .info(())
                    .await
                    .map(|r| r.into_inner())
            }
            Err(s) => Err(s),
        }
    }

    /// Stops the plugin and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}
