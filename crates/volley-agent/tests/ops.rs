//! The agent's ops port as an operator reads it, on a whole cluster against the fakes:
//! `/metrics` after a broadcast (latencies, answers by class, connections, breakers, the
//! registration), failures by reason, retries and an open breaker, and `/readyz`.

use std::time::Duration;

use serde_json::json;
use volley_testkit::cluster::{Cluster, ClusterOptions, APP};
use volley_testkit::http::FrontClient;
use volley_testkit::jobs::{assert_balanced, count, submit, wait_for_job};
use volley_testkit::tokens::{apns_tokens, fcm_tokens};
use volley_testkit::wait::wait_until;

const JOB_LIMIT: Duration = Duration::from_secs(60);

/// The value of one series (`name{labels}` exactly as exposed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// The sum of one series over every agent's scrape (absent counts as 0).
fn total(scrapes: &[String], series: &str) -> f64 {
    scrapes
        .iter()
        .map(|text| sample(text, series).unwrap_or(0.0))
        .sum()
}

async fn scrape(url: &str) -> String {
    FrontClient::new(url, None)
        .get_text("/metrics")
        .await
        .expect("/metrics answers")
}

async fn scrape_all(cluster: &Cluster) -> Vec<String> {
    let mut scrapes = Vec::new();
    for url in &cluster.agent_ops_urls {
        scrapes.push(scrape(url).await);
    }
    scrapes
}

fn lane(metric: &str, provider: &str) -> String {
    format!(r#"{metric}{{app="{APP}",provider="{provider}"}}"#)
}

fn class(provider: &str, class: &str) -> String {
    format!(
        r#"volley_agent_provider_responses_total{{app="{APP}",provider="{provider}",class="{class}"}}"#
    )
}

fn failure(provider: &str, class: &str, reason: &str) -> String {
    format!(
        r#"volley_agent_provider_failures_total{{app="{APP}",provider="{provider}",class="{class}",reason="{reason}"}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_shows_in_the_agents_metrics_and_a_registered_agent_is_ready() {
    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    let client = cluster.client();
    let tokens = 600;
    let body = json!({
        "title": "ops",
        "targets": {"apns": apns_tokens("0ba5e001", tokens), "fcm": fcm_tokens("0ba5e001", tokens)},
    });
    let id = submit(&client, body.to_string()).await.unwrap();
    let status = wait_for_job(&client, &id, JOB_LIMIT).await.unwrap();
    assert_balanced(&status);
    assert_eq!(count(&status, "delivered"), 2 * tokens as u64, "{status}");

    let scrapes = scrape_all(&cluster).await;
    for provider in ["apns", "fcm"] {
        // Each answer is counted once, on the agent that sent it.
        let delivered = total(&scrapes, &class(provider, "delivered"));
        assert_eq!(delivered, tokens as f64, "{provider}: {scrapes:#?}");
        // One latency per request: at least one per notification.
        let requests = total(
            &scrapes,
            &lane("volley_agent_provider_request_seconds_count", provider),
        );
        assert!(requests >= delivered, "{provider}: {requests} requests");
        assert!(
            total(&scrapes, &lane("volley_agent_connections", provider)) > 0.0,
            "{provider}: no connection open: {scrapes:#?}"
        );
        assert_eq!(
            total(&scrapes, &lane("volley_agent_retries_total", provider)),
            0.0
        );
        for text in &scrapes {
            assert_eq!(
                sample(text, &lane("volley_agent_breaker_state", provider)),
                Some(0.0),
                "{text}"
            );
            assert_eq!(
                sample(text, &lane("volley_agent_streams_in_flight", provider)),
                Some(0.0)
            );
        }
    }
    assert!(total(&scrapes, r#"volley_agent_chunks_total{result="done"}"#) >= 2.0);
    for text in &scrapes {
        assert_eq!(sample(text, "volley_agent_registered"), Some(1.0), "{text}");
        assert_eq!(sample(text, "volley_agent_tokens_in_flight"), Some(0.0));
        assert_eq!(sample(text, "volley_agent_chunks_in_flight"), Some(0.0));
        // The cluster's links are mutual TLS: the certificate's end is shown.
        let expiry = sample(text, "volley_agent_certificate_expiry_timestamp_seconds")
            .expect("certificate expiry exposed");
        assert!(expiry > 1.7e9, "{expiry}");
        assert!(text.contains("process_cpu_seconds_total"));
    }

    let ready = FrontClient::new(cluster.agent_ops_urls[0].as_str(), None)
        .get("/readyz")
        .await
        .unwrap();
    assert_eq!(ready.status.as_u16(), 200, "{}", ready.body);
    assert_eq!(ready.body["status"], "ready");
    assert_eq!(ready.body["role"], "agent");
    assert_eq!(ready.body["registered"], true);
    assert_eq!(ready.body["apps"], json!([APP]));
    assert!(ready.body["agent_id"].is_u64(), "{}", ready.body);
    assert_eq!(
        ready.body["controller"],
        cluster.controller_addr.to_string(),
        "{}",
        ready.body
    );
    cluster.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_count_by_reason_retries_are_counted_and_an_open_breaker_shows() {
    let cluster = Cluster::start(ClusterOptions {
        agents: 1,
        tweak: |config| {
            config.agent.retry_base_delay = Duration::from_millis(10);
            config.agent.retry_max_delay = Duration::from_millis(50);
            // Open long enough to be seen, and no long drain at the end.
            config.agent.breaker.cool_down = Duration::from_secs(5);
            config.agent.shutdown_grace = Duration::from_secs(1);
        },
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let client = cluster.client();
    let ops = cluster.agent_ops_urls[0].clone();

    // APNs: 100 delivered, 20 Unregistered (410), 5 TooManyRequests (429) on each of their
    // three attempts. Few failures per answer: the breaker stays closed.
    let mut apns = apns_tokens("0ba5e002", 100);
    apns.extend(apns_tokens("dead0002", 20));
    apns.extend(apns_tokens("42900002", 5));
    let body = json!({"title": "ops", "targets": {"apns": apns}});
    let id = submit(&client, body.to_string()).await.unwrap();
    let status = wait_for_job(&client, &id, JOB_LIMIT).await.unwrap();
    assert_balanced(&status);
    assert_eq!(count(&status, "delivered"), 100, "{status}");
    let text = scrape(&ops).await;
    assert_eq!(sample(&text, &class("apns", "delivered")), Some(100.0));
    assert_eq!(sample(&text, &class("apns", "invalid_token")), Some(20.0));
    assert_eq!(sample(&text, &class("apns", "transient")), Some(15.0));
    assert_eq!(
        sample(&text, &failure("apns", "invalid_token", "Unregistered")),
        Some(20.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &failure("apns", "transient", "TooManyRequests")),
        Some(15.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &lane("volley_agent_retries_total", "apns")),
        Some(10.0)
    );
    assert_eq!(
        sample(&text, &lane("volley_agent_breaker_state", "apns")),
        Some(0.0)
    );

    // FCM: every request fails with 500 INTERNAL: the breaker opens.
    let body = json!({"title": "ops", "targets": {"fcm": fcm_tokens("50000003", 60)}});
    submit(&client, body.to_string()).await.unwrap();
    let opened = wait_until(Duration::from_secs(20), "the FCM breaker to open", || {
        let ops = ops.clone();
        async move {
            let text = scrape(&ops).await;
            sample(&text, &lane("volley_agent_breaker_state", "fcm")) == Some(2.0)
        }
    })
    .await;
    let last = scrape(&ops).await;
    opened.unwrap_or_else(|error| panic!("{error}:\n{last}"));
    assert!(sample(&last, &lane("volley_agent_breaker_opened_total", "fcm")) >= Some(1.0));
    assert!(
        sample(&last, &failure("fcm", "transient", "INTERNAL")) >= Some(20.0),
        "{last}"
    );
    // The other provider's breaker is its own.
    assert_eq!(
        sample(&last, &lane("volley_agent_breaker_state", "apns")),
        Some(0.0)
    );
    cluster.shutdown().unwrap();
}
