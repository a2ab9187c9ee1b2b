//! What a gateway lets plugins that register themselves do.
//!
//! The discovery crate runs the registry protocol (who may register, whether
//! the plugin is reachable and what it says it is, heartbeats); the gateway
//! owns the pipeline. This trait is how the one asks the other, without
//! either crate knowing the other.

/// The time limit of a call to a plugin, unless one is set: the emitter's
/// and the ingestor's calls, and the registry's (`POLKU_PLUGIN_TIMEOUT`).
pub const DEFAULT_PLUGIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Adds and removes plugin components in a running gateway.
pub trait PluginHost: Send + Sync + std::fmt::Debug + 'static {
    /// Adds an emitter plugin known as `name` (what `route_to` uses) at
    /// `address`. A plugin emitter of the same name is replaced; a name that
    /// belongs to an emitter configured in code is refused with the reason.
    fn attach_emitter(&self, name: &str, address: &str) -> Result<(), String>;

    /// Removes a plugin emitter; what it has queued is still delivered.
    fn detach_emitter(&self, name: &str);

    /// Adds an ingestor plugin that serves these sources and formats.
    fn attach_ingestor(
        &self,
        plugin: &str,
        sources: &[String],
        formats: &[String],
        address: &str,
    ) -> Result<(), String>;

    /// Removes what an ingestor plugin served.
    fn detach_ingestor(&self, sources: &[String], formats: &[String]);
}
