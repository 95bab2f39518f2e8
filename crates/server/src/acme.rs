//! Certificates from an ACME server (RFC 8555; Let's Encrypt by default) for every TLS
//! listener that names no certificate of its own.
//!
//! The account and the certificate live in `<data_dir>/acme/`. At start a stored certificate
//! is served at once; if there is none, a self-signed stand-in is served until the first one
//! is issued. A task looks at the certificate and obtains a new one when less than a third of
//! its lifetime is left (30 days of Let's Encrypt's 90), then writes it and reloads the
//! listeners' certificates: new handshakes get it, established connections are untouched.
//!
//! The challenge is answered by the broker itself: TLS-ALPN-01 (RFC 8737) on the TLS
//! listeners (a handshake offering `acme-tls/1` gets the challenge certificate and nothing
//! else), or HTTP-01 on `http_bind`. The ACME protocol is `instant-acme`'s.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::{AcmeChallenge, AcmeConfig};
use crate::tls::ReloadableCert;

/// The protocol name a TLS-ALPN-01 validation offers.
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The Common Name of the stand-in certificate served before the first issuance.
const STAND_IN: &str = "tern: waiting for an ACME certificate";

/// Challenges being answered now: TLS-ALPN-01 certificates by name, HTTP-01 answers by token.
#[derive(Default)]
pub(crate) struct Challenges {
    alpn: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    http: RwLock<HashMap<String, String>>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Challenges")
    }
}

impl ResolvesServerCert for Challenges {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?;
        self.alpn
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }
}

impl Challenges {
    /// The TLS configuration for a handshake that offers `acme-tls/1`.
    pub(crate) fn alpn_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, String> {
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| e.to_string())?
                .with_no_client_auth()
                .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        Ok(Arc::new(config))
    }

    fn http_answer(&self, token: &str) -> Option<String> {
        self.http
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }
}

/// The files of the certificate the listeners serve.
pub(crate) fn cert_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Makes sure a certificate is there to serve before the listeners start: the stored one, or
/// a self-signed stand-in for the configured names.
pub(crate) fn prepare(dir: &Path, acme: &AcmeConfig) -> Result<(), String> {
    let (cert, key) = cert_paths(dir);
    if cert.exists() && key.exists() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut params =
        rcgen::CertificateParams::new(acme.domains.clone()).map_err(|e| e.to_string())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, STAND_IN);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(1);
    let pair = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let certificate = params.self_signed(&pair).map_err(|e| e.to_string())?;
    write_private(&key, pair.serialize_pem().as_bytes())?;
    write_private(&cert, certificate.pem().as_bytes())
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, data).map_err(|e| format!("{}: {e}", tmp.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600));
    }
    fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// What the stored certificate is: its names, validity, and whether it is the stand-in.
struct Stored {
    names: Vec<String>,
    not_before: SystemTime,
    not_after: SystemTime,
    stand_in: bool,
}

fn inspect(cert_path: &Path) -> Option<Stored> {
    let first = CertificateDer::pem_file_iter(cert_path)
        .ok()?
        .next()?
        .ok()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(first.as_ref()).ok()?;
    let stand_in = parsed
        .subject()
        .iter_common_name()
        .any(|cn| cn.as_str().ok() == Some(STAND_IN));
    let names = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let at = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
    };
    Some(Stored {
        names,
        not_before: at(parsed.validity().not_before),
        not_after: at(parsed.validity().not_after),
        stand_in,
    })
}

/// When the certificate should be replaced: at two thirds of its lifetime, or now if it is
/// the stand-in, misses a name, or cannot be read.
fn renew_at(stored: Option<&Stored>, domains: &[String]) -> SystemTime {
    let Some(s) = stored else {
        return SystemTime::UNIX_EPOCH;
    };
    if s.stand_in || !domains.iter().all(|d| s.names.contains(d)) {
        return SystemTime::UNIX_EPOCH;
    }
    let lifetime = s.not_after.duration_since(s.not_before).unwrap_or_default();
    s.not_after - lifetime / 3
}

/// Keeps the certificate valid until shutdown.
pub(crate) async fn run(
    acme: AcmeConfig,
    dir: PathBuf,
    certs: Vec<Arc<ReloadableCert>>,
    challenges: Arc<Challenges>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (cert_path, key_path) = cert_paths(&dir);
    let mut failures = 0u32;
    loop {
        let stored = inspect(&cert_path);
        let due = renew_at(stored.as_ref(), &acme.domains);
        let wait = due
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .min(Duration::from_secs(acme.check_interval_secs));
        if !wait.is_zero() {
            if let Some(s) = &stored {
                debug!(names = ?s.names, next_check = ?wait, "ACME certificate is current");
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => continue,
                _ = shutdown.changed() => return,
            }
        }
        let obtained = tokio::select! {
            r = obtain(&acme, &dir, &challenges) => r,
            _ = shutdown.changed() => return,
        };
        match obtained {
            Ok((chain, key)) => {
                failures = 0;
                let written = write_private(&key_path, key.as_bytes())
                    .and_then(|()| write_private(&cert_path, chain.as_bytes()));
                match written {
                    Ok(()) => {
                        let until = inspect(&cert_path).map(|s| s.not_after);
                        info!(domains = ?acme.domains, valid_until = ?until.map(humantime), "ACME certificate obtained; TLS listeners serve it from now on");
                        for cert in &certs {
                            cert.reload();
                        }
                    }
                    Err(e) => warn!(error = %e, "ACME certificate obtained but not stored"),
                }
            }
            Err(e) => {
                failures += 1;
                // Retry soon, then less often: 30 s doubling to the check interval.
                let retry = Duration::from_secs(30u64 << failures.min(10))
                    .min(Duration::from_secs(acme.check_interval_secs));
                warn!(domains = ?acme.domains, error = %e, retry_in = ?retry, "ACME certificate not obtained");
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

fn humantime(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn acme_error(e: instant_acme::Error) -> String {
    match e {
        instant_acme::Error::Api(p) => format!(
            "the ACME server answered {}: {}",
            p.r#type.as_deref().unwrap_or("an error"),
            p.detail.as_deref().unwrap_or("(no detail)")
        ),
        other => other.to_string(),
    }
}

/// The account: the stored one, or a new one registered now (and stored).
async fn account(acme: &AcmeConfig, dir: &Path) -> Result<Account, String> {
    let builder = || match &acme.ca_file {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    };
    let path = dir.join("account.json");
    if let Ok(text) = fs::read_to_string(&path) {
        let credentials: AccountCredentials =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        return builder()
            .map_err(acme_error)?
            .from_credentials(credentials)
            .await
            .map_err(acme_error);
    }
    let contact = acme.contact.as_ref().map(|c| {
        if c.starts_with("mailto:") {
            c.clone()
        } else {
            format!("mailto:{c}")
        }
    });
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()
        .map_err(acme_error)?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            acme.directory.clone(),
            None,
        )
        .await
        .map_err(acme_error)?;
    let json = serde_json::to_string(&credentials).map_err(|e| e.to_string())?;
    write_private(&path, json.as_bytes())?;
    info!(directory = %acme.directory, "ACME account registered");
    Ok(account)
}

/// Runs one order: answers each authorization's challenge, finalizes, and returns the
/// certificate chain and its private key (PEM).
async fn obtain(
    acme: &AcmeConfig,
    dir: &Path,
    challenges: &Arc<Challenges>,
) -> Result<(String, String), String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let account = account(acme, dir).await?;
    let identifiers: Vec<Identifier> = acme
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(acme_error)?;
    let kind = match acme.challenge {
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        AcmeChallenge::Http01 => ChallengeType::Http01,
    };
    let mut answered: Vec<(String, String)> = Vec::new();
    let result = async {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(acme_error)?;
            if authz.status == AuthorizationStatus::Valid {
                continue;
            }
            let mut challenge = authz
                .challenge(kind.clone())
                .ok_or_else(|| format!("the ACME server offers no {kind:?} challenge"))?;
            let name = challenge.identifier().to_string();
            let key_authorization = challenge.key_authorization();
            match acme.challenge {
                AcmeChallenge::TlsAlpn01 => {
                    let cert = alpn_certificate(&name, key_authorization.digest().as_ref())?;
                    challenges
                        .alpn
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(name.clone(), cert);
                }
                AcmeChallenge::Http01 => {
                    challenges
                        .http
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(
                            challenge.token.clone(),
                            key_authorization.as_str().to_owned(),
                        );
                }
            }
            answered.push((name.clone(), challenge.token.clone()));
            debug!(name = %name, challenge = ?kind, "ACME challenge ready");
            challenge.set_ready().await.map_err(acme_error)?;
        }
        let status = order
            .poll_ready(&RetryPolicy::default().timeout(Duration::from_secs(60)))
            .await
            .map_err(acme_error)?;
        if status != OrderStatus::Ready {
            return Err(why_invalid(&mut order, &kind).await);
        }
        let key = order.finalize().await.map_err(acme_error)?;
        let chain = order
            .poll_certificate(&RetryPolicy::default().timeout(Duration::from_secs(60)))
            .await
            .map_err(acme_error)?;
        Ok((chain, key))
    }
    .await;
    for (name, token) in answered {
        challenges
            .alpn
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name);
        challenges
            .http
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&token);
    }
    result
}

/// Why an order did not become ready, from its authorizations' challenge errors.
async fn why_invalid(order: &mut instant_acme::Order, kind: &ChallengeType) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        let name = authz.identifier().to_string();
        if let Some(challenge) = authz.challenge(kind.clone()) {
            if let Some(p) = &challenge.error {
                reasons.push(format!(
                    "{name}: {}",
                    p.detail.as_deref().unwrap_or("(no detail)")
                ));
            }
        }
    }
    if reasons.is_empty() {
        format!("the {kind:?} challenge failed")
    } else {
        format!("the {kind:?} challenge failed: {}", reasons.join("; "))
    }
}

/// The self-signed certificate a TLS-ALPN-01 validation expects: the name, and the key
/// authorization's digest in the critical acmeIdentifier extension (RFC 8737 section 3).
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let pair = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let certificate = params.self_signed(&pair).map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(pair.serialize_pem().as_bytes())
        .map_err(|e| e.to_string())?;
    let signing = provider::sign::any_supported_type(&key).map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(
        vec![certificate.der().clone()],
        signing,
    )))
}

/// Answers HTTP-01 on `/.well-known/acme-challenge/<token>` until shutdown.
pub(crate) async fn serve_http01(
    listener: TcpListener,
    challenges: Arc<Challenges>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let challenges = challenges.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<_>| {
                let answer = request
                    .uri()
                    .path()
                    .strip_prefix("/.well-known/acme-challenge/")
                    .and_then(|token| challenges.http_answer(token));
                let response = match answer {
                    Some(a) => Response::new(Full::new(Bytes::from(a))),
                    None => {
                        let mut r = Response::new(Full::new(Bytes::from_static(b"not found")));
                        *r.status_mut() = StatusCode::NOT_FOUND;
                        r
                    }
                };
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = tokio::time::timeout(
                Duration::from_secs(30),
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            )
            .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme(domains: &[&str]) -> AcmeConfig {
        AcmeConfig {
            domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            contact: None,
            directory: "https://127.0.0.1:1/dir".into(),
            ca_file: None,
            challenge: AcmeChallenge::TlsAlpn01,
            http_bind: "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
            check_interval_secs: 60,
        }
    }

    #[test]
    fn the_stand_in_is_replaced_at_once_and_a_real_one_at_two_thirds() {
        let dir = tempfile::tempdir().unwrap_or_else(|_| unreachable!());
        let config = acme(&["broker.example.org"]);
        prepare(dir.path(), &config).unwrap_or_else(|e| panic!("{e}"));
        let (cert, _) = cert_paths(dir.path());
        let stored = inspect(&cert).unwrap_or_else(|| unreachable!());
        assert!(stored.stand_in);
        assert_eq!(stored.names, vec!["broker.example.org".to_owned()]);
        assert_eq!(
            renew_at(Some(&stored), &config.domains),
            SystemTime::UNIX_EPOCH
        );
        let real = Stored {
            stand_in: false,
            ..stored
        };
        let lifetime = real
            .not_after
            .duration_since(real.not_before)
            .unwrap_or_default();
        assert_eq!(
            renew_at(Some(&real), &config.domains),
            real.not_after - lifetime / 3
        );
        // A name the certificate lacks: replaced at once.
        let more = acme(&["broker.example.org", "other.example.org"]);
        assert_eq!(renew_at(Some(&real), &more.domains), SystemTime::UNIX_EPOCH);
        assert_eq!(renew_at(None, &config.domains), SystemTime::UNIX_EPOCH);
    }

    #[test]
    fn alpn_challenge_certificate_carries_the_digest() {
        let key =
            alpn_certificate("broker.example.org", &[7u8; 32]).unwrap_or_else(|e| panic!("{e}"));
        let (_, parsed) = x509_parser::parse_x509_certificate(key.cert[0].as_ref())
            .unwrap_or_else(|_| unreachable!());
        // id-pe-acmeIdentifier, 1.3.6.1.5.5.7.1.31, critical.
        let ext = parsed
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .unwrap_or_else(|| panic!("no acmeIdentifier extension"));
        assert!(ext.critical);
        assert!(ext.value.ends_with(&[7u8; 32]));
    }
}
