//! Test servers for the pool: a small `h2` server over TLS or h2c whose behaviour each test
//! picks, and the certificates to run it with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use volley_provider::tls::{ClientIdentity, TlsOptions};
use volley_provider::{Endpoint, Pool, PoolConfig};

pub mod raw;

fn next_serial() -> u64 {
    static SERIAL: AtomicU64 = AtomicU64::new(1);
    SERIAL.fetch_add(1, Ordering::Relaxed)
}

/// A CA (named uniquely, as distinct real CAs are), a server certificate for 127.0.0.1 signed by it, and a client certificate.
pub struct Pki {
    /// Holds the PEM files; they are deleted when the `Pki` is dropped.
    _dir: tempfile::TempDir,
    pub ca_pem: String,
    pub ca_path: PathBuf,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub client_cert_path: PathBuf,
    pub client_key_path: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            DnType::CommonName,
            format!("volley test ca {}", next_serial()),
        );
        let ca = params.self_signed(&ca_key).unwrap();

        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
            .unwrap()
            .signed_by(&server_key, &ca, &ca_key)
            .unwrap();

        let client_key = KeyPair::generate().unwrap();
        let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        client_params
            .distinguished_name
            .push(DnType::CommonName, "com.example.app");
        let client = client_params.signed_by(&client_key, &ca, &ca_key).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let ca_path = write("ca.pem", &ca.pem());
        let client_cert_path = write("client.pem", &client.pem());
        let client_key_path = write("client.key", &client_key.serialize_pem());
        Pki {
            ca_pem: ca.pem(),
            ca_path,
            server_cert_pem: server.pem(),
            server_key_pem: server_key.serialize_pem(),
            client_cert_path,
            client_key_path,
            _dir: dir,
        }
    }

    /// Client options trusting only this CA.
    pub fn client_tls(&self) -> TlsOptions {
        TlsOptions {
            extra_ca_pem: Some(self.ca_path.clone()),
            only_extra_ca: true,
            client_identity: None,
        }
    }

    pub fn client_identity(&self) -> ClientIdentity {
        ClientIdentity {
            cert_pem: self.client_cert_path.clone(),
            key_pem: self.client_key_path.clone(),
        }
    }

    /// A server configuration offering h2 that accepts, but does not require, client
    /// certificates from this CA.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = rustls_pemfile::certs(&mut self.server_cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut self.server_key_pem.as_bytes())
            .unwrap()
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut self.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }
}

/// What the test server does with each request.
#[derive(Clone, Copy, Debug)]
pub enum Behaviour {
    /// 200 with the request body echoed and `x-connection: <n>`.
    Echo,
    /// Accepts the stream and never answers.
    Silent,
    /// Refuses the first `n` streams with REFUSED_STREAM, then echoes.
    RefuseFirst(u64),
    /// Echoes, but the first connection starts a graceful shutdown (GOAWAY, PING, GOAWAY
    /// with the last processed stream) after accepting `n` streams.
    GracefulGoawayAfter(u64),
}

/// Counters the test server keeps.
#[derive(Default)]
pub struct ServerStats {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    pub refused: AtomicU64,
    pub goaways: AtomicU64,
    pub open_streams: AtomicUsize,
    pub max_open_streams: AtomicUsize,
    pub client_cert_seen: AtomicBool,
}

/// An `h2` server on 127.0.0.1, running on the test's runtime.
pub struct TestServer {
    pub addr: SocketAddr,
    pub stats: Arc<ServerStats>,
    pub tls: bool,
}

impl TestServer {
    /// Starts a server; `tls` = Some(config) for TLS, None for h2c.
    pub async fn start(
        tls: Option<Arc<rustls::ServerConfig>>,
        behaviour: Behaviour,
        max_concurrent_streams: Option<u32>,
    ) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(ServerStats::default());
        let is_tls = tls.is_some();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let server_stats = stats.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let stats = server_stats.clone();
                let number = stats.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        None => serve(tcp, number, behaviour, max_concurrent_streams, stats).await,
                        Some(acceptor) => {
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            if tls.get_ref().1.peer_certificates().is_some() {
                                stats.client_cert_seen.store(true, Ordering::SeqCst);
                            }
                            serve(tls, number, behaviour, max_concurrent_streams, stats).await
                        }
                    }
                });
            }
        });
        TestServer {
            addr,
            stats,
            tls: is_tls,
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr).parse().unwrap()
    }

    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::SeqCst)
    }
}

async fn serve<T>(
    io: T,
    number: u64,
    behaviour: Behaviour,
    max_concurrent_streams: Option<u32>,
    stats: Arc<ServerStats>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = h2::server::Builder::new();
    if let Some(max) = max_concurrent_streams {
        builder.max_concurrent_streams(max);
    }
    let Ok(mut connection) = builder.handshake::<_, Bytes>(io).await else {
        return;
    };
    let mut accepted = 0;
    while let Some(Ok((request, respond))) = connection.accept().await {
        accepted += 1;
        if let Behaviour::GracefulGoawayAfter(n) = behaviour {
            if number == 1 && accepted == n {
                connection.graceful_shutdown();
                stats.goaways.fetch_add(1, Ordering::SeqCst);
            }
        }
        let stats = stats.clone();
        tokio::spawn(async move {
            let open = stats.open_streams.fetch_add(1, Ordering::SeqCst) + 1;
            stats.max_open_streams.fetch_max(open, Ordering::SeqCst);
            handle(request, respond, number, behaviour, &stats).await;
            stats.open_streams.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

async fn handle(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    connection: u64,
    behaviour: Behaviour,
    stats: &ServerStats,
) {
    match behaviour {
        Behaviour::RefuseFirst(n) if stats.refused.load(Ordering::SeqCst) < n => {
            stats.refused.fetch_add(1, Ordering::SeqCst);
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            return;
        }
        _ => {}
    }
    let mut body = request.into_body();
    let mut received = Vec::new();
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else { return };
        let _ = body.flow_control().release_capacity(chunk.len());
        received.extend_from_slice(&chunk);
    }
    stats.requests.fetch_add(1, Ordering::SeqCst);
    if let Behaviour::Silent = behaviour {
        std::future::pending::<()>().await;
    }
    let response = http::Response::builder()
        .status(200)
        .header("x-connection", connection.to_string())
        .body(())
        .unwrap();
    let end = received.is_empty();
    let Ok(mut stream) = respond.send_response(response, end) else {
        return;
    };
    if !end {
        let _ = stream.send_data(Bytes::from(received), true);
    }
}

/// A pool for `server` with test-sized timeouts.
pub fn pool_for(endpoint: Endpoint, tls: TlsOptions, connections: usize) -> Pool {
    let mut config = PoolConfig::new(endpoint);
    config.tls = tls;
    config.connections = connections;
    config.request_timeout = Duration::from_secs(10);
    config.connect_timeout = Duration::from_secs(5);
    Pool::new(config).unwrap()
}

/// A POST to `/3/device/<n>` with a path-only URI, as the clients build it.
pub fn post(n: usize) -> impl Fn() -> http::Request<()> {
    move || {
        http::Request::builder()
            .method("POST")
            .uri(format!("/3/device/{n:064x}"))
            .body(())
            .unwrap()
    }
}
