//! Plugin addresses: `host:port` with or without a scheme.
//!
//! ```
//! use polku_core::address::normalize_address;
//!
//! assert_eq!(normalize_address("localhost:9001").unwrap(), "http://localhost:9001");
//! assert_eq!(normalize_address("https://plugins:443").unwrap(), "https://plugins:443");
//! assert!(normalize_address("localhost").is_err()); // no port
//! ```

/// Why a plugin address cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid plugin address {address:?}: {reason}")]
pub struct AddressError {
    /// The address as given.
    pub address: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Turns `host:port`, `http://host:port` or `https://host:port` into a URI
/// with a scheme (`http` when none is given). A path, a missing port, or
/// another scheme is an error.
pub fn normalize_address(address: &str) -> Result<String, AddressError> {
    let err = |reason| AddressError {
        address: address.to_owned(),
        reason,
    };
    let trimmed = address.trim();
    let (scheme, rest) = match trimmed.split_once("://") {
        Some((s, rest)) => {
            let s = s.to_ascii_lowercase();
            if s != "http" && s != "https" {
                return Err(err("the scheme must be http or https"));
            }
            (s, rest)
        }
        None => ("http".to_owned(), trimmed),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Err(err("no host"));
    }
    if rest.contains('/') || rest.contains('?') || rest.contains('#') {
        return Err(err("an address is host:port, without a path"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, p) = v6
            .split_once(']')
            .ok_or_else(|| err("unclosed [ in an IPv6 address"))?;
        (h, p.strip_prefix(':').ok_or_else(|| err("no port"))?)
    } else {
        rest.rsplit_once(':').ok_or_else(|| err("no port"))?
    };
    if host.is_empty() {
        return Err(err("no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(err("the port must be a number from 1 to 65535")),
    }
    Ok(format!("{scheme}://{rest}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_and_without_scheme() {
        assert_eq!(
            normalize_address(" 127.0.0.1:9001 ").unwrap(),
            "http://127.0.0.1:9001"
        );
        assert_eq!(
            normalize_address("HTTP://localhost:9001/").unwrap(),
            "http://localhost:9001"
        );
        assert_eq!(
            normalize_address("[::1]:9001").unwrap(),
            "http://[::1]:9001"
        );
    }

    #[test]
    fn bad_addresses_say_why() {
        for (bad, why) in [
            ("", "no host"),
            (":9001", "no host"),
            ("localhost", "no port"),
            ("localhost:0", "the port"),
            ("localhost:http", "the port"),
            ("ftp://localhost:21", "scheme"),
            ("localhost:9001/emit", "without a path"),
            ("[::1:9001", "unclosed"),
        ] {
            let e = normalize_address(bad).unwrap_err();
            assert!(e.reason.contains(why), "{bad:?}: {e}");
        }
    }
}
