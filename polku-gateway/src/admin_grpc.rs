//! `polku.v1.Admin`: what the `polku` command talks to. Taps as server
//! streams, a stats snapshot, plugins and failure stores; guarded like the
//! HTTP admin endpoints (`POLKU_ADMIN_TOKEN`, else loopback peers only).

use crate::pipeline::{Pipeline, Wait};
use crate::tap::{Stage, Subscription};
use crate::{ResendError, SubmitError};
use polku_core::auth::{AccessPolicy, Denied};
use polku_proto::v1::admin_server::{Admin, AdminServer};
use polku_proto::v1::{
    DiscardFailuresReply, DiscardFailuresRequest, EmitterStats, EvictPluginReply,
    EvictPluginRequest, ListFailuresReply, ListFailuresRequest, ListPluginsReply,
    ListPluginsRequest, PluginEntry, ResendFailuresReply, ResendFailuresRequest, StatsReply,
    StatsRequest, StoredFailure, TapBatch, TapEvent, TapRequest,
};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// The admin service of one gateway.
#[derive(Debug, Clone)]
pub(crate) struct AdminService {
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) registry: Arc<polku_discovery::Registry>,
    pub(crate) access: AccessPolicy,
    /// How long a resend waits for room in the buffer.
    pub(crate) buffer_timeout: Duration,
}

impl AdminService {
    /// The service, for the gRPC server.
    pub(crate) fn server(self) -> AdminServer<AdminService> {
        AdminServer::new(self)
    }

    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let auth = req.metadata().get("authorization").map(|v| v.as_bytes());
        let peer = req.remote_addr();
        self.access.check(auth, peer).map_err(|denied| match denied {
            Denied::BadToken => Status::unauthenticated(
                "missing or invalid admin token: send `authorization: Bearer <token>` metadata (POLKU_ADMIN_TOKEN)",
            ),
            Denied::LoopbackNotTrusted => Status::permission_denied(
                "the admin service needs POLKU_ADMIN_TOKEN: loopback peers are not trusted (POLKU_TRUST_LOOPBACK=false)",
            ),
            Denied::NotLoopback => Status::permission_denied(format!(
                "without POLKU_ADMIN_TOKEN only loopback peers may use the admin service (this peer: {})",
                peer.map(|p| p.to_string())
                    .unwrap_or_else(|| "unknown".into())
            )),
        })
    }

    /// Runs `f` on the failure store of `emitter`, or says why there is
    /// none.
    fn with_store<R>(
        &self,
        emitter: &str,
        f: impl FnOnce(&polku_core::delivery::FailureStore) -> R,
    ) -> Result<R, Status> {
        let e = self.pipeline.emitter(emitter).map_err(resend_status)?;
        match e.delivery_state().and_then(|d| d.failure_store()) {
            Some(store) => Ok(f(store)),
            None => Err(resend_status(ResendError::NoFailureStore {
                name: emitter.to_owned(),
            })),
        }
    }
}

fn resend_status(e: ResendError) -> Status {
    match e {
        ResendError::UnknownEmitter { .. } | ResendError::NoFailureStore { .. } => {
            Status::not_found(e.to_string())
        }
        ResendError::NotRegistered { .. } => Status::failed_precondition(e.to_string()),
        ResendError::Buffer(SubmitError::ShuttingDown) => Status::unavailable(e.to_string()),
        ResendError::Buffer(_) => Status::resource_exhausted(e.to_string()),
    }
}

/// A tap's stream of events: its subscription, turned into messages.
type TapStream = Pin<Box<dyn futures_util::Stream<Item = Result<TapBatch, Status>> + Send>>;

/// The most tap events one message carries.
const TAP_BATCH: usize = 256;

fn tap_stream(sub: Subscription, stage: String) -> TapStream {
    Box::pin(futures_util::stream::unfold(sub, move |mut sub| {
        let stage = stage.clone();
        async move {
            // What is ready goes in one message: one per event would cost
            // the gateway a frame each.
            let first = sub.rx.recv().await?;
            let mut events = Vec::with_capacity(16);
            let mut next = Some(first);
            while let Some(t) = next {
                events.push(TapEvent {
                    event: Some(t.event),
                    stage: stage.clone(),
                    reason: t.reason,
                });
                next = if events.len() < TAP_BATCH {
                    sub.rx.try_recv().ok()
                } else {
                    None
                };
            }
            let msg = TapBatch {
                events,
                lost: sub.lost(),
            };
            Some((Ok(msg), sub))
        }
    }))
}

#[tonic::async_trait]
impl Admin for AdminService {
    type TapStream = TapStream;

    async fn tap(&self, req: Request<TapRequest>) -> Result<Response<TapStream>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let stage = Stage::parse(&r.stage).ok_or_else(|| {
            Status::invalid_argument(format!(
                "unknown stage {:?}: expected accepted, rejected, dropped or emitter:NAME",
                r.stage
            ))
        })?;
        if let Stage::Emitter(name) = &stage {
            self.pipeline.emitter(name).map_err(resend_status)?;
        }
        let name = stage.name();
        let sub = self
            .pipeline
            .taps
            .subscribe(stage, r.source, r.event_type, r.sample);
        Ok(Response::new(tap_stream(sub, name)))
    }

    async fn stats(&self, req: Request<StatsRequest>) -> Result<Response<StatsReply>, Status> {
        self.authorize(&req)?;
        let s = self.pipeline.snapshot();
        let emitters = s
            .emitters
            .iter()
            .map(|(name, e)| EmitterStats {
                name: name.clone(),
                emitted: e.emitted,
                failed: e.failed,
                queued: e.queued,
                dropped_queue_full: e.dropped_queue_full,
                breaker: e.breaker.map(|b| b.as_str().to_owned()).unwrap_or_default(),
                retries: e.retries,
                failure_store_events: e.failure_store_events,
            })
            .collect();
        let dropped_by = s
            .middleware
            .iter()
            .flat_map(|m| {
                m.dropped
                    .iter()
                    .map(move |(r, n)| (format!("{}:{}", m.name, r.as_str()), *n))
            })
            .collect();
        Ok(Response::new(StatsReply {
            unix_ns: polku_core::now_unix_ns(),
            received: s.received,
            accepted: s.accepted,
            dropped: s.dropped,
            rejected: s
                .rejected_events
                .iter()
                .map(|(r, n)| (r.as_str().to_owned(), *n))
                .collect(),
            dropped_by,
            buffer_events: s.buffer_depth,
            buffer_capacity: s.buffer_capacity,
            buffer_bytes: s.buffer_bytes,
            buffer_max_bytes: s.buffer_max_bytes,
            emitters,
            plugins: plugins(&self.registry),
        }))
    }

    async fn list_plugins(
        &self,
        req: Request<ListPluginsRequest>,
    ) -> Result<Response<ListPluginsReply>, Status> {
        self.authorize(&req)?;
        Ok(Response::new(ListPluginsReply {
            plugins: plugins(&self.registry),
        }))
    }

    async fn evict_plugin(
        &self,
        req: Request<EvictPluginRequest>,
    ) -> Result<Response<EvictPluginReply>, Status> {
        self.authorize(&req)?;
        let id = req.into_inner().id;
        if self.registry.evict(&id) {
            Ok(Response::new(EvictPluginReply {}))
        } else {
            Err(Status::not_found(format!(
                "no plugin with id {id:?} is registered (list them with `polku plugins`)"
            )))
        }
    }

    async fn list_failures(
        &self,
        req: Request<ListFailuresRequest>,
    ) -> Result<Response<ListFailuresReply>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let limit = if r.limit == 0 { 100 } else { r.limit as usize };
        let reply = self.with_store(&r.emitter, |store| ListFailuresReply {
            failures: store
                .list(r.offset as usize, limit.min(10_000))
                .into_iter()
                .map(|f| StoredFailure {
                    event: Some(f.event),
                    reason: f.reason,
                    retryable: f.retryable,
                    failed_at_unix_ns: f.failed_at_unix_ns,
                })
                .collect(),
            total: store.len() as u64,
        })?;
        Ok(Response::new(reply))
    }

    async fn resend_failures(
        &self,
        req: Request<ResendFailuresRequest>,
    ) -> Result<Response<ResendFailuresReply>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        self.with_store(&r.emitter, |_| ())?;
        let limit = if r.limit == 0 { 1000 } else { r.limit as usize };
        let resent = self
            .pipeline
            .resend_failures(
                &r.emitter,
                limit.min(10_000),
                Wait::For(self.buffer_timeout),
            )
            .await
            .map_err(resend_status)?;
        let remaining = self.with_store(&r.emitter, |s| s.len()).unwrap_or(0);
        Ok(Response::new(ResendFailuresReply {
            resent: resent as u64,
            remaining: remaining as u64,
        }))
    }

    async fn discard_failures(
        &self,
        req: Request<DiscardFailuresRequest>,
    ) -> Result<Response<DiscardFailuresReply>, Status> {
        self.authorize(&req)?;
        let r = req.into_inner();
        let n = self.with_store(&r.emitter, |s| s.clear())?;
        tracing::warn!(emitter = %r.emitter, events = n, "failure store discarded by an operator");
        Ok(Response::new(DiscardFailuresReply {
            discarded: n as u64,
        }))
    }
}

fn plugins(registry: &polku_discovery::Registry) -> Vec<PluginEntry> {
    registry
        .list()
        .into_iter()
        .map(|p| PluginEntry {
            id: p.id,
            name: p.name,
            kind: p.kind.to_owned(),
            address: p.address,
            last_heartbeat_ms_ago: p.since_heartbeat.as_millis() as u64,
        })
        .collect()
}
