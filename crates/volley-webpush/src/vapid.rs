//! VAPID (RFC 8292): how the application server identifies itself to push services.
//!
//! Each request carries `Authorization: vapid t=<jwt>, k=<public key>`, where the JWT is
//! ES256-signed over `{aud, exp, sub}` and `aud` is the push service's origin. A token is
//! valid for one origin and up to 24 hours, so [`VapidSigner`] signs once per origin, reuses
//! the header for 11 of its 12 hours and keeps a bounded number of origins.
//!
//! Signing uses the `p256` crate's deterministic ECDSA (RFC 6979): it needs no random
//! numbers, so it cannot fail, and it runs once per origin and 11 hours, far off the hot path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http::HeaderValue;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use parking_lot::RwLock;

use crate::ece::uncompressed;

/// How long a signed token is valid (its `exp` is this far ahead).
pub const TOKEN_LIFETIME_SECS: u64 = 12 * 60 * 60;
/// A cached token is replaced once less than this much of its validity remains.
pub const REFRESH_BEFORE_SECS: u64 = 60 * 60;
/// RFC 8292 §2: push services reject an `exp` more than 24 hours ahead.
pub const MAX_EXP_AHEAD_SECS: u64 = 24 * 60 * 60;
/// Origins whose header is kept; beyond it the token nearest to expiry is dropped.
pub const MAX_CACHED_ORIGINS: usize = 4096;

const JWT_HEADER: &str = r#"{"typ":"JWT","alg":"ES256"}"#;

/// Why a VAPID key, subject or header is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VapidError {
    /// The base64url private key does not decode.
    #[error("vapid private key is not base64url")]
    PrivateKeyEncoding,
    /// The private key decodes to the wrong length.
    #[error("vapid private key is {0} bytes: expected the 32-byte raw P-256 private key")]
    PrivateKeyLength(usize),
    /// The 32 bytes are not a valid P-256 scalar (zero, or not below the group order).
    #[error("vapid private key is not a valid P-256 private key")]
    PrivateKeyInvalid,
    /// The PEM is not an EC P-256 private key.
    #[error(
        "vapid key pem is not a P-256 private key (SEC1 \"EC PRIVATE KEY\" or PKCS#8 \"PRIVATE KEY\")"
    )]
    Pem,
    /// The subject is not a `mailto:` or `https:` URL.
    #[error("vapid subject {0:?} must be a mailto: or https: url")]
    Subject(String),
    /// The authorization header is not `vapid t=…, k=…`.
    #[error("authorization is not \"vapid t=<jwt>, k=<key>\"")]
    NotVapid,
    /// `k` is not a 65-byte uncompressed P-256 public key.
    #[error("vapid k is not a base64url 65-byte uncompressed P-256 public key")]
    PublicKey,
    /// `t` is not three base64url parts.
    #[error("vapid t is not a jwt (three base64url parts)")]
    JwtShape,
    /// The JWT header is not ES256.
    #[error("jwt header is not {{\"typ\":\"JWT\",\"alg\":\"ES256\"}}")]
    JwtHeader,
    /// The claims are not JSON with `aud`, `exp` (and `sub`).
    #[error("jwt claims are not json with aud (string), exp (integer) and sub (string)")]
    JwtClaims,
    /// The signature does not verify against `k`.
    #[error("jwt signature does not verify against k")]
    Signature,
    /// `aud` is not the push service's origin.
    #[error("jwt aud is {got:?}, expected {expected:?}")]
    Audience {
        /// The origin the token should name.
        expected: String,
        /// The origin it names.
        got: String,
    },
    /// `exp` has passed.
    #[error("jwt expired at {exp} (now {now})")]
    Expired {
        /// The token's `exp`.
        exp: u64,
        /// The verifier's time.
        now: u64,
    },
    /// `exp` is more than 24 hours ahead.
    #[error("jwt exp is {ahead} s ahead: RFC 8292 allows at most 24 h")]
    ExpTooFar {
        /// Seconds between now and `exp`.
        ahead: u64,
    },
    /// The claims have no `sub`.
    #[error("jwt has no sub claim (a mailto: or https: contact)")]
    MissingSubject,
}

/// An application server's VAPID key pair (P-256). `Debug` shows only the public key.
#[derive(Clone)]
pub struct VapidKey {
    secret: p256::SecretKey,
    public: [u8; 65],
}

impl std::fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VapidKey")
            .field("public", &self.public_base64url())
            .finish_non_exhaustive()
    }
}

impl VapidKey {
    /// A new random key pair.
    pub fn generate() -> Self {
        Self::from_secret(crate::ece::random_secret_key())
    }

    /// The 32-byte raw private key in base64url, padded or not: what web-push tools print as
    /// the "private key".
    pub fn from_base64url(text: &str) -> Result<Self, VapidError> {
        let text = text.trim();
        let bytes = base64::engine::GeneralPurpose::new(
            &base64::alphabet::URL_SAFE,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        )
        .decode(text)
        .map_err(|_| VapidError::PrivateKeyEncoding)?;
        if bytes.len() != 32 {
            return Err(VapidError::PrivateKeyLength(bytes.len()));
        }
        let secret =
            p256::SecretKey::from_slice(&bytes).map_err(|_| VapidError::PrivateKeyInvalid)?;
        Ok(Self::from_secret(secret))
    }

    /// A PEM private key, SEC1 (`EC PRIVATE KEY`, what `openssl ecparam -genkey` writes) or
    /// PKCS#8 (`PRIVATE KEY`).
    pub fn from_pem(pem: &str) -> Result<Self, VapidError> {
        use p256::pkcs8::DecodePrivateKey;
        let pem = pem.trim();
        let secret = p256::SecretKey::from_sec1_pem(pem)
            .or_else(|_| p256::SecretKey::from_pkcs8_pem(pem))
            .map_err(|_| VapidError::Pem)?;
        Ok(Self::from_secret(secret))
    }

    fn from_secret(secret: p256::SecretKey) -> Self {
        let public = uncompressed(&secret.public_key());
        VapidKey { secret, public }
    }

    /// The public key as a 65-byte uncompressed point.
    pub fn public_key(&self) -> &[u8; 65] {
        &self.public
    }

    /// The public key, unpadded base64url: the browser's `applicationServerKey`.
    pub fn public_base64url(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.public)
    }

    /// The raw private key, unpadded base64url, for storing the key (never log it).
    pub fn private_base64url(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.secret.to_bytes())
    }
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    aud: &'a str,
    exp: u64,
    sub: &'a str,
}

#[derive(Clone)]
struct Cached {
    value: HeaderValue,
    exp: u64,
}

/// Signs and caches `Authorization: vapid …` headers, one per push-service origin.
pub struct VapidSigner {
    key: SigningKey,
    /// `, k=<public key>`, the constant tail of every header.
    key_suffix: String,
    public: String,
    subject: String,
    cache: RwLock<HashMap<Box<str>, Cached>>,
    signatures: AtomicU64,
}

impl std::fmt::Debug for VapidSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VapidSigner")
            .field("subject", &self.subject)
            .field("origins", &self.cache.read().len())
            .finish_non_exhaustive()
    }
}

impl VapidSigner {
    /// A signer for `key`, naming `subject` (a `mailto:` or `https:` URL push services can
    /// use to reach the sender) in every token.
    pub fn new(key: VapidKey, subject: String) -> Result<Self, VapidError> {
        check_subject(&subject)?;
        Ok(VapidSigner {
            key: SigningKey::from(&key.secret),
            key_suffix: format!(", k={}", key.public_base64url()),
            public: key.public_base64url(),
            subject,
            cache: RwLock::new(HashMap::new()),
            signatures: AtomicU64::new(0),
        })
    }

    /// The header for `audience_origin` (`https://host[:port]`) now.
    pub fn header(&self, audience_origin: &str) -> HeaderValue {
        self.header_at(audience_origin, now_unix())
    }

    /// The header for `audience_origin` at `now_unix`: the cached one while more than an hour
    /// of it remains, else a freshly signed one valid for 12 hours.
    pub fn header_at(&self, audience_origin: &str, now_unix: u64) -> HeaderValue {
        if let Some(cached) = self.cache.read().get(audience_origin) {
            if fresh(cached.exp, now_unix) {
                return cached.value.clone();
            }
        }
        // Signed outside the lock. Two callers that both found the entry stale may both
        // sign; that happens at most once per origin and 11 hours, and either header is good.
        let exp = now_unix + TOKEN_LIFETIME_SECS;
        let value = self.sign(audience_origin, exp);
        let mut cache = self.cache.write();
        if cache.len() >= MAX_CACHED_ORIGINS && !cache.contains_key(audience_origin) {
            cache.retain(|_, cached| fresh(cached.exp, now_unix));
            if cache.len() >= MAX_CACHED_ORIGINS {
                let oldest = cache
                    .iter()
                    .min_by_key(|(_, cached)| cached.exp)
                    .map(|(origin, _)| origin.clone());
                if let Some(origin) = oldest {
                    cache.remove(&origin);
                }
            }
        }
        cache.insert(
            audience_origin.into(),
            Cached {
                value: value.clone(),
                exp,
            },
        );
        value
    }

    /// The public key, unpadded base64url (`k`, the browser's `applicationServerKey`).
    pub fn public_base64url(&self) -> &str {
        &self.public
    }

    /// How many tokens this signer has signed.
    pub fn signatures(&self) -> u64 {
        self.signatures.load(Ordering::Relaxed)
    }

    /// `vapid t=<jwt>, k=<key>` for one audience and expiry.
    fn sign(&self, audience_origin: &str, exp: u64) -> HeaderValue {
        self.signatures.fetch_add(1, Ordering::Relaxed);
        let claims = serde_json::to_vec(&Claims {
            aud: audience_origin,
            exp,
            sub: &self.subject,
        })
        .expect("claims of strings and an integer serialise");
        let mut text = String::with_capacity(400);
        text.push_str("vapid t=");
        let input_start = text.len();
        URL_SAFE_NO_PAD.encode_string(JWT_HEADER, &mut text);
        text.push('.');
        URL_SAFE_NO_PAD.encode_string(&claims, &mut text);
        let signature: Signature = self.key.sign(&text.as_bytes()[input_start..]);
        text.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut text);
        text.push_str(&self.key_suffix);
        let mut value = HeaderValue::from_maybe_shared(Bytes::from(text))
            .expect("base64url, an origin and a checked subject make a valid header value");
        value.set_sensitive(true);
        value
    }
}

fn fresh(exp: u64, now: u64) -> bool {
    exp > now.saturating_add(REFRESH_BEFORE_SECS)
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

fn check_subject(subject: &str) -> Result<(), VapidError> {
    let refused = || VapidError::Subject(subject.to_string());
    // The subject goes into a header value: no control characters, and a URL parse of
    // what a push-service operator would click on.
    if subject.is_empty() || subject.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(refused());
    }
    let url = url::Url::parse(subject).map_err(|_| refused())?;
    match url.scheme() {
        "mailto" if url.path().len() > 1 && url.path().contains('@') => Ok(()),
        "https" if url.host_str().is_some_and(|h| !h.is_empty()) => Ok(()),
        _ => Err(refused()),
    }
}

/// What a push service learns from a valid VAPID header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedVapid {
    /// The application server's public key (`k`).
    pub public_key: [u8; 65],
    /// The contact in `sub`.
    pub subject: String,
}

#[derive(serde::Deserialize)]
struct JwtHeader {
    #[serde(default)]
    typ: Option<String>,
    alg: String,
}

#[derive(serde::Deserialize)]
struct ReceivedClaims {
    aud: String,
    exp: u64,
    #[serde(default)]
    sub: Option<String>,
}

/// Verifies an `Authorization` header as a push service does (the fake push service uses
/// it): the signature against `k`, `aud` equal to `audience_origin`, `exp` in the future but
/// at most 24 hours ahead, and a `sub`.
pub fn verify(
    authorization: &str,
    audience_origin: &str,
    now_unix: u64,
) -> Result<VerifiedVapid, VapidError> {
    let text = authorization.trim();
    let params = text
        .get(..6)
        .filter(|scheme| scheme.eq_ignore_ascii_case("vapid "))
        .map(|_| &text[6..])
        .ok_or(VapidError::NotVapid)?;
    let (mut token, mut key) = (None, None);
    for param in params.split(',') {
        let param = param.trim();
        if let Some(value) = param.strip_prefix("t=") {
            token = Some(value.trim());
        } else if let Some(value) = param.strip_prefix("k=") {
            key = Some(value.trim());
        }
    }
    let (Some(token), Some(key)) = (token, key) else {
        return Err(VapidError::NotVapid);
    };
    let public_key: [u8; 65] = URL_SAFE_NO_PAD
        .decode(key.trim_end_matches('='))
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(VapidError::PublicKey)?;
    let verifying =
        VerifyingKey::from_sec1_bytes(&public_key).map_err(|_| VapidError::PublicKey)?;

    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature_part), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VapidError::JwtShape);
    };
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| VapidError::JwtShape)
    };
    let header: JwtHeader =
        serde_json::from_slice(&decode(header)?).map_err(|_| VapidError::JwtHeader)?;
    if header.alg != "ES256" || header.typ.as_deref().is_some_and(|typ| typ != "JWT") {
        return Err(VapidError::JwtHeader);
    }
    let signature =
        Signature::from_slice(&decode(signature_part)?).map_err(|_| VapidError::Signature)?;
    let signed = &token.as_bytes()[..token.len() - signature_part.len() - 1];
    verifying
        .verify(signed, &signature)
        .map_err(|_| VapidError::Signature)?;

    let claims: ReceivedClaims =
        serde_json::from_slice(&decode(claims)?).map_err(|_| VapidError::JwtClaims)?;
    if claims.aud != audience_origin {
        return Err(VapidError::Audience {
            expected: audience_origin.to_string(),
            got: claims.aud,
        });
    }
    if claims.exp <= now_unix {
        return Err(VapidError::Expired {
            exp: claims.exp,
            now: now_unix,
        });
    }
    if claims.exp - now_unix > MAX_EXP_AHEAD_SECS {
        return Err(VapidError::ExpTooFar {
            ahead: claims.exp - now_unix,
        });
    }
    let subject = claims
        .sub
        .filter(|sub| !sub.is_empty())
        .ok_or(VapidError::MissingSubject)?;
    Ok(VerifiedVapid {
        public_key,
        subject,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8292 §2.4, verbatim.
    const RFC_JWT: &str = concat!(
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiJ9.",
        "eyJhdWQiOiJodHRwczovL3B1c2guZXhhbXBsZS5uZXQiLCJleHAiOjE0NTM1MjM3NjgsInN1YiI6Im1haWx0bzpwdXNoQGV4YW1wbGUuY29tIn0.",
        "i3CYb7t4xfxCDquptFOepC9GAu_HLGkMlMuCGSK2rpiUfnK9ojFwDXb1JrErtmysazNjjvW2L9OkSSHzvoD1oA"
    );
    const RFC_K: &str =
        "BA1Hxzyi1RUM1b5wjxsn7nGxAszw2u61m164i3MrAIxHF6YK5h4SDYic-dRuU_RCPCfA5aq9ojSwk5Y2EmClBPs";
    const RFC_EXP: u64 = 1_453_523_768;
    const ORIGIN: &str = "https://push.example.net";
    const SUBJECT: &str = "mailto:push@example.com";

    fn signer() -> VapidSigner {
        VapidSigner::new(VapidKey::generate(), SUBJECT.into()).unwrap()
    }

    fn jwt_of(header: &HeaderValue) -> String {
        let text = header.to_str().unwrap();
        let rest = text.strip_prefix("vapid t=").unwrap();
        rest.split_once(", k=").unwrap().0.to_string()
    }

    #[test]
    fn the_rfc_8292_example_verifies() {
        let header = format!("vapid t={RFC_JWT}, k={RFC_K}");
        let verified = verify(&header, ORIGIN, RFC_EXP - 3600).unwrap();
        assert_eq!(verified.subject, SUBJECT);
        assert_eq!(URL_SAFE_NO_PAD.encode(verified.public_key), RFC_K);
    }

    #[test]
    fn tokens_have_the_rfc_8292_layout() {
        // Signed at exp − 12 h for the RFC's origin and subject, the header and claims
        // encode to exactly the RFC example's first two parts.
        let signer = signer();
        let header = signer.header_at(ORIGIN, RFC_EXP - TOKEN_LIFETIME_SECS);
        assert!(header.is_sensitive());
        let jwt = jwt_of(&header);
        let (rfc_input, _) = RFC_JWT.rsplit_once('.').unwrap();
        let (input, signature) = jwt.rsplit_once('.').unwrap();
        assert_eq!(input, rfc_input);
        assert_eq!(URL_SAFE_NO_PAD.decode(signature).unwrap().len(), 64);
        let text = header.to_str().unwrap();
        assert!(text.ends_with(&format!(
            ", k={}",
            URL_SAFE_NO_PAD.encode(signer.key_public())
        )));
    }

    impl VapidSigner {
        fn key_public(&self) -> [u8; 65] {
            self.key
                .verifying_key()
                .to_encoded_point(false)
                .as_bytes()
                .try_into()
                .unwrap()
        }
    }

    #[test]
    fn signed_headers_verify_and_name_the_key_and_subject() {
        let key = VapidKey::generate();
        let signer = VapidSigner::new(key.clone(), SUBJECT.into()).unwrap();
        let now = 1_700_000_000;
        let header = signer.header_at("https://fcm.googleapis.com", now);
        let verified = verify(header.to_str().unwrap(), "https://fcm.googleapis.com", now).unwrap();
        assert_eq!(verified.public_key, *key.public_key());
        assert_eq!(verified.subject, SUBJECT);
        // Still valid 11 h later, refused after 12 h.
        let later = now + TOKEN_LIFETIME_SECS - REFRESH_BEFORE_SECS;
        verify(
            header.to_str().unwrap(),
            "https://fcm.googleapis.com",
            later,
        )
        .unwrap();
    }

    #[test]
    fn wrong_audience_expiry_and_signatures_are_refused() {
        let signer = signer();
        let now = 1_700_000_000;
        let header = signer.header_at(ORIGIN, now);
        let text = header.to_str().unwrap();
        assert_eq!(
            verify(text, "https://other.example", now),
            Err(VapidError::Audience {
                expected: "https://other.example".into(),
                got: ORIGIN.into()
            })
        );
        let exp = now + TOKEN_LIFETIME_SECS;
        assert_eq!(
            verify(text, ORIGIN, exp),
            Err(VapidError::Expired { exp, now: exp })
        );
        assert_eq!(
            verify(text, ORIGIN, exp - MAX_EXP_AHEAD_SECS - 1),
            Err(VapidError::ExpTooFar {
                ahead: MAX_EXP_AHEAD_SECS + 1
            })
        );
        // Another key's k, or a changed claim, breaks the signature.
        let other = format!(
            "vapid t={}, k={}",
            jwt_of(&header),
            VapidKey::generate().public_base64url()
        );
        assert_eq!(verify(&other, ORIGIN, now), Err(VapidError::Signature));
        let jwt = jwt_of(&header);
        let mut parts: Vec<&str> = jwt.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"aud":"{ORIGIN}","exp":{},"sub":"{SUBJECT}"}}"#,
            exp + 1
        ));
        parts[1] = &forged;
        let forged = format!(
            "vapid t={}, k={}",
            parts.join("."),
            signer.key_suffix.trim_start_matches(", k=")
        );
        assert_eq!(verify(&forged, ORIGIN, now), Err(VapidError::Signature));
    }

    #[test]
    fn malformed_headers_are_refused() {
        let now = RFC_EXP - 60;
        let cases = [
            (format!("Bearer {RFC_JWT}"), VapidError::NotVapid),
            (format!("vapid t={RFC_JWT}"), VapidError::NotVapid),
            (format!("vapid t={RFC_JWT}, k=AAAA"), VapidError::PublicKey),
            (format!("vapid t=abc.def, k={RFC_K}"), VapidError::JwtShape),
            (
                format!(
                    "vapid t=e30.{}, k={RFC_K}",
                    RFC_JWT.split_once('.').unwrap().1
                ),
                VapidError::JwtHeader,
            ),
        ];
        for (header, expected) in cases {
            assert_eq!(verify(&header, ORIGIN, now), Err(expected), "{header}");
        }
        // Parameters in either order, scheme in any case.
        let swapped = format!("VAPID k={RFC_K},t={RFC_JWT}");
        verify(&swapped, ORIGIN, now).unwrap();
    }

    #[test]
    fn a_missing_subject_is_refused() {
        let key = VapidKey::generate();
        let signing = SigningKey::from(&key.secret);
        let claims = URL_SAFE_NO_PAD.encode(format!(r#"{{"aud":"{ORIGIN}","exp":2000}}"#));
        let input = format!("{}.{claims}", URL_SAFE_NO_PAD.encode(JWT_HEADER));
        let signature: Signature = signing.sign(input.as_bytes());
        let header = format!(
            "vapid t={input}.{}, k={}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes()),
            key.public_base64url()
        );
        assert_eq!(
            verify(&header, ORIGIN, 1000),
            Err(VapidError::MissingSubject)
        );
    }

    #[test]
    fn headers_are_cached_per_origin_and_resigned_an_hour_before_expiry() {
        let signer = signer();
        let now = 1_700_000_000;
        let first = signer.header_at("https://a.example", now);
        assert_eq!(signer.header_at("https://a.example", now + 10), first);
        assert_eq!(signer.signatures(), 1);
        let b = signer.header_at("https://b.example", now);
        assert_ne!(b, first);
        assert_eq!(signer.signatures(), 2);
        let almost = now + TOKEN_LIFETIME_SECS - REFRESH_BEFORE_SECS - 1;
        assert_eq!(signer.header_at("https://a.example", almost), first);
        let renewed = signer.header_at("https://a.example", almost + 1);
        assert_ne!(renewed, first);
        assert_eq!(signer.signatures(), 3);
        verify(renewed.to_str().unwrap(), "https://a.example", almost + 1).unwrap();
    }

    #[test]
    fn the_cache_is_bounded() {
        let signer = signer();
        for i in 0..MAX_CACHED_ORIGINS + 10 {
            signer.header_at(&format!("https://p{i}.example"), 1_700_000_000 + i as u64);
        }
        assert_eq!(signer.cache.read().len(), MAX_CACHED_ORIGINS);
        // The oldest tokens went first.
        assert!(!signer.cache.read().contains_key("https://p0.example"));
        assert!(signer.cache.read().contains_key("https://p4100.example"));
    }

    #[test]
    fn subjects_must_be_mailto_or_https() {
        for good in [
            SUBJECT,
            "https://example.com/contact",
            "mailto:ops+push@example.com",
        ] {
            VapidSigner::new(VapidKey::generate(), good.into()).unwrap();
        }
        for bad in [
            "",
            "push@example.com",
            "http://example.com",
            "mailto:",
            "https://",
            "mailto:a@b c",
        ] {
            let error = VapidSigner::new(VapidKey::generate(), bad.into()).unwrap_err();
            assert_eq!(error, VapidError::Subject(bad.into()));
            assert!(error
                .to_string()
                .contains("must be a mailto: or https: url"));
        }
    }

    #[test]
    fn keys_load_from_base64url_and_pem_and_never_debug_print_the_private_key() {
        let key = VapidKey::generate();
        let private = key.private_base64url();
        assert_eq!(private.len(), 43);
        let again = VapidKey::from_base64url(&private).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let padded = format!("{private}=");
        assert_eq!(
            VapidKey::from_base64url(&padded).unwrap().public_key(),
            key.public_key()
        );
        assert_eq!(key.public_base64url().len(), 87);
        let debug = format!("{key:?}");
        assert!(!debug.contains(&private), "{debug}");
        assert!(debug.contains(&key.public_base64url()));

        use p256::pkcs8::{EncodePrivateKey, LineEnding};
        let sec1 = key.secret.to_sec1_pem(LineEnding::LF).unwrap();
        let pkcs8 = key.secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        for pem in [sec1.as_str(), pkcs8.as_str()] {
            assert_eq!(
                VapidKey::from_pem(pem).unwrap().public_key(),
                key.public_key(),
                "{pem}"
            );
        }
        assert_eq!(VapidKey::from_pem("junk").unwrap_err(), VapidError::Pem);
        assert_eq!(
            VapidKey::from_base64url("AAAA").unwrap_err(),
            VapidError::PrivateKeyLength(3)
        );
        assert_eq!(
            VapidKey::from_base64url(&"A".repeat(43)).unwrap_err(),
            VapidError::PrivateKeyInvalid
        );
        assert_eq!(
            VapidKey::from_base64url("!!").unwrap_err(),
            VapidError::PrivateKeyEncoding
        );
    }
}
