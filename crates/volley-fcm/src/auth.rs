//! OAuth 2.0 access tokens for FCM, minted from a service account.
//!
//! The flow is Google's "JWT bearer" grant: an RS256 JWT assertion signed with the service
//! account's key is posted to its `token_uri`, which answers with an access token valid for
//! about an hour. We sign with `jsonwebtoken` (ring) and post over our own HTTP/2 pool rather
//! than use `gcp_auth`, because `gcp_auth`'s HTTP client can neither trust an extra CA (the
//! fake's) nor be pointed at an allow-listed token endpoint.
//!
//! The token cache keeps the current token where every sender reads it without a lock, refreshes
//! it in the background before it expires, and funnels concurrent refreshes (many senders
//! seeing the same 401) into one request.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::Value;
use volley_provider::{Outcome, Pool, Reason};

use crate::config::FCM_SCOPE;

/// Lifetime of a signed assertion; Google accepts at most one hour.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);

/// Lifetime assumed when a token response has no `expires_in`.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// Wait between background refresh attempts while the current token is still usable.
const BACKGROUND_RETRY: Duration = Duration::from_secs(10);

/// The source of "now" for token lifetimes; the system clock, or a manual one in tests.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// Milliseconds since the epoch, when manual.
    manual: Option<Arc<AtomicU64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// A clock that stands still at `start` until [`Clock::advance`] moves it.
    pub fn manual(start: SystemTime) -> Clock {
        Clock {
            manual: Some(Arc::new(AtomicU64::new(millis_since_epoch(start)))),
        }
    }

    /// Moves a manual clock forward; the system clock ignores it.
    pub fn advance(&self, by: Duration) {
        if let Some(ms) = &self.manual {
            ms.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
        }
    }

    /// Now, in milliseconds since the epoch.
    pub fn now_ms(&self) -> u64 {
        match &self.manual {
            Some(ms) => ms.load(Ordering::SeqCst),
            None => millis_since_epoch(SystemTime::now()),
        }
    }
}

fn millis_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How long before expiry a token is refreshed: 10 % of its lifetime, at most 5 minutes.
///
/// A one-hour Google token is refreshed after 55 minutes; a short-lived token (a test's)
/// still gets most of its life.
pub(crate) fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).min(Duration::from_secs(300))
}

/// An access token as senders use it.
#[derive(Debug)]
pub(crate) struct AccessToken {
    /// `Bearer <token>`, marked sensitive.
    pub(crate) header: HeaderValue,
    /// Which fetch produced it; a 401 names the generation it was refused with.
    pub(crate) generation: u64,
    refresh_at_ms: u64,
    expires_at_ms: u64,
    /// Earliest time a sender may start the next background refresh.
    next_background_ms: AtomicU64,
}

impl AccessToken {
    /// Claims the right to start a background refresh now; one sender wins per interval.
    fn claim_background_refresh(&self, now_ms: u64) -> bool {
        let next = self.next_background_ms.load(Ordering::Relaxed);
        now_ms >= next
            && self
                .next_background_ms
                .compare_exchange(
                    next,
                    now_ms + BACKGROUND_RETRY.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }
}

/// A token as the token endpoint granted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    pub(crate) access_token: String,
    pub(crate) expires_in: Duration,
}

/// Where access tokens come from (the OAuth endpoint, or a stub in tests).
pub(crate) trait TokenSource: Send + Sync + 'static {
    /// Fetches a fresh token; `now_ms` is the cache's clock. A failure is the outcome every
    /// sender waiting on the token reports.
    fn fetch(&self, now_ms: u64) -> impl Future<Output = Result<Grant, Outcome>> + Send;
}

/// The current access token, shared by all clones of a client.
pub(crate) struct TokenCache<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for TokenCache<S> {
    fn clone(&self) -> Self {
        TokenCache {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<S> {
    source: S,
    clock: Clock,
    current: ArcSwapOption<AccessToken>,
    /// Number of completed fetches, successful or not.
    attempts: AtomicU64,
    /// Held while fetching: the single flight. Keeps the last attempt's result for those
    /// who queued behind it.
    flight: tokio::sync::Mutex<LastAttempt>,
}

struct LastAttempt {
    number: u64,
    result: Result<Arc<AccessToken>, Outcome>,
}

impl<S: TokenSource> TokenCache<S> {
    pub(crate) fn new(source: S, clock: Clock) -> TokenCache<S> {
        TokenCache {
            shared: Arc::new(Shared {
                source,
                clock,
                current: ArcSwapOption::empty(),
                attempts: AtomicU64::new(0),
                flight: tokio::sync::Mutex::new(LastAttempt {
                    number: 0,
                    result: Err(Outcome::Credential {
                        reason: Reason::known("NO_ACCESS_TOKEN"),
                    }),
                }),
            }),
        }
    }

    /// The token to send with now: the cached one while it lives (starting a background
    /// refresh once it is due), else a fresh one.
    pub(crate) async fn token(&self) -> Result<Arc<AccessToken>, Outcome> {
        let now = self.shared.clock.now_ms();
        if let Some(token) = self.shared.current.load_full() {
            if now < token.expires_at_ms {
                if now >= token.refresh_at_ms && token.claim_background_refresh(now) {
                    let cache = self.clone();
                    let generation = token.generation;
                    // The outcome is logged where the fetch happens.
                    tokio::spawn(async move {
                        let _ = cache.refresh_after(generation).await;
                    });
                }
                return Ok(token);
            }
            return self.refresh_after(token.generation).await;
        }
        self.refresh_after(0).await
    }

    /// A token newer than `stale_generation` (refused with a 401, or expired): the one another
    /// sender already fetched, or a fresh one. Concurrent callers share one fetch.
    pub(crate) async fn refresh_after(
        &self,
        stale_generation: u64,
    ) -> Result<Arc<AccessToken>, Outcome> {
        let shared = &self.shared;
        if let Some(token) = self.newer_than(stale_generation) {
            return Ok(token);
        }
        // An attempt that completes after this point started no earlier than our need arose
        // minus its own duration; its result is fresh enough to share.
        let seen = shared.attempts.load(Ordering::Acquire);
        let mut last = shared.flight.lock().await;
        if last.number > seen {
            return last.result.clone();
        }
        if let Some(token) = self.newer_than(stale_generation) {
            return Ok(token);
        }
        let started = shared.clock.now_ms();
        let generation = last.number + 1;
        let result = shared
            .source
            .fetch(started)
            .await
            .and_then(|grant| access_token(grant, generation, started));
        match &result {
            Ok(token) => {
                tracing::info!(
                    generation,
                    lifetime_s = (token.expires_at_ms - started) / 1000,
                    "fcm access token fetched"
                );
                shared.current.store(Some(token.clone()));
            }
            Err(outcome) => {
                tracing::warn!(generation, reason = ?outcome.reason(), "fcm access token fetch failed");
            }
        }
        last.number = generation;
        last.result = result.clone();
        shared.attempts.store(generation, Ordering::Release);
        result
    }

    fn newer_than(&self, generation: u64) -> Option<Arc<AccessToken>> {
        let token = self.shared.current.load_full()?;
        (token.generation > generation && self.shared.clock.now_ms() < token.expires_at_ms)
            .then_some(token)
    }
}

fn access_token(
    grant: Grant,
    generation: u64,
    started_ms: u64,
) -> Result<Arc<AccessToken>, Outcome> {
    let mut header =
        HeaderValue::from_maybe_shared(Bytes::from(format!("Bearer {}", grant.access_token)))
            .map_err(|_| Outcome::Credential {
                reason: Reason::known("INVALID_ACCESS_TOKEN"),
            })?;
    header.set_sensitive(true);
    // Lifetimes count from when we asked, so network time only makes us refresh earlier.
    let lifetime = grant.expires_in;
    let expires_at_ms = started_ms + lifetime.as_millis() as u64;
    let refresh_at_ms = expires_at_ms - refresh_margin(lifetime).as_millis() as u64;
    Ok(Arc::new(AccessToken {
        header,
        generation,
        refresh_at_ms,
        expires_at_ms,
        next_background_ms: AtomicU64::new(refresh_at_ms),
    }))
}

/// Claims of the assertion posted to the token endpoint.
#[derive(Debug, Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

/// Signs assertions for one service account.
pub(crate) struct Signer {
    key: EncodingKey,
    header: Header,
    client_email: String,
    token_uri: String,
}

impl Signer {
    /// Loads the key; `None` when it is not a usable RSA private key (checked by signing once).
    pub(crate) fn new(
        private_key_pem: &str,
        private_key_id: Option<&str>,
        client_email: &str,
        token_uri: &str,
    ) -> Option<Signer> {
        let key = EncodingKey::from_rsa_pem(private_key_pem.as_bytes()).ok()?;
        let mut header = Header::new(Algorithm::RS256);
        header.kid = private_key_id.map(str::to_owned);
        let signer = Signer {
            key,
            header,
            client_email: client_email.to_owned(),
            token_uri: token_uri.to_owned(),
        };
        signer.assertion(0).ok()?;
        Some(signer)
    }

    /// An assertion issued at `now_s` (seconds since the epoch).
    pub(crate) fn assertion(&self, now_s: u64) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = Claims {
            iss: &self.client_email,
            scope: FCM_SCOPE,
            aud: &self.token_uri,
            iat: now_s,
            exp: now_s + ASSERTION_LIFETIME.as_secs(),
        };
        jsonwebtoken::encode(&self.header, &claims, &self.key)
    }
}

/// Fetches access tokens from the service account's token endpoint.
pub(crate) struct OAuthSource {
    pub(crate) signer: Signer,
    pub(crate) pool: Pool,
    pub(crate) uri: Uri,
}

impl TokenSource for OAuthSource {
    async fn fetch(&self, now_ms: u64) -> Result<Grant, Outcome> {
        let assertion = self
            .signer
            .assertion(now_ms / 1000)
            .map_err(|_| Outcome::Credential {
                reason: Reason::known("ASSERTION_SIGNING_FAILED"),
            })?;
        // A JWT is base64url and dots, which form encoding leaves as they are.
        let body = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        );
        let make = || {
            let mut request = Request::new(());
            *request.method_mut() = Method::POST;
            *request.uri_mut() = self.uri.clone();
            request.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
            request
        };
        match self.pool.send(make, Bytes::from(body)).await {
            Ok(response) => token_response(response.status, &response.body),
            Err(error) => {
                tracing::warn!(%error, "token endpoint unreachable");
                Err(token_endpoint_unavailable())
            }
        }
    }
}

/// The token endpoint could not answer: nothing was sent to FCM, so a plain retry is safe.
fn token_endpoint_unavailable() -> Outcome {
    Outcome::Transient {
        reason: Reason::known("TOKEN_ENDPOINT_UNAVAILABLE"),
        retry_after: None,
        maybe_delivered: false,
    }
}

/// Reads a token endpoint response.
///
/// A refusal (4xx: `invalid_grant`, `invalid_client`, ...) is a credential outcome carrying
/// the OAuth error code; an endpoint that fails (5xx) is transient, so an outage at Google's
/// token service backs off instead of pausing the app.
pub(crate) fn token_response(status: StatusCode, body: &[u8]) -> Result<Grant, Outcome> {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    if status.is_server_error() {
        return Err(token_endpoint_unavailable());
    }
    if !status.is_success() {
        let reason = json
            .as_ref()
            .and_then(|v| v.get("error"))
            .and_then(Value::as_str)
            .map(Reason::raw)
            .unwrap_or(Reason::known("TOKEN_REQUEST_REFUSED"));
        return Err(Outcome::Credential { reason });
    }
    let invalid = || Outcome::Credential {
        reason: Reason::known("INVALID_TOKEN_RESPONSE"),
    };
    let json = json.ok_or_else(invalid)?;
    let access_token = json
        .get("access_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(invalid)?;
    if let Some(kind) = json.get("token_type").and_then(Value::as_str) {
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(invalid());
        }
    }
    let expires_in = match json.get("expires_in") {
        None | Some(Value::Null) => DEFAULT_TOKEN_LIFETIME,
        Some(v) => Duration::from_secs(v.as_u64().ok_or_else(invalid)?),
    };
    Ok(Grant {
        access_token: access_token.to_owned(),
        expires_in,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::join_all;
    use proptest::prelude::*;
    use std::sync::atomic::AtomicBool;

    /// A token source that counts fetches and yields so concurrent callers pile up.
    struct Stub {
        fetches: AtomicU64,
        fail: AtomicBool,
        lifetime: Duration,
    }

    impl TokenSource for Arc<Stub> {
        async fn fetch(&self, _now_ms: u64) -> Result<Grant, Outcome> {
            let n = self.fetches.fetch_add(1, Ordering::SeqCst) + 1;
            for _ in 0..5 {
                tokio::task::yield_now().await;
            }
            if self.fail.load(Ordering::SeqCst) {
                return Err(Outcome::Credential {
                    reason: Reason::known("invalid_grant"),
                });
            }
            Ok(Grant {
                access_token: format!("token-{n}"),
                expires_in: self.lifetime,
            })
        }
    }

    fn cache(lifetime: Duration) -> (TokenCache<Arc<Stub>>, Arc<Stub>, Clock) {
        let stub = Arc::new(Stub {
            fetches: AtomicU64::new(0),
            fail: AtomicBool::new(false),
            lifetime,
        });
        let clock = Clock::manual(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        (TokenCache::new(stub.clone(), clock.clone()), stub, clock)
    }

    fn fetches(stub: &Stub) -> u64 {
        stub.fetches.load(Ordering::SeqCst)
    }

    async fn settle(stub: &Stub, expected: u64) {
        for _ in 0..1000 {
            if fetches(stub) == expected {
                break;
            }
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn concurrent_first_senders_share_one_fetch() {
        let (cache, stub, _) = cache(Duration::from_secs(3600));
        let tokens = join_all((0..100).map(|_| cache.token())).await;
        assert_eq!(fetches(&stub), 1);
        for token in tokens {
            let token = token.unwrap();
            assert_eq!(token.header, "Bearer token-1");
            assert!(token.header.is_sensitive());
        }
    }

    #[tokio::test]
    async fn a_fresh_token_is_reused() {
        let (cache, stub, clock) = cache(Duration::from_secs(3600));
        cache.token().await.unwrap();
        clock.advance(Duration::from_secs(54 * 60));
        assert_eq!(cache.token().await.unwrap().generation, 1);
        assert_eq!(fetches(&stub), 1);
    }

    #[tokio::test]
    async fn a_token_due_for_refresh_is_still_used_while_one_background_fetch_runs() {
        let (cache, stub, clock) = cache(Duration::from_secs(3600));
        cache.token().await.unwrap();
        clock.advance(Duration::from_secs(56 * 60));
        let tokens = join_all((0..50).map(|_| cache.token())).await;
        assert!(tokens.iter().all(|t| t.as_ref().unwrap().generation == 1));
        settle(&stub, 2).await;
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert_eq!(fetches(&stub), 2);
        assert_eq!(cache.token().await.unwrap().generation, 2);
    }

    #[tokio::test]
    async fn a_failed_background_refresh_is_retried_after_an_interval() {
        let (cache, stub, clock) = cache(Duration::from_secs(3600));
        cache.token().await.unwrap();
        stub.fail.store(true, Ordering::SeqCst);
        clock.advance(Duration::from_secs(56 * 60));
        cache.token().await.unwrap();
        settle(&stub, 2).await;
        cache.token().await.unwrap();
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert_eq!(fetches(&stub), 2, "no second attempt within the interval");
        stub.fail.store(false, Ordering::SeqCst);
        clock.advance(BACKGROUND_RETRY);
        cache.token().await.unwrap();
        settle(&stub, 3).await;
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert_eq!(cache.token().await.unwrap().generation, 3);
    }

    #[tokio::test]
    async fn an_expired_token_is_replaced_before_use() {
        let (cache, stub, clock) = cache(Duration::from_secs(3600));
        cache.token().await.unwrap();
        clock.advance(Duration::from_secs(3600));
        let tokens = join_all((0..20).map(|_| cache.token())).await;
        assert!(tokens.iter().all(|t| t.as_ref().unwrap().generation == 2));
        assert_eq!(fetches(&stub), 2);
    }

    #[tokio::test]
    async fn four_hundred_simultaneous_401s_cause_one_refresh() {
        let (cache, stub, _) = cache(Duration::from_secs(3600));
        let refused = cache.token().await.unwrap().generation;
        let tokens = join_all((0..400).map(|_| cache.refresh_after(refused))).await;
        assert_eq!(fetches(&stub), 2);
        assert!(tokens.iter().all(|t| t.as_ref().unwrap().generation == 2));
        // A late 401 for the old generation is answered from the cache.
        assert_eq!(cache.refresh_after(refused).await.unwrap().generation, 2);
        assert_eq!(fetches(&stub), 2);
    }

    #[tokio::test]
    async fn a_failed_fetch_is_shared_by_those_waiting_on_it() {
        let (cache, stub, _) = cache(Duration::from_secs(3600));
        stub.fail.store(true, Ordering::SeqCst);
        let results = join_all((0..50).map(|_| cache.token())).await;
        assert_eq!(fetches(&stub), 1);
        for result in results {
            assert_eq!(result.unwrap_err().class(), "credential");
        }
        // A later sender tries again.
        stub.fail.store(false, Ordering::SeqCst);
        assert_eq!(cache.token().await.unwrap().generation, 2);
    }

    #[test]
    fn token_responses() {
        let ok = |body: &str| token_response(StatusCode::OK, body.as_bytes());
        assert_eq!(
            ok(r#"{"access_token":"ya29.x","expires_in":3599,"token_type":"Bearer"}"#),
            Ok(Grant {
                access_token: "ya29.x".into(),
                expires_in: Duration::from_secs(3599)
            })
        );
        assert_eq!(
            ok(r#"{"access_token":"a"}"#).unwrap().expires_in,
            DEFAULT_TOKEN_LIFETIME
        );
        for bad in [
            "",
            "<html>",
            r#"{"expires_in":1}"#,
            r#"{"access_token":""}"#,
            r#"{"access_token":"a","token_type":"mac"}"#,
            r#"{"access_token":"a","expires_in":-1}"#,
        ] {
            assert_eq!(
                ok(bad).unwrap_err(),
                Outcome::Credential {
                    reason: Reason::known("INVALID_TOKEN_RESPONSE")
                },
                "{bad}"
            );
        }
        assert_eq!(
            token_response(
                StatusCode::BAD_REQUEST,
                br#"{"error":"invalid_grant","error_description":"Invalid JWT"}"#
            )
            .unwrap_err(),
            Outcome::Credential {
                reason: Reason::raw("invalid_grant")
            }
        );
        assert_eq!(
            token_response(StatusCode::UNAUTHORIZED, b"nope")
                .unwrap_err()
                .reason()
                .unwrap()
                .as_str(),
            "TOKEN_REQUEST_REFUSED"
        );
        assert_eq!(
            token_response(StatusCode::SERVICE_UNAVAILABLE, b"<html>").unwrap_err(),
            token_endpoint_unavailable()
        );
    }

    #[test]
    fn the_assertion_carries_googles_claims() {
        let uri = "https://oauth2.googleapis.com/token";
        let signer = Signer::new(
            include_str!("../tests/data/other-service-account-key.pem"),
            Some("kid-1"),
            "sender@demo.iam.gserviceaccount.com",
            uri,
        )
        .unwrap();
        let jwt = signer.assertion(1_700_000_000).unwrap();
        let header = jsonwebtoken::decode_header(&jwt).unwrap();
        assert_eq!(header.alg, Algorithm::RS256);
        assert_eq!(header.kid.as_deref(), Some("kid-1"));
        let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
        validation.insecure_disable_signature_validation();
        validation.validate_exp = false;
        validation.set_audience(&[uri]);
        let claims = jsonwebtoken::decode::<Value>(
            &jwt,
            &jsonwebtoken::DecodingKey::from_secret(b""),
            &validation,
        )
        .unwrap()
        .claims;
        assert_eq!(
            claims,
            serde_json::json!({
                "iss": "sender@demo.iam.gserviceaccount.com",
                "scope": FCM_SCOPE,
                "aud": uri,
                "iat": 1_700_000_000u64,
                "exp": 1_700_003_600u64,
            })
        );
    }

    #[test]
    fn a_bad_private_key_is_refused() {
        assert!(Signer::new(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            None,
            "a@b",
            "https://x/token"
        )
        .is_none());
    }

    proptest! {
        #[test]
        fn refresh_comes_before_expiry_and_after_most_of_the_lifetime(secs in 1u64..100_000) {
            let lifetime = Duration::from_secs(secs);
            let margin = refresh_margin(lifetime);
            prop_assert!(margin <= Duration::from_secs(300));
            prop_assert!(margin * 10 <= lifetime);
            prop_assert!(margin < lifetime);
            if secs >= 3000 {
                prop_assert_eq!(margin, Duration::from_secs(300));
            }
        }
    }
}
