//! The gorush- and gaurun-shaped endpoints.

mod support;

use serde_json::json;
use support::*;

#[tokio::test]
async fn gorush_requests_become_one_job_per_entry() {
    let front = Front::start(config("")).await;
    let body = json!({
        "notifications": [
            {
                "tokens": [apns_token(1), apns_token(2)],
                "platform": 1,
                "message": "Hello iOS",
                "title": "Hi",
                "badge": 2,
                "sound": {"critical": 1, "name": "alarm.caf", "volume": 1.0},
                "topic": "com.example.shop",
                "priority": "normal",
                "collapse_id": "c1",
                "thread-id": "t1",
                "mutable_content": true,
                "expiration": 1_900_000_000u64,
                "interruption_level": "time-sensitive",
                "alert": {"subtitle": "sub", "loc-key": "GREETING"},
                "data": {"k": "v"},
            },
            {
                "tokens": [fcm_token(1)],
                "to": fcm_token(2),
                "platform": 2,
                "message": "Hello Android",
                "title": "Hi",
                "priority": "high",
                "data": {"n": 1},
                "collapse_key": "ck",
                "time_to_live": 60,
                "android": {"notification": {"channel_id": "news"}},
            }
        ]
    });
    let reply = front.post("/api/push", Some(SHOP_KEY), &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = reply.json();
    assert_eq!(answer["counts"], 4);
    assert_eq!(answer["success"], "ok");
    assert_eq!(answer["logs"], json!([]));
    assert_eq!(answer["job_ids"].as_array().unwrap().len(), 2);

    let jobs = front.submitted();
    assert_eq!(jobs.len(), 2);
    let ios = &jobs[0];
    assert_eq!(ios.apns_tokens.len(), 2);
    assert!(ios.fcm_tokens.is_empty());
    let apns = ios.apns.as_ref().unwrap();
    assert_eq!(
        (apns.priority, apns.expiration, apns.collapse_id.as_deref()),
        (5, Some(1_900_000_000), Some("c1"))
    );
    assert_eq!(apns.topic.as_deref(), Some("com.example.shop"));
    assert_eq!(
        apns_payload(ios),
        json!({
            "aps": {
                "alert": {"title": "Hi", "subtitle": "sub", "body": "Hello iOS", "loc-key": "GREETING"},
                "badge": 2,
                "sound": {"critical": 1, "name": "alarm.caf", "volume": 1.0},
                "thread-id": "t1",
                "mutable-content": 1,
                "interruption-level": "time-sensitive",
            },
            "k": "v",
        })
    );

    let android = &jobs[1];
    assert_eq!(
        android.fcm_tokens.iter().collect::<Vec<_>>(),
        [fcm_token(1), fcm_token(2)]
    );
    let message = &fcm_body(android, &fcm_token(2))["message"];
    assert_eq!(
        message["notification"],
        json!({"title": "Hi", "body": "Hello Android"})
    );
    assert_eq!(message["data"], json!({"n": "1"}));
    assert_eq!(
        message["android"],
        json!({"priority": "high", "ttl": "60s", "collapse_key": "ck", "notification": {"channel_id": "news"}})
    );
}

#[tokio::test]
async fn gaurun_requests_are_answered_like_gaurun() {
    let front = Front::start(config("")).await;
    let body = json!({
        "notifications": [
            {
                "token": [apns_token(3)],
                "platform": 1,
                "message": "Hello, iOS!",
                "title": "Greeting",
                "subtitle": "greeting",
                "badge": 1,
                "category": "category1",
                "sound": "default",
                "content_available": false,
                "mutable_content": false,
                "expiry": 10,
                "extend": [{"key": "url", "val": "https://x"}, {"key": "intent", "value": "open"}],
            },
            {
                "token": [fcm_token(3)],
                "platform": 2,
                "message": "Hello, Android!",
                "collapse_key": "update",
                "delay_while_idle": true,
                "time_to_live": 10,
                "priority": "normal",
                "extend": [{"key": "url", "val": "https://y"}],
            },
            {
                "token": [apns_token(4)],
                "platform": 1,
                "message": "no expiry",
                "expiry": 0,
            }
        ]
    });
    let reply = front.post("/push", Some(SHOP_KEY), &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["message"], "ok");
    assert_eq!(reply.json()["job_ids"].as_array().unwrap().len(), 3);

    let jobs = front.submitted();
    // gaurun's expiry 0 means "not set".
    assert_eq!(jobs[2].apns.as_ref().unwrap().expiration, None);
    // gaurun always sends a badge, 0 when none is given.
    assert_eq!(apns_payload(&jobs[2])["aps"]["badge"], 0);
    assert_eq!(
        apns_payload(&jobs[0]),
        json!({
            "aps": {
                "alert": {"title": "Greeting", "subtitle": "greeting", "body": "Hello, iOS!"},
                "badge": 1,
                "category": "category1",
                "sound": "default",
            },
            "url": "https://x",
            "intent": "open",
        })
    );
    assert!(jobs[0].apns.as_ref().unwrap().expiration.is_some());
    // gaurun sends Android pushes as data messages.
    let message = &fcm_body(&jobs[1], &fcm_token(3))["message"];
    assert!(message.get("notification").is_none(), "{message}");
    assert_eq!(
        message["data"],
        json!({"message": "Hello, Android!", "url": "https://y"})
    );
    assert_eq!(
        message["android"],
        json!({"priority": "normal", "ttl": "10s", "collapse_key": "update"})
    );
}

#[tokio::test]
async fn compat_errors_name_the_entry_and_queue_nothing() {
    let front = Front::start(config("")).await;
    let reply = front
        .post(
            "/api/push",
            Some(SHOP_KEY),
            &json!({"notifications": [
                {"tokens": [apns_token(1)], "platform": 1, "message": "ok", "unknown_field": 1},
            ]}),
        )
        .await;
    let message = reply.assert_error(
        422,
        "invalid_argument",
        Some("notifications[0].unknown_field"),
    );
    assert_eq!(
        reply.json()["message"],
        message,
        "gorush clients read `message`"
    );
    for (field, value) in [
        ("api_key", json!("k")),
        ("dry_run", json!(true)),
        ("production", json!(true)),
        ("huawei_data", json!("x")),
        ("collapse_key", json!("ios gets collapse_id")),
    ] {
        let mut entry = json!({"tokens": [apns_token(1)], "platform": 1, "message": "x"});
        entry[field] = value;
        front
            .post(
                "/api/push",
                Some(SHOP_KEY),
                &json!({"notifications": [entry]}),
            )
            .await
            .assert_error(
                422,
                "invalid_argument",
                Some(&format!("notifications[0].{field}")),
            );
    }

    front
        .post(
            "/api/push",
            Some(SHOP_KEY),
            &json!({"notifications": [{"tokens": ["x"], "platform": 3, "message": "x"}]}),
        )
        .await
        .assert_error(422, "unknown_platform", Some("notifications[0].platform"));
    front
        .post(
            "/push",
            Some(SHOP_KEY),
            &json!({"notifications": [{"token": [fcm_token(1)], "platform": "android"}]}),
        )
        .await
        .assert_error(400, "bad_request", Some("notifications[0].platform"));
    front
        .post("/push", Some(SHOP_KEY), &json!({"notifications": []}))
        .await
        .assert_error(422, "no_tokens", Some("notifications"));
    front
        .post(
            "/push",
            Some(SHOP_KEY),
            &json!({"notifications": [{"token": [], "platform": 1, "message": "x"}]}),
        )
        .await
        .assert_error(422, "no_tokens", Some("notifications[0].token"));
    front
        .post(
            "/api/push",
            Some(SHOP_KEY),
            &json!({"notifications": [{"tokens": [fcm_token(1)], "platform": 2, "topic": "news"}]}),
        )
        .await
        .assert_error(422, "invalid_argument", Some("notifications[0].tokens"));
    front
        .post(
            "/api/push",
            Some(SHOP_KEY),
            &json!({"notifications": [{"platform": 2, "topic": "bad topic"}]}),
        )
        .await
        .assert_error(422, "invalid_argument", Some("notifications[0].topic"));
    assert!(front.submitted().is_empty());
}

#[tokio::test]
async fn malformed_tokens_are_reported_and_the_others_sent() {
    let front = Front::start(config("")).await;
    let reply = front
        .post(
            "/api/push",
            Some(SHOP_KEY),
            &json!({"notifications": [
                {"tokens": [apns_token(1), "secret bad", apns_token(2)], "platform": 1, "message": "ok"},
                {"tokens": ["bad token!"], "platform": 2, "message": "x"},
            ]}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let answer = reply.json();
    assert_eq!(answer["counts"], 2);
    assert_eq!(answer["job_ids"][1], serde_json::Value::Null);
    let logs = answer["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 2, "{answer}");
    assert_eq!(logs[0]["type"], "failed-push");
    assert_eq!(logs[0]["platform"], "ios");
    assert_eq!(logs[0]["field"], "notifications[0].tokens[1]");
    assert_eq!(logs[1]["field"], "notifications[1].tokens[0]");
    assert!(!reply.text().contains("secret"), "{}", reply.text());
    let jobs = front.submitted();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].apns_tokens.len(), 2);
    assert_eq!(jobs[0].rejected.count, 1);
    assert_eq!(
        jobs[0].rejected.tokens[0].field,
        "notifications[0].tokens[1]"
    );
}

/// Above 64 KiB a body's token arrays are read in place and settled within the body's
/// buffer (`tokens::parse_body`); the jobs must not tell the difference.
#[tokio::test]
async fn large_compatible_requests_keep_every_token_in_order() {
    let front = Front::start(config("")).await;
    let apns: Vec<String> = (0..1_200).map(apns_token).collect();
    let fcm: Vec<String> = (0..1_200).map(fcm_token).collect();
    let mut ios = apns.clone();
    ios.insert(7, "secret bad".into());
    let body = json!({"notifications": [
        {"tokens": fcm, "platform": 2, "message": "android"},
        {"tokens": [], "to": apns_token(5_000), "platform": 1, "message": "one"},
        {"tokens": ios, "platform": 1, "message": "ios"},
    ]});
    assert!(body.to_string().len() > 64 * 1024);
    let reply = front.post("/api/push", Some(SHOP_KEY), &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["counts"], 2_401);
    let jobs = front.submitted();
    assert_eq!(jobs.len(), 3);
    assert_eq!(jobs[0].fcm_tokens.iter().collect::<Vec<_>>(), fcm);
    assert_eq!(
        jobs[1].apns_tokens.iter().collect::<Vec<_>>(),
        [apns_token(5_000)]
    );
    assert_eq!(jobs[2].apns_tokens.iter().collect::<Vec<_>>(), apns);
    assert_eq!(
        jobs[2].rejected.tokens[0].field,
        "notifications[2].tokens[7]"
    );

    let body = json!({"notifications": [
        {"token": apns.clone(), "platform": 1, "message": "ios"},
        {"token": fcm.clone(), "platform": 2, "message": "android"},
    ]});
    let reply = front.post("/push", Some(SHOP_KEY), &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let jobs = front.submitted();
    assert_eq!(jobs.len(), 5);
    assert_eq!(jobs[3].apns_tokens.iter().collect::<Vec<_>>(), apns);
    assert_eq!(jobs[4].fcm_tokens.iter().collect::<Vec<_>>(), fcm);
}

#[tokio::test]
async fn fcm_topics_and_conditions_are_one_target_jobs() {
    let front = Front::start(config("")).await;
    let reply = front
        .post(
            "/api/push",
            Some(SHOP_KEY),
            &json!({"notifications": [
                {"to": "/topics/news", "platform": 2, "message": "to a topic"},
                {"condition": "'a' in topics && 'b' in topics", "platform": 2, "message": "c"},
                {"topic": "sports", "platform": 2, "message": "t", "content_available": true, "sound": "ding"},
            ]}),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let jobs = front.submitted();
    let topic = fcm_body(&jobs[0], "news");
    assert_eq!(topic["message"]["topic"], "news");
    assert!(topic["message"].get("token").is_none());
    let condition = fcm_body(&jobs[1], "'a' in topics && 'b' in topics");
    assert_eq!(
        condition["message"]["condition"],
        "'a' in topics && 'b' in topics"
    );
    let sports = fcm_body(&jobs[2], "sports");
    assert_eq!(
        sports["message"]["apns"],
        json!({"headers": {"apns-priority": "5"}, "payload": {"aps": {"sound": "ding", "content-available": 1}}})
    );
    assert_eq!(
        sports["message"]["android"]["notification"]["sound"],
        "ding"
    );
}

#[tokio::test]
async fn compat_endpoints_use_the_default_apps_key() {
    let front = Front::start(config("")).await;
    let body = json!({"notifications": [{"token": [fcm_token(1)], "platform": 2, "message": "x"}]});
    front
        .post("/push", None, &body)
        .await
        .assert_error(401, "unauthorized", None);
    front
        .post("/push", Some(NEWS_KEY), &body)
        .await
        .assert_error(403, "forbidden", None);

    let open = Front::start(config("compat_require_api_key = false")).await;
    let reply = open.post("/push", None, &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(open.submitted()[0].app, "shop");
}

#[tokio::test]
async fn compat_endpoints_are_off_without_a_default_app() {
    let mut config = config("");
    config.front.default_app = None;
    let front = Front::start(config).await;
    front
        .post(
            "/api/push",
            Some(SHOP_KEY),
            &json!({"notifications": [{"tokens": [fcm_token(1)], "platform": 2}]}),
        )
        .await
        .assert_error(404, "not_found", None);
}
