//! TLS for the `tls` and `wss` listeners: rustls (TLS 1.2 and 1.3, no OpenSSL), a certificate
//! that can be replaced while the broker runs, and optional client certificates.
//!
//! A [`ReloadableCert`] is what rustls asks for a certificate at every handshake; replacing
//! its contents changes what new connections get, while established ones keep their session.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::config::ListenerConfig;

/// A certificate and key read from PEM files, replaceable at run time.
#[derive(Debug)]
pub struct ReloadableCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, Option<SystemTime>)>,
}

fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| format!("{}: {e}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no certificate in the file",
            cert_path.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| format!("{}: {e}", key_path.display()))?;
    let signing = provider::sign::any_supported_type(&key)
        .map_err(|e| format!("{}: {e}", key_path.display()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl ReloadableCert {
    /// Reads the certificate chain and key.
    pub fn open(cert_path: &Path, key_path: &Path) -> Result<Arc<ReloadableCert>, String> {
        let key = load(cert_path, key_path)?;
        Ok(Arc::new(ReloadableCert {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: RwLock::new((key, modified(cert_path).max(modified(key_path)))),
        }))
    }

    /// Reads the files again. A pair that does not load leaves the old certificate in place.
    pub fn reload(&self) {
        match load(&self.cert_path, &self.key_path) {
            Ok(key) => {
                let stamp = modified(&self.cert_path).max(modified(&self.key_path));
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = (key, stamp);
                info!(cert = %self.cert_path.display(), "certificate reloaded");
            }
            Err(e) => warn!(error = %e, "certificate not reloaded; keeping the current one"),
        }
    }

    /// Reloads if either file changed since the last load.
    pub fn reload_if_changed(&self) {
        let stamp = modified(&self.cert_path).max(modified(&self.key_path));
        let seen = self.current.read().unwrap_or_else(|p| p.into_inner()).1;
        if stamp != seen {
            self.reload();
        }
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .0
                .clone(),
        )
    }
}

/// A TLS acceptor for `listener`, and the certificate it serves (for reloading).
pub fn acceptor(listener: &ListenerConfig) -> Result<(TlsAcceptor, Arc<ReloadableCert>), String> {
    let (Some(cert), Some(key)) = (&listener.cert, &listener.key) else {
        return Err("a TLS listener needs `cert` and `key`".into());
    };
    let resolver = ReloadableCert::open(cert, key)?;
    let provider = Arc::new(provider::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = match &listener.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in
                CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?
            {
                roots
                    .add(cert.map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if listener.require_client_cert {
                verifier.build()
            } else {
                verifier.allow_unauthenticated().build()
            }
            .map_err(|e| e.to_string())?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_cert_resolver(resolver.clone());
    Ok((TlsAcceptor::from(Arc::new(config)), resolver))
}

/// The Common Name of a client certificate.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}
