//! TLS: certificates per tenant domain, chosen by SNI from the current routing table, so a
//! reload that adds a domain serves its certificate without a restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tenantry_domain::{TlsFiles, normalize_host};

use crate::table::RoutingTable;

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read or holds no certificate.
    #[error("certificate {path}: {reason}")]
    Cert {
        /// File.
        path: PathBuf,
        /// Cause.
        reason: String,
    },
    /// The key file could not be read or parsed.
    #[error("private key {path}: {reason}")]
    Key {
        /// File.
        path: PathBuf,
        /// Cause.
        reason: String,
    },
}

/// A loaded certificate with the modification times of its files.
type Loaded = (Option<SystemTime>, Option<SystemTime>, Arc<CertifiedKey>);

/// Loaded certificates, keyed by their files and modification times, so a reload reads only
/// the files that changed.
#[derive(Default)]
pub struct CertCache {
    loaded: HashMap<(PathBuf, PathBuf), Loaded>,
}

fn mtime(p: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl CertCache {
    /// Loads (or reuses) the certified key of a route.
    pub fn load(&mut self, files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsError> {
        let key = (files.cert.clone(), files.key.clone());
        let (cm, km) = (mtime(&files.cert), mtime(&files.key));
        if let Some((c, k, ck)) = self.loaded.get(&key)
            && *c == cm
            && *k == km
            && cm.is_some()
        {
            return Ok(Arc::clone(ck));
        }
        let ck = Arc::new(load_certified_key(files)?);
        self.loaded.insert(key, (cm, km, Arc::clone(&ck)));
        Ok(ck)
    }
}

/// Reads a PEM chain and key into a rustls certified key.
pub fn load_certified_key(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let cert_err = |reason: String| TlsError::Cert {
        path: files.cert.clone(),
        reason,
    };
    let key_err = |reason: String| TlsError::Key {
        path: files.key.clone(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("no certificate found in PEM file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| key_err(e.to_string()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| key_err(format!("unsupported key: {e}")))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match()
        .map_err(|e| key_err(format!("does not match the certificate: {e}")))?;
    Ok(ck)
}

/// Picks the certificate for the SNI name from the live routing table.
#[derive(Debug)]
pub struct SniResolver {
    table: Arc<ArcSwap<RoutingTable>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?;
        let host = normalize_host(name);
        let table = self.table.load();
        table.host_entry(&host).and_then(|e| e.cert.clone())
    }
}

/// A rustls server config that resolves certificates by SNI and offers h2 and http/1.1.
pub fn server_config(table: Arc<ArcSwap<RoutingTable>>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| rustls::ServerConfig::builder());
    let mut cfg = builder
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { table }));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}
