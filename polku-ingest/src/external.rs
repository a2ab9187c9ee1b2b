//! Raw bytes to a plugin: any process that serves `polku.v1.IngestorPlugin`.

use async_trait::async_trait;
use bytes::Bytes;
use polku_core::address::normalize_address;
use polku_core::{IngestError, Ingested, Ingestor, RecordError};
use polku_proto::v1::IngestRequest;
use polku_proto::v1::ingestor_plugin_client::IngestorPluginClient;
use std::time::Duration;
use tokio::sync::OnceCell;
use tonic::transport::Channel;

/// The largest reply accepted from an ingestor plugin.
const MAX_PLUGIN_REPLY_BYTES: usize = 64 * 1024 * 1024;

pub use polku_core::DEFAULT_PLUGIN_TIMEOUT;

/// Turns raw bytes into events through an ingestor plugin over gRPC
/// (`IngestorPlugin.Ingest`). It serves one source: raw bytes sent with that
/// source (and no format) go to the plugin.
///
/// ```
/// use polku_ingest::ExternalIngestor;
///
/// let csv = ExternalIngestor::new("csv", "http://localhost:9002");
/// # drop(csv);
/// ```
///
/// The plugin's per-record errors reach the sender as rejected records. Every
/// call has a timeout ([`DEFAULT_PLUGIN_TIMEOUT`]).
#[derive(Debug)]
pub struct ExternalIngestor {
    name: String,
    source: String,
    more_sources: Vec<String>,
    formats: Vec<String>,
    address: Result<String, String>,
    timeout: Duration,
    tls: polku_proto::tls::ClientTls,
    client: OnceCell<IngestorPluginClient<Channel>>,
}

impl ExternalIngestor {
    /// An ingestor for raw bytes from `source`, served by the plugin at `address`.
    pub fn new(source: impl Into<String>, address: impl AsRef<str>) -> Self {
        let source = source.into();
        ExternalIngestor {
            name: format!("plugin:{source}"),
            source,
            more_sources: Vec::new(),
            formats: Vec::new(),
            address: normalize_address(address.as_ref()).map_err(|e| e.to_string()),
            timeout: DEFAULT_PLUGIN_TIMEOUT,
            tls: polku_proto::tls::ClientTls::new(),
            client: OnceCell::new(),
        }
    }

    /// Also serve these sources.
    pub fn with_sources<I, S>(mut self, sources: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.more_sources
            .extend(sources.into_iter().map(Into::into));
        self
    }

    /// Names the ingestor (for logs and metrics; default `plugin:<source>`).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Also read these formats (for example `text/csv`) from any source.
    pub fn with_formats<I, S>(mut self, formats: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.formats.extend(formats.into_iter().map(Into::into));
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

    fn unavailable(&self, message: String) -> IngestError {
        IngestError::Unavailable {
            ingestor: self.name.clone(),
            message,
        }
    }

    async fn client(&self) -> Result<IngestorPluginClient<Channel>, IngestError> {
        let address = self
            .address
            .as_ref()
            .map_err(|e| self.unavailable(e.clone()))?;
        let client = self
            .client
            .get_or_try_init(|| async {
                let endpoint = self
                    .tls
                    .endpoint(address)
                    .map_err(|e| self.unavailable(format!("invalid plugin address: {e}")))?
                    .connect_timeout(self.timeout)
                    .timeout(self.timeout);
                // Requests are already limited by the gateway; replies can
                // be larger than their input (events carry metadata).
                Ok::<_, IngestError>(
                    IngestorPluginClient::new(endpoint.connect_lazy())
                        .max_encoding_message_size(usize::MAX)
                        .max_decoding_message_size(MAX_PLUGIN_REPLY_BYTES),
                )
            })
            .await?;
        Ok(client.clone())
    }
}

#[async_trait]
impl Ingestor for ExternalIngestor {
    fn name(&self) -> &str {
        &self.name
    }

    fn sources(&self) -> Vec<String> {
        std::iter::once(self.source.clone())
            .chain(self.more_sources.iter().cloned())
            .collect()
    }

    fn formats(&self) -> Vec<String> {
        self.formats.clone()
    }

    #[tracing::instrument(level = "debug", name = "polku.ingest.external", skip_all, fields(bytes = data.len()))]
    async fn ingest(&self, source: &str, data: Bytes) -> Result<Ingested, IngestError> {
        let mut client = self.client().await?;
        let request = IngestRequest {
            source: source.to_owned(),
            data,
            format: String::new(),
        };
        let reply = match tokio::time::timeout(self.timeout, client.ingest(request)).await {
            Err(_) => {
                return Err(self.unavailable(format!(
                    "the plugin at {} did not answer within {:?}",
                    self.address.as_deref().unwrap_or("?"),
                    self.timeout
                )));
            }
            // The input can never succeed as it is: tell the sender (400/413),
            // do not invite a retry.
            Ok(Err(status))
                if matches!(
                    polku_proto::status::classify(&status),
                    polku_proto::status::Failure::BadRequest
                        | polku_proto::status::Failure::TooLarge
                ) =>
            {
                return Err(IngestError::Malformed {
                    format: "plugin",
                    message: format!("the {} plugin says: {}", self.source, status.message()),
                });
            }
            // The plugin refuses the gateway itself, or is down: not the
            // sender's fault (503).
            Ok(Err(status)) => {
                return Err(self.unavailable(format!(
                    "the plugin at {} failed: {} ({:?})",
                    self.address.as_deref().unwrap_or("?"),
                    status.message(),
                    status.code()
                )));
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        Ok(Ingested {
            events: reply.events,
            errors: reply
                .errors
                .into_iter()
                .map(|e| RecordError {
                    index: e.index as usize,
                    message: e.message,
                })
                .collect(),
        })
    }
}
