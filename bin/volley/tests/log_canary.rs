//! The log canary: every role of a real cluster logs at `trace` (tarpc included) while it
//! takes a job with valid, dead and malformed tokens, Web Push subscriptions the agent's SSRF
//! guard refuses, a request with a wrong API key and one with an idempotency key; no device
//! token, subscription key or endpoint path, API key, provider JWT, VAPID key, OAuth access
//! token, private-key line or payload text may appear in any role's log.

use serde_json::json;
use volley_testkit::http::FrontClient;
use volley_testkit::jobs::{finished, wait_job};
use volley_testkit::procs::{ProcCluster, API_KEY};
use volley_testkit::tokens::{apns_token, fcm_token};

const BIN: &str = env!("CARGO_BIN_EXE_volley");
const PAYLOAD: &str = "canary payload text 7f3a";
const DATA: &str = "canary data value 91bc";
const WRONG_KEY: &str = "vk_wrong_canary_key_5e5e5e5e";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_token_or_payload_reaches_any_log_at_trace() {
    let cluster = ProcCluster::start_logging(BIN, 1, &[], "trace,tarpc=trace");
    let valid_apns = apns_token("ca7a", 1);
    let dead_apns = apns_token("dead", 7);
    let valid_fcm = fcm_token("ca7afcm0", 1);
    let dead_fcm = fcm_token("deadfcm0", 2);
    let malformed = ["not-a-hex-token-canary", "has space canary token"];
    // Subscriptions whose endpoints point inside the network: refused before any connection.
    let subscription = |endpoint: &str| {
        let (_, public) = volley_webpush::ece::generate_keypair();
        let p256dh = base64_url(&public);
        let auth = base64_url(&rand_bytes());
        (endpoint.to_owned(), p256dh, auth)
    };
    let webpush = [
        subscription("https://127.0.0.1/push/canary-path-loopback"),
        subscription("https://10.9.8.7/push/canary-path-private"),
    ];

    let client = cluster.client();
    let body = json!({
        "title": PAYLOAD,
        "body": PAYLOAD,
        "data": {"secret": DATA},
        "targets": {
            "apns": [valid_apns, dead_apns, malformed[0]],
            "fcm": [valid_fcm, dead_fcm, malformed[1]],
            "webpush": webpush.iter().map(|(endpoint, p256dh, auth)| json!({
                "endpoint": endpoint, "keys": {"p256dh": p256dh, "auth": auth},
            })).collect::<Vec<_>>(),
        },
    });
    let response = client
        .request_with(
            http::Method::POST,
            "/v1/apps/shop/notifications",
            Some(body.to_string().into()),
            &[("Idempotency-Key", "canary-idempotency-key-1")],
        )
        .await
        .unwrap();
    assert_eq!(response.status.as_u16(), 202, "{}", response.body);
    let id = response.body["id"].as_str().unwrap().to_owned();
    let status = wait_job(&cluster, &id, "the job to finish", finished).await;
    assert_eq!(status["delivered"], 2, "{status}");
    assert_eq!(status["invalid"], 2, "{status}");
    assert_eq!(
        status["failed"], 2,
        "the guard refused both endpoints: {status}"
    );

    let intruder = FrontClient::new(cluster.front_url.clone(), Some(WRONG_KEY.to_owned()));
    let refused = intruder
        .post("/v1/apps/shop/notifications", body.to_string())
        .await
        .unwrap();
    assert_eq!(refused.status.as_u16(), 401, "{}", refused.body);

    // The key material on disk: every line of the APNs key and of the service account's key.
    let mut secrets: Vec<String> = vec![
        API_KEY.to_owned(),
        WRONG_KEY.to_owned(),
        PAYLOAD.to_owned(),
        DATA.to_owned(),
        valid_apns,
        dead_apns,
        valid_fcm,
        dead_fcm,
        "PRIVATE KEY".to_owned(),
        // Every JWT (APNs provider token, OAuth assertion) starts with a base64 `{"`.
        "eyJ".to_owned(),
        // The fake's OAuth access tokens.
        "ya29.".to_owned(),
    ];
    secrets.extend(malformed.iter().map(|t| (*t).to_owned()));
    secrets.push("canary-path".to_owned());
    for (_, p256dh, auth) in &webpush {
        secrets.push(p256dh.clone());
        secrets.push(auth.clone());
    }
    let config = std::fs::read_to_string(cluster.dir.path().join("volley.toml")).unwrap();
    let vapid = config
        .lines()
        .find_map(|line| line.strip_prefix("vapid_private_key = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("the cluster's app has a VAPID key");
    secrets.push(vapid.to_owned());
    let apns_key = std::fs::read_to_string(cluster.dir.path().join("AuthKey.p8")).unwrap();
    let account: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cluster.dir.path().join("service-account.json")).unwrap(),
    )
    .unwrap();
    let account_key = account["private_key"].as_str().unwrap().to_owned();
    secrets.extend(
        apns_key
            .lines()
            .chain(account_key.lines())
            .filter(|line| !line.starts_with("-----") && line.len() >= 16)
            .map(str::to_owned),
    );

    let mut total = 0;
    for role in ["front-0", "controller", "agent-0"] {
        let lines = cluster.proc(role).lines.lock().unwrap().clone();
        total += lines.len();
        for line in &lines {
            for secret in &secrets {
                assert!(
                    !line.contains(secret.as_str()),
                    "{role} logged {secret:?}: {line}"
                );
            }
        }
    }
    // At trace the roles said plenty: the canary did look at real logs.
    assert!(total > 100, "only {total} lines at trace");
    cluster.stop();
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn rand_bytes() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    rand::Rng::fill(&mut rand::thread_rng(), &mut bytes[..]);
    bytes
}
