//! The real `volley` binary as separate processes: fake APNs, fake FCM, a controller, two
//! agents and a front, each its own process on ephemeral ports, talking over TCP.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use volley::http::FrontClient;

const BIN: &str = env!("CARGO_BIN_EXE_volley");
const WAIT: Duration = Duration::from_secs(60);

/// Child processes, killed when the test ends however it ends.
#[derive(Default)]
struct Processes(Vec<(String, Child)>);

impl Processes {
    /// Starts `volley args…`; returns a channel of its stderr lines.
    fn spawn(
        &mut self,
        name: &str,
        args: &[&str],
        config: Option<&Path>,
    ) -> mpsc::Receiver<String> {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info");
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.0.push((name.to_owned(), child));
        rx
    }

    /// Sends SIGTERM to every process, newest first, and waits for each to exit.
    fn terminate_all(&mut self) {
        while let Some((name, mut child)) = self.0.pop() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + WAIT;
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        assert!(status.success(), "{name} exited with {status}");
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        let _ = child.kill();
                        panic!("{name} did not stop after SIGTERM");
                    }
                }
            }
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reads lines until one contains `marker`; returns the text after it, up to whitespace.
fn read_after(lines: &mpsc::Receiver<String>, marker: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no line with {marker:?} within {WAIT:?}"));
        if let Some(position) = line.find(marker) {
            let rest = &line[position + marker.len()..];
            return rest
                .split(|c: char| c.is_whitespace() || c == '"' || c == ',' || c == '}')
                .find(|s| !s.is_empty())
                .unwrap_or_default()
                .to_owned();
        }
    }
}

/// Keeps reading a process's stderr so its pipe never fills.
fn drain(lines: mpsc::Receiver<String>) {
    std::thread::spawn(move || for _ in lines {});
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_real_processes_delivers_a_broadcast() {
    let dir = tempfile::tempdir().unwrap();
    let mut processes = Processes::default();

    let apns_ca = dir.path().join("apns-ca.pem");
    let lines = processes.spawn(
        "fake-apns",
        &[
            "fake-apns",
            "--listen",
            "127.0.0.1:0",
            "--ca-out",
            apns_ca.to_str().unwrap(),
            "--stats-listen",
            "127.0.0.1:0",
        ],
        None,
    );
    let apns_endpoint = read_after(&lines, "listening on ");
    let apns_stats = read_after(&lines, "stats: ");
    drain(lines);

    let fcm_ca = dir.path().join("fcm-ca.pem");
    let oauth_key = dir.path().join("oauth-public.pem");
    std::fs::write(
        &oauth_key,
        volley_fake::keys::TEST_SERVICE_ACCOUNT_PUBLIC_KEY_PEM,
    )
    .unwrap();
    let lines = processes.spawn(
        "fake-fcm",
        &[
            "fake-fcm",
            "--listen",
            "127.0.0.1:0",
            "--ca-out",
            fcm_ca.to_str().unwrap(),
            "--stats-listen",
            "127.0.0.1:0",
            "--project",
            "proc-test",
            "--oauth-public-key",
            oauth_key.to_str().unwrap(),
        ],
        None,
    );
    let fcm_endpoint = read_after(&lines, "listening on ");
    let fcm_stats = read_after(&lines, "stats: ");
    drain(lines);

    let key = volley_fake::keys::generate_apns_key();
    let key_file = dir.path().join("AuthKey.p8");
    std::fs::write(&key_file, &key.private_pem).unwrap();
    let service_account = dir.path().join("service-account.json");
    std::fs::write(
        &service_account,
        volley_fake::keys::test_service_account(&format!("{fcm_endpoint}/token"), "proc-test"),
    )
    .unwrap();
    let api_key = "proc-test-key-0123456789";
    let config = dir.path().join("volley.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[log]
format = "json"

[front]
listen = "127.0.0.1:0"
default_app = "shop"

[controller]
listen = "127.0.0.1:0"
chunk_size = 250

[agent]
listen = "127.0.0.1:0"
heartbeat_interval = "200ms"

[[apps]]
name = "shop"
api_keys = ["{api_key}"]
[apps.apns]
endpoint = "{apns_endpoint}"
topic = "com.example.shop"
key_file = "{key_file}"
key_id = "KEYID12345"
team_id = "TEAMID1234"
ca_file = "{apns_ca}"
[apps.fcm]
service_account_file = "{service_account}"
endpoint = "{fcm_endpoint}"
ca_file = "{fcm_ca}"
allowed_token_uris = ["{fcm_endpoint}/token"]
"#,
            key_file = key_file.display(),
            apns_ca = apns_ca.display(),
            service_account = service_account.display(),
            fcm_ca = fcm_ca.display(),
        ),
    )
    .unwrap();

    let lines = processes.spawn("controller", &["controller"], Some(&config));
    let controller = read_after(&lines, "\"listen\":\"");
    drain(lines);
    for i in 0..2 {
        let lines = processes.spawn(
            &format!("agent-{i}"),
            &["agent", "--controller", &controller],
            Some(&config),
        );
        read_after(&lines, "registered with the controller");
        drain(lines);
    }
    let lines = processes.spawn(
        "front",
        &["front", "--controller", &controller],
        Some(&config),
    );
    let front = read_after(&lines, "\"addr\":\"");
    drain(lines);

    let client = FrontClient::new(format!("http://{front}"), Some(api_key.to_owned()));
    let apns: Vec<String> = (0..2_000).map(|i| format!("abcdef01{i:056x}")).collect();
    let fcm: Vec<String> = (0..2_000).map(|i| format!("proc:APA91b{i:040x}")).collect();
    let body = json!({"title": "processes", "targets": {"apns": apns, "fcm": fcm}});
    let response = client
        .post("/v1/apps/shop/notifications", body.to_string())
        .await
        .unwrap();
    assert_eq!(response.status.as_u16(), 202, "{}", response.body);
    let id = response.body["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        let status = client.get(&format!("/v1/jobs/{id}")).await.unwrap().body;
        if status["state"] == "done" {
            break status;
        }
        assert!(Instant::now() < deadline, "job not done: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status["delivered"], 4_000, "{status}");
    assert_eq!(status["pending"], 0, "{status}");

    for (stats, expected) in [(&apns_stats, 2_000), (&fcm_stats, 2_000)] {
        let fake = FrontClient::new(stats.trim_end_matches("/stats").to_owned(), None);
        let counters: Value = fake.get("/stats").await.unwrap().body;
        assert_eq!(counters["distinct_tokens"], expected, "{counters}");
        assert_eq!(counters["duplicate_tokens"], 0, "{counters}");
    }
    processes.terminate_all();
}
