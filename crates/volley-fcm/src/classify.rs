//! FCM responses mapped onto Volley's outcome classes.
//!
//! Order of evidence: the `errorCode` of the error detail whose `@type` ends with `FcmError`,
//! then the error's `status`, then the HTTP status. A body that is not JSON (a proxy's HTML
//! 502) is classified by the HTTP status alone; nothing here fails to parse.

use std::time::Duration;

use http::{HeaderValue, StatusCode};
use serde_json::Value;
use volley_provider::outcome::parse_retry_after;
use volley_provider::{Outcome, Reason};

/// The back-off FCM asks for on `QUOTA_EXCEEDED` without a `Retry-After`: at least 60 s.
pub const DEFAULT_QUOTA_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Classifies one FCM response.
pub fn classify(status: StatusCode, retry_after: Option<&HeaderValue>, body: &[u8]) -> Outcome {
    if status.is_success() {
        return Outcome::Delivered;
    }
    let retry_after = retry_after.and_then(|v| parse_retry_after(v.as_bytes()));
    let error = ErrorBody::parse(body);
    if let Some(code) = error.error_code.as_deref().or(error.status.as_deref()) {
        if let Some(outcome) = by_code(code, &error, retry_after) {
            return outcome;
        }
        // A code we do not know: keep it verbatim and let the HTTP status pick the class.
        return by_http_status(status, Reason::raw(code), retry_after);
    }
    let reason = match status.canonical_reason() {
        Some(_) => Reason::raw(format!("HTTP_{}", status.as_u16())),
        None => Reason::known("HTTP_UNKNOWN"),
    };
    by_http_status(status, reason, retry_after)
}

fn by_code(code: &str, error: &ErrorBody, retry_after: Option<Duration>) -> Option<Outcome> {
    let invalid_token = |reason| Outcome::InvalidToken {
        reason: Reason::known(reason),
        timestamp_ms: None,
    };
    let transient = |reason, retry_after| Outcome::Transient {
        reason: Reason::known(reason),
        retry_after,
        maybe_delivered: false,
    };
    let credential = |reason| Outcome::Credential {
        reason: Reason::known(reason),
    };
    Some(match code {
        "UNREGISTERED" => invalid_token("UNREGISTERED"),
        "SENDER_ID_MISMATCH" => invalid_token("SENDER_ID_MISMATCH"),
        "INVALID_ARGUMENT" if error.names_token => invalid_token("INVALID_ARGUMENT"),
        "INVALID_ARGUMENT" => Outcome::BadRequest {
            reason: Reason::known("INVALID_ARGUMENT"),
        },
        "QUOTA_EXCEEDED" => transient(
            "QUOTA_EXCEEDED",
            Some(retry_after.unwrap_or(DEFAULT_QUOTA_RETRY_AFTER)),
        ),
        "RESOURCE_EXHAUSTED" => transient(
            "RESOURCE_EXHAUSTED",
            Some(retry_after.unwrap_or(DEFAULT_QUOTA_RETRY_AFTER)),
        ),
        "UNAVAILABLE" => transient("UNAVAILABLE", retry_after),
        "INTERNAL" => transient("INTERNAL", retry_after),
        "THIRD_PARTY_AUTH_ERROR" => credential("THIRD_PARTY_AUTH_ERROR"),
        "UNAUTHENTICATED" => credential("UNAUTHENTICATED"),
        "PERMISSION_DENIED" => credential("PERMISSION_DENIED"),
        // Without an UNREGISTERED errorCode a 404 means a wrong project or path, not a dead
        // token: never report tokens on that evidence.
        "NOT_FOUND" => Outcome::BadRequest {
            reason: Reason::known("NOT_FOUND"),
        },
        _ => return None,
    })
}

/// The class of a response known only by its HTTP status.
///
/// 5xx, 408 and 429 are transient (429 with the quota back-off), 401 and 403 credential,
/// any other status bad request.
fn by_http_status(status: StatusCode, reason: Reason, retry_after: Option<Duration>) -> Outcome {
    match status.as_u16() {
        429 => Outcome::Transient {
            reason,
            retry_after: Some(retry_after.unwrap_or(DEFAULT_QUOTA_RETRY_AFTER)),
            maybe_delivered: false,
        },
        408 | 500..=599 => Outcome::Transient {
            reason,
            retry_after,
            maybe_delivered: false,
        },
        401 | 403 => Outcome::Credential { reason },
        _ => Outcome::BadRequest { reason },
    }
}

/// What the classifier reads from an error body; everything optional.
#[derive(Debug, Default)]
struct ErrorBody {
    error_code: Option<String>,
    status: Option<String>,
    /// The error is about the registration token (its message or a field violation says so).
    names_token: bool,
}

impl ErrorBody {
    fn parse(body: &[u8]) -> ErrorBody {
        let Ok(value) = serde_json::from_slice::<Value>(body) else {
            return ErrorBody::default();
        };
        let Some(error) = value.get("error") else {
            return ErrorBody::default();
        };
        let details = error.get("details").and_then(Value::as_array);
        let details = details.map(Vec::as_slice).unwrap_or_default();
        let error_code = details
            .iter()
            .filter(|d| {
                d.get("@type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.ends_with("FcmError"))
            })
            .find_map(|d| d.get("errorCode").and_then(Value::as_str))
            .map(str::to_owned);
        let message_names_token = error
            .get("message")
            .and_then(Value::as_str)
            .is_some_and(mentions_token);
        let violation_names_token = details
            .iter()
            .filter_map(|d| d.get("fieldViolations").and_then(Value::as_array))
            .flatten()
            .filter_map(|v| v.get("field").and_then(Value::as_str))
            .any(|field| field == "message.token");
        ErrorBody {
            error_code,
            status: error
                .get("status")
                .and_then(Value::as_str)
                .map(str::to_owned),
            names_token: message_names_token || violation_names_token,
        }
    }
}

/// FCM's wording when the token is the invalid argument: "Invalid value at 'message.token'",
/// "The registration token is not a valid FCM registration token".
fn mentions_token(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    lower.contains("message.token")
        || lower.contains("registration token")
        || lower.contains("registration_token")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn fcm_error(code: u16, status: &str, message: &str, error_code: Option<&str>) -> Vec<u8> {
        let details = match error_code {
            Some(c) => json!([
                {"@type": "type.googleapis.com/google.rpc.Other", "errorCode": "DECOY"},
                {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": c},
            ]),
            None => json!([]),
        };
        json!({"error": {"code": code, "message": message, "status": status, "details": details}})
            .to_string()
            .into_bytes()
    }

    fn invalid(reason: &'static str) -> Outcome {
        Outcome::InvalidToken {
            reason: Reason::known(reason),
            timestamp_ms: None,
        }
    }
    fn transient(reason: &str, secs: Option<u64>) -> Outcome {
        Outcome::Transient {
            reason: Reason::raw(reason),
            retry_after: secs.map(Duration::from_secs),
            maybe_delivered: false,
        }
    }
    fn credential(reason: &str) -> Outcome {
        Outcome::Credential {
            reason: Reason::raw(reason),
        }
    }
    fn bad(reason: &str) -> Outcome {
        Outcome::BadRequest {
            reason: Reason::raw(reason),
        }
    }

    #[test]
    fn every_row_of_the_reference_table_and_the_odd_bodies() {
        let one = HeaderValue::from_static("1");
        let date = HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT");
        #[rustfmt::skip]
        let cases: Vec<(u16, Option<&HeaderValue>, Vec<u8>, Outcome)> = vec![
            (200, None, br#"{"name":"projects/p/messages/1"}"#.to_vec(), Outcome::Delivered),
            (200, None, b"".to_vec(), Outcome::Delivered),
            // 400 INVALID_ARGUMENT: the token, or our payload.
            (400, None, fcm_error(400, "INVALID_ARGUMENT", "Invalid value at 'message.token' (TYPE_STRING)", Some("INVALID_ARGUMENT")), invalid("INVALID_ARGUMENT")),
            (400, None, fcm_error(400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token", Some("INVALID_ARGUMENT")), invalid("INVALID_ARGUMENT")),
            (400, None, fcm_error(400, "INVALID_ARGUMENT", "Invalid value at 'message.android.ttl'", Some("INVALID_ARGUMENT")), bad("INVALID_ARGUMENT")),
            (400, None, fcm_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.", None), bad("INVALID_ARGUMENT")),
            (400, None, json!({"error": {"status": "INVALID_ARGUMENT", "message": "Request contains an invalid argument.", "details": [
                {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [{"field": "message.token", "description": "Invalid registration token"}]}]}}).to_string().into_bytes(), invalid("INVALID_ARGUMENT")),
            // 401 THIRD_PARTY_AUTH_ERROR, UNAUTHENTICATED; 403 PERMISSION_DENIED.
            (401, None, fcm_error(401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service", Some("THIRD_PARTY_AUTH_ERROR")), credential("THIRD_PARTY_AUTH_ERROR")),
            (401, None, fcm_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.", None), credential("UNAUTHENTICATED")),
            (403, None, fcm_error(403, "PERMISSION_DENIED", "Permission denied.", None), credential("PERMISSION_DENIED")),
            // 403 SENDER_ID_MISMATCH despite PERMISSION_DENIED.
            (403, None, fcm_error(403, "PERMISSION_DENIED", "SenderId mismatch", Some("SENDER_ID_MISMATCH")), invalid("SENDER_ID_MISMATCH")),
            // 404 UNREGISTERED; a bare NOT_FOUND is not evidence against the token.
            (404, None, fcm_error(404, "NOT_FOUND", "Requested entity was not found.", Some("UNREGISTERED")), invalid("UNREGISTERED")),
            (404, None, fcm_error(404, "NOT_FOUND", "Requested entity was not found.", None), bad("NOT_FOUND")),
            // 429 QUOTA_EXCEEDED: Retry-After honoured, else 60 s.
            (429, Some(&one), fcm_error(429, "RESOURCE_EXHAUSTED", "quota", Some("QUOTA_EXCEEDED")), transient("QUOTA_EXCEEDED", Some(1))),
            (429, None, fcm_error(429, "RESOURCE_EXHAUSTED", "quota", Some("QUOTA_EXCEEDED")), transient("QUOTA_EXCEEDED", Some(60))),
            (429, Some(&date), fcm_error(429, "RESOURCE_EXHAUSTED", "quota", Some("QUOTA_EXCEEDED")), transient("QUOTA_EXCEEDED", Some(60))),
            (429, None, fcm_error(429, "RESOURCE_EXHAUSTED", "quota", None), transient("RESOURCE_EXHAUSTED", Some(60))),
            // 500 INTERNAL, 503 UNAVAILABLE.
            (500, None, fcm_error(500, "INTERNAL", "Internal error.", Some("INTERNAL")), transient("INTERNAL", None)),
            (503, Some(&one), fcm_error(503, "UNAVAILABLE", "The service is currently unavailable.", Some("UNAVAILABLE")), transient("UNAVAILABLE", Some(1))),
            (503, None, fcm_error(503, "UNAVAILABLE", "unavailable", None), transient("UNAVAILABLE", None)),
            // Unknown codes are kept verbatim; the HTTP status picks the class.
            (400, None, fcm_error(400, "FAILED_PRECONDITION", "x", Some("SOMETHING_NEW")), bad("SOMETHING_NEW")),
            (503, None, fcm_error(503, "WHATEVER", "x", None), transient("WHATEVER", None)),
            (401, None, fcm_error(401, "SOME_AUTH_THING", "x", None), credential("SOME_AUTH_THING")),
            // Bodies that are not FCM errors.
            (502, None, b"<html><body>502 Bad Gateway</body></html>".to_vec(), transient("HTTP_502", None)),
            (504, Some(&one), b"".to_vec(), transient("HTTP_504", Some(1))),
            (400, None, b"<html>".to_vec(), bad("HTTP_400")),
            (413, None, b"too large".to_vec(), bad("HTTP_413")),
            (429, None, b"".to_vec(), transient("HTTP_429", Some(60))),
            (401, None, b"nope".to_vec(), credential("HTTP_401")),
            (500, None, br#"{"error": "flat string"}"#.to_vec(), transient("HTTP_500", None)),
            (500, None, br#"{"error": {"details": "not a list", "status": 7}}"#.to_vec(), transient("HTTP_500", None)),
            (400, None, br#"[1,2,3]"#.to_vec(), bad("HTTP_400")),
            (599, None, b"".to_vec(), transient("HTTP_UNKNOWN", None)),
        ];
        for (status, retry_after, body, expected) in cases {
            let got = classify(StatusCode::from_u16(status).unwrap(), retry_after, &body);
            assert_eq!(got, expected, "{status} {}", String::from_utf8_lossy(&body));
        }
    }

    proptest! {
        #[test]
        fn random_bodies_never_panic(status in 100u16..600, body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let outcome = classify(StatusCode::from_u16(status).unwrap(), None, &body);
            prop_assert_eq!(outcome == Outcome::Delivered, (200..300).contains(&status));
        }

        #[test]
        fn random_json_errors_never_panic(
            status in 400u16..600,
            code in proptest::option::of("[A-Z_]{0,20}"),
            error_status in proptest::option::of("[A-Z_]{0,20}"),
            message in ".{0,40}",
            retry in proptest::option::of("[0-9a-z ]{0,6}"),
        ) {
            let body = json!({"error": {"status": error_status, "message": message, "details": [
                {"@type": "x.FcmError", "errorCode": code}]}});
            let retry = retry.and_then(|r| HeaderValue::from_str(&r).ok());
            let outcome = classify(StatusCode::from_u16(status).unwrap(), retry.as_ref(), body.to_string().as_bytes());
            prop_assert_ne!(outcome, Outcome::Delivered);
        }
    }
}
