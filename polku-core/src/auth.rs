//! Bearer tokens: reading them from an `authorization` value and comparing
//! them without leaking, through timing, how much of a guess was right; and
//! the one access rule of POLKU's guarded endpoints ([`AccessPolicy`]): the
//! token when one is set, else loopback peers only.
//!
//! ```
//! use polku_core::auth::{bearer_token, constant_time_eq};
//!
//! let given = bearer_token(b"Bearer s3cret").unwrap();
//! assert!(constant_time_eq(given, b"s3cret"));
//! assert!(bearer_token(b"Basic s3cret").is_none());
//! ```

/// The token of a `Bearer <token>` value (any case, surrounding spaces
/// ignored), or `None` for anything else.
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    (value.len() > 7 && value[..7].eq_ignore_ascii_case(b"bearer "))
        .then(|| value[7..].trim_ascii())
}

/// Whether `a` and `b` are equal, taking the same time wherever they differ
/// (the length still shows).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who may use a guarded endpoint (the admin API, the plugin registry):
/// with a token set, whoever sends it (`Bearer <token>`) and nobody else;
/// without one, loopback peers only, and nobody at all when loopback is not
/// trusted. Its `Debug` never shows the token.
#[derive(Clone)]
pub struct AccessPolicy {
    token: Option<Vec<u8>>,
    trust_loopback: bool,
}

impl std::fmt::Debug for AccessPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessPolicy")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("trust_loopback", &self.trust_loopback)
            .finish()
    }
}

/// Why [`AccessPolicy::check`] refused a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// A token is set and the caller sent none, or a wrong one.
    BadToken,
    /// No token is set and loopback peers are not trusted: nobody gets in.
    LoopbackNotTrusted,
    /// No token is set and the caller is not on loopback (or its address is
    /// unknown).
    NotLoopback,
}

impl AccessPolicy {
    /// The policy for this token and loopback trust. An empty token is
    /// still a token: nobody can send it, so nobody gets in (fail closed).
    pub fn new(token: Option<&str>, trust_loopback: bool) -> Self {
        AccessPolicy {
            token: token.map(|t| t.as_bytes().to_vec()),
            trust_loopback,
        }
    }

    /// Whether a token is set.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Lets a caller in, or says why not: `authorization` is the value it
    /// sent (`Bearer <token>`), `peer` its address if known.
    pub fn check(
        &self,
        authorization: Option<&[u8]>,
        peer: Option<std::net::SocketAddr>,
    ) -> Result<(), Denied> {
        match &self.token {
            Some(token) => {
                let given = authorization.and_then(bearer_token);
                if given.is_some_and(|g| constant_time_eq(g, token)) {
                    Ok(())
                } else {
                    Err(Denied::BadToken)
                }
            }
            None if !self.trust_loopback => Err(Denied::LoopbackNotTrusted),
            // `to_canonical`: 127.0.0.1 as a dual-stack `[::]` listener sees it.
            None if peer.is_some_and(|p| p.ip().to_canonical().is_loopback()) => Ok(()),
            None => Err(Denied::NotLoopback),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_compare() {
        assert_eq!(bearer_token(b"Bearer abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer  abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"abc"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    fn check(p: &AccessPolicy, auth: Option<&str>, peer: &str) -> Result<(), Denied> {
        p.check(auth.map(str::as_bytes), Some(peer.parse().unwrap()))
    }

    #[test]
    fn without_a_token_only_loopback_peers_get_in() {
        let p = AccessPolicy::new(None, true);
        assert_eq!(check(&p, None, "127.0.0.1:5000"), Ok(()));
        assert_eq!(check(&p, None, "[::1]:5000"), Ok(()));
        assert_eq!(check(&p, None, "[::ffff:127.0.0.1]:5000"), Ok(()));
        assert_eq!(
            check(&p, None, "[::ffff:10.1.2.3]:5000"),
            Err(Denied::NotLoopback)
        );
        assert_eq!(
            check(&p, Some("Bearer anything"), "10.1.2.3:5000"),
            Err(Denied::NotLoopback)
        );
        assert_eq!(
            p.check(None, None),
            Err(Denied::NotLoopback),
            "unknown peer"
        );
        let empty = AccessPolicy::new(Some(""), true);
        assert_eq!(
            check(&empty, Some("Bearer "), "127.0.0.1:5000"),
            Err(Denied::BadToken)
        );
    }

    #[test]
    fn loopback_trust_can_be_turned_off() {
        let p = AccessPolicy::new(None, false);
        assert_eq!(
            check(&p, None, "127.0.0.1:5000"),
            Err(Denied::LoopbackNotTrusted)
        );
        let p = AccessPolicy::new(Some("s3cret"), false);
        assert_eq!(check(&p, Some("Bearer s3cret"), "127.0.0.1:5000"), Ok(()));
        assert_eq!(check(&p, None, "127.0.0.1:5000"), Err(Denied::BadToken));
    }

    #[test]
    fn with_a_token_everyone_needs_it_even_loopback() {
        let p = AccessPolicy::new(Some("s3cret"), true);
        assert_eq!(check(&p, None, "127.0.0.1:5000"), Err(Denied::BadToken));
        assert_eq!(
            check(&p, Some("Bearer s3cre"), "127.0.0.1:5000"),
            Err(Denied::BadToken)
        );
        assert_eq!(check(&p, Some("Bearer s3cret"), "10.1.2.3:5000"), Ok(()));
        assert!(!format!("{p:?}").contains("s3cret"), "{p:?}");
    }
}
