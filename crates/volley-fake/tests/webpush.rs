//! The fake Web Push service seen by a hyper client over TLS (HTTP/2 or HTTP/1.1 by ALPN),
//! sending what a real application server sends: `ece::encrypt`ed payloads, signed VAPID.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, Version};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use volley_fake::{FakeWebPush, FakeWebPushConfig, SubscriptionInfo, WebPushStats};
use volley_webpush::{ece, vapid};

fn start(config: FakeWebPushConfig) -> FakeWebPush {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    FakeWebPush::start(config, listener).unwrap()
}

fn capturing() -> FakeWebPushConfig {
    FakeWebPushConfig {
        capture: 100,
        ..FakeWebPushConfig::default()
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An application server's VAPID signer.
fn new_signer() -> vapid::VapidSigner {
    vapid::VapidSigner::new(vapid::VapidKey::generate(), "mailto:ops@example.com".into()).unwrap()
}

/// The subscription's keys, decoded.
fn keys(subscription: &SubscriptionInfo) -> ([u8; 65], [u8; 16]) {
    let p256dh = URL_SAFE_NO_PAD.decode(&subscription.keys.p256dh).unwrap();
    let auth = URL_SAFE_NO_PAD.decode(&subscription.keys.auth).unwrap();
    (p256dh.try_into().unwrap(), auth.try_into().unwrap())
}

fn encrypt_for(subscription: &SubscriptionInfo, plaintext: &[u8]) -> Bytes {
    let (p256dh, auth) = keys(subscription);
    ece::encrypt(plaintext, &p256dh, &auth).unwrap()
}

/// One client connection, HTTP/2 or HTTP/1.1 as ALPN decided.
enum Client {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// A response, read whole.
struct Reply {
    status: StatusCode,
    version: Version,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

impl Client {
    /// Connects over TLS trusting the fake's CA, offering `alpn`.
    async fn connect(server: &FakeWebPush, alpn: &[&[u8]]) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(server.ca_pem().as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .unwrap();
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            Client::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            Client::H1(send)
        }
    }

    async fn send(&mut self, request: Request<Full<Bytes>>) -> Reply {
        let response = match self {
            Client::H1(send) => send.send_request(request).await.unwrap(),
            Client::H2(send) => send.send_request(request).await.unwrap(),
        };
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    async fn get(&mut self, server: &FakeWebPush, path: &str) -> Reply {
        let request = Request::get(format!("{}{path}", server.origin()))
            .body(Full::default())
            .unwrap();
        self.send(request).await
    }
}

/// A push request as an application server makes it: TTL, aes128gcm, VAPID for the origin.
fn push(signer: &vapid::VapidSigner, subscription: &SubscriptionInfo) -> http::request::Builder {
    let origin = volley_webpush::subscription::origin(&subscription.endpoint).unwrap();
    Request::post(&subscription.endpoint)
        .header("ttl", "60")
        .header("content-encoding", "aes128gcm")
        .header("authorization", signer.header(&origin))
}

#[tokio::test]
async fn a_payload_encrypted_and_signed_like_an_application_server_is_decrypted_and_counted() {
    let server = start(capturing());
    let signer = new_signer();
    let subscription = server.subscription("alice");
    let mut client = Client::connect(&server, &[b"h2", b"http/1.1"]).await;
    let plaintext = br#"{"title":"hello","body":"from the fake"}"#;

    let body = encrypt_for(&subscription, plaintext);
    let request = push(&signer, &subscription)
        .header("urgency", "high")
        .header("topic", "greetings")
        .body(Full::new(body.clone()))
        .unwrap();
    let reply = client.send(request).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    assert_eq!(reply.version, Version::HTTP_2);
    let location = reply.header("location").unwrap();
    let id = location.strip_prefix("/message/").unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{location}");
    assert_eq!(reply.header("ttl"), Some("60"));

    let captured = server.captured_for("alice").unwrap();
    assert_eq!(captured.plaintext.as_deref(), Some(&plaintext[..]));
    assert_eq!(captured.body, None);
    assert_eq!(captured.status, 201);
    assert_eq!(captured.version, "HTTP/2.0");
    assert_eq!(captured.headers["authorization"], "vapid");
    assert_eq!(captured.headers["urgency"], "high");

    // A second message to the same subscription is a duplicate id; a push without payload
    // needs no Content-Encoding.
    let request = Request::post(&subscription.endpoint)
        .header("ttl", "0")
        .header("authorization", signer.header(server.origin()))
        .body(Full::default())
        .unwrap();
    assert_eq!(client.send(request).await.status, StatusCode::CREATED);

    let stats = server.stats();
    assert_eq!(stats.delivered, 2);
    assert_eq!(stats.requests, 2);
    assert_eq!(stats.distinct_ids, 1);
    assert_eq!(stats.duplicate_ids, 1);
    assert_eq!(stats.http2_requests, 2);
    assert_eq!(stats.bytes, body.len() as u64);
    assert_eq!(stats.by_status.get(&201), Some(&2));
    assert_eq!(stats.decrypt_failures, 0);
    assert_eq!(stats.connections, 1);
}

#[tokio::test]
async fn subscriptions_are_deterministic_per_id_and_served_at_subscribe() {
    let server = start(FakeWebPushConfig::default());
    let alice = server.subscription("alice");
    assert_eq!(alice, server.subscription("alice"));
    assert_eq!(alice.endpoint, format!("{}/push/alice", server.origin()));
    assert!(alice.endpoint.starts_with("https://127.0.0.1:"));
    let bob = server.subscription("bob");
    assert_ne!(alice.keys.auth, bob.keys.auth);
    let (p256dh, _) = keys(&alice);
    assert_eq!(p256dh[0], 4, "an uncompressed point");
    // The browser's PushSubscription.toJSON() shape, which Volley's subscription token takes.
    let json = serde_json::to_value(&alice).unwrap();
    assert_eq!(json["keys"]["p256dh"], alice.keys.p256dh.as_str());
    assert_eq!(json.as_object().unwrap().len(), 2);
    volley_webpush::subscription::encode(&alice.endpoint, &alice.keys.p256dh, &alice.keys.auth)
        .unwrap();

    let mut client = Client::connect(&server, &[b"http/1.1"]).await;
    let subscribe = |body: &'static str| {
        Request::post(format!("{}/subscribe", server.origin()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    let reply = client.send(subscribe(r#"{"id":"alice"}"#)).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let served: SubscriptionInfo = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(served, alice);

    let reply = client.send(subscribe("")).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let random: SubscriptionInfo = serde_json::from_slice(&reply.body).unwrap();
    let id = random.endpoint.rsplit('/').next().unwrap();
    assert!(id.starts_with("sub-"), "{id}");
    assert_eq!(random, server.subscription(id));

    for bad in [r#"{"id":"a/b"}"#, r#"{"id":""}"#, "not json"] {
        let reply = client.send(subscribe(bad)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(server.stats().subscriptions_issued, 2);
}

#[tokio::test]
async fn scripted_prefixes_answer_their_statuses_and_ext_keeps_the_body() {
    let server = start(capturing());
    let signer = new_signer();
    let mut client = Client::connect(&server, &[b"h2"]).await;
    let cases: &[(&str, u16, Option<&str>)] = &[
        ("dead-1", 410, None),
        ("4040-1", 404, None),
        ("4130-1", 413, None),
        ("4290-1", 429, Some("1")),
        ("5000-1", 500, None),
        ("5030-1", 503, Some("1")),
        ("DEAD-2", 410, None),
    ];
    for (id, status, retry_after) in cases {
        let subscription = server.subscription(id);
        let body = encrypt_for(&subscription, b"scripted");
        let request = push(&signer, &subscription).body(Full::new(body)).unwrap();
        let reply = client.send(request).await;
        assert_eq!(reply.status.as_u16(), *status, "{id}");
        assert_eq!(reply.header("retry-after"), *retry_after, "{id}");
        assert_eq!(reply.json()["code"], *status, "{id}");
        assert_eq!(reply.header("location"), None, "{id}");
    }

    // An external subscription: the fake holds no key, accepts the body as it came.
    let subscription = server.subscription("ext-browser");
    let opaque = Bytes::from((0..=255u8).cycle().take(300).collect::<Vec<_>>());
    let request = push(&signer, &subscription)
        .body(Full::new(opaque.clone()))
        .unwrap();
    let reply = client.send(request).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let captured = server.captured_for("ext-browser").unwrap();
    assert_eq!(captured.body.as_deref(), Some(&opaque[..]));
    assert_eq!(captured.plaintext, None);

    let stats = server.stats();
    assert_eq!(stats.delivered, 1);
    assert_eq!(stats.decrypt_failures, 0);
    assert_eq!(stats.by_status.get(&410), Some(&2));

    // The captured requests over HTTP, with the byte fields in base64url.
    let reply = client.get(&server, "/requests").await;
    let json = reply.json();
    let ext = json
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "ext-browser")
        .unwrap();
    assert_eq!(ext["body"], URL_SAFE_NO_PAD.encode(&opaque));
    assert_eq!(ext["plaintext"], serde_json::Value::Null);
}

#[tokio::test]
async fn requests_without_ttl_or_valid_vapid_or_with_bad_headers_are_refused() {
    let server = start(capturing());
    let signer = new_signer();
    let origin = server.origin().to_string();
    let subscription = server.subscription("carol");
    let body = encrypt_for(&subscription, b"refused");
    let mut client = Client::connect(&server, &[b"h2"]).await;
    let base = || {
        Request::post(&subscription.endpoint)
            .header("ttl", "60")
            .header("content-encoding", "aes128gcm")
    };
    let good_vapid = signer.header(&origin);
    let tampered = {
        let text = good_vapid.to_str().unwrap();
        // Flip a character of the signature (the JWT's third part).
        let at = text.find(", k=").unwrap() - 2;
        let mut bytes = text.as_bytes().to_vec();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        HeaderValue::from_bytes(&bytes).unwrap()
    };
    let expired = new_signer().header_at(&origin, now() - 13 * 3600);
    let elsewhere = signer.header("https://push.example.net");

    let send =
        |request: http::request::Builder, body: Bytes| request.body(Full::new(body)).unwrap();
    let cases: Vec<(&str, Request<Full<Bytes>>, u16)> = vec![
        ("no vapid", send(base(), body.clone()), 401),
        (
            "not vapid",
            send(base().header("authorization", "Bearer abc"), body.clone()),
            401,
        ),
        (
            "bad signature",
            send(base().header("authorization", tampered), body.clone()),
            401,
        ),
        (
            "expired",
            send(base().header("authorization", expired), body.clone()),
            403,
        ),
        (
            "another audience",
            send(base().header("authorization", elsewhere), body.clone()),
            403,
        ),
        (
            "no ttl",
            send(
                Request::post(&subscription.endpoint)
                    .header("content-encoding", "aes128gcm")
                    .header("authorization", good_vapid.clone()),
                body.clone(),
            ),
            400,
        ),
        (
            "ttl not a number",
            send(
                Request::post(&subscription.endpoint)
                    .header("ttl", "soon")
                    .header("content-encoding", "aes128gcm")
                    .header("authorization", good_vapid.clone()),
                body.clone(),
            ),
            400,
        ),
        (
            "legacy encoding",
            send(
                Request::post(&subscription.endpoint)
                    .header("ttl", "60")
                    .header("content-encoding", "aesgcm")
                    .header("authorization", good_vapid.clone()),
                body.clone(),
            ),
            415,
        ),
        (
            "no encoding",
            send(
                Request::post(&subscription.endpoint)
                    .header("ttl", "60")
                    .header("authorization", good_vapid.clone()),
                body.clone(),
            ),
            415,
        ),
        (
            "urgency",
            send(
                base()
                    .header("authorization", good_vapid.clone())
                    .header("urgency", "asap"),
                body.clone(),
            ),
            400,
        ),
        (
            "topic",
            send(
                base()
                    .header("authorization", good_vapid.clone())
                    .header("topic", "a".repeat(33)),
                body.clone(),
            ),
            400,
        ),
        (
            "too large",
            send(
                base().header("authorization", good_vapid.clone()),
                Bytes::from(vec![0u8; 4097]),
            ),
            413,
        ),
        (
            "encrypted for another subscription",
            send(
                base().header("authorization", good_vapid.clone()),
                encrypt_for(&server.subscription("dave"), b"not for carol"),
            ),
            400,
        ),
        (
            "not a subscription id",
            send(
                Request::post(format!("{origin}/push/a%2Fb"))
                    .header("ttl", "60")
                    .header("content-encoding", "aes128gcm")
                    .header("authorization", good_vapid.clone()),
                body.clone(),
            ),
            404,
        ),
        (
            "get",
            Request::get(&subscription.endpoint)
                .body(Full::default())
                .unwrap(),
            405,
        ),
    ];
    for (what, request, status) in cases {
        let reply = client.send(request).await;
        assert_eq!(reply.status.as_u16(), status, "{what}: {:?}", reply.body);
        assert_eq!(reply.json()["code"], status, "{what}");
    }
    let stats = server.stats();
    assert_eq!(stats.delivered, 0);
    assert_eq!(stats.vapid_failures, 5);
    assert_eq!(stats.decrypt_failures, 1);
    assert_eq!(stats.requests, 15);
    assert_eq!(stats.by_status.get(&401), Some(&3));
    assert_eq!(stats.by_status.get(&403), Some(&2));
    // A body that did not decrypt is kept as it came, for looking into.
    let failed = server
        .captured()
        .into_iter()
        .find(|c| c.status == 400 && c.body.as_ref().is_some_and(|b| b.len() > 100))
        .unwrap();
    assert_eq!(failed.plaintext, None);

    // The same request with every header right is delivered.
    let request = base()
        .header("authorization", good_vapid)
        .body(Full::new(body))
        .unwrap();
    assert_eq!(client.send(request).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn http1_only_serves_http1_even_to_a_client_that_prefers_h2() {
    let server = start(FakeWebPushConfig {
        http1_only: true,
        capture: 10,
        ..FakeWebPushConfig::default()
    });
    let signer = new_signer();
    let subscription = server.subscription("erin");
    let mut client = Client::connect(&server, &[b"h2", b"http/1.1"]).await;
    assert!(matches!(client, Client::H1(_)), "ALPN chose h2");
    let body = encrypt_for(&subscription, b"over http/1.1");
    let request = push(&signer, &subscription).body(Full::new(body)).unwrap();
    let reply = client.send(request).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.version, Version::HTTP_11);
    let captured = server.captured_for("erin").unwrap();
    assert_eq!(captured.version, "HTTP/1.1");
    assert_eq!(captured.plaintext.as_deref(), Some(&b"over http/1.1"[..]));

    let reply = client.get(&server, "/stats").await;
    let stats: WebPushStats = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(stats.http1_requests, 1);
    assert_eq!(stats.http2_requests, 0);
    assert_eq!(stats, server.stats());
}

#[tokio::test]
async fn the_default_server_speaks_http1_to_a_client_that_offers_only_http1() {
    let server = start(FakeWebPushConfig::default());
    let signer = new_signer();
    let subscription = server.subscription("frank");
    let mut client = Client::connect(&server, &[b"http/1.1"]).await;
    assert!(matches!(client, Client::H1(_)));
    for n in 0..3 {
        let body = encrypt_for(&subscription, format!("message {n}").as_bytes());
        let request = push(&signer, &subscription).body(Full::new(body)).unwrap();
        assert_eq!(client.send(request).await.status, StatusCode::CREATED);
    }
    let stats = server.shutdown();
    assert_eq!(stats.http1_requests, 3);
    assert_eq!(stats.delivered, 3);
}

/// Volley's own client, end to end: HTTP/2 where offered, HTTP/1.1 where not, and the fake
/// decrypts what it encrypted either way.
#[tokio::test]
async fn volleys_client_delivers_over_h2_and_over_http1_and_the_fake_decrypts_it() {
    for http1_only in [false, true] {
        let server = start(FakeWebPushConfig {
            http1_only,
            capture: 10,
            ..FakeWebPushConfig::default()
        });
        let mut config = volley_webpush::WebPushConfig::new(
            vapid::VapidKey::generate(),
            "mailto:ops@example.com".into(),
        );
        config.guard =
            volley_webpush::guard::Guard::new(vec![], vec!["127.0.0.0/8".into()]).unwrap();
        config.tls = volley_provider::tls::TlsOptions {
            extra_ca_pem: Some(server.ca_pem_path().to_path_buf()),
            only_extra_ca: true,
            client_identity: None,
        };
        let client = volley_webpush::WebPushClient::new(config).unwrap();
        let subscription = server.subscription("grace");
        let token = volley_webpush::subscription::encode(
            &subscription.endpoint,
            &subscription.keys.p256dh,
            &subscription.keys.auth,
        )
        .unwrap();
        let prepared = volley_webpush::Prepared {
            payload: Bytes::from_static(b"{\"title\":\"from volley\"}"),
            ttl: 30,
            urgency: Some(volley_webpush::Urgency::Low),
            topic: Some("status".into()),
        };
        for _ in 0..2 {
            let outcome = client.send(&token, &prepared).await;
            assert_eq!(
                outcome,
                volley_webpush::Outcome::Delivered,
                "http1_only {http1_only}"
            );
        }
        let captured = server.captured_for("grace").unwrap();
        assert_eq!(captured.plaintext.as_deref(), Some(&prepared.payload[..]));
        assert_eq!(captured.headers["topic"], "status");
        assert_eq!(captured.headers["urgency"], "low");
        let stats = server.shutdown();
        assert_eq!(stats.delivered, 2);
        assert_eq!(stats.duplicate_ids, 1);
        if http1_only {
            assert_eq!((stats.http1_requests, stats.http2_requests), (2, 0));
        } else {
            assert_eq!((stats.http1_requests, stats.http2_requests), (0, 2));
        }
    }
}

/// `GET path` over plain HTTP/1.1 (the stats listener), read whole.
async fn get_plain(addr: std::net::SocketAddr, path: &str) -> Reply {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = Request::get(path)
        .header("host", addr.to_string())
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = send.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

#[tokio::test]
async fn subscriptions_in_bulk_and_stats_are_served_over_plain_http_on_the_stats_listener() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stats_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server =
        FakeWebPush::start_with_stats(FakeWebPushConfig::default(), listener, Some(stats_listener))
            .unwrap();
    let stats_addr = server.stats_addr().unwrap();

    let reply = get_plain(stats_addr, "/subscriptions?prefix=run&count=7&dead_every=3").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.version, Version::HTTP_11);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let bulk: Vec<SubscriptionInfo> = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(bulk, server.subscriptions("run", 7, 3));
    let ids: Vec<_> = bulk
        .iter()
        .map(|s| s.endpoint.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["run-0", "run-1", "dead-2", "run-3", "run-4", "dead-5", "run-6"]
    );
    assert_eq!(bulk[0], server.subscription("run-0"));

    // They are subscriptions like any other: the fake decrypts what is sent to them, and the
    // dead ones are gone.
    let signer = new_signer();
    let mut client = Client::connect(&server, &[b"h2"]).await;
    for (subscription, status) in [(&bulk[0], 201), (&bulk[2], 410)] {
        let body = encrypt_for(subscription, b"from a batch");
        let request = push(&signer, subscription).body(Full::new(body)).unwrap();
        assert_eq!(client.send(request).await.status.as_u16(), status);
    }
    // The main port serves the same batch over TLS.
    let reply = client
        .get(&server, "/subscriptions?prefix=run&count=7&dead_every=3")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Vec<SubscriptionInfo>>(&reply.body).unwrap(),
        bulk
    );
    let empty = get_plain(stats_addr, "/subscriptions?prefix=run&count=0").await;
    assert_eq!(empty.json(), serde_json::json!([]));

    let too_many = format!(
        "/subscriptions?prefix=run&count={}",
        volley_fake::MAX_BULK_SUBSCRIPTIONS + 1
    );
    for bad in [
        too_many.as_str(),
        "/subscriptions?count=3",
        "/subscriptions?prefix=a/b&count=3",
        "/subscriptions?prefix=run&count=3&dead-every=2",
    ] {
        let reply = get_plain(stats_addr, bad).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(reply.json()["code"], 400, "{bad}");
    }
    assert_eq!(
        get_plain(stats_addr, "/push/run-0").await.status,
        StatusCode::NOT_FOUND
    );

    let reply = get_plain(stats_addr, "/stats").await;
    let stats: WebPushStats = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(stats, server.stats());
    assert_eq!(stats.subscriptions_issued, 14);
    assert_eq!(stats.delivered, 1);
    assert_eq!(stats.by_status.get(&410), Some(&1));
    // The stats listener's connections are not the push service's.
    assert_eq!(stats.connections, 1);
    let reply = get_plain(stats_addr, "/requests").await;
    assert_eq!(reply.json(), serde_json::json!([]));
}
