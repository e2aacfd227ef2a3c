//! A Live Activity, a VoIP push and an FCM topic message end to end through a whole cluster
//! (front, controller, agent) against the fakes, with the default configuration: the fake
//! APNs enforces Apple's topic rule (the bundle id plus the push type's suffix), so a missing
//! suffix would fail these jobs with `DeviceTokenNotForTopic`.

use std::time::Duration;

use serde_json::{json, Value};
use volley_testkit::cluster::{Cluster, ClusterOptions};
use volley_testkit::jobs::{assert_balanced, count, submit, wait_for_job};
use volley_testkit::tokens::apns_tokens;

const LIMIT: Duration = Duration::from_secs(60);

async fn delivered(cluster: &Cluster, body: Value) -> Value {
    let client = cluster.client();
    let id = submit(&client, body.to_string()).await.unwrap();
    let status = wait_for_job(&client, &id, LIMIT).await.unwrap();
    assert_balanced(&status);
    assert_eq!(count(&status, "failed"), 0, "{status}");
    assert_eq!(count(&status, "invalid"), 0, "{status}");
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_activity_voip_and_fcm_topic_pushes_are_delivered() {
    let cluster = Cluster::start(ClusterOptions {
        agents: 1,
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let before = cluster.fake_apns.stats().delivered;

    let live = delivered(
        &cluster,
        json!({
            "push_type": "liveactivity",
            "targets": {"apns": apns_tokens("1a", 3)},
            "apns": {"aps": {
                "timestamp": 1_700_000_000,
                "event": "update",
                "content-state": {"score": "2-1"},
            }},
        }),
    )
    .await;
    assert_eq!(count(&live, "delivered"), 3, "{live}");

    let voip = delivered(
        &cluster,
        json!({"push_type": "voip", "data": {"call": "42"}, "targets": {"apns": apns_tokens("0c", 2)}}),
    )
    .await;
    assert_eq!(count(&voip, "delivered"), 2, "{voip}");
    assert_eq!(cluster.fake_apns.stats().delivered, before + 5);

    // The same push with the bare bundle id as its topic is refused by APNs for the topic,
    // and the token is not called invalid.
    let client = cluster.client();
    let body = json!({
        "push_type": "voip",
        "apns_topic": volley_testkit::cluster::TOPIC,
        "data": {"call": "43"},
        "targets": {"apns": apns_tokens("0d", 1)},
    });
    let id = submit(&client, body.to_string()).await.unwrap();
    let wrong = wait_for_job(&client, &id, LIMIT).await.unwrap();
    assert_eq!(count(&wrong, "failed"), 1, "{wrong}");
    assert_eq!(count(&wrong, "invalid"), 0, "{wrong}");
    assert_eq!(
        wrong["failures"][0]["reason"], "DeviceTokenNotForTopic",
        "{wrong}"
    );
    assert_eq!(wrong["failures"][0]["class"], "bad_request", "{wrong}");

    let fcm_before = cluster.fake_fcm.stats().delivered;
    let topic = delivered(
        &cluster,
        json!({"title": "Goal!", "topic": "/topics/scores"}),
    )
    .await;
    assert_eq!(count(&topic, "accepted"), 1, "{topic}");
    assert_eq!(count(&topic, "delivered"), 1, "{topic}");
    assert_eq!(cluster.fake_fcm.stats().delivered, fcm_before + 1);
}
