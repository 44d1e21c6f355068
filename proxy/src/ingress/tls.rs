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

    fn add(
        &mut self,
        cert: &[u8],
        key: &[u8],
        names: &[String],
        cert_origin: &Path,
        key_origin: &Path,
    ) -> Result<(), TlsError> {
        let parsed = Parsed::new(cert, key, cert_origin, key_origin)?;
        let names = if names.is_empty() {
            parsed.names.clone()
        } else {
            names.to_vec()
        };
        if names.is_empty() {
            return Err(TlsError::NoNames {
                path: cert_origin.to_path_buf(),
            });
        }
        self.insert(&parsed.key, &names);
        Ok(())
    }

    /// Serves `parsed` for those of `hosts` (an Ingress's TLS hosts; all
    /// the certificate's names when empty) that it covers, unless an
    /// earlier certificate holds the name. Returns the hosts it does not
    /// cover, which get no certificate from it.
    pub fn add_covering(&mut self, parsed: &Parsed, hosts: &[String]) -> Vec<String> {
        let (covered, uncovered): (Vec<String>, Vec<String>) = if hosts.is_empty() {
            (parsed.names.clone(), Vec::new())
        } else {
            hosts.iter().cloned().partition(|h| parsed.covers(h))
        };
        self.insert(&parsed.key, &covered);
        uncovered
    }

    /// The first certificate given a name keeps it.
    fn insert(&mut self, certified: &Arc<CertifiedKey>, names: &[String]) {
        for name in names {
            let name = name.to_ascii_lowercase();
            let slot = match name.strip_prefix("*.") {
                Some(suffix) => self.wildcard.entry(suffix.to_string()),
                None => self.exact.entry(name),
            };
            slot.or_insert_with(|| certified.clone());
        }
        self.fallback.get_or_insert_with(|| certified.clone());
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

/// A certificate chain and key checked to fit, with the DNS names the
/// certificate is valid for.
pub struct Parsed {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
}

impl Parsed {
    /// Parses PEM text (a file's or a `kubernetes.io/tls` Secret's); the
    /// origins name them in errors.
    pub fn new(
        cert: &[u8],
        key: &[u8],
        cert_origin: &Path,
        key_origin: &Path,
    ) -> Result<Self, TlsError> {
        let chain = read_chain(cert, cert_origin)?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::Pem {
            path: key_origin.to_path_buf(),
            message: format!("no usable private key ({e})"),
        })?;
        let names = dns_names(&chain[0]);
        let provider = rustls::crypto::ring::default_provider();
        let certified =
            CertifiedKey::from_der(chain, key, &provider).map_err(|e| TlsError::Key {
                path: key_origin.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(Self {
            key: Arc::new(certified),
            names,
        })
    }

    /// Whether the certificate is valid for `host` (RFC 6125: a wildcard
    /// stands for one whole left-most label).
    pub fn covers(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.names.iter().any(|name| {
            let name = name.to_ascii_lowercase();
            name == host
                || name.strip_prefix("*.").is_some_and(|suffix| {
                    host.split_once('.').is_some_and(|(label, rest)| {
                        !label.is_empty() && label != "*" && rest == suffix
                    })
                })
        })
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

    /// Replaces the certificates with a set other resolvers share.
    pub fn replace_shared(&self, certs: Arc<Certificates>) {
        self.current.store(certs);
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
