//! The controller's ops port and dashboard, as an operator sees them: after a broadcast, its
//! `/metrics` counts the deliveries, the leases and the store's commits, `/readyz` says it
//! leads, and the `dashboard` call lists the job with its counts and a rate history.

use std::time::Duration;

use volley_contracts::{JobId, JobState};
use volley_testkit::cluster::{Cluster, ClusterOptions};
use volley_testkit::http::FrontClient;
use volley_testkit::jobs::{assert_balanced, broadcast, count, submit, wait_for_job};
use volley_testkit::procs::metric_value;
use volley_testkit::wait::wait_until;

const LIMIT: Duration = Duration::from_secs(60);
/// Tokens per platform.
const TOKENS: usize = 1500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_shows_on_the_controllers_ops_port_and_dashboard() {
    let cluster = Cluster::start(ClusterOptions::default()).await.unwrap();
    let client = cluster.client();
    let id = submit(&client, broadcast("0a5c0001", TOKENS))
        .await
        .unwrap();
    let status = wait_for_job(&client, &id, LIMIT).await.unwrap();
    assert_balanced(&status);
    assert_eq!(count(&status, "delivered"), 2 * TOKENS as u64, "{status}");

    let ops = FrontClient::new(cluster.controller_ops_url.clone(), None);
    let metrics = ops.get_text("/metrics").await.unwrap();
    let value = |series: &str| {
        metric_value(&metrics, series).unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    for platform in ["apns", "fcm"] {
        let series = format!(
            "volley_notifications_total{{app=\"demo\",platform=\"{platform}\",outcome=\"delivered\",class=\"\",reason=\"\"}}"
        );
        assert_eq!(value(&series), TOKENS as f64, "{series}");
    }
    assert!(value("volley_controller_chunks_leased_total") > 0.0);
    assert!(value("volley_controller_store_commit_seconds_count") > 0.0);
    assert!(value("volley_controller_store_commit_writes_count") > 0.0);
    assert_eq!(value("volley_controller_leader"), 1.0);
    assert_eq!(value("volley_controller_jobs{state=\"running\"}"), 0.0);
    assert_eq!(value("volley_active_jobs"), 0.0);
    assert_eq!(value("volley_agents"), 2.0);
    assert!(value("process_cpu_seconds_total") > 0.0);
    assert!(value("volley_job_latency_seconds_count{app=\"demo\"}") >= 1.0);
    for line in [
        "# TYPE volley_queue_depth_chunks gauge",
        "# TYPE volley_app_queue_chunks gauge",
        "# TYPE volley_pending_notifications gauge",
        "# TYPE volley_controller_leases_expired_total counter",
        "# TYPE volley_controller_chunks_handed_back_total counter",
        "# TYPE volley_chunk_latency_seconds histogram",
        "volley_chunk_latency_seconds_bucket{app=\"demo\",platform=\"fcm\",le=\"+Inf\"}",
        "volley_certificate_expiry_timestamp_seconds{role=\"controller\",name=\"\"}",
        "volley_certificate_expiry_timestamp_seconds{role=\"agent\",",
        "volley_controller_rejected_total{reason=\"overloaded\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }

    let ready = ops.get("/readyz").await.unwrap();
    assert_eq!(ready.status.as_u16(), 200, "{}", ready.body);
    assert_eq!(ready.body["state"], "leader", "{}", ready.body);
    assert_eq!(ready.body["store"], "redb", "{}", ready.body);
    let health = ops.get("/healthz").await.unwrap();
    assert_eq!(health.status.as_u16(), 200);
    assert_eq!(health.body["role"], "controller");

    // The dashboard lists the job, finished, with its counts; its history catches up with
    // the deliveries within a sample or two.
    let controller = cluster.controller_client().await.unwrap();
    let job: JobId = id.parse().unwrap();
    wait_until(
        LIMIT,
        "the dashboard's history to count the deliveries",
        || {
            let controller = controller.clone();
            async move {
                let Ok(Ok(view)) = controller.dashboard(tarpc::context::current(), 20).await else {
                    return false;
                };
                view.history
                    .last()
                    .is_some_and(|sample| sample.delivered == 2 * TOKENS as u64)
            }
        },
    )
    .await
    .unwrap();
    let view = controller
        .dashboard(tarpc::context::current(), 20)
        .await
        .unwrap()
        .unwrap();
    let listed = view
        .jobs
        .iter()
        .find(|status| status.id == job)
        .unwrap_or_else(|| panic!("job {id} not on the dashboard: {:?}", view.jobs));
    assert_eq!(listed.state, JobState::Done);
    assert_eq!(listed.delivered, 2 * TOKENS as u64);
    assert!(listed.invalid_tokens.is_empty());
    assert!(!view.history.is_empty());
    assert!(view
        .history
        .windows(2)
        .all(|pair| pair[0].at_ms <= pair[1].at_ms && pair[0].delivered <= pair[1].delivered));
    assert_eq!(view.stats.agents.len(), 2);
    assert!(view.now_ms >= listed.finished_ms.unwrap());
    drop(controller);
    cluster.shutdown().unwrap();
}
