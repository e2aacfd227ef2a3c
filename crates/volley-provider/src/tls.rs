//! rustls client configuration for provider connections.
//!
//! Volley uses exactly one crypto provider, ring; [`install_crypto_provider`] installs it as
//! the process default and every configuration built here names it explicitly.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// TLS options of a provider connection.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// A PEM file of extra CA certificates to trust besides the public web roots (a fake's CA).
    pub extra_ca_pem: Option<PathBuf>,
    /// Trust only `extra_ca_pem`, not the public web roots.
    pub only_extra_ca: bool,
    /// A client certificate and its key, both PEM (APNs certificate auth).
    pub client_identity: Option<ClientIdentity>,
}

/// A TLS client certificate chain and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// The PEM certificate chain.
    pub cert_pem: PathBuf,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: PathBuf,
}

/// Why a TLS configuration could not be built; names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file held no usable certificate or key.
    #[error("{path}: {what}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        what: String,
    },
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// `only_extra_ca` was set without `extra_ca_pem`, so no server could be trusted.
    #[error("only_extra_ca is set but no extra_ca_pem file is given")]
    NoTrustedRoots,
    /// The endpoint's host cannot be used as a TLS server name.
    #[error("{host:?} is not a valid tls server name")]
    ServerName {
        /// The host as configured.
        host: String,
    },
}

/// Installs ring as the process-wide rustls crypto provider; harmless when already installed.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds a client configuration offering ALPN `h2`.
pub fn client_config(options: &TlsOptions) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    if !options.only_extra_ca {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    match &options.extra_ca_pem {
        Some(path) => {
            for cert in read_certs(path)? {
                roots.add(cert).map_err(|e| TlsError::Invalid {
                    path: path.clone(),
                    what: format!("unusable ca certificate: {e}"),
                })?;
            }
        }
        None if options.only_extra_ca => return Err(TlsError::NoTrustedRoots),
        None => {}
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots);
    let mut config = match &options.client_identity {
        None => builder.with_no_client_auth(),
        Some(identity) => {
            let chain = read_certs(&identity.cert_pem)?;
            let key = read_key(&identity.key_pem)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::Invalid {
                    path: identity.key_pem.clone(),
                    what: format!(
                        "unusable client key for {}: {e}",
                        identity.cert_pem.display()
                    ),
                })?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in a PEM file; an error when there is none.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(pem.as_slice()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid {
            path: path.to_path_buf(),
            what: format!("malformed pem: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid {
            path: path.to_path_buf(),
            what: "no certificate found (expected PEM \"CERTIFICATE\" blocks)".into(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file, in any of the PKCS#8, PKCS#1 or SEC1 forms.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path)?;
    rustls_pemfile::private_key(&mut BufReader::new(pem.as_slice()))
        .map_err(|e| TlsError::Invalid {
            path: path.to_path_buf(),
            what: format!("malformed pem: {e}"),
        })?
        .ok_or_else(|| TlsError::Invalid {
            path: path.to_path_buf(),
            what: "no private key found (expected PKCS#8, PKCS#1 or SEC1 PEM)".into(),
        })
}
