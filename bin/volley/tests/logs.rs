//! Logs at the default level are about jobs and nodes, not about RPCs or notifications: real
//! processes run a broadcast, small jobs and many status polls, and each role's new lines
//! are counted.

use volley_testkit::jobs::{broadcast, finished, wait_job};
use volley_testkit::procs::ProcCluster;
use volley_testkit::tokens::fcm_token;

const BIN: &str = env!("CARGO_BIN_EXE_volley");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_costs_one_line_per_role_and_rpcs_none() {
    let cluster = ProcCluster::start(BIN, 1, &[]);
    let roles = ["front-0", "controller", "agent-0"];
    let before: Vec<usize> = roles
        .iter()
        .map(|role| cluster.proc(role).line_count())
        .collect();
    let client = cluster.client();

    // 20 single-notification jobs: no line anywhere at the default level.
    let mut ids = Vec::new();
    for i in 0..20 {
        let body =
            serde_json::json!({"body": "hi", "targets": {"fcm": [fcm_token("0f0f0f0f", i)]}});
        let response = client
            .post("/v1/apps/shop/notifications", body.to_string())
            .await
            .unwrap();
        assert_eq!(response.status.as_u16(), 202, "{}", response.body);
        ids.push(response.body["id"].as_str().unwrap().to_owned());
    }
    // One broadcast of 3,000 notifications: one line on the front (accepted), one on the
    // controller (finished, with its counts).
    let response = client
        .post("/v1/apps/shop/notifications", broadcast("0e0e0e0e", 1_500))
        .await
        .unwrap();
    assert_eq!(response.status.as_u16(), 202, "{}", response.body);
    ids.push(response.body["id"].as_str().unwrap().to_owned());
    // Each poll is a status RPC from the front to the controller.
    for id in &ids {
        wait_job(&cluster, id, "the job to finish", finished).await;
    }
    let marker = |role: &str| match role {
        "front-0" => "job accepted",
        _ => "job finished",
    };
    for role in ["front-0", "controller"] {
        cluster.proc(role).line_with(marker(role), 0);
    }

    for (role, before) in roles.iter().zip(before) {
        // Credential refreshes (an FCM access token, an APNs provider token) are node events,
        // logged about once an hour whatever the traffic; the first one happens here.
        let lines: Vec<String> = cluster.proc(role).lines.lock().unwrap()[before..]
            .iter()
            .filter(|line| {
                !line.contains("access token fetched") && !line.contains("provider token")
            })
            .cloned()
            .collect();
        let expected = usize::from(*role != "agent-0");
        assert_eq!(
            lines.len(),
            expected,
            "{role} wrote {} lines for 21 jobs and their status polls:\n{}",
            lines.len(),
            lines.join("\n")
        );
        if expected == 1 {
            assert!(lines[0].contains(marker(role)), "{role}: {}", lines[0]);
        }
    }
    cluster.stop();
}
