//! Backpressure end to end: a cluster whose fake provider stalls (injected latency) under a
//! burst of small submissions answers 503 `overloaded` with `Retry-After` once the controller
//! holds `controller.max_pending_notifications`, and delivers every submission it accepted.

use std::time::Duration;

use serde_json::json;
use volley_fake::{FakeConfig, Latency};
use volley_testkit::cluster::{Cluster, ClusterOptions};
use volley_testkit::jobs::{assert_balanced, count, wait_for_job};
use volley_testkit::tokens::apns_tokens;
use volley_testkit::wait::wait_until;

const JOB_LIMIT: Duration = Duration::from_secs(60);
/// Tokens per request; five requests fill the controller.
const TOKENS: usize = 10;
const MAX_PENDING: u64 = 50;
const REQUESTS: usize = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_provider_makes_the_front_answer_503_and_every_2xx_is_delivered() {
    let cluster = Cluster::start(ClusterOptions {
        agents: 1,
        fake_apns: FakeConfig {
            // Far longer than it takes to send the whole burst: the first jobs stay pending
            // while the rest arrive.
            latency: Latency::Fixed(Duration::from_millis(800)),
            ..FakeConfig::apns()
        },
        tweak: |config| {
            config.controller.max_pending_notifications = MAX_PENDING;
            config.controller.chunk_size = 5;
        },
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let client = cluster.client();

    let body = |request: usize| {
        let prefix = format!("b{request:07x}");
        json!({"title": "t", "targets": {"apns": apns_tokens(&prefix, TOKENS)}}).to_string()
    };
    let mut burst = Vec::new();
    for request in 0..REQUESTS {
        let url = format!("{}/v1/apps/demo/notifications", cluster.front_url);
        let key = cluster.api_key.clone();
        let body = body(request);
        burst.push(tokio::spawn(
            async move { post_raw(&url, &key, body).await },
        ));
    }
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for (request, reply) in burst.into_iter().enumerate() {
        let (status, retry_after, body) = reply.await.unwrap();
        match status {
            202 => accepted.push(body["id"].as_str().unwrap().to_owned()),
            503 => {
                assert_eq!(body["error"]["code"], "overloaded", "{body}");
                let seconds: u64 = retry_after
                    .expect("a 503 carries Retry-After")
                    .parse()
                    .unwrap();
                assert!(seconds >= 1, "Retry-After {seconds}");
                refused.push(request);
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(
        !accepted.is_empty() && accepted.len() as u64 <= MAX_PENDING / TOKENS as u64,
        "{} accepted while the limit holds {} requests",
        accepted.len(),
        MAX_PENDING / TOKENS as u64
    );
    assert!(!refused.is_empty(), "nothing was refused");
    println!(
        "burst of {REQUESTS}: {} accepted, {} refused with 503",
        accepted.len(),
        refused.len()
    );

    // The refusal names when to come back, and the operations endpoints show it (the
    // controller's metrics on its own ops port).
    let reply = client
        .post("/v1/apps/demo/notifications", body(REQUESTS))
        .await
        .unwrap();
    if reply.status.as_u16() == 503 {
        refused.push(REQUESTS);
    } else {
        accepted.push(reply.body["id"].as_str().unwrap().to_owned());
    }
    let stat = client.get("/stat/app").await.unwrap().body;
    assert_eq!(stat["max_pending_notifications"], MAX_PENDING, "{stat}");
    assert!(
        count(&stat["rejections"]["controller"], "overloaded") >= refused.len() as u64,
        "{stat}"
    );
    assert!(
        count(&stat["rejections"]["front"], "overloaded") >= refused.len() as u64,
        "{stat}"
    );
    assert!(
        count(&stat, "pending_notifications") <= MAX_PENDING,
        "{stat}"
    );
    let metrics = raw_get(&cluster.controller_ops_url, "/metrics").await;
    assert!(
        metrics.contains("volley_controller_rejected_total{reason=\"overloaded\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("volley_pending_notifications "),
        "{metrics}"
    );

    // Every accepted job is delivered in full.
    for id in &accepted {
        let status = wait_for_job(&client, id, JOB_LIMIT).await.unwrap();
        assert_balanced(&status);
        assert_eq!(count(&status, "delivered"), TOKENS as u64, "{status}");
    }

    // Once the backlog drained, a refused request goes through when retried.
    wait_until(JOB_LIMIT, "the backlog to drain", || {
        let client = client.clone();
        async move {
            client
                .get("/stat/app")
                .await
                .map(|r| {
                    count(&r.body, "pending_notifications") == 0
                        && count(&r.body, "active_jobs") == 0
                })
                .unwrap_or(false)
        }
    })
    .await
    .unwrap();
    let retried = refused[0];
    let reply = client
        .post("/v1/apps/demo/notifications", body(retried))
        .await
        .unwrap();
    assert_eq!(reply.status.as_u16(), 202, "{}", reply.body);
    let id = reply.body["id"].as_str().unwrap().to_owned();
    wait_for_job(&client, &id, JOB_LIMIT).await.unwrap();
    accepted.push(id);

    let metrics = raw_get(&cluster.controller_ops_url, "/metrics").await;
    assert!(
        metrics.contains("volley_job_latency_seconds_count{app=\"demo\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "volley_notifications_total{app=\"demo\",platform=\"apns\",outcome=\"delivered\""
        ),
        "{metrics}"
    );

    let (apns, _) = cluster.shutdown().unwrap();
    // Nothing refused reached the provider, nothing accepted was lost.
    assert_eq!(apns.distinct_tokens, (accepted.len() * TOKENS) as u64);
    assert_eq!(apns.duplicate_tokens, 0);
}

/// POSTs `body` with the API key; returns the status, `Retry-After` and the JSON body.
async fn post_raw(url: &str, key: &str, body: String) -> (u16, Option<String>, serde_json::Value) {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let request = hyper::Request::post(url)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        retry_after,
        serde_json::from_slice(&bytes).unwrap_or_default(),
    )
}

/// The body of a GET as text (`/metrics` is not JSON).
async fn raw_get(base: &str, path: &str) -> String {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let response = client
        .get(format!("{base}{path}").parse().unwrap())
        .await
        .unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}
