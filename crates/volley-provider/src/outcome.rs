//! What became of one notification sent to a provider.
//!
//! APNs and FCM report failures in their own vocabularies; both clients map every response
//! onto the same five classes so that the agent, the retry policy and the job report handle
//! one shape. The reason string is kept verbatim, including reasons we do not know yet.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

/// The provider's reason for an outcome, verbatim (`BadDeviceToken`, `UNREGISTERED`, ...).
///
/// Known reasons are `'static` strings, so classifying a common failure does not allocate;
/// an unknown reason is kept as the provider sent it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reason(Cow<'static, str>);

impl Reason {
    /// A reason known at compile time.
    pub const fn known(reason: &'static str) -> Self {
        Reason(Cow::Borrowed(reason))
    }

    /// A reason read from a response, kept as sent.
    pub fn raw(reason: impl Into<String>) -> Self {
        Reason(Cow::Owned(reason.into()))
    }

    /// The reason as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The class of a provider response: what the sender must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The provider accepted the notification.
    Delivered,
    /// The token is dead or wrong for this app: report it, never retry.
    InvalidToken {
        /// Provider reason (`Unregistered`, `UNREGISTERED`, `BadDeviceToken`, ...).
        reason: Reason,
        /// For APNs 410: when the token stopped being valid, in ms since the epoch.
        timestamp_ms: Option<u64>,
    },
    /// Worth retrying later, with back-off.
    Transient {
        /// Provider reason, or a transport reason such as `Timeout` or `ConnectionLost`.
        reason: Reason,
        /// The provider's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
        /// The request may have reached the provider (a timeout, or a stream the server had
        /// started processing before the connection broke); a retry may duplicate it.
        maybe_delivered: bool,
    },
    /// The app's credentials are wrong, expired or refused: pause the app, do not burn retries.
    Credential {
        /// Provider reason.
        reason: Reason,
    },
    /// The request itself is wrong (our bug or an unsendable payload): dead-letter it.
    BadRequest {
        /// Provider reason.
        reason: Reason,
    },
}

impl Outcome {
    /// The short class name used in metrics and reports.
    pub fn class(&self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::InvalidToken { .. } => "invalid_token",
            Outcome::Transient { .. } => "transient",
            Outcome::Credential { .. } => "credential",
            Outcome::BadRequest { .. } => "bad_request",
        }
    }

    /// The provider's reason, if the outcome is a failure.
    pub fn reason(&self) -> Option<&Reason> {
        match self {
            Outcome::Delivered => None,
            Outcome::InvalidToken { reason, .. }
            | Outcome::Transient { reason, .. }
            | Outcome::Credential { reason }
            | Outcome::BadRequest { reason } => Some(reason),
        }
    }
}

/// Parses an HTTP `Retry-After` value given in seconds (the form APNs and FCM use).
///
/// An HTTP date is not interpreted and yields `None`, so the caller falls back to back-off.
pub fn parse_retry_after(value: &[u8]) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?.trim();
    text.parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_is_parsed_and_dates_are_not() {
        assert_eq!(parse_retry_after(b"120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(b" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(b"Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn unknown_reasons_are_kept_verbatim() {
        let outcome = Outcome::BadRequest {
            reason: Reason::raw("SomethingNew"),
        };
        assert_eq!(outcome.reason().unwrap().as_str(), "SomethingNew");
        assert_eq!(outcome.class(), "bad_request");
    }
}
