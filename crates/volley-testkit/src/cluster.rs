//! A whole Volley cluster in one process, against fake APNs, FCM and Web Push: front,
//! controller and N
//! agents, each role on its own thread and runtime, every listener on `127.0.0.1:0`.
//!
//! `volley demo` and `volley bench` run on it, and so do the end-to-end tests.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use volley_config::{ApnsAppConfig, AppConfig, Config, FcmAppConfig, Secret, WebPushAppConfig};
use volley_contracts::tls::{EphemeralCluster, NodeRole};
use volley_contracts::Links;
use volley_fake::{FakeConfig, FakeServer, FakeWebPush, FakeWebPushConfig};

use crate::http::FrontClient;
use crate::role::{spawn_controller, spawn_role, RoleHandle};
use crate::wait::wait_until;

/// The app every sandbox cluster serves.
pub const APP: &str = "demo";
/// Its APNs topic.
pub const TOPIC: &str = "com.example.volley.demo";
/// Its FCM project.
pub const PROJECT: &str = "volley-demo";
/// Its VAPID contact.
pub const VAPID_SUBJECT: &str = "mailto:ops@volley.example";

/// How to build a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Agents to start.
    pub agents: usize,
    /// The fake APNs' behaviour.
    pub fake_apns: FakeConfig,
    /// The fake FCM's behaviour.
    pub fake_fcm: FakeConfig,
    /// The fake push service's behaviour.
    pub fake_webpush: FakeWebPushConfig,
    /// Applied to the configuration before anything starts.
    pub tweak: fn(&mut Config),
    /// Plain TCP between the roles instead of mutual TLS (to measure what TLS costs).
    pub insecure_links: bool,
    /// The controller's state in this PostgreSQL database instead of its embedded store.
    pub postgres_url: Option<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            agents: 2,
            fake_apns: FakeConfig::apns(),
            fake_fcm: FakeConfig::fcm(),
            fake_webpush: FakeWebPushConfig::default(),
            tweak: |_| {},
            insecure_links: false,
            postgres_url: None,
        }
    }
}

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    /// The configuration every role was started with (agents' `controller` filled in).
    pub config: Config,
    /// The API key of [`APP`].
    pub api_key: String,
    /// The front's base URL.
    pub front_url: String,
    /// The controller's tarpc address.
    pub controller_addr: SocketAddr,
    /// The front's ops port (`/metrics`, `/healthz`, `/readyz`, `/dashboard`), as a base URL.
    pub front_ops_url: String,
    /// The controller's ops port, as a base URL.
    pub controller_ops_url: String,
    /// Each agent's ops port, as a base URL, by agent index.
    pub agent_ops_urls: Vec<String>,
    /// Fake APNs.
    pub fake_apns: FakeServer,
    /// Fake FCM.
    pub fake_fcm: FakeServer,
    /// Fake Web Push service.
    pub fake_webpush: FakeWebPush,
    /// The cluster's CA and its nodes' certificates, made for this cluster in memory.
    pub certs: EphemeralCluster,
    /// The roles' links are plain TCP ([`ClusterOptions::insecure_links`]).
    insecure_links: bool,
    front: Option<RoleHandle>,
    controller: Option<RoleHandle>,
    agents: Vec<Option<RoleHandle>>,
    /// Key files, CA certificates and the controller's store; removed when the cluster goes.
    _dir: tempfile::TempDir,
}

/// Binds `127.0.0.1:0` for a role.
fn bind() -> anyhow::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

impl Cluster {
    /// Starts fakes, a controller, the agents and a front, and waits until every agent has
    /// registered and the front is ready.
    pub async fn start(options: ClusterOptions) -> anyhow::Result<Cluster> {
        volley_provider::tls::install_crypto_provider();
        let dir = tempfile::tempdir()?;
        let apns_key = volley_fake::keys::generate_apns_key();
        let mut apns_fake = options.fake_apns.clone();
        apns_fake.apns_jwt_public_key_pem = Some(apns_key.public_pem.clone());
        apns_fake.apns_topic = Some(TOPIC.into());
        apns_fake.ca_out = Some(dir.path().join("fake-apns-ca.pem"));
        let fake_apns = FakeServer::start(apns_fake, std::net::TcpListener::bind("127.0.0.1:0")?)?;

        let mut fcm_fake = options.fake_fcm.clone();
        fcm_fake.fcm_project = Some(PROJECT.into());
        fcm_fake.fcm_oauth_public_key_pem =
            Some(volley_fake::keys::TEST_SERVICE_ACCOUNT_PUBLIC_KEY_PEM.into());
        fcm_fake.ca_out = Some(dir.path().join("fake-fcm-ca.pem"));
        let fake_fcm = FakeServer::start(fcm_fake, std::net::TcpListener::bind("127.0.0.1:0")?)?;

        let mut webpush_fake = options.fake_webpush.clone();
        webpush_fake.ca_out = Some(dir.path().join("fake-webpush-ca.pem"));
        let fake_webpush =
            FakeWebPush::start(webpush_fake, std::net::TcpListener::bind("127.0.0.1:0")?)?;
        let vapid = volley_webpush::vapid::VapidKey::generate();

        let key_file = dir.path().join("AuthKey_DEMOKEY123.p8");
        std::fs::write(&key_file, &apns_key.private_pem)?;
        let service_account_file = dir.path().join("service-account.json");
        std::fs::write(
            &service_account_file,
            volley_fake::keys::test_service_account(&fake_fcm.token_uri(), PROJECT),
        )?;
        let api_key = format!("vk_{}", uuid::Uuid::new_v4().simple());

        let controller_listener = bind()?;
        let controller_addr = controller_listener.local_addr()?;
        let front_listener = bind()?;
        let front_addr = front_listener.local_addr()?;

        let mut config = Config::default();
        config.controller.listen = controller_addr;
        config.front.listen = front_addr;
        config.front.controller = controller_addr.to_string();
        config.front.default_app = Some(APP.into());
        config.agent.controller = controller_addr.to_string();
        config.agent.heartbeat_interval = Duration::from_millis(200);
        config.controller.heartbeat_timeout = Duration::from_secs(2);
        config.controller.lease_time = Duration::from_secs(2);
        config.controller.data_dir = dir.path().join("controller-data");
        if let Some(url) = &options.postgres_url {
            config.controller.store = volley_config::StoreKind::Postgres;
            config.controller.postgres_url = Some(volley_config::DatabaseUrl::new(url.clone()));
        }
        config.apps.push(AppConfig {
            name: APP.into(),
            api_keys: vec![Secret::new(api_key.clone())],
            api_key_sha256: Vec::new(),
            apns: Some(ApnsAppConfig {
                endpoint: fake_apns.endpoint(),
                topic: TOPIC.into(),
                key_file: Some(key_file),
                key_id: Some("DEMOKEY123".into()),
                team_id: Some("DEMOTEAM12".into()),
                cert_file: None,
                cert_key_file: None,
                ca_file: Some(fake_apns.ca_pem_path().to_path_buf()),
                rate_limit_per_second: None,
            }),
            fcm: Some(FcmAppConfig {
                service_account_file: Some(service_account_file),
                project_id: Some(PROJECT.into()),
                endpoint: fake_fcm.endpoint(),
                ca_file: Some(fake_fcm.ca_pem_path().to_path_buf()),
                allowed_token_uris: vec![fake_fcm.token_uri()],
                rate_limit_per_second: None,
            }),
            webpush: Some(WebPushAppConfig {
                vapid_private_key: Some(Secret::new(vapid.private_base64url())),
                vapid_private_key_file: None,
                subject: VAPID_SUBJECT.into(),
                allowed_hosts: Vec::new(),
                // The fake listens on loopback, which the SSRF guard refuses unless allowed.
                allow_private: vec!["127.0.0.1/32".into()],
                ca_file: Some(fake_webpush.ca_pem_path().to_path_buf()),
                rate_limit_per_second: None,
            }),
            requests_per_second: None,
            webhook: None,
        });
        (options.tweak)(&mut config);
        let config = config.with_env_overrides()?;
        config.validate()?;

        let certs = EphemeralCluster::generate()?;
        let controller_links = if options.insecure_links {
            Links::Insecure
        } else {
            certs.links(NodeRole::Controller)?
        };
        let controller_ops = crate::role::ops_listener()?;
        let controller_ops_url = format!("http://{}", controller_ops.local_addr()?);
        let front_ops = crate::role::ops_listener()?;
        let front_ops_url = format!("http://{}", front_ops.local_addr()?);
        let controller = spawn_controller(
            config.clone(),
            controller_listener,
            controller_ops,
            controller_links,
        )?;
        let mut cluster = Cluster {
            certs,
            insecure_links: options.insecure_links,
            config,
            api_key,
            front_url: format!("http://{front_addr}"),
            controller_addr,
            front_ops_url,
            controller_ops_url,
            agent_ops_urls: Vec::new(),
            fake_apns,
            fake_fcm,
            fake_webpush,
            front: None,
            controller: Some(controller),
            agents: Vec::new(),
            _dir: dir,
        };
        for _ in 0..options.agents {
            cluster.add_agent(|_| {})?;
        }
        let front = {
            let config = cluster.config.clone();
            let links = cluster.links(NodeRole::Front)?;
            spawn_role("front", move |drain| async move {
                let listener = tokio::net::TcpListener::from_std(front_listener)?;
                let ops = tokio::net::TcpListener::from_std(front_ops)?;
                let controller =
                    volley_contracts::connect_controller(config.front.controller.as_str(), &links)
                        .await
                        .context("front cannot reach the controller")?;
                volley_front::run(config, listener, ops, controller, links, drain).await?;
                Ok(())
            })?
        };
        cluster.front = Some(front);
        cluster.wait_for_agents(options.agents).await?;
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    /// Starts one more agent, with `tweak` applied to its configuration; returns its index.
    pub fn add_agent(&mut self, tweak: impl FnOnce(&mut Config)) -> anyhow::Result<usize> {
        let index = self.agents.len();
        let listener = bind()?;
        let ops = bind()?;
        let ops_url = format!("http://{}", ops.local_addr()?);
        let mut config = self.config.clone();
        config.agent.listen = listener.local_addr()?;
        config.agent.name = Some(format!("agent-{index}"));
        tweak(&mut config);
        let links = self.links(NodeRole::Agent)?;
        let agent = spawn_role(&format!("agent-{index}"), move |drain| async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let ops = tokio::net::TcpListener::from_std(ops)?;
            volley_agent::run(config, listener, ops, links, drain).await?;
            Ok(())
        })?;
        self.agents.push(Some(agent));
        self.agent_ops_urls.push(ops_url);
        Ok(index)
    }

    /// Kills agent `index` as a crash would.
    pub fn kill_agent(&mut self, index: usize) -> anyhow::Result<()> {
        match self.agents.get_mut(index).and_then(Option::take) {
            Some(agent) => agent.kill(),
            None => Ok(()),
        }
    }

    /// Links secured with the cluster's certificate for `role`: how a test speaks tarpc to
    /// the controller (as a front) or serves it (as an agent).
    pub fn links(&self, role: NodeRole) -> anyhow::Result<Links> {
        if self.insecure_links {
            return Ok(Links::Insecure);
        }
        Ok(self.certs.links(role)?)
    }

    /// A tarpc client of the controller, as a front.
    pub async fn controller_client(&self) -> anyhow::Result<volley_contracts::ControllerClient> {
        let links = self.links(NodeRole::Front)?;
        Ok(volley_contracts::connect_controller(self.controller_addr, &links).await?)
    }

    /// A client of the front presenting the app's API key.
    pub fn client(&self) -> FrontClient {
        FrontClient::new(self.front_url.clone(), Some(self.api_key.clone()))
    }

    /// Waits until `count` agents are registered with the controller.
    pub async fn wait_for_agents(&self, count: usize) -> anyhow::Result<()> {
        let controller = self.controller_client().await?;
        wait_until(Duration::from_secs(20), "agents to register", || {
            let controller = controller.clone();
            async move {
                matches!(
                    controller.stats(tarpc::context::current()).await,
                    Ok(Ok(stats)) if stats.agents.len() >= count
                )
            }
        })
        .await
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let client = FrontClient::new(self.front_url.clone(), None);
        wait_until(Duration::from_secs(20), "the front to be ready", || {
            let client = client.clone();
            async move {
                client
                    .get("/readyz")
                    .await
                    .map(|r| r.status.is_success())
                    .unwrap_or(false)
            }
        })
        .await
    }

    /// A Web Push subscription of the fake push service, as the native API takes it
    /// (`targets.webpush`): its id picks the fake's scripted answer (`dead…` 410, …).
    pub fn webpush_subscription(&self, id: &str) -> serde_json::Value {
        serde_json::to_value(self.fake_webpush.subscription(id)).expect("a subscription serialises")
    }

    /// Stops every role in order (front, agents, controller) and the fakes; returns the fakes'
    /// final counters (APNs, FCM).
    pub fn shutdown(mut self) -> anyhow::Result<(volley_fake::Stats, volley_fake::Stats)> {
        if let Some(front) = self.front.take() {
            front.stop()?;
        }
        for agent in self.agents.iter_mut().filter_map(Option::take) {
            agent.stop()?;
        }
        if let Some(controller) = self.controller.take() {
            controller.stop()?;
        }
        let apns = self.fake_apns.shutdown();
        let fcm = self.fake_fcm.shutdown();
        Ok((apns, fcm))
    }
}
