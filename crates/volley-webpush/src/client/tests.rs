//! The client against local push services over TLS, one speaking HTTP/2 and one HTTP/1.1:
//! what arrives must decrypt with the subscription's keys and carry a VAPID header that
//! verifies, and the guard must keep the client away from what it refuses.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use tokio::net::TcpListener;
use tokio_rustls::rustls;

use super::*;
use crate::vapid;

/// A CA and a server certificate for 127.0.0.1 signed by it; the CA's PEM in a file.
struct Pki {
    _dir: tempfile::TempDir,
    ca_path: std::path::PathBuf,
    server: Arc<rustls::ServerConfig>,
}

impl Pki {
    fn new(alpn: &[&[u8]]) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&server_key, &ca, &ca_key)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![server.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
            )
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Pki {
            _dir: dir,
            ca_path,
            server: Arc::new(config),
        }
    }

    fn client_tls(&self) -> TlsOptions {
        TlsOptions {
            extra_ca_pem: Some(self.ca_path.clone()),
            only_extra_ca: true,
            client_identity: None,
        }
    }
}

/// One request as the push service saw it.
#[derive(Debug, Clone)]
struct Received {
    version: Version,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A push service on 127.0.0.1 that records requests and answers by path: `/gone…` 410,
/// `/redirect…` 301, `/slow…` 201 after 200 ms, `/hang…` never, anything else 201.
struct PushService {
    addr: SocketAddr,
    pki: Pki,
    received: Arc<Mutex<Vec<Received>>>,
    connections: Arc<AtomicUsize>,
    max_open: Arc<AtomicUsize>,
}

impl PushService {
    async fn start(alpn: &[&[u8]]) -> PushService {
        let pki = Pki::new(alpn);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let max_open = Arc::new(AtomicUsize::new(0));
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server.clone());
        let (rec, conns, open_now, max) = (
            received.clone(),
            connections.clone(),
            open.clone(),
            max_open.clone(),
        );
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                let (acceptor, rec, open_now, max) =
                    (acceptor.clone(), rec.clone(), open_now.clone(), max.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let now = open_now.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(now, Ordering::SeqCst);
                    let service =
                        service_fn(move |request: http::Request<hyper::body::Incoming>| {
                            let rec = rec.clone();
                            async move {
                                let (head, body) = request.into_parts();
                                let body = body.collect().await?.to_bytes();
                                let path = head.uri.path().to_string();
                                rec.lock().push(Received {
                                    version: head.version,
                                    path: path.clone(),
                                    headers: head.headers,
                                    body,
                                });
                                let mut response = http::Response::new(Full::new(Bytes::new()));
                                *response.status_mut() = StatusCode::CREATED;
                                if path.starts_with("/gone") {
                                    *response.status_mut() = StatusCode::GONE;
                                } else if path.starts_with("/redirect") {
                                    *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
                                    response.headers_mut().insert(
                                        http::header::LOCATION,
                                        HeaderValue::from_static("https://127.0.0.1:1/elsewhere"),
                                    );
                                } else if path.starts_with("/slow") {
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                } else if path.starts_with("/hang") {
                                    std::future::pending::<()>().await;
                                }
                                Ok::<_, hyper::Error>(response)
                            }
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                    open_now.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        PushService {
            addr,
            pki,
            received,
            connections,
            max_open,
        }
    }

    fn origin(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().clone()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// A browser's side of a subscription.
struct Browser {
    private: [u8; 32],
    auth: [u8; 16],
    public: [u8; 65],
}

impl Browser {
    fn new() -> Browser {
        let (private, public) = ece::generate_keypair();
        Browser {
            private,
            public,
            auth: *b"sixteen byte sec",
        }
    }

    fn token(&self, endpoint: &str) -> String {
        subscription::encode(
            endpoint,
            &URL_SAFE_NO_PAD.encode(self.public),
            &URL_SAFE_NO_PAD.encode(self.auth),
        )
        .unwrap()
    }
}

fn config_for(service: &PushService) -> WebPushConfig {
    let mut config = WebPushConfig::new(VapidKey::generate(), "mailto:ops@example.com".into());
    config.guard = Guard::new(vec![], vec!["127.0.0.0/8".into()]).unwrap();
    config.tls = service.pki.client_tls();
    config.request_timeout = Duration::from_secs(5);
    config
}

fn message(payload: &'static [u8]) -> Prepared {
    Prepared {
        payload: Bytes::from_static(payload),
        ttl: 60,
        urgency: Some(Urgency::High),
        topic: Some("news-1".into()),
    }
}

fn protocol_of(client: &WebPushClient, service: &PushService) -> &'static str {
    let origins = client.inner.origins.read();
    let origin = origins
        .get(service.addr.to_string().as_str())
        .expect("the origin is known");
    let state = origin.state.lock();
    match &*state {
        State::Http2(_) => "h2",
        State::Http1(_) => "http/1.1",
        State::New => "new",
        State::Probing(_) => "probing",
        State::Refused { .. } => "refused",
        State::Failed { .. } => "failed",
    }
}

/// Checks what a push service received: the headers, the VAPID signature for its origin,
/// and a body that decrypts to `payload` with the browser's keys.
fn check_delivery(
    received: &Received,
    service: &PushService,
    client: &WebPushClient,
    browser: &Browser,
    payload: &[u8],
) {
    let header = |name: &str| {
        received
            .headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(header("ttl").as_deref(), Some("60"));
    assert_eq!(header("content-encoding").as_deref(), Some("aes128gcm"));
    assert_eq!(
        header("content-type").as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(header("urgency").as_deref(), Some("high"));
    assert_eq!(header("topic").as_deref(), Some("news-1"));
    assert_eq!(
        header("content-length"),
        Some(received.body.len().to_string())
    );
    let authorization = header("authorization").unwrap();
    let verified = vapid::verify(&authorization, &service.origin(), now_unix()).unwrap();
    assert_eq!(
        URL_SAFE_NO_PAD.encode(verified.public_key),
        client.vapid_public_key()
    );
    assert_eq!(verified.subject, "mailto:ops@example.com");
    let plaintext = ece::decrypt(&received.body, &browser.private, &browser.auth).unwrap();
    assert_eq!(plaintext, payload);
}

#[tokio::test]
async fn an_h2_push_service_receives_an_encrypted_message_with_every_header() {
    let service = PushService::start(&[b"h2", b"http/1.1"]).await;
    let client = WebPushClient::new(config_for(&service)).unwrap();
    let browser = Browser::new();
    let token = browser.token(&format!("{}/push/abc?x=1", service.origin()));

    let outcome = client.send(&token, &message(b"{\"title\":\"hi\"}")).await;
    assert_eq!(outcome, Outcome::Delivered);
    let outcome = client.send(&token, &message(b"second")).await;
    assert_eq!(outcome, Outcome::Delivered);

    assert_eq!(protocol_of(&client, &service), "h2");
    let received = service.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].version, Version::HTTP_2);
    assert_eq!(received[0].path, "/push/abc");
    check_delivery(
        &received[0],
        &service,
        &client,
        &browser,
        b"{\"title\":\"hi\"}",
    );
    check_delivery(&received[1], &service, &client, &browser, b"second");
    // One VAPID signature for the origin; the probe's connection and the pool's.
    assert_eq!(
        received[0].headers["authorization"],
        received[1].headers["authorization"]
    );
    assert_eq!(client.inner.signer.signatures(), 1);
    assert_eq!(service.connections(), 2);
    assert_eq!(client.origins(), 1);
}

#[tokio::test]
async fn an_http1_push_service_gets_the_same_over_one_kept_alive_connection() {
    let service = PushService::start(&[b"http/1.1"]).await;
    let client = WebPushClient::new(config_for(&service)).unwrap();
    let browser = Browser::new();
    let token = browser.token(&format!("{}/push/h1", service.origin()));

    for _ in 0..5 {
        assert_eq!(
            client.send(&token, &message(b"hello")).await,
            Outcome::Delivered
        );
    }

    assert_eq!(protocol_of(&client, &service), "http/1.1");
    let received = service.received();
    assert_eq!(received.len(), 5);
    for request in &received {
        assert_eq!(request.version, Version::HTTP_11);
        assert_eq!(request.path, "/push/h1");
        assert_eq!(request.headers["host"], service.addr.to_string());
        check_delivery(request, &service, &client, &browser, b"hello");
    }
    // The probe's connection carried every request.
    assert_eq!(service.connections(), 1);
}

#[tokio::test]
async fn a_service_without_alpn_is_spoken_to_in_http1() {
    let service = PushService::start(&[]).await;
    let client = WebPushClient::new(config_for(&service)).unwrap();
    let token = Browser::new().token(&format!("{}/push/plain", service.origin()));
    assert_eq!(
        client.send(&token, &message(b"x")).await,
        Outcome::Delivered
    );
    assert_eq!(protocol_of(&client, &service), "http/1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_connections_per_origin_are_bounded() {
    let service = PushService::start(&[b"http/1.1"]).await;
    let mut config = config_for(&service);
    config.http1_connections_per_origin = 3;
    let client = WebPushClient::new(config).unwrap();
    let token = Browser::new().token(&format!("{}/slow", service.origin()));
    let prepared = message(b"burst");

    let sends = (0..20).map(|_| {
        let (client, token, prepared) = (client.clone(), token.clone(), prepared.clone());
        tokio::spawn(async move { client.send(&token, &prepared).await })
    });
    for send in sends {
        assert_eq!(send.await.unwrap(), Outcome::Delivered);
    }

    assert_eq!(service.received().len(), 20);
    assert!(
        service.connections() <= 3,
        "{} connections",
        service.connections()
    );
    assert!(service.max_open.load(Ordering::SeqCst) <= 3);
    let origins = client.inner.origins.read();
    let State::Http1(pool) = &*origins[service.addr.to_string().as_str()].state.lock() else {
        panic!("not http/1.1");
    };
    assert!(pool.idle() <= 3);
}

#[tokio::test]
async fn the_guard_refuses_loopback_and_nothing_is_contacted() {
    let service = PushService::start(&[b"h2"]).await;
    let mut config = config_for(&service);
    config.guard = Guard::new(vec![], vec![]).unwrap();
    let client = WebPushClient::new(config).unwrap();
    let token = Browser::new().token(&format!("{}/push/secret-path", service.origin()));

    for _ in 0..3 {
        let outcome = client.send(&token, &message(b"x")).await;
        let Outcome::BadRequest { reason } = &outcome else {
            panic!("{outcome:?}");
        };
        assert_eq!(
            reason.as_str(),
            "EndpointNotPublic: the host is a loopback address; only public addresses are \
             allowed unless the app's webpush.allow_private lists it"
        );
        assert!(!reason.as_str().contains("secret-path") && !reason.as_str().contains("127."));
    }
    assert_eq!(service.connections(), 0);
    assert_eq!(protocol_of(&client, &service), "refused");
}

#[tokio::test]
async fn a_host_outside_the_allow_list_is_refused_before_any_lookup() {
    let service = PushService::start(&[b"h2"]).await;
    let mut config = config_for(&service);
    config.guard = Guard::new(vec!["push.example.com".into()], vec!["127.0.0.0/8".into()]).unwrap();
    let client = WebPushClient::new(config).unwrap();
    let token = Browser::new().token(&format!("{}/push/x", service.origin()));

    let outcome = client.send(&token, &message(b"x")).await;

    assert_eq!(
        outcome,
        Outcome::BadRequest {
            reason: Reason::raw(
                "EndpointHostNotAllowed: the host is not under the app's webpush.allowed_hosts"
            )
        }
    );
    assert_eq!(service.connections(), 0);
    assert_eq!(client.origins(), 0);
}

#[tokio::test]
async fn gone_subscriptions_are_invalid_and_redirects_are_not_followed() {
    for alpn in [&[b"h2".as_slice()][..], &[b"http/1.1".as_slice()][..]] {
        let service = PushService::start(alpn).await;
        let client = WebPushClient::new(config_for(&service)).unwrap();
        let browser = Browser::new();

        let gone = client
            .send(
                &browser.token(&format!("{}/gone/1", service.origin())),
                &message(b"x"),
            )
            .await;
        assert_eq!(
            gone,
            Outcome::InvalidToken {
                reason: Reason::known("Gone"),
                timestamp_ms: None
            }
        );
        let moved = client
            .send(
                &browser.token(&format!("{}/redirect/1", service.origin())),
                &message(b"x"),
            )
            .await;
        assert_eq!(
            moved,
            Outcome::BadRequest {
                reason: Reason::known("Redirect")
            }
        );
        let paths: Vec<String> = service.received().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, ["/gone/1", "/redirect/1"], "{alpn:?}");
    }
}

#[tokio::test]
async fn malformed_tokens_and_notifications_never_leave_the_process() {
    let service = PushService::start(&[b"h2"]).await;
    let client = WebPushClient::new(config_for(&service)).unwrap();
    let token = Browser::new().token(&format!("{}/push/x", service.origin()));

    let reason = |outcome: Outcome| match outcome {
        Outcome::BadRequest { reason } => reason.as_str().to_string(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        reason(client.send("not a token at all", &message(b"x")).await),
        "InvalidSubscription: subscription token is not \"endpoint p256dh auth\" (three parts separated by single spaces)"
    );
    let big = Prepared {
        payload: Bytes::from(vec![b'x'; MAX_PLAINTEXT + 1]),
        ..Prepared::default()
    };
    assert_eq!(reason(client.send(&token, &big).await), "PayloadTooLarge");
    let bad_topic = Prepared {
        topic: Some("not a topic".into()),
        ..Prepared::default()
    };
    assert!(reason(client.send(&token, &bad_topic).await).starts_with("InvalidTopic: "));
    assert_eq!(service.connections(), 0);

    // The largest payload goes through and decrypts.
    let largest = Prepared {
        payload: Bytes::from(vec![b'y'; MAX_PLAINTEXT]),
        ..Prepared::default()
    };
    assert_eq!(client.send(&token, &largest).await, Outcome::Delivered);
    assert_eq!(service.received()[0].body.len(), 4096);
}

#[tokio::test]
async fn an_unreachable_origin_is_a_transient_connect_failure_and_backs_off() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let service = PushService::start(&[b"h2"]).await;
    let client = WebPushClient::new(config_for(&service)).unwrap();
    let token = Browser::new().token(&format!("https://{closed}/push/x"));

    for _ in 0..3 {
        let outcome = client.send(&token, &message(b"x")).await;
        assert_eq!(
            outcome,
            Outcome::Transient {
                reason: Reason::known("ConnectFailed"),
                retry_after: None,
                maybe_delivered: false
            }
        );
    }
    let origins = client.inner.origins.read();
    let origin = &origins[closed.to_string().as_str()];
    assert!(matches!(*origin.state.lock(), State::Failed { .. }));
    // One probe, then the back-off answered the other two.
    assert_eq!(origin.failures.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_connect_failure() {
    let service = PushService::start(&[b"h2"]).await;
    let other = Pki::new(&[]);
    let mut config = config_for(&service);
    config.tls = other.client_tls();
    let client = WebPushClient::new(config).unwrap();
    let token = Browser::new().token(&format!("{}/push/x", service.origin()));
    let outcome = client.send(&token, &message(b"x")).await;
    assert_eq!(outcome.reason().unwrap().as_str(), "ConnectFailed");
    assert!(service.received().is_empty());
}

#[tokio::test]
async fn a_silent_http1_service_times_out_as_maybe_delivered() {
    let service = PushService::start(&[b"http/1.1"]).await;
    let mut config = config_for(&service);
    config.request_timeout = Duration::from_millis(300);
    let client = WebPushClient::new(config).unwrap();
    let token = Browser::new().token(&format!("{}/hang", service.origin()));
    let outcome = client.send(&token, &message(b"x")).await;
    assert_eq!(
        outcome,
        Outcome::Transient {
            reason: Reason::known("Timeout"),
            retry_after: None,
            maybe_delivered: true
        }
    );
}

#[tokio::test]
async fn origins_beyond_the_limit_evict_the_least_recently_used() {
    let services = [
        PushService::start(&[b"h2"]).await,
        PushService::start(&[b"http/1.1"]).await,
        PushService::start(&[b"h2"]).await,
    ];
    // One client trusting all three CAs.
    let bundle = tempfile::NamedTempFile::new().unwrap();
    let pems: String = services
        .iter()
        .map(|s| std::fs::read_to_string(&s.pki.ca_path).unwrap())
        .collect();
    std::fs::write(bundle.path(), pems).unwrap();
    let mut config = config_for(&services[0]);
    config.tls.extra_ca_pem = Some(bundle.path().to_path_buf());
    config.max_origins = 2;
    let client = WebPushClient::new(config).unwrap();
    let browser = Browser::new();
    let tokens: Vec<String> = services
        .iter()
        .map(|s| browser.token(&format!("{}/push/x", s.origin())))
        .collect();

    for token in [&tokens[0], &tokens[1], &tokens[0], &tokens[2]] {
        assert_eq!(client.send(token, &message(b"x")).await, Outcome::Delivered);
    }

    assert_eq!(client.origins(), 2);
    let origins = client.inner.origins.read();
    assert!(origins.contains_key(services[0].addr.to_string().as_str()));
    assert!(!origins.contains_key(services[1].addr.to_string().as_str()));
    assert!(origins.contains_key(services[2].addr.to_string().as_str()));
}

#[tokio::test]
async fn an_idle_origin_is_dropped_with_its_connections() {
    let service = PushService::start(&[b"h2"]).await;
    let client = WebPushClient::new(config_for(&service)).unwrap();
    let token = Browser::new().token(&format!("{}/push/x", service.origin()));
    assert_eq!(
        client.send(&token, &message(b"x")).await,
        Outcome::Delivered
    );
    assert_eq!(client.origins(), 1);

    // Five minutes later, by the origin's clock, the next lookup's sweep drops it.
    let inner = &client.inner;
    let now = super::now_unix();
    for origin in inner.origins.read().values() {
        origin
            .used_at
            .store(now - super::IDLE_ORIGIN_SECS, Ordering::Relaxed);
    }
    inner
        .last_sweep
        .store(now - super::SWEEP_EVERY_SECS, Ordering::Relaxed);
    inner.sweep(now);
    assert_eq!(client.origins(), 0);

    // A message after that makes it again.
    assert_eq!(
        client.send(&token, &message(b"x")).await,
        Outcome::Delivered
    );
    assert_eq!(client.origins(), 1);
}

#[test]
fn urgency_parses_and_prints_the_rfc_values() {
    for (text, urgency) in [
        ("very-low", Urgency::VeryLow),
        ("low", Urgency::Low),
        ("normal", Urgency::Normal),
        ("HIGH", Urgency::High),
    ] {
        assert_eq!(text.parse::<Urgency>().unwrap(), urgency);
        assert_eq!(urgency.as_str(), text.to_ascii_lowercase());
    }
    assert_eq!(
        "urgent".parse::<Urgency>().unwrap_err().to_string(),
        "urgency \"urgent\" is not one of very-low, low, normal, high"
    );
}

#[test]
fn topics_are_checked() {
    let with_topic = |topic: &str| Prepared {
        topic: Some(topic.into()),
        ..Prepared::default()
    };
    with_topic("a-b_C9").validate().unwrap();
    with_topic(&"a".repeat(32)).validate().unwrap();
    for bad in ["", "has space", "slash/", &"a".repeat(33)] {
        assert_eq!(
            with_topic(bad).validate(),
            Err(PreparedError::Topic),
            "{bad:?}"
        );
    }
}

#[test]
fn request_targets_keep_the_endpoint_path() {
    let target = |path: &str| {
        request_uri(path, &format!("https://h{path}"))
            .unwrap()
            .to_string()
    };
    assert_eq!(target("/fcm/send/abc:APA91b"), "/fcm/send/abc:APA91b");
    assert_eq!(target(""), "/");
    assert_eq!(target("?x=1"), "/?x=1");
    assert_eq!(target("/wpush/v2/gAAAAABk?x=1"), "/wpush/v2/gAAAAABk?x=1");
    // A character http refuses raw is sent percent-encoded.
    assert_eq!(target("/a<b"), "/a%3Cb");
}

#[test]
fn configuration_errors_name_the_setting() {
    let build = |edit: fn(&mut WebPushConfig)| {
        let mut config = WebPushConfig::new(VapidKey::generate(), "mailto:ops@example.com".into());
        edit(&mut config);
        WebPushClient::new(config)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    assert!(build(|c| c.subject = "ops@example.com".into()).starts_with("webpush.subject"));
    assert!(build(|c| c.connections_per_origin = 0).contains("connections_per_origin"));
    assert!(build(|c| c.max_origins = 0).contains("max_origins"));
    assert!(build(|c| c.tls.only_extra_ca = true).starts_with("tls"));
}

#[test]
fn the_client_is_shareable_and_debug_hides_secrets() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<WebPushClient>();
    let key = VapidKey::generate();
    let config = WebPushConfig::new(key.clone(), "mailto:ops@example.com".into());
    assert!(!format!("{config:?}").contains(&key.private_base64url()));
    let prepared = message(b"secret payload");
    assert!(!format!("{prepared:?}").contains("secret"));
}
