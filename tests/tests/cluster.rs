//! End-to-end tests of an in-process cluster: front, controller and agents over real tarpc on
//! TCP, delivering over real HTTP/2 and TLS to the fake APNs and FCM.

use std::time::Duration;

use serde_json::json;
use volley_fake::{FakeConfig, FakeServer, Latency};
use volley_testkit::cluster::{Cluster, ClusterOptions};
use volley_testkit::jobs::{assert_balanced, count, submit, wait_for_job};
use volley_testkit::tokens::{apns_tokens, fcm_tokens};

const JOB_LIMIT: Duration = Duration::from_secs(120);

async fn wait_ids(cluster: &Cluster, ids: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let mut statuses = Vec::new();
    for id in ids {
        let status = wait_for_job(&cluster.client(), id.as_str().unwrap(), JOB_LIMIT)
            .await
            .unwrap();
        assert_balanced(&status);
        statuses.push(status);
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_gorush_and_gaurun_requests_arrive_exactly_once() {
    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    let client = cluster.client();

    let native = json!({
        "title": "Hello",
        "body": "from the native API",
        "badge": 3,
        "data": {"order": 42},
        "targets": {"apns": apns_tokens("a1a1a1a1", 40), "fcm": fcm_tokens("native", 40)},
    });
    let id = submit(&client, native.to_string()).await.unwrap();
    let status = wait_for_job(&client, &id, JOB_LIMIT).await.unwrap();
    assert_balanced(&status);
    assert_eq!(count(&status, "delivered"), 80, "{status}");

    let gorush = json!({"notifications": [
        {"tokens": apns_tokens("b2b2b2b2", 10), "platform": 1, "message": "hi from gorush", "badge": 1},
        {"tokens": fcm_tokens("gorush", 10), "platform": 2, "message": "hi from gorush", "title": "t"},
    ]});
    let response = client.post("/api/push", gorush.to_string()).await.unwrap();
    assert_eq!(response.status.as_u16(), 200, "{}", response.body);
    assert_eq!(response.body["success"], "ok", "{}", response.body);
    assert_eq!(response.body["counts"], 20, "{}", response.body);
    let ids = response.body["job_ids"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(ids.len(), 2, "{}", response.body);
    let statuses = wait_ids(&cluster, &ids).await;
    assert_eq!(
        statuses.iter().map(|s| count(s, "delivered")).sum::<u64>(),
        20
    );

    let gaurun = json!({"notifications": [
        {"token": apns_tokens("c3c3c3c3", 5), "platform": 1, "message": "hi from gaurun"},
        {"token": fcm_tokens("gaurun", 5), "platform": 2, "message": "hi from gaurun"},
    ]});
    let response = client.post("/push", gaurun.to_string()).await.unwrap();
    assert_eq!(response.status.as_u16(), 200, "{}", response.body);
    assert_eq!(response.body["message"], "ok", "{}", response.body);
    let ids = response.body["job_ids"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let statuses = wait_ids(&cluster, &ids).await;
    assert_eq!(
        statuses.iter().map(|s| count(s, "delivered")).sum::<u64>(),
        10
    );

    let (apns, fcm) = cluster.shutdown().unwrap();
    assert_eq!(apns.distinct_tokens, 40 + 10 + 5);
    assert_eq!(fcm.distinct_tokens, 40 + 10 + 5);
    assert_eq!(apns.duplicate_tokens + fcm.duplicate_tokens, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200k_broadcast_arrives_once_per_token_and_reports_invalid_tokens() {
    let cluster = Cluster::start(ClusterOptions {
        agents: 2,
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let client = cluster.client();
    let mut apns = apns_tokens("a7a7a7a7", 100_000);
    let mut fcm = fcm_tokens("broadcast", 100_000);
    // The fakes answer 410 Unregistered / 404 UNREGISTERED to tokens starting with `dead`.
    apns.extend(apns_tokens("deaddead", 7));
    fcm.extend(fcm_tokens("deaddead", 5));
    let body = json!({"title": "Big", "body": "broadcast", "targets": {"apns": apns, "fcm": fcm}});
    let id = submit(&client, body.to_string()).await.unwrap();
    let status = wait_for_job(&client, &id, JOB_LIMIT).await.unwrap();
    assert_balanced(&status);
    assert_eq!(count(&status, "accepted"), 200_012);
    assert_eq!(
        count(&status, "delivered"),
        200_000,
        "{}",
        status["failures"]
    );
    assert_eq!(count(&status, "invalid"), 12);
    let invalid = status["invalid_tokens"].as_array().unwrap();
    assert_eq!(invalid.len(), 12);
    assert!(invalid
        .iter()
        .all(|t| t["token"].as_str().unwrap().starts_with("deaddead")));
    assert!(invalid.iter().any(|t| t["platform"] == "apns"
        && t["reason"] == "Unregistered"
        && (t["timestamp"].is_u64() || t["timestamp_ms"].is_u64())));
    assert!(invalid
        .iter()
        .any(|t| t["platform"] == "fcm" && t["reason"] == "UNREGISTERED"));

    let (apns, fcm) = cluster.shutdown().unwrap();
    assert_eq!(apns.distinct_tokens, 100_000);
    assert_eq!(fcm.distinct_tokens, 100_000);
    assert_eq!(apns.duplicate_tokens + fcm.duplicate_tokens, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_agent_takes_fewer_chunks() {
    let mut cluster = Cluster::start(ClusterOptions {
        agents: 1,
        tweak: |config| {
            config.controller.chunk_size = 100;
            config.agent.window = 2;
        },
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    // The second agent's APNs is slow: 150 ms per request, far slower than the fast path
    // even on a loaded machine.
    let slow = FakeServer::start(
        FakeConfig {
            latency: Latency::Fixed(Duration::from_millis(150)),
            ..FakeConfig::apns()
        },
        std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
    )
    .unwrap();
    let endpoint = slow.endpoint();
    let ca = slow.ca_pem_path().to_path_buf();
    cluster
        .add_agent(move |config| {
            let apns = config.apps[0].apns.as_mut().unwrap();
            apns.endpoint = endpoint;
            apns.ca_file = Some(ca);
        })
        .unwrap();
    cluster.wait_for_agents(2).await.unwrap();

    let body = json!({"title": "t", "targets": {"apns": apns_tokens("5105105a", 20_000)}});
    let id = submit(&cluster.client(), body.to_string()).await.unwrap();
    let status = wait_for_job(&cluster.client(), &id, JOB_LIMIT)
        .await
        .unwrap();
    assert_balanced(&status);
    assert_eq!(count(&status, "delivered"), 20_000);

    let controller = cluster.controller_client().await.unwrap();
    let stats = controller
        .stats(tarpc::context::current())
        .await
        .unwrap()
        .unwrap();
    let fast = stats.agents.iter().find(|a| a.name == "agent-0").unwrap();
    let slow_agent = stats.agents.iter().find(|a| a.name == "agent-1").unwrap();
    assert_eq!(fast.chunks_done + slow_agent.chunks_done, 200);
    assert!(
        slow_agent.chunks_done * 2 < fast.chunks_done,
        "slow agent took {} chunks, fast agent {}",
        slow_agent.chunks_done,
        fast.chunks_done
    );
    let slow_stats = slow.shutdown();
    let (apns, _) = cluster.shutdown().unwrap();
    assert_eq!(apns.distinct_tokens + slow_stats.distinct_tokens, 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_dies_mid_job_loses_nothing() {
    let mut cluster = Cluster::start(ClusterOptions {
        agents: 3,
        fake_apns: FakeConfig {
            latency: Latency::Fixed(Duration::from_millis(2)),
            ..FakeConfig::apns()
        },
        tweak: |config| {
            config.controller.chunk_size = 500;
        },
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let client = cluster.client();
    let body = json!({"title": "t", "targets": {"apns": apns_tokens("d1ed1ed1", 60_000)}});
    let id = submit(&client, body.to_string()).await.unwrap();
    // Kill an agent once the job is well under way.
    volley_testkit::wait::wait_until(JOB_LIMIT, "a fifth of the job delivered", || {
        let client = client.clone();
        let path = format!("/v1/jobs/{id}");
        async move {
            client
                .get(&path)
                .await
                .map(|r| count(&r.body, "delivered") >= 12_000)
                .unwrap_or(false)
        }
    })
    .await
    .unwrap();
    cluster.kill_agent(0).unwrap();
    let status = wait_for_job(&client, &id, JOB_LIMIT).await.unwrap();
    assert_balanced(&status);
    assert_eq!(count(&status, "delivered"), 60_000, "{status}");
    let (apns, _) = cluster.shutdown().unwrap();
    assert_eq!(apns.distinct_tokens, 60_000);
    assert!(
        apns.duplicate_tokens <= count(&status, "possible_duplicates"),
        "{} duplicates at the fake, {} counted",
        apns.duplicate_tokens,
        count(&status, "possible_duplicates")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_precise_errors() {
    let cluster = Cluster::start(ClusterOptions {
        agents: 1,
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let client = cluster.client();
    let anonymous = volley_testkit::http::FrontClient::new(cluster.front_url.clone(), None);

    let response = anonymous
        .post("/v1/apps/demo/notifications", r#"{"targets":{"apns":[]}}"#)
        .await
        .unwrap();
    assert_eq!(response.status.as_u16(), 401);

    let response = client
        .post("/v1/apps/demo/notifications", "{not json")
        .await
        .unwrap();
    assert_eq!(response.status.as_u16(), 400, "{}", response.body);

    let response = client
        .post(
            "/v1/apps/demo/notifications",
            json!({"title": "t", "targets": {"apns": ["not-a-hex-token"]}}).to_string(),
        )
        .await
        .unwrap();
    assert!(response.status.is_client_error(), "{}", response.body);
    let text = response.body.to_string();
    assert!(text.contains("targets.apns[0]"), "{text}");
    assert!(
        !text.contains("not-a-hex-token"),
        "the token leaked: {text}"
    );

    let response = client
        .post(
            "/api/push",
            json!({"notifications": [{"tokens": ["x"], "platform": 9, "message": "m"}]})
                .to_string(),
        )
        .await
        .unwrap();
    assert!(response.status.is_client_error(), "{}", response.body);

    let response = client
        .post(
            "/v1/apps/demo/notifications",
            json!({"title": "t", "collapse_id": "x".repeat(65), "targets": {"apns": apns_tokens("abcdabcd", 1)}}).to_string(),
        )
        .await
        .unwrap();
    assert!(response.status.is_client_error(), "{}", response.body);
    assert!(
        response.body.to_string().contains("collapse"),
        "{}",
        response.body
    );
    cluster.shutdown().unwrap();
}

/// One app whose APNs sends are paced at 20/s, one agent with one worker, leases of 1 s
/// renewed every 200 ms.
fn slow_single_notifications(config: &mut volley_config::Config) {
    config.controller.lease_time = Duration::from_secs(1);
    config.agent.heartbeat_interval = Duration::from_millis(200);
    config.agent.window = 1;
    if let Some(apns) = config.apps[0].apns.as_mut() {
        apns.rate_limit_per_second = Some(20);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deliver_call_longer_than_a_lease_keeps_the_leases_of_all_its_chunks() {
    let cluster = Cluster::start(ClusterOptions {
        agents: 1,
        tweak: slow_single_notifications,
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let client = cluster.client();
    // 60 single-notification jobs at once: they queue behind the one worker and go out in
    // calls that take seconds at 20 sends/s, longer than a lease, while the heartbeats renew
    // every chunk of the call (the finished ones and those still waiting their turn too).
    let tokens = apns_tokens("d4d4d4d4", 60);
    let submits = tokens.iter().map(|token| {
        let body = json!({"title": "paced", "targets": {"apns": [token]}});
        let client = client.clone();
        async move { submit(&client, body.to_string()).await.unwrap() }
    });
    let ids: Vec<serde_json::Value> = futures::future::join_all(submits)
        .await
        .into_iter()
        .map(serde_json::Value::from)
        .collect();
    let statuses = wait_ids(&cluster, &ids).await;
    for status in &statuses {
        assert_eq!(count(status, "delivered"), 1, "{status}");
        assert_eq!(count(status, "possible_duplicates"), 0, "{status}");
    }
    let controller = cluster.controller_client().await.unwrap();
    let stats = controller
        .stats(tarpc::context::current())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stats.chunks_redispatched, 0, "no call was abandoned");
    let (apns, _) = cluster.shutdown().unwrap();
    assert_eq!(
        apns.delivered, 60,
        "each notification reached the fake once"
    );
    assert_eq!(apns.distinct_tokens, 60);
}
