//! The real `volley` binary as separate processes: fake APNs, fake FCM, a controller, two
//! agents and a front, each its own process on ephemeral ports, talking over TCP.

use volley_testkit::jobs::{check_no_loss, finished, submit_broadcast, wait_job};
use volley_testkit::procs::ProcCluster;

const BIN: &str = env!("CARGO_BIN_EXE_volley");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_real_processes_delivers_a_broadcast() {
    let cluster = ProcCluster::start(BIN, 2, &[]);
    let id = submit_broadcast(&cluster, "abcdef01", 2_000).await;
    let status = wait_job(&cluster, &id, "the job to finish", finished).await;
    assert_eq!(status["delivered"], 4_000, "{status}");
    let duplicates = check_no_loss(&cluster, &status, 2_000).await;
    assert_eq!(duplicates, 0);
    // Every process stops cleanly on SIGTERM (exit status 0).
    cluster.stop();
}
