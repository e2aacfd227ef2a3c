//! A cluster of real `volley` processes for tests about processes: each role is its own OS
//! process on ephemeral ports, and a test can SIGKILL, SIGSTOP, SIGCONT or SIGTERM any of them.
//!
//! Only the binary's own tests know where the binary is (`env!("CARGO_BIN_EXE_volley")`), so
//! they pass its path in.
//!
//! By default every process runs on this machine's loopback. A [`HostCluster`] places each on
//! a host of its own instead ([`crate::hosts`]: network namespaces on a bridge): the fakes on
//! `providers`, the controller on `controller`, front `front-<i>` and agent `agent-<i>` each on
//! the host of its name. Each binds its host's address (port 0: the processes log the ports
//! they bound), agents advertise it, the ops ports listen on it too, and the test process
//! reaches fronts, ops ports and the fakes' stats through the hosts' uplink. The same
//! [`ProcCluster`] methods (and the fault harness in [`crate::jobs`]) work either way, and
//! [`ProcCluster::hosts`] cuts and partitions the links.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use volley_contracts::tls::{ClusterCa, NodeRole, NODE_VALIDITY};

use crate::hosts::Hosts;
use crate::http::FrontClient;
use crate::relay::Relay;
use crate::wait::wait_until_blocking;

/// How long a process may take to write an awaited line, to stop, or a job to get somewhere.
pub const WAIT: Duration = Duration::from_secs(90);
/// The API key of the process cluster's app, `shop`.
pub const API_KEY: &str = "fault-test-key-0123456789";

/// One running process and everything it has written to stderr so far.
pub struct Proc {
    /// The process.
    pub child: Child,
    /// Its stderr, line by line.
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Waits for a stderr line containing `marker`; returns the text after it up to a delimiter.
    pub fn wait_for(&self, marker: &str) -> String {
        self.wait_for_from(marker, 0)
    }

    /// Like `wait_for`, looking only at lines from index `from` on.
    pub fn wait_for_from(&self, marker: &str, from: usize) -> String {
        let line = self.line_with(marker, from);
        let position = line.find(marker).unwrap_or_default();
        line[position + marker.len()..]
            .split(|c: char| c.is_whitespace() || c == '"' || c == ',' || c == '}')
            .find(|s| !s.is_empty())
            .unwrap_or_default()
            .to_owned()
    }

    /// The first stderr line from index `from` on that contains `marker`, waiting for it.
    pub fn line_with(&self, marker: &str, from: usize) -> String {
        let mut found = None;
        wait_until_blocking(WAIT, &format!("a stderr line with {marker:?}"), || {
            found = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .skip(from)
                .find(|line| line.contains(marker))
                .cloned();
            found.is_some()
        })
        .unwrap();
        found.unwrap_or_default()
    }

    /// The base URL (`http://addr`) of the ops port (`/metrics`, `/healthz`, `/readyz`) of
    /// this process's `role` (`controller`, `front`, `agent`; a standalone process has one
    /// per role), read from its "ops listening" line, waiting for it.
    pub fn ops_url(&self, role: &str) -> String {
        let role_field = format!("\"role\":\"{role}\"");
        let mut found = None;
        wait_until_blocking(WAIT, &format!("the {role}'s ops port"), || {
            found = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|line| line.contains(OPS_LISTENING) && line.contains(&role_field))
                .cloned();
            found.is_some()
        })
        .unwrap();
        let line = found.unwrap_or_default();
        format!("http://{}", json_field(&line, "addr"))
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

/// Starts the `volley` binary at `bin` with `args…`, stderr captured, logging at `info`.
pub fn spawn(bin: &Path, args: &[&str], config: Option<&Path>) -> Proc {
    spawn_logging(bin, args, config, "info")
}

/// Like [`spawn`], with `RUST_LOG` set to `filter`.
pub fn spawn_logging(bin: &Path, args: &[&str], config: Option<&Path>, filter: &str) -> Proc {
    spawn_with(bin, args, config, filter, &[])
}

/// Like [`spawn_logging`], with more environment variables (`VOLLEY_*` overrides).
pub fn spawn_with(
    bin: &Path,
    args: &[&str],
    config: Option<&Path>,
    filter: &str,
    envs: &[(String, String)],
) -> Proc {
    spawn_command(Command::new(bin), args, config, filter, envs)
}

/// Like [`spawn_with`], running `command` (the binary, or `ip netns exec <ns> <binary>`).
fn spawn_command(
    mut command: Command,
    args: &[&str],
    config: Option<&Path>,
    filter: &str,
    envs: &[(String, String)],
) -> Proc {
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env("RUST_LOG", filter)
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
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

/// A TLS link to the node of `server`'s role at `addr`, presenting `client`: what a node (or
/// an impostor with a certificate of the cluster) sends on the wire, without tarpc.
pub async fn tls_connect(
    addr: &str,
    client: &volley_contracts::tls::NodeIdentity,
    server: NodeRole,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let config = client
        .client_config()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(server.dns_name())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// The value of the series `series` (its name and labels as written) in a Prometheus text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// The message of every role's ops port line (`volley_ops::serve`).
const OPS_LISTENING: &str = "ops listening: /metrics /healthz /readyz";

/// The string value of `field` in a JSON log line.
fn json_field(line: &str, field: &str) -> String {
    let marker = format!("\"{field}\":\"");
    let start = line
        .find(&marker)
        .unwrap_or_else(|| panic!("no {field} in {line}"))
        + marker.len();
    line[start..]
        .split('"')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The address in a process's "front listening" line.
fn front_addr(proc: &Proc) -> String {
    json_field(&proc.line_with("front listening", 0), "addr")
}

/// Where a cluster's processes run.
enum Network {
    /// All on this machine's loopback.
    Loopback,
    /// Each on a host of its own; see [`HostCluster`].
    Hosts(Hosts),
}

/// The host of the fakes in a [`HostCluster`].
pub const PROVIDERS: &str = "providers";

/// A cluster of processes each on a host of its own: fake APNs and FCM on the host
/// `providers`, the controller on `controller`, fronts on `front-0`, `front-1`, … and agents on
/// `agent-0`, `agent-1`, … — every one a real `volley` process in its host's network namespace,
/// bound to its host's address. [`HostCluster::start`] gives the [`ProcCluster`] that runs
/// them; [`ProcCluster::hosts`] then cuts and partitions links.
#[derive(Debug, Clone)]
pub struct HostCluster {
    agents: usize,
    fronts: usize,
    spare: Vec<String>,
    fake_args: Vec<String>,
    log_filter: String,
    /// The PostgreSQL database's URL and how many controllers share it.
    postgres: Option<(String, usize)>,
    /// The lease timing a new user has rather than the kit's short one.
    user_leases: bool,
}

impl HostCluster {
    /// `agents` agent hosts, one front host, a controller host and the providers' host.
    pub fn new(agents: usize) -> HostCluster {
        HostCluster {
            agents,
            fronts: 1,
            spare: Vec::new(),
            fake_args: Vec::new(),
            log_filter: "info".to_owned(),
            postgres: None,
            user_leases: false,
        }
    }

    /// `controllers` controllers sharing the PostgreSQL database at `url` (on this machine's
    /// loopback, as `scripts/test` starts it), on the hosts `controller-0`, `controller-1`, …
    /// (the first leads once it has started), with the failover defaults a new user has (see
    /// [`ProcCluster::start_postgres`]). The hosts reach the database through a [`Relay`] on
    /// the root namespace's uplink address: cutting a controller's host cuts its sessions.
    pub fn postgres(mut self, url: &str, controllers: usize) -> HostCluster {
        self.postgres = Some((url.to_owned(), controllers));
        self
    }

    /// `fronts` front hosts, each with a front started (the last is the one `client()` uses).
    pub fn fronts(mut self, fronts: usize) -> HostCluster {
        self.fronts = fronts;
        self
    }

    /// More hosts, nothing started on them: for processes a test starts later
    /// (`start_agent("agent-5")`, the next `start_front()`'s `front-<i>`).
    pub fn spare_hosts(mut self, names: &[&str]) -> HostCluster {
        self.spare
            .extend(names.iter().map(|name| (*name).to_owned()));
        self
    }

    /// Arguments added to both fakes' (`--latency 20ms`).
    pub fn fake_args(mut self, args: &[&str]) -> HostCluster {
        self.fake_args = args.iter().map(|arg| (*arg).to_owned()).collect();
        self
    }

    /// `RUST_LOG` of every role.
    pub fn log_filter(mut self, filter: &str) -> HostCluster {
        self.log_filter = filter.to_owned();
        self
    }

    /// The lease time, heartbeat timeout and heartbeat interval a new user has, instead of the
    /// kit's short ones (which suit quick fault tests; a benchmark wants the defaults).
    pub fn user_leases(mut self) -> HostCluster {
        self.user_leases = true;
        self
    }

    /// The names of the hosts this layout needs.
    pub fn host_names(&self) -> Vec<String> {
        let mut names = vec![PROVIDERS.to_owned()];
        match &self.postgres {
            Some((_, controllers)) => {
                names.extend((0..*controllers).map(|i| format!("controller-{i}")));
            }
            None => names.push("controller".to_owned()),
        }
        names.extend((0..self.fronts).map(|i| format!("front-{i}")));
        names.extend((0..self.agents).map(|i| format!("agent-{i}")));
        names.extend(self.spare.iter().cloned());
        names
    }

    /// Creates the hosts and starts the fakes, the controller, the agents (each registered)
    /// and the fronts, each process of the `volley` binary at `bin` on its host.
    pub fn start(self, bin: impl AsRef<Path>) -> anyhow::Result<ProcCluster> {
        let names = self.host_names();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let hosts = Hosts::create(&names)?;
        let fake_args: Vec<&str> = self.fake_args.iter().map(String::as_str).collect();
        let mut cluster = ProcCluster::fakes(bin.as_ref(), &fake_args, Network::Hosts(hosts));
        cluster.log_filter = self.log_filter;
        // A failover is tried with the lease timing a new user has (see
        // `ProcCluster::start_postgres`).
        if self.user_leases || self.postgres.is_some() {
            cluster.envs.extend(user_leases());
        }
        match &self.postgres {
            Some((url, controllers)) => {
                let (url, relay) = relayed_postgres(url, cluster.hosts().root_addr())?;
                cluster.relay = Some(relay);
                cluster.use_postgres(&url);
                for i in 0..*controllers {
                    let name = format!("controller-{i}");
                    cluster.start_named_controller(&name);
                    if i == 0 {
                        cluster.proc(&name).wait_for("this controller leads now");
                    }
                }
            }
            None => cluster.start_controller(),
        }
        for i in 0..self.agents {
            cluster.start_agent(&format!("agent-{i}"));
        }
        for _ in 0..self.fronts {
            cluster.start_front();
        }
        Ok(cluster)
    }
}

/// Fakes, a controller, agents and fronts as processes.
pub struct ProcCluster {
    /// Key files, CA certificates, the configuration and the controller's store.
    pub dir: tempfile::TempDir,
    /// The configuration file every role reads.
    pub config: PathBuf,
    /// The running processes by name (`fake-apns`, `controller`, `agent-0`, `front-0`, ...).
    pub procs: HashMap<String, Proc>,
    /// The controller's tarpc address.
    pub controller_addr: String,
    /// The base URL of the current front.
    pub front_url: String,
    bin: PathBuf,
    apns_stats: String,
    fcm_stats: String,
    next_front: usize,
    /// `RUST_LOG` of the roles started from now on.
    log_filter: String,
    /// `VOLLEY_*` overrides every role gets (the PostgreSQL store's).
    envs: Vec<(String, String)>,
    /// The listen addresses of the controllers started by name (`controller-a`, ...), in the
    /// order they were started: `controller_addr` lists them all.
    controllers: Vec<(String, String)>,
    /// The relay to the PostgreSQL database of controllers on hosts.
    relay: Option<Relay>,
    /// Where the processes run. Dropped after them (fields drop after `Drop::drop`).
    network: Network,
}

impl ProcCluster {
    /// Starts fake APNs and FCM (with `fake_args` added to both), a controller, `agents`
    /// agents and one front, each a process of the `volley` binary at `bin`.
    pub fn start(bin: impl AsRef<Path>, agents: usize, fake_args: &[&str]) -> ProcCluster {
        ProcCluster::start_logging(bin, agents, fake_args, "info")
    }

    /// Like [`ProcCluster::start`], every role logging with `RUST_LOG` = `filter`.
    pub fn start_logging(
        bin: impl AsRef<Path>,
        agents: usize,
        fake_args: &[&str],
        filter: &str,
    ) -> ProcCluster {
        ProcCluster::start_on(bin, None, agents, fake_args, filter)
    }

    /// Like [`ProcCluster::start_logging`], the controller's state in the PostgreSQL
    /// database at `postgres_url` when given (`controller.store = "postgres"`), else in its
    /// embedded store.
    pub fn start_on(
        bin: impl AsRef<Path>,
        postgres_url: Option<&str>,
        agents: usize,
        fake_args: &[&str],
        filter: &str,
    ) -> ProcCluster {
        let mut cluster = ProcCluster::fakes(bin.as_ref(), fake_args, Network::Loopback);
        cluster.log_filter = filter.to_owned();
        if let Some(url) = postgres_url {
            cluster.use_postgres(url);
        }
        cluster.start_controller();
        for i in 0..agents {
            cluster.start_agent(&format!("agent-{i}"));
        }
        cluster.start_front();
        cluster
    }

    /// Starts the fakes and one `volley standalone` process (controller, agent and front in
    /// one), as a new user's first run would, and waits until its agent has registered.
    pub fn standalone(bin: impl AsRef<Path>, fake_args: &[&str]) -> ProcCluster {
        let mut cluster = ProcCluster::fakes(bin.as_ref(), fake_args, Network::Loopback);
        let proc = cluster.spawn_role("standalone", &["standalone"]);
        cluster.controller_addr = proc.wait_for("\"listen\":\"");
        proc.wait_for("registered with the controller");
        // Its front's line: the controller's "agent registered" carries an `addr` too.
        cluster.front_url = format!("http://{}", front_addr(&proc));
        cluster.procs.insert("standalone".to_owned(), proc);
        cluster
    }

    /// The fakes (with `fake_args` added to both) on `network`, and the configuration, no
    /// role yet.
    fn fakes(bin: &Path, fake_args: &[&str], network: Network) -> ProcCluster {
        let bin = bin.to_path_buf();
        let dir = tempfile::tempdir().unwrap();
        if let Network::Hosts(hosts) = &network {
            // A run killed halfway leaves no directory either.
            hosts.remove_on_exit(dir.path()).unwrap();
        }
        let mut procs = HashMap::new();
        let fake_listen = format!("{}:0", network.ip(PROVIDERS));
        let apns_ca = dir.path().join("apns-ca.pem");
        let mut args = vec![
            "fake-apns",
            "--listen",
            &fake_listen,
            "--ca-out",
            apns_ca.to_str().unwrap(),
            "--stats-listen",
            &fake_listen,
        ];
        args.extend_from_slice(fake_args);
        let apns = spawn_command(network.command(PROVIDERS, &bin), &args, None, "info", &[]);
        let apns_endpoint = apns.wait_for("listening on ");
        let apns_stats = apns.wait_for("stats: ");
        procs.insert("fake-apns".to_owned(), apns);

        let fcm_ca = dir.path().join("fcm-ca.pem");
        let mut args = vec![
            "fake-fcm",
            "--listen",
            &fake_listen,
            "--ca-out",
            fcm_ca.to_str().unwrap(),
            "--stats-listen",
            &fake_listen,
        ];
        args.extend_from_slice(fake_args);
        let fcm = spawn_command(network.command(PROVIDERS, &bin), &args, None, "info", &[]);
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
        // A cluster CA and one certificate per role: the processes speak mutual TLS.
        let certs = dir.path().join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        let ca = ClusterCa::generate().unwrap();
        let ca_file = certs.join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        // Kept so that tests can issue more certificates (another name, an expired one).
        std::fs::write(certs.join("ca-key.pem"), ca.key_pem()).unwrap();
        for role in NodeRole::ALL {
            let identity = ca.issue(role, role.as_str(), NODE_VALIDITY).unwrap();
            identity.write(&certs).unwrap();
        }
        let config = dir.path().join("volley.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[log]
format = "json"

[cluster]
ca_file = "{ca_file}"

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
[apps.webpush]
vapid_private_key = "{vapid_key}"
subject = "mailto:ops@shop.example"
"#,
                vapid_key = volley_webpush::vapid::VapidKey::generate().private_base64url(),
                data_dir = dir.path().join("controller-data").display(),
                ca_file = ca_file.display(),
                key_file = key_file.display(),
                apns_ca = apns_ca.display(),
                service_account = service_account.display(),
                fcm_ca = fcm_ca.display(),
            ),
        )
        .unwrap();
        ProcCluster {
            dir,
            config,
            procs,
            controller_addr: String::new(),
            front_url: String::new(),
            bin,
            apns_stats,
            fcm_stats,
            next_front: 0,
            log_filter: "info".to_owned(),
            envs: Vec::new(),
            controllers: Vec::new(),
            relay: None,
            network,
        }
    }

    /// Fakes, `controllers` controllers sharing the PostgreSQL database at `postgres_url`
    /// (named `controller-0`, `controller-1`, ...: the first leads once it has started),
    /// `agents` agents and one front, each told every controller's address.
    pub fn start_postgres(
        bin: impl AsRef<Path>,
        postgres_url: &str,
        controllers: usize,
        agents: usize,
        fake_args: &[&str],
    ) -> ProcCluster {
        let mut cluster = ProcCluster::fakes(bin.as_ref(), fake_args, Network::Loopback);
        cluster.use_postgres(postgres_url);
        // A failover is tried with the defaults a new user has (lease, heartbeat timeout and
        // interval): the kit's short leases (for quick agent faults) are shorter than the
        // failover timeout, and agents would stop their chunks before a standby claimed them.
        cluster.envs.extend(user_leases());
        for i in 0..controllers {
            cluster.start_named_controller(&format!("controller-{i}"));
            if i == 0 {
                cluster
                    .proc("controller-0")
                    .wait_for("this controller leads now");
            }
        }
        for i in 0..agents {
            cluster.start_agent(&format!("agent-{i}"));
        }
        cluster.start_front();
        cluster
    }

    /// Every controller started from now on keeps its state in the PostgreSQL database at
    /// `url` (`controller.store = "postgres"`).
    pub fn use_postgres(&mut self, url: &str) {
        self.envs.extend([
            ("VOLLEY_CONTROLLER__STORE".to_owned(), "postgres".to_owned()),
            ("VOLLEY_CONTROLLER__POSTGRES_URL".to_owned(), url.to_owned()),
        ]);
        // The test server speaks TLS with a certificate of its own CA: the controllers verify it.
        if let Some(ca) = crate::pg::postgres_ca() {
            self.envs
                .push(("VOLLEY_CONTROLLER__POSTGRES_CA_FILE".to_owned(), ca));
        }
    }

    /// Starts (or restarts, on the address it had) the controller named `name`, one of
    /// several on the PostgreSQL store; `controller_addr` lists every controller's address.
    pub fn start_named_controller(&mut self, name: &str) {
        let known = self
            .controllers
            .iter()
            .find(|(known, _)| known == name)
            .map(|(_, addr)| addr.clone());
        let listen = known
            .clone()
            .unwrap_or_else(|| format!("{}:0", self.network.ip(name)));
        let proc = self.spawn_role(name, &["controller", "--listen", &listen]);
        let addr = proc.wait_for("\"listen\":\"");
        if known.is_none() {
            self.controllers.push((name.to_owned(), addr));
        }
        self.controller_addr = self
            .controllers
            .iter()
            .map(|(_, addr)| addr.as_str())
            .collect::<Vec<_>>()
            .join(",");
        self.procs.insert(name.to_owned(), proc);
    }

    /// Starts (or restarts) the controller on the cluster's data directory. A restart binds the
    /// same address, so agents and fronts find it again.
    pub fn start_controller(&mut self) {
        let listen = if self.controller_addr.is_empty() {
            format!("{}:0", self.network.ip("controller"))
        } else {
            self.controller_addr.clone()
        };
        let proc = self.spawn_role("controller", &["controller", "--listen", &listen]);
        self.controller_addr = proc.wait_for("\"listen\":\"");
        self.procs.insert("controller".to_owned(), proc);
    }

    /// Starts an agent named `name` (on the host `name`, on hosts) and waits until it has
    /// registered.
    pub fn start_agent(&mut self, name: &str) {
        let listen = format!("{}:0", self.network.ip(name));
        let proc = self.spawn_role(
            name,
            &[
                "agent",
                "--controller",
                &self.controller_addr,
                "--listen",
                &listen,
            ],
        );
        proc.wait_for("registered with the controller");
        self.procs.insert(name.to_owned(), proc);
    }

    /// Starts a new front (`front-<i>`, on the host of that name on hosts) and makes it the
    /// one `client()` talks to; returns its name.
    pub fn start_front(&mut self) -> String {
        let name = format!("front-{}", self.next_front);
        self.next_front += 1;
        let listen = format!("{}:0", self.network.ip(&name));
        let proc = self.spawn_role(
            &name,
            &[
                "front",
                "--controller",
                &self.controller_addr,
                "--listen",
                &listen,
            ],
        );
        self.front_url = format!("http://{}", front_addr(&proc));
        self.procs.insert(name.clone(), proc);
        name
    }

    /// The process `name`, a role of the `volley` binary with the cluster's configuration and
    /// log filter, and the certificate of its role (`VOLLEY_CLUSTER__CERT_FILE`,
    /// `..._KEY_FILE`).
    fn spawn_role(&self, name: &str, args: &[&str]) -> Proc {
        self.spawn_node_as(name, args, &self.config)
    }

    /// Like a role of the cluster, with another configuration file (which should keep the
    /// cluster's `[cluster]` section); on hosts, on the host named like the role (`args[0]`).
    pub fn spawn_node(&self, args: &[&str], config: &Path) -> Proc {
        self.spawn_node_as(args.first().copied().unwrap_or_default(), args, config)
    }

    /// Like [`ProcCluster::spawn_node`], for the process `name`: on hosts, it runs on the host
    /// `name` (the fakes on `providers`) and its ops port listens on that host's address.
    pub fn spawn_node_as(&self, name: &str, args: &[&str], config: &Path) -> Proc {
        let envs = match args.first().and_then(|role| role.parse::<NodeRole>().ok()) {
            Some(role) => {
                let (cert, key) = self.certificate(role);
                vec![
                    (
                        "VOLLEY_CLUSTER__CERT_FILE".to_owned(),
                        cert.display().to_string(),
                    ),
                    (
                        "VOLLEY_CLUSTER__KEY_FILE".to_owned(),
                        key.display().to_string(),
                    ),
                ]
            }
            None => Vec::new(),
        };
        let mut envs: Vec<(String, String)> = envs.into_iter().chain(self.envs.clone()).collect();
        if let Network::Hosts(_) = self.network {
            // The ops ports on the host's address, where the test process reaches them.
            let ops = format!("{}:0", self.network.ip(name));
            envs.extend(
                ["FRONT", "CONTROLLER", "AGENT"]
                    .map(|role| (format!("VOLLEY_{role}__OPS_LISTEN"), ops.clone())),
            );
            // Every host has the machine's host name: an agent is named after its process.
            envs.push(("VOLLEY_AGENT__NAME".to_owned(), name.to_owned()));
        }
        spawn_command(
            self.network.command(name, &self.bin),
            args,
            Some(config),
            &self.log_filter,
            &envs,
        )
    }

    /// The hosts the processes run on; panics for a cluster on loopback.
    pub fn hosts(&self) -> &Hosts {
        match &self.network {
            Network::Hosts(hosts) => hosts,
            Network::Loopback => panic!("this cluster runs on loopback, not on hosts"),
        }
    }

    /// The address the process `name` binds: its host's, or 127.0.0.1.
    pub fn ip(&self, name: &str) -> IpAddr {
        self.network.ip(name)
    }

    /// The cluster's CA, read back from its key, to issue more certificates (another name, an
    /// expired one, a renewal).
    pub fn ca(&self) -> ClusterCa {
        let key = std::fs::read_to_string(self.dir.path().join("certs/ca-key.pem"))
            .expect("the cluster keeps its CA key");
        ClusterCa::from_key_pem(&key).expect("the CA key reads back")
    }

    /// The certificate and key files of the cluster's node of `role`.
    pub fn certificate(&self, role: NodeRole) -> (PathBuf, PathBuf) {
        let certs = self.dir.path().join("certs");
        (
            certs.join(format!("{role}-{role}.pem")),
            certs.join(format!("{role}-{role}-key.pem")),
        )
    }

    /// The process named `name`.
    pub fn proc(&self, name: &str) -> &Proc {
        &self.procs[name]
    }

    /// The base URL of the ops port of the process named `name` (`controller…`, `front-…`,
    /// `agent-…`; a standalone process's: its controller's), waiting for its line.
    pub fn ops_url(&self, name: &str) -> String {
        let role = if name.starts_with("front") {
            "front"
        } else if name.starts_with("agent") {
            "agent"
        } else {
            "controller"
        };
        self.proc(name).ops_url(role)
    }

    /// A client of the ops port of the process named `name` (see [`ProcCluster::ops_url`]).
    pub fn ops_client(&self, name: &str) -> FrontClient {
        FrontClient::new(self.ops_url(name), None)
    }

    /// A client of the current front presenting the app's API key.
    pub fn client(&self) -> FrontClient {
        FrontClient::new(self.front_url.clone(), Some(API_KEY.to_owned()))
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self, name: &str) {
        let mut proc = self.procs.remove(name).expect("known process");
        proc.child.kill().unwrap();
        proc.child.wait().unwrap();
    }

    /// SIGSTOP: the process pauses.
    pub fn sigstop(&self, name: &str) {
        self.proc(name).signal("-STOP");
    }

    /// SIGHUP: a node reloads its certificate files.
    pub fn sighup(&self, name: &str) {
        self.proc(name).signal("-HUP");
    }

    /// SIGCONT: a paused process goes on.
    pub fn sigcont(&self, name: &str) {
        self.proc(name).signal("-CONT");
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn sigterm(&mut self, name: &str) {
        let mut proc = self.procs.remove(name).expect("known process");
        proc.signal("-TERM");
        let mut exit = None;
        wait_until_blocking(WAIT, &format!("{name} to stop after SIGTERM"), || {
            exit = proc.child.try_wait().unwrap();
            exit.is_some()
        })
        .unwrap();
        if let Some(status) = exit {
            assert!(
                status.success(),
                "{name} exited with {status} after SIGTERM"
            );
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

    /// The requests the fakes kept whole (APNs, FCM), when they were started with `--capture`.
    pub async fn fake_requests(&self) -> (Vec<Value>, Vec<Value>) {
        let mut out = Vec::new();
        for stats in [&self.apns_stats, &self.fcm_stats] {
            let client = FrontClient::new(stats.trim_end_matches("/stats").to_owned(), None);
            let body = client.get("/requests").await.unwrap().body;
            out.push(body.as_array().cloned().unwrap_or_default());
        }
        (out[0].clone(), out[1].clone())
    }

    /// Stops everything with SIGTERM (fronts and agents first, then the controller).
    pub fn stop(mut self) {
        let mut names: Vec<String> = self.procs.keys().cloned().collect();
        names.sort_by_key(|name| match name.as_str() {
            n if n.starts_with("front") => 0,
            n if n.starts_with("agent") => 1,
            n if n.starts_with("controller") => 2,
            _ => 3,
        });
        for name in names {
            self.sigterm(&name);
        }
    }
}

/// The lease time, heartbeat timeout and heartbeat interval a new user has, as `VOLLEY_*`
/// overrides of the kit's short ones.
fn user_leases() -> [(String, String); 3] {
    let defaults = volley_config::Config::default();
    [
        (
            "VOLLEY_CONTROLLER__LEASE_TIME".to_owned(),
            format!("{}ms", defaults.controller.lease_time.as_millis()),
        ),
        (
            "VOLLEY_CONTROLLER__HEARTBEAT_TIMEOUT".to_owned(),
            format!("{}ms", defaults.controller.heartbeat_timeout.as_millis()),
        ),
        (
            "VOLLEY_AGENT__HEARTBEAT_INTERVAL".to_owned(),
            format!("{}ms", defaults.agent.heartbeat_interval.as_millis()),
        ),
    ]
}

/// Starts a relay on `root_addr` to the database of `url` (on this machine) and returns the URL
/// the hosts use: through the relay, with the database's host kept as the name its TLS
/// certificate is checked against (`hostaddr` says where to connect). In namespaces of a test's
/// own ([`crate::hosts::in_namespaces`]), the relay forwards to the test process's unix socket
/// to the database instead.
fn relayed_postgres(url: &str, root_addr: Ipv4Addr) -> anyhow::Result<(String, Relay)> {
    let (host, port) = crate::pg::tcp_host(url)?;
    let target = crate::hosts::reach(crate::pg::tcp_addr(url)?);
    let relay = Relay::between(
        std::net::SocketAddr::new(root_addr.into(), 0).into(),
        target,
    )?;
    let with_port = url.replacen(
        &format!("{host}:{port}"),
        &format!("{host}:{}", relay.addr().port()),
        1,
    );
    anyhow::ensure!(with_port != url, "cannot find {host}:{port} in {url}");
    let separator = if with_port.contains('?') { '&' } else { '?' };
    Ok((format!("{with_port}{separator}hostaddr={root_addr}"), relay))
}

/// The host a [`HostCluster`] runs the process `name` on: the fakes on `providers`, every role
/// on the host of its name.
pub fn host_of(name: &str) -> &str {
    if name.starts_with("fake") {
        PROVIDERS
    } else {
        name
    }
}

impl Network {
    /// The address the process `name` binds.
    fn ip(&self, name: &str) -> IpAddr {
        match self {
            Network::Loopback => Ipv4Addr::LOCALHOST.into(),
            Network::Hosts(hosts) => hosts.addr(host_of(name)).into(),
        }
    }

    /// A command running `bin` for the process `name`, on its host.
    fn command(&self, name: &str, bin: &Path) -> Command {
        match self {
            Network::Loopback => Command::new(bin),
            Network::Hosts(hosts) => hosts.command(host_of(name), bin),
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
