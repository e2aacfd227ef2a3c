//! A cluster of real `volley` processes for tests about processes: each role is its own OS
//! process on ephemeral ports, and a test can SIGKILL, SIGSTOP, SIGCONT or SIGTERM any of them.

#![allow(dead_code)] // each test file uses a different part of the kit

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use volley::http::FrontClient;

pub const BIN: &str = env!("CARGO_BIN_EXE_volley");
pub const WAIT: Duration = Duration::from_secs(90);
pub const API_KEY: &str = "fault-test-key-0123456789";

/// One running process and everything it has written to stderr so far.
pub struct Proc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Waits for a stderr line containing `marker`; returns the text after it up to a delimiter.
    pub fn wait_for(&self, marker: &str) -> String {
        self.wait_for_from(marker, 0)
    }

    /// Like `wait_for`, looking only at lines from index `from` on.
    pub fn wait_for_from(&self, marker: &str, from: usize) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            {
                let lines = self.lines.lock().unwrap();
                for line in lines.iter().skip(from) {
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
            assert!(
                Instant::now() < deadline,
                "no stderr line with {marker:?} within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The first stderr line from index `from` on that contains `marker`, waiting for it.
    pub fn line_with(&self, marker: &str, from: usize) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .skip(from)
                .find(|line| line.contains(marker))
            {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no stderr line with {marker:?} within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// How many stderr lines so far.
    pub fn line_count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }
}

/// Starts `volley args…` with stderr captured.
pub fn spawn(args: &[&str], config: Option<&Path>) -> Proc {
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
    let mut child = command.spawn().expect("volley starts");
    let stderr = child.stderr.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    Proc { child, lines }
}

/// Fakes, a controller, agents and fronts as processes.
pub struct ProcCluster {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub procs: HashMap<String, Proc>,
    pub controller_addr: String,
    pub front_url: String,
    apns_stats: String,
    fcm_stats: String,
    next_front: usize,
}

impl ProcCluster {
    /// Starts fake APNs and FCM (with `fake_args` added to both), a controller, `agents`
    /// agents and one front.
    pub fn start(agents: usize, fake_args: &[&str]) -> ProcCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut procs = HashMap::new();
        let apns_ca = dir.path().join("apns-ca.pem");
        let mut args = vec![
            "fake-apns",
            "--listen",
            "127.0.0.1:0",
            "--ca-out",
            apns_ca.to_str().unwrap(),
            "--stats-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(fake_args);
        let apns = spawn(&args, None);
        let apns_endpoint = apns.wait_for("listening on ");
        let apns_stats = apns.wait_for("stats: ");
        procs.insert("fake-apns".to_owned(), apns);

        let fcm_ca = dir.path().join("fcm-ca.pem");
        let mut args = vec![
            "fake-fcm",
            "--listen",
            "127.0.0.1:0",
            "--ca-out",
            fcm_ca.to_str().unwrap(),
            "--stats-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(fake_args);
        let fcm = spawn(&args, None);
        let fcm_endpoint = fcm.wait_for("listening on ");
        let fcm_stats = fcm.wait_for("stats: ");
        procs.insert("fake-fcm".to_owned(), fcm);

        let key = volley_fake::keys::generate_apns_key();
        let key_file = dir.path().join("AuthKey.p8");
        std::fs::write(&key_file, &key.private_pem).unwrap();
        let service_account = dir.path().join("service-account.json");
        std::fs::write(
            &service_account,
            volley_fake::keys::test_service_account(&format!("{fcm_endpoint}/token"), "fault-test"),
        )
        .unwrap();
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
shutdown_grace = "5s"

[controller]
listen = "127.0.0.1:0"
chunk_size = 1000
data_dir = "{data_dir}"
heartbeat_timeout = "2s"
lease_time = "2s"
shutdown_grace = "10s"

[agent]
listen = "127.0.0.1:0"
heartbeat_interval = "200ms"
shutdown_grace = "10s"

[[apps]]
name = "shop"
api_keys = ["{API_KEY}"]
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
                data_dir = dir.path().join("controller-data").display(),
                key_file = key_file.display(),
                apns_ca = apns_ca.display(),
                service_account = service_account.display(),
                fcm_ca = fcm_ca.display(),
            ),
        )
        .unwrap();
        let mut cluster = ProcCluster {
            dir,
            config,
            procs,
            controller_addr: String::new(),
            front_url: String::new(),
            apns_stats,
            fcm_stats,
            next_front: 0,
        };
        cluster.start_controller();
        for i in 0..agents {
            cluster.start_agent(&format!("agent-{i}"));
        }
        cluster.start_front();
        cluster
    }

    /// Starts (or restarts) the controller on the cluster's data directory. A restart binds the
    /// same address, so agents and fronts find it again.
    pub fn start_controller(&mut self) {
        let listen = if self.controller_addr.is_empty() {
            "127.0.0.1:0".to_owned()
        } else {
            self.controller_addr.clone()
        };
        let proc = spawn(&["controller", "--listen", &listen], Some(&self.config));
        self.controller_addr = proc.wait_for("\"listen\":\"");
        self.procs.insert("controller".to_owned(), proc);
    }

    /// Starts an agent named `name` and waits until it has registered.
    pub fn start_agent(&mut self, name: &str) {
        let proc = spawn(
            &["agent", "--controller", &self.controller_addr],
            Some(&self.config),
        );
        proc.wait_for("registered with the controller");
        self.procs.insert(name.to_owned(), proc);
    }

    /// Starts a new front and makes it the one `client()` talks to; returns its name.
    pub fn start_front(&mut self) -> String {
        let name = format!("front-{}", self.next_front);
        self.next_front += 1;
        let proc = spawn(
            &["front", "--controller", &self.controller_addr],
            Some(&self.config),
        );
        let addr = proc.wait_for("\"addr\":\"");
        self.front_url = format!("http://{addr}");
        self.procs.insert(name.clone(), proc);
        name
    }

    pub fn proc(&self, name: &str) -> &Proc {
        &self.procs[name]
    }

    pub fn client(&self) -> FrontClient {
        FrontClient::new(self.front_url.clone(), Some(API_KEY.to_owned()))
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self, name: &str) {
        let mut proc = self.procs.remove(name).expect("known process");
        proc.child.kill().unwrap();
        proc.child.wait().unwrap();
    }

    pub fn sigstop(&self, name: &str) {
        self.proc(name).signal("-STOP");
    }

    pub fn sigcont(&self, name: &str) {
        self.proc(name).signal("-CONT");
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn sigterm(&mut self, name: &str) {
        let mut proc = self.procs.remove(name).expect("known process");
        proc.signal("-TERM");
        let deadline = Instant::now() + WAIT;
        loop {
            match proc.child.try_wait().unwrap() {
                Some(status) => {
                    assert!(
                        status.success(),
                        "{name} exited with {status} after SIGTERM"
                    );
                    return;
                }
                None => {
                    assert!(
                        Instant::now() < deadline,
                        "{name} did not stop after SIGTERM"
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// The fakes' counters (APNs, FCM).
    pub async fn fake_stats(&self) -> (Value, Value) {
        let mut out = Vec::new();
        for stats in [&self.apns_stats, &self.fcm_stats] {
            let client = FrontClient::new(stats.trim_end_matches("/stats").to_owned(), None);
            out.push(client.get("/stats").await.unwrap().body);
        }
        (out[0].clone(), out[1].clone())
    }

    /// Stops everything with SIGTERM (fronts and agents first, then the controller).
    pub fn stop(mut self) {
        let mut names: Vec<String> = self.procs.keys().cloned().collect();
        names.sort_by_key(|name| match name.as_str() {
            n if n.starts_with("front") => 0,
            n if n.starts_with("agent") => 1,
            "controller" => 2,
            _ => 3,
        });
        for name in names {
            self.sigterm(&name);
        }
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        for proc in self.procs.values_mut() {
            let _ = Command::new("kill")
                .args(["-CONT", &proc.child.id().to_string()])
                .status();
            let _ = proc.child.kill();
            let _ = proc.child.wait();
        }
    }
}

/// A broadcast body: `n` APNs and `n` FCM tokens, distinct per `tag`.
pub fn broadcast(tag: &str, n: usize) -> String {
    assert_eq!(tag.len(), 8, "tags are 8 hex characters");
    let apns: Vec<String> = (0..n).map(|i| format!("{tag}{i:056x}")).collect();
    let fcm: Vec<String> = (0..n).map(|i| format!("{tag}:APA91b{i:040x}")).collect();
    json!({"title": "fault test", "targets": {"apns": apns, "fcm": fcm}}).to_string()
}

/// Polls the job through whichever front is current until `done(status)` holds.
pub async fn wait_job(
    cluster: &ProcCluster,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(response) = cluster.client().get(&format!("/v1/jobs/{id}")).await {
            if done(&response.body) {
                return response.body;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {}",
                response.body
            );
        } else {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: front unreachable"
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// True once the job has delivered at least `n`.
pub fn delivered_at_least(n: u64) -> impl Fn(&Value) -> bool {
    move |status| status["delivered"].as_u64().unwrap_or(0) >= n
}

/// True once the job is final.
pub fn finished(status: &Value) -> bool {
    matches!(status["state"].as_str(), Some("done" | "cancelled"))
}

/// The guarantee every fault test checks: every accepted token reached the fakes at least
/// once (or is reported failed), the counts balance, and the fakes saw no more duplicates
/// than the job counted. Returns the duplicates the fault caused.
pub async fn check_no_loss(cluster: &ProcCluster, status: &Value, per_platform: u64) -> u64 {
    let count = |field: &str| status[field].as_u64().unwrap_or(0);
    assert_eq!(count("accepted"), 2 * per_platform, "{status}");
    assert_eq!(
        count("accepted"),
        count("delivered") + count("failed") + count("invalid") + count("cancelled"),
        "counts do not balance: {status}"
    );
    assert_eq!(count("pending"), 0, "{status}");
    let (apns, fcm) = cluster.fake_stats().await;
    assert_eq!(
        apns["distinct_tokens"].as_u64(),
        Some(per_platform),
        "apns: {apns}"
    );
    assert_eq!(
        fcm["distinct_tokens"].as_u64(),
        Some(per_platform),
        "fcm: {fcm}"
    );
    let duplicates = apns["duplicate_tokens"].as_u64().unwrap_or(0)
        + fcm["duplicate_tokens"].as_u64().unwrap_or(0);
    assert!(
        duplicates <= count("possible_duplicates"),
        "{duplicates} duplicates at the fakes, {} counted: {status}",
        count("possible_duplicates")
    );
    duplicates
}
