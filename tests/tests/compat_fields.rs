//! Field by field: what a gorush- or gaurun-shaped request (and the native API's FCM options)
//! becomes at the provider. Each case goes through a whole default cluster (front,
//! controller, agent) to fakes that keep every request whole, and the request that arrived —
//! its `apns-*` headers and its whole body — is compared with what gorush v1.22 (apns2,
//! firebase-admin-go) or gaurun v0.14 (buford) build from the same fields, read from their
//! code. Where Volley deliberately differs, the expected value follows Apple's or Google's
//! documented rule, and the comment says why:
//! - `apns-topic` is the app's bundle id with the suffix Apple requires for the push type
//!   (gorush sends none unless asked, and APNs then refuses token-authenticated requests);
//! - `apns-priority` is always sent: 10 where gorush leaves it out (APNs' default is 10), 5
//!   for background pushes, which Apple requires;
//! - gorush's legacy FCM fields (`collapse_key`, `time_to_live`, `restricted_package_name`),
//!   which its FCM HTTP v1 path ignores, become their FCM v1 equivalents.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use volley_fake::{Captured, FakeConfig, FakeServer};
use volley_testkit::cluster::{Cluster, ClusterOptions, PROJECT, TOPIC};
use volley_testkit::jobs::{assert_balanced, count, wait_for_job};
use volley_testkit::tokens::{apns_token, fcm_token};

const LIMIT: Duration = Duration::from_secs(60);

async fn cluster() -> Cluster {
    let mut fake_apns = FakeConfig::apns();
    fake_apns.capture = 10_000;
    let mut fake_fcm = FakeConfig::fcm();
    fake_fcm.capture = 10_000;
    Cluster::start(ClusterOptions {
        agents: 1,
        fake_apns,
        fake_fcm,
        ..ClusterOptions::default()
    })
    .await
    .unwrap()
}

/// Posts `notifications` to a compatible endpoint, waits until every job is final and
/// delivered, and returns the answer.
async fn push(cluster: &Cluster, path: &str, notifications: Value) -> Value {
    let client = cluster.client();
    let body = json!({ "notifications": notifications }).to_string();
    let response = client.post(path, body).await.unwrap();
    assert_eq!(response.status, 200, "{path}: {}", response.body);
    for id in response.body["job_ids"].as_array().unwrap() {
        let status = wait_for_job(&client, id.as_str().unwrap(), LIMIT)
            .await
            .unwrap();
        assert_balanced(&status);
        assert_eq!(
            count(&status, "delivered"),
            count(&status, "accepted"),
            "{status}"
        );
    }
    response.body
}

/// The request that reached `fake` for `target`.
fn arrived(fake: &FakeServer, target: &str) -> Captured {
    let captured = fake
        .captured_for(target)
        .unwrap_or_else(|| panic!("no request reached the fake for {target}"));
    assert_eq!(captured.status, 200, "{captured:?}");
    captured
}

/// Asserts the `apns-*` headers (all of them; `apns-id` only when expected) and the body.
fn assert_apns(case: &str, captured: &Captured, headers: &[(&str, &str)], body: Value) {
    let mut got = captured.headers_with_prefix("apns-");
    if !headers.iter().any(|(name, _)| *name == "apns-id") {
        got.remove("apns-id");
    }
    let expected: BTreeMap<String, String> = headers
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    assert_eq!(got, expected, "{case}: headers");
    assert_eq!(captured.body, body, "{case}: body");
}

/// A case name, the gorush fields, the `apns-*` headers and the body that must arrive.
type ApnsCase<'a> = (&'a str, Value, Vec<(&'a str, &'a str)>, Value);

fn alert_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("apns-push-type", "alert"),
        ("apns-topic", TOPIC),
        ("apns-priority", "10"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gorush_ios_fields_reach_apns_as_gorush_sends_them() {
    let cluster = cluster().await;
    let token = |i: usize| apns_token("c0de", i);
    let live_topic = format!("{TOPIC}.push-type.liveactivity");
    let voip_topic = format!("{TOPIC}.voip");
    // (case, gorush notification without tokens/platform, apns-* headers, body)
    let cases: Vec<ApnsCase<'_>> = vec![
        (
            "message alone is a text alert",
            json!({"message": "Hello"}),
            alert_headers(),
            json!({"aps": {"alert": "Hello"}}),
        ),
        (
            "title and message",
            json!({"title": "Hi", "message": "Hello"}),
            alert_headers(),
            json!({"aps": {"alert": {"title": "Hi", "body": "Hello"}}}),
        ),
        (
            "badge 0, sound, category, thread, url args, content and mutable flags",
            json!({
                "message": "m", "badge": 0, "sound": "default", "category": "c",
                "thread-id": "th", "url-args": ["a", "b"], "mutable_content": true,
                "content_available": true,
            }),
            alert_headers(),
            json!({"aps": {
                "alert": "m", "badge": 0, "sound": "default", "category": "c",
                "thread-id": "th", "url-args": ["a", "b"], "mutable-content": 1,
                "content-available": 1,
            }}),
        ),
        (
            "data becomes top-level keys",
            json!({"message": "m", "data": {"k": "v", "n": 1, "o": {"x": true}}}),
            alert_headers(),
            json!({"aps": {"alert": "m"}, "k": "v", "n": 1, "o": {"x": true}}),
        ),
        (
            "the alert dictionary",
            json!({"alert": {
                "title": "AT", "subtitle": "S", "body": "AB", "loc-key": "LK", "loc-args": ["1"],
                "title-loc-key": "TLK", "title-loc-args": ["2"], "action-loc-key": "ALK",
                "launch-image": "img.png", "summary-arg": "sa", "summary-arg-count": 2,
                "action": "open",
            }}),
            alert_headers(),
            json!({"aps": {"alert": {
                "title": "AT", "subtitle": "S", "body": "AB", "loc-key": "LK", "loc-args": ["1"],
                "title-loc-key": "TLK", "title-loc-args": ["2"], "action-loc-key": "ALK",
                "launch-image": "img.png", "summary-arg": "sa", "summary-arg-count": 2,
                "action": "open",
            }}}),
        ),
        (
            "a critical sound dictionary",
            json!({"message": "m", "sound": {"critical": 1, "name": "alarm.caf", "volume": 0.5}}),
            alert_headers(),
            json!({"aps": {"alert": "m", "sound": {"critical": 1, "name": "alarm.caf", "volume": 0.5}}}),
        ),
        (
            "top-level name and volume make a critical sound",
            json!({"message": "m", "name": "siren.caf", "volume": 0.5}),
            alert_headers(),
            json!({"aps": {"alert": "m", "sound": {"critical": 1, "name": "siren.caf", "volume": 0.5}}}),
        ),
        (
            "interruption level and relevance score",
            json!({"message": "m", "interruption_level": "time-sensitive", "relevance-score": 0.75}),
            alert_headers(),
            json!({"aps": {"alert": "m", "interruption-level": "time-sensitive", "relevance-score": 0.75}}),
        ),
        (
            "a Live Activity update",
            json!({
                "push_type": "liveactivity", "event": "update", "timestamp": 1_700_000_000,
                "content-state": {"score": "2-1"}, "stale-date": 1_700_000_600,
                "dismissal-date": 1_700_003_600, "relevance-score": 0.5,
            }),
            vec![
                ("apns-push-type", "liveactivity"),
                ("apns-topic", live_topic.as_str()),
                ("apns-priority", "10"),
            ],
            json!({"aps": {
                "event": "update", "timestamp": 1_700_000_000, "content-state": {"score": "2-1"},
                "stale-date": 1_700_000_600, "dismissal-date": 1_700_003_600,
                "relevance-score": 0.5,
            }}),
        ),
        (
            "a Live Activity start",
            json!({
                "push_type": "liveactivity", "event": "start", "timestamp": 1_700_000_000,
                "content-state": {"score": "0-0"}, "attributes-type": "MatchAttributes",
                "attributes": {"home": "A", "away": "B"}, "title": "Kick-off", "message": "A v B",
            }),
            vec![
                ("apns-push-type", "liveactivity"),
                ("apns-topic", live_topic.as_str()),
                ("apns-priority", "10"),
            ],
            json!({"aps": {
                "event": "start", "timestamp": 1_700_000_000, "content-state": {"score": "0-0"},
                "attributes-type": "MatchAttributes", "attributes": {"home": "A", "away": "B"},
                "alert": {"title": "Kick-off", "body": "A v B"},
            }}),
        ),
        (
            "a VoIP push",
            json!({"push_type": "voip", "data": {"call": "42"}}),
            vec![
                ("apns-push-type", "voip"),
                ("apns-topic", voip_topic.as_str()),
                ("apns-priority", "10"),
            ],
            json!({"aps": {}, "call": "42"}),
        ),
        (
            "apns id, collapse id, expiration, priority and topic",
            json!({
                "message": "m", "apns_id": "123e4567-e89b-12d3-a456-426614174000",
                "collapse_id": "c1", "expiration": 2_000_000_000u64, "priority": "normal",
                "topic": TOPIC,
            }),
            vec![
                ("apns-push-type", "alert"),
                ("apns-topic", TOPIC),
                ("apns-priority", "5"),
                ("apns-id", "123e4567-e89b-12d3-a456-426614174000"),
                ("apns-collapse-id", "c1"),
                ("apns-expiration", "2000000000"),
            ],
            json!({"aps": {"alert": "m"}}),
        ),
        (
            "a background push",
            json!({"push_type": "background", "content_available": true, "priority": "normal", "data": {"sync": true}}),
            vec![
                ("apns-push-type", "background"),
                ("apns-topic", TOPIC),
                ("apns-priority", "5"),
            ],
            json!({"aps": {"content-available": 1}, "sync": true}),
        ),
    ];
    let notifications: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(i, (_, fields, _, _))| {
            let mut n = fields.clone();
            n["tokens"] = json!([token(i)]);
            n["platform"] = json!(1);
            n
        })
        .collect();
    let answer = push(&cluster, "/api/push", Value::Array(notifications)).await;
    assert_eq!(answer["counts"], cases.len(), "{answer}");
    for (i, (case, _, headers, body)) in cases.into_iter().enumerate() {
        let captured = arrived(&cluster.fake_apns, &token(i));
        assert_eq!(captured.path, format!("/3/device/{}", token(i)), "{case}");
        assert_apns(case, &captured, &headers, body);
    }
}

/// `base` with the keys of `more` set over it.
fn with(base: &Value, more: Value) -> Value {
    let mut merged = base.clone();
    if let (Value::Object(merged), Value::Object(more)) = (&mut merged, more) {
        merged.extend(more);
    }
    merged
}

/// The FCM message that arrived for `target`, after checking the request around it.
fn fcm_message(cluster: &Cluster, target: &str) -> Value {
    let captured = arrived(&cluster.fake_fcm, target);
    assert_eq!(
        captured.path,
        format!("/v1/projects/{PROJECT}/messages:send")
    );
    assert_eq!(captured.headers["authorization"], "bearer");
    let body = captured.body.as_object().unwrap();
    assert_eq!(body.len(), 1, "only `message` at the top: {body:?}");
    captured.body["message"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gorush_android_fields_reach_fcm_as_gorush_sends_them() {
    let cluster = cluster().await;
    let token = |i: usize| fcm_token("c0de", i);
    // FCM's own message parts, given whole; they must arrive whole.
    let blocks = json!({
        "notification": {"title": "from block"},
        "android": {
            "direct_boot_ok": true,
            "notification": {"channel_id": "news", "visibility": "PUBLIC", "notification_count": 3},
            "fcm_options": {"analytics_label": "a"},
        },
        "webpush": {
            "headers": {"Urgency": "high"},
            "notification": {"title": "web", "requireInteraction": true},
            "fcm_options": {"link": "https://example.com/"},
        },
        "apns": {"headers": {"apns-collapse-id": "x"}, "payload": {"aps": {"badge": 2}, "k": "v"}},
        "fcm_options": {"analytics_label": "campaign"},
    });
    // (case, gorush notification without tokens/platform, the message without its target)
    let cases: Vec<(&str, Value, Value)> = vec![
        (
            "title, message and image make the notification",
            json!({"title": "T", "message": "B", "image": "https://example.com/i.png"}),
            json!({"notification": {"title": "T", "body": "B", "image": "https://example.com/i.png"}}),
        ),
        (
            "data values become strings, JSON-encoded when not strings",
            json!({"message": "m", "data": {"s": "x", "n": 5, "b": true, "o": {"a": 1}}}),
            json!({
                "notification": {"body": "m"},
                "data": {"s": "x", "n": "5", "b": "true", "o": "{\"a\":1}"},
            }),
        ),
        (
            "priority as the Firebase Admin SDK spells it",
            json!({"message": "m", "priority": "high"}),
            json!({"notification": {"body": "m"}, "android": {"priority": "high"}}),
        ),
        (
            "a sound for Android and for iOS devices on FCM",
            json!({"message": "m", "sound": "default", "priority": "normal"}),
            json!({
                "notification": {"body": "m"},
                "android": {"priority": "normal", "notification": {"sound": "default"}},
                "apns": {"payload": {"aps": {"sound": "default"}}},
            }),
        ),
        (
            "content_available for iOS devices on FCM",
            json!({"content_available": true}),
            json!({"apns": {
                "headers": {"apns-priority": "5"},
                "payload": {"aps": {"content-available": 1}},
            }}),
        ),
        (
            "mutable_content for iOS devices on FCM",
            json!({"title": "T", "mutable_content": true}),
            json!({
                "notification": {"title": "T"},
                "apns": {"payload": {"aps": {"mutable-content": 1}}},
            }),
        ),
        (
            "FCM's own blocks pass through whole, unknown fields included",
            with(&blocks, json!({"message": "m"})),
            with(
                &blocks,
                json!({"notification": {"title": "from block", "body": "m"}}),
            ),
        ),
        (
            "legacy collapse_key, time_to_live and restricted_package_name as FCM v1 fields",
            json!({"message": "m", "collapse_key": "ck", "time_to_live": 60, "restricted_package_name": "com.example"}),
            json!({
                "notification": {"body": "m"},
                "android": {"collapse_key": "ck", "ttl": "60s", "restricted_package_name": "com.example"},
            }),
        ),
    ];
    let notifications: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(i, (_, fields, _))| {
            let mut n = fields.clone();
            n["tokens"] = json!([token(i)]);
            n["platform"] = json!(2);
            n
        })
        .collect();
    push(&cluster, "/api/push", Value::Array(notifications)).await;
    for (i, (case, _, mut expected)) in cases.into_iter().enumerate() {
        expected["token"] = json!(token(i));
        assert_eq!(fcm_message(&cluster, &token(i)), expected, "{case}");
    }

    // Topics and conditions: firebase-admin-go sends the topic without `/topics/`.
    let condition = "'news' in topics && 'sport' in topics";
    let topics = vec![
        json!({"platform": 2, "topic": "news", "message": "by topic"}),
        json!({"platform": 2, "to": "/topics/sport", "message": "by to"}),
        json!({"platform": 2, "condition": condition, "message": "by condition"}),
    ];
    push(&cluster, "/api/push", Value::Array(topics)).await;
    for (target, key, body) in [
        ("news", "topic", "by topic"),
        ("sport", "topic", "by to"),
        (condition, "condition", "by condition"),
    ] {
        assert_eq!(
            fcm_message(&cluster, target),
            json!({key: target, "notification": {"body": body}}),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaurun_fields_reach_the_providers_as_gaurun_sends_them() {
    let cluster = cluster().await;
    let ios = |i: usize| apns_token("9a0e", i);
    let android = |i: usize| fcm_token("9a0e", i);
    let notifications = json!([
        {"token": [ios(0)], "platform": 1, "message": "Hello"},
        {
            "token": [ios(1)], "platform": 1, "message": "Hello", "title": "Greeting",
            "subtitle": "greeting", "badge": 1, "category": "category1", "sound": "default",
            "content_available": true, "mutable_content": true, "expiry": 3600,
            "extend": [{"key": "url", "val": "https://example.com/"}, {"key": "intent", "val": "open"}],
        },
        {"token": [ios(2)], "platform": 1, "push_type": "background", "content_available": true},
        {
            "token": [android(0)], "platform": 2, "message": "Hello, Android!",
            "collapse_key": "update", "delay_while_idle": true, "time_to_live": 10,
            "priority": "normal", "extend": [{"key": "url", "val": "u"}],
        },
    ]);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    push(&cluster, "/push", notifications).await;

    // buford writes a body-only alert as a string and always writes the badge (0 by default).
    let captured = arrived(&cluster.fake_apns, &ios(0));
    assert_apns(
        "message alone",
        &captured,
        &alert_headers(),
        json!({"aps": {"alert": "Hello", "badge": 0}}),
    );

    let captured = arrived(&cluster.fake_apns, &ios(1));
    let expiration: u64 = captured.headers["apns-expiration"].parse().unwrap();
    assert!(
        (before + 3600..=before + 3600 + 60).contains(&expiration),
        "expiry is seconds from now: {expiration}"
    );
    let mut headers = alert_headers();
    let expiration = expiration.to_string();
    headers.push(("apns-expiration", &expiration));
    assert_apns(
        "every ios field",
        &captured,
        &headers,
        json!({
            "aps": {
                "alert": {"title": "Greeting", "subtitle": "greeting", "body": "Hello"},
                "badge": 1, "category": "category1", "sound": "default",
                "content-available": 1, "mutable-content": 1,
            },
            "url": "https://example.com/", "intent": "open",
        }),
    );

    let captured = arrived(&cluster.fake_apns, &ios(2));
    assert_apns(
        "background",
        &captured,
        &[
            ("apns-push-type", "background"),
            ("apns-topic", TOPIC),
            ("apns-priority", "5"),
        ],
        json!({"aps": {"badge": 0, "content-available": 1}}),
    );

    // gaurun sends Android pushes as data messages, `message` and `extend` in `data`.
    assert_eq!(
        fcm_message(&cluster, &android(0)),
        json!({
            "token": android(0),
            "data": {"message": "Hello, Android!", "url": "u"},
            "android": {"collapse_key": "update", "ttl": "10s", "priority": "normal"},
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_fcm_options_reach_fcm_unchanged() {
    let cluster = cluster().await;
    let token = fcm_token("0a71e", 0);
    let fcm = json!({
        "android": {
            "priority": "high",
            "direct_boot_ok": true,
            "notification": {"channel_id": "orders", "visibility": "PRIVATE", "default_sound": true},
        },
        "webpush": {"notification": {"title": "web"}, "fcm_options": {"link": "https://example.com/o/1"}},
        "apns": {"headers": {"apns-priority": "10"}, "payload": {"aps": {"category": "order"}}},
        "fcm_options": {"analytics_label": "orders"},
    });
    let body =
        json!({"title": "Order", "body": "Shipped", "fcm": fcm, "targets": {"fcm": [token]}});
    let client = cluster.client();
    let id = volley_testkit::jobs::submit(&client, body.to_string())
        .await
        .unwrap();
    let status = wait_for_job(&client, &id, LIMIT).await.unwrap();
    assert_eq!(count(&status, "delivered"), 1, "{status}");
    let mut expected = fcm.clone();
    expected["token"] = json!(token);
    expected["notification"] = json!({"title": "Order", "body": "Shipped"});
    assert_eq!(fcm_message(&cluster, &token), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_collapse_on_apns_only_and_malformed_tokens_stay_behind() {
    let cluster = cluster().await;
    let apns = [apns_token("b0ad", 0), apns_token("b0ad", 1)];
    let fcm = [fcm_token("b0ad", 0), fcm_token("b0ad", 1)];

    // A broadcast (two tokens or more) carries its job id as `apns-collapse-id`, so that a
    // copy resent after a crash replaces the first on the device; FCM gets no collapse key
    // nobody asked for (ADR 003).
    let client = cluster.client();
    let body = json!({"title": "Sale", "targets": {"apns": apns, "fcm": fcm}});
    let id = volley_testkit::jobs::submit(&client, body.to_string())
        .await
        .unwrap();
    let status = wait_for_job(&client, &id, LIMIT).await.unwrap();
    assert_eq!(count(&status, "delivered"), 4, "{status}");
    for token in &apns {
        let captured = arrived(&cluster.fake_apns, token);
        assert_eq!(captured.headers["apns-collapse-id"], id);
    }
    for token in &fcm {
        let message = fcm_message(&cluster, token);
        assert_eq!(
            message,
            json!({"token": token, "notification": {"title": "Sale"}})
        );
    }

    // gorush: a malformed token is left out and reported by place; the others are sent as
    // gorush would send them.
    let good = apns_token("b0ad", 2);
    let answer = push(
        &cluster,
        "/api/push",
        json!([{"platform": 1, "message": "m", "tokens": [good, "not hex at all"]}]),
    )
    .await;
    assert_eq!(answer["counts"], 1, "{answer}");
    assert_eq!(answer["logs"][0]["type"], "failed-push", "{answer}");
    assert_eq!(
        answer["logs"][0]["field"], "notifications[0].tokens[1]",
        "{answer}"
    );
    assert!(!answer.to_string().contains("not hex at all"), "{answer}");
    assert_apns(
        "the valid token",
        &arrived(&cluster.fake_apns, &good),
        &alert_headers(),
        json!({"aps": {"alert": "m"}}),
    );
    assert_eq!(
        cluster.fake_apns.captured().len(),
        3,
        "nothing sent for the bad token"
    );

    // A native FCM condition send, whole.
    let condition = "'deals' in topics || 'sale' in topics";
    let id = volley_testkit::jobs::submit(
        &client,
        json!({"body": "20% off", "condition": condition}).to_string(),
    )
    .await
    .unwrap();
    let status = wait_for_job(&client, &id, LIMIT).await.unwrap();
    assert_eq!(count(&status, "delivered"), 1, "{status}");
    assert_eq!(
        fcm_message(&cluster, condition),
        json!({"condition": condition, "notification": {"body": "20% off"}})
    );
}
