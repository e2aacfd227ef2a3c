//! rustls client configuration for provider connections.
//!
//! Volley uses exactly one crypto provider, ring; [`install_crypto_provider`] installs it as
//! the process default and every configuration built here names it explicitly.

use std::path::PathBuf;
use std::sync::Arc;

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
}

/// Installs ring as the process-wide rustls crypto provider; harmless when already installed.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds a client configuration offering ALPN `h2`.
pub fn client_config(options: &TlsOptions) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let _ = options;
    todo!("volley-provider helper fills this in")
}
