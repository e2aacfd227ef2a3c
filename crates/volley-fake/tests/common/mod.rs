//! A raw `h2` client over tokio-rustls for talking to the fake, and a few helpers.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderMap, Request, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use volley_fake::{keys, FakeConfig, FakeServer};

/// Starts a fake on an ephemeral loopback port.
pub fn start(config: FakeConfig) -> FakeServer {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    FakeServer::start(config, listener).unwrap()
}

/// A rustls client configuration trusting the fake's CA, offering the given ALPN protocols.
pub fn client_tls(server: &FakeServer, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(server.ca_pem_path()).unwrap();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// An h2 client connection (TLS with ALPN h2, or h2c), its driver spawned on the current runtime.
pub async fn connect(
    server: &FakeServer,
) -> (
    SendRequest<Bytes>,
    h2::client::Connection<Box<dyn Io>, Bytes>,
) {
    connect_with(server, &[b"h2"]).await
}

/// Object-safe transport so TLS and h2c connections have one type.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Like [`connect`], offering the given ALPN protocols (possibly none); the connection is returned
/// undriven so that tests can observe it.
pub async fn connect_with(
    server: &FakeServer,
    alpn: &[&[u8]],
) -> (
    SendRequest<Bytes>,
    h2::client::Connection<Box<dyn Io>, Bytes>,
) {
    let tcp = TcpStream::connect(server.addr()).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let io: Box<dyn Io> = if server.endpoint().starts_with("https") {
        let connector = tokio_rustls::TlsConnector::from(client_tls(server, alpn));
        let name = ServerName::try_from("localhost").unwrap();
        Box::new(connector.connect(name, tcp).await.unwrap())
    } else {
        Box::new(tcp)
    };
    h2::client::handshake(io).await.unwrap()
}

/// A transport that keeps a copy of every byte it reads, for checking frames on the wire.
pub struct Recording<T> {
    inner: T,
    pub seen: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Recording<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let fresh = buf.filled()[before..].to_vec();
        self.seen.lock().unwrap().extend_from_slice(&fresh);
        result
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Recording<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Like [`connect`], also returning every byte the server sent (decrypted).
pub async fn connect_recording(
    server: &FakeServer,
) -> (
    SendRequest<Bytes>,
    h2::client::Connection<Box<dyn Io>, Bytes>,
    Arc<std::sync::Mutex<Vec<u8>>>,
) {
    let tcp = TcpStream::connect(server.addr()).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_tls(server, &[b"h2"]));
    let name = ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let seen = Arc::default();
    let io: Box<dyn Io> = Box::new(Recording {
        inner: tls,
        seen: Arc::clone(&seen),
    });
    let (send, conn) = h2::client::handshake(io).await.unwrap();
    (send, conn, seen)
}

/// The HTTP/2 frames in a server-to-client byte stream: (type, flags, stream id, payload).
pub fn frames(bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 9 {
        let len = (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
        if rest.len() < 9 + len {
            break;
        }
        let id = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) & 0x7fff_ffff;
        out.push((rest[3], rest[4], id, rest[9..9 + len].to_vec()));
        rest = &rest[9 + len..];
    }
    out
}

/// Connects and drives the connection in the background.
pub async fn client(server: &FakeServer) -> SendRequest<Bytes> {
    let (send, conn) = connect(server).await;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.ready().await.unwrap()
}

/// What came back for one request.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Whether the response HEADERS frame carried END_STREAM (no DATA frame followed).
    pub headers_only: bool,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// Sends one request and reads the whole reply.
pub async fn send(client: &mut SendRequest<Bytes>, request: Request<()>, body: &[u8]) -> Reply {
    let mut ready = client.clone().ready().await.unwrap();
    let end = body.is_empty();
    let (response, mut stream) = ready.send_request(request, end).unwrap();
    if !end {
        stream
            .send_data(Bytes::copy_from_slice(body), true)
            .unwrap();
    }
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("reply within 10 s")
        .unwrap();
    let (parts, mut recv) = response.into_parts();
    let headers_only = recv.is_end_stream();
    let mut body = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.unwrap();
        let _ = recv.flow_control().release_capacity(chunk.len());
        body.extend_from_slice(&chunk);
    }
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.into(),
        headers_only,
    }
}

/// A 64-hex-digit APNs token starting with `prefix`.
pub fn apns_token(prefix: &str, n: u64) -> String {
    format!("{prefix}{:0>width$x}", n, width = 64 - prefix.len())
}

/// An APNs provider token (ES256 JWT) signed with `key`, issued at `iat`.
pub fn apns_jwt(key: &keys::ApnsKey, iat: u64) -> String {
    keys::apns_provider_token(key, "ABC123DEFG", "DEF123GHIJ", iat)
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An APNs-shaped POST.
pub fn apns_request(server: &FakeServer, token: &str, jwt: Option<&str>) -> http::request::Builder {
    let mut builder = Request::post(format!("{}/3/device/{token}", server.endpoint()))
        .header("apns-topic", "com.example.app")
        .header("apns-push-type", "alert");
    if let Some(jwt) = jwt {
        builder = builder.header("authorization", format!("bearer {jwt}"));
    }
    builder
}

pub const PAYLOAD: &[u8] = br#"{"aps":{"alert":{"title":"hello","body":"world"}}}"#;
