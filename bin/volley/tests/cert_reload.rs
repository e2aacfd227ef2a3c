//! Certificate renewal as operators do it, against real processes: new files moved over the
//! old ones in mid-broadcast, SIGHUP for the front and the controller, nothing for the agent
//! (it sees the files change). New links present the new certificates, the expiries the
//! front reports follow, and the broadcast finishes with nothing lost. Files that do not make
//! a valid identity are refused and the node keeps its certificate.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use volley_contracts::tls::{certificate_not_after, ClusterCa, NodeIdentity, NodeRole};
use volley_testkit::jobs::{check_no_loss, finished, start_broadcast, submit_broadcast, wait_job};
use volley_testkit::procs::{metric_value, tls_connect, ProcCluster, WAIT};
use volley_testkit::wait::wait_until;

const BIN: &str = env!("CARGO_BIN_EXE_volley");

/// Tokens per platform.
const N: u64 = 20_000;

/// Issues `role` a new certificate valid for `days` and moves it over the node's files, as
/// cert-manager or certbot do (write aside, then rename); returns the new identity.
fn renew(cluster: &ProcCluster, ca: &ClusterCa, role: NodeRole, days: u64) -> NodeIdentity {
    let identity = ca
        .issue(role, role.as_str(), Duration::from_secs(days * 24 * 3600))
        .unwrap();
    let aside = tempfile::tempdir_in(cluster.dir.path()).unwrap();
    let (cert, key) = identity.write(aside.path()).unwrap();
    let (cert_path, key_path) = cluster.certificate(role);
    // The key first: a node that looks between the two renames sees the old certificate with
    // the new key, which it refuses, and takes both at its next look.
    std::fs::rename(key, key_path).unwrap();
    std::fs::rename(cert, cert_path).unwrap();
    identity
}

/// The certificate a node presents to a new link now, and when it expires.
async fn presented_not_after(addr: &str, client: &NodeIdentity, server: NodeRole) -> i64 {
    let tls = tls_connect(addr, client, server).await.unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    certificate_not_after(&leaf).unwrap()
}

async fn get(cluster: &ProcCluster, path: &str) -> Value {
    cluster.client().get(path).await.unwrap().body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificates_are_used_without_dropping_work_and_bad_ones_are_refused() {
    let cluster = ProcCluster::start(BIN, 1, &["--latency", "20ms"]);
    let ca = cluster.ca();
    let before = get(&cluster, "/stat/runtime").await["certificate_expires_at"]
        .as_i64()
        .expect("the front reports its certificate's expiry");

    let id = start_broadcast(&cluster, "0e0e0e0e", N, N / 5).await;

    let front = renew(&cluster, &ca, NodeRole::Front, 30);
    let controller = renew(&cluster, &ca, NodeRole::Controller, 40);
    let agent = renew(&cluster, &ca, NodeRole::Agent, 50);
    assert_ne!(front.not_after(), before);
    cluster.sighup("front-0");
    cluster.sighup("controller");
    // The agent gets no signal: it notices the files changed.

    for (name, identity) in [
        ("front-0", &front),
        ("controller", &controller),
        ("agent-0", &agent),
    ] {
        let line = cluster.proc(name).line_with("link certificate reloaded", 0);
        // The front and the controller may see the files change before the signal.
        if name == "agent-0" {
            assert!(line.contains("file change"), "{name}: {line}");
        }
        assert_eq!(identity.role().as_str(), name.trim_end_matches("-0"));
    }
    wait_until(WAIT, "the expiries the front reports to follow", || async {
        let runtime = get(&cluster, "/stat/runtime").await;
        let app = get(&cluster, "/stat/app").await;
        runtime["certificate_expires_at"].as_i64() == Some(front.not_after())
            && app["controller_certificate_expires_at"].as_i64() == Some(controller.not_after())
            && app["agents"][0]["certificate_expires_at"].as_i64() == Some(agent.not_after())
    })
    .await
    .unwrap();
    // The front's own expiry on its /metrics; the controller's and the agents' on the
    // controller's ops port.
    let front_metrics = cluster.client().get_text("/metrics").await.unwrap();
    let line = format!(
        "volley_front_certificate_expiry_timestamp_seconds {}",
        front.not_after()
    );
    assert!(
        front_metrics.contains(&line),
        "{line} not in\n{front_metrics}"
    );
    let metrics = cluster
        .ops_client("controller")
        .get_text("/metrics")
        .await
        .unwrap();
    let line = format!(
        "volley_certificate_expiry_timestamp_seconds{{role=\"controller\",name=\"\"}} {}",
        controller.not_after()
    );
    assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    // An agent is named as it registered (its host name and address by default).
    assert!(
        metrics.lines().any(|line| line.starts_with(
            "volley_certificate_expiry_timestamp_seconds{role=\"agent\",name=\"agent@"
        ) && line.ends_with(&format!(" {}", agent.not_after()))),
        "{metrics}"
    );

    // New links get the new certificates; the links already open carried the broadcast on.
    let outsider = ca
        .issue(NodeRole::Front, "probe", Duration::from_secs(3600))
        .unwrap();
    assert_eq!(
        presented_not_after(&cluster.controller_addr, &outsider, NodeRole::Controller).await,
        controller.not_after()
    );
    let agent_addr = get(&cluster, "/stat/app").await["agents"][0]["addr"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        presented_not_after(&agent_addr, &outsider, NodeRole::Agent).await,
        agent.not_after()
    );
    let status = wait_job(&cluster, &id, "the broadcast to finish", finished).await;
    check_no_loss(&cluster, &status, N).await;

    // A key that is not the certificate's (a renewal half done): refused, the front keeps
    // its certificate and goes on serving.
    let stray = ca
        .issue(NodeRole::Front, "front", Duration::from_secs(3600))
        .unwrap();
    let aside = tempfile::tempdir_in(cluster.dir.path()).unwrap();
    let (_, stray_key) = stray.write(aside.path()).unwrap();
    std::fs::rename(stray_key, cluster.certificate(NodeRole::Front).1).unwrap();
    let from = cluster.proc("front-0").line_count();
    cluster.sighup("front-0");
    let line = cluster
        .proc("front-0")
        .line_with("link certificate not reloaded", from);
    let key_file = cluster.certificate(NodeRole::Front).1;
    assert!(
        line.contains(&*file_name(&key_file)) && line.contains("is not"),
        "{line}"
    );
    let metrics = cluster.client().get_text("/metrics").await.unwrap();
    let failures = metric_value(&metrics, "volley_front_certificate_reload_failures_total");
    assert!(failures.is_some_and(|n| n >= 1.0), "{metrics}");
    assert_eq!(
        get(&cluster, "/stat/runtime").await["certificate_expires_at"].as_i64(),
        Some(front.not_after())
    );
    let id = submit_broadcast(&cluster, "0f0f0f0f", 10).await;
    let status = wait_job(&cluster, &id, "a job after the refused reload", finished).await;
    assert_eq!(status["delivered"].as_u64(), Some(20), "{status}");
    cluster.stop();
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}
