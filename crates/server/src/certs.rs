//! `tern cert`: a local certificate authority and a server certificate signed by it, so a LAN
//! broker has TLS in one command. Keys are ECDSA P-256, which every client tern targets
//! speaks (MicroPython's mbedTLS over TLS 1.2, embedded-tls over TLS 1.3).

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Where `tern cert` wrote its files.
#[derive(Debug)]
pub struct CertFiles {
    /// The CA certificate: what clients are given (`--cafile`).
    pub ca_cert: PathBuf,
    /// The CA private key: keep it secret; it signs new server certificates.
    pub ca_key: PathBuf,
    /// The server certificate chain (server, then CA).
    pub server_cert: PathBuf,
    /// The server private key.
    pub server_key: PathBuf,
}

/// Creates (or reuses) a CA in `dir` and issues a server certificate for `names` (host names
/// and IP addresses). An existing CA is reused so that clients keep trusting the broker.
pub fn create(dir: &Path, names: &[String], days: u32) -> Result<CertFiles, String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let files = CertFiles {
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
    };
    let err = |e: rcgen::Error| e.to_string();
    let (ca_pem, ca_key) = if files.ca_cert.exists() && files.ca_key.exists() {
        let pem = fs::read_to_string(&files.ca_cert).map_err(|e| e.to_string())?;
        let key = KeyPair::from_pem(&fs::read_to_string(&files.ca_key).map_err(|e| e.to_string())?)
            .map_err(err)?;
        (pem, key)
    } else {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "tern local CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_after = rcgen::date_time_ymd(2049, 12, 31);
        let cert = params.self_signed(&key).map_err(err)?;
        write_secret(&files.ca_key, &key.serialize_pem())?;
        fs::write(&files.ca_cert, cert.pem()).map_err(|e| e.to_string())?;
        (cert.pem(), key)
    };
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_key).map_err(err)?;

    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut params = CertificateParams::default();
    let first = names.first().map_or("localhost", String::as_str);
    params.distinguished_name.push(DnType::CommonName, first);
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n.clone().try_into().map(SanType::DnsName).map_err(err),
        })
        .collect::<Result<_, _>>()?;
    let now = time_now();
    params.not_before = now;
    params.not_after = now + std::time::Duration::from_secs(u64::from(days) * 86_400);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer).map_err(err)?;
    write_secret(&files.server_key, &key.serialize_pem())?;
    fs::write(&files.server_cert, format!("{}{}", cert.pem(), ca_pem))
        .map_err(|e| e.to_string())?;
    Ok(files)
}

/// An hour ago: a little slack for clocks that run behind.
fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() - time::Duration::hours(1)
}

/// Issues a client certificate whose Common Name is `name`, signed by the CA in `dir` (which
/// `create` made), for listeners with `client_ca` and `cn_as_username`. Returns the
/// certificate and key paths.
pub fn create_client(dir: &Path, name: &str, days: u32) -> Result<(PathBuf, PathBuf), String> {
    let err = |e: rcgen::Error| e.to_string();
    let ca_pem = fs::read_to_string(dir.join("ca.pem"))
        .map_err(|e| format!("{}: {e} (run `tern cert` first)", dir.display()))?;
    let ca_key =
        KeyPair::from_pem(&fs::read_to_string(dir.join("ca.key")).map_err(|e| e.to_string())?)
            .map_err(err)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_key).map_err(err)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    let now = time_now();
    params.not_before = now;
    params.not_after = now + std::time::Duration::from_secs(u64::from(days) * 86_400);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).map_err(err)?;
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let (cert_path, key_path) = (
        dir.join(format!("client-{safe}.pem")),
        dir.join(format!("client-{safe}.key")),
    );
    write_secret(&key_path, &key.serialize_pem())?;
    fs::write(&cert_path, cert.pem()).map_err(|e| e.to_string())?;
    Ok((cert_path, key_path))
}

/// Writes a private key readable by its owner only.
fn write_secret(path: &Path, pem: &str) -> Result<(), String> {
    fs::write(path, pem).map_err(|e| format!("{}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|e| e.to_string())?;
    }
    Ok(())
}
