//! Provider tokens (JWT) and the rule for when to mint a new one.
//!
//! APNs wants one token reused across requests, refreshed no more often than every 20 minutes
//! (429 `TooManyProviderTokenUpdates`) and no less often than every 60 minutes (403
//! `ExpiredProviderToken`). The rule is two pure functions of the current token's
//! [`TokenStamp`] and the time, [`before_request`] and [`after_expired`], so that it can be
//! property-tested; [`TokenCache`] applies them under concurrency.
//!
//! The 20-minute floor must hold even when hundreds of requests in flight are all rejected with
//! `ExpiredProviderToken` at once: each rejection names the *generation* of the token it used,
//! and only a rejection of the current generation may re-mint, so the whole burst shares one
//! new token.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderValue;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::{Mutex, RwLock};

/// A token younger than this is reused as is (50 minutes).
pub const REFRESH_AFTER_SECS: u64 = 50 * 60;
/// Two tokens are never minted closer together than this (20 minutes, Apple's floor).
pub const MIN_MINT_INTERVAL_SECS: u64 = 20 * 60;
/// APNs rejects a token older than this (60 minutes).
pub const MAX_AGE_SECS: u64 = 60 * 60;

/// The time source of the refresh rule, injectable for tests.
pub trait Clock: Send + Sync {
    /// Seconds since the Unix epoch.
    fn now_unix(&self) -> u64;
}

/// The system's real-time clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs())
    }
}

/// A clock that moves only when told to, for tests.
#[derive(Debug, Default)]
pub struct TestClock(AtomicU64);

impl TestClock {
    /// A clock reading `now_unix`.
    pub fn new(now_unix: u64) -> Self {
        TestClock(AtomicU64::new(now_unix))
    }

    /// Sets the time.
    pub fn set(&self, now_unix: u64) {
        self.0.store(now_unix, Ordering::SeqCst);
    }

    /// Moves the time forward by `secs`.
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now_unix(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// What the refresh rule needs to know about a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenStamp {
    /// Counts mints; the first token is generation 1.
    pub generation: u64,
    /// When the token was minted (its `iat`), in seconds since the epoch.
    pub minted_at: u64,
}

impl TokenStamp {
    /// The token's age at `now`; a clock that went backwards reads as age 0.
    pub fn age(&self, now: u64) -> u64 {
        now.saturating_sub(self.minted_at)
    }
}

/// What to do before a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeforeRequest {
    /// Use the current token.
    Reuse,
    /// Mint a new token first.
    Mint,
}

/// Before a request: reuse the current token while it is younger than 50 minutes.
///
/// Refreshing at 50 minutes keeps every token used well inside its 60-minute life, and is far
/// past the 20-minute floor, so a proactive refresh can never be "too often".
pub fn before_request(current: TokenStamp, now: u64) -> BeforeRequest {
    if current.age(now) < REFRESH_AFTER_SECS {
        BeforeRequest::Reuse
    } else {
        BeforeRequest::Mint
    }
}

/// What to do after APNs answered 403 `ExpiredProviderToken`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterExpired {
    /// Someone already replaced the rejected token: retry with the current one.
    RetryWithCurrent,
    /// Mint a new token and retry with it.
    Mint,
    /// The rejected token is the current one and too young to replace: report a credential
    /// problem (typically a clock that disagrees with Apple's by more than 40 minutes).
    GiveUp,
}

/// After an `ExpiredProviderToken` for a request that used token generation `rejected`.
///
/// Only a rejection of the *current* token may mint, and only once that token is at least 20
/// minutes old: later rejections of the same generation (the rest of a burst) find a newer
/// current token and just retry with it.
pub fn after_expired(current: TokenStamp, rejected: u64, now: u64) -> AfterExpired {
    if current.generation != rejected {
        AfterExpired::RetryWithCurrent
    } else if current.age(now) >= MIN_MINT_INTERVAL_SECS {
        AfterExpired::Mint
    } else {
        AfterExpired::GiveUp
    }
}

/// Why a provider token could not be made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JwtError {
    /// `auth.key_pem` is not a PEM PKCS#8 P-256 private key.
    #[error("auth.key_pem is not a usable .p8 key (PEM PKCS#8 P-256 private key): {0}")]
    BadKey(String),
    /// `auth.key_id` is empty or not alphanumeric.
    #[error("auth.key_id must be the key's alphanumeric identifier (10 characters from Apple)")]
    BadKeyId,
    /// `auth.team_id` is empty or not alphanumeric.
    #[error("auth.team_id must be the alphanumeric Apple team identifier (10 characters)")]
    BadTeamId,
}

/// Something that signs a provider token for an issue time; [`Es256Signer`] in production.
pub trait Mint: Send + Sync {
    /// The `authorization` header value for a token issued at `iat`.
    fn mint(&self, iat: u64) -> Result<HeaderValue, JwtError>;
}

/// Signs APNs provider tokens with a `.p8` key: ES256, header `{alg, kid}`, claims `{iss, iat}`.
pub struct Es256Signer {
    key: EncodingKey,
    header: Header,
    team_id: String,
}

impl std::fmt::Debug for Es256Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Es256Signer")
            .field("kid", &self.header.kid)
            .field("team_id", &self.team_id)
            .finish_non_exhaustive()
    }
}

impl Es256Signer {
    /// Checks the key and identifiers; signs one token so that a bad key fails here, not later.
    pub fn new(key_pem: &str, key_id: &str, team_id: &str) -> Result<Self, JwtError> {
        let is_id = |id: &str| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric());
        if !is_id(key_id) {
            return Err(JwtError::BadKeyId);
        }
        if !is_id(team_id) {
            return Err(JwtError::BadTeamId);
        }
        let key = EncodingKey::from_ec_pem(key_pem.as_bytes())
            .map_err(|e| JwtError::BadKey(e.to_string()))?;
        let mut header = Header::new(Algorithm::ES256);
        // Apple documents exactly `alg` and `kid`; `typ` would only add bytes to every request.
        header.typ = None;
        header.kid = Some(key_id.to_owned());
        let signer = Es256Signer {
            key,
            header,
            team_id: team_id.to_owned(),
        };
        signer.mint(0)?;
        Ok(signer)
    }
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    iat: u64,
}

impl Mint for Es256Signer {
    fn mint(&self, iat: u64) -> Result<HeaderValue, JwtError> {
        let claims = Claims {
            iss: &self.team_id,
            iat,
        };
        // The key was parsed but ring only reads the key material when signing.
        let jwt = jsonwebtoken::encode(&self.header, &claims, &self.key)
            .map_err(|e| JwtError::BadKey(e.to_string()))?;
        let mut value = HeaderValue::from_maybe_shared(Bytes::from(format!("bearer {jwt}")))
            .map_err(|e| JwtError::BadKey(e.to_string()))?;
        value.set_sensitive(true);
        Ok(value)
    }
}

/// The current token and its stamp.
#[derive(Clone)]
struct Current {
    stamp: TokenStamp,
    value: HeaderValue,
}

/// The shared provider token of one client: reused by every request, re-minted by the rule.
///
/// The hot path takes a read lock just long enough to clone a `Bytes`-backed header value (a
/// reference-count increment); minting serialises on a separate mutex and re-checks the rule
/// under it, so concurrent callers that all saw a stale token produce one mint.
pub struct TokenCache<M> {
    minter: M,
    clock: Arc<dyn Clock>,
    current: RwLock<Current>,
    mint_lock: Mutex<()>,
}

impl<M> std::fmt::Debug for TokenCache<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("stamp", &self.current.read().stamp)
            .finish_non_exhaustive()
    }
}

/// A token to put on a request, with the generation to report if APNs says it expired.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The `authorization` header value.
    pub value: HeaderValue,
    /// The token's generation.
    pub generation: u64,
}

impl<M: Mint> TokenCache<M> {
    /// Mints the first token at the clock's time.
    pub fn new(minter: M, clock: Arc<dyn Clock>) -> Result<Self, JwtError> {
        let now = clock.now_unix();
        let value = minter.mint(now)?;
        Ok(TokenCache {
            minter,
            clock,
            current: RwLock::new(Current {
                stamp: TokenStamp {
                    generation: 1,
                    minted_at: now,
                },
                value,
            }),
            mint_lock: Mutex::new(()),
        })
    }

    /// The stamp of the current token.
    pub fn stamp(&self) -> TokenStamp {
        self.current.read().stamp
    }

    /// How many tokens were minted so far, the first included.
    pub fn mints(&self) -> u64 {
        self.stamp().generation
    }

    /// The token for a request, minting first when [`before_request`] says so.
    pub fn for_request(&self) -> Result<IssuedToken, JwtError> {
        let now = self.clock.now_unix();
        {
            let current = self.current.read();
            if before_request(current.stamp, now) == BeforeRequest::Reuse {
                return Ok(issued(&current));
            }
        }
        let _minting = self.mint_lock.lock();
        let current = self.current.read().clone();
        if before_request(current.stamp, now) == BeforeRequest::Reuse {
            return Ok(issued(&current));
        }
        self.replace(current.stamp, now)
    }

    /// The token to retry with after APNs rejected generation `rejected` as expired, or `None`
    /// when the rule forbids a new one.
    pub fn after_expired(&self, rejected: u64) -> Result<Option<IssuedToken>, JwtError> {
        let now = self.clock.now_unix();
        let _minting = self.mint_lock.lock();
        let current = self.current.read().clone();
        match after_expired(current.stamp, rejected, now) {
            AfterExpired::GiveUp => Ok(None),
            AfterExpired::Mint => self.replace(current.stamp, now).map(Some),
            AfterExpired::RetryWithCurrent => match before_request(current.stamp, now) {
                BeforeRequest::Reuse => Ok(Some(issued(&current))),
                BeforeRequest::Mint => self.replace(current.stamp, now).map(Some),
            },
        }
    }

    /// Mints and installs the next generation; the caller holds `mint_lock`.
    fn replace(&self, old: TokenStamp, now: u64) -> Result<IssuedToken, JwtError> {
        let value = self.minter.mint(now)?;
        let next = Current {
            stamp: TokenStamp {
                generation: old.generation + 1,
                minted_at: now,
            },
            value,
        };
        let token = issued(&next);
        *self.current.write() = next;
        tracing::debug!(generation = token.generation, "apns provider token minted");
        Ok(token)
    }
}

fn issued(current: &Current) -> IssuedToken {
    IssuedToken {
        value: current.value.clone(),
        generation: current.stamp.generation,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A throwaway P-256 key made for these tests (not used anywhere else).
    pub(crate) const TEST_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgBudJ+bA4ZCsuVk4u
vdfVs375XCDy88/Ufx/g9/rv+eGhRANCAATZ9nsWm6iwS5RpoeW1J/ykYT+QjfR1
m2lobCoeeYc999TpA31XaZudrwOOHep02gKUk36rUMsU+Xoy51MH0yV7
-----END PRIVATE KEY-----
";
    const TEST_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE2fZ7FpuosEuUaaHltSf8pGE/kI30
dZtpaGwqHnmHPffU6QN9V2mbna8Djh3qdNoClJN+q1DLFPl6MudTB9Mlew==
-----END PUBLIC KEY-----
";

    #[test]
    fn signed_token_verifies_and_carries_kid_iss_iat() {
        let signer = Es256Signer::new(TEST_KEY_PEM, "KEY1234567", "TEAM123456").unwrap();
        let value = signer.mint(1_700_000_000).unwrap();
        assert!(value.is_sensitive());
        let jwt = value.to_str().unwrap().strip_prefix("bearer ").unwrap();

        let header = jsonwebtoken::decode_header(jwt).unwrap();
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some("KEY1234567"));

        let key = jsonwebtoken::DecodingKey::from_ec_pem(TEST_PUBLIC_PEM.as_bytes()).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &validation)
            .unwrap()
            .claims;
        assert_eq!(
            claims,
            serde_json::json!({"iss": "TEAM123456", "iat": 1_700_000_000u64})
        );
    }

    #[test]
    fn bad_keys_and_identifiers_are_named() {
        let err = Es256Signer::new("not a pem", "KEY1234567", "TEAM123456").unwrap_err();
        assert!(err.to_string().starts_with("auth.key_pem"), "{err}");
        // A valid PEM of the wrong kind (a public key) is refused too.
        let err = Es256Signer::new(TEST_PUBLIC_PEM, "KEY1234567", "TEAM123456").unwrap_err();
        assert!(err.to_string().starts_with("auth.key_pem"), "{err}");
        let err = Es256Signer::new(TEST_KEY_PEM, "", "TEAM123456").unwrap_err();
        assert!(err.to_string().starts_with("auth.key_id"), "{err}");
        let err = Es256Signer::new(TEST_KEY_PEM, "KEY1234567", "team id").unwrap_err();
        assert!(err.to_string().starts_with("auth.team_id"), "{err}");
    }

    #[test]
    fn rule_table() {
        let stamp = |generation, minted_at| TokenStamp {
            generation,
            minted_at,
        };
        let min = 60;
        // before_request: reuse strictly below 50 minutes.
        assert_eq!(before_request(stamp(1, 0), 0), BeforeRequest::Reuse);
        assert_eq!(
            before_request(stamp(1, 0), 50 * min - 1),
            BeforeRequest::Reuse
        );
        assert_eq!(before_request(stamp(1, 0), 50 * min), BeforeRequest::Mint);
        // A clock that went backwards reads as a fresh token.
        assert_eq!(before_request(stamp(1, 1000), 10), BeforeRequest::Reuse);
        // after_expired: only the current generation, only from 20 minutes on.
        assert_eq!(
            after_expired(stamp(2, 0), 1, 0),
            AfterExpired::RetryWithCurrent
        );
        assert_eq!(
            after_expired(stamp(2, 0), 2, 20 * min - 1),
            AfterExpired::GiveUp
        );
        assert_eq!(after_expired(stamp(2, 0), 2, 20 * min), AfterExpired::Mint);
    }

    /// Counts mints; the token value names its issue time so tests can read it back.
    #[derive(Default)]
    struct CountingMinter(AtomicU64);

    impl Mint for CountingMinter {
        fn mint(&self, iat: u64) -> Result<HeaderValue, JwtError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(HeaderValue::from(iat))
        }
    }

    #[test]
    fn a_burst_of_expired_rejections_mints_once() {
        let clock = Arc::new(TestClock::new(1_000_000));
        let cache = TokenCache::new(CountingMinter::default(), clock.clone()).unwrap();
        clock.advance(30 * 60);
        let used = cache.for_request().unwrap();
        assert_eq!(used.generation, 1);
        let retries: Vec<_> = (0..500)
            .map(|_| cache.after_expired(used.generation).unwrap().unwrap())
            .collect();
        assert!(retries.iter().all(|t| t.generation == 2));
        assert_eq!(cache.minter.0.load(Ordering::SeqCst), 2);
        // The new token is rejected too, right away: too young to replace.
        assert!(cache.after_expired(2).unwrap().is_none());
    }

    #[test]
    fn concurrent_stale_readers_share_one_mint() {
        let clock = Arc::new(TestClock::new(1_000_000));
        let cache = Arc::new(TokenCache::new(CountingMinter::default(), clock.clone()).unwrap());
        clock.advance(REFRESH_AFTER_SECS);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    (0..100)
                        .map(|_| cache.for_request().unwrap().generation)
                        .max()
                })
            })
            .collect();
        for thread in threads {
            assert_eq!(thread.join().unwrap(), Some(2));
        }
        assert_eq!(cache.minter.0.load(Ordering::SeqCst), 2);
    }

    #[derive(Debug, Clone)]
    enum Event {
        /// The clock moves forward this many seconds.
        Advance(u64),
        /// A request takes a token.
        Request,
        /// `n` requests that all took the last used token are rejected as expired at the same
        /// moment, each retrying once.
        ExpiredBurst { n: usize },
        /// The clock steps back (NTP), which must not break the floor.
        StepBack(u64),
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            4 => (0u64..=30 * 60).prop_map(Event::Advance),
            1 => (0u64..=90 * 60).prop_map(Event::Advance),
            4 => Just(Event::Request),
            2 => (1usize..=50).prop_map(|n| Event::ExpiredBurst { n }),
            1 => (0u64..=10 * 60).prop_map(Event::StepBack),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn refresh_rule_holds_over_any_history(events in proptest::collection::vec(event(), 1..120)) {
            // Measured by the monotone "true" time, so a clock stepping back cannot hide a breach.
            let clock = Arc::new(TestClock::new(10_000_000));
            let cache = TokenCache::new(CountingMinter::default(), clock.clone()).unwrap();
            let mut true_now = clock.now_unix();
            let mut mint_times = vec![true_now];
            let mut last_used: Option<u64> = None;
            let record_mint = |cache: &TokenCache<CountingMinter>, before: u64, true_now: u64, mint_times: &mut Vec<u64>| {
                let after = cache.stamp().generation;
                for _ in before..after {
                    mint_times.push(true_now);
                }
            };
            for event in events {
                match event {
                    Event::Advance(secs) => {
                        clock.advance(secs);
                        true_now += secs;
                    }
                    Event::StepBack(secs) => {
                        clock.set(clock.now_unix().saturating_sub(secs));
                    }
                    Event::Request => {
                        let before = cache.stamp().generation;
                        let token = cache.for_request().unwrap();
                        record_mint(&cache, before, true_now, &mut mint_times);
                        let minted_at = cache.stamp().minted_at;
                        prop_assert!(clock.now_unix().saturating_sub(minted_at) < MAX_AGE_SECS);
                        last_used = Some(token.generation);
                    }
                    Event::ExpiredBurst { n } => {
                        let Some(rejected) = last_used else { continue };
                        let before = cache.stamp().generation;
                        // A token replaced since the request took it is retried with, always.
                        let mut must_retry = rejected != before;
                        for _ in 0..n {
                            match cache.after_expired(rejected).unwrap() {
                                Some(token) => {
                                    let minted_at = cache.stamp().minted_at;
                                    prop_assert_eq!(token.generation, cache.stamp().generation);
                                    prop_assert!(clock.now_unix().saturating_sub(minted_at) < MAX_AGE_SECS);
                                    // The rest of the burst shares this token instead of giving up.
                                    must_retry = true;
                                }
                                None => prop_assert!(!must_retry, "a request gave up though a fresh token exists"),
                            }
                        }
                        let after = cache.stamp().generation;
                        prop_assert!(after - before <= 1, "a burst minted {} tokens", after - before);
                        record_mint(&cache, before, true_now, &mut mint_times);
                    }
                }
            }
            prop_assert_eq!(mint_times.len() as u64, cache.minter.0.load(Ordering::SeqCst));
            for pair in mint_times.windows(2) {
                prop_assert!(pair[1] - pair[0] >= MIN_MINT_INTERVAL_SECS,
                    "mints at {} and {} are closer than 20 minutes", pair[0], pair[1]);
            }
        }
    }
}
