//! Volley's configuration: one typed struct for every role.
//!
//! Layers, later ones winning: built-in defaults, a TOML file, `VOLLEY_*` environment variables
//! (`VOLLEY_FRONT__LISTEN=0.0.0.0:8080` sets `front.listen`; `__` separates levels), then
//! command-line flags applied by the binary. [`Config::validate`] checks everything before a
//! port is bound, and every error names the key at fault.
//!
//! Secrets (API keys) are [`Secret`]s: they print and serialise as `<redacted>`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize, Serializer};

/// A configuration error that names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or a variable could not be parsed into the configuration.
    #[error("{0}")]
    Parse(String),
    /// A value parsed but is not acceptable.
    #[error("invalid `{key}`: {message}")]
    Invalid {
        /// The dotted key, e.g. `apps[0].apns.key_id`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A secret string: usable by code, never printed.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the code that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

/// Reads an address, or a list of them, as one comma-separated string (`"a:7070"`,
/// `"a:7070,b:7070"` or `["a:7070", "b:7070"]`).
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged, expecting = "an address (host:port), or a list of them")]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) => one,
        OneOrMany::Many(many) => many.join(","),
    })
}

/// A database URL whose password, if it holds one, never shows: `Debug` and serialisation
/// (`volley config check`, `/stat/config`) replace it with `redacted`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps a URL.
    pub fn new(value: impl Into<String>) -> Self {
        DatabaseUrl(value.into())
    }

    /// The URL itself, password included, for the code that connects.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password replaced; a value that is not a URL (libpq's `key=value`
    /// form) is hidden whole.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut url) => {
                if url.password().is_some() {
                    let _ = url.set_password(Some("redacted"));
                }
                url.to_string()
            }
            Err(_) => "<redacted>".to_owned(),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for DatabaseUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

/// The whole configuration; each role reads its own section and the apps.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Logging.
    pub log: LogConfig,
    /// The front role.
    pub front: FrontConfig,
    /// The controller role.
    pub controller: ControllerConfig,
    /// The agent role.
    pub agent: AgentConfig,
    /// How the links between nodes are secured.
    pub cluster: ClusterConfig,
    /// The apps this deployment serves.
    pub apps: Vec<AppConfig>,
}

/// The links between nodes: mutual TLS with a certificate per node (`volley certs`), unless
/// `insecure`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster CA's certificate (PEM), which signs every node's certificate.
    #[schema(value_type = Option<String>)]
    pub ca_file: Option<PathBuf>,
    /// This node's certificate (PEM), issued for its role by `volley certs issue`.
    #[schema(value_type = Option<String>)]
    pub cert_file: Option<PathBuf>,
    /// This node's private key (PEM).
    #[schema(value_type = Option<String>)]
    pub key_file: Option<PathBuf>,
    /// Plain TCP between nodes: anyone who can reach a node's port is trusted as any role.
    /// Only for a network nobody else reaches (`--insecure-links` does the same).
    pub insecure: bool,
}

/// Log format and filter.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (human-readable) or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `volley_agent=debug,info`; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The front: the HTTP API.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct FrontConfig {
    /// Where the HTTP API listens.
    #[schema(value_type = String)]
    pub listen: SocketAddr,
    /// The controller's tarpc address; several, as a list or separated by commas, for a
    /// leader and its standbys (`store = "postgres"`): the one that leads is found and
    /// followed.
    #[serde(deserialize_with = "one_or_many")]
    pub controller: String,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Most tokens in one request.
    pub max_tokens_per_request: usize,
    /// The app used by the gorush- and gaurun-compatible endpoints.
    pub default_app: Option<String>,
    /// Whether the compatible endpoints require an API key. Switch off only for a drop-in
    /// migration on a private network.
    pub compat_require_api_key: bool,
    /// How long a draining front keeps finishing in-flight requests.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub shutdown_grace: Duration,
    /// Requests per second allowed per API key (token bucket; `apps.requests_per_second`
    /// overrides it per app). Above it the front answers 429 with `Retry-After`. Unset: no
    /// limit.
    pub key_requests_per_second: Option<f64>,
    /// Requests a key may send at once above its rate (the bucket's size); 0 = one second's
    /// worth of its rate.
    pub key_burst: u32,
    /// Longest a client may take to send a request's head (request line and headers), from
    /// its first byte, or from the connection's opening for its first request. Past it the
    /// connection is closed.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub header_read_timeout: Duration,
    /// How long a request body may take before it must show progress: its deadline starts
    /// this long after the body starts and moves one second later for every
    /// `body_min_bytes_per_second` bytes received. Past it the front answers 408 and closes.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub body_read_timeout: Duration,
    /// The slowest a request body may arrive on average once `body_read_timeout` has passed.
    pub body_min_bytes_per_second: u64,
    /// How long a keep-alive connection may wait for its next request.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub idle_timeout: Duration,
    /// Most connections open at once; past it a new connection is answered 503 with
    /// `Retry-After` and closed. Lowered at start to what the open-file limit allows.
    pub max_connections: usize,
    /// A body above this many bytes (declared, or read so far) is a large body.
    pub large_body_bytes: usize,
    /// Most large bodies read and parsed at once; past it a request with a large body is
    /// answered 503 `busy` with `Retry-After`. Each may hold up to `max_body_bytes` and about
    /// as much again once parsed.
    pub max_large_bodies: usize,
    /// Where this role's ops port listens: `/metrics`, `/healthz`, `/readyz` and the live dashboard `/dashboard`, without a key. The
    /// default, port 0 on loopback, takes a free port (logged at start, "ops listening"); set
    /// a fixed address for Prometheus to scrape.
    #[schema(value_type = String)]
    pub ops_listen: SocketAddr,
    /// A key that opens the dashboard on the API listener too (`/dashboard#key=…`, or
    /// `Authorization: Bearer …` on `/dashboard/state`); without it the dashboard is served on
    /// `ops_listen` only. At least 16 characters.
    #[schema(value_type = Option<String>)]
    pub operator_key: Option<Secret>,
}

impl Default for FrontConfig {
    fn default() -> Self {
        FrontConfig {
            listen: ([127, 0, 0, 1], 8080).into(),
            controller: "127.0.0.1:7070".into(),
            max_body_bytes: 256 * 1024 * 1024,
            max_tokens_per_request: 1_000_000,
            default_app: None,
            compat_require_api_key: true,
            shutdown_grace: Duration::from_secs(10),
            key_requests_per_second: None,
            key_burst: 0,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            body_min_bytes_per_second: 4096,
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            large_body_bytes: 1024 * 1024,
            max_large_bodies: 4,
            ops_listen: ([127, 0, 0, 1], 0).into(),
            operator_key: None,
        }
    }
}

/// The controller: job splitting and dispatch.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ControllerConfig {
    /// Where the tarpc server listens.
    #[schema(value_type = String)]
    pub listen: SocketAddr,
    /// Tokens per chunk.
    pub chunk_size: usize,
    /// No longer used: queued chunks live in their jobs' memory (bounded by
    /// `max_pending_notifications`) in the scheduler's per-app queues, which have no capacity
    /// of their own. Accepted only to be refused with a message that says so.
    #[serde(skip_serializing)]
    pub queue_chunks: Option<usize>,
    /// Accept jobs for an app and platform that no agent has ever declared, to wait until
    /// one does. Off by default: such a job is refused with `409 no_credentials`.
    pub accept_unserved: bool,
    /// An agent not heard from for this long is dropped and its chunks go to others.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub heartbeat_timeout: Duration,
    /// Longest an agent may take over one chunk before it is given to another.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub chunk_timeout: Duration,
    /// Most notifications held in unfinished jobs before submissions are refused.
    pub max_pending_notifications: u64,
    /// How long a finished job's status is kept.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub job_retention: Duration,
    /// Most finished jobs kept (in memory and in the store): past it the oldest are forgotten
    /// before their retention is over, with their idempotency keys. It bounds the
    /// controller's memory under a stream of single-notification jobs.
    pub max_finished_jobs: usize,
    /// Where jobs are stored; one controller per directory (it is locked).
    #[schema(value_type = String)]
    pub data_dir: PathBuf,
    /// Flush every commit to disk (the default). `false` only measures what durability costs:
    /// a machine crash may then lose jobs that were answered 2xx.
    pub fsync: bool,
    /// How long a chunk lease lasts without renewal by the agent's heartbeats.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub lease_time: Duration,
    /// How long an `Idempotency-Key` keeps returning the same job.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub idempotency_window: Duration,
    /// How long a draining controller waits for chunks out with agents.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub shutdown_grace: Duration,
    /// For APNs broadcasts without a collapse id, use the job id as `apns-collapse-id`, so
    /// that a duplicate caused by a crash replaces the first copy on the device instead of
    /// showing twice. FCM messages are never made collapsible for this: Google throttles
    /// collapsible messages per device and keeps only four of them for an offline one.
    pub collapse_duplicates: bool,
    /// The most chunks the controller keeps out with one agent at once, whatever window the
    /// agent declares.
    pub max_agent_window: u32,
    /// Where the controller keeps its state: `redb` (the default: an embedded database in
    /// `data_dir`, one controller) or `postgres` (`postgres_url`: several controllers, one
    /// leader and standbys, see docs/operations.md).
    pub store: StoreKind,
    /// The PostgreSQL database of `store = "postgres"`, as a URL
    /// (`postgres://volley@db.internal:5432/volley?sslmode=verify-full`). A password is better
    /// given by `postgres_password_file` or the `PGPASSWORD` environment variable than in the
    /// URL; it is never logged either way.
    #[schema(value_type = Option<String>)]
    pub postgres_url: Option<DatabaseUrl>,
    /// A file holding the database password (its first line).
    #[schema(value_type = Option<String>)]
    pub postgres_password_file: Option<PathBuf>,
    /// CA certificates (PEM) that sign the database server's certificate, for
    /// `sslmode=require` or `verify-full`; without it, the public web PKI roots.
    #[schema(value_type = Option<String>)]
    pub postgres_ca_file: Option<PathBuf>,
    /// With `store = "postgres"`: how long a leader that stopped renewing its leadership (its
    /// host died, paused, or lost the database) keeps it before a standby takes over.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub failover_timeout: Duration,
    /// The address fronts and agents should dial this controller at, named by standbys to
    /// whoever calls them (defaults to the bound listen address).
    pub advertise: Option<String>,
    /// Where this role's ops port listens: `/metrics`, `/healthz`, `/readyz`. The
    /// default, port 0 on loopback, takes a free port (logged at start, "ops listening"); set
    /// a fixed address for Prometheus to scrape.
    #[schema(value_type = String)]
    pub ops_listen: SocketAddr,
}

/// Where the controller keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// redb, embedded, in `controller.data_dir`.
    #[default]
    Redb,
    /// PostgreSQL at `controller.postgres_url`.
    Postgres,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            listen: ([127, 0, 0, 1], 7070).into(),
            chunk_size: 1000,
            queue_chunks: None,
            accept_unserved: false,
            heartbeat_timeout: Duration::from_secs(10),
            chunk_timeout: Duration::from_secs(120),
            max_pending_notifications: 20_000_000,
            job_retention: Duration::from_secs(24 * 3600),
            max_finished_jobs: 200_000,
            data_dir: PathBuf::from("volley-data"),
            fsync: true,
            lease_time: Duration::from_secs(15),
            idempotency_window: Duration::from_secs(24 * 3600),
            shutdown_grace: Duration::from_secs(30),
            collapse_duplicates: true,
            store: StoreKind::Redb,
            postgres_url: None,
            postgres_password_file: None,
            postgres_ca_file: None,
            failover_timeout: Duration::from_secs(5),
            advertise: None,
            max_agent_window: 64,
            ops_listen: ([127, 0, 0, 1], 0).into(),
        }
    }
}

/// The agent: delivery to the providers.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Where the agent's tarpc server listens.
    #[schema(value_type = String)]
    pub listen: SocketAddr,
    /// The address the controller should dial (defaults to the bound listen address).
    pub advertise: Option<String>,
    /// The controller's tarpc address; several, as a list or separated by commas, for a
    /// leader and its standbys (`store = "postgres"`): the one that leads is found and
    /// followed.
    #[serde(deserialize_with = "one_or_many")]
    pub controller: String,
    /// A name for logs and stats (defaults to the host name).
    pub name: Option<String>,
    /// Chunks in flight at once on this agent.
    pub window: u32,
    /// Requests in flight at once per provider client.
    pub concurrency: usize,
    /// HTTP/2 connections per app and provider.
    pub connections: usize,
    /// Time allowed for one provider request.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub request_timeout: Duration,
    /// Attempts per notification for transient failures (1 = no retry).
    pub max_attempts: u32,
    /// The back-off ceiling before the first retry; it doubles with each retry (full jitter:
    /// the wait is drawn uniformly below the ceiling).
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub retry_base_delay: Duration,
    /// The largest back-off ceiling; a longer `Retry-After` from the provider is still honoured.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub retry_max_delay: Duration,
    /// The circuit breaker each app and provider has on this agent.
    pub breaker: BreakerConfig,
    /// How often the agent tells the controller it is alive.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub heartbeat_interval: Duration,
    /// How long a draining agent keeps finishing the chunks it holds.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub shutdown_grace: Duration,
    /// Where this role's ops port listens: `/metrics`, `/healthz`, `/readyz`. The
    /// default, port 0 on loopback, takes a free port (logged at start, "ops listening"); set
    /// a fixed address for Prometheus to scrape.
    #[schema(value_type = String)]
    pub ops_listen: SocketAddr,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            listen: ([127, 0, 0, 1], 7071).into(),
            advertise: None,
            controller: "127.0.0.1:7070".into(),
            name: None,
            window: 4,
            concurrency: 400,
            connections: 4,
            request_timeout: Duration::from_secs(10),
            max_attempts: 3,
            retry_base_delay: Duration::from_millis(200),
            retry_max_delay: Duration::from_secs(30),
            breaker: BreakerConfig::default(),
            heartbeat_interval: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(30),
            ops_listen: ([127, 0, 0, 1], 0).into(),
        }
    }
}

/// When an app's provider is paused on an agent: a circuit breaker per app and provider.
///
/// It opens when, over the last `window`, at least `min_requests` answers came back and at
/// least `failure_ratio` of them were transient or credential failures, or after
/// `credential_failures` credential errors in a row. Open, it sends nothing for `cool_down`,
/// then lets one probe through: a good answer closes it, a failure opens it again for twice
/// as long (at most `max_cool_down`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// The sliding window over which answers are counted.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub window: Duration,
    /// Fewest answers in the window before the failure ratio counts.
    pub min_requests: u32,
    /// Share of failed answers in the window (0 < ratio ≤ 1) that opens the breaker.
    pub failure_ratio: f64,
    /// Credential errors in a row that open the breaker.
    pub credential_failures: u32,
    /// How long the breaker stays open before its first probe.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub cool_down: Duration,
    /// The longest cool-down after failed probes.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub max_cool_down: Duration,
    /// Longest the breaker refuses chunks (and hands back the unsent rest of those under way)
    /// while open; a notification that may not be handed back waits this long at most for it
    /// before it fails as `CircuitOpen`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String)]
    pub max_wait: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: Duration::from_secs(10),
            min_requests: 20,
            failure_ratio: 0.5,
            credential_failures: 3,
            cool_down: Duration::from_secs(2),
            max_cool_down: Duration::from_secs(60),
            max_wait: Duration::from_secs(30),
        }
    }
}

/// One app: its API keys and its provider credentials.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// The app's name, used in URLs.
    pub name: String,
    /// Keys that callers present as `Authorization: Bearer <key>`.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub api_keys: Vec<Secret>,
    /// More keys, given as the hex SHA-256 digests of the keys (`printf %s KEY | sha256sum`),
    /// so that the configuration file need not hold them.
    #[serde(default)]
    pub api_key_sha256: Vec<String>,
    /// APNs credentials, when the app sends to Apple devices.
    pub apns: Option<ApnsAppConfig>,
    /// FCM credentials, when the app sends through Firebase.
    pub fcm: Option<FcmAppConfig>,
    /// Web Push settings (VAPID key, SSRF rules), when the app sends to browsers.
    pub webpush: Option<WebPushAppConfig>,
    /// Requests per second allowed per API key of this app (overrides
    /// `front.key_requests_per_second`).
    #[serde(default)]
    pub requests_per_second: Option<f64>,
    /// Where the controller posts the tokens providers call invalid.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
}

/// An app's invalid-token webhook: batches of invalid tokens POSTed as JSON, signed with
/// HMAC-SHA256 with a timestamp (`X-Volley-Signature: t=<seconds>,v1=<hex>`), retried until
/// acknowledged.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The receiver, `https://host[:port]/path` (or `http://` on a private network).
    pub url: String,
    /// The HMAC-SHA256 key the signature is made with (at least 16 characters).
    #[schema(value_type = String)]
    pub secret: Secret,
    /// Most tokens in one POST.
    #[serde(default = "default_webhook_batch_size")]
    pub batch_size: usize,
    /// How long one POST may take.
    #[serde(default = "default_webhook_timeout", with = "humantime_serde")]
    #[schema(value_type = String)]
    pub timeout: Duration,
    /// The longest pause between attempts (back-off doubles from 100 ms up to it).
    #[serde(default = "default_webhook_max_backoff", with = "humantime_serde")]
    #[schema(value_type = String)]
    pub max_backoff: Duration,
    /// Extra CA certificates (PEM) to trust for an `https://` receiver, besides the public
    /// web roots.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub ca_file: Option<PathBuf>,
}

fn default_webhook_batch_size() -> usize {
    500
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_webhook_max_backoff() -> Duration {
    Duration::from_secs(60)
}

/// An app's APNs settings.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApnsAppConfig {
    /// `production`, `sandbox`, or `https://host:port`.
    #[serde(default = "default_apns_endpoint")]
    pub endpoint: String,
    /// The bundle id (`apns-topic`).
    pub topic: String,
    /// Token auth: the `.p8` key file.
    #[schema(value_type = Option<String>)]
    pub key_file: Option<PathBuf>,
    /// Token auth: the key id (`kid`).
    pub key_id: Option<String>,
    /// Token auth: the team id (`iss`).
    pub team_id: Option<String>,
    /// Certificate auth: the PEM certificate.
    #[schema(value_type = Option<String>)]
    pub cert_file: Option<PathBuf>,
    /// Certificate auth: the PEM private key.
    #[schema(value_type = Option<String>)]
    pub cert_key_file: Option<PathBuf>,
    /// Extra CA certificates to trust (a fake's CA).
    #[schema(value_type = Option<String>)]
    pub ca_file: Option<PathBuf>,
    /// Most APNs requests per second for this app from each agent (none by default).
    #[serde(default)]
    pub rate_limit_per_second: Option<u32>,
}

fn default_apns_endpoint() -> String {
    "production".into()
}

/// An app's FCM settings.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FcmAppConfig {
    /// The service-account JSON file. Agents need it; fronts and the controller never read it.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub service_account_file: Option<PathBuf>,
    /// The Firebase project id (defaults to the service account's).
    pub project_id: Option<String>,
    /// The FCM base URL.
    #[serde(default = "default_fcm_endpoint")]
    pub endpoint: String,
    /// Extra CA certificates to trust (a fake's CA).
    #[schema(value_type = Option<String>)]
    pub ca_file: Option<PathBuf>,
    /// Token URIs trusted besides Google's (a fake's OAuth endpoint).
    #[serde(default)]
    pub allowed_token_uris: Vec<String>,
    /// Most FCM requests per second for this app from each agent (none by default; FCM's
    /// default quota is 600,000 messages a minute per project, shared by every agent).
    #[serde(default)]
    pub rate_limit_per_second: Option<u32>,
}

fn default_fcm_endpoint() -> String {
    "https://fcm.googleapis.com".into()
}

/// An app's Web Push settings: the VAPID key that identifies it to push services, and which
/// endpoints its agents may be sent to (subscriptions come from browsers, that is from users:
/// see `docs/webpush.md`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebPushAppConfig {
    /// The VAPID private key: 32 bytes, URL-safe base64 (what `volley vapid generate` and
    /// the web-push tools print). Agents need it (or `vapid_private_key_file`).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub vapid_private_key: Option<Secret>,
    /// A file holding the VAPID private key: the base64 form, or a PEM EC key.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub vapid_private_key_file: Option<PathBuf>,
    /// The VAPID `sub` claim: how a push service reaches the sender, `mailto:` or `https:`.
    pub subject: String,
    /// Host suffixes the endpoints must be under (`fcm.googleapis.com`,
    /// `push.services.mozilla.com`, `push.apple.com`, `notify.windows.com`); empty: any
    /// host with a public address.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Address ranges (CIDR, or one address) endpoints may resolve to although they are not
    /// public: loopback, private, link-local. None by default.
    #[serde(default)]
    pub allow_private: Vec<String>,
    /// Extra CA certificates to trust (a fake push service's CA).
    #[schema(value_type = Option<String>)]
    pub ca_file: Option<PathBuf>,
    /// Most Web Push requests per second for this app from each agent (none by default).
    #[serde(default)]
    pub rate_limit_per_second: Option<u32>,
}

/// The key an app is known by in error messages (`apps[2]`, or `apps.<name>`).
fn app_key(index: usize) -> String {
    format!("apps[{index}]")
}

impl Config {
    /// Loads the configuration: defaults, then `file` (if any), then `VOLLEY_*` variables.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Parse(format!(
                    "configuration file {} does not exist",
                    file.display()
                )));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment.merge(Env::prefixed("VOLLEY_").split("__").ignore(&["config"]));
        let config: Config = figment
            .extract()
            .map_err(|error| ConfigError::Parse(describe(error)))?;
        Ok(config)
    }

    /// Applies `VOLLEY_*` variables on top of a configuration built in code (the demo's and
    /// the bench's in-process clusters), so that the same variables tune them. The apps are
    /// kept as built: their secrets serialise redacted and could not make the round trip.
    pub fn with_env_overrides(self) -> Result<Config, ConfigError> {
        let apps = self.apps.clone();
        // Secrets serialise redacted: the key given here comes back as `<redacted>` unless
        // the environment sets another.
        let operator_key = self.front.operator_key.clone();
        let mut config: Config = Figment::from(Serialized::defaults(self))
            .merge(Env::prefixed("VOLLEY_").split("__").ignore(&["config"]))
            .extract()
            .map_err(|error| ConfigError::Parse(describe(error)))?;
        config.apps = apps;
        if std::env::var_os("VOLLEY_FRONT__OPERATOR_KEY").is_none() {
            config.front.operator_key = operator_key;
        }
        Ok(config)
    }

    /// Parses a configuration from TOML text alone (no environment), for tests and embedding.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|error| ConfigError::Parse(describe(error)))
    }

    /// Checks what parsing cannot for every role: names, limits, credential completeness
    /// (`volley config check`, `volley standalone`, the in-process clusters).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_for(Role::All)
    }

    /// Checks what `role` reads and nothing else: a front needs each app's name, API keys,
    /// APNs topic and whether it has FCM, never the credential files only agents open.
    pub fn validate_for(&self, role: Role) -> Result<(), ConfigError> {
        let front = matches!(role, Role::Front | Role::All);
        let controller = matches!(role, Role::Controller | Role::All);
        let agent = matches!(role, Role::Agent | Role::All);
        let mut names = std::collections::HashSet::new();
        for (i, app) in self.apps.iter().enumerate() {
            let key = app_key(i);
            if app.name.is_empty()
                || !app
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            {
                return Err(ConfigError::invalid(
                    format!("{key}.name"),
                    "must be non-empty and use only letters, digits, '-', '_' and '.'",
                ));
            }
            if !names.insert(app.name.as_str()) {
                return Err(ConfigError::invalid(
                    format!("{key}.name"),
                    format!("app {:?} is declared twice", app.name),
                ));
            }
            if app.apns.is_none() && app.fcm.is_none() && app.webpush.is_none() {
                return Err(ConfigError::invalid(
                    key.clone(),
                    "an app needs an [apps.apns], [apps.fcm] or [apps.webpush] section",
                ));
            }
            if let Some(webpush) = &app.webpush {
                let subject = webpush.subject.as_str();
                let plain = !subject.chars().any(|c| c.is_control() || c.is_whitespace());
                let scheme_ok = match (
                    subject.strip_prefix("mailto:"),
                    subject.strip_prefix("https://"),
                ) {
                    (Some(address), _) => address.len() > 2 && address.contains('@'),
                    (None, Some(rest)) => !rest.is_empty(),
                    (None, None) => false,
                };
                if !(plain && scheme_ok) {
                    return Err(ConfigError::invalid(
                        format!("{key}.webpush.subject"),
                        "must be a mailto: or https: URL (the VAPID contact push services use)",
                    ));
                }
            }
            if let Some(apns) = &app.apns {
                if apns.topic.is_empty() {
                    return Err(ConfigError::invalid(
                        format!("{key}.apns.topic"),
                        "must not be empty",
                    ));
                }
            }
            if front {
                app.validate_front(&key)?;
            }
            if controller {
                app.validate_controller(&key)?;
            }
            if agent {
                app.validate_agent(&key)?;
            }
        }
        if front {
            self.front.validate(&self.apps)?;
        }
        if controller {
            self.controller.validate()?;
        }
        if agent {
            self.agent.validate()?;
        }
        if controller || agent {
            // The controller sets the lease, the agent renews it: whichever reads both checks.
            if self.agent.heartbeat_interval >= self.controller.lease_time {
                return Err(ConfigError::invalid(
                    "agent.heartbeat_interval",
                    "must be shorter than controller.lease_time, or leases expire between heartbeats",
                ));
            }
        }
        Ok(())
    }

    /// The app named `name`.
    pub fn app(&self, name: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|a| a.name == name)
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|error| format!("# cannot print: {error}"))
    }
}

/// The role a configuration is checked for: each role checks only the keys it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `volley front`: `front.*` and each app's name, API keys, APNs topic and rate.
    Front,
    /// `volley controller`: `controller.*` and each app's name and webhook.
    Controller,
    /// `volley agent`: `agent.*` and each app's provider credentials.
    Agent,
    /// Every role at once (`volley standalone`, `volley config check`).
    All,
}

impl AppConfig {
    /// What the front reads of an app: its API keys and rate.
    fn validate_front(&self, key: &str) -> Result<(), ConfigError> {
        if self.api_keys.iter().any(|k| k.expose().len() < 16) {
            return Err(ConfigError::invalid(
                format!("{key}.api_keys"),
                "every API key must be at least 16 characters",
            ));
        }
        let hex_digest = |d: &String| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit());
        if let Some(index) = self.api_key_sha256.iter().position(|d| !hex_digest(d)) {
            return Err(ConfigError::invalid(
                format!("{key}.api_key_sha256[{index}]"),
                "must be a SHA-256 digest: 64 hex digits (printf %s KEY | sha256sum)",
            ));
        }
        if let Some(rate) = self.requests_per_second {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(ConfigError::invalid(
                    format!("{key}.requests_per_second"),
                    "must be a positive number",
                ));
            }
        }
        Ok(())
    }

    /// What the controller reads of an app: its webhook.
    fn validate_controller(&self, key: &str) -> Result<(), ConfigError> {
        let Some(webhook) = &self.webhook else {
            return Ok(());
        };
        let key = format!("{key}.webhook");
        let rest = webhook
            .url
            .strip_prefix("https://")
            .or_else(|| webhook.url.strip_prefix("http://"))
            .unwrap_or_default();
        if rest.is_empty() || rest.starts_with('/') {
            return Err(ConfigError::invalid(
                format!("{key}.url"),
                "must be an https:// or http:// url with a host",
            ));
        }
        if webhook.secret.expose().len() < 16 {
            return Err(ConfigError::invalid(
                format!("{key}.secret"),
                "must be at least 16 characters",
            ));
        }
        if webhook.batch_size == 0 || webhook.batch_size > 10_000 {
            return Err(ConfigError::invalid(
                format!("{key}.batch_size"),
                "must be between 1 and 10000",
            ));
        }
        Ok(())
    }

    /// What an agent reads of an app: its provider credentials and rate limits.
    fn validate_agent(&self, key: &str) -> Result<(), ConfigError> {
        for (provider, limit) in [
            (
                "apns",
                self.apns.as_ref().and_then(|a| a.rate_limit_per_second),
            ),
            (
                "fcm",
                self.fcm.as_ref().and_then(|f| f.rate_limit_per_second),
            ),
            (
                "webpush",
                self.webpush.as_ref().and_then(|w| w.rate_limit_per_second),
            ),
        ] {
            if limit == Some(0) {
                return Err(ConfigError::invalid(
                    format!("{key}.{provider}.rate_limit_per_second"),
                    "must be at least 1 (leave it out for no limit)",
                ));
            }
        }
        if let Some(apns) = &self.apns {
            let key = format!("{key}.apns");
            let token_auth = apns.key_file.is_some();
            let cert_auth = apns.cert_file.is_some();
            match (token_auth, cert_auth) {
                (true, true) => {
                    return Err(ConfigError::invalid(
                        key,
                        "set either key_file (token auth) or cert_file (certificate auth), not both",
                    ))
                }
                (false, false) => {
                    return Err(ConfigError::invalid(
                        format!("{key}.key_file"),
                        "APNs needs key_file, key_id and team_id (token auth) or cert_file and cert_key_file",
                    ))
                }
                (true, false) => {
                    for (field, value) in [("key_id", &apns.key_id), ("team_id", &apns.team_id)] {
                        if value.as_deref().is_none_or(str::is_empty) {
                            return Err(ConfigError::invalid(
                                format!("{key}.{field}"),
                                "required with key_file",
                            ));
                        }
                    }
                }
                (false, true) => {
                    if apns.cert_key_file.is_none() {
                        return Err(ConfigError::invalid(
                            format!("{key}.cert_key_file"),
                            "required with cert_file",
                        ));
                    }
                }
            }
        }
        if let Some(fcm) = &self.fcm {
            if fcm.service_account_file.is_none() {
                return Err(ConfigError::invalid(
                    format!("{key}.fcm.service_account_file"),
                    "required on an agent: FCM requests are authorised with it",
                ));
            }
        }
        if let Some(webpush) = &self.webpush {
            match (&webpush.vapid_private_key, &webpush.vapid_private_key_file) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError::invalid(
                        format!("{key}.webpush.vapid_private_key"),
                        "set vapid_private_key or vapid_private_key_file, not both",
                    ))
                }
                (None, None) => {
                    return Err(ConfigError::invalid(
                        format!("{key}.webpush.vapid_private_key"),
                        "required on an agent (or vapid_private_key_file): push services \
                         identify the sender by it; `volley vapid generate` makes one",
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl FrontConfig {
    fn validate(&self, apps: &[AppConfig]) -> Result<(), ConfigError> {
        if let Some(default) = &self.default_app {
            if !apps.iter().any(|a| &a.name == default) {
                return Err(ConfigError::invalid(
                    "front.default_app",
                    format!("no app named {default:?}"),
                ));
            }
        }
        if let Some(rate) = self.key_requests_per_second {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(ConfigError::invalid(
                    "front.key_requests_per_second",
                    "must be a positive number",
                ));
            }
        }
        // Connections are checked a few times per shortest timeout: below 10ms that is a busy
        // loop, not a timeout.
        for (key, value) in [
            ("front.header_read_timeout", self.header_read_timeout),
            ("front.body_read_timeout", self.body_read_timeout),
            ("front.idle_timeout", self.idle_timeout),
        ] {
            if value < Duration::from_millis(10) {
                return Err(ConfigError::invalid(key, "must be at least 10ms"));
            }
        }
        for (key, value) in [
            (
                "front.body_min_bytes_per_second",
                self.body_min_bytes_per_second as usize,
            ),
            ("front.max_connections", self.max_connections),
            ("front.large_body_bytes", self.large_body_bytes),
            ("front.max_large_bodies", self.max_large_bodies),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        if self
            .operator_key
            .as_ref()
            .is_some_and(|key| key.expose().len() < 16)
        {
            return Err(ConfigError::invalid(
                "front.operator_key",
                "must be at least 16 characters",
            ));
        }
        Ok(())
    }
}

impl ControllerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.chunk_size == 0 || self.chunk_size > 100_000 {
            return Err(ConfigError::invalid(
                "controller.chunk_size",
                "must be between 1 and 100000",
            ));
        }
        if self.max_finished_jobs == 0 {
            return Err(ConfigError::invalid(
                "controller.max_finished_jobs",
                "must be at least 1",
            ));
        }
        if self.queue_chunks.is_some() {
            return Err(ConfigError::invalid(
                "controller.queue_chunks",
                "is no longer used: queued chunks wait in per-app queues bounded by \
                 controller.max_pending_notifications; remove it",
            ));
        }
        if self.lease_time < Duration::from_millis(100) {
            return Err(ConfigError::invalid(
                "controller.lease_time",
                "must be at least 100ms",
            ));
        }
        if self.store == StoreKind::Postgres && self.postgres_url.is_none() {
            return Err(ConfigError::invalid(
                "controller.postgres_url",
                "is required with controller.store = \"postgres\"",
            ));
        }
        if self.failover_timeout < Duration::from_millis(500) {
            return Err(ConfigError::invalid(
                "controller.failover_timeout",
                "must be at least 500ms",
            ));
        }
        Ok(())
    }
}

impl AgentConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.window == 0 {
            return Err(ConfigError::invalid("agent.window", "must be at least 1"));
        }
        if self.concurrency == 0 {
            return Err(ConfigError::invalid(
                "agent.concurrency",
                "must be at least 1",
            ));
        }
        if self.connections == 0 {
            return Err(ConfigError::invalid(
                "agent.connections",
                "must be at least 1",
            ));
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::invalid(
                "agent.max_attempts",
                "must be at least 1",
            ));
        }
        if self.retry_base_delay.is_zero() || self.retry_base_delay > self.retry_max_delay {
            return Err(ConfigError::invalid(
                "agent.retry_base_delay",
                "must be above 0 and at most agent.retry_max_delay",
            ));
        }
        self.breaker.validate()
    }
}

impl BreakerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let key = |field: &str| format!("agent.breaker.{field}");
        if self.window.is_zero() {
            return Err(ConfigError::invalid(key("window"), "must be above 0"));
        }
        if !(self.failure_ratio > 0.0 && self.failure_ratio <= 1.0) {
            return Err(ConfigError::invalid(
                key("failure_ratio"),
                "must be above 0 and at most 1",
            ));
        }
        if self.credential_failures == 0 {
            return Err(ConfigError::invalid(
                key("credential_failures"),
                "must be at least 1",
            ));
        }
        if self.cool_down.is_zero() || self.cool_down > self.max_cool_down {
            return Err(ConfigError::invalid(
                key("cool_down"),
                "must be above 0 and at most agent.breaker.max_cool_down",
            ));
        }
        Ok(())
    }
}

/// Turns a figment error into one line naming the key.
fn describe(error: figment::Error) -> String {
    error
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let source = e
                .metadata
                .as_ref()
                .map(|m| format!(" (from {})", m.name))
                .unwrap_or_default();
            if key.is_empty() {
                format!("{}{source}", e.kind)
            } else {
                format!("invalid `{key}`: {}{source}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [front]
        listen = "127.0.0.1:9000"
        default_app = "shop"

        [controller]
        chunk_size = 500
        heartbeat_timeout = "3s"

        [[apps]]
        name = "shop"
        api_keys = ["0123456789abcdef-secret"]
        [apps.apns]
        endpoint = "sandbox"
        topic = "com.example.shop"
        key_file = "AuthKey.p8"
        key_id = "ABC123DEFG"
        team_id = "TEAM123456"
    "#;

    #[test]
    fn a_good_file_parses_and_validates() {
        let config = Config::from_toml(GOOD).unwrap();
        config.validate().unwrap();
        assert_eq!(config.controller.chunk_size, 500);
        assert_eq!(config.controller.heartbeat_timeout, Duration::from_secs(3));
        assert_eq!(config.agent.window, AgentConfig::default().window);
    }

    #[test]
    fn a_webhook_parses_redacts_its_secret_and_is_checked() {
        let text = format!(
            "{GOOD}\n[apps.webhook]\nurl = \"http://127.0.0.1:9/hook\"\nsecret = \"webhook-secret-0123456789\"\n"
        )
        .replace(
            "api_keys = [",
            "requests_per_second = 5.0\n        api_keys = [",
        );
        let config = Config::from_toml(&text).unwrap();
        config.validate().unwrap();
        let webhook = config.apps[0].webhook.as_ref().unwrap();
        assert_eq!(webhook.batch_size, 500);
        assert_eq!(config.apps[0].requests_per_second, Some(5.0));
        assert!(!config
            .to_redacted_toml()
            .contains("webhook-secret-0123456789"));

        let https = text.replace("http://127.0.0.1:9/hook", "https://example.com/hook");
        Config::from_toml(&https).unwrap().validate().unwrap();
        let ftp = text.replace("http://127.0.0.1:9/hook", "ftp://example.com/hook");
        let error = Config::from_toml(&ftp).unwrap().validate().unwrap_err();
        assert!(error.to_string().contains("apps[0].webhook.url"), "{error}");
    }

    #[test]
    fn retry_breaker_and_rate_limit_keys_parse_and_are_checked() {
        let text = format!(
            "{GOOD}\nrate_limit_per_second = 500\n[agent]\nretry_base_delay = \"50ms\"\n[agent.breaker]\ncool_down = \"1s\"\nfailure_ratio = 0.25\n"
        );
        let config = Config::from_toml(&text).unwrap();
        config.validate().unwrap();
        let apns = config.apps[0].apns.as_ref().unwrap();
        assert_eq!(apns.rate_limit_per_second, Some(500));
        assert_eq!(config.agent.retry_base_delay, Duration::from_millis(50));
        assert_eq!(config.agent.breaker.cool_down, Duration::from_secs(1));
        assert_eq!(config.agent.breaker.failure_ratio, 0.25);
        assert_eq!(config.agent.breaker.min_requests, 20);

        for (bad, key) in [
            (
                "rate_limit_per_second = 0",
                "apps[0].apns.rate_limit_per_second",
            ),
            (
                "[agent.breaker]\nfailure_ratio = 1.5",
                "agent.breaker.failure_ratio",
            ),
            (
                "[agent.breaker]\ncool_down = \"2m\"",
                "agent.breaker.cool_down",
            ),
            (
                "[agent]\nretry_base_delay = \"0s\"",
                "agent.retry_base_delay",
            ),
        ] {
            let error = Config::from_toml(&format!("{GOOD}\n{bad}"))
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(error.to_string().contains(key), "{error}");
        }
    }

    #[test]
    fn a_web_push_app_needs_a_contact_everywhere_and_a_vapid_key_on_agents() {
        let app = |webpush: &str| {
            format!(
                r#"
                [[apps]]
                name = "shop"
                api_keys = ["0123456789abcdef-secret"]
                [apps.webpush]
                {webpush}
                "#
            )
        };
        let front_only = Config::from_toml(&app(r#"subject = "mailto:ops@shop.example""#)).unwrap();
        front_only.validate_for(Role::Front).unwrap();
        let error = front_only.validate_for(Role::Agent).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("apps[0].webpush.vapid_private_key"),
            "{error}"
        );
        let agent = app(r#"subject = "https://shop.example/contact"
                vapid_private_key = "x""#);
        Config::from_toml(&agent)
            .unwrap()
            .validate_for(Role::Agent)
            .unwrap();
        for subject in [
            "ops@shop.example",
            "mailto:ops",
            "mailto:",
            "https://",
            "mailto:a b@c",
        ] {
            let error = Config::from_toml(&app(&format!("subject = {subject:?}")))
                .unwrap()
                .validate_for(Role::Front)
                .unwrap_err();
            assert!(
                error.to_string().contains("apps[0].webpush.subject"),
                "{subject}: {error}"
            );
        }
        let both = app(r#"subject = "mailto:ops@shop.example"
                vapid_private_key = "x"
                vapid_private_key_file = "/k""#);
        let error = Config::from_toml(&both)
            .unwrap()
            .validate_for(Role::Agent)
            .unwrap_err();
        assert!(error.to_string().contains("not both"), "{error}");
    }

    #[test]
    fn a_front_needs_no_credential_files_and_an_agent_names_the_missing_one() {
        // What a front reads: names, keys, the APNs topic and whether FCM is there.
        let front = r#"
            [front]
            default_app = "shop"
            [[apps]]
            name = "shop"
            api_keys = ["0123456789abcdef-secret"]
            [apps.apns]
            topic = "com.example.shop"
            [apps.fcm]
        "#;
        let config = Config::from_toml(front).unwrap();
        config.validate_for(Role::Front).unwrap();
        assert!(config.apps[0].fcm.is_some());

        let error = config.validate_for(Role::Agent).unwrap_err();
        assert!(
            error.to_string().contains("apps[0].apns.key_file"),
            "{error}"
        );
        let error = config.validate().unwrap_err();
        assert!(
            error.to_string().contains("apps[0].apns.key_file"),
            "{error}"
        );
        let fcm_only = front.replace(
            "[apps.apns]\n            topic = \"com.example.shop\"\n",
            "",
        );
        let error = Config::from_toml(&fcm_only)
            .unwrap()
            .validate_for(Role::Agent)
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("apps[0].fcm.service_account_file"),
            "{error}"
        );

        // A front still checks what it reads.
        let short_key = front.replace("0123456789abcdef-secret", "short");
        let error = Config::from_toml(&short_key)
            .unwrap()
            .validate_for(Role::Front)
            .unwrap_err();
        assert!(error.to_string().contains("apps[0].api_keys"), "{error}");
        let no_topic = front.replace("com.example.shop", "");
        let error = Config::from_toml(&no_topic)
            .unwrap()
            .validate_for(Role::Front)
            .unwrap_err();
        assert!(error.to_string().contains("apps[0].apns.topic"), "{error}");
    }

    #[test]
    fn connection_limits_have_production_defaults_and_are_checked() {
        let config = Config::from_toml(GOOD).unwrap();
        assert_eq!(config.front.header_read_timeout, Duration::from_secs(10));
        assert_eq!(config.front.idle_timeout, Duration::from_secs(60));
        assert_eq!(config.front.max_connections, 10_000);
        for (bad, key) in [
            ("header_read_timeout = \"0s\"", "front.header_read_timeout"),
            ("body_read_timeout = \"1ms\"", "front.body_read_timeout"),
            ("idle_timeout = \"0s\"", "front.idle_timeout"),
            (
                "body_min_bytes_per_second = 0",
                "front.body_min_bytes_per_second",
            ),
            ("max_connections = 0", "front.max_connections"),
            ("large_body_bytes = 0", "front.large_body_bytes"),
            ("max_large_bodies = 0", "front.max_large_bodies"),
        ] {
            let text = GOOD.replace("[front]\n", &format!("[front]\n{bad}\n"));
            let config = Config::from_toml(&text).unwrap();
            let error = config.validate_for(Role::Front).unwrap_err();
            assert!(error.to_string().contains(key), "{error}");
            // Only the front checks its own keys.
            config.validate_for(Role::Agent).unwrap();
        }
        let text = GOOD.replace(
            "[front]\n",
            "[front]\nheader_read_timeout = \"250ms\"\nmax_large_bodies = 2\n",
        );
        let config = Config::from_toml(&text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.front.header_read_timeout, Duration::from_millis(250));
        assert_eq!(config.front.max_large_bodies, 2);
    }

    #[test]
    fn secrets_never_print() {
        let config = Config::from_toml(GOOD).unwrap();
        let shown = config.to_redacted_toml();
        assert!(!shown.contains("0123456789abcdef-secret"));
        assert!(shown.contains("<redacted>"));
        assert!(!format!("{config:?}").contains("0123456789abcdef-secret"));
    }

    #[test]
    fn errors_name_the_key() {
        let error = Config::from_toml("[controller]\nchunk_size = \"many\"").unwrap_err();
        assert!(
            error.to_string().contains("controller.chunk_size"),
            "{error}"
        );

        let error = Config::from_toml("[front]\nlisten = \"nowhere\"").unwrap_err();
        assert!(error.to_string().contains("front.listen"), "{error}");

        let error = Config::from_toml("[front]\nlisten_typo = 1").unwrap_err();
        assert!(error.to_string().contains("listen_typo"), "{error}");

        let missing_team = GOOD.replace("team_id = \"TEAM123456\"", "");
        let error = Config::from_toml(&missing_team)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            error.to_string().contains("apps[0].apns.team_id"),
            "{error}"
        );

        let bad_default = GOOD.replace("default_app = \"shop\"", "default_app = \"nope\"");
        let error = Config::from_toml(&bad_default)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(error.to_string().contains("front.default_app"), "{error}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API fixes the error type
    fn environment_overrides_a_config_built_in_code_and_keeps_its_secrets() {
        let mut built = Config::from_toml(GOOD).unwrap();
        built.front.operator_key = Some(Secret::new("operator-key-0123456789"));
        figment::Jail::expect_with(|jail| {
            jail.set_env("VOLLEY_CONTROLLER__FSYNC", "false");
            let config = built
                .clone()
                .with_env_overrides()
                .map_err(|e| e.to_string())?;
            assert!(!config.controller.fsync);
            assert_eq!(
                config.apps[0].api_keys[0].expose(),
                "0123456789abcdef-secret"
            );
            assert_eq!(
                config.front.operator_key.as_ref().map(Secret::expose),
                Some("operator-key-0123456789")
            );
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API fixes the error type
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("volley.toml");
        std::fs::write(&path, GOOD).unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("VOLLEY_CONTROLLER__CHUNK_SIZE", "250");
            let config = Config::load(Some(&path)).map_err(|e| e.to_string())?;
            assert_eq!(config.controller.chunk_size, 250);
            Ok(())
        });
    }

    #[test]
    fn a_database_password_never_shows() {
        let config = Config::from_toml(
            "[controller]\nstore = \"postgres\"\npostgres_url = \"postgres://volley:s3cret@db:5432/volley\"",
        )
        .unwrap();
        let url = config.controller.postgres_url.as_ref().unwrap();
        assert_eq!(url.expose(), "postgres://volley:s3cret@db:5432/volley");
        let shown = serde_json::to_string(&config).unwrap() + &format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("postgres://volley:redacted@db:5432/volley"));
        assert_eq!(
            DatabaseUrl::new("host=db password=s3cret").redacted(),
            "<redacted>"
        );
        let missing = Config::from_toml("[controller]\nstore = \"postgres\"").unwrap();
        let error = missing
            .validate_for(Role::Controller)
            .unwrap_err()
            .to_string();
        assert!(error.contains("controller.postgres_url"), "{error}");
    }

    #[test]
    fn several_controllers_as_a_list_or_with_commas() {
        let config = Config::from_toml(
            "[front]\ncontroller = [\"a:7070\", \"b:7070\"]\n[agent]\ncontroller = \"a:7070,b:7070\"",
        )
        .unwrap();
        assert_eq!(config.front.controller, "a:7070,b:7070");
        assert_eq!(config.agent.controller, "a:7070,b:7070");
        let error = Config::from_toml("[front]\ncontroller = 7070").unwrap_err();
        assert!(error.to_string().contains("front.controller"), "{error}");
    }
}
