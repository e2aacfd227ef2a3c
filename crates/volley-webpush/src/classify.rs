//! Maps a push service's response onto Volley's outcome classes.
//!
//! Push services (FCM's web push endpoint, Mozilla's autopush, Apple's, Microsoft's) agree
//! on status codes (RFC 8030 §5–8) but not on bodies, so the class comes from the status
//! alone; a short reason read from the body is kept where a person will need it (a refused
//! VAPID token, a malformed request).

use http::header::RETRY_AFTER;
use http::{HeaderMap, StatusCode};
use volley_provider::outcome::parse_retry_after;
use volley_provider::{Outcome, Reason};

/// Body text kept for a log line, in bytes.
const MAX_DETAIL: usize = 200;

/// Classifies one push-service response. Pure; never fails.
///
/// | status | outcome |
/// |---|---|
/// | 2xx (201 Created) | `Delivered` |
/// | 3xx | `BadRequest` "Redirect" (never followed: the endpoint must be the push service) |
/// | 400 | `BadRequest` "Http400" |
/// | 401, 403 | `BadRequest` "Http401" / "Http403": the push service refused the VAPID JWT, or (403) this subscription was made with another key; final for this subscription, and not a credential failure of the app (an endpoint is what a user sent) |
/// | 404 | `InvalidToken` "NotFound": no such subscription |
/// | 410 | `InvalidToken` "Gone": the subscription expired or was unsubscribed |
/// | 413 | `BadRequest` "PayloadTooLarge" |
/// | 429 | `Transient` "TooManyRequests", with `Retry-After` |
/// | 5xx | `Transient` "Http5xx", with `Retry-After` |
/// | other | `BadRequest` "Http{status}" |
pub fn classify(status: StatusCode, headers: &HeaderMap) -> Outcome {
    if status.is_success() {
        return Outcome::Delivered;
    }
    let transient = |reason| Outcome::Transient {
        reason,
        retry_after: headers
            .get(RETRY_AFTER)
            .and_then(|value| parse_retry_after(value.as_bytes())),
        maybe_delivered: false,
    };
    match status.as_u16() {
        300..=399 => Outcome::BadRequest {
            reason: Reason::known("Redirect"),
        },
        404 => Outcome::InvalidToken {
            reason: Reason::known("NotFound"),
            timestamp_ms: None,
        },
        410 => Outcome::InvalidToken {
            reason: Reason::known("Gone"),
            timestamp_ms: None,
        },
        413 => Outcome::BadRequest {
            reason: Reason::known("PayloadTooLarge"),
        },
        429 => transient(Reason::known("TooManyRequests")),
        // Final for this subscription, not a credential failure of the app: a 403 is often
        // one subscription made with another VAPID key, and an endpoint is whatever a user
        // sent; one answer must not pause the app's other subscriptions.
        400 | 401 | 403 => Outcome::BadRequest {
            reason: status_reason(status),
        },
        500..=599 => transient(status_reason(status)),
        _ => Outcome::BadRequest {
            reason: status_reason(status),
        },
    }
}

fn status_reason(status: StatusCode) -> Reason {
    match status.as_u16() {
        400 => Reason::known("Http400"),
        401 => Reason::known("Http401"),
        403 => Reason::known("Http403"),
        500 => Reason::known("Http500"),
        502 => Reason::known("Http502"),
        503 => Reason::known("Http503"),
        504 => Reason::known("Http504"),
        other => Reason::raw(format!("Http{other}")),
    }
}

/// A short, single-line explanation from a response body, for a log line (never a reason: a
/// reason is counted by its text, and a body is whatever the endpoint's server wrote): a
/// JSON body's `reason`
/// (Apple), `message` (Mozilla) or `error` (string, or an object with a `message`), else
/// plain text. HTML pages and binary bodies give none.
pub fn detail(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?.trim();
    if text.is_empty() || text.starts_with('<') {
        return None;
    }
    let chosen = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(fields)) => {
            let field = |name: &str| fields.get(name).and_then(|v| v.as_str()).map(str::to_owned);
            field("reason")
                .or_else(|| field("message"))
                .or_else(|| field("error"))
                .or_else(|| {
                    fields
                        .get("error")
                        .and_then(|e| e.get("message"))
                        .and_then(|m| m.as_str())
                        .map(str::to_owned)
                })?
        }
        // JSON, but not an object: nothing to pick from.
        Ok(_) => return None,
        Err(_) => text.to_owned(),
    };
    let mut line = String::with_capacity(chosen.len().min(MAX_DETAIL));
    for word in chosen.split_whitespace() {
        let word: String = word.chars().filter(|c| !c.is_control()).collect();
        if word.is_empty() {
            continue;
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&word);
        if line.len() >= MAX_DETAIL {
            break;
        }
    }
    if line.len() > MAX_DETAIL {
        let mut cut = MAX_DETAIL;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
    (!line.is_empty()).then_some(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;
    use std::time::Duration;

    fn headers(retry_after: Option<&'static str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from_static(value));
        }
        headers
    }

    fn invalid(reason: &'static str) -> Outcome {
        Outcome::InvalidToken {
            reason: Reason::known(reason),
            timestamp_ms: None,
        }
    }

    fn bad(reason: &str) -> Outcome {
        Outcome::BadRequest {
            reason: Reason::raw(reason),
        }
    }

    fn transient(reason: &str, retry_after: Option<u64>) -> Outcome {
        Outcome::Transient {
            reason: Reason::raw(reason),
            retry_after: retry_after.map(Duration::from_secs),
            maybe_delivered: false,
        }
    }

    #[test]
    fn reference_table() {
        let mozilla_401 = br#"{"code":401,"errno":109,"error":"Unauthorized","message":"Request did not validate: invalid vapid token"}"#;
        let rows: Vec<(u16, Option<&'static str>, &[u8], Outcome)> = vec![
            (201, None, b"", Outcome::Delivered),
            (200, None, b"{}", Outcome::Delivered),
            (202, None, b"", Outcome::Delivered),
            (301, None, b"", bad("Redirect")),
            (307, None, b"", bad("Redirect")),
            (400, None, b"", bad("Http400")),
            (400, None, br#"{"reason":"BadJwtToken"}"#, bad("Http400")),
            (401, None, mozilla_401, bad("Http401")),
            (403, None, b"the key in the authorization header does not correspond to the sender ID used to subscribe this user.", bad("Http403")),
            (403, None, b"<html><body>Forbidden</body></html>", bad("Http403")),
            (401, None, br#"{"error":{"code":401,"message":"invalid JWT provided"}}"#, bad("Http401")),
            (404, None, br#"{"errno":102,"message":"Request did not validate"}"#, invalid("NotFound")),
            (410, None, br#"{"code":410,"errno":106,"message":"Request did not validate"}"#, invalid("Gone")),
            (410, None, b"", invalid("Gone")),
            (413, None, b"", bad("PayloadTooLarge")),
            (429, Some("30"), b"", transient("TooManyRequests", Some(30))),
            (429, None, b"", transient("TooManyRequests", None)),
            (500, None, b"", transient("Http500", None)),
            (502, None, b"<html>Bad Gateway</html>", transient("Http502", None)),
            (503, Some("5"), b"", transient("Http503", Some(5))),
            (503, Some("Wed, 21 Oct 2015 07:28:00 GMT"), b"", transient("Http503", None)),
            (405, None, b"", bad("Http405")),
            (418, None, b"", bad("Http418")),
            (100, None, b"", bad("Http100")),
        ];
        for (status, retry_after, body, expected) in rows {
            let outcome = classify(StatusCode::from_u16(status).unwrap(), &headers(retry_after));
            assert_eq!(
                outcome,
                expected,
                "{status} {}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn details_are_one_short_line() {
        let long = format!("{{\"message\":\"{}\"}}", "é".repeat(300));
        let line = detail(long.as_bytes()).unwrap();
        assert!(line.len() <= MAX_DETAIL, "{}", line.len());
        assert_eq!(
            detail(br#"{"error":{"code":401,"message":"invalid JWT provided"}}"#).as_deref(),
            Some("invalid JWT provided")
        );
        assert_eq!(
            detail(b"line one\r\n\tline\x07 two").as_deref(),
            Some("line one line two")
        );
        assert_eq!(detail(b"[1,2]"), None);
        assert_eq!(detail(b"\xff\xfe"), None);
        assert_eq!(detail(b"<html>Forbidden</html>"), None);
    }

    proptest! {
        #[test]
        fn never_panics_and_only_2xx_is_delivered(
            status in 100u16..1000,
            body in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let status = StatusCode::from_u16(status).unwrap();
            let outcome = classify(status, &HeaderMap::new());
            prop_assert_eq!(outcome == Outcome::Delivered, status.is_success());
            // Reasons are codes, a few dozen at most.
            if let Some(reason) = outcome.reason() {
                prop_assert!(!reason.as_str().contains(' '), "{}", reason.as_str());
            }
            // A body's detail is one line.
            if let Some(line) = detail(&body) {
                prop_assert!(line.len() <= MAX_DETAIL && !line.contains(['\n', '\r']));
            }
        }
    }
}
