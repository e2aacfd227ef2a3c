//! Who is at the other end of a link between nodes: a cluster CA, one certificate per node,
//! and the rustls configurations that make every link mutual TLS 1.3.
//!
//! A node certificate names its role twice: as the DNS name [`NodeRole::dns_name`] (say
//! `agent.volley.invalid`, under the `.invalid` top-level domain that never resolves), which
//! is what a peer checks with rustls' standard verifier, and as a SAN URI
//! `volley://agent/a1`, which gives logs the node's name. A client dials with the server's
//! role as the server name, so a front that reaches an agent's port by mistake is refused at
//! the handshake; a server reads its client's role from the verified certificate
//! ([`peer_role`]) and authorises each RPC by it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The common name of every Volley cluster CA; a CA is rebuilt from its key and this name to
/// sign more certificates.
const CA_NAME: &str = "Volley cluster CA";
/// How long a new CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a node certificate is valid unless asked otherwise.
pub const NODE_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Why certificates could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A PEM file holds no certificate or key, or one that cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// rcgen could not make a key or certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("tls configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What a node is, as its certificate says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeRole {
    /// The HTTP API.
    Front,
    /// The job store and dispatcher.
    Controller,
    /// A delivering node.
    Agent,
}

impl NodeRole {
    /// Every role.
    pub const ALL: [NodeRole; 3] = [NodeRole::Front, NodeRole::Controller, NodeRole::Agent];

    /// `front`, `controller` or `agent`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Front => "front",
            NodeRole::Controller => "controller",
            NodeRole::Agent => "agent",
        }
    }

    /// The DNS name in every certificate of this role; peers check it.
    pub fn dns_name(self) -> &'static str {
        match self {
            NodeRole::Front => "front.volley.invalid",
            NodeRole::Controller => "controller.volley.invalid",
            NodeRole::Agent => "agent.volley.invalid",
        }
    }
}

impl std::fmt::Display for NodeRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for NodeRole {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeRole::ALL
            .into_iter()
            .find(|role| role.as_str() == s)
            .ok_or_else(|| {
                TlsError::Invalid(format!(
                    "unknown role {s:?}: use front, controller or agent"
                ))
            })
    }
}

/// Checks a node name: 1 to 63 characters of `a-z`, `0-9` and `-`.
fn check_name(name: &str) -> Result<(), TlsError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(TlsError::Invalid(format!(
            "node name {name:?}: use 1 to 63 characters of a-z, 0-9 and -"
        )))
    }
}

fn offset(from_now: Duration, past: bool) -> time::OffsetDateTime {
    let now = time::OffsetDateTime::now_utc();
    let span = time::Duration::try_from(from_now).unwrap_or(time::Duration::MAX);
    if past {
        now.saturating_sub(span)
    } else {
        now.saturating_add(span)
    }
}

/// A cluster certificate authority: it signs one certificate per node.
pub struct ClusterCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

impl ClusterCa {
    fn params() -> Result<CertificateParams, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, CA_NAME);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ok(params)
    }

    /// A new CA, valid for ten years.
    pub fn generate() -> Result<ClusterCa, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = ClusterCa::params()?;
        params.not_before = offset(Duration::from_secs(3600), true);
        params.not_after = offset(CA_VALIDITY, false);
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa { cert, key })
    }

    /// The CA whose key is `key_pem`, to sign more certificates. Certificates it signs verify
    /// against the CA certificate first written for that key (same name, same key).
    pub fn from_key_pem(key_pem: &str) -> Result<ClusterCa, TlsError> {
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| TlsError::Invalid(format!("not a CA private key: {e}")))?;
        let cert = ClusterCa::params()?.self_signed(&key)?;
        Ok(ClusterCa { cert, key })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA's private key, PEM. Keep it off the nodes.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A certificate and key for node `name` of `role`, valid for `valid_for` from now.
    pub fn issue(
        &self,
        role: NodeRole,
        name: &str,
        valid_for: Duration,
    ) -> Result<NodeIdentity, TlsError> {
        self.issue_between(role, name, Duration::from_secs(3600), valid_for, false)
    }

    /// A certificate valid from `before` ago until `until` from now (or ago, when `expired`).
    fn issue_between(
        &self,
        role: NodeRole,
        name: &str,
        before: Duration,
        until: Duration,
        expired: bool,
    ) -> Result<NodeIdentity, TlsError> {
        check_name(name)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![role.dns_name().to_owned()])?;
        let uri = format!("volley://{role}/{name}");
        params.subject_alt_names.push(SanType::URI(
            uri.as_str()
                .try_into()
                .map_err(|_| TlsError::Invalid(format!("{uri} is not a valid uri")))?,
        ));
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{role} {name}"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = offset(before, true);
        params.not_after = offset(until, expired);
        let not_after = params.not_after.unix_timestamp();
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(NodeIdentity {
            role,
            name: name.to_owned(),
            ca_pem: self.cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after,
        })
    }

    /// A certificate that expired an hour ago (for tests of the refusal).
    pub fn issue_expired(&self, role: NodeRole, name: &str) -> Result<NodeIdentity, TlsError> {
        self.issue_between(
            role,
            name,
            Duration::from_secs(2 * 24 * 3600),
            Duration::from_secs(3600),
            true,
        )
    }
}

/// Where a node reads its CA certificate, certificate and key (`cluster.ca_file`,
/// `cluster.cert_file`, `cluster.key_file`), and reads them again to reload them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityFiles {
    /// The cluster CA's certificate.
    pub ca: PathBuf,
    /// The node's certificate.
    pub cert: PathBuf,
    /// The node's private key.
    pub key: PathBuf,
}

impl IdentityFiles {
    /// Reads and checks the three files ([`NodeIdentity::from_files`]).
    pub fn load(&self) -> Result<NodeIdentity, TlsError> {
        NodeIdentity::from_files(&self.ca, &self.cert, &self.key)
    }
}

/// A node's certificate, its key and the cluster CA it trusts.
#[derive(Clone)]
pub struct NodeIdentity {
    role: NodeRole,
    name: String,
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
    /// The certificate's end of validity, seconds since the epoch.
    not_after: i64,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("role", &self.role)
            .field("name", &self.name)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.display().to_string(),
        source,
    })
}

fn certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Invalid(format!("{what}: no certificate in it")));
    }
    Ok(certs)
}

fn private_key(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| TlsError::Invalid(format!("{what}: {e}")))?
        .ok_or_else(|| TlsError::Invalid(format!("{what}: no private key in it")))
}

fn roots(ca_pem: &str, what: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs(ca_pem, what)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Invalid(format!("{what}: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// The role whose DNS name `cert` carries (a certificate rustls has already verified).
pub fn peer_role(cert: &CertificateDer<'_>) -> Option<NodeRole> {
    let cert = webpki::EndEntityCert::try_from(cert).ok()?;
    NodeRole::ALL.into_iter().find(|role| {
        ServerName::try_from(role.dns_name())
            .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
    })
}

/// The node name of `cert`'s `volley://role/name` URI, if it has one.
pub fn peer_name(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let names = parsed.subject_alternative_name().ok()??;
    names
        .value
        .general_names
        .iter()
        .find_map(|name| match name {
            GeneralName::URI(uri) => uri
                .strip_prefix("volley://")
                .and_then(|rest| rest.split_once('/'))
                .map(|(_, name)| name.to_owned()),
            _ => None,
        })
}

/// When `cert` expires, seconds since the epoch.
pub fn certificate_not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

impl NodeIdentity {
    /// Reads a node's CA certificate, certificate and key (PEM files), and checks that the
    /// certificate is a Volley node certificate signed by that CA and valid now.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<NodeIdentity, TlsError> {
        let ca_pem = read(ca)?;
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        let ca_what = ca.display().to_string();
        let cert_what = cert.display().to_string();
        let chain = certs(&cert_pem, &cert_what)?;
        let key_what = key.display().to_string();
        // The key must be the certificate's: a node half-way through a rotation (new
        // certificate, old key) would otherwise fail every handshake it makes.
        rustls::sign::CertifiedKey::from_der(
            chain.clone(),
            private_key(&key_pem, &key_what)?,
            &provider(),
        )
        .map_err(|e| TlsError::Invalid(format!("{key_what} is not {cert_what}'s key: {e}")))?;
        let roots = roots(&ca_pem, &ca_what)?;
        let leaf = &chain[0];
        let role = peer_role(leaf).ok_or_else(|| {
            TlsError::Invalid(format!(
                "{cert_what}: not a volley node certificate (no front, controller or agent \
                 name); issue one with `volley certs issue`"
            ))
        })?;
        let name = peer_name(leaf).unwrap_or_default();
        let not_after = certificate_not_after(leaf).unwrap_or(0);
        // The same check a peer makes, so that a mismatched CA or an expired certificate is
        // a startup error naming the files rather than refused links later.
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| TlsError::Invalid(format!("{ca_what}: {e}")))?;
        verifier
            .verify_client_cert(leaf, &chain[1..], UnixTime::now())
            .map_err(|e| {
                TlsError::Invalid(format!(
                    "{cert_what} does not verify against {ca_what}: {e}"
                ))
            })?;
        Ok(NodeIdentity {
            role,
            name,
            ca_pem,
            cert_pem,
            key_pem,
            not_after,
        })
    }

    /// Writes the certificate and key as `DIR/ROLE-NAME.pem` and `DIR/ROLE-NAME-key.pem`
    /// (the key readable by its owner only); returns both paths.
    pub fn write(&self, dir: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf), TlsError> {
        let stem = format!("{}-{}", self.role, self.name);
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}-key.pem"));
        write_file(&cert, &self.cert_pem, false)?;
        write_file(&key, &self.key_pem, true)?;
        Ok((cert, key))
    }

    /// Whether `other` holds the same CA, certificate and key.
    pub fn same_as(&self, other: &NodeIdentity) -> bool {
        self.ca_pem == other.ca_pem
            && self.cert_pem == other.cert_pem
            && self.key_pem == other.key_pem
    }

    /// The node's role.
    pub fn role(&self) -> NodeRole {
        self.role
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// When the certificate expires, seconds since the epoch.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The node certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Serves TLS 1.3 only, and requires a client certificate signed by the cluster CA.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots(&self.ca_pem, "ca")?, provider())
                .build()
                .map_err(|e| TlsError::Invalid(format!("ca: {e}")))?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                certs(&self.cert_pem, "certificate")?,
                private_key(&self.key_pem, "key")?,
            )?;
        Ok(Arc::new(config))
    }

    /// Dials TLS 1.3 only, presenting this node's certificate and trusting the cluster CA.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots(&self.ca_pem, "ca")?)
            .with_client_auth_cert(
                certs(&self.cert_pem, "certificate")?,
                private_key(&self.key_pem, "key")?,
            )?;
        Ok(Arc::new(config))
    }
}

/// The one crypto provider of the project.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Writes `contents` to `path`; a secret is created readable by its owner only.
pub fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), TlsError> {
    use std::io::Write as _;
    let io = |source| TlsError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let _ = secret;
    let mut file = options.open(path).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)
}

/// The certificates of a whole cluster made on the spot: one CA and an identity per role,
/// for `volley demo`, `volley standalone` and tests, which need no set-up.
#[derive(Debug, Clone)]
pub struct EphemeralCluster {
    /// The front's identity.
    pub front: NodeIdentity,
    /// The controller's identity.
    pub controller: NodeIdentity,
    /// The agents' identity (one, shared by every agent of the process).
    pub agent: NodeIdentity,
}

impl EphemeralCluster {
    /// A new CA, kept in memory only, and one certificate per role, valid for a year.
    pub fn generate() -> Result<EphemeralCluster, TlsError> {
        let ca = ClusterCa::generate()?;
        Ok(EphemeralCluster {
            front: ca.issue(NodeRole::Front, "front", NODE_VALIDITY)?,
            controller: ca.issue(NodeRole::Controller, "controller", NODE_VALIDITY)?,
            agent: ca.issue(NodeRole::Agent, "agent", NODE_VALIDITY)?,
        })
    }

    /// Secured links for a node of `role`.
    pub fn links(&self, role: NodeRole) -> Result<crate::Links, TlsError> {
        let identity = match role {
            NodeRole::Front => &self.front,
            NodeRole::Controller => &self.controller,
            NodeRole::Agent => &self.agent,
        };
        crate::Links::tls(identity.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    /// Runs one handshake: `client` dialling a server of `server`'s identity as role
    /// `dial`. Returns the role the server saw, or the error either side hit.
    async fn handshake(
        server: &NodeIdentity,
        client: ClientConfig,
        dial: NodeRole,
    ) -> Result<(Option<NodeRole>, Option<String>), String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(server.server_config().unwrap());
        let serving = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
            let peer = tls.get_ref().1.peer_certificates().map(|c| c[0].clone());
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((
                peer.as_ref().and_then(peer_role),
                peer.as_ref().and_then(peer_name),
            ))
        });
        let connector = TlsConnector::from(Arc::new(client));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from(dial.dns_name()).unwrap();
        let client_side = async {
            let mut tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            tls.write_all(b"x").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(())
        };
        let client_result = client_side.await;
        let server_result = serving.await.unwrap();
        client_result?;
        server_result
    }

    #[tokio::test]
    async fn nodes_of_one_ca_see_each_others_roles() {
        let ca = ClusterCa::generate().unwrap();
        let controller = ca.issue(NodeRole::Controller, "c1", NODE_VALIDITY).unwrap();
        let front = ca.issue(NodeRole::Front, "f1", NODE_VALIDITY).unwrap();
        let client = Arc::unwrap_or_clone(front.client_config().unwrap());
        let seen = handshake(&controller, client, NodeRole::Controller)
            .await
            .unwrap();
        assert_eq!(seen, (Some(NodeRole::Front), Some("f1".to_owned())));
    }

    #[tokio::test]
    async fn strangers_are_refused_at_the_handshake() {
        let ca = ClusterCa::generate().unwrap();
        let controller = ca.issue(NodeRole::Controller, "c1", NODE_VALIDITY).unwrap();

        // No client certificate.
        let anonymous = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots(ca.cert_pem().as_str(), "ca").unwrap())
            .with_no_client_auth();
        assert!(handshake(&controller, anonymous, NodeRole::Controller)
            .await
            .is_err());

        // A certificate from another CA.
        let other = ClusterCa::generate().unwrap();
        let stranger = other.issue(NodeRole::Front, "f1", NODE_VALIDITY).unwrap();
        // It trusts our CA, so only the server's check of its certificate can refuse it.
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots(&ca.cert_pem(), "ca").unwrap())
            .with_client_auth_cert(
                certs(stranger.cert_pem(), "c").unwrap(),
                private_key(&stranger.key_pem, "k").unwrap(),
            )
            .unwrap();
        assert!(handshake(&controller, client, NodeRole::Controller)
            .await
            .is_err());

        // An expired certificate of the right CA.
        let expired = ca.issue_expired(NodeRole::Front, "old").unwrap();
        let client = Arc::unwrap_or_clone(expired.client_config().unwrap());
        assert!(handshake(&controller, client, NodeRole::Controller)
            .await
            .is_err());

        // A front dialling what it takes for a controller, where an agent answers.
        let agent = ca.issue(NodeRole::Agent, "a1", NODE_VALIDITY).unwrap();
        let front = ca.issue(NodeRole::Front, "f1", NODE_VALIDITY).unwrap();
        let client = Arc::unwrap_or_clone(front.client_config().unwrap());
        let error = handshake(&agent, client, NodeRole::Controller)
            .await
            .unwrap_err();
        assert!(error.contains("certificate"), "{error}");
    }

    #[tokio::test]
    async fn tls_1_2_is_refused() {
        let ca = ClusterCa::generate().unwrap();
        let controller = ca.issue(NodeRole::Controller, "c1", NODE_VALIDITY).unwrap();
        let front = ca.issue(NodeRole::Front, "f1", NODE_VALIDITY).unwrap();
        let old = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots(&ca.cert_pem(), "ca").unwrap())
            .with_client_auth_cert(
                certs(front.cert_pem(), "c").unwrap(),
                private_key(&front.key_pem, "k").unwrap(),
            )
            .unwrap();
        assert!(handshake(&controller, old, NodeRole::Controller)
            .await
            .is_err());
    }

    #[test]
    fn files_round_trip_and_a_ca_key_signs_more() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::generate().unwrap();
        let ca_file = dir.path().join("ca.pem");
        write_file(&ca_file, &ca.cert_pem(), false).unwrap();
        // A CA rebuilt from its key alone signs certificates that verify against the
        // certificate first written.
        let again = ClusterCa::from_key_pem(&ca.key_pem()).unwrap();
        let agent = again.issue(NodeRole::Agent, "a-1", NODE_VALIDITY).unwrap();
        let (cert, key) = agent.write(dir.path()).unwrap();
        let loaded = NodeIdentity::from_files(&ca_file, &cert, &key).unwrap();
        assert_eq!(loaded.role(), NodeRole::Agent);
        assert_eq!(loaded.name(), "a-1");
        assert!(loaded.not_after() > 0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // Another CA's certificate is a startup error naming both files.
        let other = ClusterCa::generate().unwrap();
        let stranger = other.issue(NodeRole::Agent, "x", NODE_VALIDITY).unwrap();
        let (cert, key) = stranger.write(dir.path()).unwrap();
        let error = NodeIdentity::from_files(&ca_file, &cert, &key)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("agent-x.pem") && error.contains("ca.pem"),
            "{error}"
        );
        assert!(check_name("Bad Name").is_err());
    }
}
