//! Who may use the gateway: the tokens that may ingest, the admin token,
//! the plugin token, and whether loopback peers are trusted without one.

use super::{ConfigError, Env, Secret};
use polku_core::auth::AccessPolicy;

/// Who may ingest, use the admin endpoints and register plugins.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AccessSettings {
    /// `POLKU_INGEST_TOKENS`: bearer tokens that may ingest (comma-separated);
    /// empty means ingestion is open. Health and metrics stay open.
    pub ingest_tokens: Vec<Secret>,
    /// `POLKU_ADMIN_TOKEN`: when set, the admin endpoints (failure stores)
    /// need this bearer token; when not, only loopback peers may use them.
    pub admin_token: Option<Secret>,
    /// `POLKU_PLUGIN_TOKEN`: when set, plugin registration needs this bearer
    /// token; when not, only loopback peers may register.
    pub plugin_token: Option<Secret>,
    /// `POLKU_TRUST_LOOPBACK`: without `POLKU_ADMIN_TOKEN` (or
    /// `POLKU_PLUGIN_TOKEN`), loopback peers may use the admin endpoints (or
    /// the plugin registry). Turn it off behind a same-host proxy or sidecar,
    /// whose callers all arrive from loopback. A token, when set, is always
    /// required. Default true.
    pub trust_loopback: bool,
}

impl Default for AccessSettings {
    fn default() -> Self {
        AccessSettings {
            ingest_tokens: Vec::new(),
            admin_token: None,
            plugin_token: None,
            trust_loopback: true,
        }
    }
}

impl AccessSettings {
    /// Who may use the admin endpoints.
    pub fn admin_policy(&self) -> AccessPolicy {
        AccessPolicy::new(
            self.admin_token.as_ref().map(Secret::expose),
            self.trust_loopback,
        )
    }

    /// Who may use the plugin registry.
    pub fn plugin_policy(&self) -> AccessPolicy {
        AccessPolicy::new(
            self.plugin_token.as_ref().map(Secret::expose),
            self.trust_loopback,
        )
    }

    pub(super) fn read(&mut self, env: &Env<'_>) -> Result<(), ConfigError> {
        if let Some((_, tokens)) = env.list("POLKU_INGEST_TOKENS") {
            let printable = tokens
                .iter()
                .all(|t| t.bytes().all(|b| b.is_ascii_graphic()));
            if tokens.is_empty() || !printable {
                return Err(Env::hidden(
                    "POLKU_INGEST_TOKENS",
                    "one or more tokens of printable characters, comma-separated",
                ));
            }
            self.ingest_tokens = tokens.into_iter().map(Secret::from).collect();
        }
        if let Some(t) = env.secret(
            "POLKU_ADMIN_TOKEN",
            "a non-empty token of printable characters",
        )? {
            self.admin_token = Some(t);
        }
        if let Some(t) = env.secret(
            "POLKU_PLUGIN_TOKEN",
            "a token of printable characters, without spaces",
        )? {
            self.plugin_token = Some(t);
        }
        if let Some(b) = env.switch("POLKU_TRUST_LOOPBACK", "true or false")? {
            self.trust_loopback = b;
        }
        Ok(())
    }
}
