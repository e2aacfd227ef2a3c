//! Routing by what agents declare, as real processes: an app no agent serves and a platform
//! an agent has no credentials for neither stall the other apps' jobs nor spin the
//! controller; they are refused (`409 no_credentials`) by default, wait with a reason when
//! `controller.accept_unserved` is on, and finish once an agent that declares them joins.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use volley_testkit::http::FrontClient;
use volley_testkit::jobs::{finished, wait_for_job, wait_job};
use volley_testkit::procs::{ProcCluster, API_KEY, WAIT};
use volley_testkit::tokens::{apns_tokens as apns, fcm_tokens as fcm};

const BIN: &str = env!("CARGO_BIN_EXE_volley");

/// The second app's key; the app itself is known to the front but to no agent at first.
const OTHER_KEY: &str = "routing-test-other-key-0123456789";

/// The cluster's configuration with app "other" added (same fakes and credentials).
fn with_other_app(config: &str) -> String {
    let shop = &config[config.find("[[apps]]").expect("an app")..];
    let other = shop
        .replacen("name = \"shop\"", "name = \"other\"", 1)
        .replacen(API_KEY, OTHER_KEY, 1);
    format!("{config}\n{other}")
}

/// The cluster's configuration with the shop app's FCM credentials removed.
fn apns_only(config: &str) -> String {
    config[..config.find("[apps.fcm]").expect("FCM credentials")].to_owned()
}

fn write(cluster: &ProcCluster, name: &str, text: &str) -> PathBuf {
    let path = cluster.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// CPU time (user + system) a process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may hold spaces; the fields after it are plain.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The share of one core the controller uses over `window` while the cluster is idle.
fn controller_cpu(cluster: &ProcCluster, window: Duration) -> f64 {
    let pid = cluster.proc("controller").child.id();
    let ticks_per_second = 100.0;
    let before = cpu_ticks(pid);
    let started = Instant::now();
    std::thread::sleep(window);
    let used = (cpu_ticks(pid) - before) as f64 / ticks_per_second;
    used / started.elapsed().as_secs_f64()
}

/// Stderr lines of `proc` so far that contain `text`.
fn lines_with(cluster: &ProcCluster, proc: &str, text: &str) -> usize {
    let lines = cluster.proc(proc).lines.lock().unwrap();
    lines.iter().filter(|line| line.contains(text)).count()
}

/// A plain HTTP/1.1 GET, for the Prometheus text.
fn get_text(base: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text
}

async fn post(client: &FrontClient, app: &str, targets: Value) -> (u16, Value) {
    let body = json!({"title": "routing", "targets": targets}).to_string();
    let response = client
        .post(&format!("/v1/apps/{app}/notifications"), body)
        .await
        .unwrap();
    (response.status.as_u16(), response.body)
}

fn state(status: &Value) -> &str {
    status["state"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unserved_apps_and_platforms_neither_stall_others_nor_spin_the_controller() {
    // Fakes, a controller and a front of app "shop" only; no agent yet.
    let mut cluster = ProcCluster::start(BIN, 0, &[]);
    let base = std::fs::read_to_string(&cluster.config).unwrap();
    let front_config = write(&cluster, "front.toml", &with_other_app(&base));
    let apns_agent_config = write(&cluster, "agent-apns.toml", &apns_only(&base));
    let full_agent_config = write(&cluster, "agent-full.toml", &with_other_app(&base));

    // One agent: shop on APNs only. A front that also knows app "other".
    let agent = cluster.spawn_node(
        &["agent", "--controller", &cluster.controller_addr],
        &apns_agent_config,
    );
    agent.wait_for("registered with the controller");
    cluster.procs.insert("agent-apns".into(), agent);
    let front = cluster.spawn_node(
        &["front", "--controller", &cluster.controller_addr],
        &front_config,
    );
    cluster.front_url = format!("http://{}", front.wait_for("\"addr\":\""));
    cluster.procs.insert("front-both".into(), front);
    let shop = cluster.client();
    let other = FrontClient::new(cluster.front_url.clone(), Some(OTHER_KEY.into()));

    // By default, what no agent ever declared is refused, naming why.
    let (code, body) = post(&other, "other", json!({"apns": apns("0a0a0a0a", 3)})).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["error"]["code"], "no_credentials", "{body}");
    let (code, body) = post(&shop, "shop", json!({"fcm": fcm("0b0b0b0b", 3)})).await;
    assert_eq!(code, 409, "{body}");
    // The served app's jobs go on: a small one and a broadcast.
    let (code, body) = post(&shop, "shop", json!({"apns": apns("0c0c0c0c", 3)})).await;
    assert_eq!(code, 202, "{body}");
    let small = body["id"].as_str().unwrap().to_owned();
    let (code, body) = post(&shop, "shop", json!({"apns": apns("0d0d0d0d", 20_000)})).await;
    assert_eq!(code, 202, "{body}");
    let broadcast = body["id"].as_str().unwrap().to_owned();
    for id in [&small, &broadcast] {
        let status = wait_job(&cluster, id, "the served app's job", finished).await;
        assert_eq!(state(&status), "done", "{status}");
        assert_eq!(status["delivered"], status["accepted"], "{status}");
    }

    // With controller.accept_unserved, such jobs wait, with a reason, and cost nothing.
    let agent_lines = cluster.proc("agent-apns").line_count();
    cluster.kill9("controller");
    // The controller now knows app "other" too (an agent may serve only apps of the
    // controller's configuration), and accepts jobs no agent serves yet.
    let accepting = with_other_app(&base).replacen(
        "[controller]\n",
        "[controller]\naccept_unserved = true\n",
        1,
    );
    std::fs::write(&cluster.config, accepting).unwrap();
    cluster.start_controller();
    cluster
        .proc("agent-apns")
        .wait_for_from("registered with the controller", agent_lines);
    let (code, body) = loop {
        // The front and the agent find the restarted controller by themselves.
        let (code, body) = post(&other, "other", json!({"apns": apns("1a1a1a1a", 3)})).await;
        if code != 503 {
            break (code, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, 202, "{body}");
    let unserved_app = body["id"].as_str().unwrap().to_owned();
    let (code, body) = post(&shop, "shop", json!({"fcm": fcm("1b1b1b1b", 3)})).await;
    assert_eq!(code, 202, "{body}");
    let unserved_platform = body["id"].as_str().unwrap().to_owned();
    let (code, body) = post(&shop, "shop", json!({"apns": apns("1c1c1c1c", 3)})).await;
    assert_eq!(code, 202, "{body}");
    let served = body["id"].as_str().unwrap().to_owned();
    let status = wait_job(&cluster, &served, "the served job", finished).await;
    assert_eq!(status["delivered"], 3, "{status}");

    for (client, id, reason) in [
        (
            &other,
            &unserved_app,
            "waiting_for_agent: no agent serves app \"other\" for apns",
        ),
        (
            &shop,
            &unserved_platform,
            "waiting_for_agent: no agent serves app \"shop\" for fcm",
        ),
    ] {
        let status = client.get(&format!("/v1/jobs/{id}")).await.unwrap().body;
        assert_eq!(state(&status), "queued", "{status}");
        assert_eq!(status["waiting"], reason, "{status}");
    }
    let stat = shop.get("/stat/app").await.unwrap().body;
    let waiting: Vec<&Value> = stat["queues"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|queue| queue["waiting_for_agent"] == true)
        .collect();
    assert_eq!(waiting.len(), 2, "{stat}");
    let metrics = get_text(&cluster.ops_url("controller"), "/metrics");
    assert!(
        metrics.contains("volley_app_queue_waiting_for_agent{app=\"other\",platform=\"apns\"} 1"),
        "{metrics}"
    );

    let cpu = controller_cpu(&cluster, Duration::from_secs(3));
    println!(
        "controller CPU with two queues waiting for an agent: {:.1}%",
        cpu * 100.0
    );
    assert!(
        cpu < 0.10,
        "the controller used {:.0}% of a core while idle",
        cpu * 100.0
    );
    // One warning per queue when it starts waiting, not one per attempt.
    assert_eq!(
        lines_with(&cluster, "controller", "its chunks wait for one"),
        2
    );
    assert_eq!(
        lines_with(&cluster, "controller", "agent refused a chunk"),
        0
    );

    // An agent that declares both joins: the waiting jobs finish, and each queue logs once
    // that it resumes.
    let agent = cluster.spawn_node(
        &["agent", "--controller", &cluster.controller_addr],
        &full_agent_config,
    );
    agent.wait_for("registered with the controller");
    cluster.procs.insert("agent-full".into(), agent);
    for (id, client) in [(&unserved_app, &other), (&unserved_platform, &shop)] {
        let status = wait_for_job(client, id, WAIT).await.unwrap();
        assert_eq!(status["delivered"], 3, "{status}");
        assert!(status.get("waiting").is_none(), "{status}");
    }
    assert_eq!(lines_with(&cluster, "controller", "its chunks resume"), 2);
    cluster.stop();
}
