//! A new user's first pushes through `volley standalone` as a real process, against the fakes
//! as real processes that keep every request whole: a Live Activity, a VoIP push and an FCM
//! topic message. The fake APNs enforces Apple's topic rule (bundle id plus the push type's
//! suffix), so a missing suffix would fail these jobs.

use serde_json::{json, Value};
use volley_testkit::jobs::{finished, wait_job};
use volley_testkit::procs::ProcCluster;
use volley_testkit::tokens::{apns_token, fcm_token};

const BIN: &str = env!("CARGO_BIN_EXE_volley");

async fn delivered(cluster: &ProcCluster, body: Value) -> Value {
    let response = cluster
        .client()
        .post("/v1/apps/shop/notifications", body.to_string())
        .await
        .unwrap();
    assert_eq!(response.status.as_u16(), 202, "{}", response.body);
    let id = response.body["id"].as_str().unwrap().to_owned();
    let status = wait_job(cluster, &id, "the job to finish", finished).await;
    assert_eq!(status["delivered"], status["accepted"], "{status}");
    assert_eq!(status["failed"], 0, "{status}");
    status
}

/// The one captured request whose path or message names `target`.
fn request_for<'a>(requests: &'a [Value], target: &str) -> &'a Value {
    let matching: Vec<&Value> = requests
        .iter()
        .filter(|r| {
            r["path"].as_str().is_some_and(|p| p.ends_with(target))
                || r["body"]["message"]["topic"] == target
                || r["body"]["message"]["token"] == target
        })
        .collect();
    assert_eq!(matching.len(), 1, "requests for {target}: {requests:?}");
    matching[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_activity_voip_and_fcm_topic_through_volley_standalone() {
    let cluster = ProcCluster::standalone(BIN, &["--capture", "100"]);
    let live = apns_token("11ae", 0);
    let voip = apns_token("0c0c", 0);
    let device = fcm_token("5a5a", 0);

    delivered(
        &cluster,
        json!({
            "push_type": "liveactivity",
            "apns": {"aps": {"timestamp": 1_700_000_000, "event": "update", "content-state": {"score": "2-1"}}},
            "targets": {"apns": [live]},
        }),
    )
    .await;
    delivered(
        &cluster,
        json!({"push_type": "voip", "data": {"call": "42"}, "targets": {"apns": [voip]}}),
    )
    .await;
    delivered(
        &cluster,
        json!({"title": "Goal!", "topic": "/topics/scores"}),
    )
    .await;
    delivered(
        &cluster,
        json!({"title": "Hi", "targets": {"fcm": [device]}}),
    )
    .await;

    let (apns, fcm) = cluster.fake_requests().await;
    let request = request_for(&apns, &live);
    assert_eq!(request["headers"]["apns-push-type"], "liveactivity");
    assert_eq!(
        request["headers"]["apns-topic"],
        "com.example.shop.push-type.liveactivity"
    );
    assert_eq!(
        request["body"],
        json!({"aps": {"timestamp": 1_700_000_000, "event": "update", "content-state": {"score": "2-1"}}})
    );
    let request = request_for(&apns, &voip);
    assert_eq!(request["headers"]["apns-push-type"], "voip");
    assert_eq!(request["headers"]["apns-topic"], "com.example.shop.voip");
    assert_eq!(request["body"], json!({"aps": {}, "call": "42"}));

    let request = request_for(&fcm, "scores");
    assert_eq!(
        request["body"],
        json!({"message": {"topic": "scores", "notification": {"title": "Goal!"}}})
    );
    let request = request_for(&fcm, &device);
    assert_eq!(
        request["headers"]["authorization"], "bearer",
        "no credential kept"
    );
    // Every process stops cleanly on SIGTERM (exit status 0).
    cluster.stop();
}
