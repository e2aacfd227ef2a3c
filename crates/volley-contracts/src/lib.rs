//! Everything that crosses between Volley's nodes: the tarpc services of the controller and
//! the agent, their messages and the one wire error type.
//!
//! Messages are compact on purpose: a job's tokens travel as one [`TokenList`] (all tokens
//! concatenated in one buffer plus their end offsets), and a chunk carries its notification
//! rendered once for its provider, never once per token.

mod frames;
pub mod tls;
mod tokens;
mod transport;

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use tokens::{TokenList, TokenListBuilder};
pub use transport::{
    connect_agent, connect_controller, connect_first_controller, controller_addresses, frame_limit,
    listen, LinkStream, LinkTls, Links, Peer, Reload, ServerTransport, CONTROLLER_LARGE_CALLS,
    HANDSHAKE_TIMEOUT, MAX_FRAME_BYTES, MAX_LINKS, MAX_LINKS_PER_PEER, NODE_FRAME_BYTES,
    SMALL_FRAME_BYTES,
};

/// Identifies a job across the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub uuid::Uuid);

impl JobId {
    /// A fresh job id: a UUIDv7, so ids sort by creation time. The controller's store keys
    /// its tables by job id; time-ordered keys make each commit append to the right edge of
    /// its B-trees instead of touching a random page per job.
    pub fn new() -> Self {
        JobId(uuid::Uuid::now_v7())
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.as_hyphenated().fmt(f)
    }
}

impl FromStr for JobId {
    type Err = WireError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s)
            .map(JobId)
            .map_err(|_| WireError::new(ErrorCode::InvalidArgument, "job id is not a uuid"))
    }
}

/// Identifies one chunk of a job: the job's chunk sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkId {
    /// The job the chunk belongs to.
    pub job: JobId,
    /// The chunk's index within the job.
    pub index: u32,
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.job, self.index)
    }
}

/// Identifies a registered agent for the life of one registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AgentId(pub u64);

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "agent-{}", self.0)
    }
}

/// A push provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Platform {
    /// Apple Push Notification service.
    Apns,
    /// Firebase Cloud Messaging HTTP v1.
    Fcm,
    /// Web Push (RFC 8030) to browsers' push services; a token is a whole subscription.
    WebPush,
}

impl Platform {
    /// Every platform, in a fixed order (used to index per-platform counters).
    pub const ALL: [Platform; 3] = [Platform::Apns, Platform::Fcm, Platform::WebPush];

    /// The platform's lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Apns => "apns",
            Platform::Fcm => "fcm",
            Platform::WebPush => "webpush",
        }
    }

    /// How a token of this platform is named in job statuses and webhooks: the token, but
    /// for a Web Push subscription (`endpoint p256dh auth`) only its endpoint, which names
    /// it while its keys stay out of every report.
    pub fn reported_token(self, token: &str) -> &str {
        match self {
            Platform::WebPush => token.split(' ').next().unwrap_or_default(),
            Platform::Apns | Platform::Fcm => token,
        }
    }

    /// A dense index for per-platform arrays.
    pub fn index(self) -> usize {
        match self {
            Platform::Apns => 0,
            Platform::Fcm => 1,
            Platform::WebPush => 2,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A notification rendered for APNs once per job: the payload and the header values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApnsRender {
    /// The JSON payload (`{"aps": ...}`), at most 4096 bytes (5120 for VoIP).
    pub payload: Bytes,
    /// `apns-push-type`.
    pub push_type: String,
    /// `apns-priority` (10, 5 or 1).
    pub priority: u8,
    /// `apns-expiration`, epoch seconds (0 = try once).
    pub expiration: Option<u64>,
    /// `apns-collapse-id`, at most 64 bytes.
    pub collapse_id: Option<String>,
    /// `apns-topic` as the caller named it, sent verbatim; `None` sends the app's bundle id
    /// with the suffix Apple requires for the push type.
    pub topic: Option<String>,
    /// `apns-id` the caller chose (a UUID), sent with every notification of the job.
    pub apns_id: Option<String>,
}

/// A notification rendered for FCM once per job: the request body around the token.
///
/// The body of one request is `prefix + token + suffix`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FcmRender {
    /// Everything before the token, ending in `"token":"`.
    pub prefix: Bytes,
    /// Everything after the token, starting with `"`.
    pub suffix: Bytes,
}

/// A notification rendered for Web Push once per job: the plaintext every subscription gets
/// (encrypted per subscription by the agent) and the request's header values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebPushRender {
    /// The message before encryption, at most 3993 bytes (one 4096-byte `aes128gcm` record).
    pub payload: Bytes,
    /// `TTL`: seconds the push service keeps the message for an offline browser (0 = now or
    /// never).
    pub ttl: u32,
    /// `Urgency`: `very-low`, `low`, `normal` or `high`; `None` sends no header (normal).
    pub urgency: Option<String>,
    /// `Topic`: a newer message with the same topic replaces one still waiting (at most 32
    /// URL-safe base64 characters).
    pub topic: Option<String>,
}

/// The rendered notification a chunk carries for its provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Render {
    /// For APNs tokens.
    Apns(ApnsRender),
    /// For FCM tokens.
    Fcm(FcmRender),
    /// For Web Push subscriptions.
    WebPush(WebPushRender),
}

impl Render {
    /// The provider this rendering is for.
    pub fn platform(&self) -> Platform {
        match self {
            Render::Apns(_) => Platform::Apns,
            Render::Fcm(_) => Platform::Fcm,
            Render::WebPush(_) => Platform::WebPush,
        }
    }
}

/// A job as a front submits it: one notification for many tokens of one app.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitJob {
    /// The app the job belongs to (its credentials live on the agents).
    pub app: String,
    /// The notification rendered for APNs, when there are APNs tokens.
    pub apns: Option<ApnsRender>,
    /// The notification rendered for FCM, when there are FCM tokens.
    pub fcm: Option<FcmRender>,
    /// APNs device tokens.
    pub apns_tokens: TokenList,
    /// FCM registration tokens.
    pub fcm_tokens: TokenList,
    /// The notification rendered for Web Push, when there are subscriptions.
    pub webpush: Option<WebPushRender>,
    /// Web Push subscriptions, each one token: `endpoint p256dh auth` (see `volley-webpush`).
    pub webpush_tokens: TokenList,
    /// A caller's key that makes a repeated submission return the same job, scoped to `app`.
    pub idempotency_key: Option<IdempotencyKey>,
    /// Tokens of the request the front refused as malformed (not part of the job's tokens):
    /// kept with the job so that its status reports them.
    pub rejected: Rejected,
}

/// A caller's `Idempotency-Key`, with the fingerprint of the request it came with.
///
/// Keys are scoped to the job's app: two apps may use the same key for different jobs. A
/// repeat with the same key and fingerprint is answered with the first job; with another
/// fingerprint it is refused ([`ErrorCode::IdempotencyKeyReused`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyKey {
    /// The key as the caller gave it: 1 to 255 visible ASCII characters.
    pub key: String,
    /// What the request said, digested by the front; `None` matches any request (callers
    /// that cannot compute one, and keys stored before fingerprints existed).
    pub fingerprint: Option<Fingerprint>,
}

impl IdempotencyKey {
    /// A key with the fingerprint of its request.
    pub fn new(key: impl Into<String>, fingerprint: Fingerprint) -> Self {
        IdempotencyKey {
            key: key.into(),
            fingerprint: Some(fingerprint),
        }
    }

    /// Whether a repeat with `other` names the same request: equal fingerprints, or one of
    /// them unknown.
    pub fn same_request(&self, other: Option<&Fingerprint>) -> bool {
        match (&self.fingerprint, other) {
            (Some(mine), Some(theirs)) => mine == theirs,
            _ => true,
        }
    }
}

/// A digest (SHA-256) of a request, as its front computed it: two requests with the same
/// fingerprint are the same request.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint(pub [u8; 32]);

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Eight bytes are enough to tell two apart in a log.
        for byte in &self.0[..8] {
            write!(f, "{byte:02x}")?;
        }
        f.write_str("…")
    }
}

/// The most rejected tokens a job lists one by one; the count is always exact.
pub const MAX_LISTED_REJECTIONS: usize = 10_000;

/// Malformed tokens of a request, refused one by one while the rest was accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// How many tokens were refused.
    pub count: u64,
    /// The first [`MAX_LISTED_REJECTIONS`] of them, in request order.
    pub tokens: Vec<RejectedToken>,
}

impl Rejected {
    /// Records one refused token.
    pub fn push(&mut self, token: RejectedToken) {
        self.count += 1;
        if self.tokens.len() < MAX_LISTED_REJECTIONS {
            self.tokens.push(token);
        }
    }

    /// True when nothing was refused.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// A token refused before it was sent: which one (by its place in the request, since a
/// token is never echoed) and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedToken {
    /// The provider it was meant for.
    pub platform: Platform,
    /// The field it was given in, with its index: `targets.apns[3]`, `notifications[0].tokens[7]`.
    pub field: String,
    /// Why, without the token: `token is 12 characters, not 64 hex digits`.
    pub reason: String,
}

impl SubmitJob {
    /// How many notifications the job holds.
    pub fn len(&self) -> usize {
        self.apns_tokens.len() + self.fcm_tokens.len() + self.webpush_tokens.len()
    }

    /// The job's tokens for `platform`.
    pub fn tokens(&self, platform: Platform) -> &TokenList {
        match platform {
            Platform::Apns => &self.apns_tokens,
            Platform::Fcm => &self.fcm_tokens,
            Platform::WebPush => &self.webpush_tokens,
        }
    }

    /// True when the job has no token at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The controller's answer to a submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobAccepted {
    /// The job's id.
    pub id: JobId,
    /// How many notifications were accepted.
    pub accepted: u64,
    /// True when this answers a repeat of an earlier submission (same app, idempotency key
    /// and fingerprint): the job is the first submission's, nothing new was queued.
    pub replayed: bool,
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// Accepted; chunks wait for agents.
    Queued,
    /// Some chunks are out with agents.
    Running,
    /// Every notification has a final outcome.
    Done,
    /// Cancel asked; no chunk starts any more, and the chunks already out with agents are
    /// finishing. Becomes `Cancelled` when they have reported.
    Cancelling,
    /// Cancelled, and every notification has a final outcome: what had been sent stays
    /// sent, the rest is counted `cancelled`.
    Cancelled,
}

impl JobState {
    /// The state's lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Cancelling => "cancelling",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// A token a provider called invalid, with the provider's reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidToken {
    /// The provider.
    pub platform: Platform,
    /// The token, as submitted.
    pub token: String,
    /// The provider's reason, verbatim.
    pub reason: String,
    /// For APNs 410: when the token stopped being valid (ms since the epoch).
    pub timestamp_ms: Option<u64>,
}

/// Failures of one reason, counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureCount {
    /// The provider.
    pub platform: Platform,
    /// The outcome class (`transient`, `credential`, `bad_request`).
    pub class: String,
    /// The reason, verbatim.
    pub reason: String,
    /// How many notifications failed so.
    pub count: u64,
}

/// What a job's status reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The job.
    pub id: JobId,
    /// The app.
    pub app: String,
    /// Where it stands.
    pub state: JobState,
    /// Notifications accepted.
    pub accepted: u64,
    /// Delivered to the provider.
    pub delivered: u64,
    /// Failed for good (after retries), other than invalid tokens.
    pub failed: u64,
    /// Tokens the provider called invalid.
    pub invalid: u64,
    /// Not sent because the job was cancelled.
    pub cancelled: u64,
    /// Not final yet.
    pub pending: u64,
    /// Notifications that may have reached a device twice (resent after an agent was lost or a
    /// stream broke after the provider may have processed it).
    pub possible_duplicates: u64,
    /// Invalid tokens with reasons (up to the limit asked for).
    pub invalid_tokens: Vec<InvalidToken>,
    /// Failures grouped by reason.
    pub failures: Vec<FailureCount>,
    /// When the job was accepted, ms since the epoch.
    pub created_ms: u64,
    /// When the job became final, ms since the epoch.
    pub finished_ms: Option<u64>,
    /// Why some of the job's notifications are not moving, while that lasts: e.g.
    /// `waiting_for_agent: no agent serves app "b" for fcm`.
    pub waiting: Option<String>,
    /// Tokens of the request refused as malformed, not counted in `accepted`.
    pub rejected: Rejected,
}

/// One chunk of a job, as the controller hands it to an agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Chunk {
    /// The chunk's id.
    pub id: ChunkId,
    /// The lease's epoch: it grows each time the chunk is handed out again, and only a report
    /// for the current epoch counts.
    pub epoch: u32,
    /// The app whose credentials deliver it.
    pub app: String,
    /// The rendered notification; its variant says the provider.
    pub render: Render,
    /// The tokens.
    pub tokens: TokenList,
    /// The chunk's positions of `tokens`, in order, when only part of the chunk goes out (the
    /// rest another agent sent, then handed back: see [`ChunkAnswer::returned`]); empty when
    /// `tokens` is the whole chunk. Every index an agent answers with is a chunk position.
    pub positions: Vec<u32>,
    /// Whether the agent may hand back the unsent rest when the app's circuit opens part-way
    /// through. False for a part already handed back a few times: its notifications end
    /// where they are (retried, or failed as `CircuitOpen` after `agent.breaker.max_wait`)
    /// rather than go round agents whose circuits open on them in turn.
    pub hand_back: bool,
    /// A collapse id for providers when the notification sets none (the job id, for
    /// broadcasts): a duplicate caused by a crash then replaces rather than repeats on the
    /// device.
    pub collapse_id: Option<String>,
}

/// One failed notification of a chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkFailure {
    /// The token's index within the chunk.
    pub index: u32,
    /// The outcome class (`transient`, `credential`, `bad_request`).
    pub class: String,
    /// The reason, verbatim.
    pub reason: String,
}

/// What became of each token of a chunk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkReport {
    /// Delivered to the provider.
    pub delivered: u32,
    /// Tokens the provider called invalid: (index within the chunk, reason, timestamp).
    pub invalid: Vec<(u32, String, Option<u64>)>,
    /// Notifications that failed for good.
    pub failed: Vec<ChunkFailure>,
    /// Notifications resent after a send that may have reached the provider.
    pub possible_duplicates: u32,
    /// Notifications not sent because their job was cancelled.
    pub cancelled: u32,
}

/// An agent's answer for one chunk it took.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkAnswer {
    /// What became of the tokens it did not give back; its indices are chunk positions.
    pub report: ChunkReport,
    /// Positions it gives back unsent, none in flight: its app's provider circuit opened
    /// part-way through the chunk. The controller sends them through another agent; those
    /// whose earlier send may have reached the provider are counted in
    /// `report.possible_duplicates`.
    pub returned: Vec<u32>,
    /// When `returned` is not empty: how long the circuit stays open, so the controller keeps
    /// the app's chunks off this agent meanwhile.
    pub pause: std::time::Duration,
    /// The chunk's `positions` it was handed, echoed (empty: the whole chunk). A controller
    /// that adopted the chunk after a restart lost the report of the other positions, and
    /// sends them again.
    pub positions: Vec<u32>,
}

impl ChunkAnswer {
    /// The answer for a whole chunk, all of it reported.
    pub fn whole(report: ChunkReport) -> ChunkAnswer {
        ChunkAnswer {
            report,
            ..ChunkAnswer::default()
        }
    }
}

/// How an agent introduces itself to the controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// A human name (host name by default).
    pub name: String,
    /// Where the agent's tarpc server listens, as the controller should dial it.
    pub addr: String,
    /// The apps whose credentials this agent holds, each with the platforms it can send
    /// for: the controller routes a chunk only to an agent that declared its app and platform.
    pub apps: Vec<ServedApp>,
    /// How many chunks the agent wants in flight at once.
    pub window: u32,
    /// Where the agent's ops port (`/metrics`, `/healthz`, `/readyz`) listens, for operators
    /// and the dashboard.
    pub ops_addr: String,
}

/// One app an agent serves, and for which platforms it holds credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedApp {
    /// The app.
    pub app: String,
    /// The platforms whose credentials the agent loaded for it.
    pub platforms: Vec<Platform>,
}

impl fmt::Display for ServedApp {
    /// `shop: apns+fcm`, for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.app)?;
        for (index, platform) in self.platforms.iter().enumerate() {
            let separator = if index == 0 { " " } else { "+" };
            write!(f, "{separator}{platform}")?;
        }
        Ok(())
    }
}

impl AgentInfo {
    /// Whether this agent declared it can send `app`'s notifications on `platform`.
    pub fn serves(&self, app: &str, platform: Platform) -> bool {
        self.apps
            .iter()
            .any(|served| served.app == app && served.platforms.contains(&platform))
    }
}

/// The controller's answer to a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The agent's id for this registration.
    pub id: AgentId,
    /// How long a chunk lease lasts without renewal, in milliseconds. An agent whose
    /// heartbeats have failed for this long stops sending the chunks it holds: they are
    /// someone else's by then.
    pub lease_ms: u64,
}

/// A chunk an agent holds, as it reports it in each heartbeat to renew the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// The chunk.
    pub chunk: ChunkId,
    /// The epoch it was handed out with.
    pub epoch: u32,
}

/// The controller's answer to a heartbeat: what becomes of the chunks the agent said it holds
/// (those not named are renewed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renewal {
    /// Held chunks that are not, or no longer, this agent's with the epoch it gave: their lease
    /// expired or went to another agent (stop sending them at once), or their report is on
    /// the controller's disk. Forget them and their reports.
    pub released: Vec<ChunkId>,
    /// Held chunks the controller found leased in its store when it started (the controller
    /// that handed them out stopped) and now leases to this agent with the same epoch: finish
    /// them and send their outcomes with `report`, since no `deliver` call waits for them.
    pub claimed: Vec<ChunkId>,
}

/// What became of a chunk whose `deliver` call is gone, as the agent reports it with `report`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkOutcome {
    /// The chunk.
    pub chunk: ChunkId,
    /// The epoch it was handed out with.
    pub epoch: u32,
    /// Its answer, or why it was not sent: what the `deliver` call would have answered.
    pub outcome: Result<ChunkAnswer, WireError>,
    /// The chunk's positions the agent was handed (empty: the whole chunk). A controller that
    /// adopted a part lost the report of the other positions.
    pub positions: Vec<u32>,
}

/// One agent as the controller sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStat {
    /// The registration id.
    pub id: AgentId,
    /// The agent's name.
    pub name: String,
    /// Its address.
    pub addr: String,
    /// Chunks currently out with it.
    pub in_flight: u32,
    /// Chunks it has completed.
    pub chunks_done: u64,
    /// When its link certificate expires, seconds since the epoch, as its last heartbeat
    /// said (`None` on insecure links).
    pub certificate_expires_at: Option<i64>,
    /// Where its ops port listens (`/metrics`, `/healthz`, `/readyz`).
    pub ops_addr: String,
    /// The app and platform queues it paused: its circuit for them is open.
    pub paused: Vec<PausedQueue>,
}

/// An app and platform an agent paused (its circuit breaker for them is open there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PausedQueue {
    /// The app.
    pub app: String,
    /// The platform.
    pub platform: Platform,
    /// How much longer the controller keeps the app's chunks off the agent, in milliseconds.
    pub for_ms: u64,
}

/// What the live dashboard shows, in one answer: the jobs, the rate history and the
/// cluster's stats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DashboardView {
    /// The controller's clock when it answered, ms since the epoch.
    pub now_ms: u64,
    /// Jobs not final yet, newest first, then jobs finished in the last minutes, newest
    /// first: up to the number asked for in all. Their invalid tokens are not listed.
    pub jobs: Vec<JobStatus>,
    /// Cumulative outcome totals, sampled once a second, oldest first, over the last ten
    /// minutes at most: the delivery rate is the difference of two samples.
    pub history: Vec<RateSample>,
    /// Queues, agents, outcomes: what `stats` answers.
    pub stats: ClusterStats,
}

/// Cumulative outcome totals over every app at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateSample {
    /// When, ms since the epoch.
    pub at_ms: u64,
    /// Notifications delivered so far.
    pub delivered: u64,
    /// Tokens found invalid so far.
    pub invalid: u64,
    /// Notifications failed for good so far.
    pub failed: u64,
}

/// Delivery counters of one app and provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppCounters {
    /// The app.
    pub app: String,
    /// The provider.
    pub platform: Platform,
    /// Delivered.
    pub success: u64,
    /// Failed or invalid.
    pub error: u64,
}

/// Final outcomes of one app and provider, by outcome and reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCount {
    /// The app.
    pub app: String,
    /// The provider.
    pub platform: Platform,
    /// `delivered`, `invalid`, `failed` or `cancelled`.
    pub outcome: String,
    /// For `failed`: `transient`, `credential`, `bad_request` (or `internal`); empty otherwise.
    pub class: String,
    /// The provider's reason, verbatim (`Unregistered`, `UNREGISTERED`...); empty for
    /// `delivered` and `cancelled`.
    pub reason: String,
    /// How many notifications ended so.
    pub count: u64,
}

/// Upper bounds, in milliseconds, of the delivery-latency histogram buckets (the last bucket,
/// `+Inf`, is implicit).
pub const LATENCY_BUCKETS_MS: [u64; 14] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000,
];

/// A latency histogram over [`LATENCY_BUCKETS_MS`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    /// Observations per bucket (not cumulative): one per bound of [`LATENCY_BUCKETS_MS`],
    /// then one for `+Inf`.
    pub buckets: Vec<u64>,
    /// Sum of all observations, in milliseconds.
    pub sum_ms: u64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&mut self, ms: u64) {
        if self.buckets.len() != LATENCY_BUCKETS_MS.len() + 1 {
            self.buckets = vec![0; LATENCY_BUCKETS_MS.len() + 1];
        }
        let slot = LATENCY_BUCKETS_MS
            .iter()
            .position(|bound| ms <= *bound)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.buckets[slot] += 1;
        self.sum_ms += ms;
        self.count += 1;
    }
}

/// A delivery-latency histogram of one app (and provider, for chunks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatencyStat {
    /// The app.
    pub app: String,
    /// The provider; `None` for whole jobs (which may span both).
    pub platform: Option<Platform>,
    /// The observations.
    pub histogram: Histogram,
}

/// Submissions the controller refused, by reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectionCount {
    /// `overloaded` (pending limit), `draining`, `too_large`, `store` (commit failed).
    pub reason: String,
    /// How many submissions were refused so.
    pub count: u64,
}

/// Invalid-token webhook deliveries of one app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookStat {
    /// The app.
    pub app: String,
    /// Batches waiting to be acknowledged by the receiver.
    pub pending_batches: u64,
    /// Batches the receiver acknowledged.
    pub delivered_batches: u64,
    /// Attempts that failed (and were retried).
    pub failed_attempts: u64,
}

/// The controller's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStats {
    /// Chunks waiting in the scheduler's queues.
    pub queue_usage: u64,
    /// Notifications accepted and not final yet.
    pub pending_notifications: u64,
    /// Jobs not final yet.
    pub active_jobs: u64,
    /// Registered agents.
    pub agents: Vec<AgentStat>,
    /// Per-app, per-provider counters.
    pub apps: Vec<AppCounters>,
    /// Chunks handed to another agent after theirs failed.
    pub chunks_redispatched: u64,
    /// `controller.max_pending_notifications`: above it, submissions are refused (503).
    pub max_pending_notifications: u64,
    /// Submissions refused, by reason.
    pub rejections: Vec<RejectionCount>,
    /// Final outcomes per app, provider and reason.
    pub outcomes: Vec<OutcomeCount>,
    /// Job latency (accepted → every notification final), per app.
    pub job_latency: Vec<LatencyStat>,
    /// Chunk latency (handed to an agent → reported), per app and provider.
    pub chunk_latency: Vec<LatencyStat>,
    /// Invalid-token webhook deliveries, per app with a webhook.
    pub webhooks: Vec<WebhookStat>,
    /// The scheduler's queues, one per app and platform with work or a wait.
    pub queues: Vec<QueueStat>,
    /// Links refused at the TLS handshake (no certificate, another CA, expired, timed out).
    pub links_refused: u64,
    /// Calls refused because the caller's role may not make them.
    pub calls_denied: u64,
    /// When the controller's link certificate expires, seconds since the epoch (`None` on
    /// insecure links).
    pub certificate_expires_at: Option<i64>,
    /// Reloads of the controller's certificate files that failed (it kept its certificate).
    pub certificate_reload_failures: u64,
    /// The controller that answered: where its state is, its address and, on PostgreSQL,
    /// its leadership's term.
    pub controller: ControllerStat,
}

/// The controller that answers (the leader, with the PostgreSQL store).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllerStat {
    /// `redb` or `postgres`.
    pub store: String,
    /// Its address, as standbys name it (`controller.advertise`, or the bound address).
    pub address: String,
    /// Its leadership's term (PostgreSQL store): it grows by one at each takeover.
    pub term: Option<i64>,
}

/// One of the controller's scheduler queues: an app's chunks for one platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStat {
    /// The app.
    pub app: String,
    /// The platform.
    pub platform: Platform,
    /// Chunks waiting to be handed out.
    pub chunks: u64,
    /// Notifications in those chunks.
    pub notifications: u64,
    /// `deliver` calls out with agents that carry its chunks.
    pub in_flight: u64,
    /// No registered agent declared this app and platform: the chunks wait for one.
    pub waiting_for_agent: bool,
    /// Why its chunks are not moving, if they are not (the reason a job's status gives).
    pub waiting: Option<String>,
    /// Agents that serve it but paused it (its provider's circuit is open there).
    pub paused_agents: u32,
}

/// One page of a job's invalid tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidTokenPage {
    /// The job's app (the front checks ownership with it).
    pub app: String,
    /// Invalid tokens the job has so far.
    pub total: u64,
    /// The page, in the order the reports arrived.
    pub tokens: Vec<InvalidToken>,
    /// The offset of the next page; `None` when this page reaches the end.
    pub next: Option<u64>,
}

/// The class of a wire error; the front maps it onto one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request is malformed or names something invalid (400/422).
    InvalidArgument,
    /// The named job or app does not exist (404).
    NotFound,
    /// The node is shutting down or not ready (503).
    Unavailable,
    /// A per-caller limit is reached (429 with Retry-After).
    ResourceExhausted,
    /// The receiving node has no credentials for the app (409).
    NoCredentials,
    /// A bug or an unexpected failure (500).
    Internal,
    /// The system is full (pending notifications at their limit): retry later (503 with
    /// Retry-After). Nothing was queued.
    Overloaded,
    /// The chunk's lease is no longer the caller's: it expired or went to another agent
    /// (agents answer the controller so; never shown to API callers, 409 if it were).
    LeaseLost,
    /// The app's idempotency key names an earlier request with another body (422).
    IdempotencyKeyReused,
    /// The app's idempotency key names a request still being accepted: retry shortly to get
    /// its answer (409 with Retry-After).
    IdempotencyKeyInUse,
    /// The caller's certificate does not name a role allowed to make this call.
    PermissionDenied,
    /// This controller is a standby (or stepped down): nothing was done. The error's `leader`
    /// names the leader's address when known; call it there (503 if it reached an API caller).
    NotLeader,
}

impl ErrorCode {
    /// The HTTP status the front answers with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument => 400,
            ErrorCode::NotFound => 404,
            ErrorCode::NoCredentials => 409,
            ErrorCode::ResourceExhausted => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
            ErrorCode::Overloaded => 503,
            ErrorCode::LeaseLost => 409,
            ErrorCode::IdempotencyKeyReused => 422,
            ErrorCode::IdempotencyKeyInUse => 409,
            // A node with the wrong certificate is a deployment error, not the caller's.
            ErrorCode::PermissionDenied => 500,
            ErrorCode::NotLeader => 503,
        }
    }
}

/// An error that crosses the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct WireError {
    /// The class.
    pub code: ErrorCode,
    /// What went wrong, for a person; never holds a token or a secret.
    pub message: String,
    /// How long the caller should wait before trying the same thing there again, in
    /// milliseconds: an agent refusing a chunk while its app's circuit is open says until when.
    pub retry_after_ms: Option<u64>,
    /// With [`ErrorCode::NotLeader`]: the leader's address, when the standby knows it.
    pub leader: Option<String>,
}

impl WireError {
    /// A wire error of the given class.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        WireError {
            code,
            message: message.into(),
            retry_after_ms: None,
            leader: None,
        }
    }

    /// A standby's answer: nothing was done; the leader is at `leader`, when known.
    pub fn not_leader(leader: Option<String>) -> Self {
        let message = match &leader {
            Some(leader) => format!("this controller is a standby; the leader is at {leader}"),
            None => "this controller is a standby; no leader is known yet".to_owned(),
        };
        WireError {
            leader,
            ..WireError::new(ErrorCode::NotLeader, message)
                .retry_after(std::time::Duration::from_secs(1))
        }
    }

    /// The same error, telling the caller to wait `wait` before trying again.
    pub fn retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after_ms = Some(wait.as_millis() as u64);
        self
    }
}

/// Jobs with fewer notifications than this are logged at `debug`, not `info`, by the front
/// and the controller: at tens of thousands of single-notification requests a second, a log
/// line per job would be both a flood and a hot-path cost.
pub const LOG_JOBS_FROM: usize = 1000;

/// The controller's service, called by fronts (jobs, stats) and agents (registration).
#[tarpc::service]
pub trait Controller {
    /// Accepts a job; returns once it is safely queued.
    async fn submit(job: SubmitJob) -> Result<JobAccepted, WireError>;
    /// Accepts several jobs at once, answering each in order; every accepted job is safely
    /// queued before the call returns. They share one store commit and one round trip:
    /// fronts gather small jobs submitted at the same moment into one call.
    async fn submit_many(jobs: Vec<SubmitJob>) -> Vec<Result<JobAccepted, WireError>>;
    /// A job's progress, with up to `invalid_limit` invalid tokens listed.
    async fn status(id: JobId, invalid_limit: u32) -> Result<JobStatus, WireError>;
    /// Cancels a job: no chunk of it starts from then on, and those not handed to an agent
    /// yet are counted cancelled at once. Answers the status reached: `Cancelled` when no
    /// chunk is out, `Cancelling` while chunks out finish; a finished job is left as it is.
    async fn cancel(id: JobId) -> Result<JobStatus, WireError>;
    /// Up to `limit` of a job's invalid tokens from position `offset`.
    async fn invalid_tokens(
        id: JobId,
        offset: u64,
        limit: u32,
    ) -> Result<InvalidTokenPage, WireError>;
    /// Queue depth, agents and counters.
    async fn stats() -> Result<ClusterStats, WireError>;
    /// An agent joins the cluster.
    async fn register(agent: AgentInfo) -> Result<Registration, WireError>;
    /// An agent says it is alive and renews the leases of the chunks it holds (those it is
    /// sending, and those it has finished whose reports the controller has not confirmed); the
    /// answer releases the held chunks that are not its own any more or whose reports are on
    /// disk, and claims those a restarted controller takes over. An error means the controller
    /// forgot the agent: register again. It also says when the agent's link certificate
    /// expires (it may have been reloaded since it registered).
    async fn heartbeat(
        agent: AgentId,
        held: Vec<Held>,
        certificate_expires_at: Option<i64>,
    ) -> Result<Renewal, WireError>;
    /// An agent reports chunks the controller claimed in a heartbeat answer (their `deliver`
    /// call died with the controller that made it). Answers once the reports taken are on
    /// disk; a report for a chunk that is not leased to this agent with that epoch is
    /// ignored (the chunk is someone else's). Appended last: the calls' places in the request
    /// enum are on the wire, and `CONTROLLER_LARGE_CALLS` names submit and submit_many by
    /// theirs.
    async fn report(agent: AgentId, reports: Vec<ChunkOutcome>) -> Result<(), WireError>;
    /// What the live dashboard shows: up to `jobs` jobs (unfinished first), the rate history
    /// and the stats. Called by fronts.
    async fn dashboard(jobs: u32) -> Result<DashboardView, WireError>;
}

/// The agent's service, called by the controller's dispatchers.
#[tarpc::service]
pub trait Agent {
    /// Delivers every token of each chunk and reports what became of each, one answer per
    /// chunk in the order given. The chunks of one call are delivered concurrently: a
    /// dispatcher gathers the small chunks waiting in the queue (single-notification jobs)
    /// into one call, so that they share a round trip and their HTTP/2 writes.
    async fn deliver(chunks: Vec<Chunk>) -> Vec<Result<ChunkAnswer, WireError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_observations_land_in_the_first_bucket_that_holds_them() {
        let mut histogram = Histogram::default();
        for ms in [0, 5, 6, 300_000, 300_001] {
            histogram.observe(ms);
        }
        assert_eq!(histogram.buckets.len(), LATENCY_BUCKETS_MS.len() + 1);
        assert_eq!(histogram.buckets[0], 2, "0 and 5 are <= 5");
        assert_eq!(histogram.buckets[1], 1, "6 is <= 10");
        assert_eq!(histogram.buckets[LATENCY_BUCKETS_MS.len() - 1], 1);
        assert_eq!(histogram.buckets[LATENCY_BUCKETS_MS.len()], 1, "+Inf");
        assert_eq!(histogram.count, 5);
        assert_eq!(histogram.sum_ms, 600_012);
    }

    #[test]
    fn every_error_code_maps_to_one_status() {
        let codes = [
            (ErrorCode::InvalidArgument, 400),
            (ErrorCode::NotFound, 404),
            (ErrorCode::Unavailable, 503),
            (ErrorCode::ResourceExhausted, 429),
            (ErrorCode::NoCredentials, 409),
            (ErrorCode::Internal, 500),
            (ErrorCode::Overloaded, 503),
            (ErrorCode::LeaseLost, 409),
            (ErrorCode::IdempotencyKeyReused, 422),
            (ErrorCode::IdempotencyKeyInUse, 409),
            (ErrorCode::NotLeader, 503),
        ];
        for (code, status) in codes {
            assert_eq!(code.http_status(), status, "{code:?}");
        }
    }
}
