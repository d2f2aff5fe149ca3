//! Development PKI for `logcluster up` and tests: a self-signed CA and one node certificate
//! (server and client auth) signed by it, generated with rcgen (ring).
//!
//! Files are reused across runs so that clients keep trusting the same CA: `pki.json` records
//! the node certificate's expiry and names; the set is reused while every file exists, the
//! names match and the node certificate has more than 30 days left. Otherwise the node
//! certificate is re-issued — by the existing CA when its key is still there (same CA
//! distinguished name and key, so existing trust stays valid), else a new CA is created.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};

const CA_NAME: &str = "LogCluster development CA";
const NODE_VALIDITY: Duration = Duration::from_secs(365 * 86_400);
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);

/// Paths of the generated files.
#[derive(Clone, Debug)]
pub struct DevPki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub node_cert: PathBuf,
    pub node_key: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    node_not_after: u64,
    hosts: Vec<String>,
}

/// Why certificates could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to generate a certificate")]
    Generate(#[from] rcgen::Error),
    #[error("failed to create directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CertError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.create(true).write(true).truncate(true);
    if private {
        options.mode(0o600);
    }
    options
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(|source| CertError::Write {
            path: path.to_path_buf(),
            source,
        })
}

fn ca_params() -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "LogCluster");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + CA_VALIDITY).into();
    Ok(params)
}

/// Generates or reuses the development PKI in `dir` for the given DNS names / IP addresses
/// (`localhost`, `127.0.0.1` and `::1` are always included).
pub fn generate_dev_pki(dir: &Path, hosts: &[&str]) -> Result<DevPki, CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Dir {
        path: dir.to_path_buf(),
        source,
    })?;
    let pki = DevPki {
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca-key.pem"),
        node_cert: dir.join("node.pem"),
        node_key: dir.join("node-key.pem"),
    };
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"]
        .iter()
        .chain(hosts)
        .map(|h| h.to_string())
        .collect();
    names.sort();
    names.dedup();
    let manifest_path = dir.join("pki.json");
    let existing: Option<Manifest> = std::fs::read(&manifest_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let all_exist = [&pki.ca_cert, &pki.ca_key, &pki.node_cert, &pki.node_key]
        .iter()
        .all(|p| p.exists());
    if let Some(manifest) = &existing
        && all_exist
        && manifest.hosts == names
        && manifest.node_not_after > now_secs() + RENEW_BEFORE.as_secs()
    {
        return Ok(pki);
    }
    // Reuse the CA key when present so clients that trust ca.pem keep working.
    let reused_ca = match (
        std::fs::read_to_string(&pki.ca_key),
        std::fs::read_to_string(&pki.ca_cert),
    ) {
        (Ok(key), Ok(cert)) if KeyPair::from_pem(&key).is_ok() => Some((cert, key)),
        _ => None,
    };
    let issued = issue(
        reused_ca.as_ref().map(|(c, k)| (c.as_str(), k.as_str())),
        &names,
        NODE_VALIDITY,
    )?;
    if reused_ca.is_none() {
        write_file(&pki.ca_cert, &issued.ca_pem, false)?;
        write_file(&pki.ca_key, &issued.ca_key_pem, true)?;
    }
    write_file(&pki.node_cert, &issued.cert_pem, false)?;
    write_file(&pki.node_key, &issued.key_pem, true)?;
    let manifest = Manifest {
        node_not_after: now_secs() + NODE_VALIDITY.as_secs(),
        hosts: names,
    };
    let body = serde_json::to_string_pretty(&manifest).unwrap_or_default();
    write_file(&manifest_path, &body, false)?;
    Ok(pki)
}

/// A CA and a node certificate, in memory (PEM).
#[derive(Clone, Debug)]
pub struct IssuedPki {
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// Expiry of the node certificate, seconds since the Unix epoch.
    pub not_after_secs: u64,
}

/// Issues a node certificate (server and client auth) for `names` (DNS names, wildcards
/// or IP addresses), signed by the given CA (`(ca_pem, ca_key_pem)`) or by a new one.
pub fn issue(
    ca: Option<(&str, &str)>,
    names: &[String],
    validity: Duration,
) -> Result<IssuedPki, CertError> {
    let (ca_pem, ca_key) = match ca {
        Some((pem, key)) => (pem.to_string(), KeyPair::from_pem(key)?),
        None => {
            let key = KeyPair::generate()?;
            let cert = ca_params()?.self_signed(&key)?;
            (cert.pem(), key)
        }
    };
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params()?, ca_key);
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    for name in names {
        params.subject_alt_names.push(match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(name.clone().try_into()?),
        });
    }
    params
        .distinguished_name
        .push(DnType::CommonName, "logcluster node");
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + validity).into();
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(IssuedPki {
        ca_pem,
        ca_key_pem,
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after_secs: now_secs() + validity.as_secs(),
    })
}
