//! The plugin registry's settings and the calls to plugins. They are
//! [`polku_discovery::RegistryConfig`] itself, defined there once; who may
//! register is in the access settings.

use super::{ConfigError, Env};
use polku_discovery::RegistryConfig;
use polku_proto::tls::{ClientTls, ClientTlsError, ClientTlsVars};

pub(super) fn read(c: &mut RegistryConfig, env: &Env<'_>) -> Result<(), ConfigError> {
    if let Some((v, hosts)) = env.list("POLKU_PLUGIN_ALLOWED_HOSTS") {
        let bad_host = |h: &String| {
            h.contains(['/', ' ', ':'])
                && !h.contains("::")
                && h.parse::<std::net::IpAddr>().is_err()
        };
        if hosts.is_empty() || hosts.iter().any(bad_host) {
            return Err(Env::bad(
                "POLKU_PLUGIN_ALLOWED_HOSTS",
                &v,
                "host names or IP addresses, comma-separated, such as localhost,10.0.0.5",
            ));
        }
        c.allowed_hosts = hosts;
    }
    if let Some(n) = env.number(
        "POLKU_PLUGIN_MAX",
        1,
        10_000,
        "a number of plugins from 1 to 10000",
    )? {
        c.max_plugins = n as usize;
    }
    if let Some(d) = env.duration("POLKU_PLUGIN_HEARTBEAT_INTERVAL", true)? {
        c.heartbeat_interval = d;
    }
    // Three intervals unless set.
    c.heartbeat_timeout = env
        .duration("POLKU_PLUGIN_HEARTBEAT_TIMEOUT", true)?
        .unwrap_or(c.heartbeat_interval * 3);
    if c.heartbeat_timeout <= c.heartbeat_interval {
        return Err(ConfigError {
            var: "POLKU_PLUGIN_HEARTBEAT_TIMEOUT",
            value: format!("{:?}", c.heartbeat_timeout),
            expected: "a duration longer than POLKU_PLUGIN_HEARTBEAT_INTERVAL",
        });
    }
    if let Some(d) = env.duration("POLKU_PLUGIN_TIMEOUT", true)? {
        c.call_timeout = d;
    }
    c.tls = client_tls(
        env,
        ClientTlsVars {
            ca: "POLKU_PLUGIN_TLS_CA",
            cert: "POLKU_PLUGIN_TLS_CERT",
            key: "POLKU_PLUGIN_TLS_KEY",
        },
    )?;
    Ok(())
}

/// A client's TLS from its three variables: a CA, and a certificate with
/// its key (set together).
pub(super) fn client_tls(env: &Env<'_>, vars: ClientTlsVars) -> Result<ClientTls, ConfigError> {
    let (ca, cert, key) = (
        env.file(vars.ca)?,
        env.file(vars.cert)?,
        env.file(vars.key)?,
    );
    ClientTls::from_files(vars, ca.as_deref(), cert.as_deref(), key.as_deref()).map_err(|e| {
        let var = match &e {
            ClientTlsError::Read { var, .. }
            | ClientTlsError::NotPem { var, .. }
            | ClientTlsError::HalfIdentity(var, _) => *var,
            _ => vars.ca,
        };
        Env::bad(
            var,
            &env.raw(var).unwrap_or_default(),
            match e {
                ClientTlsError::HalfIdentity(..) => {
                    "a client certificate and its key, set together"
                }
                _ => "a readable PEM file (a certificate, or a private key for _KEY)",
            },
        )
    })
}
