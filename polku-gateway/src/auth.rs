//! Ingest authentication: bearer tokens for gRPC and HTTP ingestion.

use polku_core::auth::{bearer_token, constant_time_eq};
use std::sync::Arc;

/// The tokens that may ingest. Empty means ingestion is open.
#[derive(Clone, Default)]
pub(crate) struct IngestTokens(Arc<Vec<Vec<u8>>>);

impl std::fmt::Debug for IngestTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the tokens themselves.
        write!(f, "IngestTokens({} configured)", self.0.len())
    }
}

impl IngestTokens {
    pub(crate) fn new(tokens: &[crate::config::Secret]) -> Self {
        IngestTokens(Arc::new(
            tokens
                .iter()
                .map(|t| t.expose().as_bytes().to_vec())
                .collect(),
        ))
    }

    pub(crate) fn is_open(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks an `authorization` header value (`Bearer <token>`).
    pub(crate) fn allows(&self, authorization: Option<&[u8]>) -> bool {
        if self.is_open() {
            return true;
        }
        let Some(value) = authorization else {
            return false;
        };
        let Some(token) = bearer_token(value) else {
            return false;
        };
        // Compare with every token, in constant time per token, so that the
        // time taken says nothing about how much of a token was right.
        self.0
            .iter()
            .fold(false, |ok, t| ok | constant_time_eq(t, token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        let open = IngestTokens::default();
        assert!(open.allows(None));
        let t = IngestTokens::new(&["s3cret".into(), "other".into()]);
        assert!(t.allows(Some(b"Bearer s3cret")));
        assert!(t.allows(Some(b"bearer other ")));
        assert!(!t.allows(Some(b"Bearer s3cre")));
        assert!(!t.allows(Some(b"s3cret")));
        assert!(!t.allows(Some(b"Basic s3cret")));
        assert!(!t.allows(None));
        assert_eq!(format!("{t:?}"), "IngestTokens(2 configured)");
    }
}
