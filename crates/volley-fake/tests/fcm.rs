//! The fake FCM and its OAuth endpoint seen by a raw HTTP/2 client over TLS.

mod common;

use bytes::Bytes;
use common::*;
use h2::client::SendRequest;
use http::{Request, StatusCode};
use volley_fake::{keys, FakeConfig, FakeServer};

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

fn config() -> FakeConfig {
    let mut config = FakeConfig::fcm();
    config.fcm_project = Some("demo".into());
    config.fcm_oauth_public_key_pem = Some(keys::TEST_SERVICE_ACCOUNT_PUBLIC_KEY_PEM.into());
    config
}

/// A signed assertion, as a client would mint it from the service-account JSON.
fn assertion(server: &FakeServer, aud: &str, scope: &str) -> String {
    let account: serde_json::Value =
        serde_json::from_str(&keys::test_service_account(&server.token_uri(), "demo")).unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(
        account["private_key"].as_str().unwrap().as_bytes(),
    )
    .unwrap();
    let claims = serde_json::json!({
        "iss": account["client_email"],
        "scope": scope,
        "aud": aud,
        "iat": now(),
        "exp": now() + 3600,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &key,
    )
    .unwrap()
}

async fn post_token(c: &mut SendRequest<Bytes>, server: &FakeServer, assertion: &str) -> Reply {
    let body = format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
    );
    let request = Request::post(server.token_uri())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(())
        .unwrap();
    send(c, request, body.as_bytes()).await
}

async fn access_token(c: &mut SendRequest<Bytes>, server: &FakeServer) -> String {
    let reply = post_token(c, server, &assertion(server, &server.token_uri(), SCOPE)).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let json = reply.json();
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(json["expires_in"], 3600);
    json["access_token"].as_str().unwrap().to_string()
}

fn message(server: &FakeServer, project: &str, bearer: Option<&str>) -> Request<()> {
    let mut builder = Request::post(format!(
        "{}/v1/projects/{project}/messages:send",
        server.endpoint()
    ))
    .header("content-type", "application/json");
    if let Some(bearer) = bearer {
        builder = builder.header("authorization", format!("Bearer {bearer}"));
    }
    builder.body(()).unwrap()
}

fn body(token: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "message": {
            "token": token,
            "notification": {"title": "hi", "body": "there"},
            "android": {"collapse_key": "score"},
        }
    }))
    .unwrap()
}

#[tokio::test]
async fn oauth_flow_then_send() {
    let server = start(config());
    let mut c = client(&server).await;

    let reply = send(&mut c, message(&server, "demo", None), &body("tok-1")).await;
    assert_eq!(reply.status.as_u16(), 401);
    assert_eq!(reply.json()["error"]["status"], "UNAUTHENTICATED");
    let reply = send(
        &mut c,
        message(&server, "demo", Some("ya29.made-up")),
        &body("tok-1"),
    )
    .await;
    assert_eq!(reply.status.as_u16(), 401);

    let token = access_token(&mut c, &server).await;
    let reply = send(
        &mut c,
        message(&server, "demo", Some(&token)),
        &body("tok-1"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(!reply.headers_only, "an FCM 200 carries a body");
    let name = reply.json()["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("projects/demo/messages/"), "{name}");

    let reply = send(
        &mut c,
        message(&server, "other", Some(&token)),
        &body("tok-1"),
    )
    .await;
    assert_eq!(reply.status.as_u16(), 404);

    let stats = server.shutdown();
    assert_eq!(stats.oauth_tokens_issued, 1);
    assert_eq!(stats.delivered, 1);
    assert_eq!(stats.requests, 4);
}

#[tokio::test]
async fn bad_assertions_get_invalid_grant() {
    let server = start(config());
    let mut c = client(&server).await;
    let good = assertion(&server, &server.token_uri(), SCOPE);
    // Flip one character of the signature.
    let mut tampered = good.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let wrong_aud = assertion(&server, "https://oauth2.googleapis.com/token", SCOPE);
    let wrong_scope = assertion(
        &server,
        &server.token_uri(),
        "https://www.googleapis.com/auth/cloud-platform",
    );
    for (what, bad) in [
        ("signature", tampered),
        ("aud", wrong_aud),
        ("scope", wrong_scope),
        ("garbage", "x.y.z".into()),
    ] {
        let reply = post_token(&mut c, &server, &bad).await;
        assert_eq!(reply.status.as_u16(), 400, "{what}");
        assert_eq!(reply.json()["error"], "invalid_grant", "{what}");
    }
    assert_eq!(server.shutdown().oauth_tokens_issued, 0);
}

#[tokio::test]
async fn scripted_prefixes_answer_like_fcm() {
    let server = start(config());
    let mut c = client(&server).await;
    let token = access_token(&mut c, &server).await;
    let cases: &[(&str, u16, &str, Option<&str>)] = &[
        ("badd", 400, "INVALID_ARGUMENT", Some("INVALID_ARGUMENT")),
        ("dead", 404, "NOT_FOUND", Some("UNREGISTERED")),
        ("4030", 403, "PERMISSION_DENIED", Some("SENDER_ID_MISMATCH")),
        ("4290", 429, "RESOURCE_EXHAUSTED", Some("QUOTA_EXCEEDED")),
        ("5000", 500, "INTERNAL", Some("INTERNAL")),
        ("5020", 502, "", None),
        ("5030", 503, "UNAVAILABLE", Some("UNAVAILABLE")),
    ];
    for (prefix, status, status_name, error_code) in cases {
        let reply = send(
            &mut c,
            message(&server, "demo", Some(&token)),
            &body(&format!("{prefix}-token")),
        )
        .await;
        assert_eq!(reply.status.as_u16(), *status, "{prefix}");
        match error_code {
            Some(code) => {
                let error = &reply.json()["error"];
                assert_eq!(error["code"], *status, "{prefix}");
                assert_eq!(error["status"], *status_name, "{prefix}");
                let details = error["details"].as_array().unwrap();
                let fcm = details
                    .iter()
                    .find(|d| d["@type"] == "type.googleapis.com/google.firebase.fcm.v1.FcmError")
                    .unwrap();
                assert_eq!(fcm["errorCode"], *code, "{prefix}");
                if *prefix == "badd" {
                    assert!(error["message"].as_str().unwrap().contains("message.token"));
                }
            }
            None => assert!(std::str::from_utf8(&reply.body).unwrap().contains("<html>")),
        }
        let retry_after = matches!(*prefix, "4290" | "5030").then_some("1");
        assert_eq!(reply.header("retry-after"), retry_after, "{prefix}");
    }
    let stats = server.shutdown();
    assert_eq!(stats.requests, 7);
    assert_eq!(stats.delivered, 0);
}

#[tokio::test]
async fn record_names_the_collapse_key() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("fcm.tsv");
    let mut config = config();
    config.record_path = Some(record.clone());
    let server = start(config);
    let mut c = client(&server).await;
    let token = access_token(&mut c, &server).await;
    let reply = send(
        &mut c,
        message(&server, "demo", Some(&token)),
        &body("tok-9"),
    )
    .await;
    let name = reply.json()["name"].as_str().unwrap().to_string();
    let apns_shaped = serde_json::to_vec(&serde_json::json!({
        "message": {"token": "tok-10", "apns": {"headers": {"apns-collapse-id": "c10"}}}
    }))
    .unwrap();
    assert_eq!(
        send(&mut c, message(&server, "demo", Some(&token)), &apns_shaped)
            .await
            .status,
        StatusCode::OK
    );
    server.shutdown();
    let text = std::fs::read_to_string(record).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let id = name.rsplit('/').next().unwrap();
    assert_eq!(lines[0], format!("tok-9\t{id}\tscore"));
    assert!(
        lines[1].starts_with("tok-10\t") && lines[1].ends_with("\tc10"),
        "{}",
        lines[1]
    );
}

#[tokio::test]
async fn transient_errors_are_unavailable_with_retry_after() {
    let mut config = config();
    config.transient_error_rate = 1.0;
    let server = start(config);
    let mut c = client(&server).await;
    let token = access_token(&mut c, &server).await;
    let reply = send(
        &mut c,
        message(&server, "demo", Some(&token)),
        &body("tok-1"),
    )
    .await;
    assert_eq!(reply.status.as_u16(), 503);
    assert_eq!(reply.header("retry-after"), Some("1"));
    let error = &reply.json()["error"];
    assert_eq!(error["status"], "UNAVAILABLE");
    assert_eq!(error["details"][0]["errorCode"], "UNAVAILABLE");
    let stats = server.shutdown();
    assert_eq!(stats.by_status.get(&503), Some(&1));
    assert_eq!(stats.delivered, 0);
}

#[tokio::test]
async fn expired_access_tokens_are_refused() {
    let mut config = config();
    config.fcm_access_token_ttl = std::time::Duration::ZERO;
    let server = start(config);
    let mut c = client(&server).await;
    let reply = post_token(
        &mut c,
        &server,
        &assertion(&server, &server.token_uri(), SCOPE),
    )
    .await;
    let token = reply.json()["access_token"].as_str().unwrap().to_string();
    let reply = send(
        &mut c,
        message(&server, "demo", Some(&token)),
        &body("tok-1"),
    )
    .await;
    assert_eq!(reply.status.as_u16(), 401);
}

#[tokio::test]
async fn capture_keeps_whole_requests_without_credentials_and_the_record_is_written_as_it_goes() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("fcm.tsv");
    let mut config = config();
    config.capture = 1;
    config.record_path = Some(record.clone());
    let stats_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = FakeServer::start_with_stats(
        config,
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        Some(stats_listener),
    )
    .unwrap();
    let mut c = client(&server).await;
    let token = access_token(&mut c, &server).await;
    for device in ["tok-1", "tok-2"] {
        let reply = send(
            &mut c,
            message(&server, "demo", Some(&token)),
            &body(device),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
    }

    // Only the first request is kept (capture = 1), whole, with the bearer token reduced to
    // its scheme.
    let captured = server.captured();
    assert_eq!(captured.len(), 1);
    let first = &captured[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, "/v1/projects/demo/messages:send");
    assert_eq!(first.status, 200);
    assert_eq!(first.headers["authorization"], "bearer");
    assert_eq!(
        first.body,
        serde_json::from_slice::<serde_json::Value>(&body("tok-1")).unwrap()
    );
    assert_eq!(first.target(), Some("tok-1"));
    assert!(server.captured_for("tok-2").is_none());

    // The same list over plain HTTP/1.1, as an independent client would read it.
    let addr = server.stats_addr().unwrap();
    let listed = http1_get(addr, "/requests").await;
    let listed: Vec<volley_fake::Captured> = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed, captured);

    // Both deliveries are in the record while the server still runs.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&record).unwrap_or_default();
        if text.lines().count() == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "record: {text:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.shutdown();
}

/// The body of a plain HTTP/1.1 GET.
async fn http1_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: fake\r\nconnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}
