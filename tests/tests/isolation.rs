//! One app's provider outage must not starve another app: the agents pause the troubled app
//! (its circuit breaker opens and its chunks wait or are handed back) while the other app's
//! broadcast goes on, and the troubled app's notifications go out once its provider recovers.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::json;
use volley_config::Secret;
use volley_contracts::{Histogram, Platform, LATENCY_BUCKETS_MS};
use volley_fake::{FakeConfig, FakeServer};
use volley_testkit::cluster::{Cluster, ClusterOptions};
use volley_testkit::http::FrontClient;
use volley_testkit::jobs::{assert_balanced, count, submit, wait_for_job};
use volley_testkit::tokens::apns_tokens;
use volley_testkit::wait::wait_until;

const JOB_LIMIT: Duration = Duration::from_secs(120);
/// The troubled app, served by its own fake APNs.
const TROUBLED: &str = "troubled";
const TROUBLED_KEY: &str = "vk_troubled_app_key_0123456789";
/// Tokens of the troubled app's two jobs (the first is one chunk; the second, 40 chunks, is
/// more than all the agents' window slots) and of each of the healthy app's broadcasts.
const FIRST_TOKENS: usize = 500;
const SECOND_TOKENS: usize = 20_000;
/// Sends an agent starts at once for one chunk (`agent.concurrency / agent.window`).
const FIRST_WAVE: u64 = 100;
const HEALTHY_TOKENS: usize = 10_000;

/// `ClusterOptions::tweak` is a plain `fn`: the troubled fake's endpoint reaches it here.
static TROUBLED_ENDPOINT: OnceLock<String> = OnceLock::new();

fn add_troubled_app(config: &mut volley_config::Config) {
    config.controller.chunk_size = 500;
    // Enough attempts that the breaker's probes during the outage cannot use up a token's.
    config.agent.max_attempts = 10;
    config.agent.breaker.cool_down = Duration::from_millis(500);
    config.agent.breaker.max_cool_down = Duration::from_secs(2);
    let mut app = config.apps[0].clone();
    app.name = TROUBLED.into();
    app.api_keys = vec![Secret::new(TROUBLED_KEY)];
    app.fcm = None;
    let apns = app.apns.as_mut().expect("the demo app has APNs");
    apns.endpoint = TROUBLED_ENDPOINT.get().expect("endpoint set").clone();
    apns.ca_file = None;
    config.apps.push(app);
}

/// Submits a broadcast for the troubled app and returns its job id.
async fn submit_troubled(client: &FrontClient, prefix: &str, tokens: usize) -> String {
    let body = json!({"title": "t", "targets": {"apns": apns_tokens(prefix, tokens)}});
    let response = client
        .post(
            &format!("/v1/apps/{TROUBLED}/notifications"),
            body.to_string(),
        )
        .await
        .unwrap();
    assert_eq!(response.status.as_u16(), 202, "{}", response.body);
    response.body["id"].as_str().unwrap().to_owned()
}

/// The controller's histogram of the demo app's APNs chunk times (handed out → reported).
async fn demo_chunk_times(cluster: &Cluster) -> Histogram {
    let controller = volley_contracts::connect_controller(cluster.controller_addr)
        .await
        .unwrap();
    let stats = controller.stats(tarpc::context::current()).await.unwrap();
    stats
        .chunk_latency
        .into_iter()
        .find(|stat| {
            stat.app == volley_testkit::cluster::APP && stat.platform == Some(Platform::Apns)
        })
        .map(|stat| stat.histogram)
        .unwrap_or_default()
}

/// The bucket bound, in ms, under which 99 % of the chunks observed between `before` and
/// `after` finished.
fn p99_ms(before: &Histogram, after: &Histogram) -> u64 {
    let counts: Vec<u64> = (0..after.buckets.len())
        .map(|i| after.buckets[i] - before.buckets.get(i).copied().unwrap_or(0))
        .collect();
    let total: u64 = counts.iter().sum();
    let mut seen = 0;
    for (i, count) in counts.iter().enumerate() {
        seen += count;
        if seen * 100 >= total * 99 {
            return LATENCY_BUCKETS_MS.get(i).copied().unwrap_or(u64::MAX);
        }
    }
    u64::MAX
}

/// Submits a broadcast for the demo app and returns how long it took to finish.
async fn healthy_broadcast(cluster: &Cluster, prefix: &str) -> Duration {
    let client = cluster.client();
    let body = json!({"title": "t", "targets": {"apns": apns_tokens(prefix, HEALTHY_TOKENS)}});
    let started = Instant::now();
    let id = submit(&client, body.to_string()).await.unwrap();
    let status = wait_for_job(&client, &id, JOB_LIMIT).await.unwrap();
    let took = started.elapsed();
    assert_balanced(&status);
    assert_eq!(
        count(&status, "delivered"),
        HEALTHY_TOKENS as u64,
        "{status}"
    );
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_apps_outage_does_not_stall_another_and_its_notifications_arrive_after_recovery() {
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
        agents: 2,
        tweak: add_troubled_app,
        ..ClusterOptions::default()
    })
    .await
    .unwrap();

    let start = demo_chunk_times(&cluster).await;
    let alone = healthy_broadcast(&cluster, "a1a1a1a1").await;
    let after_alone = demo_chunk_times(&cluster).await;

    // The troubled app's first job, one chunk, starts failing on one agent, whose breaker
    // opens at once. The next request it makes is a probe, a cool-down later; after it, the
    // second job's chunks that reach that agent find its breaker open: they are refused and
    // handed out again until the provider is back.
    let troubled = FrontClient::new(cluster.front_url.clone(), Some(TROUBLED_KEY.into()));
    let first = submit_troubled(&troubled, "b2b2b2b2", FIRST_TOKENS).await;
    let fake = &troubled_fake;
    wait_until(
        Duration::from_secs(30),
        "the troubled fake to fail requests",
        || {
            let requests = fake.stats().requests;
            async move { requests >= FIRST_WAVE }
        },
    )
    .await
    .unwrap();
    wait_until(
        Duration::from_secs(30),
        "a probe of the troubled provider",
        || {
            let requests = fake.stats().requests;
            async move { requests > FIRST_WAVE }
        },
    )
    .await
    .unwrap();
    let second = submit_troubled(&troubled, "b3b3b3b3", SECOND_TOKENS).await;

    let during_outage = healthy_broadcast(&cluster, "c3c3c3c3").await;
    let after_outage = demo_chunk_times(&cluster).await;
    println!(
        "healthy app: {HEALTHY_TOKENS} tokens in {alone:?} alone (p99 chunk time <= {} ms), \
         {during_outage:?} while the other app's provider failed (p99 chunk time <= {} ms)",
        p99_ms(&start, &after_alone),
        p99_ms(&after_alone, &after_outage),
    );
    for id in [&first, &second] {
        let status = troubled.get(&format!("/v1/jobs/{id}")).await.unwrap().body;
        assert_eq!(count(&status, "delivered"), 0, "{status}");
        assert_ne!(
            status["state"], "done",
            "finished during the outage: {status}"
        );
    }

    // The provider recovers on the same address.
    let refused = troubled_fake.shutdown();
    let recovered = FakeServer::start(
        FakeConfig {
            tls: false,
            ..FakeConfig::apns()
        },
        std::net::TcpListener::bind(addr).unwrap(),
    )
    .unwrap();
    let recovery = Instant::now();
    let mut duplicates = 0;
    for (id, tokens) in [(&first, FIRST_TOKENS), (&second, SECOND_TOKENS)] {
        let status = wait_for_job(&troubled, id, JOB_LIMIT).await.unwrap();
        assert_balanced(&status);
        assert_eq!(count(&status, "delivered"), tokens as u64, "{status}");
        duplicates += count(&status, "possible_duplicates");
    }
    println!(
        "troubled app: {} tokens delivered {:?} after its provider recovered ({} requests \
         refused during the outage, {duplicates} possible duplicates counted)",
        FIRST_TOKENS + SECOND_TOKENS,
        recovery.elapsed(),
        refused.requests,
    );
    assert_eq!(refused.delivered, 0);
    assert!(
        refused.requests < (FIRST_TOKENS + SECOND_TOKENS) as u64,
        "{} requests during the outage",
        refused.requests
    );
    let recovered = recovered.shutdown();
    assert_eq!(
        recovered.distinct_tokens,
        (FIRST_TOKENS + SECOND_TOKENS) as u64
    );
    assert_eq!(recovered.duplicate_tokens, 0);
    let (apns, _) = cluster.shutdown().unwrap();
    assert_eq!(apns.distinct_tokens, 2 * HEALTHY_TOKENS as u64);
    assert_eq!(apns.duplicate_tokens, 0);
}
