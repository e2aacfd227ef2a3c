//! The fake APNs: one request in, one answer out, shaped like Apple's.

use std::borrow::Cow;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::server::{bad_gateway, json_response, unix_now, Answer, ConnCtx, Ctx, Delivery};

const PATH_PREFIX: &str = "/3/device/";
const MAX_PAYLOAD: usize = 4096;
const MAX_VOIP_PAYLOAD: usize = 5120;
const MAX_COLLAPSE_ID: usize = 64;
/// Provider tokens older than this are expired (Apple: one hour).
const TOKEN_LIFETIME_SECS: i64 = 3600;

/// Answers one request to the fake APNs.
pub(crate) fn handle<'a>(ctx: &Ctx, conn: &ConnCtx, parts: &'a Parts, body: &Bytes) -> Answer<'a> {
    let headers = RequestHeaders::scan(&parts.headers);
    let mut apns_id = match headers.apns_id {
        Some(id) if is_uuid(id.as_bytes()) => id.clone(),
        Some(_) => return error(new_apns_id(), StatusCode::BAD_REQUEST, "BadMessageId"),
        None => new_apns_id(),
    };
    // A fresh value per response: indexing it in HPACK's dynamic table only churns the table.
    apns_id.set_sensitive(true);
    if headers.duplicate {
        return error(apns_id, StatusCode::BAD_REQUEST, "DuplicateHeaders");
    }
    let Some(token) = parts.uri.path().strip_prefix(PATH_PREFIX) else {
        return error(apns_id, StatusCode::NOT_FOUND, "BadPath");
    };
    if parts.method != Method::POST {
        return error(apns_id, StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed");
    }
    if token.is_empty() {
        return error(apns_id, StatusCode::BAD_REQUEST, "MissingDeviceToken");
    }
    if !ctx.config.skip_auth && !conn.client_cert {
        if let Err(reason) = check_provider_token(ctx, conn, headers.authorization) {
            return error(apns_id, StatusCode::FORBIDDEN, reason);
        }
    }
    conn.authorised(ctx);

    let push_type = headers
        .push_type
        .map_or(&b"alert"[..], HeaderValue::as_bytes);
    let Some(suffix) = topic_suffix(push_type) else {
        return error(apns_id, StatusCode::BAD_REQUEST, "InvalidPushType");
    };
    let Some(topic) = headers.topic else {
        return error(apns_id, StatusCode::BAD_REQUEST, "MissingTopic");
    };
    if let Some(reason) = check_topic(topic.as_bytes(), suffix, ctx.config.apns_topic.as_deref()) {
        return error(apns_id, StatusCode::BAD_REQUEST, reason);
    }
    let collapse_id = headers.collapse_id;
    if collapse_id.is_some_and(|c| c.len() > MAX_COLLAPSE_ID) {
        return error(apns_id, StatusCode::BAD_REQUEST, "BadCollapseId");
    }
    if body.is_empty() {
        return error(apns_id, StatusCode::BAD_REQUEST, "PayloadEmpty");
    }
    let voip = push_type == b"voip";
    let limit = if voip { MAX_VOIP_PAYLOAD } else { MAX_PAYLOAD };
    if body.len() > limit {
        return error(apns_id, StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge");
    }
    if !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return error(apns_id, StatusCode::BAD_REQUEST, "BadDeviceToken");
    }
    if let Some(answer) = scripted(&apns_id, token) {
        return answer;
    }
    if ctx.transient_error() {
        return unavailable(apns_id);
    }

    let mut response = Response::new(());
    response.headers_mut().insert("apns-id", apns_id);
    Answer {
        response,
        body: None,
        notification: true,
        delivery: Some(Delivery {
            token: Cow::Borrowed(token),
            id: None,
            collapse_id: collapse_id.and_then(|c| c.to_str().ok()).map(Cow::Borrowed),
        }),
    }
}

/// Every suffix Apple puts after the bundle id in `apns-topic`, by push type.
const TOPIC_SUFFIXES: &[(&[u8], &[u8])] = &[
    (b"alert", b""),
    (b"background", b""),
    (b"mdm", b""),
    (b"voip", b".voip"),
    (b"complication", b".complication"),
    (b"fileprovider", b".pushkit.fileprovider"),
    (b"liveactivity", b".push-type.liveactivity"),
    (b"location", b".location-query"),
    (b"pushtotalk", b".voip-ptt"),
    (b"controls", b".push-type.controls"),
    (b"widgets", b".push-type.widgets"),
];

/// The topic suffix a push type requires; `None` for a push type APNs does not know.
fn topic_suffix(push_type: &[u8]) -> Option<&'static [u8]> {
    TOPIC_SUFFIXES
        .iter()
        .find(|(name, _)| *name == push_type)
        .map(|(_, suffix)| *suffix)
}

/// Apple's topic rule: the bundle id, plus the push type's suffix. A topic for another app
/// is `BadTopic`; the right app with the wrong suffix is `DeviceTokenNotForTopic`.
fn check_topic(topic: &[u8], suffix: &[u8], bundle: Option<&str>) -> Option<&'static str> {
    let base = TOPIC_SUFFIXES
        .iter()
        .filter(|(_, known)| !known.is_empty())
        .find_map(|(_, known)| topic.strip_suffix(*known))
        .unwrap_or(topic);
    if bundle.is_some_and(|bundle| bundle.as_bytes() != base) {
        return Some("BadTopic");
    }
    let has_suffix = &topic[base.len()..];
    (has_suffix != suffix).then_some("DeviceTokenNotForTopic")
}

/// The request headers APNs looks at.
#[derive(Default)]
struct RequestHeaders<'a> {
    apns_id: Option<&'a HeaderValue>,
    authorization: Option<&'a HeaderValue>,
    topic: Option<&'a HeaderValue>,
    collapse_id: Option<&'a HeaderValue>,
    push_type: Option<&'a HeaderValue>,
    /// One of the above appeared twice (APNs: 400 DuplicateHeaders).
    duplicate: bool,
}

impl<'a> RequestHeaders<'a> {
    /// One pass over the few headers present: cheaper than hashing five names for lookups.
    fn scan(map: &'a http::HeaderMap) -> Self {
        let mut found = RequestHeaders::default();
        for (name, value) in map {
            let slot = match name.as_str() {
                "apns-id" => &mut found.apns_id,
                "authorization" => &mut found.authorization,
                "apns-topic" => &mut found.topic,
                "apns-collapse-id" => &mut found.collapse_id,
                "apns-push-type" => &mut found.push_type,
                _ => continue,
            };
            found.duplicate |= slot.is_some();
            slot.get_or_insert(value);
        }
        found
    }
}

/// The scripted failures keyed by token prefix (see the table in `cli`).
fn scripted<'a>(apns_id: &HeaderValue, token: &str) -> Option<Answer<'a>> {
    let prefix = token.as_bytes().get(..4)?;
    let prefix = [0, 1, 2, 3].map(|i| prefix[i].to_ascii_lowercase());
    Some(match &prefix {
        b"badd" => error(apns_id.clone(), StatusCode::BAD_REQUEST, "BadDeviceToken"),
        b"dead" => {
            let body = format!(
                r#"{{"reason":"Unregistered","timestamp":{}}}"#,
                unix_now().saturating_mul(1000)
            );
            json_answer(apns_id.clone(), StatusCode::GONE, body.into())
        }
        b"4030" => error(
            apns_id.clone(),
            StatusCode::BAD_REQUEST,
            "DeviceTokenNotForTopic",
        ),
        b"4290" => error(
            apns_id.clone(),
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
        ),
        b"5000" => error(
            apns_id.clone(),
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
        ),
        b"5020" => {
            let (mut response, body) = bad_gateway();
            response.headers_mut().insert("apns-id", apns_id.clone());
            Answer {
                response,
                body: Some(body),
                notification: true,
                delivery: None,
            }
        }
        b"5030" => unavailable(apns_id.clone()),
        _ => return None,
    })
}

fn unavailable<'a>(apns_id: HeaderValue) -> Answer<'a> {
    let mut answer = error(
        apns_id,
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
    );
    answer
        .response
        .headers_mut()
        .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
    answer
}

fn error<'a>(apns_id: HeaderValue, status: StatusCode, reason: &str) -> Answer<'a> {
    json_answer(
        apns_id,
        status,
        format!(r#"{{"reason":"{reason}"}}"#).into(),
    )
}

fn json_answer<'a>(apns_id: HeaderValue, status: StatusCode, body: Bytes) -> Answer<'a> {
    let mut response = json_response(status);
    response.headers_mut().insert("apns-id", apns_id);
    Answer {
        response,
        body: Some(body),
        notification: true,
        delivery: None,
    }
}

/// A fresh apns-id: a v4 UUID, upper-case and hyphenated as Apple writes them.
fn new_apns_id() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = uuid::Uuid::new_v4().hyphenated().encode_upper(&mut buf);
    HeaderValue::from_str(id).expect("a uuid is a valid header value")
}

fn is_uuid(id: &[u8]) -> bool {
    id.len() == uuid::fmt::Hyphenated::LENGTH
        && id.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[derive(serde::Deserialize)]
struct ProviderClaims {
    iat: i64,
}

/// Checks the provider token; `Err` carries the APNs reason.
fn check_provider_token(
    ctx: &Ctx,
    conn: &ConnCtx,
    authorization: Option<&HeaderValue>,
) -> Result<(), &'static str> {
    let Some(authorization) = authorization else {
        return Err("MissingProviderToken");
    };
    // Verifying ES256 on every request would make the fake the bottleneck; clients reuse one
    // token for up to an hour, so remember the last one that verified on this connection.
    let cached_iat = match &*conn.verified_jwt.borrow() {
        Some((verified, iat)) if verified == authorization => Some(*iat),
        _ => None,
    };
    let iat = match cached_iat {
        Some(iat) => iat,
        None => {
            let iat = verify_provider_token(ctx.apns_key.as_ref(), authorization)?;
            *conn.verified_jwt.borrow_mut() = Some((authorization.clone(), iat));
            iat
        }
    };
    if unix_now() - iat > TOKEN_LIFETIME_SECS {
        return Err("ExpiredProviderToken");
    }
    Ok(())
}

fn verify_provider_token(
    key: Option<&DecodingKey>,
    authorization: &HeaderValue,
) -> Result<i64, &'static str> {
    const INVALID: &str = "InvalidProviderToken";
    let value = authorization.to_str().map_err(|_| INVALID)?;
    let jwt = value
        .strip_prefix("bearer ")
        .or_else(|| value.strip_prefix("Bearer "))
        .ok_or(INVALID)?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let unchecked;
    let key = match key {
        Some(key) => key,
        None => {
            validation.insecure_disable_signature_validation();
            unchecked = DecodingKey::from_secret(&[]);
            &unchecked
        }
    };
    let data =
        jsonwebtoken::decode::<ProviderClaims>(jwt, key, &validation).map_err(|_| INVALID)?;
    if data.header.kid.is_none() {
        return Err(INVALID);
    }
    Ok(data.claims.iat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apns_ids_are_upper_case_uuids() {
        let id = new_apns_id();
        assert!(is_uuid(id.as_bytes()));
        let text = id.to_str().unwrap();
        assert_eq!(text, text.to_ascii_uppercase());
        assert!(!is_uuid(b"not-a-uuid"));
        assert!(is_uuid(b"123e4567-e89b-12d3-a456-426614174000"));
    }
}
