//! The APNs client: one credential, one pool of HTTP/2 connections, many concurrent sends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderName, AUTHORIZATION};
use http::{HeaderValue, Method, Uri};
use uuid::Uuid;
use volley_provider::tls::TlsError;
use volley_provider::{Outcome, Pool, PoolConfig, Reason, Response, SendError};

use crate::classify::classify;
use crate::config::{ApnsAuth, ApnsConfig};
use crate::jwt::{Clock, Es256Signer, IssuedToken, JwtError, SystemClock, TokenCache};
use crate::payload::{validate_token, PreparedNotification};

const APNS_TOPIC: HeaderName = HeaderName::from_static("apns-topic");
const APNS_PUSH_TYPE: HeaderName = HeaderName::from_static("apns-push-type");
const APNS_PRIORITY: HeaderName = HeaderName::from_static("apns-priority");
const APNS_EXPIRATION: HeaderName = HeaderName::from_static("apns-expiration");
const APNS_COLLAPSE_ID: HeaderName = HeaderName::from_static("apns-collapse-id");
const APNS_ID: HeaderName = HeaderName::from_static("apns-id");

const DEVICE_PATH: &[u8] = b"/3/device/";

/// At most one connect-failure warning per this many seconds and client.
const CONNECT_WARNING_INTERVAL_SECS: u64 = 10;

/// How often a request APNs never processed is resent (the pool's default is 3).
///
/// APNs closes connections with GOAWAY as a matter of course, and a burst of thousands of
/// streams meets each new connection with more streams than it will take before its own
/// GOAWAY, so a request can bounce several times. Such resends cannot duplicate a
/// notification, and the request timeout still bounds the whole exchange.
pub const MAX_RESENDS: u32 = 16;

/// Why a client could not be built; the message names the configuration key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ApnsError {
    /// The token-auth key or identifiers are unusable.
    #[error(transparent)]
    Jwt(#[from] JwtError),
    /// Certificate auth without a certificate.
    #[error("auth is certificate but tls.client_identity is not set")]
    MissingClientIdentity,
    /// No connections configured.
    #[error("connections must be at least 1")]
    NoConnections,
    /// The TLS configuration (CA file, client certificate) is unusable.
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
}

/// What APNs answered for one notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The outcome class.
    pub outcome: Outcome,
    /// The `apns-id` APNs echoed (or generated), when it sent a well-formed one.
    pub apns_id: Option<Uuid>,
}

/// An APNs client. Cheap to clone; share one per credential across all concurrent sends.
///
/// ```no_run
/// # async fn run(config: volley_apns::ApnsConfig, tokens: Vec<String>) -> Result<(), volley_apns::ApnsError> {
/// use futures::StreamExt;
/// use volley_apns::{ApnsClient, Notification};
///
/// let client = ApnsClient::new(config)?;
/// let notification = Notification { topic: "com.example.app".into(), ..Default::default() }
///     .prepare()
///     .expect("a valid notification");
/// futures::stream::iter(&tokens)
///     .for_each_concurrent(400, |token| {
///         let (client, notification) = (&client, &notification);
///         async move {
///             let outcome = client.send(token, notification).await;
///             let _ = outcome; // hand it to the retry policy / report
///         }
///     })
///     .await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ApnsClient {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    tokens: Option<TokenCache<Es256Signer>>,
    /// When a connect failure was last logged (seconds since the epoch), so that a burst
    /// failing fast against a dead endpoint logs once, not once per notification.
    last_connect_warning: AtomicU64,
}

impl std::fmt::Debug for ApnsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsClient")
            .field("pool", &self.inner.pool)
            .field("token_auth", &self.inner.tokens.is_some())
            .finish()
    }
}

impl ApnsClient {
    /// Builds a client; connections open on the first send. Token auth signs a first JWT here,
    /// so a bad key is reported now rather than as failed sends.
    pub fn new(config: ApnsConfig) -> Result<ApnsClient, ApnsError> {
        Self::with_clock(config, Arc::new(SystemClock))
    }

    /// Like [`ApnsClient::new`], with the clock that drives provider-token refreshes (tests).
    pub fn with_clock(config: ApnsConfig, clock: Arc<dyn Clock>) -> Result<ApnsClient, ApnsError> {
        if config.connections == 0 {
            return Err(ApnsError::NoConnections);
        }
        let tokens = match &config.auth {
            ApnsAuth::Token {
                key_pem,
                key_id,
                team_id,
            } => Some(TokenCache::new(
                Es256Signer::new(key_pem, key_id, team_id)?,
                clock,
            )?),
            ApnsAuth::Certificate if config.tls.client_identity.is_none() => {
                return Err(ApnsError::MissingClientIdentity)
            }
            ApnsAuth::Certificate => None,
        };
        let pool = Pool::new(PoolConfig {
            connections: config.connections,
            request_timeout: config.request_timeout,
            tls: config.tls,
            max_resends: MAX_RESENDS,
            stats: config.stats,
            ..PoolConfig::new(config.endpoint)
        })?;
        Ok(ApnsClient {
            inner: Arc::new(Inner {
                pool,
                tokens,
                last_connect_warning: AtomicU64::new(0),
            }),
        })
    }

    /// How many provider tokens this client has minted, the first included (`None` with
    /// certificate auth).
    pub fn token_mints(&self) -> Option<u64> {
        self.inner.tokens.as_ref().map(TokenCache::mints)
    }

    /// Sends `notification` to one device token and classifies the answer.
    ///
    /// Transport failures (timeouts, lost connections, connect errors) come back as
    /// [`Outcome::Transient`]; use [`ApnsClient::send_detailed`] to see their cause.
    pub async fn send(&self, token: &str, notification: &PreparedNotification) -> Outcome {
        match self.send_detailed(token, notification, None).await {
            Ok(sent) => sent.outcome,
            Err(error) => error.into_outcome(),
        }
    }

    /// Sends with an optional `apns-id` and returns the id APNs answered with; a transport
    /// failure is returned as the pool's [`SendError`], whose text says what broke (for
    /// example that the server's certificate is not trusted).
    pub async fn send_detailed(
        &self,
        token: &str,
        notification: &PreparedNotification,
        apns_id: Option<Uuid>,
    ) -> Result<Sent, SendError> {
        if validate_token(token).is_err() {
            // Not worth a request: APNs would answer BadDeviceToken.
            return Ok(Sent {
                outcome: Outcome::InvalidToken {
                    reason: Reason::known("MalformedDeviceToken"),
                    timestamp_ms: None,
                },
                apns_id: None,
            });
        }
        let uri = device_uri(token);
        let apns_id = apns_id.map(id_header);
        let Some(tokens) = &self.inner.tokens else {
            let response = self.exchange(&uri, notification, None, &apns_id).await?;
            return Ok(sent(&response));
        };
        let issued = match tokens.for_request() {
            Ok(issued) => issued,
            Err(error) => return Ok(signing_failed(&error)),
        };
        let response = self
            .exchange(&uri, notification, Some(&issued), &apns_id)
            .await?;
        let first = sent(&response);
        if !is_expired_token(&first.outcome) {
            return Ok(first);
        }
        match tokens.after_expired(issued.generation) {
            Ok(Some(fresh)) => {
                let response = self
                    .exchange(&uri, notification, Some(&fresh), &apns_id)
                    .await?;
                Ok(sent(&response))
            }
            // Too soon to mint again: the credential problem stands as APNs reported it.
            Ok(None) => Ok(first),
            Err(error) => Ok(signing_failed(&error)),
        }
    }

    async fn exchange(
        &self,
        uri: &Uri,
        notification: &PreparedNotification,
        auth: Option<&IssuedToken>,
        apns_id: &Option<HeaderValue>,
    ) -> Result<Response, SendError> {
        // Called again for each resend; every clone below is a reference-count increment.
        let make = || {
            let mut request = http::Request::new(());
            *request.method_mut() = Method::POST;
            *request.uri_mut() = uri.clone();
            let headers = request.headers_mut();
            headers.reserve(8);
            if let Some(auth) = auth {
                headers.insert(AUTHORIZATION, auth.value.clone());
            }
            headers.insert(APNS_TOPIC, notification.topic.clone());
            headers.insert(APNS_PUSH_TYPE, notification.push_type_header.clone());
            let optional = [
                (APNS_PRIORITY, &notification.priority),
                (APNS_EXPIRATION, &notification.expiration),
                (APNS_COLLAPSE_ID, &notification.collapse_id),
                (APNS_ID, apns_id),
            ];
            for (name, value) in optional {
                if let Some(value) = value {
                    headers.insert(name, value.clone());
                }
            }
            request
        };
        let result = self.inner.pool.send(make, notification.body.clone()).await;
        if let Err(SendError::Connect { endpoint, message }) = &result {
            let now = SystemClock.now_unix();
            let last = self.inner.last_connect_warning.load(Ordering::Relaxed);
            if now >= last + CONNECT_WARNING_INTERVAL_SECS
                && self
                    .inner
                    .last_connect_warning
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(%endpoint, error = %message, "apns connection failed");
            }
        }
        result
    }
}

/// `/3/device/{token}` as a `Bytes`-backed URI, so that resends clone it cheaply.
fn device_uri(token: &str) -> Uri {
    let mut path = BytesMut::with_capacity(DEVICE_PATH.len() + token.len());
    path.put_slice(DEVICE_PATH);
    path.put_slice(token.as_bytes());
    Uri::from_maybe_shared(path.freeze()).expect("a validated hex token makes a valid path")
}

fn id_header(id: Uuid) -> HeaderValue {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = id.hyphenated().encode_lower(&mut text);
    HeaderValue::from_maybe_shared(Bytes::copy_from_slice(text.as_bytes()))
        .expect("a uuid is a valid header value")
}

fn sent(response: &Response) -> Sent {
    let retry_after = response.headers.get(http::header::RETRY_AFTER);
    Sent {
        outcome: classify(response.status, retry_after, &response.body),
        apns_id: response
            .headers
            .get(APNS_ID)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| Uuid::try_parse(text).ok()),
    }
}

fn is_expired_token(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Credential { reason } if reason.as_str() == "ExpiredProviderToken")
}

fn signing_failed(error: &JwtError) -> Sent {
    tracing::error!(%error, "apns provider token cannot be signed");
    Sent {
        outcome: Outcome::Credential {
            reason: Reason::known("TokenSigningFailed"),
        },
        apns_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApnsEndpoint;
    use crate::jwt::tests::TEST_KEY_PEM;

    fn token_auth(key_pem: &str, key_id: &str, team_id: &str) -> ApnsAuth {
        ApnsAuth::Token {
            key_pem: key_pem.into(),
            key_id: key_id.into(),
            team_id: team_id.into(),
        }
    }

    #[test]
    fn configuration_errors_name_the_key() {
        let build = |auth| {
            ApnsClient::new(ApnsConfig::new(ApnsEndpoint::Sandbox, auth))
                .unwrap_err()
                .to_string()
        };
        assert!(build(token_auth("junk", "KEY1234567", "TEAM123456")).starts_with("auth.key_pem"));
        assert!(build(token_auth(TEST_KEY_PEM, "", "TEAM123456")).starts_with("auth.key_id"));
        assert!(build(token_auth(TEST_KEY_PEM, "KEY1234567", "")).starts_with("auth.team_id"));
        assert!(build(ApnsAuth::Certificate).contains("tls.client_identity"));
        let mut config = ApnsConfig::new(
            ApnsEndpoint::Sandbox,
            token_auth(TEST_KEY_PEM, "KEY1234567", "TEAM123456"),
        );
        config.connections = 0;
        assert!(ApnsClient::new(config)
            .unwrap_err()
            .to_string()
            .contains("connections"));
    }

    #[test]
    fn the_client_is_shareable() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<ApnsClient>();
    }

    #[test]
    fn paths_and_ids_are_well_formed() {
        let token = "ab".repeat(32);
        assert_eq!(device_uri(&token).path(), format!("/3/device/{token}"));
        let id = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(id_header(id), "01234567-89ab-cdef-0123-456789abcdef");
    }

    #[tokio::test]
    async fn malformed_tokens_never_leave_the_process() {
        let config = ApnsConfig::new(
            ApnsEndpoint::Sandbox,
            token_auth(TEST_KEY_PEM, "KEY1234567", "TEAM123456"),
        );
        let client = ApnsClient::new(config).unwrap();
        let notification = crate::Notification {
            topic: "com.example.app".into(),
            ..Default::default()
        }
        .prepare()
        .unwrap();
        let outcome = client.send("not-a-token", &notification).await;
        assert_eq!(outcome.class(), "invalid_token");
        assert_eq!(outcome.reason().unwrap().as_str(), "MalformedDeviceToken");
    }
}
