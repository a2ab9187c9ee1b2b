//! TLS for outbound gRPC connections: from a gateway to another gateway or
//! to its plugins, and from a plugin to its gateway.
//!
//! An `https://` address connects with TLS, trusting the given CA (or the
//! public web roots when none is given) and presenting a client certificate
//! when one is set; an `http://` address stays plaintext.
//!
//! ```
//! use polku_proto::tls::ClientTls;
//!
//! let tls = ClientTls::new();
//! let plain = tls.endpoint("http://127.0.0.1:50051").unwrap();
//! let secure = tls.endpoint("https://gateway.internal:50051").unwrap();
//! assert_eq!(plain.uri().scheme_str(), Some("http"));
//! assert_eq!(secure.uri().scheme_str(), Some("https"));
//! ```

use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// The CA to trust and the certificate to present on outbound connections.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &self.ca.is_some())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

/// Why the TLS files for outbound connections cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientTlsError {
    /// A file could not be read.
    #[error("cannot read {var} file {path}: {source}")]
    Read {
        /// The setting that names the file.
        var: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file holds nothing of the kind needed.
    #[error("{var} file {path} holds no PEM {what}")]
    NotPem {
        /// The setting that names the file.
        var: &'static str,
        /// The file.
        path: PathBuf,
        /// What was looked for.
        what: &'static str,
    },
    /// A certificate without its key, or a key without its certificate.
    #[error("{0} is set without {1}: a client certificate needs both")]
    HalfIdentity(&'static str, &'static str),
}

/// The names of the three settings, for error messages.
#[derive(Debug, Clone, Copy)]
pub struct ClientTlsVars {
    /// The CA file's setting.
    pub ca: &'static str,
    /// The client certificate's setting.
    pub cert: &'static str,
    /// The client key's setting.
    pub key: &'static str,
}

fn read(var: &'static str, path: &Path, what: &'static str) -> Result<Vec<u8>, ClientTlsError> {
    let pem = std::fs::read(path).map_err(|source| ClientTlsError::Read {
        var,
        path: path.to_owned(),
        source,
    })?;
    let marker: &[u8] = if what == "private key" {
        b"PRIVATE KEY-----"
    } else {
        b"-----BEGIN CERTIFICATE-----"
    };
    if !pem.windows(marker.len()).any(|w| w == marker) {
        return Err(ClientTlsError::NotPem {
            var,
            path: path.to_owned(),
            what,
        });
    }
    Ok(pem)
}

impl ClientTls {
    /// No CA of its own (public web roots) and no client certificate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the CA certificates in this PEM (instead of the web roots).
    pub fn with_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(pem.into());
        self
    }

    /// Presents this certificate and key (PEM), for servers that ask for one.
    pub fn with_identity_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// True when a CA or a client certificate is set: TLS was asked for.
    pub fn is_configured(&self) -> bool {
        self.ca.is_some() || self.identity.is_some()
    }

    /// True when a client certificate is set.
    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// Reads the CA, certificate and key files named by the settings in
    /// `vars` (for messages). The certificate and key come together.
    pub fn from_files(
        vars: ClientTlsVars,
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Self, ClientTlsError> {
        let mut tls = ClientTls::new();
        if let Some(ca) = ca {
            tls.ca = Some(read(vars.ca, ca, "certificate")?);
        }
        match (cert, key) {
            (Some(cert), Some(key)) => {
                tls.identity = Some((
                    read(vars.cert, cert, "certificate")?,
                    read(vars.key, key, "private key")?,
                ));
            }
            (Some(_), None) => return Err(ClientTlsError::HalfIdentity(vars.cert, vars.key)),
            (None, Some(_)) => return Err(ClientTlsError::HalfIdentity(vars.key, vars.cert)),
            (None, None) => {}
        }
        Ok(tls)
    }

    /// An endpoint for `uri`, with TLS when its scheme is `https`.
    pub fn endpoint(&self, uri: &str) -> Result<Endpoint, tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(uri.to_owned())?;
        if endpoint.uri().scheme_str() != Some("https") {
            return Ok(endpoint);
        }
        let mut config = ClientTlsConfig::new();
        config = match &self.ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
            None => config.with_webpki_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        endpoint.tls_config(config)
    }
}
