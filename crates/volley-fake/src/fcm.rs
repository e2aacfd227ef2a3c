//! The fake FCM HTTP v1 API and its fake OAuth token endpoint, shaped like Google's.

use std::borrow::Cow;
use std::time::Instant;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Method, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::counters::Counters;
use crate::server::{bad_gateway, json_response, Answer, ConnCtx, Ctx, Delivery};

/// The scope an FCM access token must be minted for.
const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const FCM_ERROR_TYPE: &str = "type.googleapis.com/google.firebase.fcm.v1.FcmError";

/// Answers one request to the fake FCM (or its token endpoint).
pub(crate) fn handle<'a>(ctx: &Ctx, conn: &ConnCtx, parts: &Parts, body: &'a Bytes) -> Answer<'a> {
    let path = parts.uri.path();
    if path == "/token" {
        return if parts.method == Method::POST {
            issue_token(ctx, body)
        } else {
            google_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "Method not allowed.",
                None,
            )
        };
    }
    let Some(project) = path
        .strip_prefix("/v1/projects/")
        .and_then(|rest| rest.strip_suffix("/messages:send"))
        .filter(|p| !p.is_empty() && !p.contains('/'))
    else {
        return google_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "Requested entity was not found.",
            None,
        );
    };
    if parts.method != Method::POST {
        return google_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "Method not allowed.",
            None,
        );
    }
    if ctx
        .config
        .fcm_project
        .as_deref()
        .is_some_and(|want| want != project)
    {
        return google_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "Requested entity was not found.",
            None,
        );
    }
    if !ctx.config.skip_auth
        && !bearer_is_valid(ctx, parts.headers.get(http::header::AUTHORIZATION))
    {
        return google_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login \
             cookie or other valid authentication credential. \
             See https://developers.google.com/identity/sign-in/web/devconsole-project.",
            None,
        );
    }
    conn.authorised(ctx);

    let Ok(request) = serde_json::from_slice::<SendRequest<'a>>(body) else {
        return google_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "Invalid JSON payload received.",
            Some("INVALID_ARGUMENT"),
        );
    };
    let message = request.message;
    let token = match (message.token, message.topic, message.condition) {
        (Some(token), _, _) => token,
        (None, Some(topic), _) => Cow::Owned(format!("/topics/{topic}")),
        (None, None, Some(condition)) => condition,
        (None, None, None) => {
            return google_error(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                "Recipient of the message is not set.",
                Some("INVALID_ARGUMENT"),
            )
        }
    };
    if let Some(answer) = scripted(&token) {
        return answer;
    }
    if ctx.transient_error() {
        return unavailable();
    }

    let seq = ctx.next_message_id.get() + 1;
    ctx.next_message_id.set(seq);
    let id = format!("0:{}%{seq:016x}", ctx.port);
    let name = format!(r#"{{"name":"projects/{project}/messages/{id}"}}"#);
    let collapse_id = message.android.and_then(|a| a.collapse_key).or_else(|| {
        message
            .apns
            .and_then(|a| a.headers)
            .and_then(|h| h.collapse_id)
    });
    Answer {
        response: json_response(StatusCode::OK),
        body: Some(Bytes::from(name)),
        notification: true,
        delivery: Some(Delivery {
            token,
            id: Some(id),
            collapse_id,
        }),
    }
}

#[derive(Deserialize)]
struct SendRequest<'a> {
    #[serde(borrow)]
    message: Message<'a>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    token: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    topic: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    condition: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    android: Option<AndroidConfig<'a>>,
    #[serde(borrow, default)]
    apns: Option<ApnsConfig<'a>>,
}

#[derive(Deserialize)]
struct AndroidConfig<'a> {
    #[serde(borrow, default)]
    collapse_key: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ApnsConfig<'a> {
    #[serde(borrow, default)]
    headers: Option<ApnsHeaders<'a>>,
}

#[derive(Deserialize)]
struct ApnsHeaders<'a> {
    #[serde(borrow, default, rename = "apns-collapse-id")]
    collapse_id: Option<Cow<'a, str>>,
}

/// The scripted failures keyed by token prefix (see the table in `cli`).
fn scripted<'a>(token: &str) -> Option<Answer<'a>> {
    let prefix = token.as_bytes().get(..4)?;
    let prefix = [0, 1, 2, 3].map(|i| prefix[i].to_ascii_lowercase());
    let mut answer = match &prefix {
        b"badd" => {
            let message = "The registration token is not a valid FCM registration token";
            let body = serde_json::json!({
                "error": {
                    "code": 400,
                    "message": format!("Invalid value at 'message.token' (TYPE_STRING), {message}"),
                    "status": "INVALID_ARGUMENT",
                    "details": [
                        {"@type": FCM_ERROR_TYPE, "errorCode": "INVALID_ARGUMENT"},
                        {
                            "@type": "type.googleapis.com/google.rpc.BadRequest",
                            "fieldViolations": [{"field": "message.token", "description": message}],
                        },
                    ],
                }
            });
            notification_json(StatusCode::BAD_REQUEST, body.to_string())
        }
        b"dead" => google_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "Requested entity was not found.",
            Some("UNREGISTERED"),
        ),
        b"4030" => google_error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "SenderId mismatch",
            Some("SENDER_ID_MISMATCH"),
        ),
        b"4290" => {
            let mut answer = google_error(
                StatusCode::TOO_MANY_REQUESTS,
                "RESOURCE_EXHAUSTED",
                "Quota exceeded for quota metric 'Send requests' of service 'fcm.googleapis.com'.",
                Some("QUOTA_EXCEEDED"),
            );
            answer
                .response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            answer
        }
        b"5000" => google_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "Internal error encountered.",
            Some("INTERNAL"),
        ),
        b"5020" => {
            let (response, body) = bad_gateway();
            Answer {
                response,
                body: Some(body),
                notification: true,
                delivery: None,
            }
        }
        b"5030" => unavailable(),
        _ => return None,
    };
    answer.notification = true;
    Some(answer)
}

fn unavailable<'a>() -> Answer<'a> {
    let mut answer = google_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "UNAVAILABLE",
        "The service is currently unavailable.",
        Some("UNAVAILABLE"),
    );
    answer
        .response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    answer
}

/// A Google API error body, with an FcmError detail when `error_code` is given.
fn google_error<'a>(
    status: StatusCode,
    status_name: &str,
    message: &str,
    error_code: Option<&str>,
) -> Answer<'a> {
    let mut error = serde_json::json!({
        "code": status.as_u16(),
        "message": message,
        "status": status_name,
    });
    if let Some(code) = error_code {
        error["details"] = serde_json::json!([{"@type": FCM_ERROR_TYPE, "errorCode": code}]);
    }
    notification_json(status, serde_json::json!({ "error": error }).to_string())
}

fn notification_json<'a>(status: StatusCode, body: String) -> Answer<'a> {
    Answer {
        response: json_response(status),
        body: Some(Bytes::from(body)),
        notification: true,
        delivery: None,
    }
}

fn bearer_is_valid(ctx: &Ctx, authorization: Option<&HeaderValue>) -> bool {
    let Some(token) = authorization.and_then(|v| v.to_str().ok()).and_then(|v| {
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
    }) else {
        return false;
    };
    ctx.access_tokens
        .borrow()
        .get(token)
        .is_some_and(|expiry| *expiry > Instant::now())
}

#[derive(Deserialize)]
struct AssertionClaims {
    iss: String,
    scope: String,
    aud: String,
}

/// `POST /token`: exchanges a signed JWT assertion for an access token.
fn issue_token<'a>(ctx: &Ctx, body: &Bytes) -> Answer<'a> {
    let invalid = |description: &str| {
        let body = serde_json::json!({"error": "invalid_grant", "error_description": description});
        Answer::json(StatusCode::BAD_REQUEST, body.to_string())
    };
    let mut grant_type = None;
    let mut assertion = None;
    for pair in body.split(|&b| b == b'&') {
        let mut kv = pair.splitn(2, |&b| b == b'=');
        let (Some(k), Some(v)) = (kv.next(), kv.next()) else {
            continue;
        };
        match k {
            b"grant_type" => grant_type = Some(percent_decode(v)),
            b"assertion" => assertion = Some(percent_decode(v)),
            _ => {}
        }
    }
    if grant_type.as_deref() != Some(GRANT_TYPE) {
        let body = serde_json::json!({"error": "unsupported_grant_type", "error_description": "Invalid grant_type"});
        return Answer::json(StatusCode::BAD_REQUEST, body.to_string());
    }
    let Some(assertion) = assertion else {
        return invalid("Missing required parameter: assertion");
    };
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    let unchecked;
    let key = match &ctx.fcm_key {
        Some(key) => key,
        None => {
            validation.insecure_disable_signature_validation();
            unchecked = DecodingKey::from_secret(&[]);
            &unchecked
        }
    };
    // The audience is checked by hand: it must name this server, whichever loopback name was used.
    validation.validate_aud = false;
    let claims = match jsonwebtoken::decode::<AssertionClaims>(&assertion, key, &validation) {
        Ok(data) => data.claims,
        Err(_) => return invalid("Invalid JWT Signature."),
    };
    if claims.iss.is_empty() {
        return invalid("Invalid JWT: no issuer.");
    }
    if !audience_is_this_server(ctx, &claims.aud) {
        return invalid("Invalid JWT: Failed audience check.");
    }
    if !claims.scope.split(' ').any(|s| s == FCM_SCOPE) {
        return invalid("Invalid JWT: scope does not include firebase.messaging.");
    }
    let access_token = format!("ya29.fake-{}", uuid::Uuid::new_v4().simple());
    let ttl = ctx.config.fcm_access_token_ttl;
    {
        let mut tokens = ctx.access_tokens.borrow_mut();
        let now = Instant::now();
        tokens.retain(|_, expiry| *expiry > now);
        tokens.insert(access_token.as_str().into(), now + ttl);
    }
    Counters::bump(&ctx.counters.oauth_tokens_issued);
    let body = serde_json::json!({
        "access_token": access_token,
        "expires_in": ttl.as_secs(),
        "token_type": "Bearer",
    });
    Answer::json(StatusCode::OK, body.to_string())
}

/// Accepts `{scheme}://{any host}:{our port}/token`: the client may have dialled 127.0.0.1,
/// localhost or ::1, and the assertion is minted for the `token_uri` it was given.
fn audience_is_this_server(ctx: &Ctx, aud: &str) -> bool {
    let Some(rest) = aud
        .strip_prefix(ctx.scheme)
        .and_then(|r| r.strip_prefix("://"))
    else {
        return false;
    };
    let Some(authority) = rest.strip_suffix("/token") else {
        return false;
    };
    authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>() == Ok(ctx.port))
}

fn percent_decode(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < raw.len() => {
                let hex = std::str::from_utf8(&raw[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn form_values_are_percent_decoded() {
        let cases: &[(&str, &str)] = &[
            (
                "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer",
                super::GRANT_TYPE,
            ),
            ("a+b", "a b"),
            ("abc.def_-", "abc.def_-"),
            ("50%", "50%"),
            ("%4", "%4"),
            ("%zz", "%zz"),
        ];
        for (raw, want) in cases {
            assert_eq!(percent_decode(raw.as_bytes()), *want, "{raw}");
        }
    }
}
