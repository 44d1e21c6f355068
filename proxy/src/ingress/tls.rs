//! TLS termination: certificates loaded from PEM files and chosen by SNI,
//! TLS 1.2 and 1.3 only (rustls), swapped whole on reload so rotation needs
//! no restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::config::Certificate;

/// A certificate that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {message}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// The key does not fit the certificate, or is of an unsupported type.
    #[error("{path}: {message}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// A certificate names no DNS names and none were configured.
    #[error("{path}: the certificate names no DNS names; list them under sni")]
    NoNames {
        /// The certificate file.
        path: PathBuf,
    },
}

/// Certificates by server name.
#[derive(Debug, Default)]
pub struct Certificates {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// For clients that send no SNI: the first certificate.
    fallback: Option<Arc<CertifiedKey>>,
}

impl Certificates {
    /// Loads every certificate; fails on the first unusable one, naming its file.
    pub fn load(certs: &[Certificate]) -> Result<Self, TlsError> {
        let mut out = Self::default();
        for c in certs {
            let cert = std::fs::read(&c.cert).map_err(|e| TlsError::Pem {
                path: c.cert.clone(),
                message: format!("cannot read certificates ({e})"),
            })?;
            let key = std::fs::read(&c.key).map_err(|e| TlsError::Pem {
                path: c.key.clone(),
                message: format!("cannot read the key ({e})"),
            })?;
            out.add(&cert, &key, &c.sni, &c.cert, &c.key)?;
        }
        Ok(out)
    }

    /// Adds a certificate from PEM text (a `kubernetes.io/tls` Secret), for
    /// `names` or, when empty, the names in the certificate.
    pub fn add_pem(&mut self, cert: &[u8], key: &[u8], names: &[String]) -> Result<(), TlsError> {
        let origin = PathBuf::from("secret");
        self.add(cert, key, names, &origin, &origin)
    }

    fn add(
        &mut self,
        cert: &[u8],
        key: &[u8],
        names: &[String],
        cert_origin: &Path,
        key_origin: &Path,
    ) -> Result<(), TlsError> {
        let chain = read_chain(cert, cert_origin)?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::Pem {
            path: key_origin.to_path_buf(),
            message: format!("no usable private key ({e})"),
        })?;
        let provider = rustls::crypto::ring::default_provider();
        let certified =
            CertifiedKey::from_der(chain.clone(), key, &provider).map_err(|e| TlsError::Key {
                path: key_origin.to_path_buf(),
                message: e.to_string(),
            })?;
        let certified = Arc::new(certified);
        let names = if names.is_empty() {
            dns_names(&chain[0])
        } else {
            names.to_vec()
        };
        if names.is_empty() {
            return Err(TlsError::NoNames {
                path: cert_origin.to_path_buf(),
            });
        }
        for name in names {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(suffix) => self.wildcard.insert(suffix.to_string(), certified.clone()),
                None => self.exact.insert(name, certified.clone()),
            };
        }
        self.fallback.get_or_insert(certified);
        Ok(())
    }

    /// The certificate for `server_name`.
    pub fn find(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return self.fallback.clone();
        };
        if let Some(c) = self.exact.get(&name) {
            return Some(c.clone());
        }
        let parent = name.split_once('.').map(|(_, p)| p)?;
        self.wildcard
            .get(parent)
            .cloned()
            .or_else(|| self.fallback.clone())
    }
}

fn read_chain(pem: &[u8], origin: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: origin.to_path_buf(),
            message: format!("invalid PEM ({e})"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: origin.to_path_buf(),
            message: "no certificate found".into(),
        });
    }
    Ok(chain)
}

fn dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    webpki::EndEntityCert::try_from(cert)
        .map(|c| c.valid_dns_names().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Picks the certificate per handshake from the current set.
#[derive(Debug)]
pub struct Resolver {
    current: ArcSwap<Certificates>,
}

impl Resolver {
    /// A resolver serving `certs`.
    pub fn new(certs: Certificates) -> Self {
        Self {
            current: ArcSwap::from_pointee(certs),
        }
    }

    /// Replaces the certificates; new handshakes use them at once.
    pub fn replace(&self, certs: Certificates) {
        self.current.store(Arc::new(certs));
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().find(hello.server_name())
    }
}

/// The rustls server configuration of a TLS listener.
pub fn server_config(resolver: Arc<Resolver>) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}
