//! The gateway side of plugin registration: what a registered plugin becomes.
//!
//! A plugin emitter lives under its name across registrations
//! ([`PluginEmitter`]): registering again (a restarted process, a new
//! address) points the same emitter at the new process, so its queue,
//! failure store and counters carry on. A plugin that is removed
//! (unregistered, or silent past its heartbeat timeout) is taken out of
//! routing; what was queued for it goes to its failure store, which stays
//! listable under its name, and is resendable once it registers again.
//! `Shutdown` goes to a plugin only when the gateway stops, never when one
//! is removed or replaced: the process at its address may be its successor.

use crate::pipeline::Pipeline;
use async_trait::async_trait;
use polku_core::{EmitError, Emitter, Event, PluginHost};
use polku_emit::ExternalEmitter;
use polku_ingest::ExternalIngestor;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// A plugin's emitter under its name: delivers to the process it was last
/// registered at, or, once removed, to nobody (its events fail for good,
/// into its failure store, with a message that says so).
#[derive(Debug)]
pub(crate) struct PluginEmitter {
    name: String,
    target: RwLock<Option<Arc<ExternalEmitter>>>,
    /// True once the gateway is shutting down.
    stopping: watch::Receiver<bool>,
}

impl PluginEmitter {
    fn new(name: &str, stopping: watch::Receiver<bool>) -> Self {
        Self {
            name: name.to_owned(),
            target: RwLock::new(None),
            stopping,
        }
    }

    fn current(&self) -> Option<Arc<ExternalEmitter>> {
        self.target
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Delivers to this process from now on.
    fn retarget(&self, to: ExternalEmitter) {
        *self.target.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(to));
    }

    /// Delivers to nobody from now on.
    fn detach(&self) {
        *self.target.write().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

#[async_trait]
impl Emitter for PluginEmitter {
    fn name(&self) -> &str {
        &self.name
    }

    async fn emit(&self, events: &[Event]) -> Result<(), EmitError> {
        match self.current() {
            Some(target) => target.emit(events).await,
            None => Err(EmitError::Rejected {
                message: format!(
                    "plugin emitter {:?} was removed (it unregistered or missed its heartbeats) before these events were delivered; resend them once it registers again",
                    self.name
                ),
            }),
        }
    }

    fn requests_for(&self, events: &[Event]) -> usize {
        self.current().map_or(1, |t| t.requests_for(events))
    }

    async fn healthy(&self) -> bool {
        match self.current() {
            Some(target) => target.healthy().await,
            None => false,
        }
    }

    async fn shutdown(&self) -> Result<(), EmitError> {
        // A task that ends because its plugin was removed or replaced says
        // nothing to the process at the address: it may be the successor.
        if !*self.stopping.borrow() {
            return Ok(());
        }
        match self.current() {
            Some(target) => target.shutdown().await,
            None => Ok(()),
        }
    }
}

/// A plugin emitter and what the pipeline runs for it (it, wearing the
/// resilience layers and their failure store).
#[derive(Debug)]
struct Slot {
    plugin: Arc<PluginEmitter>,
    wrapped: Arc<dyn Emitter>,
}

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
    /// True once the gateway is shutting down.
    pub(crate) stopping: watch::Receiver<bool>,
    /// Plugin emitters by name, registered or removed (while the pipeline
    /// keeps their failure stores).
    slots: Mutex<HashMap<String, Slot>>,
}

impl GatewayPluginHost {
    /// A host for `pipeline`'s plugins.
    pub(crate) fn new(
        pipeline: Arc<Pipeline>,
        call_timeout: Duration,
        resilience: polku_emit::resilience::Resilience,
        options: crate::EmitterOptions,
        tls: polku_proto::tls::ClientTls,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        Self {
            pipeline,
            call_timeout,
            resilience,
            options,
            tls,
            stopping,
            slots: Mutex::new(HashMap::new()),
        }
    }
}

impl PluginHost for GatewayPluginHost {
    fn attach_emitter(&self, name: &str, address: &str) -> Result<(), String> {
        let target = ExternalEmitter::new(name, address)
            .with_timeout(self.call_timeout)
            .with_tls(self.tls.clone());
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get(name) {
            slot.plugin.retarget(target);
            if self.pipeline.has_plugin_emitter(name) {
                info!(emitter = %name, address = %address, "plugin emitter registered again: its queue and failure store carry on");
                return Ok(());
            }
            // Removed before, and back: with the failure store it had.
            let added = self
                .pipeline
                .add_emitter(slot.wrapped.clone(), true, self.options);
            if added.is_err() {
                slot.plugin.detach();
            }
            return added;
        }
        // Forget removed plugins whose failure stores the pipeline dropped.
        slots.retain(|n, _| self.pipeline.emitter(n).is_ok());
        let plugin = Arc::new(PluginEmitter::new(name, self.stopping.clone()));
        plugin.retarget(target);
        let wrapped: Arc<dyn Emitter> = Arc::new(self.resilience.wrap_arc(plugin.clone()));
        self.pipeline
            .add_emitter(wrapped.clone(), true, self.options)?;
        slots.insert(name.to_owned(), Slot { plugin, wrapped });
        Ok(())
    }

    fn detach_emitter(&self, name: &str) {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = slots.get(name) {
            slot.plugin.detach();
        }
        drop(slots);
        if let Some(queued) = self.pipeline.retire_plugin_emitter(name) {
            warn!(
                emitter = %name,
                queued,
                "plugin emitter removed: what is queued for it goes to its failure store, listable under its name and resendable once it registers again"
            );
        }
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
