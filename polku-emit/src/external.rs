//! Events to a plugin: any process that serves `polku.v1.EmitterPlugin`.

use async_trait::async_trait;
use polku_core::address::normalize_address;
use polku_core::{EmitError, Emitter, Event, EventFailure};
use polku_proto::status::{Failure, classify};
use polku_proto::v1::EmitRequest;
use polku_proto::v1::emitter_plugin_client::EmitterPluginClient;
use std::time::Duration;
use tokio::sync::OnceCell;
use tonic::transport::Channel;

use crate::split::Sent;

pub use polku_core::DEFAULT_PLUGIN_TIMEOUT;

/// Sends batches to an emitter plugin over gRPC (`EmitterPlugin.Emit`).
///
/// ```
/// use polku_emit::ExternalEmitter;
///
/// // POLKU knows it as "slack": events routed to "slack" (or to everyone) go there.
/// let slack = ExternalEmitter::new("slack", "http://localhost:9001");
/// let also = ExternalEmitter::new("audit", "localhost:9002"); // a scheme is optional
/// # drop((slack, also));
/// ```
///
/// The connection is made on first use and made again by itself after a
/// failure. Every call has a timeout ([`DEFAULT_PLUGIN_TIMEOUT`]), so a plugin
/// that hangs costs its own queue time, never the gateway's. An address that
/// cannot work is reported by `healthy()` and by every `emit`. A batch goes
/// in requests under [`max_request_bytes`](Self::max_request_bytes); one the
/// plugin still refuses as too large is split and sent again, and what one
/// request delivered stays delivered if a later one fails.
#[derive(Debug)]
pub struct ExternalEmitter {
    name: String,
    address: Result<String, String>,
    timeout: Duration,
    tls: polku_proto::tls::ClientTls,
    client: OnceCell<EmitterPluginClient<Channel>>,
    max_request_bytes: usize,
}

impl ExternalEmitter {
    /// An emitter named `name` (what `route_to` uses) for the plugin at `address`.
    pub fn new(name: impl Into<String>, address: impl AsRef<str>) -> Self {
        ExternalEmitter {
            name: name.into(),
            address: normalize_address(address.as_ref()).map_err(|e| e.to_string()),
            timeout: DEFAULT_PLUGIN_TIMEOUT,
            tls: polku_proto::tls::ClientTls::new(),
            client: OnceCell::new(),
            max_request_bytes: crate::split::DEFAULT_MAX_REQUEST_BYTES,
        }
    }

    /// Keeps each `Emit` request under this many encoded bytes (default
    /// [`DEFAULT_MAX_REQUEST_BYTES`](crate::DEFAULT_MAX_REQUEST_BYTES): the
    /// gRPC libraries' default limit). A request the plugin still refuses
    /// as too large is split and sent again.
    pub fn max_request_bytes(mut self, max: usize) -> Self {
        self.max_request_bytes = max.max(1);
        self
    }

    /// Sets the timeout of every call to the plugin.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connects to an `https://` plugin address with this CA and client
    /// certificate.
    pub fn with_tls(mut self, tls: polku_proto::tls::ClientTls) -> Self {
        self.tls = tls;
        self
    }

    /// The plugin's address, with a scheme, or why it cannot be used.
    pub fn address(&self) -> Result<&str, &str> {
        self.address.as_deref().map_err(String::as_str)
    }

    async fn client(&self) -> Result<EmitterPluginClient<Channel>, EmitError> {
        let address = self
            .address
            .as_ref()
            .map_err(|e| EmitError::Rejected { message: e.clone() })?;
        let client = self
            .client
            .get_or_try_init(|| async {
                let endpoint = self
                    .tls
                    .endpoint(address)
                    .map_err(|e| EmitError::Rejected {
                        message: format!("invalid plugin address {address:?}: {e}"),
                    })?
                    .connect_timeout(self.timeout);
                // Lazy: the channel connects when used, and reconnects. Each
                // call is bounded by `self.timeout` where it is made.
                Ok::<_, EmitError>(EmitterPluginClient::new(endpoint.connect_lazy()))
            })
            .await?;
        Ok(client.clone())
    }

    fn call_failed(&self, what: &str, status: tonic::Status) -> EmitError {
        let message = format!(
            "plugin {} at {} failed {what}: {} ({:?})",
            self.name,
            self.address().unwrap_or("?"),
            status.message(),
            status.code()
        );
        // A size refusal left over here (a lone event too large) is final too.
        match classify(&status) {
            Failure::Transient => {
                EmitError::unavailable(message, Some(Box::new(status) as polku_core::BoxError))
            }
            Failure::TooLarge | Failure::BadRequest | Failure::Refused => {
                EmitError::Rejected { message }
            }
        }
    }
}

impl ExternalEmitter {
    /// One `Emit` call with these events.
    async fn emit_once(&self, events: &[Event]) -> Sent {
        match self.emit_call(events).await {
            Ok(()) => Sent::Ok,
            Err(Once::TooLarge(m)) => Sent::TooLarge(m),
            Err(Once::Failed(e)) => Sent::Failed(e),
        }
    }

    async fn emit_call(&self, events: &[Event]) -> Result<(), Once> {
        let mut client = self.client().await?;
        let request = EmitRequest {
            events: events.to_vec(),
        };
        let reply = match tokio::time::timeout(self.timeout, client.emit(request)).await {
            Err(_) => {
                return Err(Once::Failed(EmitError::unavailable(
                    format!(
                        "plugin {} at {} did not answer within {:?}",
                        self.name,
                        self.address().unwrap_or("?"),
                        self.timeout
                    ),
                    None,
                )));
            }
            Ok(Err(status)) if classify(&status) == Failure::TooLarge => {
                return Err(Once::TooLarge(format!(
                    "plugin {} at {}: {}",
                    self.name,
                    self.address().unwrap_or("?"),
                    status.message()
                )));
            }
            Ok(Err(status)) => return Err(self.call_failed("to emit", status).into()),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let n = events.len();
        if reply.failures.is_empty() {
            let delivered = reply.success_count as usize;
            if delivered >= n {
                return Ok(());
            }
            // The plugin did not say which failed: take the first
            // `delivered` as done and the rest as failed, so that nothing is
            // counted as delivered that may not be.
            let failures = (delivered..n)
                .map(|index| EventFailure {
                    index,
                    message: format!(
                        "plugin reported {delivered} of {n} delivered without saying which failed"
                    ),
                    retryable: true,
                })
                .collect();
            return Err(EmitError::Partial { failures }.into());
        }
        // One failure per event: by index, else by id; repeats and failures
        // that match no event are ignored.
        let mut by_index = std::collections::BTreeMap::new();
        for f in reply.failures {
            let index = usize::try_from(f.index)
                .ok()
                .filter(|i| *i < n && (f.event_id.is_empty() || events[*i].id == f.event_id))
                .or_else(|| {
                    (!f.event_id.is_empty())
                        .then(|| events.iter().position(|e| e.id == f.event_id))
                        .flatten()
                });
            if let Some(index) = index {
                by_index.entry(index).or_insert(EventFailure {
                    index,
                    message: f.message,
                    retryable: f.retryable,
                });
            }
        }
        // If the plugin says fewer were delivered than it lists failures for
        // the others, the unlisted rest counts as failed too: never count as
        // delivered what may not be.
        let delivered = (reply.success_count as usize).min(n);
        let mut missing = n.saturating_sub(delivered).saturating_sub(by_index.len());
        for index in (0..n).rev() {
            if missing == 0 {
                break;
            }
            if let std::collections::btree_map::Entry::Vacant(v) = by_index.entry(index) {
                v.insert(EventFailure {
                    index,
                    message: "the plugin did not say what became of this event".to_owned(),
                    retryable: true,
                });
                missing -= 1;
            }
        }
        if by_index.is_empty() {
            return Ok(());
        }
        let failures = by_index.into_values().collect();
        Err(EmitError::Partial { failures }.into())
    }
}

/// How one call went, before it is a [`Sent`].
enum Once {
    TooLarge(String),
    Failed(EmitError),
}

impl From<EmitError> for Once {
    fn from(e: EmitError) -> Self {
        Once::Failed(e)
    }
}

#[async_trait]
impl Emitter for ExternalEmitter {
    fn name(&self) -> &str {
        &self.name
    }

    #[tracing::instrument(level = "debug", name = "polku.emit.external", skip_all, fields(emitter = %self.name, events = events.len()))]
    async fn emit(&self, events: &[Event]) -> Result<(), EmitError> {
        crate::split::send_chunked(events, self.max_request_bytes, |range| {
            self.emit_once(&events[range])
        })
        .await
    }

    fn requests_for(&self, events: &[Event]) -> usize {
        crate::split::chunks(events, self.max_request_bytes)
            .len()
            .max(1)
    }

    async fn healthy(&self) -> bool {
        let Ok(mut client) = self.client().await else {
            return false;
        };
        let probe =
            tokio::time::timeout(self.timeout.min(Duration::from_secs(2)), client.health(()));
        matches!(probe.await, Ok(Ok(r)) if r.get_ref().healthy)
    }

    async fn shutdown(&self) -> Result<(), EmitError> {
        let mut client = self.client().await?;
        match tokio::time::timeout(self.timeout, client.shutdown(())).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(self.call_failed("to shut down", status)),
            Err(_) => Err(EmitError::unavailable(
                format!(
                    "plugin {} did not finish its shutdown within {:?}",
                    self.name, self.timeout
                ),
                None,
            )),
        }
    }
}
