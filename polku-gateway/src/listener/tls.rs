//! TLS for both listeners: the files named by `POLKU_TLS_*`, read into a
//! rustls server configuration.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls;

/// `POLKU_TLS_CERT`, `POLKU_TLS_KEY` and `POLKU_TLS_CLIENT_CA`: the files
/// that turn on TLS for both listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The server's certificate chain, PEM.
    pub cert: PathBuf,
    /// The server's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by one of these
    /// CAs (PEM); others fail the handshake.
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS files could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {var} file {path}: {source}")]
    Read {
        /// The variable that names the file.
        var: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A file holds no usable PEM item of the kind needed.
    #[error("{var} file {path} holds no {what}")]
    Empty {
        /// The variable that names the file.
        var: &'static str,
        /// The file.
        path: PathBuf,
        /// What was looked for.
        what: &'static str,
    },
    /// rustls refused the certificate, key or CA.
    #[error("TLS configuration refused: {0}")]
    Rustls(String),
}

fn read_pem(var: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        var,
        path: path.to_owned(),
        source,
    })
}

fn certs(
    var: &'static str,
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    let pem = read_pem(var, path)?;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Empty {
            var,
            path: path.to_owned(),
            what: "PEM certificate",
        });
    }
    Ok(certs)
}

impl TlsConfig {
    /// Reads the files and builds the rustls server configuration, offering
    /// HTTP/2 and HTTP/1.1 by ALPN.
    pub(crate) fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        use rustls::pki_types::pem::PemObject;
        let chain = certs("POLKU_TLS_CERT", &self.cert)?;
        let key_pem = read_pem("POLKU_TLS_KEY", &self.key)?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
            TlsError::Empty {
                var: "POLKU_TLS_KEY",
                path: self.key.clone(),
                what: "PEM private key",
            }
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for ca in certs("POLKU_TLS_CLIENT_CA", path)? {
                    roots
                        .add(ca)
                        .map_err(|e| TlsError::Rustls(format!("POLKU_TLS_CLIENT_CA: {e}")))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| TlsError::Rustls(format!("POLKU_TLS_CLIENT_CA: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Rustls(format!("POLKU_TLS_CERT/POLKU_TLS_KEY: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}
