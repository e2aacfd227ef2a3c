//! The links between nodes as an outsider or a misconfigured node meets them, against real
//! processes: no link without a certificate of the cluster's CA, each role limited to its
//! own calls, frames bounded before they are buffered, and no role starting unsecured unless
//! told to.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use volley_contracts::tls::{ClusterCa, NodeRole, NODE_VALIDITY};
use volley_contracts::{ErrorCode, Links, Platform, ServedApp, MAX_LINKS_PER_PEER};
use volley_testkit::procs::{metric_value, spawn_with, tls_connect, ProcCluster, WAIT};
use volley_testkit::wait::wait_until;

const BIN: &str = env!("CARGO_BIN_EXE_volley");

fn links(ca: &ClusterCa, role: NodeRole, name: &str) -> Links {
    Links::tls(ca.issue(role, name, NODE_VALIDITY).unwrap()).unwrap()
}

fn context() -> tarpc::context::Context {
    let mut context = tarpc::context::current();
    context.deadline = std::time::Instant::now() + Duration::from_secs(5);
    context
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_clusters_nodes_link_and_each_makes_only_its_own_calls() {
    let cluster = ProcCluster::start(BIN, 1, &[]);
    let ca = cluster.ca();
    let addr = cluster.controller_addr.clone();

    // No certificate: the TLS handshake fails, no call gets through.
    let plain = volley_contracts::connect_controller(addr.as_str(), &Links::Insecure)
        .await
        .unwrap();
    assert!(plain.stats(context()).await.is_err());
    // A certificate of another CA, or an expired one of this CA: refused at the handshake.
    let stranger = links(&ClusterCa::generate().unwrap(), NodeRole::Front, "x");
    assert!(
        volley_contracts::connect_controller(addr.as_str(), &stranger)
            .await
            .is_err()
    );
    let expired = Links::tls(ca.issue_expired(NodeRole::Front, "old").unwrap()).unwrap();
    let refused = match volley_contracts::connect_controller(addr.as_str(), &expired).await {
        Err(_) => true,
        Ok(client) => client.stats(context()).await.is_err(),
    };
    assert!(refused, "an expired certificate got a call through");

    // A front may read stats and submit, not register as an agent.
    let front =
        volley_contracts::connect_controller(addr.as_str(), &links(&ca, NodeRole::Front, "f9"))
            .await
            .unwrap();
    let stats = front.stats(context()).await.unwrap().unwrap();
    let agent_addr = stats.agents[0].addr.clone();
    let info = volley_contracts::AgentInfo {
        name: "impostor".into(),
        addr: "127.0.0.1:9".into(),
        apps: vec![ServedApp {
            app: "shop".into(),
            platforms: Platform::ALL.to_vec(),
        }],
        window: 1_000_000,
        ops_addr: String::new(),
    };
    let denied = front
        .register(context(), info.clone())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(denied.code, ErrorCode::PermissionDenied, "{denied:?}");

    // An agent may register, not submit or read jobs.
    let agent =
        volley_contracts::connect_controller(addr.as_str(), &links(&ca, NodeRole::Agent, "a9"))
            .await
            .unwrap();
    let job = volley_testkit::controller::job(&[volley_testkit::tokens::apns_token("a9", 1)], None);
    let denied = agent.submit(context(), job).await.unwrap().unwrap_err();
    assert_eq!(denied.code, ErrorCode::PermissionDenied, "{denied:?}");
    assert!(agent.stats(context()).await.unwrap().is_err());
    // An agent serves only apps of the controller's configuration.
    let stranger_app = volley_contracts::AgentInfo {
        name: "a9".into(),
        apps: vec![ServedApp {
            app: "bank".into(),
            platforms: Platform::ALL.to_vec(),
        }],
        ..info.clone()
    };
    let denied = agent
        .register(context(), stranger_app)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(denied.code, ErrorCode::PermissionDenied, "{denied:?}");
    assert!(denied.message.contains("bank"), "{denied:?}");
    // Nor renew another agent's leases: a heartbeat counts only from the certificate its
    // agent registered with.
    let stolen = agent
        .heartbeat(context(), stats.agents[0].id, Vec::new(), None)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(stolen.code, ErrorCode::PermissionDenied, "{stolen:?}");

    // Only the controller may have an agent deliver: a front's certificate gets nothing sent.
    let to_agent =
        volley_contracts::connect_agent(agent_addr.as_str(), &links(&ca, NodeRole::Front, "f8"))
            .await
            .unwrap();
    let answers = to_agent.deliver(context(), Vec::new()).await.unwrap();
    assert!(answers.is_empty());
    let (apns_before, _) = cluster.fake_stats().await;
    let chunk = volley_contracts::Chunk {
        id: volley_contracts::ChunkId {
            job: volley_contracts::JobId::new(),
            index: 0,
        },
        app: "shop".into(),
        render: volley_contracts::Render::Apns(volley_testkit::controller::apns_render()),
        tokens: [volley_testkit::tokens::apns_token("f8", 1)]
            .iter()
            .collect(),
        positions: Vec::new(),
        hand_back: true,
        epoch: 1,
        collapse_id: None,
    };
    let answers = to_agent.deliver(context(), vec![chunk]).await.unwrap();
    assert_eq!(answers.len(), 1);
    let denied = answers[0].as_ref().unwrap_err();
    assert_eq!(denied.code, ErrorCode::PermissionDenied, "{denied:?}");
    let (apns_after, _) = cluster.fake_stats().await;
    assert_eq!(
        apns_before["requests"], apns_after["requests"],
        "nothing was sent"
    );

    // Counted where operators look: the controller's refusals on its ops port, the front's
    // certificate on the front's /metrics.
    let text = cluster
        .ops_client("controller")
        .get_text("/metrics")
        .await
        .unwrap();
    let front_text = cluster.client().get_text("/metrics").await.unwrap();
    let value = |name: &str| -> u64 {
        metric_value(&text, name)
            .or_else(|| metric_value(&front_text, name))
            .unwrap_or_else(|| panic!("{name} in {text}\n{front_text}")) as u64
    };
    assert!(
        value("volley_controller_links_refused_total") >= 2,
        "{text}"
    );
    assert!(value("volley_controller_calls_denied_total") >= 3, "{text}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(value("volley_front_certificate_expiry_timestamp_seconds") > now + 300 * 86_400);
    let runtime = cluster.client().get("/stat/runtime").await.unwrap().body;
    assert!(
        runtime["certificate_expires_at"].as_u64().unwrap() > now,
        "{runtime}"
    );

    // The cluster still works.
    let response = cluster
        .client()
        .post(
            "/v1/apps/shop/notifications",
            volley_testkit::jobs::broadcast("0a9a0a9a", 50),
        )
        .await
        .unwrap();
    assert_eq!(response.status.as_u16(), 202, "{}", response.body);
    cluster.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_is_bounded_before_it_is_trusted() {
    let cluster = ProcCluster::start(BIN, 0, &[]);
    let ca = cluster.ca();
    let controller_pid = cluster.proc("controller").child.id();
    let before = rss_bytes(controller_pid);
    let dial = |role: NodeRole| {
        let identity = ca.issue(role, "big", NODE_VALIDITY).unwrap();
        let addr = cluster.controller_addr.clone();
        async move {
            tls_connect(&addr, &identity, NodeRole::Controller)
                .await
                .unwrap()
        }
    };
    // An agent's frames are bounded well below this declared 200 MiB, a front's below this
    // declared 600 MiB: the controller closes the link at the length, without reading (or
    // reserving) the rest.
    for (role, declared) in [
        (NodeRole::Agent, 200u32 << 20),
        (NodeRole::Front, 600 << 20),
    ] {
        let mut tls = dial(role).await;
        tls.write_all(&declared.to_be_bytes()).await.unwrap();
        tls.write_all(&[0u8; 1024]).await.unwrap();
        tls.flush().await.unwrap();
        let mut buffer = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buffer))
            .await
            .unwrap_or_else(|_| panic!("the controller closes a {role}'s oversize frame"));
        assert!(matches!(closed, Ok(0) | Err(_)), "{role}: {closed:?}");
    }
    // A front's frames may be large for a submission only: a `stats` call declared at 100 MiB
    // is refused as soon as its first bytes name it.
    let mut tls = dial(NodeRole::Front).await;
    let stats = tarpc::ClientMessage::Request(tarpc::Request {
        context: context(),
        id: 1,
        message: volley_contracts::ControllerRequest::Stats {},
    });
    let stats = bincode::Options::serialize(bincode::DefaultOptions::new(), &stats).unwrap();
    tls.write_all(&(100u32 << 20).to_be_bytes()).await.unwrap();
    tls.write_all(&stats).await.unwrap();
    let _ = tls.write_all(&[0u8; 64 << 10]).await;
    let _ = tls.flush().await;
    let mut buffer = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buffer))
        .await
        .expect("the controller closes a large stats call");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");

    // A front's frame within its bound (zeros read as a `submit`), cut off after 96 MiB: the
    // controller buffered it, and gives the memory back once the peer is gone.
    let mut tls = dial(NodeRole::Front).await;
    tls.write_all(&(160u32 << 20).to_be_bytes()).await.unwrap();
    let block = vec![0u8; 1 << 20];
    for _ in 0..96 {
        tls.write_all(&block).await.unwrap();
    }
    tls.flush().await.unwrap();
    wait_until(WAIT, "the controller to buffer the frame", || async {
        rss_bytes(controller_pid) > before + (64 << 20)
    })
    .await
    .unwrap();
    drop(tls);
    wait_until(
        WAIT,
        "the controller's memory back after the peer left",
        || async { rss_bytes(controller_pid) < before + (24 << 20) },
    )
    .await
    .unwrap_or_else(|error| {
        panic!(
            "{error}: RSS {} MiB, {} MiB before",
            rss_bytes(controller_pid) >> 20,
            before >> 20
        )
    });

    // One address holds at most MAX_LINKS_PER_PEER links, handshakes included: past that the
    // controller closes each new one at accept (the front's link from 127.0.0.1 counts too).
    let mut idle = Vec::new();
    for _ in 0..MAX_LINKS_PER_PEER + 8 {
        idle.push(
            tokio::net::TcpStream::connect(cluster.controller_addr.as_str())
                .await
                .unwrap(),
        );
    }
    // Read the last 16 at once: a link closed at accept reads its end at once, a held one
    // reads nothing until the timeout.
    let reads = idle[MAX_LINKS_PER_PEER - 8..]
        .iter_mut()
        .map(|tcp| async move {
            let mut byte = [0u8; 1];
            tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut byte)).await
        });
    let closed_at_accept = futures::future::join_all(reads)
        .await
        .into_iter()
        .filter(|read| matches!(read, Ok(Ok(0) | Err(_))))
        .count();
    assert!(
        (8..=16).contains(&closed_at_accept),
        "{closed_at_accept} of the last 16 links closed at accept"
    );
    // Gone, they give their places back: a node from the same address links again.
    drop(idle);
    let front = links(&ca, NodeRole::Front, "after");
    wait_until(WAIT, "a link once the idle ones are gone", || async {
        match volley_contracts::connect_controller(cluster.controller_addr.as_str(), &front).await {
            Ok(client) => client.stats(context()).await.is_ok_and(|r| r.is_ok()),
            Err(_) => false,
        }
    })
    .await
    .unwrap();
    cluster.stop();
}

#[test]
fn a_role_without_certificates_refuses_to_start_unless_told_links_are_insecure() {
    let cluster = ProcCluster::start(BIN, 0, &[]);
    // The cluster's configuration names the CA; without a certificate of its own, a node
    // does not start, and says what to do.
    let listen = ["controller", "--listen", "127.0.0.1:0"];
    let mut proc = spawn_with(
        std::path::Path::new(BIN),
        &listen,
        Some(&cluster.config),
        "info",
        &[],
    );
    let status = proc.child.wait().unwrap();
    assert!(!status.success());
    // The error line, once the stderr reader has it.
    let text = proc.line_with("cluster.cert_file", 0);
    for needle in [
        "cluster.cert_file",
        "volley certs issue --role controller",
        "--insecure-links",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    // Told so, it starts on plain links, and warns.
    let data = cluster.dir.path().join("insecure-data");
    let args = [
        "controller",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--insecure-links",
    ];
    let proc = spawn_with(
        std::path::Path::new(BIN),
        &args,
        Some(&cluster.config),
        "info",
        &[],
    );
    let warning = proc.line_with("NOT secured", 0);
    assert!(warning.contains("WARN"), "{warning}");
    let mut proc = proc;
    let _ = proc.child.kill();
    let _ = proc.child.wait();
    cluster.stop();
}

/// A process's resident memory, from `/proc`.
fn rss_bytes(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS:")
}

/// A `/proc/PID/status` figure in bytes (`VmRSS:`, `VmHWM:`).
fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/PID/status"));
    kib * 1024
}

/// A large submission's tokens cross the front without being copied: parsed as spans of the
/// body and moved within it, then written to the controller as a segment of the frame
/// (`frames.rs`). Each copy of the tokens would add about the body's size to the front's
/// peak memory; before, a native request grew it by 7.5 times its body (93.8 MB for 12.5 MB),
/// now by 1.4 times. The same holds for gorush's request shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_submission_is_held_about_once_by_the_front() {
    let cluster = ProcCluster::start(BIN, 1, &[]);
    let front = cluster
        .procs
        .iter()
        .find(|(name, _)| name.starts_with("front"))
        .map(|(_, proc)| proc.child.id())
        .expect("the cluster has a front");
    let apns = volley_testkit::tokens::apns_tokens("b16b0d1e", 100_000);
    let fcm = volley_testkit::tokens::fcm_tokens("b16b0d1e", 100_000);
    let native = serde_json::json!({"title": "t", "targets": {"apns": apns, "fcm": fcm}});
    let gorush = serde_json::json!({"notifications": [
        {"tokens": apns, "platform": 1, "message": "m"},
        {"tokens": fcm, "platform": 2, "message": "m"},
    ]});
    // A first large request starts what any first one would (a thread of the blocking pool
    // and its heap), which is not what this measures.
    let warm_up = serde_json::json!({"title": "t", "targets": {"apns": &apns[..5_000]}});
    let mut jobs = Vec::new();
    for (path, body) in [
        ("/v1/apps/shop/notifications", warm_up),
        ("/v1/apps/shop/notifications", native),
        ("/api/push", gorush),
    ] {
        let body = body.to_string();
        let size = body.len() as u64;
        // The high-water mark starts again from what is resident now.
        std::fs::write(format!("/proc/{front}/clear_refs"), "5").unwrap();
        let before = status_bytes(front, "VmHWM:");
        let response = cluster.client().post(path, body).await.unwrap();
        assert!(response.status.is_success(), "{path}: {}", response.body);
        let grown = status_bytes(front, "VmHWM:").saturating_sub(before);
        assert!(
            size < 1_000_000 || grown < 2 * size,
            "{path}: the front's peak memory grew by {grown} bytes for a {size}-byte body"
        );
        match response.body["job_ids"].as_array() {
            Some(ids) => jobs.extend(ids.iter().map(|id| id.as_str().unwrap().to_owned())),
            None => jobs.push(response.body["id"].as_str().unwrap().to_owned()),
        }
    }
    let mut delivered = 0;
    for id in jobs {
        let status = volley_testkit::jobs::wait_job(&cluster, &id, "final", |status| {
            volley_testkit::jobs::finished(status)
        })
        .await;
        volley_testkit::jobs::assert_balanced(&status);
        delivered += volley_testkit::jobs::count(&status, "delivered");
    }
    assert_eq!(delivered, 405_000);
    cluster.stop();
}
