//! Fake APNs, FCM and Web Push servers, real enough for independent clients.
//!
//! A [`FakeServer`] speaks real HTTP/2 over TLS (or h2c) on a listener the caller bound, on its own
//! OS thread with a current-thread tokio runtime, so it never competes with the caller's runtime.
//! It answers like the real services do (status, headers and body shapes), fails on purpose for
//! tokens with scripted prefixes (see the table in [`cli`]), and counts what it saw in [`Stats`].
//!
//! Layout: `server` accepts connections and drives `h2` (and keeps requests whole when asked:
//! [`Captured`]); `apns` and `fcm` turn one request into a reply; `shim` rewrites a few HTTP/2
//! frames on the wire where `h2` offers no knob (the single-stream-until-auth dance and
//! GOAWAY's last-stream-id); `tls` mints the CA and server
//! certificate at start-up; `keys` gives tests credentials the fake accepts.
//!
//! [`FakeWebPush`] (module [`webpush`]) is a push service for browsers' subscriptions (RFC 8030):
//! a hyper server speaking HTTP/2 and HTTP/1.1, which verifies VAPID and decrypts every payload.
//!
//! Every fake can also serve its counters over plain HTTP/1.1 on a second listener
//! (`--stats-listen`), for a process that measures the fake from outside; the push service
//! hands out subscriptions in bulk there too.

#![forbid(unsafe_code)]

mod apns;
pub mod cli;
mod counters;
mod fcm;
pub mod keys;
mod server;
mod shim;
mod tls;
pub mod webpush;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use server::FakeServer;
pub use webpush::{
    bulk_subscription_id, CapturedPush, FakeWebPush, FakeWebPushConfig, SubscriptionInfo,
    SubscriptionKeys, WebPushStats, MAX_BULK_SUBSCRIPTIONS,
};

/// Which service the fake imitates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// Apple Push Notification service (`POST /3/device/{token}`).
    Apns,
    /// Firebase Cloud Messaging HTTP v1 (`POST /v1/projects/{p}/messages:send`, `POST /token`).
    Fcm,
}

/// Delay injected before answering each request (other streams are not held up).
#[derive(Clone, Debug, PartialEq)]
pub enum Latency {
    /// Answer as soon as the request body is in.
    None,
    /// Wait exactly this long.
    Fixed(Duration),
    /// Wait a uniformly random time in `min..=max`.
    Uniform {
        /// Shortest delay.
        min: Duration,
        /// Longest delay.
        max: Duration,
    },
}

impl Latency {
    /// Waits the injected delay, if any.
    pub(crate) async fn wait(&self) {
        match self {
            Latency::None => {}
            Latency::Fixed(d) => tokio::time::sleep(*d).await,
            Latency::Uniform { min, max } => {
                let d = rand::Rng::gen_range(&mut rand::thread_rng(), *min..=*max);
                tokio::time::sleep(d).await;
            }
        }
    }
}

/// How a [`FakeServer`] behaves; start from [`FakeConfig::apns`] or [`FakeConfig::fcm`].
#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// The service imitated.
    pub provider: Provider,
    /// Serve TLS (default); `false` serves h2c with prior knowledge.
    pub tls: bool,
    /// SETTINGS_MAX_CONCURRENT_STREAMS, default 1000.
    pub max_concurrent_streams: u32,
    /// Advertise 1 concurrent stream until the connection's first authorised request, then raise it.
    pub single_stream_until_auth: bool,
    /// Per connection: after the Nth stream, GOAWAY with last-stream-id = the Nth, then close.
    pub goaway_after: Option<u64>,
    /// Delay injected before answering each request.
    pub latency: Latency,
    /// Fraction of requests answered with a transient error (503 ServiceUnavailable / UNAVAILABLE).
    pub transient_error_rate: f64,
    /// Append one line per delivered notification: `token\tid\tcollapse_id` (buffered,
    /// flushed at least every 100 ms and when the server stops).
    pub record_path: Option<PathBuf>,
    /// Keep the first this many notification requests whole (method, path, headers, body and
    /// the status answered) for [`FakeServer::captured`] and `GET /requests`; 0 keeps none.
    pub capture: usize,
    /// Where to write the generated CA certificate PEM (a temporary file otherwise).
    pub ca_out: Option<PathBuf>,
    /// Verify APNs provider-token signatures (ES256) against this public key when set.
    pub apns_jwt_public_key_pem: Option<String>,
    /// Require this `apns-topic` when set.
    pub apns_topic: Option<String>,
    /// Require this project id in the FCM path when set.
    pub fcm_project: Option<String>,
    /// Verify the OAuth assertion's RS256 signature against this public key when set.
    pub fcm_oauth_public_key_pem: Option<String>,
    /// `expires_in` of issued access tokens, default 3600 s.
    pub fcm_access_token_ttl: Duration,
    /// Skip authorisation checks entirely (APNs provider token, FCM bearer); only for measuring
    /// raw throughput, where a load generator cannot mint credentials. Default false.
    pub skip_auth: bool,
}

impl FakeConfig {
    /// Defaults for a fake APNs.
    pub fn apns() -> Self {
        Self::new(Provider::Apns)
    }

    /// Defaults for a fake FCM.
    pub fn fcm() -> Self {
        Self::new(Provider::Fcm)
    }

    fn new(provider: Provider) -> Self {
        FakeConfig {
            provider,
            tls: true,
            max_concurrent_streams: 1000,
            single_stream_until_auth: false,
            goaway_after: None,
            latency: Latency::None,
            transient_error_rate: 0.0,
            record_path: None,
            capture: 0,
            ca_out: None,
            apns_jwt_public_key_pem: None,
            apns_topic: None,
            fcm_project: None,
            fcm_oauth_public_key_pem: None,
            fcm_access_token_ttl: Duration::from_secs(3600),
            skip_auth: false,
        }
    }
}

/// A snapshot of the fake's counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    /// Notification requests (not OAuth, not `/stats`).
    pub requests: u64,
    /// Notification requests by answered HTTP status.
    pub by_status: BTreeMap<u16, u64>,
    /// Notifications answered 200.
    pub delivered: u64,
    /// Distinct tokens delivered.
    pub distinct_tokens: u64,
    /// Extra deliveries to tokens already delivered once.
    pub duplicate_tokens: u64,
    /// OAuth access tokens issued (FCM).
    pub oauth_tokens_issued: u64,
    /// GOAWAY frames initiated by `goaway_after`.
    pub goaways_sent: u64,
    /// Connections accepted.
    pub connections: u64,
    /// Most streams any connection had open at once.
    pub max_open_streams_seen: u64,
    /// Most streams any connection had open at once before its first authorised request.
    pub max_open_streams_before_auth: u64,
}

/// One notification request as the fake received it, kept when [`FakeConfig::capture`] is set.
///
/// The `authorization` header keeps only its scheme (`bearer`), so that a capture never holds
/// a credential.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Captured {
    /// `POST`.
    pub method: String,
    /// The request path, e.g. `/3/device/{token}` or `/v1/projects/{p}/messages:send`.
    pub path: String,
    /// Every request header, names lowercase; a repeated header's values joined with `, `.
    pub headers: BTreeMap<String, String>,
    /// The body as JSON, or as a string when it is not JSON.
    pub body: serde_json::Value,
    /// The HTTP status the fake answered.
    pub status: u16,
}

impl Captured {
    /// The headers whose names start with `prefix` (e.g. `apns-`).
    pub fn headers_with_prefix(&self, prefix: &str) -> BTreeMap<String, String> {
        self.headers
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
    }

    /// The device token the request was for: the APNs path's last segment, or FCM's
    /// `message.token` (or `message.topic` / `message.condition`).
    pub fn target(&self) -> Option<&str> {
        if let Some(token) = self.path.strip_prefix("/3/device/") {
            return Some(token);
        }
        let message = self.body.get("message")?;
        ["token", "topic", "condition"]
            .iter()
            .find_map(|key| message.get(*key).and_then(serde_json::Value::as_str))
    }
}

/// Why the fake could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    /// A socket or file operation failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The CA or server certificate could not be generated.
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The TLS configuration was rejected.
    #[error("tls configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    /// A configured public key could not be parsed.
    #[error("invalid {what} public key: {source}")]
    Key {
        /// Which key.
        what: &'static str,
        /// The parser's complaint.
        source: jsonwebtoken::errors::Error,
    },
    /// A configuration value is out of range or malformed.
    #[error("invalid configuration: {0}")]
    Config(String),
}
