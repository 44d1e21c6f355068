//! The local cluster's certificates: a CA made for the cluster, a serving
//! (and peer) certificate per etcd member for its address, and a client
//! certificate per component and for the CLI. etcd accepts only clients
//! whose certificate the CA signed.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use super::{HUB_ADDRESS, Plan};

/// A certificate and its key, as files.
pub struct Pair {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// The CA's certificate in the cluster's `pki` directory.
pub fn ca(plan: &Plan) -> PathBuf {
    plan.pki().join("ca.crt")
}

/// The files of certificate `name` in the cluster's `pki` directory.
pub fn pair(plan: &Plan, name: &str) -> Pair {
    Pair {
        cert: plan.pki().join(format!("{name}.crt")),
        key: plan.pki().join(format!("{name}.key")),
    }
}

fn write(path: &Path, text: &str, private: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn params(name: &str, sans: Vec<String>) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(sans).context("certificate names")?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    Ok(params)
}

/// Makes the CA and every certificate of `plan`: `etcd-N` (server and
/// peer, for the member's address), `master-N`, `node-N` and `admin`
/// (clients).
pub fn make(plan: &Plan) -> anyhow::Result<()> {
    let dir = plan.pki();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("orca {} CA", plan.name));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().context("making the CA's key")?;
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).context("making the CA")?;
    write(&self::ca(plan), &ca.pem(), false)?;

    let issue = |name: String, sans: Vec<String>, server: bool| -> anyhow::Result<()> {
        let mut params = params(&name, sans)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        let key = KeyPair::generate().with_context(|| format!("making {name}'s key"))?;
        let cert = params
            .signed_by(&key, &ca)
            .with_context(|| format!("signing {name}'s certificate"))?;
        let files = pair(plan, &name);
        write(&files.cert, &cert.pem(), false)?;
        write(&files.key, &key.serialize_pem(), true)
    };
    for i in 1..=plan.members() {
        let ip = plan.etcd_ip(i).to_string();
        // etcd checks a peer's source address against its certificate, and
        // every member connects from the hub bridge's first address.
        let sans = vec![ip, HUB_ADDRESS.to_string(), "127.0.0.1".into()];
        issue(format!("etcd-{i}"), sans, true)?;
    }
    for i in 1..=plan.masters {
        issue(format!("master-{i}"), Vec::new(), false)?;
    }
    for i in 1..=plan.nodes {
        issue(format!("node-{i}"), Vec::new(), false)?;
    }
    issue("admin".into(), Vec::new(), false)
}
