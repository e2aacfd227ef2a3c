//! The native API against a fake controller over real tarpc: submission, rendering, auth,
//! validation, job status and cancel.

mod support;

use volley_contracts::Links;

use hyper::http::Method;
use serde_json::json;
use support::*;
use volley_contracts::{InvalidToken, JobId, Platform};

const NOTIFY: &str = "/v1/apps/shop/notifications";

#[tokio::test]
async fn a_notification_is_rendered_once_per_provider_and_queued() {
    let front = Front::start(config("")).await;
    let body = json!({
        "targets": {
            "apns": [apns_token(1), apns_token(2)],
            "fcm": [fcm_token(1), fcm_token(2), fcm_token(3)],
        },
        "title": "Sale",
        "body": "Everything \"50%\" off",
        "badge": 3,
        "sound": "default",
        "data": {"order": 42, "kind": "promo", "nested": {"a": [1, 2]}},
        "priority": "high",
        "collapse_id": "sale",
        "ttl": 3600,
        "thread_id": "promos",
        "image": "https://example.com/a.png",
    });
    let reply = front.post(NOTIFY, Some(SHOP_KEY), &body).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let answer = reply.json();
    assert_eq!(answer["accepted"], 5);
    let id: JobId = answer["id"].as_str().unwrap().parse().unwrap();

    let jobs = front.submitted();
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job.app, "shop");
    assert_eq!(
        job.apns_tokens.iter().collect::<Vec<_>>(),
        [apns_token(1), apns_token(2)]
    );
    assert_eq!(
        job.fcm_tokens.iter().collect::<Vec<_>>(),
        [fcm_token(1), fcm_token(2), fcm_token(3)]
    );

    let apns = job.apns.as_ref().unwrap();
    assert_eq!(apns.push_type, "alert");
    assert_eq!(apns.priority, 10);
    assert_eq!(apns.collapse_id.as_deref(), Some("sale"));
    assert!(apns.expiration.unwrap() > 1_700_000_000);
    assert_eq!(
        apns_payload(job),
        json!({
            "aps": {
                "alert": {"title": "Sale", "body": "Everything \"50%\" off"},
                "badge": 3,
                "sound": "default",
                "thread-id": "promos",
            },
            "order": 42,
            "kind": "promo",
            "nested": {"a": [1, 2]},
        })
    );

    let fcm = fcm_body(job, &fcm_token(2));
    let message = &fcm["message"];
    assert_eq!(message["token"], fcm_token(2));
    assert_eq!(
        message["notification"],
        json!({"title": "Sale", "body": "Everything \"50%\" off", "image": "https://example.com/a.png"})
    );
    assert_eq!(
        message["data"],
        json!({"order": "42", "kind": "promo", "nested": "{\"a\":[1,2]}"})
    );
    assert_eq!(message["android"]["priority"], "high");
    assert_eq!(message["android"]["ttl"], "3600s");
    assert_eq!(message["android"]["collapse_key"], "sale");
    assert_eq!(message["android"]["notification"]["sound"], "default");

    // The job is visible to its app.
    let status = front.get(&format!("/v1/jobs/{id}"), Some(SHOP_KEY)).await;
    assert_eq!(status.status, 200, "{}", status.text());
    assert_eq!(status.json()["state"], "queued");
    assert_eq!(status.json()["pending"], 5);
}

#[tokio::test]
async fn flat_token_fields_and_raw_escape_hatches_are_accepted() {
    let front = Front::start(config("")).await;
    let body = json!({
        "apns_tokens": [apns_token(9)],
        "fcm_tokens": [fcm_token(9)],
        "body": "hi",
        "apns": {"aps": {"interruption-level": "time-sensitive"}, "meta": 1},
        "fcm": {"webpush": {"headers": {"Urgency": "high"}}, "fcm_options": {"analytics_label": "l"}},
        "push_type": "alert",
        "priority": 5,
    });
    let reply = front.post(NOTIFY, Some(SHOP_KEY), &body).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let job = &front.submitted()[0];
    assert_eq!(job.apns.as_ref().unwrap().priority, 5);
    assert_eq!(
        apns_payload(job),
        json!({"aps": {"interruption-level": "time-sensitive", "alert": {"body": "hi"}}, "meta": 1})
    );
    let fcm = fcm_body(job, &fcm_token(9));
    assert_eq!(fcm["message"]["webpush"]["headers"]["Urgency"], "high");
    assert_eq!(fcm["message"]["fcm_options"]["analytics_label"], "l");
    assert_eq!(fcm["message"]["android"]["priority"], "NORMAL");
}

#[tokio::test]
async fn api_keys_reach_only_their_own_app() {
    let front = Front::start(config("")).await;
    let body = json!({"targets": {"fcm": [fcm_token(1)]}, "body": "x"});

    let reply = front.post(NOTIFY, None, &body).await;
    reply.assert_error(401, "unauthorized", None);
    assert_eq!(reply.headers["www-authenticate"], "Bearer");

    let reply = front
        .post(NOTIFY, Some("not-a-key-but-long-enough"), &body)
        .await;
    let message = reply.assert_error(401, "unauthorized", None);
    assert!(!message.contains("not-a-key"), "{message}");

    let reply = front.post(NOTIFY, Some(NEWS_KEY), &body).await;
    reply.assert_error(403, "forbidden", None);
    assert!(!reply.text().contains(NEWS_KEY));

    let reply = front
        .post("/v1/apps/news/notifications", Some(NEWS_KEY), &body)
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    assert!(front.submitted().iter().all(|job| job.app == "news"));
}

#[tokio::test]
async fn malformed_tokens_are_left_out_and_reported_unless_strict() {
    let front = Front::start(config("")).await;
    let body = json!({
        "title": "x",
        "targets": {"apns": [apns_token(1), "secret-zz", apns_token(2)], "fcm": ["bad token"]},
    });
    let reply = front
        .post("/v1/apps/shop/notifications", Some(SHOP_KEY), &body)
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let answer = reply.json();
    assert_eq!(
        (answer["accepted"].as_u64(), answer["rejected"].as_u64()),
        (Some(2), Some(2))
    );
    let fields: Vec<&str> = answer["rejected_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["targets.apns[1]", "targets.fcm[0]"]);
    assert!(!reply.text().contains("secret"), "{}", reply.text());
    let job = &front.submitted()[0];
    assert_eq!(job.apns_tokens.len(), 2);
    assert!(job.fcm_tokens.is_empty());
    assert_eq!(job.rejected.count, 2);

    // Every token malformed: nothing to send.
    front
        .post(
            "/v1/apps/shop/notifications",
            Some(SHOP_KEY),
            &json!({"title": "x", "targets": {"apns": ["short"]}}),
        )
        .await
        .assert_error(422, "invalid_token", Some("targets.apns[0]"));
}

#[tokio::test]
async fn apns_topics_ids_and_fcm_topics_on_the_native_api() {
    let front = Front::start(config("")).await;
    let reply = front
        .post(
            "/v1/apps/shop/notifications",
            Some(SHOP_KEY),
            &json!({
                "title": "x",
                "push_type": "voip",
                "apns_topic": "com.example.shop.voip",
                "apns_id": "123e4567-e89b-12d3-a456-426614174000",
                "targets": {"apns": [apns_token(1)]},
                "topic": "/topics/news",
            }),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let job = &front.submitted()[0];
    let apns = job.apns.as_ref().unwrap();
    assert_eq!(apns.topic.as_deref(), Some("com.example.shop.voip"));
    assert_eq!(
        apns.apns_id.as_deref(),
        Some("123e4567-e89b-12d3-a456-426614174000")
    );
    assert_eq!(job.fcm_tokens.iter().collect::<Vec<_>>(), ["news"]);
    assert_eq!(fcm_body(job, "news")["message"]["topic"], "news");
    for (body, field) in [
        (json!({"title": "x", "topic": "a b"}), "topic"),
        (json!({"title": "x", "condition": "'a' in"}), "condition"),
        (
            json!({"title": "x", "topic": "a", "condition": "'a' in topics"}),
            "condition",
        ),
        (
            json!({"title": "x", "topic": "a", "targets": {"fcm": ["t:1"]}}),
            "targets.fcm",
        ),
        (
            json!({"title": "x", "apns_id": "nope", "targets": {"apns": [apns_token(1)]}}),
            "apns_id",
        ),
        (
            json!({"title": "x", "apns_topic": "", "targets": {"apns": [apns_token(1)]}}),
            "apns_topic",
        ),
    ] {
        front
            .post("/v1/apps/shop/notifications", Some(SHOP_KEY), &body)
            .await
            .assert_error(422, "invalid_argument", Some(field));
    }
}

#[tokio::test]
async fn every_validation_error_names_its_field() {
    let front = Front::start(config("max_tokens_per_request = 5")).await;
    let good = apns_token(1);
    let cases = [
        // (body, status, code, field)
        (
            json!({"targets": {"apns": [good, "not-a-secret-token", good]}, "strict": true}),
            422,
            "invalid_token",
            Some("targets.apns[1]"),
        ),
        (
            json!({"targets": {"fcm": ["ok", "bad token"]}, "strict": true}),
            422,
            "invalid_token",
            Some("targets.fcm[1]"),
        ),
        (
            json!({"targets": {"huawei": ["x"]}}),
            422,
            "unknown_platform",
            Some("targets.huawei"),
        ),
        (
            json!({"targets": {"fcm": "tok-as-a-string"}}),
            400,
            "bad_request",
            Some("targets.fcm"),
        ),
        (
            json!({"targets": {"fcm": [fcm_token(1)]}, "badge": "three"}),
            400,
            "bad_request",
            Some("badge"),
        ),
        (
            json!({"targets": {"fcm": [fcm_token(1)]}, "titel": "typo"}),
            422,
            "invalid_argument",
            Some("titel"),
        ),
        (json!({"targets": {}}), 422, "no_tokens", Some("targets")),
        (json!({"title": "x"}), 422, "no_tokens", Some("targets")),
        (
            json!({"targets": {"fcm": (0..6).map(fcm_token).collect::<Vec<_>>()}}),
            422,
            "too_many_tokens",
            Some("targets"),
        ),
        (
            json!({"targets": {"fcm": [fcm_token(1)]}, "collapse_id": "c".repeat(65)}),
            422,
            "invalid_argument",
            Some("collapse_id"),
        ),
        (
            json!({"targets": {"apns": [apns_token(1)]}, "body": "x".repeat(5000)}),
            422,
            "payload_too_large",
            Some("targets.apns"),
        ),
        (
            json!({"targets": {"fcm": [fcm_token(1)]}, "body": "x".repeat(5000)}),
            422,
            "payload_too_large",
            Some("targets.fcm"),
        ),
        (
            json!({"targets": {"fcm": [fcm_token(1)]}, "priority": "urgent"}),
            422,
            "invalid_argument",
            Some("priority"),
        ),
        (
            json!({"targets": {"apns": [apns_token(1)]}, "push_type": "sms"}),
            422,
            "invalid_argument",
            Some("push_type"),
        ),
        (
            json!({"targets": {"fcm": [fcm_token(1)]}, "data": {"google.x": 1}}),
            422,
            "invalid_argument",
            Some("data"),
        ),
        (
            json!({"targets": {"fcm": [fcm_token(1)]}, "ttl": 30 * 24 * 3600}),
            422,
            "invalid_argument",
            Some("ttl"),
        ),
    ];
    for (body, status, code, field) in cases {
        let reply = front.post(NOTIFY, Some(SHOP_KEY), &body).await;
        let message = reply.assert_error(status, code, field);
        assert!(!message.contains("not-a-secret"), "{message}");
        assert!(!message.contains("tok-as-a-string"), "{message}");
    }

    // Malformed JSON names where it stopped.
    let reply = front
        .send(
            Method::POST,
            NOTIFY,
            Some(SHOP_KEY),
            r#"{"targets": {"fcm": ["a"}"#,
        )
        .await;
    let message = reply.assert_error(400, "bad_request", Some("targets.fcm"));
    assert!(message.starts_with("malformed json"), "{message}");

    // An app without the platform's credentials.
    let reply = front
        .post(
            "/v1/apps/news/notifications",
            Some(NEWS_KEY),
            &json!({"targets": {"apns": [apns_token(1)]}, "body": "x"}),
        )
        .await;
    let message = reply.assert_error(422, "platform_not_configured", Some("targets.apns"));
    assert!(message.contains("apns"), "{message}");
    let reply = front
        .post(
            "/v1/apps/ios/notifications",
            Some(IOS_KEY),
            &json!({"targets": {"fcm": [fcm_token(1)]}}),
        )
        .await;
    reply.assert_error(422, "platform_not_configured", Some("targets.fcm"));

    assert!(front.submitted().is_empty(), "nothing invalid was queued");
}

#[tokio::test]
async fn bodies_over_the_limit_get_a_json_413() {
    let front = Front::start(config("max_body_bytes = 1024")).await;
    let tokens: Vec<String> = (0..40).map(apns_token).collect();
    let reply = front
        .post(
            NOTIFY,
            Some(SHOP_KEY),
            &json!({"targets": {"apns": tokens}}),
        )
        .await;
    let message = reply.assert_error(413, "body_too_large", None);
    assert!(message.contains("1024"), "{message}");
}

#[tokio::test]
async fn controller_errors_keep_their_status() {
    let front = Front::start(config("")).await;
    // The fake controller refuses jobs with this idempotency key as resource-exhausted.
    let reply = front
        .send(
            Method::POST,
            NOTIFY,
            Some(SHOP_KEY),
            serde_json::to_vec(&json!({"targets": {"fcm": [fcm_token(1)]}})).unwrap(),
        )
        .await;
    assert_eq!(reply.status, 202);
    let stream = support::send_with_header(
        front.addr,
        NOTIFY,
        SHOP_KEY,
        ("idempotency-key", "refuse"),
        serde_json::to_vec(&json!({"targets": {"fcm": [fcm_token(1)]}})).unwrap(),
    )
    .await;
    stream.assert_error(429, "resource_exhausted", None);
    assert_eq!(stream.headers["retry-after"], "1");
    // A full controller is a 503 "overloaded", retried after a second.
    let stream = support::send_with_header(
        front.addr,
        NOTIFY,
        SHOP_KEY,
        ("idempotency-key", "full"),
        serde_json::to_vec(&json!({"targets": {"fcm": [fcm_token(1)]}})).unwrap(),
    )
    .await;
    stream.assert_error(503, "overloaded", None);
    assert_eq!(stream.headers["retry-after"], "1");
}

#[tokio::test]
async fn a_key_above_its_rate_gets_429_with_retry_after_and_other_keys_do_not() {
    let front = Front::start(config("key_requests_per_second = 0.5\nkey_burst = 2")).await;
    let body = json!({"targets": {"fcm": [fcm_token(1)]}});
    for _ in 0..2 {
        let reply = front.post(NOTIFY, Some(SHOP_KEY), &body).await;
        assert_eq!(reply.status, 202, "{}", reply.text());
    }
    let reply = front.post(NOTIFY, Some(SHOP_KEY), &body).await;
    reply.assert_error(429, "rate_limited", None);
    let retry: u64 = reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    // Another app's key has its own bucket.
    let reply = front
        .post("/v1/apps/news/notifications", Some(NEWS_KEY), &body)
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    assert_eq!(front.controller.shared.submitted.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn an_unreachable_controller_is_a_503_with_retry_after() {
    // A "controller" that accepts the connection and closes it at once.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    let client = volley_contracts::connect_controller(addr, &Links::Insecure)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = listener.local_addr().unwrap();
    tokio::spawn(volley_front::run(
        config(""),
        listener,
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        client,
        Links::Insecure,
        futures::future::pending(),
    ));
    let body = serde_json::to_vec(&json!({"targets": {"fcm": [fcm_token(1)]}})).unwrap();
    let reply = send(front_addr, Method::POST, NOTIFY, Some(SHOP_KEY), body).await;
    reply.assert_error(503, "unavailable", None);
    assert_eq!(reply.headers["retry-after"], "5");
    let reply = send(front_addr, Method::GET, "/readyz", None, "").await;
    assert_eq!(reply.status, 503);
}

#[tokio::test]
async fn job_status_and_cancel_pass_through_for_the_owning_app_only() {
    let front = Front::start(config("")).await;
    let reply = front
        .post(
            NOTIFY,
            Some(SHOP_KEY),
            &json!({"targets": {"apns": [apns_token(1), apns_token(2)]}, "body": "x"}),
        )
        .await;
    let id = reply.json()["id"].as_str().unwrap().to_owned();
    {
        let parsed: JobId = id.parse().unwrap();
        let mut jobs = front.controller.shared.jobs.lock().unwrap();
        let status = jobs.get_mut(&parsed).unwrap();
        status.invalid = 2;
        status.invalid_tokens = vec![
            InvalidToken {
                platform: Platform::Apns,
                token: apns_token(1),
                reason: "Unregistered".into(),
                timestamp_ms: Some(1_700_000_000_000),
            },
            InvalidToken {
                platform: Platform::Apns,
                token: apns_token(2),
                reason: "BadDeviceToken".into(),
                timestamp_ms: None,
            },
        ];
    }

    let status = front.get(&format!("/v1/jobs/{id}"), Some(SHOP_KEY)).await;
    assert_eq!(status.status, 200, "{}", status.text());
    let view = status.json();
    assert_eq!(view["id"], id);
    assert_eq!(view["app"], "shop");
    assert_eq!(view["invalid"], 2);
    assert_eq!(
        view["invalid_tokens"][0],
        json!({"platform": "apns", "token": apns_token(1), "reason": "Unregistered", "timestamp": 1_700_000_000_000u64})
    );

    let limited = front
        .get(&format!("/v1/jobs/{id}?invalid_limit=1"), Some(SHOP_KEY))
        .await;
    assert_eq!(
        limited.json()["invalid_tokens"].as_array().unwrap().len(),
        1
    );
    front
        .get(&format!("/v1/jobs/{id}?invalid_limit=x"), Some(SHOP_KEY))
        .await
        .assert_error(400, "bad_request", Some("invalid_limit"));

    // The paged list: one token per page, the cursor leads to the next, then ends.
    let first = front
        .get(
            &format!("/v1/jobs/{id}/invalid-tokens?page_size=1"),
            Some(SHOP_KEY),
        )
        .await;
    assert_eq!(first.status, 200, "{}", first.text());
    let first = first.json();
    assert_eq!(first["total"], 2);
    assert_eq!(first["tokens"][0]["token"], apns_token(1));
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let second = front
        .get(
            &format!("/v1/jobs/{id}/invalid-tokens?page_size=1&cursor={cursor}"),
            Some(SHOP_KEY),
        )
        .await
        .json();
    assert_eq!(second["tokens"][0]["token"], apns_token(2));
    assert_eq!(second["tokens"][0]["reason"], "BadDeviceToken");
    assert!(second["next_cursor"].is_null(), "{second}");
    front
        .get(
            &format!("/v1/jobs/{id}/invalid-tokens?page_size=0"),
            Some(SHOP_KEY),
        )
        .await
        .assert_error(400, "bad_request", Some("page_size"));
    front
        .get(
            &format!("/v1/jobs/{id}/invalid-tokens?cursor=x"),
            Some(SHOP_KEY),
        )
        .await
        .assert_error(400, "bad_request", Some("cursor"));
    front
        .get(&format!("/v1/jobs/{id}/invalid-tokens"), Some(NEWS_KEY))
        .await
        .assert_error(404, "not_found", None);

    // Another app's key sees nothing and cannot cancel.
    front
        .get(&format!("/v1/jobs/{id}"), Some(NEWS_KEY))
        .await
        .assert_error(404, "not_found", None);
    front
        .send(
            Method::DELETE,
            &format!("/v1/jobs/{id}"),
            Some(NEWS_KEY),
            "",
        )
        .await
        .assert_error(404, "not_found", None);
    front
        .get(&format!("/v1/jobs/{}", JobId::new()), Some(SHOP_KEY))
        .await
        .assert_error(404, "not_found", None);
    front
        .get("/v1/jobs/not-a-uuid", Some(SHOP_KEY))
        .await
        .assert_error(400, "bad_request", Some("id"));
    front
        .get(&format!("/v1/jobs/{id}"), None)
        .await
        .assert_error(401, "unauthorized", None);

    let cancelled = front
        .send(
            Method::DELETE,
            &format!("/v1/jobs/{id}"),
            Some(SHOP_KEY),
            "",
        )
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.text());
    assert_eq!(cancelled.json()["state"], "cancelled");
    assert_eq!(cancelled.json()["cancelled"], 2);
}

#[tokio::test]
async fn a_million_tokens_in_one_request_are_accepted() {
    let front = Front::start(config("")).await;
    const N: usize = 1_000_000;
    let mut body = String::with_capacity(N * 67 + 100);
    body.push_str(r#"{"title":"big","targets":{"apns":["#);
    for i in 0..N {
        if i > 0 {
            body.push(',');
        }
        body.push('"');
        body.push_str(&apns_token(i));
        body.push('"');
    }
    body.push_str("]}}");
    let reply = front.send(Method::POST, NOTIFY, Some(SHOP_KEY), body).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    assert_eq!(reply.json()["accepted"], N);
    let jobs = front.submitted();
    let tokens = &jobs[0].apns_tokens;
    assert_eq!(tokens.len(), N);
    assert_eq!(tokens.get(0), Some(apns_token(0).as_str()));
    assert_eq!(tokens.get(N - 1), Some(apns_token(N - 1).as_str()));
}

#[tokio::test]
async fn concurrent_small_jobs_share_controller_calls_and_get_their_own_answers() {
    let front = Front::start(config("")).await;
    // Request i carries i tokens, so each answer shows whose it is.
    let requests = (1..=40).map(|i| {
        let front = &front;
        async move {
            let tokens: Vec<String> = (0..i).map(|t| apns_token(i * 100 + t)).collect();
            let body = json!({"title": "Hi", "targets": {"apns": tokens}});
            (i, front.post(NOTIFY, Some(SHOP_KEY), &body).await)
        }
    });
    let replies = futures::future::join_all(requests).await;
    let mut ids = std::collections::HashSet::new();
    for (i, reply) in replies {
        assert_eq!(reply.status, 202, "{}", reply.text());
        let answer = reply.json();
        assert_eq!(answer["accepted"], i as u64);
        let id: JobId = answer["id"].as_str().unwrap().parse().unwrap();
        let status = front.get(&format!("/v1/jobs/{id}"), Some(SHOP_KEY)).await;
        assert_eq!(status.json()["accepted"], i as u64, "job {id}");
        assert!(ids.insert(id));
    }
    let batched: usize = front.controller.shared.batches.lock().unwrap().iter().sum();
    assert_eq!(batched, 40, "every small job went through submit_many");

    // A broadcast-sized job has a call of its own.
    let tokens: Vec<String> = (0..1000).map(apns_token).collect();
    let reply = front
        .post(
            NOTIFY,
            Some(SHOP_KEY),
            &json!({"title": "All", "targets": {"apns": tokens}}),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let batched: usize = front.controller.shared.batches.lock().unwrap().iter().sum();
    assert_eq!(batched, 40);
    assert_eq!(front.submitted().len(), 41);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let front = Front::start(config("")).await;
    front
        .get("/nope", None)
        .await
        .assert_error(404, "not_found", None);
    front
        .get(NOTIFY, Some(SHOP_KEY))
        .await
        .assert_error(405, "method_not_allowed", None);
}
