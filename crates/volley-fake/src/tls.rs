//! The CA and server certificate minted at start-up, and the rustls server configuration.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};

use crate::FakeError;

/// A freshly minted CA and the server certificate it signed.
pub(crate) struct Minted {
    pub(crate) ca_pem: String,
    pub(crate) server_config: Arc<ServerConfig>,
    /// The server certificate, then the CA's.
    #[cfg(test)]
    pub(crate) chain: Vec<CertificateDer<'static>>,
}

impl Minted {
    /// The same certificate offered with other ALPN protocols, in order of preference.
    pub(crate) fn with_alpn(&self, protocols: &[&[u8]]) -> Arc<ServerConfig> {
        let mut config = ServerConfig::clone(&self.server_config);
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// Writes the CA certificate to `ca_out`, or to a temporary file that lives (and is removed
/// with) the returned handle, and says where it is.
pub(crate) fn write_ca(
    ca_pem: &str,
    ca_out: Option<&Path>,
) -> Result<(PathBuf, Option<tempfile::TempPath>), FakeError> {
    match ca_out {
        Some(path) => {
            std::fs::write(path, ca_pem)?;
            Ok((path.to_path_buf(), None))
        }
        None => {
            let mut file = tempfile::Builder::new()
                .prefix("volley-fake-ca-")
                .suffix(".pem")
                .tempfile()?;
            file.write_all(ca_pem.as_bytes())?;
            let path = file.into_temp_path();
            Ok((path.to_path_buf(), Some(path)))
        }
    }
}

/// Mints a CA and a server certificate for `localhost`, 127.0.0.1, ::1 and `listen` (the
/// address the fake is bound to, when it is neither loopback nor unspecified: a fake on
/// another host, as the multi-host tests run it), and a rustls configuration serving it with
/// ALPN `h2` (clients offering no ALPN are accepted too).
pub(crate) fn mint(listen: IpAddr) -> Result<Minted, FakeError> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "volley fake CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let server_key = KeyPair::generate()?;
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if !listen.is_loopback() && !listen.is_unspecified() {
        names.push(listen.to_string());
    }
    let mut server_params = CertificateParams::new(names)?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let server_cert = server_params.signed_by(&server_key, &ca_cert, &ca_key)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = vec![server_cert.der().clone(), ca_cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(AnyClientCert { provider }))
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Minted {
        ca_pem: ca_cert.pem(),
        server_config: Arc::new(config),
        #[cfg(test)]
        chain: vec![server_cert.der().clone(), ca_cert.der().clone()],
    })
}

/// Accepts any client certificate, or none: APNs certificate auth only needs to know that one was
/// presented, the fake does not check whose it is.
#[derive(Debug)]
struct AnyClientCert {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::ServerName;

    /// Whether a client trusting the fake's CA accepts its certificate for `name`.
    fn accepted(minted: &Minted, name: &str) -> bool {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(minted.chain[1].clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        verifier
            .verify_server_cert(
                &minted.chain[0],
                &[],
                &ServerName::try_from(name.to_owned()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .is_ok()
    }

    #[test]
    fn the_certificate_names_the_address_the_fake_listens_on() {
        let minted = mint("10.20.30.40".parse().unwrap()).unwrap();
        for name in ["10.20.30.40", "localhost", "127.0.0.1", "::1"] {
            assert!(accepted(&minted, name), "{name}");
        }
        assert!(!accepted(&minted, "10.20.30.41"));

        let loopback = mint("127.0.0.1".parse().unwrap()).unwrap();
        assert!(accepted(&loopback, "127.0.0.1"));
        assert!(!accepted(&loopback, "10.20.30.40"));
        let unspecified = mint("0.0.0.0".parse().unwrap()).unwrap();
        assert!(!accepted(&unspecified, "0.0.0.0"));
    }
}
