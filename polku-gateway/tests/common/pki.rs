//! Certificates made for one test: a CA, a server certificate for
//! `localhost` and 127.0.0.1, a client certificate from the same CA, and a
//! client certificate from a CA the gateway does not trust.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// A certificate and its key, as PEM and as files.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// Everything a TLS test needs, written under its own directory.
#[derive(Debug)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca: Pem,
    pub server: Pem,
    pub client: Pem,
    pub stranger: Pem,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(dir: &Path, name: &str, sans: &[&str], issuer: &CertifiedIssuer<'static, KeyPair>) -> Pem {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    write(dir, name, cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, cert: String, key: String) -> Pem {
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(&key_path, &key).unwrap();
    Pem {
        cert,
        key,
        cert_path,
        key_path,
    }
}

impl Pki {
    /// Generates the certificates into a fresh directory named after `test`.
    pub fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("polku-pki-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let authority = ca("polku test CA");
        let ca_pem = write(&dir, "ca", authority.pem(), String::new());
        let server = leaf(&dir, "server", &["localhost", "127.0.0.1"], &authority);
        let client = leaf(&dir, "client", &["client.polku.test"], &authority);
        let other = ca("some other CA");
        let stranger = leaf(&dir, "stranger", &["stranger.polku.test"], &other);
        Self {
            dir,
            ca: ca_pem,
            server,
            client,
            stranger,
        }
    }

    /// TLS for the gateway's listeners; client certificates required when
    /// `mutual`.
    pub fn server_tls(&self, mutual: bool) -> polku_gateway::TlsConfig {
        polku_gateway::TlsConfig {
            cert: self.server.cert_path.clone(),
            key: self.server.key_path.clone(),
            client_ca: mutual.then(|| self.ca.cert_path.clone()),
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
