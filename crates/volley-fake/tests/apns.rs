//! The fake APNs seen by a raw HTTP/2 client over TLS.

mod common;

use common::*;
use http::StatusCode;
use volley_fake::{keys, FakeConfig};

fn config_with(key: &keys::ApnsKey) -> FakeConfig {
    let mut config = FakeConfig::apns();
    config.apns_jwt_public_key_pem = Some(key.public_pem.clone());
    config
}

#[tokio::test]
async fn a_200_is_headers_only_and_generates_an_upper_case_apns_id() {
    let key = keys::generate_apns_key();
    let server = start(config_with(&key));
    let jwt = apns_jwt(&key, now());
    let mut c = client(&server).await;
    let reply = send(
        &mut c,
        apns_request(&server, &apns_token("ab", 1), Some(&jwt))
            .body(())
            .unwrap(),
        PAYLOAD,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.headers_only, "a 200 must carry END_STREAM on HEADERS");
    assert!(reply.body.is_empty());
    let id = reply.header("apns-id").unwrap();
    assert_eq!(id.len(), 36);
    assert_eq!(id, id.to_ascii_uppercase());
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 4);
}

#[tokio::test]
async fn scripted_prefixes_answer_like_apns() {
    let key = keys::generate_apns_key();
    let server = start(config_with(&key));
    let jwt = apns_jwt(&key, now());
    let mut c = client(&server).await;
    let cases: &[(&str, u16, Option<&str>)] = &[
        ("badd", 400, Some("BadDeviceToken")),
        ("dead", 410, Some("Unregistered")),
        ("4030", 400, Some("DeviceTokenNotForTopic")),
        ("4290", 429, Some("TooManyRequests")),
        ("5000", 500, Some("InternalServerError")),
        ("5020", 502, None),
        ("5030", 503, Some("ServiceUnavailable")),
    ];
    for (prefix, status, reason) in cases {
        let request = apns_request(&server, &apns_token(prefix, 7), Some(&jwt))
            .header("apns-id", "123E4567-E89B-42D3-A456-426614174000")
            .body(())
            .unwrap();
        let reply = send(&mut c, request, PAYLOAD).await;
        assert_eq!(reply.status.as_u16(), *status, "{prefix}");
        assert_eq!(
            reply.header("apns-id"),
            Some("123E4567-E89B-42D3-A456-426614174000"),
            "{prefix}"
        );
        match reason {
            Some(reason) => {
                let json = reply.json();
                assert_eq!(json["reason"], *reason, "{prefix}");
                let fields = json.as_object().unwrap().len();
                if *prefix == "dead" {
                    assert!(json["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
                    assert_eq!(fields, 2);
                } else {
                    assert_eq!(fields, 1, "{prefix}: {json}");
                }
            }
            None => assert!(std::str::from_utf8(&reply.body).unwrap().contains("<html>")),
        }
        let retry_after = if matches!(*prefix, "5030") {
            Some("1")
        } else {
            None
        };
        assert_eq!(reply.header("retry-after"), retry_after, "{prefix}");
    }
    let stats = server.shutdown();
    assert_eq!(stats.requests, 7);
    assert_eq!(stats.delivered, 0);
    assert_eq!(stats.by_status.get(&400), Some(&2));
}

#[tokio::test]
async fn provider_token_checks() {
    let key = keys::generate_apns_key();
    let other = keys::generate_apns_key();
    let server = start(config_with(&key));
    let token = apns_token("ab", 2);
    let good = apns_jwt(&key, now());
    let forged = apns_jwt(&other, now());
    let expired = apns_jwt(&key, now() - 3700);
    let mut c = client(&server).await;
    let cases: &[(Option<&str>, u16, &str)] = &[
        (None, 403, "MissingProviderToken"),
        (Some(&forged), 403, "InvalidProviderToken"),
        (Some("not.a.jwt"), 403, "InvalidProviderToken"),
        (Some(&expired), 403, "ExpiredProviderToken"),
        (Some(&good), 200, ""),
        // The per-connection cache must not let a bad token ride on a good one.
        (Some(&forged), 403, "InvalidProviderToken"),
        (Some(&good), 200, ""),
    ];
    for (jwt, status, reason) in cases {
        let request = apns_request(&server, &token, *jwt).body(()).unwrap();
        let reply = send(&mut c, request, PAYLOAD).await;
        assert_eq!(reply.status.as_u16(), *status, "{reason}");
        if !reason.is_empty() {
            assert_eq!(reply.json()["reason"], *reason);
        }
    }
}

#[tokio::test]
async fn request_shape_checks() {
    let key = keys::generate_apns_key();
    let mut config = config_with(&key);
    config.apns_topic = Some("com.example.app".into());
    let server = start(config);
    let jwt = apns_jwt(&key, now());
    let token = apns_token("ab", 3);
    let mut c = client(&server).await;
    let big = vec![b'x'; 4097];
    let voip_ok = vec![b'x'; 5120];
    let voip_big = vec![b'x'; 5121];
    let base = || apns_request(&server, &token, Some(&jwt));
    let no_topic = || {
        http::Request::post(format!("{}/3/device/{token}", server.endpoint()))
            .header("authorization", format!("bearer {jwt}"))
    };
    let cases: Vec<(http::request::Builder, &[u8], u16, &str)> = vec![
        (no_topic(), PAYLOAD, 400, "MissingTopic"),
        (
            no_topic().header("apns-topic", "com.other"),
            PAYLOAD,
            400,
            "BadTopic",
        ),
        (base(), b"", 400, "PayloadEmpty"),
        (base(), &big, 413, "PayloadTooLarge"),
        (
            no_topic()
                .header("apns-topic", "com.example.app.voip")
                .header("apns-push-type", "voip"),
            &voip_big,
            413,
            "PayloadTooLarge",
        ),
        (
            apns_request(&server, "zz-not-hex", Some(&jwt)),
            PAYLOAD,
            400,
            "BadDeviceToken",
        ),
        (
            http::Request::get(format!("{}/3/device/{token}", server.endpoint()))
                .header("authorization", format!("bearer {jwt}")),
            b"",
            405,
            "MethodNotAllowed",
        ),
        (
            http::Request::post(format!("{}/4/device/{token}", server.endpoint())),
            PAYLOAD,
            404,
            "BadPath",
        ),
        (
            base().header("apns-id", "nope"),
            PAYLOAD,
            400,
            "BadMessageId",
        ),
        (
            base().header("apns-collapse-id", "c".repeat(65)),
            PAYLOAD,
            400,
            "BadCollapseId",
        ),
        // Apple's topic rule: a VoIP or Live Activity push needs its suffix.
        (
            no_topic()
                .header("apns-topic", "com.example.app")
                .header("apns-push-type", "liveactivity"),
            PAYLOAD,
            400,
            "DeviceTokenNotForTopic",
        ),
        (
            no_topic()
                .header("apns-topic", "com.example.app.voip")
                .header("apns-push-type", "alert"),
            PAYLOAD,
            400,
            "DeviceTokenNotForTopic",
        ),
        (
            no_topic()
                .header("apns-topic", "com.example.app")
                .header("apns-push-type", "shout"),
            PAYLOAD,
            400,
            "InvalidPushType",
        ),
    ];
    for (builder, body, status, reason) in cases {
        let reply = send(&mut c, builder.body(()).unwrap(), body).await;
        assert_eq!(reply.status.as_u16(), status, "{reason}");
        assert_eq!(reply.json()["reason"], reason);
    }
    // VoIP payloads may be up to 5120 bytes.
    let voip = http::Request::post(format!("{}/3/device/{token}", server.endpoint()))
        .header("authorization", format!("bearer {jwt}"))
        .header("apns-topic", "com.example.app.voip")
        .header("apns-push-type", "voip")
        .body(())
        .unwrap();
    assert_eq!(send(&mut c, voip, &voip_ok).await.status, StatusCode::OK);
}

#[tokio::test]
async fn counters_are_exact_for_a_concurrent_burst_and_the_record_lists_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("record.tsv");
    let mut config = FakeConfig::apns();
    config.record_path = Some(record.clone());
    let server = start(config);
    let jwt = apns_jwt(&keys::generate_apns_key(), now());
    let c = client(&server).await;
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        let mut c = c.clone();
        let request = apns_request(&server, &apns_token("ab", i % 5), Some(&jwt))
            .header("apns-collapse-id", format!("collapse-{i}"))
            .body(())
            .unwrap();
        tasks.push(tokio::spawn(
            async move { send(&mut c, request, PAYLOAD).await },
        ));
    }
    let mut ids = Vec::new();
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        ids.push(reply.header("apns-id").unwrap().to_string());
    }
    let failing = apns_request(&server, &apns_token("dead", 1), Some(&jwt))
        .body(())
        .unwrap();
    let mut c2 = c.clone();
    assert_eq!(send(&mut c2, failing, PAYLOAD).await.status.as_u16(), 410);

    let live = server.stats();
    assert_eq!(live.requests, 21);
    let stats = server.shutdown();
    assert_eq!(stats, live);
    assert_eq!(stats.delivered, 20);
    assert_eq!(stats.distinct_tokens, 5);
    assert_eq!(stats.duplicate_tokens, 15);
    assert_eq!(stats.by_status.get(&200), Some(&20));
    assert_eq!(stats.by_status.get(&410), Some(&1));
    assert_eq!(stats.connections, 1);

    let text = std::fs::read_to_string(&record).unwrap();
    let mut lines: Vec<Vec<String>> = text
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect();
    assert_eq!(lines.len(), 20);
    lines.sort();
    for line in &lines {
        assert_eq!(line.len(), 3);
        assert!(ids.contains(&line[1]));
        assert!(line[2].starts_with("collapse-"));
    }
    let tokens: std::collections::BTreeSet<_> = lines.iter().map(|l| l[0].clone()).collect();
    assert_eq!(tokens.len(), 5);
}

#[tokio::test]
async fn transient_error_rate_one_answers_every_request_503() {
    let mut config = FakeConfig::apns();
    config.transient_error_rate = 1.0;
    let server = start(config);
    let jwt = apns_jwt(&keys::generate_apns_key(), now());
    let mut c = client(&server).await;
    let request = apns_request(&server, &apns_token("ab", 1), Some(&jwt))
        .body(())
        .unwrap();
    let reply = send(&mut c, request, PAYLOAD).await;
    assert_eq!(reply.status.as_u16(), 503);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(reply.json()["reason"], "ServiceUnavailable");
}
