//! One push message request (`POST /push/{id}`, RFC 8030 section 5) in, one answer out.
//!
//! The checks run in the order a real push service would need them: the sender's identity
//! (VAPID) first, then the headers, the size, the scripted failures, and last the payload,
//! which the fake decrypts with the subscription's keys.

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_ENCODING, LOCATION, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, StatusCode};

use super::State;

/// The largest push body accepted: RFC 8030 section 7.2 lets a push service refuse more than
/// 4096 bytes, and every real one does.
pub const MAX_BODY: usize = 4096;
/// The longest TTL the fake keeps a message for (four weeks, like FCM); a longer TTL is
/// answered with this one, as RFC 8030 section 5.2 allows.
pub(crate) const MAX_TTL: u64 = 28 * 24 * 3600;
/// RFC 8030 section 5.4: at most 32 characters of the URL-safe base64 alphabet.
const MAX_TOPIC: usize = 32;

/// What the fake decided for one push request.
pub(crate) struct Decision {
    pub(crate) status: StatusCode,
    /// `Retry-After: 1` (429 and 503).
    pub(crate) retry_after: bool,
    /// The TTL answered with a 201.
    pub(crate) ttl: u64,
    /// Why, for the JSON error body; `None` with a 201.
    pub(crate) message: &'static str,
    /// The decrypted payload (a delivered message to a subscription the fake holds the keys of).
    pub(crate) plaintext: Option<Vec<u8>>,
    /// Keep the body as it came (an external subscription, or one that failed to decrypt).
    pub(crate) keep_raw: bool,
}

impl Decision {
    pub(crate) fn refuse(status: StatusCode, message: &'static str) -> Self {
        Decision {
            status,
            retry_after: matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            ),
            ttl: 0,
            message,
            plaintext: None,
            keep_raw: false,
        }
    }

    /// Whether the message was accepted (201 Created).
    pub(crate) fn delivered(&self) -> bool {
        self.status == StatusCode::CREATED
    }
}

/// A failure scripted by the subscription id's prefix, or an external subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scripted {
    /// `dead`: 410 Gone, the subscription expired or was unsubscribed.
    Gone,
    /// `4040`: 404 Not Found.
    NotFound,
    /// `4130`: 413 Payload Too Large.
    TooLarge,
    /// `4290`: 429 Too Many Requests, `Retry-After: 1`.
    TooManyRequests,
    /// `5000`: 500 Internal Server Error.
    Internal,
    /// `5030`: 503 Service Unavailable, `Retry-After: 1`.
    Unavailable,
    /// `ext`: a subscription whose keys the fake does not hold; accepted without decrypting.
    External,
}

impl Scripted {
    /// The prefixes, matched case-insensitively.
    pub(crate) const TABLE: [(&'static str, Scripted); 7] = [
        ("dead", Scripted::Gone),
        ("4040", Scripted::NotFound),
        ("4130", Scripted::TooLarge),
        ("4290", Scripted::TooManyRequests),
        ("5000", Scripted::Internal),
        ("5030", Scripted::Unavailable),
        ("ext", Scripted::External),
    ];

    /// The scripted behaviour of subscription `id`, if its prefix has one.
    pub(crate) fn of(id: &str) -> Option<Scripted> {
        Self::TABLE.iter().find_map(|(prefix, scripted)| {
            id.get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
                .then_some(*scripted)
        })
    }

    /// The failure it answers; `None` for [`Scripted::External`], which is delivered.
    fn failure(self) -> Option<(StatusCode, &'static str)> {
        Some(match self {
            Scripted::Gone => (StatusCode::GONE, "subscription expired or unsubscribed"),
            Scripted::NotFound => (StatusCode::NOT_FOUND, "no such subscription"),
            Scripted::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload too large"),
            Scripted::TooManyRequests => (StatusCode::TOO_MANY_REQUESTS, "too many requests"),
            Scripted::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
            Scripted::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "service unavailable"),
            Scripted::External => return None,
        })
    }
}

/// Whether `id` can name a subscription: 1 to 256 URL-unreserved characters.
pub(crate) fn valid_id(id: &str) -> bool {
    (1..=256).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
}

/// Decides the answer to `POST /push/{id}` with a complete `body`.
pub(crate) fn decide(state: &State, id: &str, headers: &HeaderMap, body: &[u8]) -> Decision {
    let key = match state.check_vapid(headers.get(AUTHORIZATION)) {
        Ok(key) => key,
        Err(refusal) => return refusal,
    };
    if let Err(refusal) = state.check_bound(id, &key) {
        return refusal;
    }
    let ttl = match ttl(headers) {
        Ok(ttl) => ttl,
        Err(refusal) => return refusal,
    };
    if let Err(refusal) = content_encoding(headers, body) {
        return refusal;
    }
    if let Err(refusal) = urgency(headers) {
        return refusal;
    }
    if let Err(refusal) = topic(headers) {
        return refusal;
    }
    if body.len() > MAX_BODY {
        return Decision::refuse(StatusCode::PAYLOAD_TOO_LARGE, "body larger than 4096 bytes");
    }
    let scripted = Scripted::of(id);
    if let Some((status, message)) = scripted.and_then(Scripted::failure) {
        return Decision::refuse(status, message);
    }
    if state.transient_error() {
        return Decision::refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "transient error (injected)",
        );
    }
    let delivered = |plaintext, keep_raw| Decision {
        status: StatusCode::CREATED,
        retry_after: false,
        ttl: ttl.min(MAX_TTL),
        message: "",
        plaintext,
        keep_raw,
    };
    if scripted == Some(Scripted::External) {
        return delivered(None, true);
    }
    if body.is_empty() {
        // A push without payload (RFC 8030 section 5): nothing to decrypt.
        return delivered(Some(Vec::new()), false);
    }
    let keys = state.keyring.keys(id);
    match keys.receiver.decrypt(body, &keys.auth) {
        Ok(plaintext) => delivered(Some(plaintext), false),
        Err(_) => {
            state.counters.bump_decrypt_failure();
            Decision {
                keep_raw: true,
                ..Decision::refuse(
                    StatusCode::BAD_REQUEST,
                    "payload does not decrypt with the subscription's keys (aes128gcm)",
                )
            }
        }
    }
}

/// `TTL` (RFC 8030 section 5.2): required, delta-seconds.
fn ttl(headers: &HeaderMap) -> Result<u64, Decision> {
    let value = headers
        .get("ttl")
        .ok_or_else(|| Decision::refuse(StatusCode::BAD_REQUEST, "missing TTL header"))?;
    let digits = value.as_bytes();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Decision::refuse(
            StatusCode::BAD_REQUEST,
            "TTL is not a number of seconds",
        ));
    }
    // Digits only, so the only failure left is overflow: a very long TTL, capped later.
    Ok(std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(u64::MAX))
}

/// `Content-Encoding: aes128gcm` (RFC 8291 section 4) for any body; an empty body (a push
/// without payload) needs none.
fn content_encoding(headers: &HeaderMap, body: &[u8]) -> Result<(), Decision> {
    match headers.get(CONTENT_ENCODING) {
        Some(encoding) if encoding.as_bytes().eq_ignore_ascii_case(b"aes128gcm") => Ok(()),
        None if body.is_empty() => Ok(()),
        _ => Err(Decision::refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Encoding must be aes128gcm",
        )),
    }
}

/// `Urgency` (RFC 8030 section 5.3): optional, one of four words.
fn urgency(headers: &HeaderMap) -> Result<(), Decision> {
    match headers.get("urgency").map(HeaderValue::as_bytes) {
        None | Some(b"very-low" | b"low" | b"normal" | b"high") => Ok(()),
        Some(_) => Err(Decision::refuse(
            StatusCode::BAD_REQUEST,
            "Urgency must be very-low, low, normal or high",
        )),
    }
}

/// `Topic` (RFC 8030 section 5.4): optional, 1 to 32 URL-safe base64 characters.
fn topic(headers: &HeaderMap) -> Result<(), Decision> {
    let Some(topic) = headers.get("topic").map(HeaderValue::as_bytes) else {
        return Ok(());
    };
    if (1..=MAX_TOPIC).contains(&topic.len())
        && topic
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    {
        Ok(())
    } else {
        Err(Decision::refuse(
            StatusCode::BAD_REQUEST,
            "Topic must be at most 32 URL-safe base64 characters",
        ))
    }
}

/// The response head and body for a decision: 201 with `Location` and `TTL`, else a JSON
/// error shaped like Mozilla autopush's (`code`, `error`, `message`).
pub(crate) fn response(decision: &Decision) -> http::Response<http_body_util::Full<Bytes>> {
    let mut response = if decision.delivered() {
        let mut response = http::Response::new(http_body_util::Full::new(Bytes::new()));
        let location = format!("/message/{}", uuid::Uuid::new_v4());
        if let Ok(location) = HeaderValue::try_from(location) {
            response.headers_mut().insert(LOCATION, location);
        }
        response
            .headers_mut()
            .insert("ttl", HeaderValue::from(decision.ttl));
        response
    } else {
        let body = serde_json::json!({
            "code": decision.status.as_u16(),
            "error": decision.status.canonical_reason().unwrap_or_default(),
            "message": decision.message,
        });
        let mut response =
            http::Response::new(http_body_util::Full::new(Bytes::from(body.to_string())));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    };
    *response.status_mut() = decision.status;
    if decision.retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (
                    http::header::HeaderName::from_static(name),
                    HeaderValue::from_str(value).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn prefixes_script_failures_case_insensitively() {
        assert_eq!(Scripted::of("dead-1"), Some(Scripted::Gone));
        assert_eq!(Scripted::of("DEAD"), Some(Scripted::Gone));
        assert_eq!(Scripted::of("4040x"), Some(Scripted::NotFound));
        assert_eq!(Scripted::of("ext-browser"), Some(Scripted::External));
        assert_eq!(Scripted::of("de"), None);
        assert_eq!(Scripted::of("alive"), None);
        assert_eq!(Scripted::of("é"), None);
    }

    #[test]
    fn ttl_is_required_and_numeric() {
        assert_eq!(ttl(&headers(&[("ttl", "60")])).ok(), Some(60));
        assert_eq!(ttl(&headers(&[("ttl", "0")])).ok(), Some(0));
        assert_eq!(
            ttl(&headers(&[("ttl", "99999999999999999999999")])).ok(),
            Some(u64::MAX)
        );
        for bad in [&[][..], &[("ttl", "")], &[("ttl", "-1")], &[("ttl", "1.5")]] {
            let refusal = ttl(&headers(bad)).err().unwrap();
            assert_eq!(refusal.status, StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }

    #[test]
    fn urgency_topic_and_encoding_follow_the_rfcs() {
        assert!(urgency(&headers(&[])).is_ok());
        assert!(urgency(&headers(&[("urgency", "very-low")])).is_ok());
        assert!(urgency(&headers(&[("urgency", "urgent")])).is_err());
        assert!(topic(&headers(&[("topic", "news-Flash_1")])).is_ok());
        assert!(topic(&headers(&[("topic", &"a".repeat(32))])).is_ok());
        assert!(topic(&headers(&[("topic", &"a".repeat(33))])).is_err());
        assert!(topic(&headers(&[("topic", "a+b")])).is_err());
        assert!(topic(&headers(&[("topic", "")])).is_err());
        let aes = headers(&[("content-encoding", "aes128gcm")]);
        assert!(content_encoding(&aes, b"x").is_ok());
        assert!(content_encoding(&headers(&[]), b"").is_ok());
        let refusal = content_encoding(&headers(&[]), b"x").err().unwrap();
        assert_eq!(refusal.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let legacy = headers(&[("content-encoding", "aesgcm")]);
        assert!(content_encoding(&legacy, b"x").is_err());
    }

    #[test]
    fn ids_are_url_unreserved() {
        assert!(valid_id("sub-1.a_b~c"));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(&"a".repeat(257)));
    }
}
