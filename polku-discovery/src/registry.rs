//! The `polku.v1.PluginRegistry` service: plugins register themselves, send
//! heartbeats, and unregister.

use polku_core::PluginHost;
use polku_core::address::normalize_address;
use polku_core::auth::{AccessPolicy, Denied};
use polku_proto::v1::emitter_plugin_client::EmitterPluginClient;
use polku_proto::v1::ingestor_plugin_client::IngestorPluginClient;
use polku_proto::v1::plugin_registry_server::{PluginRegistry, PluginRegistryServer};
use polku_proto::v1::{
    HeartbeatRequest, HeartbeatResponse, PluginInfo, PluginType, RegisterRequest, RegisterResponse,
    UnregisterRequest, UnregisterResponse,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

/// The registry's settings: which plugin addresses it takes, how many
/// plugins, their heartbeats, and its calls to them. Who may call it is an
/// [`AccessPolicy`] given to [`Registry::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegistryConfig {
    /// Hosts a plugin's address may name (default: loopback only).
    pub allowed_hosts: Vec<String>,
    /// The most plugins registered at once.
    pub max_plugins: usize,
    /// How often plugins are told to send heartbeats.
    pub heartbeat_interval: Duration,
    /// A plugin silent for this long is removed.
    pub heartbeat_timeout: Duration,
    /// Timeout of the calls the registry makes to a plugin (Info).
    pub call_timeout: Duration,
    /// TLS for `https://` plugin addresses: the CA and client certificate.
    pub tls: polku_proto::tls::ClientTls,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            max_plugins: 64,
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(15),
            call_timeout: polku_core::DEFAULT_PLUGIN_TIMEOUT,
            tls: polku_proto::tls::ClientTls::new(),
        }
    }
}

#[derive(Debug, Clone)]
struct Record {
    name: String,
    kind: PluginType,
    emitter_name: String,
    sources: Vec<String>,
    formats: Vec<String>,
    address: String,
    claims: Vec<String>,
    last_seen: Instant,
}

#[derive(Debug, Default)]
struct State {
    by_id: HashMap<String, Record>,
    /// What a plugin claims (`emitter:slack`, `source:csv`) → its id.
    claims: HashMap<String, String>,
}

/// A registered plugin, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSummary {
    /// The id the registry gave it.
    pub id: String,
    /// Its name (an emitter plugin's emitter is called so).
    pub name: String,
    /// `emitter` or `ingestor`.
    pub kind: &'static str,
    /// Where the gateway calls it.
    pub address: String,
    /// Time since its last heartbeat (or registration).
    pub since_heartbeat: Duration,
}

/// The plugin registry. Serve it with [`Registry::service`]; run
/// [`Registry::spawn_reaper`] to remove plugins that stop sending heartbeats.
///
/// Who may take a name: a plugin that registers again with the same address
/// (it restarted) takes its name back at once, and its old id stops working.
/// While a registration is alive, a plugin at another address cannot take
/// its name (ALREADY_EXISTS) until the first unregisters or misses its
/// heartbeats. Names of components configured in code cannot be taken.
#[derive(Debug)]
pub struct Registry {
    config: RegistryConfig,
    /// Who may call: the token, else loopback peers.
    access: AccessPolicy,
    host: Arc<dyn PluginHost>,
    state: Mutex<State>,
}

impl Registry {
    /// A registry that adds and removes plugins through `host`, for the
    /// callers `access` lets in (a token, else loopback peers).
    pub fn new(
        config: RegistryConfig,
        access: AccessPolicy,
        host: Arc<dyn PluginHost>,
    ) -> Arc<Self> {
        Arc::new(Registry {
            access,
            config,
            host,
            state: Mutex::default(),
        })
    }

    /// The gRPC service.
    pub fn service(self: &Arc<Self>) -> PluginRegistryServer<RegistryService> {
        PluginRegistryServer::new(RegistryService(self.clone()))
    }

    /// How many plugins are registered.
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    /// Whether no plugin is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The plugins registered now, by id.
    pub fn list(&self) -> Vec<PluginSummary> {
        let now = Instant::now();
        let mut out: Vec<PluginSummary> = self
            .lock()
            .by_id
            .iter()
            .map(|(id, r)| PluginSummary {
                id: id.clone(),
                name: r.name.clone(),
                kind: match r.kind {
                    PluginType::Emitter => "emitter",
                    _ => "ingestor",
                },
                address: r.address.clone(),
                since_heartbeat: now.saturating_duration_since(r.last_seen),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Removes a plugin as if it had unregistered (an operator's call);
    /// false if no plugin has this id.
    pub fn evict(&self, id: &str) -> bool {
        let removed = remove(&mut self.lock(), id);
        match removed {
            Some(r) => {
                warn!(plugin_id = %id, plugin = %r.name, "plugin evicted by an operator");
                self.detach(&r);
                true
            }
            None => false,
        }
    }

    /// Removes plugins silent for longer than the heartbeat timeout, until
    /// `stop` turns true.
    pub fn spawn_reaper(self: &Arc<Self>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
        let me = self.clone();
        let every = (me.config.heartbeat_timeout / 4).max(Duration::from_millis(10));
        let span = tracing::info_span!("polku.discovery.reaper");
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                loop {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        _ = tokio::time::sleep(every) => {}
                    }
                    me.reap(Instant::now());
                }
            },
            span,
        ))
    }

    fn reap(&self, now: Instant) {
        let expired: Vec<(String, Record)> = {
            let mut st = self.lock();
            let ids: Vec<String> = st
                .by_id
                .iter()
                .filter(|(_, r)| now.duration_since(r.last_seen) > self.config.heartbeat_timeout)
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| remove(&mut st, &id).map(|r| (id, r)))
                .collect()
        };
        for (id, r) in expired {
            warn!(plugin_id = %id, plugin = %r.name, address = %r.address, "plugin missed its heartbeats; removed");
            self.detach(&r);
        }
    }

    fn detach(&self, r: &Record) {
        match r.kind {
            PluginType::Emitter => self.host.detach_emitter(&r.emitter_name),
            _ => self.host.detach_ingestor(&r.sources, &r.formats),
        }
    }

    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let auth = req.metadata().get("authorization").map(|v| v.as_bytes());
        let peer = req.remote_addr();
        self.access.check(auth, peer).map_err(|denied| match denied {
            Denied::BadToken => Status::unauthenticated(
                "missing or invalid plugin token: send `authorization: Bearer <token>` metadata (POLKU_PLUGIN_TOKEN)",
            ),
            Denied::LoopbackNotTrusted => Status::permission_denied(
                "the registry needs POLKU_PLUGIN_TOKEN: loopback peers are not trusted (POLKU_TRUST_LOOPBACK=false)",
            ),
            Denied::NotLoopback => Status::permission_denied(format!(
                "without POLKU_PLUGIN_TOKEN only loopback peers may use the registry (this peer: {})",
                peer.map(|p| p.to_string())
                    .unwrap_or_else(|| "unknown".into())
            )),
        })
    }

    fn check_host(&self, uri: &str) -> Result<(), Status> {
        let host = host_of(uri);
        let allowed = self
            .config
            .allowed_hosts
            .iter()
            .any(|h| h.trim_matches(['[', ']']).eq_ignore_ascii_case(host));
        if allowed {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "plugin address host {host:?} is not allowed (allowed: {}; widen with POLKU_PLUGIN_ALLOWED_HOSTS)",
                self.config.allowed_hosts.join(", ")
            )))
        }
    }

    /// Calls the plugin's Info and checks that it is what it registered as.
    async fn verify(&self, uri: &str, claimed: &PluginInfo) -> Result<(), Status> {
        let t = self.config.call_timeout;
        let endpoint = self
            .config
            .tls
            .endpoint(uri)
            .map_err(|e| Status::invalid_argument(format!("invalid plugin address {uri:?}: {e}")))?
            .connect_timeout(t)
            .timeout(t);
        let channel = match tokio::time::timeout(t, endpoint.connect()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(Status::unavailable(format!(
                    "cannot reach the plugin at {uri}: {e}"
                )));
            }
            Err(_) => {
                return Err(Status::unavailable(format!(
                    "cannot reach the plugin at {uri} within {t:?}"
                )));
            }
        };
        let kind = claimed.r#type();
        let answer = match kind {
            PluginType::Emitter => {
                tokio::time::timeout(t, EmitterPluginClient::new(channel).info(())).await
            }
            _ => tokio::time::timeout(t, IngestorPluginClient::new(channel).info(())).await,
        };
        let actual = match answer {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) => {
                return Err(Status::unavailable(format!(
                    "the plugin at {uri} did not answer Info as a {} plugin: {}",
                    kind_name(kind),
                    s.message()
                )));
            }
            Err(_) => {
                return Err(Status::unavailable(format!(
                    "the plugin at {uri} did not answer Info within {t:?}"
                )));
            }
        };
        let same = actual.r#type == claimed.r#type
            && match kind {
                PluginType::Emitter => actual.emitter_name == claimed.emitter_name,
                _ => sorted(&actual.sources) == sorted(&claimed.sources),
            };
        if !same {
            return Err(Status::failed_precondition(format!(
                "the plugin at {uri} says it is {}, but it registered as {}",
                describe(&actual),
                describe(claimed)
            )));
        }
        Ok(())
    }

    #[tracing::instrument(
        level = "debug",
        name = "polku.discovery.registry",
        skip_all,
        fields(call = "register")
    )]
    async fn register(&self, req: Request<RegisterRequest>) -> Result<RegisterResponse, Status> {
        self.authorize(&req)?;
        let RegisterRequest { info, address } = req.into_inner();
        let info = info.ok_or_else(|| Status::invalid_argument("`info` is required"))?;
        let kind = PluginType::try_from(info.r#type).unwrap_or(PluginType::Unspecified);
        let claims: Vec<String> = match kind {
            PluginType::Emitter => {
                let n = &info.emitter_name;
                if n.is_empty() || n.len() > 128 || !n.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(Status::invalid_argument(
                        "an emitter plugin needs an emitter_name of 1 to 128 printable characters, without spaces",
                    ));
                }
                vec![format!("emitter:{n}")]
            }
            PluginType::Ingestor => {
                let ok = !info.sources.is_empty()
                    && info
                        .sources
                        .iter()
                        .chain(&info.formats)
                        .all(|s| !s.is_empty() && s.len() <= 128);
                if !ok {
                    return Err(Status::invalid_argument(
                        "an ingestor plugin needs at least one source, each 1 to 128 characters",
                    ));
                }
                info.sources
                    .iter()
                    .map(|s| format!("source:{s}"))
                    .chain(
                        info.formats
                            .iter()
                            .map(|f| format!("format:{}", f.to_ascii_lowercase())),
                    )
                    .collect()
            }
            PluginType::Unspecified => {
                return Err(Status::invalid_argument(
                    "`info.type` must be INGESTOR or EMITTER",
                ));
            }
        };
        let uri =
            normalize_address(&address).map_err(|e| Status::invalid_argument(e.to_string()))?;
        // The address is checked before anything dials it.
        self.check_host(&uri)?;
        if self.config.tls.is_configured() && !uri.starts_with("https://") {
            return Err(Status::permission_denied(format!(
                "plugin TLS is configured (POLKU_PLUGIN_TLS_*), so a plugin must register an https:// address, not {uri}"
            )));
        }
        {
            let st = self.lock();
            conflicts(&st, &claims, &uri)?;
            let replacing = replaced_ids(&st, &claims);
            if st.by_id.len() - replacing.len() >= self.config.max_plugins {
                return Err(Status::resource_exhausted(format!(
                    "{} plugins are registered, the most allowed (POLKU_PLUGIN_MAX)",
                    st.by_id.len()
                )));
            }
        }
        self.verify(&uri, &info).await?;

        // Take the lock again: things may have changed while we called Info.
        let id = uuid::Uuid::now_v7().to_string();
        let record = Record {
            name: info.name.clone(),
            kind,
            emitter_name: info.emitter_name.clone(),
            sources: info.sources.clone(),
            formats: info.formats.clone(),
            address: uri.clone(),
            claims: claims.clone(),
            last_seen: Instant::now(),
        };
        let old: Vec<Record> = {
            let mut st = self.lock();
            conflicts(&st, &claims, &uri)?;
            let olds = replaced_ids(&st, &claims);
            // Again: registrations verified at the same time must not pass
            // the cap together.
            if st.by_id.len() - olds.len() >= self.config.max_plugins {
                return Err(Status::resource_exhausted(format!(
                    "{} plugins are registered, the most allowed (POLKU_PLUGIN_MAX)",
                    st.by_id.len()
                )));
            }
            let old: Vec<Record> = olds.iter().filter_map(|id| remove(&mut st, id)).collect();
            for c in &claims {
                st.claims.insert(c.clone(), id.clone());
            }
            st.by_id.insert(id.clone(), record.clone());
            old
        };
        for o in &old {
            // An emitter of the same name is replaced in place by attach.
            if !(o.kind == PluginType::Emitter
                && kind == PluginType::Emitter
                && o.emitter_name == record.emitter_name)
            {
                self.detach(o);
            }
        }
        let attached = match kind {
            PluginType::Emitter => self.host.attach_emitter(&record.emitter_name, &uri),
            _ => self
                .host
                .attach_ingestor(&record.name, &record.sources, &record.formats, &uri),
        };
        if let Err(why) = attached {
            remove(&mut self.lock(), &id);
            return Err(Status::already_exists(why));
        }
        info!(plugin_id = %id, plugin = %record.name, kind = kind_name(kind), address = %uri, "plugin registered");
        Ok(RegisterResponse {
            plugin_id: id,
            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u64,
        })
    }

    fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Result<HeartbeatResponse, Status> {
        self.authorize(&req)?;
        let id = req.into_inner().plugin_id;
        let mut st = self.lock();
        match st.by_id.get_mut(&id) {
            Some(r) => {
                r.last_seen = Instant::now();
                Ok(HeartbeatResponse {})
            }
            None => Err(Status::not_found(format!(
                "unknown plugin id {id:?}: the gateway restarted or the plugin missed its heartbeats; register again"
            ))),
        }
    }

    fn unregister(&self, req: Request<UnregisterRequest>) -> Result<UnregisterResponse, Status> {
        self.authorize(&req)?;
        let id = req.into_inner().plugin_id;
        let removed = remove(&mut self.lock(), &id);
        match removed {
            Some(r) => {
                info!(plugin_id = %id, plugin = %r.name, "plugin unregistered");
                self.detach(&r);
                Ok(UnregisterResponse {})
            }
            None => Err(Status::not_found(format!("unknown plugin id {id:?}"))),
        }
    }
}

fn remove(st: &mut State, id: &str) -> Option<Record> {
    let r = st.by_id.remove(id)?;
    for c in &r.claims {
        if st.claims.get(c).map(String::as_str) == Some(id) {
            st.claims.remove(c);
        }
    }
    Some(r)
}

/// A claim held by a live plugin at another address is a conflict.
fn conflicts(st: &State, claims: &[String], uri: &str) -> Result<(), Status> {
    for c in claims {
        if let Some(r) = st.claims.get(c).and_then(|id| st.by_id.get(id))
            && r.address != uri
        {
            return Err(Status::already_exists(format!(
                "{c} is held by the plugin at {}; it must unregister or miss its heartbeats first",
                r.address
            )));
        }
    }
    Ok(())
}

/// Registrations that this one replaces (same claims, same address).
fn replaced_ids(st: &State, claims: &[String]) -> Vec<String> {
    let mut ids: Vec<String> = claims
        .iter()
        .filter_map(|c| st.claims.get(c).cloned())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn host_of(uri: &str) -> &str {
    let rest = uri.split_once("://").map(|(_, r)| r).unwrap_or(uri);
    if let Some(v6) = rest.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("");
    }
    rest.rsplit_once(':').map(|(h, _)| h).unwrap_or(rest)
}

fn sorted(v: &[String]) -> Vec<&str> {
    let mut s: Vec<&str> = v.iter().map(String::as_str).collect();
    s.sort_unstable();
    s
}

fn kind_name(k: PluginType) -> &'static str {
    match k {
        PluginType::Emitter => "emitter",
        PluginType::Ingestor => "ingestor",
        PluginType::Unspecified => "unspecified",
    }
}

fn describe(i: &PluginInfo) -> String {
    match i.r#type() {
        PluginType::Emitter => format!("an emitter named {:?}", i.emitter_name),
        PluginType::Ingestor => format!("an ingestor for sources {:?}", i.sources),
        PluginType::Unspecified => "a plugin of no type".to_owned(),
    }
}

/// The tonic service over a [`Registry`].
#[derive(Debug, Clone)]
pub struct RegistryService(Arc<Registry>);

#[tonic::async_trait]
impl PluginRegistry for RegistryService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        self.0.register(request).await.map(Response::new)
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.0.heartbeat(request).map(Response::new)
    }

    async fn unregister(
        &self,
        request: Request<UnregisterRequest>,
    ) -> Result<Response<UnregisterResponse>, Status> {
        self.0.unregister(request).map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn hosts_are_read_from_uris() {
        assert_eq!(host_of("http://localhost:9001"), "localhost");
        assert_eq!(host_of("http://[::1]:9001"), "::1");
        assert_eq!(host_of("https://10.0.0.1:443"), "10.0.0.1");
    }

    #[derive(Debug)]
    struct NoHost;
    impl PluginHost for NoHost {
        fn attach_emitter(&self, _: &str, _: &str) -> Result<(), String> {
            Ok(())
        }
        fn detach_emitter(&self, _: &str) {}
        fn attach_ingestor(
            &self,
            _: &str,
            _: &[String],
            _: &[String],
            _: &str,
        ) -> Result<(), String> {
            Ok(())
        }
        fn detach_ingestor(&self, _: &[String], _: &[String]) {}
    }

    #[test]
    fn peers_other_than_loopback_need_a_token() {
        let reg = Registry::new(
            RegistryConfig::default(),
            AccessPolicy::new(None, true),
            Arc::new(NoHost),
        );
        let mut req = Request::new(());
        // tonic sets the peer address from the connection; a test sets it by hand.
        req.extensions_mut()
            .insert(tonic::transport::server::TcpConnectInfo {
                local_addr: None,
                remote_addr: Some("192.0.2.7:5000".parse::<SocketAddr>().unwrap()),
            });
        let err = reg.authorize(&req).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("192.0.2.7"), "{err:?}");
        let mut local = Request::new(());
        local
            .extensions_mut()
            .insert(tonic::transport::server::TcpConnectInfo {
                local_addr: None,
                remote_addr: Some("127.0.0.1:5000".parse::<SocketAddr>().unwrap()),
            });
        assert!(reg.authorize(&local).is_ok());
        // 127.0.0.1 as a dual-stack `[::]` listener sees it.
        for (peer, ok) in [
            ("[::ffff:127.0.0.1]:5000", true),
            ("[::ffff:192.0.2.7]:5000", false),
        ] {
            let mut mapped = Request::new(());
            mapped
                .extensions_mut()
                .insert(tonic::transport::server::TcpConnectInfo {
                    local_addr: None,
                    remote_addr: Some(peer.parse::<SocketAddr>().unwrap()),
                });
            assert_eq!(reg.authorize(&mapped).is_ok(), ok, "{peer}");
        }
        // Loopback trust turned off: nobody without a token.
        let strict = Registry::new(
            RegistryConfig::default(),
            AccessPolicy::new(None, false),
            Arc::new(NoHost),
        );
        let err = strict.authorize(&local).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(err.message().contains("POLKU_TRUST_LOOPBACK"), "{err:?}");
    }
}
