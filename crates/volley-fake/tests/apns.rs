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
