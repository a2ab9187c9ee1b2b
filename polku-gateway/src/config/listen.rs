//! Where and how the gateway listens: addresses, TLS, connection caps and
//! the deadlines that keep slow clients from holding the listeners.

use super::{ConfigError, Env};
use std::net::SocketAddr;
use std::time::Duration;

/// Where and how the gateway listens.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenSettings {
    /// `POLKU_GRPC_ADDR`: where gRPC listens. Default `0.0.0.0:50051`.
    pub grpc_addr: SocketAddr,
    /// `POLKU_HTTP_ADDR`: where HTTP listens, or `None` (`off`). Default `0.0.0.0:8080`.
    pub http_addr: Option<SocketAddr>,
    /// `POLKU_TLS_CERT`, `POLKU_TLS_KEY` and `POLKU_TLS_CLIENT_CA`: TLS on
    /// the gRPC and HTTP listeners, and client certificates when a CA is
    /// given. Default off.
    pub tls: Option<crate::TlsConfig>,
    /// `POLKU_MAX_CONNECTIONS`: open connections at most, per listener
    /// (gRPC and HTTP each); more are closed as soon as they are accepted.
    /// Default 4096.
    pub max_connections: usize,
    /// `POLKU_RESERVED_CONNECTIONS`: connections each listener still accepts
    /// over `max_connections`, that serve health, readiness and metrics only
    /// (`/healthz`, `/readyz`, `/metrics`, `grpc.health.v1.Health`), so a
    /// listener full of clients can still be watched. Default 64.
    pub reserved_connections: usize,
    /// `POLKU_IDLE_TIMEOUT`: a connection with no request in flight for this
    /// long is closed (`0` keeps idle connections open). Default `5m`.
    pub idle_timeout: Option<Duration>,
    /// `POLKU_HEADER_TIMEOUT`: a client must send a request's headers
    /// within this: from the connection's start for its first request, and
    /// from the first byte of each later HTTP/1.1 request. A connection that
    /// does not is closed (`0` turns this off). Default `10s`.
    pub header_timeout: Option<Duration>,
    /// `POLKU_BODY_TIMEOUT`: an HTTP request body must arrive in full within
    /// this of its headers, and each gRPC message within this of its first
    /// byte; a connection whose replies make no progress for this long is
    /// closed (`0` turns this off). Default `30s`.
    pub body_timeout: Option<Duration>,
    /// `POLKU_KEEPALIVE_INTERVAL`: how often an idle gRPC connection is
    /// pinged. Default `30s`.
    pub keepalive_interval: Duration,
    /// `POLKU_KEEPALIVE_TIMEOUT`: a connection whose ping is not answered
    /// within this is closed. Default `20s`.
    pub keepalive_timeout: Duration,
    /// `POLKU_MAX_CONCURRENT_STREAMS`: most gRPC calls (HTTP/2 streams) at
    /// once on one connection. Default 256.
    pub max_concurrent_streams: u32,
}

impl Default for ListenSettings {
    fn default() -> Self {
        ListenSettings {
            grpc_addr: SocketAddr::from(([0, 0, 0, 0], 50051)),
            http_addr: Some(SocketAddr::from(([0, 0, 0, 0], 8080))),
            tls: None,
            max_connections: 4096,
            reserved_connections: 64,
            idle_timeout: Some(Duration::from_secs(300)),
            header_timeout: Some(Duration::from_secs(10)),
            body_timeout: Some(Duration::from_secs(30)),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            max_concurrent_streams: 256,
        }
    }
}

impl ListenSettings {
    pub(super) fn read(&mut self, env: &Env<'_>) -> Result<(), ConfigError> {
        if let Some(a) = env.parse(
            "POLKU_GRPC_ADDR",
            "an IP address and port, such as 0.0.0.0:50051 or [::1]:50051",
            |v| v.parse().ok(),
        )? {
            self.grpc_addr = a;
        }
        if let Some(a) = env.parse(
            "POLKU_HTTP_ADDR",
            "an IP address and port, such as 0.0.0.0:8080, or off",
            |v| {
                if v.eq_ignore_ascii_case("off") {
                    Some(None)
                } else {
                    v.parse().ok().map(Some)
                }
            },
        )? {
            self.http_addr = a;
        }
        self.tls = tls(env)?;
        if let Some(n) = env.number(
            "POLKU_MAX_CONNECTIONS",
            1,
            1_000_000,
            "a number of connections from 1 to 1000000",
        )? {
            self.max_connections = n as usize;
        }
        if let Some(n) = env.number(
            "POLKU_RESERVED_CONNECTIONS",
            0,
            4096,
            "a number of connections from 0 to 4096",
        )? {
            self.reserved_connections = n as usize;
        }
        if let Some(d) = env.duration_or_off("POLKU_IDLE_TIMEOUT")? {
            self.idle_timeout = d;
        }
        if let Some(d) = env.duration_or_off("POLKU_HEADER_TIMEOUT")? {
            self.header_timeout = d;
        }
        if let Some(d) = env.duration_or_off("POLKU_BODY_TIMEOUT")? {
            self.body_timeout = d;
        }
        if let Some(d) = env.duration("POLKU_KEEPALIVE_INTERVAL", true)? {
            self.keepalive_interval = d;
        }
        if let Some(d) = env.duration("POLKU_KEEPALIVE_TIMEOUT", true)? {
            self.keepalive_timeout = d;
        }
        if let Some(n) = env.number(
            "POLKU_MAX_CONCURRENT_STREAMS",
            1,
            1_000_000,
            "a number of streams from 1 to 1000000",
        )? {
            self.max_concurrent_streams = n as u32;
        }
        Ok(())
    }
}

/// The listeners' TLS: a certificate and its key, set together, and a
/// client CA only with them.
fn tls(env: &Env<'_>) -> Result<Option<crate::TlsConfig>, ConfigError> {
    let cert = env.file("POLKU_TLS_CERT")?;
    let key = env.file("POLKU_TLS_KEY")?;
    let client_ca = env.file("POLKU_TLS_CLIENT_CA")?;
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(crate::TlsConfig {
            cert,
            key,
            client_ca,
        })),
        (None, None) if client_ca.is_none() => Ok(None),
        (None, None) => Err(Env::bad(
            "POLKU_TLS_CLIENT_CA",
            &env.raw("POLKU_TLS_CLIENT_CA").unwrap_or_default(),
            "POLKU_TLS_CERT and POLKU_TLS_KEY set as well (client certificates need TLS)",
        )),
        (Some(_), None) => Err(Env::bad(
            "POLKU_TLS_KEY",
            "",
            "the server key's PEM file, set together with POLKU_TLS_CERT",
        )),
        (None, Some(_)) => Err(Env::bad(
            "POLKU_TLS_CERT",
            "",
            "the server certificate's PEM file, set together with POLKU_TLS_KEY",
        )),
    }
}
