//! The system under test: a cluster in this process (each role on its own thread), the real
//! binary as separate processes, or those processes each on a host of its own (network
//! namespaces, through the test kit's [`HostCluster`]), with the same questions asked of all:
//! where is the front, what have the fakes received, and how much CPU and memory has each part
//! used — and, on hosts, each host.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use volley_contracts::tls::{ClusterCa, NodeRole, NODE_VALIDITY};
use volley_contracts::Links;
use volley_fake::{Stats, WebPushStats};
use volley_testkit::cluster::{Cluster, ClusterOptions, APP, PROJECT, TOPIC, VAPID_SUBJECT};
use volley_testkit::http::FrontClient;
use volley_testkit::procs::{host_of, HostCluster, ProcCluster, API_KEY};
use volley_testkit::wait::wait_until;

use super::procfs;

/// How long a process may take to print its start-up line or to stop.
const START_WAIT: Duration = Duration::from_secs(60);

/// The thread names (as `/proc/.../comm` shows them, cut to 15 bytes) of this process's parts.
const THREAD_GROUPS: &[(&str, &str)] = &[
    ("volley-front", "front"),
    ("volley-controll", "controller"),
    // The controller's job store writer (redb), on a thread of its own.
    ("volley-store", "controller-store"),
    ("volley-fake-apn", "fake-apns"),
    ("volley-fake-fcm", "fake-fcm"),
    ("volley-fake-web", "fake-webpush"),
    ("volley-ceiling", "ceiling-client"),
    ("volley-bench", "bench"),
];

/// The part of this process a thread belongs to, from its name.
pub fn thread_group(comm: &str) -> Option<String> {
    if let Some(agent) = comm.strip_prefix("volley-agent") {
        return Some(format!("agent{agent}"));
    }
    THREAD_GROUPS
        .iter()
        .find(|(prefix, _)| comm.starts_with(prefix))
        .map(|(_, group)| (*group).to_owned())
}

/// Parts that are not the system under test (the load generator and the bench's own loop).
pub fn is_bench_group(name: &str) -> bool {
    name == "bench" || name == "ceiling-client"
}

/// The name of the CPU left over after every named thread of this process is counted.
pub const REST: &str = "rest of process";

/// CPU seconds of this process's parts: named thread groups, plus what is left over
/// ([`REST`]: ended threads, the tokio blocking pool, the main thread).
pub fn self_groups() -> BTreeMap<String, f64> {
    let mut groups: BTreeMap<String, f64> = BTreeMap::new();
    let total = procfs::self_cpu();
    let mut named = 0.0;
    for (name, cpu) in procfs::thread_cpu().into_values() {
        if let Some(group) = thread_group(&name) {
            *groups.entry(group).or_default() += cpu;
            named += cpu;
        }
    }
    groups.insert(REST.to_owned(), (total - named).max(0.0));
    groups
}

/// Where to reach the system under test.
#[derive(Debug, Clone)]
pub struct Target {
    /// `http://host:port` of the front.
    pub front_url: String,
    /// The app's API key.
    pub api_key: String,
    /// The app's name.
    pub app: String,
    /// The controller's tarpc address.
    pub controller: String,
    /// How the bench reaches the controller (as a front).
    pub links: Links,
}

/// A running system under test.
pub enum System {
    /// Every role on a thread of this process.
    Standalone(Box<Cluster>),
    /// Every role a process of its own.
    Processes(Box<Processes>),
    /// Every role a process on a host of its own.
    Hosts(Box<OnHosts>),
}

impl System {
    /// Starts a cluster in this process.
    pub async fn standalone(
        agents: usize,
        insecure_links: bool,
        postgres_url: Option<String>,
        no_fsync: bool,
    ) -> anyhow::Result<System> {
        fn without_fsync(config: &mut volley_config::Config) {
            config.controller.fsync = false;
        }
        let defaults = ClusterOptions::default();
        let cluster = Cluster::start(ClusterOptions {
            agents,
            insecure_links,
            postgres_url,
            tweak: if no_fsync {
                without_fsync
            } else {
                defaults.tweak
            },
            ..defaults
        })
        .await?;
        Ok(System::Standalone(Box::new(cluster)))
    }

    /// Starts fakes, a controller, `agents` agents and a front as processes of `binary`.
    pub async fn processes(
        binary: &Path,
        agents: usize,
        insecure_links: bool,
        postgres_url: Option<String>,
    ) -> anyhow::Result<System> {
        Ok(System::Processes(Box::new(
            Processes::start(binary, agents, insecure_links, postgres_url).await?,
        )))
    }

    /// Starts the fakes on a host `providers`, the controller on `controller`, one front on
    /// `front-0` and `agents` agents on `agent-0`… (the test kit's [`HostCluster`]), each a
    /// process of `binary`. Needs root (network namespaces).
    pub async fn hosts(binary: &Path, agents: usize) -> anyhow::Result<System> {
        let binary = binary.to_path_buf();
        let on_hosts = tokio::task::spawn_blocking(move || OnHosts::start(&binary, agents))
            .await
            .context("starting the cluster on hosts")??;
        wait_ready(&on_hosts.target.front_url).await?;
        Ok(System::Hosts(Box::new(on_hosts)))
    }

    /// Where the front and the controller are.
    pub fn target(&self) -> Target {
        match self {
            System::Standalone(cluster) => Target {
                front_url: cluster.front_url.clone(),
                api_key: cluster.api_key.clone(),
                app: APP.to_owned(),
                controller: cluster.controller_addr.to_string(),
                links: cluster
                    .links(NodeRole::Front)
                    .expect("the cluster's front certificate is usable"),
            },
            System::Processes(processes) => processes.target.clone(),
            System::Hosts(on_hosts) => on_hosts.target.clone(),
        }
    }

    /// The fakes' counters.
    pub async fn fake_stats(&self) -> anyhow::Result<FakeCounts> {
        match self {
            System::Standalone(cluster) => Ok(FakeCounts {
                apns: cluster.fake_apns.stats(),
                fcm: cluster.fake_fcm.stats(),
                webpush: cluster.fake_webpush.stats(),
            }),
            System::Processes(processes) => Ok(FakeCounts {
                apns: get_stats(&processes.apns_stats).await?,
                fcm: get_stats(&processes.fcm_stats).await?,
                webpush: get_stats(&processes.webpush_stats).await?,
            }),
            System::Hosts(on_hosts) => {
                let (apns, fcm) = on_hosts.cluster.fake_stats().await;
                Ok(FakeCounts {
                    apns: serde_json::from_value(apns).context("reading fake APNs' /stats")?,
                    fcm: serde_json::from_value(fcm).context("reading fake FCM's /stats")?,
                    // The providers' host runs no fake push service.
                    webpush: WebPushStats::default(),
                })
            }
        }
    }

    /// `n` Web Push subscriptions of the fake push service, one in `invalid_every` (0 = none)
    /// one it answers 410 Gone: from the fake itself in this process, else from its stats
    /// listener (only the fake holds the keys it will decrypt with).
    pub async fn webpush_subscriptions(
        &self,
        n: usize,
        invalid_every: usize,
    ) -> anyhow::Result<Vec<volley_fake::SubscriptionInfo>> {
        match self {
            System::Standalone(cluster) => Ok(crate::demo::webpush_subscriptions(
                &cluster.fake_webpush,
                n,
                invalid_every,
            )),
            System::Processes(_) | System::Hosts(_) if n == 0 => Ok(Vec::new()),
            System::Hosts(_) => bail!("the providers' host runs no fake push service"),
            System::Processes(processes) => {
                let base = processes.webpush_stats.trim_end_matches("/stats");
                let path = format!(
                    "/subscriptions?prefix={}&count={n}&dead_every={invalid_every}",
                    crate::demo::subscription_prefix()
                );
                let text = FrontClient::new(base, None)
                    .get_text(&path)
                    .await
                    .context("asking the fake push service for subscriptions")?;
                let subscriptions: Vec<volley_fake::SubscriptionInfo> = serde_json::from_str(&text)
                    .context("reading the fake push service's subscriptions")?;
                anyhow::ensure!(
                    subscriptions.len() == n,
                    "the fake push service gave {} subscriptions, not {n}",
                    subscriptions.len()
                );
                Ok(subscriptions)
            }
        }
    }

    /// CPU seconds so far of each part: processes, or this process's thread groups.
    pub fn cpu(&self) -> BTreeMap<String, f64> {
        match self {
            System::Standalone(_) => self_groups(),
            System::Processes(processes) => {
                let mut groups: BTreeMap<String, f64> = processes
                    .children
                    .iter()
                    .map(|(name, child)| (name.clone(), procfs::process_cpu(child.id())))
                    .collect();
                groups.insert("bench".to_owned(), procfs::self_cpu());
                groups
            }
            System::Hosts(on_hosts) => {
                let mut groups: BTreeMap<String, f64> = on_hosts
                    .cluster
                    .procs
                    .iter()
                    .map(|(name, proc)| (name.clone(), procfs::process_cpu(proc.child.id())))
                    .collect();
                groups.insert("bench".to_owned(), procfs::self_cpu());
                groups
            }
        }
    }

    /// On hosts, the processes of each host (the bench itself is on none: it runs in the
    /// root namespace); elsewhere nothing.
    pub fn hosts_of_processes(&self) -> BTreeMap<String, Vec<String>> {
        let mut hosts: BTreeMap<String, Vec<String>> = BTreeMap::new();
        if let System::Hosts(on_hosts) = self {
            for name in on_hosts.cluster.procs.keys() {
                hosts
                    .entry(host_of(name).to_owned())
                    .or_default()
                    .push(name.clone());
            }
            for processes in hosts.values_mut() {
                processes.sort();
            }
        }
        hosts
    }

    /// Peak RSS of each process; in one process, the process's own (under `standalone`).
    pub fn peak_rss(&self) -> BTreeMap<String, u64> {
        match self {
            System::Standalone(_) => procfs::self_peak_rss()
                .map(|rss| ("standalone".to_owned(), rss))
                .into_iter()
                .collect(),
            System::Processes(processes) => processes
                .children
                .iter()
                .filter_map(|(name, child)| Some((name.clone(), procfs::peak_rss(child.id())?)))
                .collect(),
            System::Hosts(on_hosts) => on_hosts
                .cluster
                .procs
                .iter()
                .filter_map(|(name, proc)| Some((name.clone(), procfs::peak_rss(proc.child.id())?)))
                .collect(),
        }
    }

    /// Stops everything; fails when a part failed or would not stop.
    pub fn shutdown(self) -> anyhow::Result<()> {
        match self {
            System::Standalone(cluster) => cluster.shutdown().map(drop),
            System::Processes(mut processes) => processes.terminate_all(),
            // Stops every process with SIGTERM (it panics on an unclean exit: the caller runs
            // this on a blocking task, where that is an error); the namespaces go with the
            // cluster.
            System::Hosts(on_hosts) => {
                on_hosts.cluster.stop();
                Ok(())
            }
        }
    }
}

/// The real binary as processes on hosts: the test kit's cluster and where the bench reaches it.
pub struct OnHosts {
    cluster: ProcCluster,
    target: Target,
}

impl OnHosts {
    fn start(binary: &Path, agents: usize) -> anyhow::Result<OnHosts> {
        // The kit's leases and heartbeat timeout are short, for quick fault tests; a saturated
        // machine could let one lapse and re-send a chunk. The bench runs with the defaults,
        // as `--topology processes` does.
        let cluster = HostCluster::new(agents)
            .user_leases()
            .start(binary)
            .context(HOSTS_NEED)?;
        let certs = cluster.dir.path().join("certs");
        let (cert, key) = cluster.certificate(NodeRole::Front);
        let identity =
            volley_contracts::tls::NodeIdentity::from_files(&certs.join("ca.pem"), &cert, &key)
                .context("reading the front's certificate")?;
        let target = Target {
            front_url: cluster.front_url.clone(),
            api_key: API_KEY.to_owned(),
            app: "shop".to_owned(),
            controller: cluster.controller_addr.clone(),
            links: Links::tls(identity)?,
        };
        Ok(OnHosts { cluster, target })
    }
}

/// What `--topology hosts` needs, said when it is missing.
pub const HOSTS_NEED: &str = "--topology hosts runs every role in a network namespace of its \
     own: it needs root (or CAP_SYS_ADMIN and CAP_NET_ADMIN) and `ip` (iproute2)";

/// What the fakes have counted.
#[derive(Debug, Clone)]
pub struct FakeCounts {
    /// Fake APNs.
    pub apns: Stats,
    /// Fake FCM.
    pub fcm: Stats,
    /// The fake push service.
    pub webpush: WebPushStats,
}

impl FakeCounts {
    /// Notifications delivered, over every fake.
    pub fn delivered(&self) -> u64 {
        self.apns.delivered + self.fcm.delivered + self.webpush.delivered
    }

    /// Distinct tokens and subscriptions delivered to.
    pub fn distinct(&self) -> u64 {
        self.apns.distinct_tokens + self.fcm.distinct_tokens + self.webpush.distinct_ids
    }

    /// Deliveries to a token or subscription delivered to before.
    pub fn duplicates(&self) -> u64 {
        self.apns.duplicate_tokens + self.fcm.duplicate_tokens + self.webpush.duplicate_ids
    }
}

async fn get_stats<T: serde::de::DeserializeOwned>(url: &str) -> anyhow::Result<T> {
    let base = url.trim_end_matches("/stats").to_owned();
    let response = FrontClient::new(base, None).get("/stats").await?;
    serde_json::from_value(response.body).context("reading a fake's /stats")
}

/// The real binary as separate processes.
pub struct Processes {
    target: Target,
    apns_stats: String,
    fcm_stats: String,
    webpush_stats: String,
    children: Vec<(String, Child)>,
    /// Per role, the environment that names its certificate.
    role_env: std::collections::HashMap<&'static str, [(&'static str, String); 2]>,
    _dir: tempfile::TempDir,
}

impl Processes {
    async fn start(
        binary: &Path,
        agents: usize,
        insecure_links: bool,
        postgres_url: Option<String>,
    ) -> anyhow::Result<Processes> {
        let dir = tempfile::tempdir()?;
        let dir_path = dir.path().to_path_buf();
        let mut processes = Processes {
            target: Target {
                front_url: String::new(),
                api_key: format!("vk_{}", uuid::Uuid::new_v4().simple()),
                app: APP.to_owned(),
                controller: String::new(),
                links: Links::Insecure,
            },
            apns_stats: String::new(),
            fcm_stats: String::new(),
            webpush_stats: String::new(),
            children: Vec::new(),
            role_env: std::collections::HashMap::new(),
            _dir: dir,
        };
        let path = |name: &str| dir_path.join(name).display().to_string();

        let key = volley_fake::keys::generate_apns_key();
        std::fs::write(path("apns-public.pem"), &key.public_pem)?;
        std::fs::write(path("AuthKey.p8"), &key.private_pem)?;
        let lines = processes.spawn(
            binary,
            "fake-apns",
            &[
                "fake-apns",
                "--listen",
                "127.0.0.1:0",
                "--ca-out",
                &path("apns-ca.pem"),
                "--stats-listen",
                "127.0.0.1:0",
                "--jwt-public-key",
                &path("apns-public.pem"),
                "--topic",
                TOPIC,
            ],
            None,
        )?;
        let apns_endpoint = read_after(&lines, "listening on ")?;
        processes.apns_stats = read_after(&lines, "stats: ")?;
        drain(lines);

        std::fs::write(
            path("oauth-public.pem"),
            volley_fake::keys::TEST_SERVICE_ACCOUNT_PUBLIC_KEY_PEM,
        )?;
        let lines = processes.spawn(
            binary,
            "fake-fcm",
            &[
                "fake-fcm",
                "--listen",
                "127.0.0.1:0",
                "--ca-out",
                &path("fcm-ca.pem"),
                "--stats-listen",
                "127.0.0.1:0",
                "--project",
                PROJECT,
                "--oauth-public-key",
                &path("oauth-public.pem"),
            ],
            None,
        )?;
        let fcm_endpoint = read_after(&lines, "listening on ")?;
        processes.fcm_stats = read_after(&lines, "stats: ")?;
        drain(lines);

        // One worker thread, as in the standalone cluster: more would take CPU from the engine.
        let lines = processes.spawn(
            binary,
            "fake-webpush",
            &[
                "fake-webpush",
                "--listen",
                "127.0.0.1:0",
                "--ca-out",
                &path("webpush-ca.pem"),
                "--stats-listen",
                "127.0.0.1:0",
            ],
            None,
        )?;
        read_after(&lines, "listening on ")?;
        processes.webpush_stats = read_after(&lines, "stats: ")?;
        drain(lines);
        let vapid_key = volley_webpush::vapid::VapidKey::generate().private_base64url();

        std::fs::write(
            path("service-account.json"),
            volley_fake::keys::test_service_account(&format!("{fcm_endpoint}/token"), PROJECT),
        )?;
        // The links are mutual TLS, as in production: a CA and one certificate per role
        // (unless --insecure-links, which measures what TLS costs).
        let ca = ClusterCa::generate()?;
        std::fs::write(path("ca.pem"), ca.cert_pem())?;
        let mut role_env = std::collections::HashMap::new();
        for role in NodeRole::ALL {
            let identity = ca.issue(role, role.as_str(), NODE_VALIDITY)?;
            let (cert, key) = identity.write(&dir_path)?;
            role_env.insert(
                role.as_str(),
                [
                    ("VOLLEY_CLUSTER__CERT_FILE", cert.display().to_string()),
                    ("VOLLEY_CLUSTER__KEY_FILE", key.display().to_string()),
                ],
            );
            if role == NodeRole::Front && !insecure_links {
                processes.target.links = Links::tls(identity)?;
            }
        }
        if !insecure_links {
            processes.role_env = role_env;
        }
        let config = dir_path.join("volley.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[log]
format = "json"

[cluster]
ca_file = "{ca_file}"
insecure = {insecure_links}

[front]
listen = "127.0.0.1:0"
default_app = "{APP}"

[controller]
listen = "127.0.0.1:0"
data_dir = "{data_dir}"
{store}

[agent]
listen = "127.0.0.1:0"
heartbeat_interval = "200ms"

[[apps]]
name = "{APP}"
api_keys = ["{api_key}"]
[apps.apns]
endpoint = "{apns_endpoint}"
topic = "{TOPIC}"
key_file = "{key_file}"
key_id = "BENCHKEY12"
team_id = "BENCHTEAM1"
ca_file = "{apns_ca}"
[apps.fcm]
service_account_file = "{service_account}"
project_id = "{PROJECT}"
endpoint = "{fcm_endpoint}"
ca_file = "{fcm_ca}"
allowed_token_uris = ["{fcm_endpoint}/token"]
[apps.webpush]
vapid_private_key = "{vapid_key}"
subject = "{VAPID_SUBJECT}"
ca_file = "{webpush_ca}"
# The fake push service listens on loopback, which the SSRF guard refuses unless allowed.
allow_private = ["127.0.0.1/32"]
"#,
                api_key = processes.target.api_key,
                data_dir = path("controller-data"),
                store = postgres_url
                    .map(|url| format!("store = \"postgres\"\npostgres_url = \"{url}\""))
                    .unwrap_or_default(),
                key_file = path("AuthKey.p8"),
                apns_ca = path("apns-ca.pem"),
                service_account = path("service-account.json"),
                fcm_ca = path("fcm-ca.pem"),
                webpush_ca = path("webpush-ca.pem"),
                ca_file = path("ca.pem"),
            ),
        )?;

        let lines = processes.spawn(binary, "controller", &["controller"], Some(&config))?;
        let controller = read_after(&lines, "\"listen\":\"")?;
        drain(lines);
        for i in 0..agents {
            let lines = processes.spawn(
                binary,
                &format!("agent-{i}"),
                &["agent", "--controller", &controller],
                Some(&config),
            )?;
            read_after(&lines, "registered with the controller")?;
            drain(lines);
        }
        let lines = processes.spawn(
            binary,
            "front",
            &["front", "--controller", &controller],
            Some(&config),
        )?;
        let front = read_after(&lines, "\"addr\":\"")?;
        drain(lines);
        processes.target.front_url = format!("http://{front}");
        processes.target.controller = controller;
        wait_ready(&processes.target.front_url).await?;
        Ok(processes)
    }

    /// Starts `binary args…` and returns a channel of its stderr lines.
    fn spawn(
        &mut self,
        binary: &Path,
        name: &str,
        args: &[&str],
        config: Option<&Path>,
    ) -> anyhow::Result<mpsc::Receiver<String>> {
        let mut command = Command::new(binary);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Info is the configured default; the start-up lines read below are logged at info.
            .env("RUST_LOG", "info");
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        if let Some(envs) = args.first().and_then(|role| self.role_env.get(role)) {
            command.envs(envs.iter().map(|(k, v)| (*k, v.as_str())));
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {name} from {}", binary.display()))?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("stderr-{name}"))
            .spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })?;
        self.children.push((name.to_owned(), child));
        Ok(rx)
    }

    /// SIGTERM to every process, newest first, waiting for each to exit.
    fn terminate_all(&mut self) -> anyhow::Result<()> {
        let mut failures = Vec::new();
        while let Some((name, mut child)) = self.children.pop() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + START_WAIT;
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        if !status.success() {
                            failures.push(format!("{name} exited with {status}"));
                        }
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        failures.push(format!("{name} did not stop after SIGTERM"));
                        break;
                    }
                }
            }
        }
        if !failures.is_empty() {
            bail!("{}", failures.join("; "));
        }
        Ok(())
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reads lines until one contains `marker`; returns the text after it, up to a delimiter.
fn read_after(lines: &mpsc::Receiver<String>, marker: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + START_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .map_err(|_| anyhow::anyhow!("no line with {marker:?} within {START_WAIT:?}"))?;
        if let Some(position) = line.find(marker) {
            let rest = &line[position + marker.len()..];
            return Ok(rest
                .split(|c: char| c.is_whitespace() || c == '"' || c == ',' || c == '}')
                .find(|s| !s.is_empty())
                .unwrap_or_default()
                .to_owned());
        }
    }
}

/// Keeps reading a process's stderr so that its pipe never fills.
fn drain(lines: mpsc::Receiver<String>) {
    std::thread::spawn(move || for _ in lines {});
}

async fn wait_ready(front_url: &str) -> anyhow::Result<()> {
    let client = FrontClient::new(front_url.to_owned(), None);
    wait_until(START_WAIT, "the front to be ready", || {
        let client = client.clone();
        async move {
            client
                .get("/readyz")
                .await
                .is_ok_and(|r| r.status.is_success())
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_names_map_to_parts() {
        for (comm, group) in [
            ("volley-front", Some("front")),
            ("volley-controll", Some("controller")),
            ("volley-store", Some("controller-store")),
            ("volley-agent-0", Some("agent-0")),
            ("volley-agent-12", Some("agent-12")),
            ("volley-fake-apn", Some("fake-apns")),
            ("volley-fake-fcm", Some("fake-fcm")),
            ("volley-fake-web", Some("fake-webpush")),
            ("volley-ceiling", Some("ceiling-client")),
            ("volley-bench", Some("bench")),
            ("tokio-runtime-w", None),
            ("volley", None),
        ] {
            assert_eq!(thread_group(comm).as_deref(), group, "{comm}");
        }
    }
}
