//! The APNs client against the fake APNs over real HTTP/2 and TLS on loopback.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use volley_apns::{
    ApnsAuth, ApnsClient, ApnsConfig, ApnsEndpoint, Notification, Outcome, PreparedNotification,
    TestClock,
};
use volley_fake::keys::{generate_apns_key, ApnsKey};
use volley_fake::{FakeConfig, FakeServer};
use volley_provider::tls::{ClientIdentity, TlsOptions};
use volley_provider::{Endpoint, SendError};

const TOPIC: &str = "com.example.volley";

struct Setup {
    fake: FakeServer,
    key: ApnsKey,
}

/// A fake APNs that verifies provider tokens against a fresh key and requires our topic.
fn start(adjust: impl FnOnce(&mut FakeConfig)) -> Setup {
    let key = generate_apns_key();
    let mut config = FakeConfig::apns();
    config.apns_jwt_public_key_pem = Some(key.public_pem.clone());
    config.apns_topic = Some(TOPIC.to_owned());
    adjust(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let fake = FakeServer::start(config, listener).unwrap();
    Setup { fake, key }
}

impl Setup {
    fn trusting_tls(&self) -> TlsOptions {
        TlsOptions {
            extra_ca_pem: Some(self.fake.ca_pem_path().to_owned()),
            only_extra_ca: true,
            client_identity: None,
        }
    }

    fn endpoint(&self) -> ApnsEndpoint {
        ApnsEndpoint::Custom(self.fake.endpoint().parse::<Endpoint>().unwrap())
    }

    fn config(&self) -> ApnsConfig {
        let mut config = ApnsConfig::new(
            self.endpoint(),
            ApnsAuth::Token {
                key_pem: self.key.private_pem.clone(),
                key_id: "KEY1234567".into(),
                team_id: "TEAM123456".into(),
            },
        );
        config.tls = self.trusting_tls();
        config
    }

    fn client(&self) -> ApnsClient {
        ApnsClient::new(self.config()).unwrap()
    }
}

fn notification() -> PreparedNotification {
    Notification {
        topic: TOPIC.into(),
        alert: Some(volley_apns::Alert {
            title: Some("Hello".into()),
            body: Some("from the integration tests".into()),
            ..Default::default()
        }),
        ..Notification::default()
    }
    .prepare()
    .unwrap()
}

/// A 64-hex-character token; `prefix` selects the fake's scripted answer.
fn token(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:0width$x}", width = 64 - prefix.len())
}

fn tokens(n: usize) -> Vec<String> {
    (0..n).map(|i| token("aa", i)).collect()
}

async fn send_all(
    client: &ApnsClient,
    notification: &PreparedNotification,
    tokens: &[String],
    concurrency: usize,
) -> Vec<Outcome> {
    futures::stream::iter(tokens)
        .map(|token| client.send(token, notification))
        .buffer_unordered(concurrency)
        .collect()
        .await
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn delivers_and_echoes_the_apns_id() {
    let setup = start(|_| {});
    let client = setup.client();
    let id = uuid::Uuid::new_v4();
    let sent = client
        .send_detailed(&token("aa", 1), &notification(), Some(id))
        .await
        .unwrap();
    assert_eq!(sent.outcome, Outcome::Delivered);
    assert_eq!(sent.apns_id, Some(id));
    let stats = setup.fake.shutdown();
    assert_eq!((stats.requests, stats.delivered), (1, 1));
}

#[tokio::test]
async fn scripted_failures_map_to_their_classes() {
    let setup = start(|_| {});
    let client = setup.client();
    let notification = notification();
    let cases = [
        ("badd", "invalid_token", "BadDeviceToken"),
        ("dead", "invalid_token", "Unregistered"),
        ("4030", "bad_request", "DeviceTokenNotForTopic"),
        ("4290", "transient", "TooManyRequests"),
        ("5000", "transient", "InternalServerError"),
        ("5020", "transient", "Http502"),
        ("5030", "transient", "ServiceUnavailable"),
    ];
    for (prefix, class, reason) in cases {
        let outcome = client.send(&token(prefix, 7), &notification).await;
        assert_eq!(
            (outcome.class(), outcome.reason().map(|r| r.as_str())),
            (class, Some(reason)),
            "prefix {prefix}: {outcome:?}"
        );
        match (prefix, &outcome) {
            ("dead", Outcome::InvalidToken { timestamp_ms, .. }) => {
                let ms = timestamp_ms.expect("410 carries a timestamp");
                assert!(ms / 1000 + 60 >= unix_now(), "timestamp {ms} is recent");
            }
            ("5030", Outcome::Transient { retry_after, .. }) => {
                assert_eq!(*retry_after, Some(Duration::from_secs(1)));
            }
            (
                _,
                Outcome::Transient {
                    maybe_delivered, ..
                },
            ) => assert!(!maybe_delivered),
            _ => {}
        }
    }
    let stats = setup.fake.shutdown();
    assert_eq!((stats.requests, stats.delivered), (7, 0));
}

#[tokio::test]
async fn header_errors_come_back_as_bad_requests() {
    let setup = start(|_| {});
    let client = setup.client();
    let wrong_topic = Notification {
        topic: "com.example.other".into(),
        ..Notification::default()
    }
    .prepare()
    .unwrap();
    let outcome = client.send(&token("aa", 1), &wrong_topic).await;
    assert_eq!(
        (outcome.class(), outcome.reason().unwrap().as_str()),
        ("bad_request", "BadTopic")
    );
}

#[tokio::test]
async fn goaway_mid_batch_loses_nothing() {
    let setup = start(|config| config.goaway_after = Some(300));
    let client = setup.client();
    let tokens = tokens(2_000);
    let outcomes = send_all(&client, &notification(), &tokens, tokens.len()).await;
    let failures: Vec<_> = outcomes
        .iter()
        .filter(|o| **o != Outcome::Delivered)
        .collect();
    assert!(
        failures.is_empty(),
        "{} failed, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    let stats = setup.fake.shutdown();
    assert!(stats.goaways_sent >= 2, "{stats:?}");
    assert_eq!(stats.distinct_tokens, 2_000, "{stats:?}");
    assert_eq!(stats.duplicate_tokens, 0, "{stats:?}");
}

#[tokio::test]
async fn one_stream_until_the_first_authorised_request() {
    let setup = start(|config| config.single_stream_until_auth = true);
    let client = setup.client();
    let tokens = tokens(300);
    let outcomes = send_all(&client, &notification(), &tokens, tokens.len()).await;
    assert!(outcomes.iter().all(|o| *o == Outcome::Delivered));
    let stats = setup.fake.shutdown();
    assert_eq!(stats.delivered, 300);
    assert!(stats.max_open_streams_before_auth <= 1, "{stats:?}");
}

#[tokio::test]
async fn a_token_signed_by_another_key_is_refused() {
    let setup = start(|_| {});
    let mut config = setup.config();
    config.auth = ApnsAuth::Token {
        key_pem: generate_apns_key().private_pem,
        key_id: "KEY1234567".into(),
        team_id: "TEAM123456".into(),
    };
    let client = ApnsClient::new(config).unwrap();
    let outcome = client.send(&token("aa", 1), &notification()).await;
    assert_eq!(
        (outcome.class(), outcome.reason().unwrap().as_str()),
        ("credential", "InvalidProviderToken")
    );
    assert_eq!(client.token_mints(), Some(1));
}

#[tokio::test]
async fn an_expired_provider_token_is_reminted_once_then_delivered() {
    let setup = start(|_| {});
    // Our clock runs 61 minutes behind Apple's: the first token is born expired.
    let clock = Arc::new(TestClock::new(unix_now() - 61 * 60));
    let client = ApnsClient::with_clock(setup.config(), clock.clone()).unwrap();
    let notification = notification();

    // To our clock the token is brand new: the 20-minute floor forbids another one.
    let outcome = client.send(&token("aa", 1), &notification).await;
    assert_eq!(
        (outcome.class(), outcome.reason().unwrap().as_str()),
        ("credential", "ExpiredProviderToken")
    );
    assert_eq!(client.token_mints(), Some(1));

    // Twenty minutes on, a burst of rejections shares exactly one new token.
    clock.advance(20 * 60);
    let tokens: Vec<_> = (2..202).map(|i| token("aa", i)).collect();
    let outcomes = send_all(&client, &notification, &tokens, tokens.len()).await;
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Delivered),
        "{:?}",
        outcomes.iter().find(|o| **o != Outcome::Delivered)
    );
    assert_eq!(client.token_mints(), Some(2));
    let stats = setup.fake.shutdown();
    assert_eq!(stats.delivered, 200);
}

#[tokio::test]
async fn an_untrusted_server_certificate_is_reported_as_such() {
    let setup = start(|_| {});
    let mut config = setup.config();
    config.tls = TlsOptions::default();
    let client = ApnsClient::new(config).unwrap();
    let error = client
        .send_detailed(&token("aa", 1), &notification(), None)
        .await
        .unwrap_err();
    assert!(matches!(error, SendError::Connect { .. }), "{error:?}");
    assert!(error.to_string().contains("not trusted"), "{error}");
    let outcome = client.send(&token("aa", 2), &notification()).await;
    assert_eq!(outcome.class(), "transient");
    assert_eq!(setup.fake.shutdown().requests, 0);
}

#[tokio::test]
async fn certificate_auth_sends_no_provider_token() {
    let setup = start(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["com.example.volley".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_pem, key_pem) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_pem, cert.pem()).unwrap();
    std::fs::write(&key_pem, key.serialize_pem()).unwrap();

    let mut config = ApnsConfig::new(setup.endpoint(), ApnsAuth::Certificate);
    config.tls = TlsOptions {
        client_identity: Some(ClientIdentity { cert_pem, key_pem }),
        ..setup.trusting_tls()
    };
    let client = ApnsClient::new(config).unwrap();
    assert_eq!(client.token_mints(), None);
    let outcome = client.send(&token("aa", 1), &notification()).await;
    assert_eq!(outcome, Outcome::Delivered);

    // An unreadable certificate file is named when the client is built, not at the first send.
    let mut no_cert = ApnsConfig::new(setup.endpoint(), ApnsAuth::Certificate);
    no_cert.tls = setup.trusting_tls();
    no_cert.tls.client_identity = Some(ClientIdentity {
        cert_pem: dir.path().join("missing.pem"),
        key_pem: dir.path().join("missing.pem"),
    });
    let error = ApnsClient::new(no_cert).unwrap_err().to_string();
    assert!(error.contains("missing.pem"), "{error}");

    let stats = setup.fake.shutdown();
    assert_eq!(stats.delivered, 1);
}

#[tokio::test]
async fn a_burst_of_ten_thousand_is_counted_exactly() {
    let setup = start(|_| {});
    let client = setup.client();
    let tokens = tokens(10_000);
    let outcomes = send_all(&client, &notification(), &tokens, 400).await;
    assert!(outcomes.iter().all(|o| *o == Outcome::Delivered));
    let stats = setup.fake.shutdown();
    assert_eq!(
        (
            stats.requests,
            stats.delivered,
            stats.distinct_tokens,
            stats.duplicate_tokens
        ),
        (10_000, 10_000, 10_000, 0),
        "{stats:?}"
    );
    assert_eq!(client.token_mints(), Some(1));
}
