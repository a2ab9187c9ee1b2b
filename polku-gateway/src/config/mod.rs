//! Configuration from `POLKU_*` environment variables, in groups: where the
//! gateway listens, who may use it, the limits on what it takes, the buffer,
//! the emitters and their delivery (retries, breaker, failure store), the
//! plugins, the process (scheduler, shutdown) and the logs. Each group reads
//! its own variables with the shared readers of `env`; a bad value is an
//! error at start-up, never skipped. Secrets are [`Secret`]s, whose `Debug`
//! hides them.
//!
//! ```
//! use polku_gateway::Config;
//!
//! let config = Config::from_lookup(|var| match var {
//!     "POLKU_BUFFER_CAPACITY" => Some("50000".into()),
//!     "POLKU_ADMIN_TOKEN" => Some("s3cret".into()),
//!     _ => None,
//! })
//! .unwrap();
//! assert_eq!(config.buffer.capacity, 50_000);
//! assert!(!format!("{config:?}").contains("s3cret"));
//! ```

mod access;
mod emit;
mod env;
mod kafka;
mod limits;
mod listen;
mod plugins;
mod process;
mod s3;

pub use access::AccessSettings;
pub use emit::{
    ConfiguredEmitter, DeliverySettings, EmitSettings, GrpcForwardSettings, StdoutMode,
    WebhookSettings,
};
pub use kafka::{KafkaEmitSettings, KafkaIngestSettings};
pub use limits::{BufferSettings, LimitSettings};
pub use listen::ListenSettings;
pub use process::{LogFormat, LogSettings, RuntimeSettings, Scheduler};
pub use s3::S3EmitSettings;

use env::Env;

/// A secret setting (a token, a signing secret, a header value): its
/// `Debug` and `Display` never show it; [`Secret::expose`] does.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A secret holding `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the code that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<hidden>")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<hidden>")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret::new(s)
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

/// A `POLKU_*` variable with a value the gateway cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?} is not valid: expected {expected}")]
pub struct ConfigError {
    /// The variable's name.
    pub var: &'static str,
    /// The value it had (`<hidden>` for a secret).
    pub value: String,
    /// What it should be.
    pub expected: &'static str,
}

/// The largest buffer POLKU_BUFFER_CAPACITY allows.
pub(crate) const MAX_BUFFER_CAPACITY: usize = 100_000_000;

/// Everything the gateway reads from its environment, by group. `Default`
/// gives the documented defaults. Its `Debug` hides the secrets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Config {
    /// Where and how the gateway listens.
    pub listen: ListenSettings,
    /// Who may ingest, use the admin endpoints and register plugins.
    pub access: AccessSettings,
    /// How big one request and one event may be.
    pub limits: LimitSettings,
    /// The buffer between ingestion and the emitters.
    pub buffer: BufferSettings,
    /// The emitters the environment configures.
    pub emit: EmitSettings,
    /// The Kafka source (`POLKU_INGEST_KAFKA_*`), off unless brokers are set.
    pub kafka_source: KafkaIngestSettings,
    /// Retries, circuit breaker and failure store of the emitters that
    /// deliver over the network (webhook, gRPC, plugins).
    pub delivery: DeliverySettings,
    /// The plugin registry and the calls to plugins. Its access (token,
    /// loopback) is in [`access`](Self::access).
    pub plugins: polku_discovery::RegistryConfig,
    /// The scheduler and the shutdown budget.
    pub runtime: RuntimeSettings,
    /// Log output.
    pub log: LogSettings,
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `get` (a variable's value, if set).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env::new(&get);
        let mut c = Config::default();
        c.listen.read(&env)?;
        c.access.read(&env)?;
        c.limits.read(&env)?;
        c.buffer.read(&env)?;
        c.emit.read(&env)?;
        c.kafka_source.read(&env)?;
        c.delivery.read(&env)?;
        plugins::read(&mut c.plugins, &env)?;
        c.runtime.read(&env)?;
        c.log.read(&env)?;
        Ok(c)
    }

    /// The delivery resilience the environment asks for, which the
    /// webhook, gRPC and plugin emitters wear.
    pub fn resilience(&self) -> Result<polku_emit::resilience::Resilience, ConfigError> {
        self.delivery.resilience(self.emit.timeout)
    }

    /// How the gateway runs each emitter the environment configures.
    pub fn emitter_options(&self) -> crate::EmitterOptions {
        crate::EmitterOptions::default().queue_full(self.emit.queue_full)
    }

    /// How the gateway runs each plugin's emitter: as the others, and each
    /// call takes the batches already queued (a plugin call is a round trip).
    pub fn plugin_emitter_options(&self) -> crate::EmitterOptions {
        self.emitter_options()
            .linger(std::time::Duration::ZERO, emit::GATHERED_CALL_EVENTS)
    }

    /// The emitters the environment asks for, with how to run each: webhooks
    /// and other gateways (wearing [`resilience`](Self::resilience)), and
    /// stdout when nothing else is configured (or when asked for). A value
    /// set in code that the emitters refuse is an error naming its variable.
    pub fn emitters(&self) -> Result<Vec<ConfiguredEmitter>, ConfigError> {
        self.emit.build(&self.resilience()?, self.emitter_options())
    }
}

#[cfg(test)]
mod tests;
