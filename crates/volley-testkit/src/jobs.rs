//! Jobs through a front: submitting them, following them to their end, and the counts every
//! job must keep — the balance, and the no-loss guarantee the fault tests check.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cluster::APP;
use crate::http::FrontClient;
use crate::procs::{ProcCluster, WAIT};
use crate::tokens::{apns_tokens, fcm_tokens};

/// Posts a native notification for the in-process cluster's app and returns the job id.
pub async fn submit(client: &FrontClient, body: impl Into<String>) -> anyhow::Result<String> {
    let response = client
        .post(&format!("/v1/apps/{APP}/notifications"), body.into())
        .await?;
    anyhow::ensure!(
        response.status.as_u16() == 202,
        "expected 202, got {} {}",
        response.status,
        response.body
    );
    Ok(response.body["id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no job id in {}", response.body))?
        .to_owned())
}

/// Polls a job every 50 ms until it is final (bounded by `limit`) and returns its status.
pub async fn wait_for_job(
    client: &FrontClient,
    id: &str,
    limit: Duration,
) -> anyhow::Result<Value> {
    // Not `wait::wait_until`: the error carries the last status seen.
    let path = format!("/v1/jobs/{id}?invalid_limit=100000");
    let deadline = Instant::now() + limit;
    loop {
        let status = client.get(&path).await?.body;
        if finished(&status) {
            return Ok(status);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "job {id} not final after {limit:?}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A JSON counter of a job status.
pub fn count(status: &Value, field: &str) -> u64 {
    status[field].as_u64().unwrap_or(0)
}

/// Asserts the balance every job must keep: accepted = delivered + invalid + failed + cancelled.
pub fn assert_balanced(status: &Value) {
    let accepted = count(status, "accepted");
    let outcomes = count(status, "delivered")
        + count(status, "invalid")
        + count(status, "failed")
        + count(status, "cancelled");
    assert_eq!(accepted, outcomes, "counts do not balance: {status}");
    assert_eq!(count(status, "pending"), 0, "{status}");
}

/// A broadcast body: `n` APNs and `n` FCM tokens, distinct per `tag`.
pub fn broadcast(tag: &str, n: usize) -> String {
    assert_eq!(tag.len(), 8, "tags are 8 hex characters");
    let apns = apns_tokens(tag, n);
    let fcm = fcm_tokens(tag, n);
    json!({"title": "fault test", "targets": {"apns": apns, "fcm": fcm}}).to_string()
}

/// Polls a job of a process cluster, through whichever front is current, until `done(status)`
/// holds; panics after [`WAIT`].
pub async fn wait_job(
    cluster: &ProcCluster,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    // Not `wait::wait_until`: the panic shows the last status seen.
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(response) = cluster.client().get(&format!("/v1/jobs/{id}")).await {
            if done(&response.body) {
                return response.body;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {}",
                response.body
            );
        } else {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: front unreachable"
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// True once the job has delivered at least `n`.
pub fn delivered_at_least(n: u64) -> impl Fn(&Value) -> bool {
    move |status| count(status, "delivered") >= n
}

/// True once the job is final.
pub fn finished(status: &Value) -> bool {
    matches!(status["state"].as_str(), Some("done" | "cancelled"))
}

/// The guarantee every fault test checks: every accepted token reached the fakes at least
/// once (or is reported failed), the counts balance, and the fakes saw no more duplicates
/// than the job counted. Returns the duplicates the fault caused.
pub async fn check_no_loss(cluster: &ProcCluster, status: &Value, per_platform: u64) -> u64 {
    check_no_loss_of(cluster, &[(status, per_platform)]).await
}

/// [`check_no_loss`] for several jobs of distinct tokens (each with its status and tokens per
/// platform) that together are all the fakes saw: each balances and is accepted whole, the
/// fakes saw each token, and no more duplicates than the jobs counted together.
pub async fn check_no_loss_of(cluster: &ProcCluster, jobs: &[(&Value, u64)]) -> u64 {
    let mut tokens = 0;
    let mut possible = 0;
    for (status, per_platform) in jobs {
        let count = |field: &str| count(status, field);
        assert_eq!(count("accepted"), 2 * per_platform, "{status}");
        assert_eq!(
            count("accepted"),
            count("delivered") + count("failed") + count("invalid") + count("cancelled"),
            "counts do not balance: {status}"
        );
        assert_eq!(count("pending"), 0, "{status}");
        tokens += per_platform;
        possible += count("possible_duplicates");
    }
    let (apns, fcm) = cluster.fake_stats().await;
    assert_eq!(
        apns["distinct_tokens"].as_u64(),
        Some(tokens),
        "apns: {apns}"
    );
    assert_eq!(fcm["distinct_tokens"].as_u64(), Some(tokens), "fcm: {fcm}");
    let duplicates = apns["duplicate_tokens"].as_u64().unwrap_or(0)
        + fcm["duplicate_tokens"].as_u64().unwrap_or(0);
    assert!(
        duplicates <= possible,
        "{duplicates} duplicates at the fakes, {possible} counted: {jobs:?}"
    );
    duplicates
}

/// Submits a broadcast of `per_platform` APNs and as many FCM tokens tagged `tag` through the
/// cluster's front (app `shop`), asserts it is accepted and returns the job's id.
pub async fn submit_broadcast(cluster: &ProcCluster, tag: &str, per_platform: u64) -> String {
    let response = cluster
        .client()
        .post(
            "/v1/apps/shop/notifications",
            broadcast(tag, per_platform as usize),
        )
        .await
        .unwrap();
    assert_eq!(response.status.as_u16(), 202, "{}", response.body);
    response.body["id"].as_str().unwrap().to_owned()
}

/// [`submit_broadcast`], then waits until `delivered` are delivered, checks the job is still
/// running (a fault injected now lands mid-broadcast) and returns its id.
pub async fn start_broadcast(
    cluster: &ProcCluster,
    tag: &str,
    per_platform: u64,
    delivered: u64,
) -> String {
    let id = submit_broadcast(cluster, tag, per_platform).await;
    let status = wait_job(
        cluster,
        &id,
        "the broadcast under way",
        delivered_at_least(delivered),
    )
    .await;
    assert!(
        !finished(&status),
        "the job finished before the fault was injected: {status}"
    );
    id
}

/// Waits for the broadcast to finish, checks that nothing was lost ([`check_no_loss`]),
/// prints the duplicates the fault caused and stops the cluster; returns the duplicates.
pub async fn finish_broadcast(
    cluster: ProcCluster,
    id: &str,
    per_platform: u64,
    fault: &str,
) -> u64 {
    let status = wait_job(&cluster, id, "the job to finish", finished).await;
    let duplicates = check_no_loss(&cluster, &status, per_platform).await;
    eprintln!(
        "{fault}: {duplicates} duplicates at the fakes (counted possible: {})",
        status["possible_duplicates"]
    );
    cluster.stop();
    duplicates
}
