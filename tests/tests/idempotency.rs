//! `Idempotency-Key` end to end through a whole cluster (front, controller, agent) against the
//! fakes: a key belongs to an app, a repeat of a request is answered as the first was (status
//! and body) with `Idempotent-Replayed: true`, the same key with another body is refused with
//! 422 `idempotency_key_reused`, concurrent requests with one key make one job, and the key's
//! syntax is checked.

use std::time::Duration;

use http::Method;
use serde_json::json;
use volley_config::{Config, Secret};
use volley_testkit::cluster::{Cluster, ClusterOptions, APP};
use volley_testkit::http::{FrontClient, JsonResponse};
use volley_testkit::jobs::{assert_balanced, count, wait_for_job};
use volley_testkit::tokens::{apns_token, fcm_token};

const LIMIT: Duration = Duration::from_secs(60);
/// A second app, served by the same agents.
const OTHER: &str = "other";
const OTHER_KEY: &str = "vk_other_app_key_for_idempotency_tests";

fn with_other_app(config: &mut Config) {
    let mut other = config.apps[0].clone();
    other.name = OTHER.into();
    other.api_keys = vec![Secret::new(OTHER_KEY)];
    config.apps.push(other);
}

async fn start() -> Cluster {
    Cluster::start(ClusterOptions {
        agents: 1,
        tweak: with_other_app,
        ..ClusterOptions::default()
    })
    .await
    .unwrap()
}

async fn post(client: &FrontClient, app: &str, body: &str, keys: &[&str]) -> JsonResponse {
    let headers: Vec<(&str, &str)> = keys.iter().map(|key| ("idempotency-key", *key)).collect();
    client
        .request_with(
            Method::POST,
            &format!("/v1/apps/{app}/notifications"),
            Some(body.to_owned().into()),
            &headers,
        )
        .await
        .unwrap()
}

fn replayed(response: &JsonResponse) -> bool {
    response
        .headers
        .get("idempotent-replayed")
        .is_some_and(|value| value == "true")
}

fn error_code(response: &JsonResponse) -> (&str, &str) {
    (
        response.body["error"]["code"].as_str().unwrap_or_default(),
        response.body["error"]["field"].as_str().unwrap_or_default(),
    )
}

/// One APNs and one FCM token with `prefix`, and a malformed FCM token the front refuses
/// alone (so that the answer lists a rejection).
fn order(prefix: &str, title: &str) -> String {
    json!({
        "title": title,
        "targets": {"apns": [apns_token(prefix, 0)], "fcm": [fcm_token(prefix, 0), "not a token"]}
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_per_app_a_repeat_is_answered_as_the_first_and_another_body_is_refused() {
    let cluster = start().await;
    let demo = cluster.client();
    let other = FrontClient::new(cluster.front_url.clone(), Some(OTHER_KEY.into()));

    let first = post(&demo, APP, &order("a1", "Shipped"), &["order-42"]).await;
    assert_eq!(first.status, 202, "{}", first.body);
    assert!(!replayed(&first));
    assert_eq!(
        (
            count(&first.body, "accepted"),
            count(&first.body, "rejected")
        ),
        (2, 1)
    );

    // A retry: the same status and body, marked replayed, and nothing sent twice.
    let again = post(&demo, APP, &order("a1", "Shipped"), &["order-42"]).await;
    assert_eq!(again.status, 202, "{}", again.body);
    assert!(replayed(&again));
    assert_eq!(again.body, first.body);

    // The same key with another body: refused, naming the header.
    let changed = post(&demo, APP, &order("a1", "Delivered"), &["order-42"]).await;
    assert_eq!(changed.status, 422, "{}", changed.body);
    assert_eq!(
        error_code(&changed),
        ("idempotency_key_reused", "Idempotency-Key")
    );

    // Another app with the same key gets its own job, which it can read.
    let theirs = post(&other, OTHER, &order("b2", "Shipped"), &["order-42"]).await;
    assert_eq!(theirs.status, 202, "{}", theirs.body);
    assert!(!replayed(&theirs));
    let (mine, theirs) = (
        first.body["id"].as_str().unwrap(),
        theirs.body["id"].as_str().unwrap(),
    );
    assert_ne!(mine, theirs);
    for (client, id) in [(&demo, mine), (&other, theirs)] {
        let status = wait_for_job(client, id, LIMIT).await.unwrap();
        assert_balanced(&status);
        assert_eq!(count(&status, "delivered"), 2, "{status}");
    }
    // Each job was sent once: one notification per platform per job.
    assert_eq!(cluster.fake_apns.stats().delivered, 2);
    assert_eq!(cluster.fake_fcm.stats().delivered, 2);
    cluster.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_make_one_job() {
    let cluster = start().await;
    let client = cluster.client();
    let body = order("c3", "Once");
    let requests: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            let body = body.clone();
            tokio::spawn(async move { post(&client, APP, &body, &["order-7"]).await })
        })
        .collect();
    let mut ids = Vec::new();
    let mut fresh = 0;
    for request in requests {
        let response = request.await.unwrap();
        match response.status.as_u16() {
            202 => {
                fresh += usize::from(!replayed(&response));
                ids.push(response.body["id"].clone());
            }
            409 => {
                assert_eq!(
                    error_code(&response),
                    ("idempotency_key_in_use", "Idempotency-Key")
                );
                assert_eq!(response.headers["retry-after"], "1");
            }
            _ => panic!("{} {}", response.status, response.body),
        }
    }
    assert_eq!(fresh, 1, "one request makes the job");
    // Retried once the first is stored, the refused ones get its answer.
    let retry = post(&client, APP, &body, &["order-7"]).await;
    assert!(replayed(&retry));
    ids.push(retry.body["id"].clone());
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let status = wait_for_job(&client, ids[0].as_str().unwrap(), LIMIT)
        .await
        .unwrap();
    assert_balanced(&status);
    assert_eq!(cluster.fake_apns.stats().delivered, 1);
    assert_eq!(cluster.fake_fcm.stats().delivered, 1);
    cluster.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_one_to_255_visible_ascii_characters_given_once() {
    let cluster = start().await;
    let client = cluster.client();
    let longest = "k".repeat(255);
    let too_long = "k".repeat(256);
    let refused: [&[&str]; 4] = [
        &["order 42"],
        &[""],
        &[too_long.as_str()],
        &["order-1", "order-2"],
    ];
    for keys in refused {
        let response = post(&client, APP, &order("d4", "x"), keys).await;
        assert_eq!(response.status, 422, "{keys:?}: {}", response.body);
        assert_eq!(
            error_code(&response),
            ("invalid_argument", "Idempotency-Key"),
            "{keys:?}"
        );
    }
    for key in [longest.as_str(), "!\"#~o", "a"] {
        let response = post(&client, APP, &order("d4", key), &[key]).await;
        assert_eq!(response.status, 202, "{key:?}: {}", response.body);
    }
    cluster.shutdown().unwrap();
}
