//! Helpers shared by Volley's end-to-end tests; the cluster itself is `volley::cluster`.

use std::time::{Duration, Instant};

use serde_json::Value;
use volley::http::FrontClient;

/// Posts a native notification for the demo app and returns the job id.
pub async fn submit(client: &FrontClient, body: impl Into<String>) -> anyhow::Result<String> {
    let response = client
        .post("/v1/apps/demo/notifications", body.into())
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
    let path = format!("/v1/jobs/{id}?invalid_limit=100000");
    let deadline = Instant::now() + limit;
    loop {
        let status = client.get(&path).await?.body;
        if matches!(status["state"].as_str(), Some("done" | "cancelled")) {
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

/// `n` distinct valid APNs tokens starting with `prefix` (hex, 8 characters).
pub fn apns_tokens(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:056x}")).collect()
}

/// `n` distinct valid FCM tokens starting with `prefix`.
pub fn fcm_tokens(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}:APA91b{i:040x}")).collect()
}
