//! Web Push end to end through a whole cluster (front, controller, agents) against the fake
//! push service, with the default configuration: subscriptions as browsers give them, each
//! message encrypted for its subscription and decrypted by the fake, failures scripted by the
//! subscription's id, and endpoints that point inside the network refused before any
//! connection.

use std::time::Duration;

use serde_json::{json, Value};
use volley_testkit::cluster::{Cluster, ClusterOptions, APP};
use volley_testkit::jobs::{assert_balanced, count, submit, wait_for_job};
use volley_testkit::tokens::apns_tokens;

const LIMIT: Duration = Duration::from_secs(90);

/// The demo app again as "strict": Web Push only, no address range allowed besides public
/// ones (the default), so the fake on loopback is out of its reach.
fn with_strict_app(config: &mut volley_config::Config) {
    let mut strict = config.apps[0].clone();
    strict.name = "strict".into();
    strict.api_keys = vec![volley_config::Secret::new("strict-key-0123456789")];
    strict.apns = None;
    strict.fcm = None;
    strict
        .webpush
        .as_mut()
        .expect("the demo app has web push")
        .allow_private = Vec::new();
    config.apps.push(strict);
}

async fn cluster() -> Cluster {
    Cluster::start(ClusterOptions {
        agents: 2,
        tweak: with_strict_app,
        ..ClusterOptions::default()
    })
    .await
    .unwrap()
}

fn failures(status: &Value) -> Vec<(String, String, u64)> {
    status["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["class"].as_str().unwrap().to_owned(),
                f["reason"].as_str().unwrap().to_owned(),
                f["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_push_broadcast_is_encrypted_delivered_and_balanced() {
    let cluster = cluster().await;
    let client = cluster.client();
    let mut subscriptions: Vec<Value> = (0..200)
        .map(|i| cluster.webpush_subscription(&format!("ok-{i}")))
        .collect();
    // Scripted by id: gone (410) and not found (404) are invalid subscriptions; too large
    // (413) fails for good without being retried.
    for id in ["dead-1", "dead-2", "dead-3", "4040-1", "4040-2", "4130-1"] {
        subscriptions.push(cluster.webpush_subscription(id));
    }
    // A key of the right shape that is no point of the curve: the agent's ECDH refuses it,
    // and the subscription is reported invalid.
    let mut off_curve = cluster.webpush_subscription("off-curve");
    let key = off_curve["keys"]["p256dh"].as_str().unwrap().to_owned();
    let flipped = if key.ends_with('A') { 'Q' } else { 'A' };
    off_curve["keys"]["p256dh"] = json!(format!("{}{flipped}", &key[..key.len() - 1]));
    subscriptions.push(off_curve);
    let id = submit(
        &client,
        json!({
            "title": "Sale",
            "body": "Everything must go",
            "data": {"sku": 42},
            "collapse_id": "sale-1",
            "priority": "high",
            "targets": {"webpush": subscriptions, "apns": apns_tokens("0a", 5)},
        })
        .to_string(),
    )
    .await
    .unwrap();
    let status = wait_for_job(&client, &id, LIMIT).await.unwrap();
    assert_balanced(&status);
    assert_eq!(count(&status, "accepted"), 212, "{status}");
    assert_eq!(count(&status, "delivered"), 205, "{status}");
    assert_eq!(count(&status, "invalid"), 6, "{status}");
    assert_eq!(count(&status, "failed"), 1, "{status}");
    assert_eq!(
        failures(&status),
        vec![("bad_request".to_owned(), "PayloadTooLarge".to_owned(), 1)],
        "{status}"
    );

    // Invalid subscriptions are named by their endpoint alone: the keys stay out of reports.
    let invalid = status["invalid_tokens"].as_array().unwrap();
    assert_eq!(invalid.len(), 6, "{status}");
    for entry in invalid {
        assert_eq!(entry["platform"], "webpush", "{entry}");
        let token = entry["token"].as_str().unwrap();
        assert!(
            token.starts_with(cluster.fake_webpush.origin()) && !token.contains(' '),
            "{token}"
        );
        let reason = entry["reason"].as_str().unwrap();
        assert!(
            ["Gone", "NotFound", "InvalidKey"].contains(&reason),
            "{entry}"
        );
    }

    // The fake decrypted every message with the subscription's keys: each got the one
    // rendering, with its headers.
    let stats = cluster.fake_webpush.stats();
    assert_eq!(stats.delivered, 200, "{stats:?}");
    assert_eq!(stats.decrypt_failures, 0, "{stats:?}");
    assert_eq!(stats.vapid_failures, 0, "{stats:?}");
    assert_eq!(stats.duplicate_ids, 0, "{stats:?}");
    cluster.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_and_its_headers_reach_the_browser_as_rendered() {
    let cluster = Cluster::start(ClusterOptions {
        agents: 1,
        fake_webpush: volley_fake::FakeWebPushConfig {
            capture: 10,
            ..volley_fake::FakeWebPushConfig::default()
        },
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let client = cluster.client();
    let id = submit(
        &client,
        json!({
            "title": "Hello",
            "body": "from Volley",
            "data": {"url": "/inbox"},
            "webpush": {"ttl": 600, "urgency": "low", "topic": "inbox"},
            "targets": {"webpush": [cluster.webpush_subscription("hello-1")]},
        })
        .to_string(),
    )
    .await
    .unwrap();
    let status = wait_for_job(&client, &id, LIMIT).await.unwrap();
    assert_eq!(count(&status, "delivered"), 1, "{status}");
    let captured = cluster
        .fake_webpush
        .captured_for("hello-1")
        .expect("the fake kept the request");
    let message: Value = serde_json::from_slice(captured.plaintext.as_deref().unwrap()).unwrap();
    assert_eq!(
        message,
        json!({"title": "Hello", "body": "from Volley", "data": {"url": "/inbox"}})
    );
    assert_eq!(captured.headers["ttl"], "600");
    assert_eq!(captured.headers["urgency"], "low");
    assert_eq!(captured.headers["topic"], "inbox");
    assert_eq!(captured.headers["content-encoding"], "aes128gcm");
    assert_eq!(captured.headers["authorization"], "vapid");
    cluster.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_inside_the_network_are_refused_before_any_connection() {
    let cluster = cluster().await;
    let client = volley_testkit::http::FrontClient::new(
        cluster.front_url.clone(),
        Some("strict-key-0123456789".into()),
    );
    let keys = cluster.webpush_subscription("x")["keys"].clone();
    let port = cluster.fake_webpush.addr().port();
    let endpoints = [
        format!("https://127.0.0.1:{port}/push/loopback-v4"),
        format!("https://[::1]:{port}/push/loopback-v6"),
        format!("https://localhost:{port}/push/localhost"),
        "https://10.1.2.3/push/private-10".to_owned(),
        "https://192.168.0.7/push/private-192".to_owned(),
        "https://172.16.5.4/push/private-172".to_owned(),
        "https://169.254.169.254/push/metadata".to_owned(),
        "https://[fe80::1]/push/link-local-v6".to_owned(),
        format!("https://[::ffff:127.0.0.1]:{port}/push/mapped"),
    ];
    let subscriptions: Vec<Value> = endpoints
        .iter()
        .map(|endpoint| json!({"endpoint": endpoint, "keys": keys}))
        .collect();
    let before = cluster.fake_webpush.stats();
    let response = client
        .post(
            "/v1/apps/strict/notifications",
            json!({"title": "hi", "targets": {"webpush": subscriptions}}).to_string(),
        )
        .await
        .unwrap();
    assert_eq!(response.status.as_u16(), 202, "{}", response.body);
    let id = response.body["id"].as_str().unwrap().to_owned();
    let status = wait_for_job(&client, &id, LIMIT).await.unwrap();
    assert_balanced(&status);
    assert_eq!(count(&status, "failed"), endpoints.len() as u64, "{status}");
    let reasons: Vec<String> = failures(&status)
        .into_iter()
        .map(|(class, reason, _)| {
            assert_eq!(class, "bad_request", "{status}");
            reason
        })
        .collect();
    for class in ["loopback", "private", "link-local"] {
        assert!(
            reasons.iter().any(|reason| reason.contains(class)),
            "no failure names a {class} address: {reasons:?}"
        );
    }
    // The paths never show in a failure.
    assert!(
        reasons.iter().all(|reason| !reason.contains("/push/")),
        "{reasons:?}"
    );
    let after = cluster.fake_webpush.stats();
    assert_eq!(
        (after.connections, after.requests),
        (before.connections, before.requests),
        "the fake on loopback was reached"
    );
    cluster.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_subscriptions_are_refused_by_the_front() {
    let cluster = cluster().await;
    let client = cluster.client();
    let good = cluster.webpush_subscription("good-1");
    let keys = good["keys"].clone();
    let path = format!("/v1/apps/{APP}/notifications");
    let response = client
        .post(
            &path,
            json!({"title": "hi", "targets": {"webpush": [
                good,
                {"endpoint": "http://push.example.com/plain", "keys": keys},
                {"endpoint": "https://push.example.com/x", "keys": {"p256dh": "AAAA", "auth": keys["auth"]}},
                {"endpoint": "https://push.example.com/x", "keys": {"p256dh": keys["p256dh"], "auth": "c2hvcnQ"}},
            ]}})
            .to_string(),
        )
        .await
        .unwrap();
    assert_eq!(response.status.as_u16(), 202, "{}", response.body);
    assert_eq!(response.body["accepted"], 1, "{}", response.body);
    assert_eq!(response.body["rejected"], 3, "{}", response.body);
    let rejected = response.body["rejected_tokens"].as_array().unwrap();
    let fields: Vec<&str> = rejected
        .iter()
        .map(|r| r["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "targets.webpush[1]",
            "targets.webpush[2]",
            "targets.webpush[3]"
        ]
    );
    assert!(
        rejected[0]["reason"].as_str().unwrap().contains("https"),
        "{}",
        response.body
    );
    // No reason echoes a key or the endpoint's path.
    let text = response.body.to_string();
    assert!(!text.contains("/plain") && !text.contains(keys["auth"].as_str().unwrap()));

    // An element that is not a subscription object is a 400 naming it.
    let response = client
        .post(
            &path,
            json!({"title": "hi", "targets": {"webpush": ["https://push.example.com/x"]}})
                .to_string(),
        )
        .await
        .unwrap();
    assert_eq!(response.status.as_u16(), 400, "{}", response.body);
    assert_eq!(
        response.body["error"]["field"], "targets.webpush[0]",
        "{}",
        response.body
    );
    cluster.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_made_with_another_vapid_key_fail_alone() {
    let cluster = Cluster::start(ClusterOptions {
        agents: 1,
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let client = cluster.client();
    // Made by a page that subscribed with another app's key (or before a key rotation): the
    // push service answers 403 to this app's pushes.
    let other_key = volley_webpush::vapid::VapidKey::generate();
    let mut subscriptions: Vec<Value> = (0..10)
        .map(|i| {
            let made = cluster
                .fake_webpush
                .subscription_for_key(&format!("rotated-{i}"), other_key.public_key())
                .unwrap();
            serde_json::to_value(made).unwrap()
        })
        .collect();
    subscriptions.extend((0..100).map(|i| cluster.webpush_subscription(&format!("fine-{i}"))));
    let id = submit(
        &client,
        json!({"title": "hi", "targets": {"webpush": subscriptions}}).to_string(),
    )
    .await
    .unwrap();
    let status = wait_for_job(&client, &id, LIMIT).await.unwrap();
    assert_balanced(&status);
    assert_eq!(count(&status, "delivered"), 100, "{status}");
    assert_eq!(
        failures(&status),
        vec![("bad_request".to_owned(), "Http403".to_owned(), 10)],
        "{status}"
    );

    // Not a credential failure of the app: its next job goes straight through.
    let next: Vec<Value> = (0..20)
        .map(|i| cluster.webpush_subscription(&format!("next-{i}")))
        .collect();
    let id = submit(
        &client,
        json!({"title": "again", "targets": {"webpush": next}}).to_string(),
    )
    .await
    .unwrap();
    let status = wait_for_job(&client, &id, LIMIT).await.unwrap();
    assert_eq!(count(&status, "delivered"), 20, "{status}");
    cluster.shutdown().unwrap();
}
