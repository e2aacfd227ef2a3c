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

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(name)
    }

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn self_signed() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn default_options_trust_the_web_roots_and_offer_h2() {
        let config = client_config(&TlsOptions::default()).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
        assert!(!config.client_auth_cert_resolver.has_certs());
    }

    #[test]
    fn extra_ca_files_are_read_with_every_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = self_signed();
        let (second, _) = self_signed();
        let path = write(&dir, "cas.pem", &format!("{first}{second}"));
        for only_extra_ca in [false, true] {
            let options = TlsOptions {
                extra_ca_pem: Some(path.clone()),
                only_extra_ca,
                client_identity: None,
            };
            client_config(&options).unwrap();
        }
        assert_eq!(read_certs(&path).unwrap().len(), 2);
    }

    #[test]
    fn bad_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        let empty = write(&dir, "empty.pem", "");
        let key_only = write(&dir, "key-only.pem", &key);
        let cert_only = write(&dir, "cert-only.pem", &cert);
        let missing = dir.path().join("missing.pem");
        let ca = |path: &PathBuf| TlsOptions {
            extra_ca_pem: Some(path.clone()),
            ..Default::default()
        };
        let identity = |cert: &PathBuf, key: &PathBuf| TlsOptions {
            client_identity: Some(ClientIdentity {
                cert_pem: cert.clone(),
                key_pem: key.clone(),
            }),
            ..Default::default()
        };
        let cases = [
            (ca(&empty), &empty, "no certificate found"),
            (ca(&key_only), &key_only, "no certificate found"),
            (ca(&missing), &missing, "cannot read"),
            (
                identity(&key_only, &key_only),
                &key_only,
                "no certificate found",
            ),
            (
                identity(&cert_only, &cert_only),
                &cert_only,
                "no private key found",
            ),
            (identity(&cert_only, &missing), &missing, "cannot read"),
        ];
        for (options, path, expected) in cases {
            let error = client_config(&options).unwrap_err().to_string();
            assert!(error.contains(&path.display().to_string()), "{error}");
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn a_key_that_does_not_match_its_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = self_signed();
        let (_, other_key) = self_signed();
        let options = TlsOptions {
            client_identity: Some(ClientIdentity {
                cert_pem: write(&dir, "cert.pem", &cert),
                key_pem: write(&dir, "key.pem", &other_key),
            }),
            ..Default::default()
        };
        let error = client_config(&options).unwrap_err().to_string();
        assert!(error.contains("key.pem"), "{error}");
    }

    #[test]
    fn trusting_only_extra_cas_needs_a_ca_file() {
        let options = TlsOptions {
            only_extra_ca: true,
            ..Default::default()
        };
        assert!(matches!(
            client_config(&options),
            Err(TlsError::NoTrustedRoots)
        ));
    }

    #[test]
    fn client_keys_load_in_pkcs8_pkcs1_and_sec1_form() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        let pkcs8 = (write(&dir, "c.pem", &cert), write(&dir, "c.key", &key));
        let pkcs1 = (testdata("client-pkcs1.pem"), testdata("client-pkcs1.key"));
        let sec1 = (testdata("client-sec1.pem"), testdata("client-sec1.key"));
        for (cert_pem, key_pem) in [pkcs8, pkcs1, sec1] {
            let options = TlsOptions {
                client_identity: Some(ClientIdentity {
                    cert_pem,
                    key_pem: key_pem.clone(),
                }),
                ..Default::default()
            };
            let config =
                client_config(&options).unwrap_or_else(|e| panic!("{}: {e}", key_pem.display()));
            assert!(config.client_auth_cert_resolver.has_certs());
        }
    }
}
