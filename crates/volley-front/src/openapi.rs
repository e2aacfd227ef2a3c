//! The HTTP API's OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]`
//! annotations and the request and response types, served at `GET /openapi.json` and kept in
//! `docs/openapi.json` (`tests/openapi.rs` fails when they differ).
//!
//! The routes are registered through [`routes`], so a route cannot exist without its entry in
//! the document. utoipa writes what the Rust types say; what they cannot say is written here
//! onto the generated JSON, from the same constants the checks use:
//! - the token, topic, condition, collapse-id and push-type rules (`volley_apns`, `volley_fcm`);
//! - that a native request needs at least one well-formed token, a topic or a condition, and
//!   that malformed tokens are otherwise left out and reported rather than refused;
//! - the gorush and gaurun entries, one shape per platform (each refuses the other's fields);
//! - every error an operation answers with: one schema per status listing its `error.code`s
//!   ([`ERRORS`], from [`Code::status`]), with `Retry-After` on 429 and 503;
//! - links from a submission to its job.
//!
//! Rules that depend on another field's value at run time (a data key FCM reserves matters only
//! when the job has FCM targets; the rendered size) are described, not encoded.

use std::borrow::Cow;
use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use utoipa::openapi::{RefOr, Schema};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::Code;
use crate::{compat, native, ops, FrontState};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Volley HTTP API",
        description = "Volley's front: a native API that takes one notification for many device \
            tokens and answers once the job is queued, gorush- and gaurun-compatible endpoints, \
            and operations endpoints. docs/api.md describes every endpoint with examples.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "notifications", description = "Sending: one notification, many tokens, one job"),
        (name = "jobs", description = "What became of each token of a job"),
        (name = "compatible", description = "gorush's `POST /api/push` and gaurun's `POST /push`, \
            sent to `front.default_app`"),
        (name = "operations", description = "Probes, statistics, configuration and metrics; no \
            API key (expose them to operators only)"),
    )
)]
struct ApiDoc;

/// Every route of the front with its part of the document.
pub(crate) fn routes() -> OpenApiRouter<FrontState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(native::submit))
        .routes(routes!(native::job_status, native::job_cancel))
        .routes(routes!(native::invalid_tokens))
        .routes(routes!(compat::gorush))
        .routes(routes!(compat::gaurun))
        .routes(routes!(ops::stat_app))
        .routes(routes!(ops::gorush_stat_app))
        .routes(routes!(ops::stat_runtime))
        .routes(routes!(ops::stat_go))
        .routes(routes!(ops::gorush_stat_go))
        .routes(routes!(ops::sys_stats))
        .routes(routes!(ops::config_app))
        .routes(routes!(ops::gorush_config))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(openapi_json))
}

/// The whole document, as served and as checked in (pretty-printed, keys in a fixed order).
pub fn document() -> &'static Bytes {
    static DOCUMENT: OnceLock<Bytes> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let (_, api) = routes().split_for_parts();
        let mut document = serde_json::to_value(api).expect("the document serialises");
        finish(&mut document);
        let mut text = serde_json::to_string_pretty(&document).expect("the document serialises");
        text.push('\n');
        Bytes::from(text)
    })
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "operations",
    security(()),
    responses((status = 200, description = "This OpenAPI 3.1 document", body = Object))
)]
pub async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document().clone(),
    )
        .into_response()
}

/// The errors each operation answers with, by `operationId`; statuses come from
/// [`Code::status`].
pub(crate) const ERRORS: &[(&str, &[Code])] = &[
    ("submit", SUBMIT_ERRORS),
    ("job_status", JOB_ERRORS),
    ("job_cancel", JOB_ERRORS),
    ("invalid_tokens", JOB_ERRORS),
    ("gorush", COMPAT_ERRORS),
    ("gaurun", COMPAT_ERRORS),
    ("stat_app", CONTROLLER_READ),
    ("gorush_stat_app", CONTROLLER_READ),
    ("readyz", CONTROLLER_READ),
    // Probes: the drain gate lets them through; only a front at `front.max_connections`
    // refuses them.
    ("healthz", &[Code::Busy]),
    ("metrics", &[Code::Busy]),
    // The drain gate's answer, and the connection cap's.
    ("stat_runtime", OPS_ERRORS),
    ("stat_go", OPS_ERRORS),
    ("gorush_stat_go", OPS_ERRORS),
    ("sys_stats", OPS_ERRORS),
    ("config_app", OPS_ERRORS),
    ("gorush_config", OPS_ERRORS),
    ("openapi", OPS_ERRORS),
];

const SUBMIT_ERRORS: &[Code] = &[
    Code::BadRequest,
    Code::Unauthorized,
    Code::Forbidden,
    Code::RequestTimeout,
    Code::NoCredentials,
    Code::IdempotencyKeyInUse,
    Code::BodyTooLarge,
    Code::InvalidToken,
    Code::UnknownPlatform,
    Code::PlatformNotConfigured,
    Code::PayloadTooLarge,
    Code::TooManyTokens,
    Code::NoTokens,
    Code::IdempotencyKeyReused,
    Code::InvalidArgument,
    Code::RateLimited,
    Code::ResourceExhausted,
    Code::Internal,
    Code::Busy,
    Code::Overloaded,
    Code::Unavailable,
];

const COMPAT_ERRORS: &[Code] = &[
    Code::BadRequest,
    Code::Unauthorized,
    Code::Forbidden,
    Code::NotFound,
    Code::RequestTimeout,
    Code::NoCredentials,
    Code::BodyTooLarge,
    Code::InvalidToken,
    Code::UnknownPlatform,
    Code::PlatformNotConfigured,
    Code::PayloadTooLarge,
    Code::TooManyTokens,
    Code::NoTokens,
    Code::InvalidArgument,
    Code::RateLimited,
    Code::ResourceExhausted,
    Code::Internal,
    Code::Busy,
    Code::Overloaded,
    Code::Unavailable,
];

const JOB_ERRORS: &[Code] = &[
    Code::BadRequest,
    Code::Unauthorized,
    Code::NotFound,
    Code::RateLimited,
    Code::Internal,
    Code::Busy,
    Code::Unavailable,
];

const CONTROLLER_READ: &[Code] = &[Code::Busy, Code::Unavailable];

const OPS_ERRORS: &[Code] = &[Code::Busy, Code::Unavailable];

/// Declares a component schema whose JSON is written in [`custom_schemas`]; utoipa only needs
/// its name to reference it.
macro_rules! component {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {$(
        $(#[$doc])*
        pub(crate) struct $name;
        impl utoipa::PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                // Replaced by `custom_schemas` when the document is finished.
                RefOr::T(Schema::Object(Default::default()))
            }
        }
        impl utoipa::ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }
        }
    )*};
}

component!(
    /// `targets`: token arrays by platform.
    Targets,
    /// An array of APNs device tokens.
    ApnsTokens,
    /// An array of FCM registration tokens.
    FcmTokens,
    /// A Web Push message: a JSON object or a string.
    WebPushPayload,
    /// A Web Push `Urgency`.
    WebPushUrgency,
    /// A Web Push `Topic`.
    WebPushTopic,
    /// An array of device tokens of the entry's platform (gorush, gaurun).
    CompatTokens,
    /// `"high"`, `"normal"`, 10, 5 or 1.
    Priority,
    /// `high` or `normal` (gorush, gaurun).
    PriorityText,
    /// A collapse id or key.
    CollapseId,
    /// Seconds, up to 28 days.
    Ttl,
    /// An APNs push type.
    PushTypeName,
    /// A raw APNs payload.
    ApnsPayload,
    /// Raw FCM message fields.
    FcmMessage,
    /// FCM message parts as gorush takes them (`notification`, `android`, `webpush`, `apns`,
    /// `fcm_options`).
    FcmPart,
    /// An `apns-topic`.
    ApnsTopic,
    /// An FCM topic.
    FcmTopic,
    /// An FCM condition.
    FcmCondition,
    /// The `Idempotency-Key` header.
    IdempotencyKey,
    /// `apns` or `fcm`.
    PlatformName,
    /// A job's state.
    JobState,
);

/// The APNs device-token rule of `volley_apns::validate_token`.
fn apns_token_pattern() -> String {
    use volley_apns::payload::{MAX_TOKEN_LEN, MIN_TOKEN_LEN};
    format!(
        "^([0-9A-Fa-f]{{2}}){{{},{}}}$",
        MIN_TOKEN_LEN / 2,
        MAX_TOKEN_LEN / 2
    )
}

/// The FCM registration-token rule of `volley_fcm::validate_token`.
fn fcm_token_pattern() -> String {
    format!(
        "^[A-Za-z0-9_:.-]{{1,{}}}$",
        volley_fcm::message::MAX_TOKEN_LEN
    )
}

/// `volley_fcm::validate_topic`, after an optional `/topics/`.
fn fcm_topic_pattern() -> String {
    format!(
        "^(/topics/)?[A-Za-z0-9_.~%-]{{1,{}}}$",
        volley_fcm::message::MAX_TOPIC_LEN
    )
}

/// `volley_fcm::validate_condition` for conditions without parentheses (the parser takes those
/// too).
fn fcm_condition_pattern() -> String {
    // The parser allows 16 levels of `!` and parentheses.
    let term = "(! *){0,16}'[A-Za-z0-9_.~%-]+' *in +topics";
    format!(
        "^ *{term}( *(&&|\\|\\|) *{term}){{0,{}}} *$",
        volley_fcm::message::MAX_CONDITION_TOPICS - 1
    )
}

/// Every seconds count from 0 to 28 days, optionally with leading zeros and an `s`, as FCM's
/// `android.ttl` is also written.
fn ttl_text_pattern() -> String {
    // 2419200 = 28 days in seconds.
    debug_assert_eq!(volley_fcm::message::MAX_TTL_SECONDS, 2_419_200);
    "^0*([0-9]{1,6}|1[0-9]{6}|2[0-3][0-9]{5}|24[01][0-9]{4}|241[0-8][0-9]{3}|2419[01][0-9]{2}|2419200)s?$"
        .to_owned()
}

fn string_map() -> Value {
    json!({"type": "object", "additionalProperties": {"type": "string"}})
}

/// A string or null (an `Option<String>` field).
fn optional_string() -> Value {
    json!({"type": ["string", "null"]})
}

/// The JSON of the schemas declared with [`component!`].
fn custom_schemas() -> Vec<(&'static str, Value)> {
    let max_ttl = volley_fcm::message::MAX_TTL_SECONDS;
    let push_types: Vec<&str> = volley_apns::PushType::ALL
        .iter()
        .map(|p| p.as_str())
        .collect();
    let apns_token = json!({"$ref": "#/components/schemas/ApnsToken"});
    let fcm_token = json!({"$ref": "#/components/schemas/FcmToken"});
    let android_priority =
        json!({"type": ["string", "null"], "enum": ["HIGH", "NORMAL", "high", "normal", null]});
    let ttl_any = json!({
        "oneOf": [
            {"type": "null"},
            {"type": "integer", "minimum": 0, "maximum": max_ttl},
            {"type": "string", "pattern": ttl_text_pattern()},
        ],
        "description": "seconds, at most 28 days: 3600 or \"3600s\"",
    });
    vec![
        (
            "ApnsToken",
            json!({
                "type": "string",
                "pattern": apns_token_pattern(),
                "description": "An APNs device token: 64 to 200 hex characters (either case), an even count.",
                "examples": ["4f3a9c0e1b2d3f4a5b6c7d8e9f0a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2"],
            }),
        ),
        (
            "FcmToken",
            json!({
                "type": "string",
                "pattern": fcm_token_pattern(),
                "description": "An FCM registration token: 1 to 4096 characters from A-Z a-z 0-9 _ : . -",
                "examples": ["dXk1:APA91bH-example-registration-token"],
            }),
        ),
        (
            "ApnsTokens",
            json!({
                "type": "array",
                "items": {"type": "string"},
                "description": "APNs device tokens (see ApnsToken). A malformed token is left \
                    out and reported in `rejected_tokens` (or, with `strict`, refuses the request).",
            }),
        ),
        (
            "FcmTokens",
            json!({
                "type": "array",
                "items": {"type": "string"},
                "description": "FCM registration tokens (see FcmToken). A malformed token is left \
                    out and reported in `rejected_tokens` (or, with `strict`, refuses the request).",
            }),
        ),
        (
            "CompatTokens",
            json!({
                "type": "array",
                "items": {"anyOf": [apns_token, fcm_token, {"type": "string"}]},
                "description": "Device tokens of the entry's platform (ApnsToken for 1, FcmToken \
                    for 2). A malformed token is left out and reported in the answer.",
            }),
        ),
        (
            "Targets",
            json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "apns": {"$ref": "#/components/schemas/ApnsTokens"},
                    "fcm": {"$ref": "#/components/schemas/FcmTokens"},
                    "webpush": {"$ref": "#/components/schemas/WebPushSubscriptions"},
                },
                "description": "Tokens by platform; another key is a 422 `unknown_platform`.",
            }),
        ),
        (
            "WebPushPayload",
            json!({
                "oneOf": [{"type": "object"}, {"type": "string"}],
                "description": "What the service worker receives: a JSON object the typed \
                    fields are written over, or a string sent as it is.",
            }),
        ),
        (
            "WebPushUrgency",
            json!({"type": "string", "enum": ["very-low", "low", "normal", "high"]}),
        ),
        (
            "WebPushTopic",
            json!({"type": "string", "pattern": "^[A-Za-z0-9_-]{1,32}$"}),
        ),
        (
            "WebPushSubscription",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["endpoint", "keys"],
                "properties": {
                    "endpoint": {
                        "type": "string",
                        "maxLength": 2048,
                        "pattern": "^https://([a-z0-9]+[.])*[a-z]+(:[1-9][0-9]{0,3})?(/[A-Za-z0-9_~-]*)*$",
                    },
                    "keys": {
                        "type": "object",
                        "additionalProperties": false,
                        "required": ["p256dh", "auth"],
                        "properties": {
                            "p256dh": {"type": "string", "pattern": "^B[A-P][A-Za-z0-9_-]{85}$"},
                            "auth": {"type": "string", "pattern": "^[A-Za-z0-9_-]{22}$"},
                        },
                    },
                    "expirationTime": {"type": ["number", "null"]},
                },
                "description": "A well-formed subscription: an https endpoint, `p256dh` a \
                    65-byte uncompressed P-256 point (0x04 first) and `auth` 16 bytes, URL-safe \
                    base64 (padded or standard base64 are taken too). Whether the point is on \
                    the curve is found by the agent: a subscription whose key is not is \
                    reported invalid (`InvalidKey`).",
            }),
        ),
        (
            "WebPushSubscriptions",
            json!({
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["endpoint", "keys"],
                    "properties": {
                        "endpoint": {"type": "string"},
                        "keys": {
                            "type": "object",
                            "additionalProperties": false,
                            "required": ["p256dh", "auth"],
                            "properties": {
                                "p256dh": {"type": "string"},
                                "auth": {"type": "string"},
                            },
                        },
                        "expirationTime": {"type": ["number", "null"]},
                    },
                },
                "description": "Web Push subscriptions as `PushSubscription.toJSON()` gives them: \
                    an https endpoint, the browser's P-256 key (`p256dh`, 65 bytes) and auth \
                    secret (16 bytes), URL-safe base64. A malformed subscription is left out \
                    and reported in `rejected_tokens` (or, with `strict`, refuses the request).",
            }),
        ),
        (
            "Priority",
            json!({
                "oneOf": [
                    {"type": "string", "enum": ["high", "normal"]},
                    {"type": "integer", "enum": [10, 5, 1]},
                ],
                "description": "APNs `apns-priority` 10 (`high`) or 5 (`normal`, and 1); FCM \
                    `android.priority`. A background push takes 5 or 1.",
            }),
        ),
        (
            "PriorityText",
            json!({"type": "string", "enum": ["high", "normal"]}),
        ),
        (
            "CollapseId",
            json!({
                "type": "string",
                "pattern": format!("^[\\t\\x20-\\x7e]{{0,{}}}$", crate::render::MAX_COLLAPSE_ID),
                "description": "Up to 64 visible ASCII characters (an HTTP header value for APNs).",
            }),
        ),
        (
            "Ttl",
            json!({
                "type": "integer",
                "minimum": 0,
                "maximum": max_ttl,
                "description": "Seconds, at most 28 days (FCM's longest).",
            }),
        ),
        (
            "PushTypeName",
            json!({"type": "string", "enum": push_types}),
        ),
        (
            "ApnsPayload",
            json!({
                "type": "object",
                "properties": {"aps": {"type": "object", "description": "the starting `aps` dictionary"}},
                "description": "A raw APNs payload: its `aps` object starts the `aps` dictionary, \
                    its other keys go beside `aps`.",
            }),
        ),
        (
            "FcmMessage",
            json!({
                "type": "object",
                "properties": {
                    "notification": {
                        "type": ["object", "null"],
                        "properties": {
                            "title": optional_string(),
                            "body": optional_string(),
                            "image": optional_string(),
                        },
                    },
                    "data": string_map(),
                    "android": {
                        "type": ["object", "null"],
                        "properties": {
                            "priority": android_priority,
                            "ttl": ttl_any,
                            "collapse_key": optional_string(),
                            "notification": {
                                "type": ["object", "null"],
                                "properties": {
                                    "title": optional_string(),
                                    "body": optional_string(),
                                    "icon": optional_string(),
                                    "color": optional_string(),
                                    "sound": optional_string(),
                                    "tag": optional_string(),
                                    "click_action": optional_string(),
                                    "channel_id": optional_string(),
                                    "image": optional_string(),
                                },
                            },
                        },
                    },
                    "apns": {
                        "type": ["object", "null"],
                        "properties": {"headers": string_map(), "payload": {}},
                    },
                    "webpush": {
                        "type": ["object", "null"],
                        "properties": {"headers": string_map(), "data": string_map()},
                    },
                },
                "propertyNames": {"not": {"enum": ["token", "topic", "condition"]}},
                "description": "Fields of FCM's `message`, passed through unchanged, modelled or \
                    not (`fcm_options`, `android.direct_boot_ok`...); not `token`, `topic` or \
                    `condition`. `data` keys FCM reserves (`from`, `message_type`, `google*`, \
                    `gcm*`) are refused.",
            }),
        ),
        (
            "FcmPart",
            json!({"type": "object", "description": "An FCM message part, as in FcmMessage."}),
        ),
        (
            "ApnsTopic",
            json!({
                "type": "string",
                "pattern": "^[\\x21-\\x7e]{1,255}$",
                "description": "1 to 255 visible ASCII characters: a bundle id, with the push \
                    type's suffix when it needs one.",
            }),
        ),
        (
            "FcmTopic",
            json!({
                "type": "string",
                "pattern": fcm_topic_pattern(),
                "description": "A topic name, optionally after `/topics/`.",
            }),
        ),
        (
            "FcmCondition",
            json!({
                "type": "string",
                "pattern": fcm_condition_pattern(),
                "description": "`'topic' in topics` terms joined by `&&` and `||`, negated by \
                    `!` (and grouped by parentheses), naming at most 5 topics.",
            }),
        ),
        (
            "IdempotencyKey",
            json!({
                "type": "string",
                "pattern": "^[\\x21-\\x7e]{1,255}$",
                "description": "1 to 255 visible ASCII characters (no spaces), given once.",
            }),
        ),
        (
            "PlatformName",
            json!({"type": "string", "enum": ["apns", "fcm", "webpush"]}),
        ),
        (
            "JobState",
            json!({"type": "string",
                "enum": ["queued", "running", "done", "cancelling", "cancelled"]}),
        ),
        ("Error", error_schema(&Code::ALL, true)),
    ]
}

/// The error shape, with `error.code` one of `codes`; `compat` adds the top-level `message`
/// and `job_ids` the compatible endpoints answer with.
fn error_schema(codes: &[Code], compat: bool) -> Value {
    let codes: Vec<&str> = codes.iter().map(|c| c.as_str()).collect();
    let mut properties = json!({
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "additionalProperties": false,
            "properties": {
                "code": {"type": "string", "enum": codes},
                "message": {"type": "string", "description": "For a person; never a token, key or payload text"},
                "field": {"type": "string", "description": "The JSON path of the offending value (`targets.apns[17]`), when there is one"},
            },
        },
    });
    if compat {
        properties["message"] = json!({
            "type": "string",
            "description": "The compatible endpoints: `error.message` again, where gorush and gaurun clients look for it",
        });
        properties["job_ids"] = json!({
            "type": "array",
            "items": {"type": "string", "format": "uuid"},
            "description": "The compatible endpoints: jobs already queued before a later entry failed",
        });
    }
    json!({
        "type": "object",
        "required": ["error"],
        "additionalProperties": false,
        "properties": properties,
    })
}

/// What a status means, for its response's description.
fn status_description(status: u16) -> &'static str {
    match status {
        400 => "The body is not JSON of the right types, or a query or path value is malformed",
        401 => "No API key, not `Bearer <key>`, or an unknown key",
        403 => "The key belongs to another app",
        404 => "No such job (or another app's), or no `front.default_app`",
        408 => {
            "The body came in too slowly (`front.body_read_timeout`, \
                `front.body_min_bytes_per_second`)"
        }
        409 => {
            "No agent has ever declared credentials for the app on one of the job's \
                platforms, or a request with the same `Idempotency-Key` is still being queued"
        }
        413 => "The body is above `front.max_body_bytes`",
        422 => "A well-formed value with an unacceptable meaning; `error.field` names it",
        429 => "A limit of the caller's: retry after `Retry-After` seconds",
        500 => "A bug",
        503 => {
            "The controller is full, unreachable or slow, or this front is draining or at one \
                of its own limits: nothing was queued; retry after `Retry-After` seconds"
        }
        _ => "An error",
    }
}

/// The responses for `codes`, one per status.
fn error_responses(codes: &[Code], compat: bool) -> Map<String, Value> {
    let mut by_status: Vec<(u16, Vec<Code>)> = Vec::new();
    for code in codes {
        let status = code.status().as_u16();
        match by_status.iter_mut().find(|(s, _)| *s == status) {
            Some((_, list)) => list.push(*code),
            None => by_status.push((status, vec![*code])),
        }
    }
    by_status.sort_by_key(|(status, _)| *status);
    let mut responses = Map::new();
    for (status, codes) in by_status {
        let mut response = json!({
            "description": status_description(status),
            "content": {"application/json": {"schema": error_schema(&codes, compat)}},
        });
        match status {
            429 | 503 => {
                response["headers"] = json!({"Retry-After": {
                    "description": "Seconds to wait before retrying",
                    "required": true,
                    "schema": {"type": "integer", "minimum": 1},
                }});
            }
            409 if codes.contains(&Code::IdempotencyKeyInUse) => {
                response["headers"] = json!({"Retry-After": {
                    "description": "With `idempotency_key_in_use`: seconds to wait before retrying",
                    "schema": {"type": "integer", "minimum": 1},
                }});
            }
            401 => {
                response["headers"] = json!({"WWW-Authenticate": {
                    "description": "The scheme to authenticate with",
                    "required": true,
                    "schema": {"type": "string", "enum": ["Bearer"]},
                }});
            }
            _ => {}
        }
        responses.insert(status.to_string(), response);
    }
    responses
}

/// Writes onto the generated document what utoipa cannot derive (see the module's doc).
fn finish(document: &mut Value) {
    document["components"]["securitySchemes"] = json!({
        "api_key": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key of the app the request acts for (`apps.api_keys`): \
                `Authorization: Bearer <key>`. The compatible endpoints take a key of \
                `front.default_app` unless `front.compat_require_api_key = false`.",
        }
    });
    let schemas = document["components"]["schemas"]
        .as_object_mut()
        .expect("the document has schemas");
    for (name, schema) in custom_schemas() {
        schemas.insert(name.to_owned(), schema);
    }
    native_request(schemas);
    compat::document_requests(schemas);
    bound_integers(document);

    let paths = document["paths"]
        .as_object_mut()
        .expect("the document has paths");
    for item in paths.values_mut() {
        for operation in item.as_object_mut().expect("a path item").values_mut() {
            let id = operation["operationId"]
                .as_str()
                .expect("every operation has an id")
                .to_owned();
            let (_, codes) = ERRORS
                .iter()
                .find(|(op, _)| *op == id)
                .unwrap_or_else(|| panic!("openapi::ERRORS has no entry for {id}"));
            let compat = matches!(id.as_str(), "gorush" | "gaurun");
            let responses = operation["responses"].as_object_mut().expect("responses");
            responses.extend(error_responses(codes, compat));
        }
    }
    // A submission's answer leads to its job.
    let id = json!({"id": "$response.body#/id"});
    document["paths"]["/v1/apps/{app}/notifications"]["post"]["responses"]["202"]["links"] = json!({
        "GetJob": {"operationId": "job_status", "parameters": id,
            "description": "The job's progress"},
        "GetInvalidTokens": {"operationId": "invalid_tokens", "parameters": id,
            "description": "The job's invalid tokens"},
        "CancelJob": {"operationId": "job_cancel", "parameters": id,
            "description": "Cancel what has not been sent"},
    });
}

/// The native request: at least one well-formed token (or a topic or condition), one spelling
/// per platform, not both a topic and a condition nor either with FCM tokens, no high priority
/// for a background push to APNs, every token well-formed under `strict`.
///
/// Most "not both" rules are written as "one of them absent": schemathesis cannot generate
/// from several `not`s over the same properties (it was found by trying which it takes).
fn native_request(schemas: &mut Map<String, Value>) {
    let apns = json!({"$ref": "#/components/schemas/ApnsToken"});
    let fcm = json!({"$ref": "#/components/schemas/FcmToken"});
    let webpush = json!({"$ref": "#/components/schemas/WebPushSubscription"});
    let nested = |platform: &str, token: &Value| {
        json!({"required": ["targets"], "properties": {"targets": {
            "required": [platform], "properties": {platform: {"contains": token}}}}})
    };
    let flat = |field: &str, token: &Value| json!({"required": [field], "properties": {field: {"contains": token}}});
    let present =
        |field: &str| json!({"required": [field], "properties": {field: {"type": "string"}}});
    let absent = |field: &str| json!({"properties": {field: {"type": "null"}}});
    let no_nested = |platform: &str| json!({"properties": {"targets": {"properties": {platform: {"maxItems": 0}}}}});
    let no_flat = |field: &str| json!({"properties": {field: {"maxItems": 0}}});
    let request = schemas
        .get_mut("NotificationRequest")
        .and_then(Value::as_object_mut)
        .expect("the native request schema");
    request.insert(
        "allOf".into(),
        json!([
            {"anyOf": [
                nested("apns", &apns),
                nested("fcm", &fcm),
                nested("webpush", &webpush),
                flat("apns_tokens", &apns),
                flat("fcm_tokens", &fcm),
                present("topic"),
                present("condition"),
            ]},
            {"anyOf": [no_nested("apns"), no_flat("apns_tokens")]},
            {"anyOf": [no_nested("fcm"), no_flat("fcm_tokens")]},
            {"anyOf": [absent("topic"), absent("condition")]},
            {"not": {"allOf": [
                {"anyOf": [present("topic"), present("condition")]},
                {"anyOf": [
                    {"required": ["targets"], "properties": {"targets": {"required": ["fcm"],
                        "properties": {"fcm": {"minItems": 1}}}}},
                    {"required": ["fcm_tokens"], "properties": {"fcm_tokens": {"minItems": 1}}},
                ]},
            ]}},
            {"anyOf": [
                not_background(&["title", "subtitle", "body", "badge", "sound"]),
                not_high_priority(),
                {"allOf": [no_nested("apns"), no_flat("apns_tokens")]},
            ]},
            {
                "if": {"required": ["strict"], "properties": {"strict": {"const": true}}},
                "then": {"properties": {
                    "targets": {"properties": {
                        "apns": {"items": apns},
                        "fcm": {"items": fcm},
                        "webpush": {"items": webpush},
                    }},
                    "apns_tokens": {"items": apns},
                    "fcm_tokens": {"items": fcm},
                }},
            },
        ]),
    );
}

/// Not a background push (for which Apple requires priority 5 or 1): a push type other than
/// `background`, or no push type and either no `content_available` or one of `visible` (what
/// makes an alert, badge or sound).
pub(crate) fn not_background(visible: &[&str]) -> Value {
    let mut shown = vec![
        json!({"required": ["push_type"], "properties": {"push_type": {"type": "string"}}}),
        json!({"properties": {"content_available": {"const": false}}}),
    ];
    for field in visible {
        let given = match *field {
            // gorush: an empty `alert` dictionary shows nothing.
            "alert" => json!({"type": "object", "minProperties": 1}),
            _ => json!({"not": {"type": "null"}}),
        };
        shown.push(json!({"required": [field], "properties": {*field: given}}));
    }
    json!({
        "properties": {"push_type": {"not": {"const": "background"}}},
        "anyOf": shown,
    })
}

/// `priority` other than high (10), or none.
pub(crate) fn not_high_priority() -> Value {
    json!({"properties": {"priority": {"not": {"enum": ["high", 10]}}}})
}

/// Gives unsigned integers their upper bound (utoipa writes only `minimum: 0`) and format, so
/// that a generated value fits the Rust type that reads it.
fn bound_integers(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let integer = match map.get("type") {
                Some(Value::String(t)) => t == "integer",
                Some(Value::Array(types)) => types.iter().any(|t| t == "integer"),
                _ => false,
            };
            let unsigned = map.get("minimum").and_then(Value::as_u64) == Some(0);
            if integer && unsigned && !map.contains_key("maximum") {
                // `int32` and `int64` would bound them to the signed ranges.
                let (format, maximum) = match map.get("format").and_then(Value::as_str) {
                    Some("int32") => ("uint32", u64::from(u32::MAX)),
                    _ => ("uint64", u64::MAX),
                };
                map.insert("format".into(), format.into());
                map.insert("maximum".into(), maximum.into());
            }
            for child in map.values_mut() {
                bound_integers(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(bound_integers),
        _ => {}
    }
}
