//! The FCM client against the fake FCM server: real HTTP/2 over TLS over loopback.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use futures::stream::{self, StreamExt};
use volley_fake::{keys, FakeConfig, FakeServer, Stats};
use volley_fcm::{
    Clock, FcmClient, FcmConfig, FcmError, FcmMessage, Notification, PreparedMessage,
};
use volley_provider::tls::TlsOptions;
use volley_provider::{Endpoint, Outcome};

const PROJECT: &str = "demo-project";

fn start(mut config: FakeConfig) -> FakeServer {
    config.fcm_project = Some(PROJECT.into());
    config.fcm_oauth_public_key_pem = Some(keys::TEST_SERVICE_ACCOUNT_PUBLIC_KEY_PEM.into());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    FakeServer::start(config, listener).unwrap()
}

fn client_config(fake: &FakeServer) -> FcmConfig {
    let port = fake.addr().port();
    FcmConfig {
        base: Endpoint {
            tls: true,
            host: "127.0.0.1".into(),
            port,
        },
        allowed_token_uris: vec![fake.token_uri()],
        connections: 2,
        request_timeout: Duration::from_secs(10),
        tls: TlsOptions {
            extra_ca_pem: Some(fake.ca_pem_path().to_path_buf()),
            only_extra_ca: true,
            client_identity: None,
        },
        ..FcmConfig::new(keys::test_service_account(&fake.token_uri(), PROJECT))
    }
}

fn client(fake: &FakeServer) -> FcmClient {
    FcmClient::new(client_config(fake)).unwrap()
}

fn message() -> PreparedMessage {
    PreparedMessage::new(&FcmMessage {
        notification: Some(Notification {
            title: Some("Hello".into()),
            body: Some("from the fake".into()),
            image: None,
            ..Default::default()
        }),
        data: BTreeMap::from([("k".into(), "v".into())]),
        ..Default::default()
    })
    .unwrap()
}

fn token(i: usize) -> String {
    format!("fTok{i:07}:APA91bFakeRegistrationToken-_.")
}

/// Sends `tokens` through `client` with up to `concurrency` requests in flight.
async fn burst(
    client: &FcmClient,
    message: &PreparedMessage,
    tokens: &[String],
    concurrency: usize,
) -> Vec<Outcome> {
    stream::iter(tokens)
        .map(|t| client.send(t, message))
        .buffer_unordered(concurrency)
        .collect()
        .await
}

fn status_count(stats: &Stats, status: u16) -> u64 {
    stats.by_status.get(&status).copied().unwrap_or(0)
}

#[tokio::test]
async fn sends_with_one_access_token_for_all_requests() {
    let fake = start(FakeConfig::fcm());
    let client = client(&fake);
    let tokens: Vec<String> = (0..200).map(token).collect();
    let outcomes = burst(&client, &message(), &tokens, 200).await;
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Delivered),
        "{outcomes:?}"
    );
    let stats = fake.shutdown();
    assert_eq!(stats.oauth_tokens_issued, 1);
    assert_eq!(stats.delivered, 200);
    assert_eq!(stats.distinct_tokens, 200);
}

#[tokio::test]
async fn scripted_failures_land_in_their_classes() {
    let fake = start(FakeConfig::fcm());
    let client = client(&fake);
    let message = message();
    let cases: &[(&str, &str, &str, Option<u64>)] = &[
        ("badd", "invalid_token", "INVALID_ARGUMENT", None),
        ("dead", "invalid_token", "UNREGISTERED", None),
        ("4030", "invalid_token", "SENDER_ID_MISMATCH", None),
        ("4290", "transient", "QUOTA_EXCEEDED", Some(1)),
        ("5000", "transient", "INTERNAL", None),
        ("5020", "transient", "HTTP_502", None),
        ("5030", "transient", "UNAVAILABLE", Some(1)),
    ];
    for (prefix, class, reason, retry_after) in cases {
        let outcome = client
            .send(&format!("{prefix}:APA91bScripted"), &message)
            .await;
        assert_eq!(outcome.class(), *class, "{prefix}: {outcome:?}");
        assert_eq!(outcome.reason().unwrap().as_str(), *reason, "{prefix}");
        if let Outcome::Transient {
            retry_after: got,
            maybe_delivered,
            ..
        } = &outcome
        {
            assert_eq!(*got, retry_after.map(Duration::from_secs), "{prefix}");
            assert!(!maybe_delivered, "{prefix}");
        }
    }
    let stats = fake.shutdown();
    assert_eq!(stats.delivered, 0);
    assert_eq!(stats.oauth_tokens_issued, 1);
}

#[tokio::test]
async fn malformed_tokens_are_never_sent() {
    let fake = start(FakeConfig::fcm());
    let client = client(&fake);
    let outcome = client.send(r#"x","topic":"everyone"#, &message()).await;
    assert_eq!(outcome.class(), "invalid_token");
    assert_eq!(fake.shutdown().requests, 0);
}

#[tokio::test]
async fn an_expired_access_token_is_refreshed_once_then_the_send_succeeds() {
    let fake = start(FakeConfig {
        fcm_access_token_ttl: Duration::from_secs(1),
        ..FakeConfig::fcm()
    });
    // The client's clock stands still, so it keeps using the token the fake expires.
    let clock = Clock::manual(SystemTime::now());
    let client = FcmClient::with_clock(client_config(&fake), clock).unwrap();
    let message = message();
    assert_eq!(client.send(&token(1), &message).await, Outcome::Delivered);
    let issued_at = Instant::now();

    // Wait out the fake's one-second token lifetime (real time is what the fake checks).
    let deadline = issued_at + Duration::from_secs(10);
    while Instant::now() < issued_at + Duration::from_millis(1100) {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tokens: Vec<String> = (2..102).map(token).collect();
    let outcomes = burst(&client, &message, &tokens, 100).await;
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Delivered),
        "{outcomes:?}"
    );

    let stats = fake.shutdown();
    assert_eq!(stats.oauth_tokens_issued, 2, "one refresh for every 401");
    assert!(status_count(&stats, 401) >= 1);
    assert_eq!(stats.delivered, 101);
}

#[tokio::test]
async fn a_token_near_expiry_is_refreshed_in_the_background() {
    let fake = start(FakeConfig::fcm());
    let clock = Clock::manual(SystemTime::now());
    let client = FcmClient::with_clock(client_config(&fake), clock.clone()).unwrap();
    let message = message();
    assert_eq!(client.send(&token(1), &message).await, Outcome::Delivered);

    // 56 minutes into a one-hour token: sends go on with it while one refresh runs.
    clock.advance(Duration::from_secs(56 * 60));
    let tokens: Vec<String> = (2..52).map(token).collect();
    let outcomes = burst(&client, &message, &tokens, 50).await;
    assert!(
        outcomes.iter().all(|o| *o == Outcome::Delivered),
        "{outcomes:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake.stats().oauth_tokens_issued < 2 {
        assert!(Instant::now() < deadline, "no background refresh");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(client.send(&token(99), &message).await, Outcome::Delivered);
    let stats = fake.shutdown();
    assert_eq!(stats.oauth_tokens_issued, 2);
    assert_eq!(status_count(&stats, 401), 0);
    assert_eq!(stats.delivered, 52);
}

#[tokio::test]
async fn an_access_token_refused_after_a_refresh_is_a_credential_outcome() {
    // Tokens that expire at once: every request is refused.
    let fake = start(FakeConfig {
        fcm_access_token_ttl: Duration::ZERO,
        ..FakeConfig::fcm()
    });
    let client = client(&fake);
    let outcome = client.send(&token(1), &message()).await;
    assert_eq!(outcome.class(), "credential", "{outcome:?}");
    assert_eq!(outcome.reason().unwrap().as_str(), "UNAUTHENTICATED");
    let stats = fake.shutdown();
    assert_eq!(stats.oauth_tokens_issued, 2, "refreshed once, then gave up");
    assert_eq!(status_count(&stats, 401), 2);
}

#[tokio::test]
async fn an_assertion_signed_with_another_key_is_a_credential_outcome() {
    let fake = start(FakeConfig::fcm());
    let mut account: serde_json::Value =
        serde_json::from_str(&keys::test_service_account(&fake.token_uri(), PROJECT)).unwrap();
    account["private_key"] = include_str!("data/other-service-account-key.pem").into();
    let client = FcmClient::new(FcmConfig {
        service_account_json: account.to_string(),
        ..client_config(&fake)
    })
    .unwrap();
    let outcome = client.send(&token(1), &message()).await;
    assert_eq!(outcome.class(), "credential", "{outcome:?}");
    assert_eq!(outcome.reason().unwrap().as_str(), "invalid_grant");
    let stats = fake.shutdown();
    assert_eq!((stats.requests, stats.oauth_tokens_issued), (0, 0));
}

#[tokio::test]
async fn a_token_uri_off_the_allow_list_is_refused_at_construction() {
    let fake = start(FakeConfig::fcm());
    let mut config = client_config(&fake);
    config.service_account_json =
        keys::test_service_account("https://attacker.example/token", PROJECT);
    let error = FcmClient::new(config).unwrap_err();
    assert!(matches!(error, FcmError::TokenUriNotAllowed(_)), "{error}");
    assert!(error.to_string().contains("token_uri"));

    // Not even Google's own endpoint stands in for an allow-listed one, nor the reverse.
    let mut config = client_config(&fake);
    config.allowed_token_uris.clear();
    assert!(matches!(
        FcmClient::new(config),
        Err(FcmError::TokenUriNotAllowed(_))
    ));
    assert_eq!(fake.shutdown().oauth_tokens_issued, 0);
}

#[tokio::test]
async fn a_wrong_project_is_a_bad_request_not_an_invalid_token() {
    let fake = start(FakeConfig::fcm());
    let client = FcmClient::new(FcmConfig {
        project_id: Some("other-project".into()),
        ..client_config(&fake)
    })
    .unwrap();
    assert_eq!(client.project(), "other-project");
    let outcome = client.send(&token(1), &message()).await;
    assert_eq!(outcome.class(), "bad_request", "{outcome:?}");
    fake.shutdown();
}

#[tokio::test]
async fn goaway_mid_batch_loses_nothing() {
    let fake = start(FakeConfig {
        goaway_after: Some(150),
        ..FakeConfig::fcm()
    });
    let client = client(&fake);
    let tokens: Vec<String> = (0..2000).map(token).collect();
    let outcomes = burst(&client, &message(), &tokens, 200).await;
    let not_delivered: Vec<_> = outcomes
        .iter()
        .filter(|o| **o != Outcome::Delivered)
        .collect();
    assert!(not_delivered.is_empty(), "{not_delivered:?}");
    let stats = fake.shutdown();
    assert!(stats.goaways_sent >= 10, "{stats:?}");
    assert_eq!(stats.delivered, 2000);
    assert_eq!(stats.distinct_tokens, 2000);
    assert_eq!(stats.duplicate_tokens, 0);
}

#[tokio::test]
async fn ten_thousand_tokens_through_one_client() {
    let fake = start(FakeConfig::fcm());
    let client = client(&fake);
    let tokens: Vec<String> = (0..10_000).map(token).collect();
    let outcomes = burst(&client, &message(), &tokens, 400).await;
    assert_eq!(outcomes.len(), 10_000);
    assert!(outcomes.iter().all(|o| *o == Outcome::Delivered));
    let stats = fake.shutdown();
    assert_eq!(stats.delivered, 10_000);
    assert_eq!(stats.distinct_tokens, 10_000);
    assert_eq!(stats.duplicate_tokens, 0);
    assert_eq!(stats.oauth_tokens_issued, 1);
    assert_eq!(stats.requests, 10_000);
}
