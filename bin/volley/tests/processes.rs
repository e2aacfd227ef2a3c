//! The real `volley` binary as separate processes: fake APNs, fake FCM, a controller, two
//! agents and a front, each its own process on ephemeral ports, talking over TCP.

use volley_testkit::jobs::{broadcast, check_no_loss, finished, wait_job};
use volley_testkit::procs::ProcCluster;

const BIN: &str = env!("CARGO_BIN_EXE_volley");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_real_processes_delivers_a_broadcast() {
    let cluster = ProcCluster::start(BIN, 2, &[]);
    let response = cluster
        .client()
        .post("/v1/apps/shop/notifications", broadcast("abcdef01", 2_000))
        .await
        .unwrap();
    assert_eq!(response.status.as_u16(), 202, "{}", response.body);
    let id = response.body["id"].as_str().unwrap().to_owned();
    let status = wait_job(&cluster, &id, "the job to finish", finished).await;
    assert_eq!(status["delivered"], 4_000, "{status}");
    let duplicates = check_no_loss(&cluster, &status, 2_000).await;
    assert_eq!(duplicates, 0);
    // Every process stops cleanly on SIGTERM (exit status 0).
    cluster.stop();
}
