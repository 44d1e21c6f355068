//! One way to make a TLS client: trust the authorities of a PEM file, as
//! the log shipper's HTTPS outputs and the kubelet's registry client do.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// A TLS client configuration (rustls with ring) trusting the authorities
/// in the PEM file at `path`, offering `alpn` protocols. The error names
/// the file and what is wrong with it.
pub fn client_trusting(path: &Path, alpn: &[&[u8]]) -> Result<Arc<rustls::ClientConfig>, String> {
    let err = |what: String| format!("{}: {what}", path.display());
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| err(format!("not a PEM certificate file: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| err(format!("unusable certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(err("holds no certificate".to_string()));
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| err(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_certificates_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = client_trusting(&path, &[]).unwrap_err();
        assert!(err.contains("empty.pem: holds no certificate"), "{err}");
        let err = client_trusting(&dir.path().join("missing.pem"), &[]).unwrap_err();
        assert!(err.contains("missing.pem"), "{err}");
    }
}
