//! Fault tests: real `volley` processes against the fakes, a broadcast of 100,000 tokens, and
//! one process killed, paused or stopped in mid-broadcast. Each checks, from the fakes'
//! counters and the job status, that every accepted token was delivered at least once, that
//! the counts balance, and that the fakes saw no more duplicates than the job counted.

mod common;

use common::{
    broadcast, check_no_loss, delivered_at_least, finished, wait_job, ProcCluster, API_KEY,
};
use serde_json::Value;
use volley::http::FrontClient;

/// Tokens per platform: 100,000 in all per test.
const N: u64 = 50_000;

/// One fault test at a time: each runs a whole cluster, and on two cores several at once would
/// starve heartbeats and turn every test into a test of lease expiry.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Fakes answer in 20 ms so that a 100,000-token broadcast lasts long enough to interrupt.
const SLOW_FAKES: &[&str] = &["--latency", "20ms"];

async fn submit(cluster: &ProcCluster, tag: &str) -> String {
    let response = cluster
        .client()
        .post("/v1/apps/shop/notifications", broadcast(tag, N as usize))
        .await
        .unwrap();
    assert_eq!(response.status.as_u16(), 202, "{}", response.body);
    response.body["id"].as_str().unwrap().to_owned()
}

fn assert_mid_job(status: &Value) {
    assert!(
        !finished(status),
        "the job finished before the fault was injected: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_one_of_three_agents_mid_broadcast() {
    let _serial = SERIAL.lock().await;
    let mut cluster = ProcCluster::start(3, SLOW_FAKES);
    let id = submit(&cluster, "0a0a0a0a").await;
    let status = wait_job(
        &cluster,
        &id,
        "a fifth delivered",
        delivered_at_least(2 * N / 5),
    )
    .await;
    assert_mid_job(&status);
    cluster.kill9("agent-1");
    let status = wait_job(&cluster, &id, "the job to finish", finished).await;
    let duplicates = check_no_loss(&cluster, &status, N).await;
    eprintln!(
        "kill -9 agent: {duplicates} duplicates (counted possible: {})",
        status["possible_duplicates"]
    );
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_an_agent_past_its_lease_then_sigcont() {
    let _serial = SERIAL.lock().await;
    let cluster = ProcCluster::start(3, SLOW_FAKES);
    let id = submit(&cluster, "0b0b0b0b").await;
    let status = wait_job(
        &cluster,
        &id,
        "a tenth delivered",
        delivered_at_least(N / 5),
    )
    .await;
    assert_mid_job(&status);
    let lines_before = cluster.proc("controller").line_count();
    cluster.sigstop("agent-0");
    // The controller notices: the paused agent's leases expire and it is dropped.
    cluster
        .proc("controller")
        .line_with("lease expired", lines_before);
    cluster
        .proc("controller")
        .line_with("agent dropped", lines_before);
    let agent_lines = cluster.proc("agent-0").line_count();
    cluster.sigcont("agent-0");
    // Woken up, the agent learns its chunks are gone and stops sending them.
    let line = cluster
        .proc("agent-0")
        .line_with("registering again", agent_lines);
    assert!(line.contains("forgot"), "{line}");
    let status = wait_job(&cluster, &id, "the job to finish", finished).await;
    let duplicates = check_no_loss(&cluster, &status, N).await;
    eprintln!(
        "SIGSTOP agent: {duplicates} duplicates (counted possible: {})",
        status["possible_duplicates"]
    );
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_the_controller_mid_broadcast_and_restart_it() {
    let _serial = SERIAL.lock().await;
    let mut cluster = ProcCluster::start(2, SLOW_FAKES);
    let id = submit(&cluster, "0c0c0c0c").await;
    let status = wait_job(
        &cluster,
        &id,
        "a fifth delivered",
        delivered_at_least(2 * N / 5),
    )
    .await;
    assert_mid_job(&status);
    cluster.kill9("controller");
    cluster.start_controller();
    let line = cluster.proc("controller").line_with("resuming job", 0);
    assert!(line.contains(&id), "{line}");
    let status = wait_job(&cluster, &id, "the job to finish", finished).await;
    let duplicates = check_no_loss(&cluster, &status, N).await;
    eprintln!(
        "kill -9 controller: {duplicates} duplicates (counted possible: {})",
        status["possible_duplicates"]
    );
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_a_front_between_accepting_and_answering() {
    let _serial = SERIAL.lock().await;
    let mut cluster = ProcCluster::start(2, SLOW_FAKES);
    let body = broadcast("0d0d0d0d", N as usize);
    let key = [("idempotency-key", "order-0d0d0d0d")];
    let first_front = cluster.client();
    let lines_before = cluster.proc("controller").line_count();
    let request = {
        let body = body.clone();
        tokio::spawn(async move {
            first_front
                .request_with(
                    http::Method::POST,
                    "/v1/apps/shop/notifications",
                    Some(body.into()),
                    &key,
                )
                .await
        })
    };
    // The controller has the job on disk; kill the front before (or while) it answers.
    let accepted = cluster
        .proc("controller")
        .line_with("job accepted", lines_before);
    cluster.kill9("front-0");
    let job = accepted
        .split("\"job\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the job id is logged")
        .to_owned();
    // The caller may or may not have seen the 202; either way it retries with the same key.
    let _ = request.await.unwrap();
    cluster.start_front();
    let retry = FrontClient::new(cluster.front_url.clone(), Some(API_KEY.to_owned()))
        .request_with(
            http::Method::POST,
            "/v1/apps/shop/notifications",
            Some(body.into()),
            &key,
        )
        .await
        .unwrap();
    assert_eq!(retry.status.as_u16(), 202, "{}", retry.body);
    assert_eq!(
        retry.body["id"].as_str(),
        Some(job.as_str()),
        "the retry made a second job"
    );
    let status = wait_job(&cluster, &job, "the job to finish", finished).await;
    let duplicates = check_no_loss(&cluster, &status, N).await;
    assert_eq!(duplicates, 0);
    eprintln!("kill -9 front: one job, {duplicates} duplicates");
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_every_node_in_turn_under_load() {
    let _serial = SERIAL.lock().await;
    let mut cluster = ProcCluster::start(2, SLOW_FAKES);
    let id = submit(&cluster, "0e0e0e0e").await;
    let status = wait_job(
        &cluster,
        &id,
        "a tenth delivered",
        delivered_at_least(N / 5),
    )
    .await;
    assert_mid_job(&status);
    cluster.sigterm("front-0");
    cluster.start_front();
    cluster.sigterm("agent-0");
    cluster.start_agent("agent-2");
    cluster.sigterm("controller");
    cluster.start_controller();
    let status = wait_job(&cluster, &id, "the job to finish", finished).await;
    let duplicates = check_no_loss(&cluster, &status, N).await;
    eprintln!(
        "SIGTERM each node: {duplicates} duplicates (counted possible: {})",
        status["possible_duplicates"]
    );
    cluster.stop();
}
