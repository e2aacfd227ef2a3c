//! The one error shape every endpoint answers with:
//! `{"error": {"code": "...", "message": "...", "field": "..."}}`.
//!
//! Messages never hold a device token, an API key or payload content: token errors name the
//! field and index (`targets.apns[17]`), and serde's messages are scrubbed of quoted strings.

use std::fmt;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use volley_contracts::{ErrorCode as WireCode, WireError};

/// `Retry-After` seconds when the controller is full.
pub(crate) const OVERLOADED_RETRY_AFTER: u32 = 1;

/// Why a request was refused; the label of `volley_front_rejected_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The body is not JSON or has the wrong shape (400).
    BadRequest,
    /// No API key, or an unknown one (401).
    Unauthorized,
    /// The key belongs to another app (403).
    Forbidden,
    /// No such route, job or app (404).
    NotFound,
    /// The route exists but not with this method (405).
    MethodNotAllowed,
    /// The controller holds no credentials for the app (409).
    NoCredentials,
    /// The body is above `front.max_body_bytes` (413).
    BodyTooLarge,
    /// A token does not look like a token of its platform (422).
    InvalidToken,
    /// A platform the API does not know (422).
    UnknownPlatform,
    /// The app has no credentials section for a platform it was asked to send to (422).
    PlatformNotConfigured,
    /// The rendered notification is above the provider's limit (422).
    PayloadTooLarge,
    /// More tokens than `front.max_tokens_per_request` (422).
    TooManyTokens,
    /// No token at all (422).
    NoTokens,
    /// A value is well-formed JSON but not acceptable (422).
    InvalidArgument,
    /// A limit of the caller's is reached (429).
    ResourceExhausted,
    /// The front is draining or the controller cannot be reached (503).
    Unavailable,
    /// A bug (500).
    Internal,
    /// The request body came in slower than `front.body_min_bytes_per_second` (408).
    RequestTimeout,
    /// This front is at one of its own limits: `front.max_connections` or
    /// `front.max_large_bodies` (503 with `Retry-After`).
    Busy,
    /// The API key sent more requests than its rate allows (429 with `Retry-After`).
    RateLimited,
    /// The system is full: the controller holds as many pending notifications as it may
    /// (503 with `Retry-After`); nothing was queued.
    Overloaded,
    /// The app's `Idempotency-Key` was used for a request with another body (422).
    IdempotencyKeyReused,
    /// The app's `Idempotency-Key` names a request still being accepted (409 with
    /// `Retry-After`): retry to get its answer.
    IdempotencyKeyInUse,
}

impl Code {
    /// Every code, in a fixed order (indexes the rejection counters).
    pub const ALL: [Code; 23] = [
        Code::BadRequest,
        Code::Unauthorized,
        Code::Forbidden,
        Code::NotFound,
        Code::MethodNotAllowed,
        Code::NoCredentials,
        Code::BodyTooLarge,
        Code::InvalidToken,
        Code::UnknownPlatform,
        Code::PlatformNotConfigured,
        Code::PayloadTooLarge,
        Code::TooManyTokens,
        Code::NoTokens,
        Code::InvalidArgument,
        Code::ResourceExhausted,
        Code::Unavailable,
        Code::Internal,
        Code::RequestTimeout,
        Code::Busy,
        Code::RateLimited,
        Code::Overloaded,
        Code::IdempotencyKeyReused,
        Code::IdempotencyKeyInUse,
    ];

    /// The code as it appears in responses and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::Unauthorized => "unauthorized",
            Code::Forbidden => "forbidden",
            Code::NotFound => "not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::NoCredentials => "no_credentials",
            Code::BodyTooLarge => "body_too_large",
            Code::InvalidToken => "invalid_token",
            Code::UnknownPlatform => "unknown_platform",
            Code::PlatformNotConfigured => "platform_not_configured",
            Code::PayloadTooLarge => "payload_too_large",
            Code::TooManyTokens => "too_many_tokens",
            Code::NoTokens => "no_tokens",
            Code::InvalidArgument => "invalid_argument",
            Code::ResourceExhausted => "resource_exhausted",
            Code::Unavailable => "unavailable",
            Code::Internal => "internal",
            Code::RequestTimeout => "request_timeout",
            Code::Busy => "busy",
            Code::RateLimited => "rate_limited",
            Code::Overloaded => "overloaded",
            Code::IdempotencyKeyReused => "idempotency_key_reused",
            Code::IdempotencyKeyInUse => "idempotency_key_in_use",
        }
    }

    /// A dense index into [`Code::ALL`].
    pub fn index(self) -> usize {
        Code::ALL
            .iter()
            .position(|c| *c == self)
            .unwrap_or(Code::ALL.len() - 1)
    }

    /// The HTTP status of the code.
    pub fn status(self) -> StatusCode {
        match self {
            Code::BadRequest => StatusCode::BAD_REQUEST,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::NoCredentials | Code::IdempotencyKeyInUse => StatusCode::CONFLICT,
            Code::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::InvalidToken
            | Code::UnknownPlatform
            | Code::PlatformNotConfigured
            | Code::PayloadTooLarge
            | Code::TooManyTokens
            | Code::NoTokens
            | Code::InvalidArgument
            | Code::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Code::ResourceExhausted | Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable | Code::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Code::Busy => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn from_str(code: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_str() == code)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An API error: its code, a message for a person, and the field at fault.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The class; decides the status.
    pub code: Code,
    /// What went wrong.
    pub message: String,
    /// The JSON path of the offending field (`targets.apns[17]`), when there is one.
    pub field: Option<String>,
    /// Seconds for `Retry-After`.
    retry_after: Option<u32>,
    /// Compatible endpoints also put the message at the top level (`{"message": ...}`),
    /// where gorush and gaurun clients look for it.
    compat: bool,
    /// Jobs already accepted before a later entry of the same request failed.
    job_ids: Vec<String>,
}

impl ApiError {
    /// An error of `code`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            field: None,
            retry_after: None,
            compat: false,
            job_ids: Vec::new(),
        }
    }

    /// The same error, naming `field`.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The same error, with `prefix.` before its field (or the prefix alone without one).
    pub fn within(mut self, prefix: &str) -> Self {
        if prefix.is_empty() {
            return self;
        }
        self.field = Some(match self.field.take() {
            None => prefix.to_owned(),
            Some(field) if field.starts_with('[') => format!("{prefix}{field}"),
            Some(field) => format!("{prefix}.{field}"),
        });
        self
    }

    /// The same error, telling the client when to retry.
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The same error, shaped for gorush and gaurun clients too.
    pub fn compat(mut self) -> Self {
        self.compat = true;
        self
    }

    /// The same error, listing jobs accepted before it happened.
    pub fn with_job_ids(mut self, ids: Vec<String>) -> Self {
        self.job_ids = ids;
        self
    }

    /// The status the error answers with: always its code's, so that one code means one
    /// status on every endpoint.
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// The front is draining: come back later.
    pub fn draining() -> Self {
        ApiError::new(
            Code::Unavailable,
            "this front is shutting down; retry shortly",
        )
        .retry_after(5)
    }

    /// The controller could not be reached or did not answer.
    pub fn controller_unreachable(error: &tarpc::client::RpcError) -> Self {
        let message = match error {
            tarpc::client::RpcError::DeadlineExceeded => "the controller did not answer in time",
            _ => "the controller cannot be reached",
        };
        ApiError::new(Code::Unavailable, message).retry_after(5)
    }

    /// A wire error from the controller, as the front's code for it (whose status it answers
    /// with: the controller's `invalid_argument`, e.g. a job above
    /// `controller.max_pending_notifications` by itself, is a 422 like the front's).
    pub fn from_wire(error: WireError) -> Self {
        let code = match error.code {
            WireCode::InvalidArgument => Code::InvalidArgument,
            WireCode::NotFound => Code::NotFound,
            // A standby answered: the leader is being found; nothing was done.
            WireCode::Unavailable | WireCode::NotLeader => Code::Unavailable,
            WireCode::ResourceExhausted => Code::ResourceExhausted,
            WireCode::NoCredentials => Code::NoCredentials,
            // A lease error is between agents and the controller; a front never sees one. A
            // refused call means this front's certificate is not a front's: a deployment error.
            WireCode::Internal | WireCode::LeaseLost | WireCode::PermissionDenied => Code::Internal,
            WireCode::Overloaded => Code::Overloaded,
            WireCode::IdempotencyKeyReused => Code::IdempotencyKeyReused,
            WireCode::IdempotencyKeyInUse => Code::IdempotencyKeyInUse,
        };
        let retry_after = match error.code {
            WireCode::Unavailable => Some(5),
            WireCode::NotLeader => Some(1),
            // Pending work drains continuously: room comes back soon.
            WireCode::Overloaded | WireCode::ResourceExhausted => Some(OVERLOADED_RETRY_AFTER),
            // The first request with the key is being stored: its answer is a moment away.
            WireCode::IdempotencyKeyInUse => Some(1),
            _ => None,
        };
        let mut api = ApiError::new(code, error.message);
        api.retry_after = retry_after;
        api
    }

    /// A JSON parse error from `serde_path_to_error`, as a 400 naming the path, or as the 422
    /// a validating visitor asked for.
    pub fn from_json(error: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let text = strip_position(&inner.to_string());
        let field = (path != ".").then_some(path);
        let unknown = text
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(name, _)| name.to_owned());
        let mut api =
            match decode_unprocessable(&text) {
                Some((code, message)) => ApiError::new(code, message),
                // Nothing a caller sends is dropped: a field the endpoint does not know is refused
                // by name (the list of known ones is in docs/api.md, not in the answer).
                None if unknown.is_some() => {
                    ApiError::new(
                        Code::InvalidArgument,
                        format!(
                    "unknown field {:?}: this endpoint does not know it, so it would be lost \
                     (docs/api.md lists the fields)",
                    unknown.as_deref().unwrap_or_default().chars().take(64).collect::<String>()
                ),
                    )
                }
                None => {
                    let message = match inner.classify() {
                        serde_json::error::Category::Eof => {
                            "the body ends before the json value is complete".to_owned()
                        }
                        serde_json::error::Category::Syntax => format!("malformed json: {text}"),
                        _ => plain_words(&scrub_strings(&text)),
                    };
                    ApiError::new(Code::BadRequest, message)
                }
            };
        api.field = field;
        api
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    job_ids: &'a [String],
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Detail {
                code: self.code.as_str(),
                message: &self.message,
                field: self.field.as_deref(),
            },
            message: self.compat.then_some(self.message.as_str()),
            job_ids: &self.job_ids,
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut response = (
            self.status(),
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.code == Code::Unauthorized {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // Lets the metrics layer count the rejection by reason without parsing the body.
        response.extensions_mut().insert(self.code);
        response
    }
}

/// Marks a serde error raised by a validating visitor as a 422 with a code; serde errors carry
/// only text, so the code rides in front of the message and [`ApiError::from_json`] takes it off.
const MARK: char = '\u{1}';

/// A serde error that [`ApiError::from_json`] turns into `code` (a 422-class code) with
/// `message`, at the path where it was raised.
pub(crate) fn unprocessable<E: serde::de::Error>(code: Code, message: impl fmt::Display) -> E {
    E::custom(format_args!("{MARK}{}{MARK}{message}", code.as_str()))
}

fn decode_unprocessable(text: &str) -> Option<(Code, String)> {
    let rest = text.strip_prefix(MARK)?;
    let (code, message) = rest.split_once(MARK)?;
    Some((Code::from_str(code)?, message.to_owned()))
}

/// serde's messages in JSON's words: they name the Rust types they expected (`struct
/// NativeRequest with 21 elements`, `u32`, `untagged enum PriorityInput`), which mean nothing to
/// a caller and describe our internals.
pub(crate) fn plain_words(text: &str) -> String {
    if text.starts_with("data did not match any variant of untagged enum") {
        return "the value has none of the accepted shapes (docs/api.md lists them)".to_owned();
    }
    let Some((found, expected)) = text.split_once(", expected ") else {
        return text.to_owned();
    };
    let expected = expected.strip_prefix("a ").map_or(expected, |rest| {
        // serde says "a map" and "a sequence"; custom visitors say what they want already.
        match rest {
            "map" => "an object",
            "sequence" => "an array",
            "borrowed string" => "a string",
            _ => expected,
        }
    });
    let expected = match expected.split_whitespace().next().unwrap_or_default() {
        "struct" | "internally" | "adjacently" => "a json object",
        "tuple" => "an array",
        "enum" => "one of the values docs/api.md lists",
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number, 0 or more",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "unit" => "null",
        _ => expected,
    };
    // A struct read from an array fails on the array's length, not its type.
    let found = if found.starts_with("invalid length") && expected == "a json object" {
        "invalid type: array".to_owned()
    } else {
        found
            .replace("invalid type: sequence", "invalid type: array")
            .replace("invalid type: map", "invalid type: object")
            .replace("unit value", "null")
            .replace("floating point", "number")
    };
    format!("{found}, expected {expected}")
}

/// serde_json ends messages with ` at line L column C`; the field path says more.
fn strip_position(text: &str) -> String {
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text.to_owned(),
    }
}

/// Replaces quoted string values in serde's messages (`invalid type: string "…", expected …`)
/// so that a misplaced token or message text is never echoed back or logged.
pub(crate) fn scrub_strings(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("string \"") {
        out.push_str(&rest[..start]);
        out.push_str("a string");
        let after = &rest[start + "string \"".len()..];
        // The value ends at the last quote before the next `, expected` (values may hold quotes).
        let end = after
            .find("\", expected")
            .or_else(|| after.rfind('"'))
            .map(|i| i + 1)
            .unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_controller_error_answers_with_its_codes_status() {
        for (wire, code) in [
            (WireCode::InvalidArgument, Code::InvalidArgument),
            (WireCode::LeaseLost, Code::Internal),
            (WireCode::Overloaded, Code::Overloaded),
            (WireCode::NoCredentials, Code::NoCredentials),
        ] {
            let error = ApiError::from_wire(WireError::new(wire, "x"));
            assert_eq!(error.code, code);
            assert_eq!(error.status(), code.status(), "{wire:?}");
        }
    }

    #[test]
    fn strings_are_scrubbed_from_serde_messages() {
        assert_eq!(
            scrub_strings(r#"invalid type: string "0123abcd", expected u32"#),
            "invalid type: a string, expected u32"
        );
        assert_eq!(
            scrub_strings(r#"invalid value: string "a", expected x"#),
            "invalid value: a string, expected x"
        );
        assert_eq!(scrub_strings("missing field `x`"), "missing field `x`");
    }

    #[test]
    fn serde_messages_name_json_not_our_types() {
        for (serde, plain) in [
            (
                "invalid length 0, expected struct NativeRequest with 21 elements",
                "invalid type: array, expected a json object",
            ),
            (
                "invalid type: integer `1`, expected struct NativeRequest",
                "invalid type: integer `1`, expected a json object",
            ),
            (
                "invalid type: sequence, expected a map",
                "invalid type: array, expected an object",
            ),
            (
                "invalid type: a string, expected u32",
                "invalid type: a string, expected a whole number, 0 or more",
            ),
            (
                "invalid type: floating point `1.5`, expected i64",
                "invalid type: number `1.5`, expected a whole number",
            ),
            (
                "invalid type: map, expected enum Platform",
                "invalid type: object, expected one of the values docs/api.md lists",
            ),
            (
                "data did not match any variant of untagged enum PriorityInput",
                "the value has none of the accepted shapes (docs/api.md lists them)",
            ),
            (
                "invalid type: integer `3`, expected a token string",
                "invalid type: integer `3`, expected a token string",
            ),
            ("missing field `targets`", "missing field `targets`"),
        ] {
            assert_eq!(plain_words(serde), plain, "{serde}");
        }
    }

    #[test]
    fn marked_errors_round_trip() {
        let error: serde_json::Error = unprocessable(Code::InvalidToken, "bad token");
        let text = strip_position(&error.to_string());
        assert_eq!(
            decode_unprocessable(&text),
            Some((Code::InvalidToken, "bad token".to_owned()))
        );
    }

    #[test]
    fn codes_index_densely() {
        for (i, code) in Code::ALL.iter().enumerate() {
            assert_eq!(code.index(), i);
            assert_eq!(Code::from_str(code.as_str()), Some(*code));
        }
    }
}
