//! One app's provider outage must not slow another app, with the configuration a new user
//! gets: one agent, the default chunk size, attempts and cool-down.
//!
//! App "troubled" has its own fake APNs, which answers every request 503 with
//! `retry-after: 1`. Its 100,000-token broadcast is queued first; then the demo app submits
//! a 100,000-token broadcast. The agent's breaker for the troubled app opens and hands its
//! chunks back; the controller keeps that app's queue off the agent until the breaker may
//! half-open, so the demo app's broadcast runs on the whole window. Its time is compared, as
//! a ratio, with its clean time measured in the same test. Then the troubled provider
//! recovers and every one of its notifications is delivered, once.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::json;
use volley_config::Secret;
use volley_fake::{FakeConfig, FakeServer};
use volley_testkit::cluster::{Cluster, ClusterOptions};
use volley_testkit::http::FrontClient;
use volley_testkit::jobs::{assert_balanced, count, submit, wait_for_job};
use volley_testkit::tokens::apns_tokens;
use volley_testkit::wait::wait_until;

const JOB_LIMIT: Duration = Duration::from_secs(180);
/// The troubled app, served by its own fake APNs.
const TROUBLED: &str = "troubled";
const TROUBLED_KEY: &str = "vk_troubled_app_key_0123456789";
/// Tokens of each broadcast.
const TOKENS: usize = 100_000;
/// Most the healthy broadcast may slow down during the other app's outage.
const MAX_SLOWDOWN: f64 = 1.2;

/// `ClusterOptions::tweak` is a plain `fn`: the troubled fake's endpoint reaches it here.
static TROUBLED_ENDPOINT: OnceLock<String> = OnceLock::new();

/// Adds the troubled app and nothing else: every other setting stays the default.
fn add_troubled_app(config: &mut volley_config::Config) {
    let mut app = config.apps[0].clone();
    app.name = TROUBLED.into();
    app.api_keys = vec![Secret::new(TROUBLED_KEY)];
    app.fcm = None;
    let apns = app.apns.as_mut().expect("the demo app has APNs");
    apns.endpoint = TROUBLED_ENDPOINT.get().expect("endpoint set").clone();
    apns.ca_file = None;
    config.apps.push(app);
}

/// Submits a broadcast of the demo app and returns how long it took to finish.
async fn healthy_broadcast(cluster: &Cluster, prefix: &str) -> Duration {
    let client = cluster.client();
    let body = json!({"title": "t", "targets": {"apns": apns_tokens(prefix, TOKENS)}});
    let started = Instant::now();
    let id = submit(&client, body.to_string()).await.unwrap();
    let status = wait_for_job(&client, &id, JOB_LIMIT).await.unwrap();
    let took = started.elapsed();
    assert_balanced(&status);
    assert_eq!(count(&status, "delivered"), TOKENS as u64, "{status}");
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_apps_outage_does_not_slow_another_with_the_default_configuration() {
    // The troubled app's APNs is h2c (no CA to carry over to its replacement) and answers
    // every request 503 ServiceUnavailable with Retry-After: 1.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let failing = FakeConfig {
        tls: false,
        transient_error_rate: 1.0,
        ..FakeConfig::apns()
    };
    let troubled_fake = FakeServer::start(failing, listener).unwrap();
    TROUBLED_ENDPOINT.set(troubled_fake.endpoint()).unwrap();
    let cluster = Cluster::start(ClusterOptions {
        agents: 1,
        tweak: add_troubled_app,
        ..ClusterOptions::default()
    })
    .await
    .unwrap();

    // Warm the demo app's connections, then its clean time.
    healthy_broadcast(&cluster, "a0a0a0a0").await;
    let clean = healthy_broadcast(&cluster, "a1a1a1a1").await;

    // The troubled app's broadcast is queued first and starts failing.
    let troubled = FrontClient::new(cluster.front_url.clone(), Some(TROUBLED_KEY.into()));
    let body = json!({"title": "t", "targets": {"apns": apns_tokens("b2b2b2b2", TOKENS)}});
    let response = troubled
        .post(
            &format!("/v1/apps/{TROUBLED}/notifications"),
            body.to_string(),
        )
        .await
        .unwrap();
    assert_eq!(response.status.as_u16(), 202, "{}", response.body);
    let outage_job = response.body["id"].as_str().unwrap().to_owned();
    let fake = &troubled_fake;
    wait_until(
        Duration::from_secs(30),
        "the troubled fake to fail requests",
        || {
            let requests = fake.stats().requests;
            async move { requests > 0 }
        },
    )
    .await
    .unwrap();

    let during_outage = healthy_broadcast(&cluster, "c3c3c3c3").await;
    let again = healthy_broadcast(&cluster, "d4d4d4d4").await;
    let reference = (clean + again) / 2;
    let ratio = during_outage.as_secs_f64() / reference.as_secs_f64();
    let refused = troubled_fake.stats().requests;
    println!(
        "healthy app, {TOKENS} tokens: {clean:?} clean, {during_outage:?} during the other \
         app's outage, {again:?} clean again: {ratio:.2}x the clean mean; the troubled \
         provider saw {refused} requests"
    );
    let status = troubled
        .get(&format!("/v1/jobs/{outage_job}"))
        .await
        .unwrap()
        .body;
    assert_eq!(count(&status, "delivered"), 0, "{status}");
    assert_ne!(
        status["state"], "done",
        "finished during the outage: {status}"
    );
    assert!(
        ratio <= MAX_SLOWDOWN,
        "the healthy broadcast took {ratio:.2}x its clean time during the other app's outage"
    );
    assert!(
        refused < TOKENS as u64 / 10,
        "{refused} requests reached the failing provider: its chunks kept being sent"
    );

    // The provider recovers on the same address: everything arrives, once.
    let failed = troubled_fake.shutdown();
    let recovered = FakeServer::start(
        FakeConfig {
            tls: false,
            ..FakeConfig::apns()
        },
        std::net::TcpListener::bind(addr).unwrap(),
    )
    .unwrap();
    let recovery = Instant::now();
    let status = wait_for_job(&troubled, &outage_job, JOB_LIMIT)
        .await
        .unwrap();
    println!(
        "troubled app: {TOKENS} tokens delivered {:?} after its provider recovered",
        recovery.elapsed()
    );
    assert_balanced(&status);
    assert_eq!(count(&status, "delivered"), TOKENS as u64, "{status}");
    assert_eq!(failed.delivered, 0);
    let recovered = recovered.shutdown();
    assert_eq!(recovered.distinct_tokens, TOKENS as u64);
    assert_eq!(recovered.duplicate_tokens, 0);
    let (apns, _) = cluster.shutdown().unwrap();
    assert_eq!(apns.distinct_tokens, 4 * TOKENS as u64);
    assert_eq!(apns.duplicate_tokens, 0);
}
