//! The gateway side of plugin registration: what a registered plugin becomes.

use crate::pipeline::Pipeline;
use polku_core::PluginHost;
use polku_emit::ExternalEmitter;
use polku_ingest::ExternalIngestor;
use std::sync::Arc;
use std::time::Duration;

/// Turns registrations into [`ExternalEmitter`]s and [`ExternalIngestor`]s
/// in the running pipeline.
#[derive(Debug)]
pub(crate) struct GatewayPluginHost {
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) call_timeout: Duration,
    /// What every plugin emitter wears: retries of retryable failures, and
    /// a breaker that a hung or crashed plugin trips.
    pub(crate) resilience: polku_emit::resilience::Resilience,
    pub(crate) options: crate::EmitterOptions,
    /// TLS for `https://` plugin addresses.
    pub(crate) tls: polku_proto::tls::ClientTls,
}

impl PluginHost for GatewayPluginHost {
    fn attach_emitter(&self, name: &str, address: &str) -> Result<(), String> {
        let emitter = ExternalEmitter::new(name, address)
            .with_timeout(self.call_timeout)
            .with_tls(self.tls.clone());
        let emitter = self.resilience.wrap(emitter);
        self.pipeline
            .add_emitter(Arc::new(emitter), true, self.options)
    }

    fn detach_emitter(&self, name: &str) {
        self.pipeline.remove_plugin_emitter(name);
    }

    fn attach_ingestor(
        &self,
        plugin: &str,
        sources: &[String],
        formats: &[String],
        address: &str,
    ) -> Result<(), String> {
        let Some((first, rest)) = sources.split_first() else {
            return Err("an ingestor plugin needs a source".to_owned());
        };
        let ingestor = ExternalIngestor::new(first.clone(), address)
            .with_sources(rest.iter().cloned())
            .with_formats(formats.iter().cloned())
            .with_name(format!("plugin:{plugin}"))
            .with_timeout(self.call_timeout)
            .with_tls(self.tls.clone());
        self.pipeline.add_plugin_ingestor(Arc::new(ingestor))
    }

    fn detach_ingestor(&self, sources: &[String], formats: &[String]) {
        self.pipeline.remove_plugin_ingestor(sources, formats);
    }
}
