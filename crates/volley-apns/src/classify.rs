//! Maps an APNs response onto Volley's outcome classes (the table in `push-providers.md`).

use std::borrow::Cow;

use http::{HeaderValue, StatusCode};
use volley_provider::outcome::parse_retry_after;
use volley_provider::{Outcome, Reason};

/// An APNs error body: `{"reason": "...", "timestamp": <ms>}`.
#[derive(serde::Deserialize)]
struct ErrorBody<'a> {
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
    #[serde(default)]
    timestamp: Option<serde_json::Value>,
}

/// Every reason Apple documents, so that classifying a known failure does not allocate.
const KNOWN_REASONS: &[&str] = &[
    "BadCollapseId",
    "BadDeviceToken",
    "BadExpirationDate",
    "BadMessageId",
    "BadPriority",
    "BadTopic",
    "DeviceTokenNotForTopic",
    "DuplicateHeaders",
    "IdleTimeout",
    "InvalidPushType",
    "MissingDeviceToken",
    "MissingTopic",
    "PayloadEmpty",
    "TopicDisallowed",
    "BadCertificate",
    "BadCertificateEnvironment",
    "ExpiredProviderToken",
    "Forbidden",
    "InvalidProviderToken",
    "MissingProviderToken",
    "UnrelatedKeyIdInToken",
    "BadPath",
    "MethodNotAllowed",
    "ExpiredToken",
    "Unregistered",
    "PayloadTooLarge",
    "TooManyProviderTokenUpdates",
    "TooManyRequests",
    "InternalServerError",
    "ServiceUnavailable",
    "Shutdown",
];

fn reason_of(text: &str) -> Reason {
    match KNOWN_REASONS.iter().find(|known| **known == text) {
        Some(known) => Reason::known(known),
        None => Reason::raw(text),
    }
}

/// A reason for a response whose body named none (an HTML 502 from a proxy, say).
fn status_reason(status: StatusCode) -> Reason {
    match status.as_u16() {
        400 => Reason::known("Http400"),
        403 => Reason::known("Http403"),
        404 => Reason::known("Http404"),
        405 => Reason::known("Http405"),
        410 => Reason::known("Http410"),
        413 => Reason::known("Http413"),
        429 => Reason::known("Http429"),
        500 => Reason::known("Http500"),
        502 => Reason::known("Http502"),
        503 => Reason::known("Http503"),
        504 => Reason::known("Http504"),
        other => Reason::raw(format!("Http{other}")),
    }
}

/// Classifies one APNs response. Pure; never fails: a body that is not APNs JSON (a proxy's
/// HTML page) is classified by its status alone.
///
/// | status | reason | outcome |
/// |---|---|---|
/// | 200 | — | `Delivered` |
/// | 400 | BadDeviceToken | `InvalidToken` |
/// | 400 | DeviceTokenNotForTopic, TopicDisallowed | `BadRequest`: the topic is wrong, not the token |
/// | 400 | IdleTimeout | `Transient` |
/// | 400 | any other | `BadRequest` |
/// | 403 | Forbidden | `BadRequest` (permanent) |
/// | 403 | any other (ExpiredProviderToken, InvalidProviderToken, ...) | `Credential` |
/// | 404, 405, 413 | any | `BadRequest` |
/// | 410 | any (Unregistered, ExpiredToken) | `InvalidToken` with `timestamp` |
/// | 429 | TooManyProviderTokenUpdates | `Credential` |
/// | 429 | any other | `Transient` with `Retry-After` |
/// | 5xx | any | `Transient` with `Retry-After` |
/// | other | any | `BadRequest` (APNs never sends it: a misconfigured endpoint) |
pub fn classify(status: StatusCode, retry_after: Option<&HeaderValue>, body: &[u8]) -> Outcome {
    if status == StatusCode::OK {
        return Outcome::Delivered;
    }
    let parsed = serde_json::from_slice::<ErrorBody<'_>>(body).ok();
    let reason_text = parsed.as_ref().and_then(|body| body.reason.as_deref());
    let reason = reason_text.map_or_else(|| status_reason(status), reason_of);
    let transient = || Outcome::Transient {
        reason: reason.clone(),
        retry_after: retry_after.and_then(|value| parse_retry_after(value.as_bytes())),
        maybe_delivered: false,
    };
    match (status.as_u16(), reason_text.unwrap_or("")) {
        // DeviceTokenNotForTopic says the topic does not match the token's app (a missing
        // push-type suffix, another app's bundle id): the token is live, and a caller that
        // deletes invalid tokens must not delete it.
        (400, "BadDeviceToken") => Outcome::InvalidToken {
            reason,
            timestamp_ms: None,
        },
        (400, "IdleTimeout") => transient(),
        (403, "Forbidden") => Outcome::BadRequest { reason },
        // Unknown 403s too: a refused credential must pause the app, never be dropped.
        (403, _) => Outcome::Credential { reason },
        (410, _) => Outcome::InvalidToken {
            reason,
            timestamp_ms: parsed
                .as_ref()
                .and_then(|body| body.timestamp.as_ref())
                .and_then(timestamp_ms),
        },
        (429, "TooManyProviderTokenUpdates") => Outcome::Credential { reason },
        (429, _) | (500..=599, _) => transient(),
        _ => Outcome::BadRequest { reason },
    }
}

/// APNs sends the timestamp as a JSON number of milliseconds; accept a numeric string too.
fn timestamp_ms(value: &serde_json::Value) -> Option<u64> {
    match value {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[derive(Debug, PartialEq)]
    enum Class {
        Delivered,
        Invalid,
        Transient,
        Credential,
        Bad,
    }

    fn class_of(outcome: &Outcome) -> Class {
        match outcome {
            Outcome::Delivered => Class::Delivered,
            Outcome::InvalidToken { .. } => Class::Invalid,
            Outcome::Transient { .. } => Class::Transient,
            Outcome::Credential { .. } => Class::Credential,
            Outcome::BadRequest { .. } => Class::Bad,
        }
    }

    fn body(reason: &str) -> Vec<u8> {
        format!(r#"{{"reason":"{reason}"}}"#).into_bytes()
    }

    /// Every row of the APNs table in push-providers.md, reason by reason.
    #[test]
    fn reference_table() {
        let rows: &[(u16, &[&str], Class)] = &[
            (400, &["BadDeviceToken"], Class::Invalid),
            (
                400,
                &[
                    "DeviceTokenNotForTopic",
                    "TopicDisallowed",
                    "BadCollapseId",
                    "BadExpirationDate",
                    "BadMessageId",
                    "BadPriority",
                    "BadTopic",
                    "DuplicateHeaders",
                    "MissingTopic",
                    "MissingDeviceToken",
                    "PayloadEmpty",
                    "InvalidPushType",
                ],
                Class::Bad,
            ),
            (400, &["IdleTimeout"], Class::Transient),
            (403, &["ExpiredProviderToken"], Class::Credential),
            (
                403,
                &[
                    "InvalidProviderToken",
                    "MissingProviderToken",
                    "BadCertificate",
                    "BadCertificateEnvironment",
                ],
                Class::Credential,
            ),
            (403, &["Forbidden"], Class::Bad),
            (404, &["BadPath"], Class::Bad),
            (405, &["MethodNotAllowed"], Class::Bad),
            (410, &["Unregistered", "ExpiredToken"], Class::Invalid),
            (413, &["PayloadTooLarge"], Class::Bad),
            (429, &["TooManyRequests"], Class::Transient),
            (429, &["TooManyProviderTokenUpdates"], Class::Credential),
            (500, &["InternalServerError"], Class::Transient),
            (503, &["ServiceUnavailable", "Shutdown"], Class::Transient),
        ];
        for (status, reasons, class) in rows {
            for reason in *reasons {
                let status = StatusCode::from_u16(*status).unwrap();
                let outcome = classify(status, None, &body(reason));
                assert_eq!(class_of(&outcome), *class, "{status} {reason}");
                assert_eq!(outcome.reason().unwrap().as_str(), *reason);
                assert!(
                    KNOWN_REASONS.contains(reason),
                    "{reason} should not allocate"
                );
            }
        }
        assert_eq!(classify(StatusCode::OK, None, b""), Outcome::Delivered);
    }

    #[test]
    fn gone_tokens_carry_their_timestamp() {
        let outcome = classify(
            StatusCode::GONE,
            None,
            br#"{"reason":"Unregistered","timestamp":1700000000123}"#,
        );
        assert_eq!(
            outcome,
            Outcome::InvalidToken {
                reason: Reason::known("Unregistered"),
                timestamp_ms: Some(1_700_000_000_123)
            }
        );
        let outcome = classify(StatusCode::GONE, None, br#"{"reason":"ExpiredToken"}"#);
        assert_eq!(
            outcome,
            Outcome::InvalidToken {
                reason: Reason::known("ExpiredToken"),
                timestamp_ms: None
            }
        );
    }

    #[test]
    fn retry_after_is_kept_for_transient_outcomes() {
        let one = HeaderValue::from_static("1");
        for (status, reason) in [(429, "TooManyRequests"), (503, "ServiceUnavailable")] {
            let outcome = classify(
                StatusCode::from_u16(status).unwrap(),
                Some(&one),
                &body(reason),
            );
            assert_eq!(
                outcome,
                Outcome::Transient {
                    reason: Reason::known(reason),
                    retry_after: Some(Duration::from_secs(1)),
                    maybe_delivered: false
                }
            );
        }
    }

    #[test]
    fn unknown_reasons_are_kept_verbatim_and_classed_by_status() {
        let outcome = classify(StatusCode::BAD_REQUEST, None, &body("BrandNewReason"));
        assert_eq!(
            outcome,
            Outcome::BadRequest {
                reason: Reason::raw("BrandNewReason")
            }
        );
        let outcome = classify(StatusCode::FORBIDDEN, None, &body("NewAuthThing"));
        assert_eq!(class_of(&outcome), Class::Credential);
        let outcome = classify(StatusCode::SERVICE_UNAVAILABLE, None, &body("Overloaded"));
        assert_eq!(class_of(&outcome), Class::Transient);
        assert_eq!(outcome.reason().unwrap().as_str(), "Overloaded");
    }

    #[test]
    fn non_json_bodies_are_classified_by_status() {
        let html = b"<html><body><h1>502 Bad Gateway</h1></body></html>";
        let outcome = classify(StatusCode::BAD_GATEWAY, None, html);
        assert_eq!(
            outcome,
            Outcome::Transient {
                reason: Reason::known("Http502"),
                retry_after: None,
                maybe_delivered: false
            }
        );
        assert_eq!(
            class_of(&classify(StatusCode::FORBIDDEN, None, b"")),
            Class::Credential
        );
        assert_eq!(
            class_of(&classify(StatusCode::GONE, None, b"gone")),
            Class::Invalid
        );
        let teapot = classify(StatusCode::IM_A_TEAPOT, None, b"");
        assert_eq!(teapot.reason().unwrap().as_str(), "Http418");
        assert_eq!(class_of(&teapot), Class::Bad);
        assert_eq!(
            class_of(&classify(StatusCode::FOUND, None, b"")),
            Class::Bad
        );
    }

    proptest! {
        #[test]
        fn never_panics(
            status in 100u16..1000,
            body in proptest::collection::vec(any::<u8>(), 0..256),
            reason in "\\PC{0,40}",
            retry_after in proptest::collection::vec(32u8..127, 0..8),
        ) {
            let status = StatusCode::from_u16(status).unwrap();
            let retry_after = HeaderValue::from_bytes(&retry_after).ok();
            let outcome = classify(status, retry_after.as_ref(), &body);
            prop_assert_eq!(outcome == Outcome::Delivered, status == StatusCode::OK);
            let json = serde_json::json!({"reason": reason, "timestamp": 5}).to_string();
            let outcome = classify(status, retry_after.as_ref(), json.as_bytes());
            if status != StatusCode::OK {
                prop_assert_eq!(outcome.reason().unwrap().as_str(), reason.as_str());
            }
        }
    }
}
