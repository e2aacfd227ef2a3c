//! `DELETE /v1/jobs/{id}` on a running broadcast, end to end: a cluster whose fake APNs answers
//! slowly (injected latency), so that the broadcast is still running when it is cancelled.
//! The answer says the state reached (`cancelling` while chunks out with the agent finish),
//! only those chunks are sent afterwards, the job ends `cancelled` with balanced counts, and the
//! provider saw exactly what the job counts as sent.

use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use volley_fake::{FakeConfig, Latency};
use volley_testkit::cluster::{Cluster, ClusterOptions};
use volley_testkit::jobs::{assert_balanced, count, submit, wait_for_job};
use volley_testkit::tokens::apns_tokens;
use volley_testkit::wait::wait_until;

const LIMIT: Duration = Duration::from_secs(60);
const TOKENS: usize = 2000;
const CHUNK: u64 = 100;
const WINDOW: u64 = 2;

fn sent(status: &Value) -> u64 {
    count(status, "delivered") + count(status, "invalid") + count(status, "failed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_broadcast_sends_only_the_chunks_already_out() {
    let cluster = Cluster::start(ClusterOptions {
        agents: 1,
        fake_apns: FakeConfig {
            latency: Latency::Fixed(Duration::from_millis(50)),
            ..FakeConfig::apns()
        },
        tweak: |config| {
            config.controller.chunk_size = CHUNK as usize;
            // Two chunks out at once, ten requests in flight each: a chunk takes about half
            // a second and the whole broadcast about five.
            config.agent.window = WINDOW as u32;
            config.agent.concurrency = 20;
        },
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let client = cluster.client();
    let body = json!({"title": "sale", "targets": {"apns": apns_tokens("ca", TOKENS)}});
    let id = submit(&client, body.to_string()).await.unwrap();
    let path = format!("/v1/jobs/{id}");
    wait_until(LIMIT, "the broadcast to be under way", || async {
        let status = client.get(&path).await.unwrap().body;
        count(&status, "delivered") >= 50
    })
    .await
    .unwrap();

    let answer = client.request(Method::DELETE, &path, None).await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = answer.body;
    let pending = count(&answer, "pending");
    // Whatever was not out with the agent is cancelled at once: at most its window's chunks
    // are left, and the job says whether any is.
    assert!(pending <= WINDOW * CHUNK, "{answer}");
    match answer["state"].as_str() {
        Some("cancelling") => assert!(pending > 0, "{answer}"),
        Some("cancelled") => assert_eq!(pending, 0, "{answer}"),
        _ => panic!("a cancelled broadcast answers cancelling or cancelled: {answer}"),
    }
    assert!(count(&answer, "cancelled") > 0, "{answer}");

    let last = wait_for_job(&client, &id, LIMIT).await.unwrap();
    assert_eq!(last["state"], "cancelled", "{last}");
    assert_balanced(&last);
    // No chunk started after the cancel: only the tokens pending then were sent since.
    assert!(sent(&last) <= sent(&answer) + pending, "{answer}\n{last}");
    assert!(count(&last, "cancelled") >= count(&answer, "cancelled"));
    assert!(
        sent(&last) < TOKENS as u64,
        "the broadcast was cut short: {last}"
    );
    // The provider saw exactly what the job counts as sent, and nothing comes after its end.
    let (apns, _) = cluster.shutdown().unwrap();
    assert_eq!(apns.delivered, count(&last, "delivered"), "{last}");
    assert_eq!(apns.requests, sent(&last), "{last}");
}
