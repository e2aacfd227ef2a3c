//! Volley's agent: one per host.
//!
//! The agent loads its apps' credentials from its own configuration (they never travel over
//! the RPC link), registers with the controller, and serves `deliver` calls: each chunk's
//! tokens go into the app's APNs or FCM client as many concurrent HTTP/2 streams, transient
//! failures are retried with back-off inside the chunk, and one answer per chunk goes back.
//!
//! Each app's provider has its own circuit breaker and rate limit on the agent (a "lane"),
//! so that one app's trouble pauses that app alone. A chunk for an app whose breaker is open
//! is refused at once (`ResourceExhausted`, with how long the breaker stays open), and a
//! chunk whose breaker opens before any of its notifications was delivered (or may have been)
//! is handed back the same way: the controller puts it back at the head of its own queue and
//! offers this agent none of that app's chunks until then, so the troubled app holds none of
//! this agent's window slots while other apps wait. A chunk whose breaker opens part-way
//! hands back its unsent rest beside the report of the rest (`ChunkAnswer::returned`), and
//! the controller sends that part through another agent. Once the breaker has been open for
//! `agent.breaker.max_wait`, chunks are taken again and their notifications fail at once as
//! `CircuitOpen` (unless a probe closes the breaker): an outage ends jobs, it does not park
//! them forever.
//!
//! Each chunk is delivered on a task of its own and held (`holdings.rs`) until the controller
//! lets it go: a controller that stops mid-chunk leaves the chunk running here, and the
//! controller that follows claims it and gets its report, instead of sending it again.

mod breaker;
mod deliver;
mod holdings;
mod limit;
mod ops;
mod retry;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deliver::{Lane, Limits};
use holdings::Holdings;
use ops::{ChunkResults, LaneMetrics, Metrics, Provider, Registration, TokensInFlight};

use futures::StreamExt;
use parking_lot::Mutex;
use tarpc::context::Context;
use tarpc::server::{BaseChannel, Channel};
use tokio_util::sync::CancellationToken;
use volley_config::{AppConfig, Config};
use volley_contracts::tls::NodeRole;
use volley_contracts::{
    Agent, AgentId, AgentInfo, Chunk, ChunkAnswer, ControllerClient, ErrorCode, Links, Peer,
    Platform, Render, ServedApp, WireError, NODE_FRAME_BYTES,
};
use volley_provider::tls::{ClientIdentity, TlsOptions};

pub use retry::RetryPolicy;

/// Shortest pause a refusal asks the controller for: a breaker about to half-open is not
/// worth a round trip per millisecond.
const MIN_PAUSE: Duration = Duration::from_millis(50);

/// Time kept between a chunk's last send and the controller's deadline for it, on top of one
/// request timeout.
const DEADLINE_MARGIN: Duration = Duration::from_millis(500);

/// Why an agent could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// An app's credentials could not be loaded; names the configuration key.
    #[error("invalid `{key}`: {message}")]
    Credentials {
        /// The configuration key, e.g. `apps[0].apns.key_file`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The agent has no app to serve.
    #[error("the agent has no app with credentials: add [[apps]] with [apps.apns], [apps.fcm] or [apps.webpush]")]
    NoApps,
    /// The listener failed.
    #[error("agent listener: {0}")]
    Io(#[from] std::io::Error),
}

/// One app's provider clients on this agent.
#[derive(Clone)]
struct AppClients {
    topic: Option<String>,
    apns: Option<(volley_apns::ApnsClient, Arc<Lane>)>,
    fcm: Option<(volley_fcm::FcmClient, Arc<Lane>)>,
    webpush: Option<(volley_webpush::WebPushClient, Arc<Lane>)>,
}

/// A breaker, a rate limit and the metrics of one app's provider.
fn lane(
    name: String,
    agent: &volley_config::AgentConfig,
    rate_limit: Option<u32>,
    metrics: LaneMetrics,
) -> Arc<Lane> {
    let now = tokio::time::Instant::now();
    // A probe unanswered after a whole request timeout was lost with its chunk.
    let probe_timeout = agent.request_timeout + Duration::from_secs(1);
    Arc::new(Lane {
        name,
        breaker: Mutex::new(breaker::Breaker::new(
            agent.breaker.clone(),
            probe_timeout,
            now,
        )),
        limit: rate_limit.map(|rate| limit::RateLimit::new(rate, now)),
        max_wait: agent.breaker.max_wait,
        metrics,
    })
}

/// Builds every app's clients from the configuration, their metrics resolved from
/// `metrics`; errors name the key at fault.
fn build_clients(
    config: &Config,
    metrics: &Metrics,
) -> Result<HashMap<String, AppClients>, AgentError> {
    let mut apps = HashMap::new();
    for (index, app) in config.apps.iter().enumerate() {
        apps.insert(app.name.clone(), app_clients(config, index, app, metrics)?);
    }
    if apps.is_empty() {
        return Err(AgentError::NoApps);
    }
    Ok(apps)
}

fn read(key: String, path: &std::path::Path) -> Result<String, AgentError> {
    std::fs::read_to_string(path).map_err(|error| AgentError::Credentials {
        key,
        message: format!("cannot read {}: {error}", path.display()),
    })
}

fn app_clients(
    config: &Config,
    index: usize,
    app: &AppConfig,
    metrics: &Metrics,
) -> Result<AppClients, AgentError> {
    let agent = &config.agent;
    let prefix = format!("apps[{index}]");
    let invalid = |field: &str, message: String| AgentError::Credentials {
        key: format!("{prefix}.{field}"),
        message,
    };
    let apns = match &app.apns {
        None => None,
        Some(apns) => {
            let endpoint = match apns.endpoint.as_str() {
                "production" => volley_apns::ApnsEndpoint::Production,
                "sandbox" | "development" => volley_apns::ApnsEndpoint::Sandbox,
                url => volley_apns::ApnsEndpoint::Custom(
                    url.parse()
                        .map_err(|error: String| invalid("apns.endpoint", error))?,
                ),
            };
            let mut tls = TlsOptions {
                extra_ca_pem: apns.ca_file.clone(),
                ..TlsOptions::default()
            };
            let auth = match (&apns.key_file, &apns.cert_file) {
                (Some(key_file), _) => volley_apns::ApnsAuth::Token {
                    key_pem: read(format!("{prefix}.apns.key_file"), key_file)?,
                    key_id: apns.key_id.clone().unwrap_or_default(),
                    team_id: apns.team_id.clone().unwrap_or_default(),
                },
                (None, Some(cert_file)) => {
                    tls.client_identity = Some(ClientIdentity {
                        cert_pem: cert_file.clone(),
                        key_pem: apns.cert_key_file.clone().unwrap_or_default(),
                    });
                    volley_apns::ApnsAuth::Certificate
                }
                (None, None) => {
                    return Err(invalid(
                        "apns.key_file",
                        "APNs needs key_file or cert_file".into(),
                    ))
                }
            };
            let lane_metrics = metrics.lane(&app.name, Provider::Apns);
            let mut client_config = volley_apns::ApnsConfig::new(endpoint, auth);
            client_config.connections = agent.connections;
            client_config.request_timeout = agent.request_timeout;
            client_config.tls = tls;
            client_config.stats = lane_metrics.pool().clone();
            Some((
                volley_apns::ApnsClient::new(client_config)
                    .map_err(|error| invalid("apns", error.to_string()))?,
                lane(
                    format!("{}/APNs", app.name),
                    agent,
                    apns.rate_limit_per_second,
                    lane_metrics,
                ),
            ))
        }
    };
    let fcm = match &app.fcm {
        None => None,
        Some(fcm) => {
            let key = format!("{prefix}.fcm.service_account_file");
            let Some(path) = &fcm.service_account_file else {
                return Err(AgentError::Credentials {
                    key,
                    message: "required on an agent: FCM requests are authorised with it".into(),
                });
            };
            let json = read(key, path)?;
            let mut client_config = volley_fcm::FcmConfig::new(json);
            client_config.base = fcm
                .endpoint
                .parse()
                .map_err(|error: String| invalid("fcm.endpoint", error))?;
            client_config.project_id = fcm.project_id.clone();
            client_config.allowed_token_uris = fcm.allowed_token_uris.clone();
            client_config.connections = agent.connections;
            client_config.request_timeout = agent.request_timeout;
            client_config.tls = TlsOptions {
                extra_ca_pem: fcm.ca_file.clone(),
                ..TlsOptions::default()
            };
            let lane_metrics = metrics.lane(&app.name, Provider::Fcm);
            client_config.stats = lane_metrics.pool().clone();
            Some((
                volley_fcm::FcmClient::new(client_config)
                    .map_err(|error| invalid("fcm", error.to_string()))?,
                lane(
                    format!("{}/FCM", app.name),
                    agent,
                    fcm.rate_limit_per_second,
                    lane_metrics,
                ),
            ))
        }
    };
    let webpush = match &app.webpush {
        None => None,
        Some(webpush) => {
            let key = match (&webpush.vapid_private_key, &webpush.vapid_private_key_file) {
                (Some(key), _) => volley_webpush::vapid::VapidKey::from_base64url(key.expose())
                    .map_err(|error| invalid("webpush.vapid_private_key", error.to_string()))?,
                (None, Some(path)) => {
                    let field = "webpush.vapid_private_key_file";
                    let text = read(format!("{prefix}.{field}"), path)?;
                    let text = text.trim();
                    let key = if text.starts_with("-----BEGIN") {
                        volley_webpush::vapid::VapidKey::from_pem(text)
                    } else {
                        volley_webpush::vapid::VapidKey::from_base64url(text)
                    };
                    key.map_err(|error| invalid(field, error.to_string()))?
                }
                (None, None) => {
                    return Err(invalid(
                        "webpush.vapid_private_key",
                        "required on an agent (or vapid_private_key_file)".into(),
                    ))
                }
            };
            let guard = volley_webpush::guard::Guard::new(
                webpush.allowed_hosts.clone(),
                webpush.allow_private.clone(),
            )
            .map_err(|error| {
                let key = match error {
                    volley_webpush::guard::GuardError::Host(_) => "webpush.allowed_hosts",
                    volley_webpush::guard::GuardError::Cidr { .. } => "webpush.allow_private",
                };
                invalid(key, error.to_string())
            })?;
            let mut client_config =
                volley_webpush::WebPushConfig::new(key, webpush.subject.clone());
            client_config.guard = guard;
            client_config.connections_per_origin = agent.connections;
            client_config.request_timeout = agent.request_timeout;
            client_config.tls = TlsOptions {
                extra_ca_pem: webpush.ca_file.clone(),
                ..TlsOptions::default()
            };
            let lane_metrics = metrics.lane(&app.name, Provider::WebPush);
            client_config.stats = lane_metrics.pool().clone();
            Some((
                volley_webpush::WebPushClient::new(client_config).map_err(|error| {
                    let key = match error {
                        volley_webpush::WebPushError::Vapid(_) => "webpush.subject",
                        volley_webpush::WebPushError::Tls(_) => "webpush.ca_file",
                        _ => "webpush",
                    };
                    invalid(key, error.to_string())
                })?,
                lane(
                    format!("{}/WebPush", app.name),
                    agent,
                    webpush.rate_limit_per_second,
                    lane_metrics,
                ),
            ))
        }
    };
    Ok(AppClients {
        topic: app.apns.as_ref().map(|apns| apns.topic.clone()),
        apns,
        fcm,
        webpush,
    })
}

/// The agent's tarpc service.
#[derive(Clone)]
struct AgentServer {
    apps: Arc<HashMap<String, AppClients>>,
    per_chunk_concurrency: usize,
    retry: RetryPolicy,
    request_timeout: Duration,
    draining: Arc<AtomicBool>,
    /// The chunks this agent holds, from their `deliver` call until the controller releases
    /// them.
    holdings: Arc<Holdings>,
    /// Who is calling, on the copy that serves one link (`None` on the agent's own copies).
    peer: Option<Arc<Peer>>,
    /// Cancelled when the link this copy serves is gone (never, on the agent's own copies).
    link_closed: CancellationToken,
    /// Calls refused for the caller's role.
    denied: Arc<AtomicU64>,
    /// Chunks finished, by result.
    chunk_results: ChunkResults,
    /// Tokens of the chunks being sent.
    tokens_in_flight: TokensInFlight,
}

impl Agent for AgentServer {
    async fn deliver(
        self,
        context: Context,
        chunks: Vec<Chunk>,
    ) -> Vec<Result<ChunkAnswer, WireError>> {
        // Only the controller hands out chunks: a front's or another agent's certificate
        // cannot make this agent send with its credentials.
        if let Some(peer) = self.peer.as_deref().filter(|p| !p.is(NodeRole::Controller)) {
            self.denied.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "deliver refused: only the controller may call it");
            let denied = WireError::new(
                ErrorCode::PermissionDenied,
                "deliver is for the controller; this link's certificate names another role",
            );
            return vec![Err(denied); chunks.len()];
        }
        if self.draining.load(Ordering::Relaxed) {
            return chunks
                .iter()
                .map(|_| Err(WireError::new(ErrorCode::Unavailable, "agent is draining")))
                .collect();
        }
        // The chunks are delivered on a task of their own, which this call only waits for:
        // tarpc drops the call when the controller's link breaks (the controller was killed or
        // failed over) or its deadline passes, and the chunks must not stop with it. The
        // controller that follows claims them from the heartbeats (holdings.rs).
        let server = self.clone();
        let deadline = context.deadline;
        let count = chunks.len();
        let mut abandoned = Abandoned {
            server: &self,
            chunks: chunks.iter().map(|chunk| (chunk.id, chunk.epoch)).collect(),
        };
        let answers =
            match tokio::spawn(async move { server.deliver_all(chunks, deadline).await }).await {
                Ok(answers) => answers,
                Err(_) => {
                    let failed = WireError::new(ErrorCode::Internal, "the chunks' task failed");
                    vec![Err(failed); count]
                }
            };
        abandoned.chunks.clear();
        answers
    }
}

/// The chunks of a `deliver` call while it waits for them. Dropped before they are all
/// answered, the call was aborted: by the link's end (the controller stopped: the chunks go
/// on), or, on a link still open, by the controller giving up on the call (their leases are
/// lost, they go to another agent) or by its deadline. Then the chunks still being sent stop
/// at once, as they did when they ran inside the call.
struct Abandoned<'a> {
    server: &'a AgentServer,
    chunks: Vec<(volley_contracts::ChunkId, u32)>,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if self.chunks.is_empty() || self.server.link_closed.is_cancelled() {
            return;
        }
        let stopped = self.server.holdings.abandon(&self.chunks);
        if stopped > 0 {
            tracing::warn!(
                chunks = stopped,
                "the controller gave up on a call; stopped sending its chunks"
            );
        }
    }
}

impl AgentServer {
    /// Holds and delivers the chunks of one call; answers one outcome per chunk, in order.
    async fn deliver_all(
        self,
        chunks: Vec<Chunk>,
        deadline: std::time::Instant,
    ) -> Vec<Result<ChunkAnswer, WireError>> {
        // Every chunk of the call is held (its lease renewed by the heartbeats) from now until
        // the controller releases it, also those still waiting for their turn or already done.
        let leases: Vec<CancellationToken> = chunks
            .iter()
            .map(|chunk| {
                self.holdings
                    .hold(chunk.id, chunk.epoch, chunk.positions.clone())
            })
            .collect();
        // The chunks of a call run at once, as many at a time as one chunk runs streams: a
        // broadcast's call is one chunk, a call of single-notification chunks is a stream or
        // a few per chunk.
        let server = &self;
        let mut answers: Vec<(usize, Result<ChunkAnswer, WireError>)> =
            futures::stream::iter(chunks.into_iter().zip(leases).enumerate())
                .map(|(slot, (chunk, lease))| async move {
                    let (id, epoch) = (chunk.id, chunk.epoch);
                    let answer = server.deliver_held(chunk, lease, deadline).await;
                    server.chunk_results.finished(&answer);
                    // Kept until the controller has it on disk, whether or not the call is
                    // still there to answer.
                    server.holdings.finish(id, epoch, &answer);
                    (slot, answer)
                })
                .buffer_unordered(self.per_chunk_concurrency)
                .collect()
                .await;
        answers.sort_unstable_by_key(|(slot, _)| *slot);
        answers.into_iter().map(|(_, answer)| answer).collect()
    }

    /// Delivers one held chunk; a revocation of its lease stops the sends.
    async fn deliver_held(
        &self,
        chunk: Chunk,
        lease: CancellationToken,
        deadline: std::time::Instant,
    ) -> Result<ChunkAnswer, WireError> {
        let id = chunk.id;
        let _tokens = self.tokens_in_flight.hold(chunk.tokens.len());
        tokio::select! {
            result = self.deliver_chunk(chunk, deadline) => result,
            // Dropping the delivery stops sending the rest of the chunk: it is another
            // agent's now.
            () = lease.cancelled() => {
                tracing::warn!(chunk = %id, "lease lost; stopped sending the chunk");
                Err(WireError::new(ErrorCode::LeaseLost, "lease lost"))
            }
        }
    }
}

impl AgentServer {
    async fn deliver_chunk(
        &self,
        chunk: Chunk,
        deadline: std::time::Instant,
    ) -> Result<ChunkAnswer, WireError> {
        let no_credentials = |platform: &str| {
            WireError::new(
                ErrorCode::NoCredentials,
                format!(
                    "this agent has no {platform} credentials for app {:?}",
                    chunk.app
                ),
            )
        };
        if !chunk.positions.is_empty() && chunk.positions.len() != chunk.tokens.len() {
            return Err(WireError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "a part of {} tokens with {} positions",
                    chunk.tokens.len(),
                    chunk.positions.len()
                ),
            ));
        }
        let app = self
            .apps
            .get(&chunk.app)
            .ok_or_else(|| no_credentials("provider"))?;
        let received = tokio::time::Instant::now();
        // The controller gives up on the chunk at its deadline; the last send must be
        // answered before then.
        let deadline = tokio::time::Instant::from_std(deadline)
            .checked_sub(self.request_timeout + DEADLINE_MARGIN)
            .unwrap_or(received)
            .max(received);
        let provider;
        let lane: &Lane;
        let delivered = match &chunk.render {
            Render::Apns(render) => {
                let (client, apns_lane) =
                    app.apns.as_ref().ok_or_else(|| no_credentials("APNs"))?;
                lane = apns_lane;
                let expiry =
                    match deliver::apns_expiry(render.expiration, received, SystemTime::now()) {
                        Ok(expiry) => expiry,
                        Err(deliver::Expired) => {
                            let report = deliver::expired_report(chunk.tokens.len());
                            return Ok(in_positions(&chunk, ChunkAnswer::whole(report)));
                        }
                    };
                let (prepared, apns_id) = deliver::prepare_apns(
                    app.topic.as_deref().unwrap_or(""),
                    render,
                    chunk.collapse_id.as_deref(),
                )?;
                provider = "APNs";
                let prepared = &prepared;
                self.send_chunk(
                    &chunk,
                    provider,
                    lane,
                    deadline,
                    expiry,
                    |token| async move {
                        match apns_id {
                            None => client.send(token, prepared).await,
                            Some(id) => match client.send_detailed(token, prepared, Some(id)).await
                            {
                                Ok(sent) => sent.outcome,
                                Err(error) => error.into_outcome(),
                            },
                        }
                    },
                )
                .await?
            }
            Render::Fcm(render) => {
                let (client, fcm_lane) = app.fcm.as_ref().ok_or_else(|| no_credentials("FCM"))?;
                lane = fcm_lane;
                let expiry = deliver::fcm_ttl(render).map(|ttl| received + ttl);
                let prepared = deliver::prepare_fcm(render)?;
                provider = "FCM";
                self.send_chunk(&chunk, provider, lane, deadline, expiry, |token| {
                    client.send(token, &prepared)
                })
                .await?
            }
            Render::WebPush(render) => {
                let (client, webpush_lane) = app
                    .webpush
                    .as_ref()
                    .ok_or_else(|| no_credentials("Web Push"))?;
                lane = webpush_lane;
                let expiry = Some(received + Duration::from_secs(u64::from(render.ttl)));
                let prepared = deliver::prepare_webpush(render)?;
                provider = "Web Push";
                self.send_chunk(&chunk, provider, lane, deadline, expiry, |token| {
                    client.send(token, &prepared)
                })
                .await?
            }
        };
        let answer = if delivered.returned.is_empty() {
            tracing::debug!(chunk = %chunk.id, tokens = chunk.tokens.len(), delivered = delivered.report.delivered, "chunk delivered");
            ChunkAnswer::whole(delivered.report)
        } else {
            let now = tokio::time::Instant::now();
            let left = lane
                .breaker
                .lock()
                .open_until(now)
                .map_or(Duration::ZERO, |until| until - now);
            if delivered.untouched() {
                tracing::info!(chunk = %chunk.id, app = %chunk.app, provider, "circuit opened before anything was delivered; chunk handed back");
                return Err(paused(&chunk, provider, left));
            }
            tracing::info!(chunk = %chunk.id, app = %chunk.app, provider, returned = delivered.returned.len(), tokens = chunk.tokens.len(), "circuit opened part-way; the unsent rest of the chunk handed back");
            ChunkAnswer {
                report: delivered.report,
                returned: delivered.returned,
                pause: left.max(MIN_PAUSE),
                positions: Vec::new(),
            }
        };
        Ok(in_positions(&chunk, answer))
    }

    /// Admits a chunk past its app's breaker, then sends every token through `send` (the
    /// app's client for the chunk's provider, with the notification prepared once).
    async fn send_chunk<'a, F, Fut>(
        &self,
        chunk: &'a Chunk,
        provider: &'static str,
        lane: &Lane,
        deadline: tokio::time::Instant,
        expiry: Option<tokio::time::Instant>,
        send: F,
    ) -> Result<deliver::Sent, WireError>
    where
        F: Fn(&'a str) -> Fut,
        Fut: std::future::Future<Output = volley_provider::Outcome>,
    {
        let waited = admit_chunk(chunk, provider, lane)?;
        let limits = Limits {
            deadline,
            expiry,
            waited,
            hand_back: chunk.hand_back && waited < lane.max_wait,
        };
        Ok(deliver::deliver_all(
            &chunk.tokens,
            self.per_chunk_concurrency,
            self.retry,
            lane,
            limits,
            send,
        )
        .await)
    }
}

/// An answer in the chunk's positions (a chunk sent in part numbers its tokens by their place
/// in the whole chunk, [`Chunk::positions`]), with those positions echoed.
fn in_positions(chunk: &Chunk, mut answer: ChunkAnswer) -> ChunkAnswer {
    if chunk.positions.is_empty() {
        return answer;
    }
    // As many positions as tokens: checked when the chunk came.
    let position = |index: u32| chunk.positions[index as usize];
    for (index, _, _) in &mut answer.report.invalid {
        *index = position(*index);
    }
    for failure in &mut answer.report.failed {
        failure.index = position(failure.index);
    }
    for index in &mut answer.returned {
        *index = position(*index);
    }
    answer.positions = chunk.positions.clone();
    answer
}

/// Takes a chunk, or refuses it at once while its app's breaker is open, so that the
/// controller keeps it (and the app's other chunks) off this agent until the breaker may
/// half-open. Returns how long the breaker has been open.
///
/// Once the breaker has been open for `agent.breaker.max_wait`, chunks are taken again: their
/// notifications then fail at once as `CircuitOpen` if it is still open.
fn admit_chunk(chunk: &Chunk, provider: &str, lane: &Lane) -> Result<Duration, WireError> {
    let now = tokio::time::Instant::now();
    let (until, open_for) = {
        let breaker = lane.breaker.lock();
        (breaker.open_until(now), breaker.open_for(now))
    };
    let waited = open_for.unwrap_or_default();
    match until {
        Some(until) if waited < lane.max_wait => {
            tracing::debug!(chunk = %chunk.id, app = %chunk.app, provider, "circuit open; chunk refused");
            Err(paused(chunk, provider, until - now))
        }
        _ => Ok(waited),
    }
}

/// The answer to a chunk refused or handed back because its app's breaker is open for
/// `left` more: the controller keeps the app off this agent that long (at least
/// [`MIN_PAUSE`]).
fn paused(chunk: &Chunk, provider: &str, left: Duration) -> WireError {
    WireError::new(
        ErrorCode::ResourceExhausted,
        format!(
            "app {:?}: {provider} sends are paused on this agent (circuit open)",
            chunk.app
        ),
    )
    .retry_after(left.max(MIN_PAUSE))
}

/// Runs an agent on `listener` until `shutdown` resolves, then drains. Its ops port
/// (`/metrics`, `/healthz`, `/readyz`) is served on `ops` until it stops.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    ops: tokio::net::TcpListener,
    links: Links,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let metrics = Metrics::new();
    let apps = build_clients(&config, &metrics)?;
    let agent = &config.agent;
    let local = listener.local_addr()?;
    let advertise = agent.advertise.clone().unwrap_or_else(|| local.to_string());
    let name = agent
        .name
        .clone()
        .unwrap_or_else(|| format!("agent@{advertise}"));
    let mut served: Vec<ServedApp> = apps
        .iter()
        .map(|(name, clients)| ServedApp {
            app: name.clone(),
            platforms: [
                clients.apns.as_ref().map(|_| Platform::Apns),
                clients.fcm.as_ref().map(|_| Platform::Fcm),
                clients.webpush.as_ref().map(|_| Platform::WebPush),
            ]
            .into_iter()
            .flatten()
            .collect(),
        })
        .collect();
    served.sort_by(|a, b| a.app.cmp(&b.app));
    let app_names: Vec<String> = served.iter().map(ToString::to_string).collect();
    let ready_apps: Vec<String> = served.iter().map(|app| app.app.clone()).collect();
    let mut lanes: Vec<Arc<Lane>> = apps
        .values()
        .flat_map(|clients| {
            [
                clients.apns.as_ref().map(|(_, lane)| lane.clone()),
                clients.fcm.as_ref().map(|(_, lane)| lane.clone()),
                clients.webpush.as_ref().map(|(_, lane)| lane.clone()),
            ]
        })
        .flatten()
        .collect();
    lanes.sort_by(|a, b| a.name.cmp(&b.name));
    let server = AgentServer {
        apps: Arc::new(apps),
        per_chunk_concurrency: (agent.concurrency / agent.window as usize).max(1),
        retry: RetryPolicy {
            max_attempts: agent.max_attempts,
            base_delay: agent.retry_base_delay,
            max_delay: agent.retry_max_delay,
        },
        request_timeout: agent.request_timeout,
        draining: Arc::new(AtomicBool::new(false)),
        holdings: Arc::default(),
        peer: None,
        link_closed: CancellationToken::new(),
        denied: Arc::default(),
        chunk_results: metrics.chunks.clone(),
        tokens_in_flight: metrics.tokens_in_flight.clone(),
    };
    let stop = CancellationToken::new();
    tracing::info!(listen = %local, %advertise, %name, apps = ?app_names, "agent listening");

    let serving = {
        let server = server.clone();
        let stop = stop.clone();
        let links = links.clone();
        tokio::spawn(async move {
            let refused = Arc::default();
            let serve = volley_contracts::listen(listener, links, refused, &[]).for_each(
                move |(peer, transport)| {
                    let link_closed = CancellationToken::new();
                    let server = AgentServer {
                        peer: Some(Arc::new(peer)),
                        link_closed: link_closed.clone(),
                        ..server.clone()
                    };
                    async move {
                        let channel = BaseChannel::with_defaults(transport);
                        tokio::spawn(async move {
                            let requests = channel.execute(server.serve());
                            futures::pin_mut!(requests);
                            while let Some(response) = requests.next().await {
                                tokio::spawn(response);
                            }
                            // Marked before the channel is dropped, which aborts the calls
                            // still running: they then know that the link is gone, not that
                            // the controller gave up on them.
                            link_closed.cancel();
                        });
                    }
                },
            );
            tokio::select! {
                () = serve => {}
                () = stop.cancelled() => {}
            }
        })
    };
    let ops_addr = ops_address(ops.local_addr().ok(), &advertise);
    let info = AgentInfo {
        name,
        addr: advertise,
        apps: served,
        window: agent.window,
        ops_addr,
    };
    let registration = Arc::new(Registration::default());
    let ops_port = metrics.into_ops(
        ops::Gauges {
            lanes,
            holdings: server.holdings.clone(),
            registration: registration.clone(),
            links: links.clone(),
        },
        ready_apps,
        server.draining.clone(),
    );
    let ops_served = tokio::spawn(volley_ops::serve(
        ops,
        "agent",
        ops_port.router(),
        stop.clone().cancelled_owned(),
    ));
    let registration = tokio::spawn(keep_registered(
        info,
        agent.controller.clone(),
        links,
        agent.heartbeat_interval,
        server.clone(),
        registration,
        stop.clone(),
    ));

    shutdown.await;
    tracing::info!("agent draining");
    server.draining.store(true, Ordering::Relaxed);
    let grace = agent.shutdown_grace;
    let started = tokio::time::Instant::now();
    // First the chunks being sent finish (their calls answer them; the heartbeats go on).
    let drained = tokio::time::timeout(grace, async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        while server.holdings.sending() > 0 {
            tick.tick().await;
        }
    })
    .await;
    // Then the reports of those finished reach the controller's disk (a heartbeat, asked for
    // at once, releases them), so that nothing this agent sent is sent again if the controller
    // stops too. Not longer than two heartbeats: a controller that does not answer may never
    // release them, and holding the agent's exit for them would be holding it for nothing.
    let release = (2 * agent.heartbeat_interval)
        .max(Duration::from_millis(500))
        .min(grace.saturating_sub(started.elapsed()));
    let _ = tokio::time::timeout(release, async {
        while server.holdings.len() > 0 {
            server.holdings.ask_beat();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            chunks = server.holdings.sending(),
            held = server.holdings.len(),
            "grace period over; unfinished chunks go back to the controller"
        );
    }
    stop.cancel();
    let _ = registration.await;
    let _ = serving.await;
    let _ = ops_served.await;
    tracing::info!("agent stopped");
    Ok(())
}

/// The ops port's address as operators should reach it: bound to every interface
/// (`0.0.0.0:9071`), the host the controller dials (`agent.advertise`) with the ops port.
fn ops_address(bound: Option<std::net::SocketAddr>, advertise: &str) -> String {
    let Some(bound) = bound else {
        return String::new();
    };
    if bound.ip().is_unspecified() {
        if let Some((host, _)) = advertise.rsplit_once(':') {
            return format!("{host}:{}", bound.port());
        }
    }
    bound.to_string()
}

/// The most bytes of reports one `report` call carries (a quarter of a node's frame).
const REPORT_BYTES: usize = NODE_FRAME_BYTES / 4;

/// Registers with the controller and heartbeats, renewing the leases of the chunks held;
/// re-registers whenever the controller forgets this agent or the link breaks. With several
/// controller addresses (a leader and standbys) it registers with the leader: a standby's
/// "not leader" names it. When heartbeats have failed for a whole lease time, the chunks being
/// sent are someone else's: stop sending them.
///
/// A broken link (the controller was killed, restarted or failed over) does not stop the
/// chunks: the agent registers again at once and names them in its heartbeats, and the
/// controller it reaches claims those it finds leased in its store, which this loop then
/// reports with `report`. A controller that stopped hands a chunk out again only once its
/// successor has waited a whole lease time for a claim, and by then this agent has stopped
/// what it could not renew.
async fn keep_registered(
    info: AgentInfo,
    controller: String,
    links: Links,
    interval: Duration,
    server: AgentServer,
    ready: Arc<Registration>,
    stop: CancellationToken,
) {
    let addrs = volley_contracts::controller_addresses(&controller);
    // Where to look first: the controller reached last, or the leader a standby named.
    let mut from = 0usize;
    let mut leader_hint: Option<String> = None;
    let holdings = server.holdings.clone();
    let mut backoff = Duration::from_millis(100);
    let mut last_renewal = tokio::time::Instant::now();
    let mut lease = Duration::from_secs(15);
    // Whether the leases lapsed since the last renewal: said once per lapse, whichever way it
    // was found (a heartbeat's answer, its failure, or the lease time passing while this
    // agent looks for a controller).
    let lapsed = AtomicBool::new(false);
    let lapse = |why: &str| {
        let stopped = holdings.lapse();
        if !lapsed.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                chunks = stopped,
                why,
                "leases lapsed: stopped sending the chunks held"
            );
        }
    };
    loop {
        let attempt = async {
            // The client, where the next look starts among `addrs`, and the address dialled.
            let first = |(client, index): (ControllerClient, usize)| {
                let dialled = addrs[index % addrs.len()].clone();
                (client, index, dialled)
            };
            let (client, index, dialled) = match leader_hint.take() {
                Some(leader) => {
                    match volley_contracts::connect_controller(leader.as_str(), &links).await {
                        Ok(client) => (
                            client,
                            addrs
                                .iter()
                                .position(|addr| *addr == leader)
                                .unwrap_or(from),
                            leader,
                        ),
                        Err(_) => volley_contracts::connect_first_controller(&addrs, from, &links)
                            .await
                            .map(first)
                            .map_err(|error| (error.to_string(), None))?,
                    }
                }
                None => volley_contracts::connect_first_controller(&addrs, from, &links)
                    .await
                    .map(first)
                    .map_err(|error| (error.to_string(), None))?,
            };
            let registration = client
                .register(tarpc::context::current(), info.clone())
                .await
                .map_err(|error| (error.to_string(), None))?
                .map_err(|error| {
                    let standby =
                        (error.code == ErrorCode::NotLeader).then(|| (index, error.leader.clone()));
                    (error.to_string(), standby)
                })?;
            Ok::<_, (String, Option<(usize, Option<String>)>)>((
                client,
                registration,
                index,
                dialled,
            ))
        };
        // While no controller renews them, the chunks being sent stop once a lease time has
        // passed since the last renewal, to the moment: a restarted controller sends those it
        // finds unclaimed a lease time after its start, and this agent must have stopped them.
        let lapse_at = last_renewal + lease;
        let lapses = async {
            tokio::time::sleep_until(lapse_at).await;
            lapse("no controller renewed their leases for a lease time");
            std::future::pending::<()>().await
        };
        tokio::pin!(lapses);
        let (client, registration, index, dialled) = tokio::select! {
            () = stop.cancelled() => return,
            () = &mut lapses => unreachable!("never ends"),
            result = attempt => match result {
                Ok(registered) => registered,
                Err((error, standby)) => {
                    if let Some((index, leader)) = standby {
                        // A standby: the leader next, or the next address, without waiting long.
                        tracing::info!(%error, "a standby answered; looking for the leader");
                        from = index + 1;
                        leader_hint = leader;
                        backoff = Duration::from_millis(100);
                    } else {
                        tracing::warn!(%controller, %error, retry_in = ?backoff, "cannot register with the controller");
                        from += 1;
                    }
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = &mut lapses => unreachable!("never ends"),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    // Retried well within a lease time: a restarted controller waits that long
                    // for the chunks' claims.
                    backoff = (backoff * 2).min((lease / 8).clamp(Duration::from_millis(100), Duration::from_secs(2)));
                    continue;
                }
            },
        };
        from = index;
        let id = registration.id;
        lease = Duration::from_millis(registration.lease_ms);
        backoff = Duration::from_millis(100);
        // Claims were the previous controller's: this one claims afresh.
        holdings.unclaim_all();
        let controller = &dialled;
        tracing::info!(agent = %id, %controller, held = holdings.len(), "registered with the controller");
        ready.registered(id, controller);
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
                // A draining agent asks for its releases without waiting for the tick.
                () = holdings.beat_asked() => {}
                () = holdings.report_due() => {
                    match send_reports(&client, id, &holdings, lease).await {
                        Ok(()) => continue,
                        Err(Lost::Forgotten(error)) => {
                            tracing::warn!(agent = %id, %error, "controller forgot this agent; registering again");
                            lapse("the controller forgot this agent");
                            break;
                        }
                        Err(Lost::Link(error)) => {
                            // Tried again after the next heartbeat.
                            tracing::warn!(agent = %id, %error, "cannot report the chunks claimed");
                            continue;
                        }
                    }
                }
            }
            // A heartbeat that takes longer than the interval is as good as lost.
            let mut context = tarpc::context::current();
            context.deadline = std::time::Instant::now() + interval.max(Duration::from_millis(500));
            match client
                .heartbeat(context, id, holdings.held(), links.not_after())
                .await
            {
                Ok(Ok(renewal)) => {
                    last_renewal = tokio::time::Instant::now();
                    lapsed.store(false, Ordering::Relaxed);
                    holdings.renewed(&renewal);
                    if !renewal.claimed.is_empty() {
                        tracing::info!(agent = %id, chunks = renewal.claimed.len(), "the controller claimed chunks held since an earlier controller");
                    }
                }
                Ok(Err(error)) if error.code == ErrorCode::NotLeader => {
                    // It stepped down: the chunks held are the new leader's to renew.
                    tracing::warn!(agent = %id, %error, "the controller is a standby now; registering with the leader");
                    leader_hint = error.leader;
                    from = index + 1;
                    break;
                }
                Ok(Err(error)) => {
                    tracing::warn!(agent = %id, %error, "controller forgot this agent; registering again");
                    lapse("the controller forgot this agent");
                    break;
                }
                Err(
                    error @ (tarpc::client::RpcError::Shutdown
                    | tarpc::client::RpcError::Channel(_)),
                ) => {
                    // The controller's end of the link is gone: it stopped, or a standby takes
                    // over. Whoever answers next may claim the chunks held; they go on meanwhile.
                    tracing::warn!(agent = %id, %error, held = holdings.len(), "link to the controller lost; registering again");
                    if last_renewal.elapsed() > lease {
                        lapse("no controller renewed their leases for a lease time");
                    }
                    break;
                }
                Err(error) => {
                    if last_renewal.elapsed() > lease {
                        // Paused or cut off past a lease time: whatever the controller says next,
                        // the chunks held are someone else's by now.
                        tracing::warn!(agent = %id, %error, "heartbeat failed and no renewal for a lease time; registering again");
                        lapse("no controller renewed their leases for a lease time");
                        break;
                    }
                    tracing::warn!(agent = %id, %error, "heartbeat failed");
                    if addrs.len() > 1 && last_renewal.elapsed() > lease / 4 {
                        // A silent leader: another controller may lead by now.
                        from = index + 1;
                        break;
                    }
                }
            }
        }
        ready.lost();
    }
}

/// Why a `report` call failed.
enum Lost {
    /// The controller does not know this agent (any more): register again.
    Forgotten(WireError),
    /// The call did not get through, or the controller could not take the reports now.
    Link(String),
}

/// Reports the outcomes of the chunks the controller claimed, in calls of at most
/// [`REPORT_BYTES`]; each answered call drops its outcomes (they are on the controller's disk,
/// or the chunks are someone else's).
async fn send_reports(
    client: &ControllerClient,
    agent: AgentId,
    holdings: &Holdings,
    lease: Duration,
) -> Result<(), Lost> {
    loop {
        let reports = holdings.due(REPORT_BYTES);
        if reports.is_empty() {
            return Ok(());
        }
        // Heartbeats wait meanwhile: the call must not hold them for a lease time.
        let mut context = tarpc::context::current();
        context.deadline = std::time::Instant::now() + (lease / 2).max(Duration::from_millis(500));
        let count = reports.len();
        match client.report(context, agent, reports.clone()).await {
            Ok(Ok(())) => {
                holdings.reported(&reports);
                tracing::info!(%agent, chunks = count, "reported chunks claimed by the controller");
            }
            Ok(Err(error)) if error.code == ErrorCode::NotFound => {
                return Err(Lost::Forgotten(error))
            }
            Ok(Err(error)) => return Err(Lost::Link(error.to_string())),
            Err(error) => return Err(Lost::Link(error.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_ops_port_on_every_interface_is_named_by_the_advertised_host() {
        let any = "0.0.0.0:9071".parse().ok();
        assert_eq!(
            super::ops_address(any, "a1.internal:7071"),
            "a1.internal:9071"
        );
        let local = "127.0.0.1:4000".parse().ok();
        assert_eq!(
            super::ops_address(local, "a1.internal:7071"),
            "127.0.0.1:4000"
        );
        assert_eq!(super::ops_address(None, "a1.internal:7071"), "");
    }
}
