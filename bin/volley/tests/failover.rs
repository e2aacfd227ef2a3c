//! Controllers on PostgreSQL (`controller.store = "postgres"`), as real processes against the
//! throwaway server `scripts/test` starts: a leader and a standby, the leader killed or paused
//! in mid-broadcast, and the database itself restarted. Each checks, from the fakes' record
//! and the job status, that every accepted token was delivered at least once, that the counts
//! balance, and that the fakes saw no more duplicates than the job counted.

use std::time::Instant;

use volley_testkit::jobs::{
    delivered_at_least, finish_broadcast, finished, start_broadcast, wait_job,
};
use volley_testkit::pg::{fresh_database, restart_postgres};
use volley_testkit::procs::ProcCluster;

const BIN: &str = env!("CARGO_BIN_EXE_volley");

/// Tokens per platform: 100,000 in all per test.
const N: u64 = 50_000;

/// One cluster at a time: on two cores several would starve heartbeats and leases.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Fakes answer in 20 ms so that a 100,000-token broadcast lasts long enough to interrupt.
const SLOW_FAKES: &[&str] = &["--latency", "20ms"];

/// Starts `controllers` controllers on a fresh database, two agents and a front, submits the
/// broadcast tagged `tag` and returns once a fifth of it is delivered.
async fn mid_broadcast(controllers: usize, tag: &str) -> (ProcCluster, String) {
    let url = fresh_database("failover").await;
    let cluster = ProcCluster::start_postgres(BIN, &url, controllers, 2, SLOW_FAKES);
    let id = start_broadcast(&cluster, tag, N, 2 * N / 5).await;
    (cluster, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_the_leader_mid_broadcast_and_the_standby_takes_over() {
    let _serial = SERIAL.lock().await;
    let (mut cluster, id) = mid_broadcast(2, "1a1a1a1a").await;
    let standby = cluster.proc("controller-1");
    assert!(
        standby
            .line_with("standby", 0)
            .contains("another controller leads"),
        "the second controller waits as a standby"
    );
    // Ready as a standby (the database is reachable), and says so on its ops port.
    let standby_ops = cluster.ops_client("controller-1");
    let ready = standby_ops.get("/readyz").await.unwrap();
    assert_eq!(ready.status.as_u16(), 200, "{}", ready.body);
    assert_eq!(ready.body["state"], "standby", "{}", ready.body);
    assert_eq!(ready.body["store"], "postgres", "{}", ready.body);
    let metrics = standby_ops.get_text("/metrics").await.unwrap();
    assert!(
        metrics.contains("\nvolley_controller_leader 0\n")
            && !metrics.contains("volley_notifications_total"),
        "{metrics}"
    );
    let lines = standby.line_count();
    // The front shows which controller answers: the first, in the first term.
    let leader = cluster.client().get("/stat/app").await.unwrap().body["controller"].clone();
    assert_eq!(leader["store"], "postgres", "{leader}");
    assert_eq!(leader["term"], 1, "{leader}");
    let first_addr = leader["address"].as_str().unwrap().to_owned();
    let before = wait_job(&cluster, &id, "the job's progress", |_| true).await;
    let delivered = before["delivered"].as_u64().unwrap_or(0);
    let killed = Instant::now();
    cluster.kill9("controller-0");
    let line = cluster
        .proc("controller-1")
        .line_with("this controller leads now", lines);
    let leads = killed.elapsed();
    wait_job(
        &cluster,
        &id,
        "the job to move under the new leader",
        delivered_at_least(delivered + 2000),
    )
    .await;
    eprintln!(
        "failover: the standby leads {leads:?} after kill -9; the job moves again {:?} after it",
        killed.elapsed()
    );
    assert!(line.contains("term"), "{line}");
    let line = cluster
        .proc("controller-1")
        .line_with("resuming job", lines);
    assert!(line.contains(&id), "{line}");
    // Now the standby, in the next term; the term is a metric, to alert on takeovers.
    let leader = cluster.client().get("/stat/app").await.unwrap().body["controller"].clone();
    assert_eq!(leader["term"], 2, "{leader}");
    assert_ne!(
        leader["address"].as_str(),
        Some(first_addr.as_str()),
        "{leader}"
    );
    let metrics = cluster
        .ops_client("controller-1")
        .get_text("/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains("\nvolley_controller_leader_term 2\n")
            && metrics.contains("\nvolley_controller_leader 1\n"),
        "{metrics}"
    );
    finish_broadcast(cluster, &id, N, "kill -9 leader").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_fenced_and_steps_down_when_it_wakes() {
    let _serial = SERIAL.lock().await;
    let (cluster, id) = mid_broadcast(2, "1b1b1b1b").await;
    let lines = cluster.proc("controller-1").line_count();
    let old_lines = cluster.proc("controller-0").line_count();
    cluster.sigstop("controller-0");
    // Past the failover timeout (5 s by default) the standby takes over and the broadcast goes
    // on without the paused leader.
    cluster
        .proc("controller-1")
        .line_with("this controller leads now", lines);
    let before = wait_job(&cluster, &id, "the new leader to answer", |_| true).await;
    let delivered = before["delivered"].as_u64().unwrap_or(0);
    wait_job(
        &cluster,
        &id,
        "progress under the new leader",
        delivered_at_least(delivered + 1000),
    )
    .await;
    cluster.sigcont("controller-0");
    // Woken, the old leader finds its term over: its writes are refused and it steps down.
    let line = cluster
        .proc("controller-0")
        .line_with("stepping down", old_lines);
    assert!(
        line.contains("another controller"),
        "the old leader learns another leads: {line}"
    );
    finish_broadcast(cluster, &id, N, "SIGSTOP leader").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_postgres_mid_broadcast_pauses_and_resumes() {
    let _serial = SERIAL.lock().await;
    let (cluster, id) = mid_broadcast(1, "1c1c1c1c").await;
    let lines = cluster.proc("controller-0").line_count();
    restart_postgres();
    // The restart reached the controller: its sessions were cut, and it went on.
    cluster
        .proc("controller-0")
        .line_with("PostgreSQL session ended", lines);
    finish_broadcast(cluster, &id, N, "PostgreSQL restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_submissions_sent_during_a_failover_are_accepted_once() {
    let _serial = SERIAL.lock().await;
    let url = fresh_database("failover").await;
    let mut cluster = ProcCluster::start_postgres(BIN, &url, 2, 1, &[]);
    let lines = cluster.proc("controller-1").line_count();
    cluster.kill9("controller-0");
    // Sent at once, while no controller leads: the front holds each keyed submission until the
    // standby takes over and sends it there, so each caller gets its 202.
    let client = cluster.client();
    let submissions = (0..5).map(|i| {
        let client = client.clone();
        async move {
            let token = volley_testkit::tokens::apns_tokens("1d1d1d1d", 5)[i].clone();
            let body = serde_json::json!({
                "title": "during a failover",
                "targets": {"apns": [token]},
            })
            .to_string();
            let key = format!("failover-{i}");
            let headers = [("idempotency-key", key.as_str())];
            let response = client
                .request_with(
                    http::Method::POST,
                    "/v1/apps/shop/notifications",
                    Some(body.clone().into()),
                    &headers,
                )
                .await
                .unwrap();
            assert_eq!(response.status.as_u16(), 202, "{}", response.body);
            // The same request again names the same job: one job per key.
            let again = client
                .request_with(
                    http::Method::POST,
                    "/v1/apps/shop/notifications",
                    Some(body.into()),
                    &headers,
                )
                .await
                .unwrap();
            assert_eq!(again.body["id"], response.body["id"], "{}", again.body);
            response.body["id"].as_str().unwrap().to_owned()
        }
    });
    let ids = futures::future::join_all(submissions).await;
    cluster
        .proc("controller-1")
        .line_with("this controller leads now", lines);
    for id in &ids {
        let status = wait_job(&cluster, id, "the job to finish", finished).await;
        assert_eq!(status["delivered"], 1, "{status}");
    }
    let (apns, _) = cluster.fake_stats().await;
    assert_eq!(apns["duplicate_tokens"].as_u64(), Some(0), "{apns}");
    cluster.stop();
}
