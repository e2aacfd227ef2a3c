//! The native API: `POST /v1/apps/{app}/notifications`, `GET` and `DELETE /v1/jobs/{id}`.

use std::fmt;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::Json;
use bytes::BytesMut;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use volley_contracts::{
    ApnsRender, FailureCount, FcmRender, Fingerprint, IdempotencyKey, InvalidToken, JobId,
    JobStatus, Platform, Rejected, RejectedToken, SubmitJob, TokenList, WebPushRender,
};
use volley_fcm::FcmMessage;

use crate::error::{unprocessable, ApiError, Code};
use crate::render::{self, Names, PriorityInput, Spec};
use crate::tokens::{self, refusal, ApnsRule, FcmRule, Rejection, Tokens};
use crate::webpush::{self, Subscriptions, WebPushOptions};
use crate::{cpu, FrontState};

/// Default and largest number of invalid tokens a job status lists.
const DEFAULT_INVALID_LIMIT: u32 = 1000;
/// Default page size of `GET /v1/jobs/{id}/invalid-tokens`.
const DEFAULT_PAGE_SIZE: u32 = 1000;
/// Largest page size of `GET /v1/jobs/{id}/invalid-tokens`.
const MAX_PAGE_SIZE: u32 = 10_000;
/// The longest idempotency key accepted, in characters (visible ASCII: one byte each).
const MAX_IDEMPOTENCY_KEY: usize = 255;
/// The response header that marks an answer replayed for a repeated idempotency key.
const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

const NAMES: Names = Names {
    priority: "priority",
    collapse_id: "collapse_id",
    expiration: "expiration",
    ttl: "ttl",
    push_type: "push_type",
    data: "data",
    apns_raw: "apns",
    fcm_raw: "fcm",
    apns_target: "targets.apns",
    fcm_target: "targets.fcm",
    apns_topic: "apns_topic",
    apns_id: "apns_id",
};

/// The body of `POST /v1/apps/{app}/notifications`: one notification, many tokens.
/// Unknown fields are refused (422 naming the field). The document's schema adds what the
/// types cannot say (`crate::openapi`): at least one well-formed token, a topic or a
/// condition; one spelling per platform; `strict`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NotificationRequest)]
struct NativeRequest {
    /// Tokens by platform.
    #[serde(default)]
    #[schema(value_type = crate::openapi::Targets)]
    targets: Targets,
    /// Flat spelling of `targets.apns`; not with it.
    #[serde(default)]
    #[schema(value_type = crate::openapi::ApnsTokens)]
    apns_tokens: Tokens<ApnsRule>,
    /// Flat spelling of `targets.fcm`; not with it.
    #[serde(default)]
    #[schema(value_type = crate::openapi::FcmTokens)]
    fcm_tokens: Tokens<FcmRule>,
    /// APNs `aps.alert.title`; FCM `notification.title`.
    title: Option<String>,
    /// APNs `aps.alert.body`; FCM `notification.body`.
    body: Option<String>,
    /// APNs `aps.alert.subtitle`.
    subtitle: Option<String>,
    /// APNs `aps.badge`.
    #[serde(default, deserialize_with = "crate::whole::option")]
    badge: Option<u32>,
    /// APNs `aps.sound`; FCM `android.notification.sound`.
    sound: Option<String>,
    /// App data: APNs keys beside `aps`; FCM `data` (non-strings JSON-encoded). Neither `aps`
    /// nor a key FCM reserves (`from`, `message_type`, `google*`, `gcm*`) when sending there.
    #[serde(default)]
    #[schema(value_type = Object)]
    data: Map<String, Value>,
    /// APNs `apns-priority` 10 / 5 / 1; FCM `android.priority`.
    #[schema(value_type = Option<crate::openapi::Priority>)]
    priority: Option<PriorityInput>,
    /// APNs `apns-collapse-id`; FCM `android.collapse_key`.
    #[schema(value_type = Option<crate::openapi::CollapseId>)]
    collapse_id: Option<String>,
    /// APNs `apns-expiration` (epoch seconds); FCM `android.ttl` = the seconds until then (at
    /// most 28 days), when `ttl` is absent.
    #[serde(default, deserialize_with = "crate::whole::option")]
    expiration: Option<u64>,
    /// Seconds a provider keeps the notification for an offline device (at most 28 days; 0 =
    /// try once): APNs `apns-expiration` = now + ttl, FCM `android.ttl`.
    #[schema(value_type = Option<crate::openapi::Ttl>)]
    #[serde(default, deserialize_with = "crate::whole::option")]
    ttl: Option<u64>,
    /// APNs `apns-push-type` (default `alert`; `background` for a `content_available` push
    /// with no alert, badge or sound).
    #[schema(value_type = Option<crate::openapi::PushTypeName>)]
    push_type: Option<String>,
    /// APNs `aps.content-available: 1`.
    #[serde(default)]
    content_available: bool,
    /// APNs `aps.mutable-content: 1`.
    #[serde(default)]
    mutable_content: bool,
    /// APNs `aps.category`.
    category: Option<String>,
    /// APNs `aps.thread-id`.
    thread_id: Option<String>,
    /// FCM `notification.image` (a URL).
    image: Option<String>,
    /// Raw APNs payload (`{"aps": {...}, ...}`) the typed fields are written over.
    #[schema(value_type = Option<crate::openapi::ApnsPayload>)]
    apns: Option<Map<String, Value>>,
    /// Raw FCM message fields (`android`, `webpush`, `apns`, `fcm_options`) the typed fields are
    /// written over.
    #[schema(value_type = Option<crate::openapi::FcmMessage>)]
    fcm: Option<FcmMessage>,
    /// APNs: the `apns-topic` to send with, verbatim (default: the app's bundle id with the
    /// suffix Apple requires for the push type).
    #[schema(value_type = Option<crate::openapi::ApnsTopic>)]
    apns_topic: Option<String>,
    /// APNs: the `apns-id` of every notification of the job (a UUID).
    #[schema(format = Uuid)]
    apns_id: Option<String>,
    /// FCM: send to this topic (`news` or `/topics/news`) instead of tokens.
    #[schema(value_type = Option<crate::openapi::FcmTopic>)]
    topic: Option<String>,
    /// Web Push: the message, `TTL`, `Urgency` and `Topic` (see `targets.webpush`).
    webpush: Option<WebPushOptions>,
    /// FCM: send to the devices subscribed to this condition instead of tokens.
    #[schema(value_type = Option<crate::openapi::FcmCondition>)]
    condition: Option<String>,
    /// Refuse the whole request when one token is malformed (default: accept the others and
    /// report the malformed ones).
    #[serde(default)]
    strict: bool,
}

/// `targets`: one token array per platform; an unknown platform is a 422 naming it.
#[derive(Default)]
struct Targets {
    apns: Tokens<ApnsRule>,
    fcm: Tokens<FcmRule>,
    webpush: Subscriptions,
}

impl<'de> Deserialize<'de> for Targets {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(TargetsVisitor)
    }
}

struct TargetsVisitor;

impl<'de> Visitor<'de> for TargetsVisitor {
    type Value = Targets;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with `apns`, `fcm` and/or `webpush` arrays")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Targets, A::Error> {
        let mut targets = Targets::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "apns" => targets.apns = map.next_value()?,
                "fcm" => targets.fcm = map.next_value()?,
                "webpush" => targets.webpush = map.next_value()?,
                _ => map.next_value_seed(UnknownPlatform(key))?,
            }
        }
        Ok(targets)
    }
}

/// Raised as the value of an unknown `targets` key, so that the error's path names the key.
struct UnknownPlatform(String);

impl<'de> DeserializeSeed<'de> for UnknownPlatform {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, _: D) -> Result<(), D::Error> {
        Err(unprocessable::<D::Error>(
            Code::UnknownPlatform,
            format_args!(
                "unknown platform {:?}; targets takes `apns`, `fcm` and `webpush`",
                self.0
            ),
        ))
    }
}

/// The answer to an accepted submission.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// The job's id.
    #[schema(format = Uuid)]
    pub id: String,
    /// How many notifications were accepted.
    pub accepted: u64,
    /// How many tokens were refused as malformed (not sent, not counted in `accepted`).
    pub rejected: u64,
    /// The refused tokens by field and index, with the reason.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rejected_tokens: Vec<RejectedView>,
}

/// A token refused before it was sent.
#[derive(Debug, Serialize, ToSchema)]
pub struct RejectedView {
    #[schema(value_type = crate::openapi::PlatformName)]
    platform: &'static str,
    /// Where it was in the request: `targets.apns[3]`.
    field: String,
    reason: String,
}

impl From<&RejectedToken> for RejectedView {
    fn from(token: &RejectedToken) -> Self {
        RejectedView {
            platform: token.platform.as_str(),
            field: token.field.clone(),
            reason: token.reason.clone(),
        }
    }
}

/// Adds one list's rejections to `into`, named `field[index]`.
pub(crate) fn reject_all(
    into: &mut Rejected,
    platform: Platform,
    field: &str,
    rejections: &[Rejection],
) {
    for (index, reason) in rejections {
        into.push(RejectedToken {
            platform,
            field: format!("{field}[{index}]"),
            reason: reason.clone(),
        });
    }
}

/// A rendered, validated job ready for the controller.
pub(crate) struct Prepared {
    pub job: SubmitJob,
    pub apns: usize,
    pub fcm: usize,
    pub webpush: usize,
}

/// A job's tokens, by platform.
#[derive(Default)]
pub(crate) struct JobTokens {
    pub apns: TokenList,
    pub fcm: TokenList,
    pub webpush: TokenList,
}

/// Checks one notification's tokens against the app's platforms, renders it, and builds the
/// job; `names` says what the API calls each field, for errors.
pub(crate) fn build_job(
    state: &FrontState,
    app: usize,
    spec: &Spec,
    tokens: JobTokens,
    names: &Names,
    idempotency_key: Option<IdempotencyKey>,
) -> Result<Prepared, ApiError> {
    let JobTokens {
        apns: apns_tokens,
        fcm: fcm_tokens,
        webpush: webpush_tokens,
    } = tokens;
    let entry = &state.inner.apps[app];
    let (apns, fcm, webpush) = (apns_tokens.len(), fcm_tokens.len(), webpush_tokens.len());
    if apns == 0 && fcm == 0 && webpush == 0 {
        return Err(
            ApiError::new(Code::NoTokens, "the request has no token").field(
                names
                    .apns_target
                    .rsplit_once('.')
                    .map_or(names.apns_target, |(parent, _)| parent),
            ),
        );
    }
    let wanted = Wanted {
        apns: apns > 0,
        fcm: fcm > 0,
        webpush: webpush > 0,
    };
    let renders = render_job(state, app, spec, wanted, names)?;
    Ok(Prepared {
        job: SubmitJob {
            app: entry.name.clone(),
            apns: renders.apns,
            fcm: renders.fcm,
            apns_tokens,
            fcm_tokens,
            webpush: renders.webpush,
            webpush_tokens,
            idempotency_key,
            rejected: Rejected::default(),
        },
        apns,
        fcm,
        webpush,
    })
}

/// The platforms a notification is rendered for.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Wanted {
    pub apns: bool,
    pub fcm: bool,
    pub webpush: bool,
}

/// A notification rendered for the platforms asked for.
pub(crate) struct Renders {
    pub apns: Option<ApnsRender>,
    pub fcm: Option<FcmRender>,
    pub webpush: Option<WebPushRender>,
}

/// Checks one notification against the app's platforms and renders it for each platform
/// asked for.
pub(crate) fn render_job(
    state: &FrontState,
    app: usize,
    spec: &Spec,
    wanted: Wanted,
    names: &Names,
) -> Result<Renders, ApiError> {
    let entry = &state.inner.apps[app];
    render::check_common(spec, names)?;
    let apns_render = if wanted.apns {
        let Some(topic) = &entry.apns_topic else {
            return Err(ApiError::new(
                Code::PlatformNotConfigured,
                format!(
                    "app {:?} has no [apps.apns] section, so it cannot send to apns tokens",
                    entry.name
                ),
            )
            .field(names.apns_target));
        };
        Some(render::render_apns(spec, topic, names)?)
    } else {
        None
    };
    let fcm_render = if wanted.fcm {
        if !entry.fcm {
            return Err(ApiError::new(
                Code::PlatformNotConfigured,
                format!(
                    "app {:?} has no [apps.fcm] section, so it cannot send to fcm tokens",
                    entry.name
                ),
            )
            .field(names.fcm_target));
        }
        Some(render::render_fcm(spec, names)?)
    } else {
        None
    };
    let webpush_render = if wanted.webpush {
        if !entry.webpush {
            return Err(ApiError::new(
                Code::PlatformNotConfigured,
                format!(
                    "app {:?} has no [apps.webpush] section, so it cannot send to web push \
                     subscriptions",
                    entry.name
                ),
            )
            .field("targets.webpush"));
        }
        Some(webpush::render(spec)?)
    } else {
        None
    };
    Ok(Renders {
        apns: apns_render,
        fcm: fcm_render,
        webpush: webpush_render,
    })
}

/// The checks that need the whole request: both spellings of a target, the token limit.
fn native_job(
    state: &FrontState,
    app: usize,
    body: BytesMut,
    idempotency_key: Option<String>,
) -> Result<Prepared, ApiError> {
    // The fingerprint is of the body as sent, before a large body's tokens move within it.
    let idempotency_key = idempotency_key
        .map(|key| IdempotencyKey::new(key, fingerprint(&state.inner.apps[app].name, &body)));
    let request = tokens::parse_body(body, |request: &mut NativeRequest| {
        vec![
            &mut request.targets.apns,
            &mut request.apns_tokens,
            &mut request.targets.fcm,
            &mut request.fcm_tokens,
        ]
    })?;
    let NativeRequest {
        targets,
        apns_tokens,
        fcm_tokens,
        ..
    } = request;
    let (apns_named, fcm_named, webpush_named) = (
        targets.apns.given() || apns_tokens.given(),
        targets.fcm.given() || fcm_tokens.given(),
        targets.webpush.given(),
    );
    // One spelling per platform, whatever its tokens: with both, which list was meant?
    for (nested, flat, nested_name, flat_name) in [
        (
            &targets.apns.given(),
            &apns_tokens.given(),
            "targets.apns",
            "apns_tokens",
        ),
        (
            &targets.fcm.given(),
            &fcm_tokens.given(),
            "targets.fcm",
            "fcm_tokens",
        ),
    ] {
        if *nested && *flat {
            return Err(ApiError::new(
                Code::InvalidArgument,
                format!("give tokens either in {nested_name} or in {flat_name}, not both"),
            )
            .field(flat_name));
        }
    }
    let pick = |nested: TokenList, flat: TokenList| if nested.is_empty() { flat } else { nested };
    // Malformed tokens: reported per token, or the whole request refused in strict mode.
    let mut rejected = Rejected::default();
    for (platform, field, rejections) in [
        (Platform::Apns, "targets.apns", &targets.apns.rejected),
        (Platform::Apns, "apns_tokens", &apns_tokens.rejected),
        (Platform::Fcm, "targets.fcm", &targets.fcm.rejected),
        (Platform::Fcm, "fcm_tokens", &fcm_tokens.rejected),
        (
            Platform::WebPush,
            "targets.webpush",
            &targets.webpush.rejected,
        ),
    ] {
        if let (true, Some(first)) = (request.strict, rejections.first()) {
            let mut error = refusal(field, first);
            error.message = format!(
                "{} (strict is on: one malformed token refuses the request)",
                error.message
            );
            return Err(error);
        }
        reject_all(&mut rejected, platform, field, rejections);
    }
    let fcm_rejected = targets.fcm.rejected.len() + fcm_tokens.rejected.len();
    let apns = pick(targets.apns.list, apns_tokens.list);
    let mut fcm = pick(targets.fcm.list, fcm_tokens.list);
    let webpush = targets.webpush.list;
    let fcm_target = fcm_destination(request.topic, request.condition, "topic", "condition")?;
    let fcm_target = match fcm_target {
        Some(_) if !fcm.is_empty() || fcm_rejected > 0 => {
            return Err(ApiError::new(
                Code::InvalidArgument,
                "give fcm tokens or a topic or a condition, not several",
            )
            .field("targets.fcm"))
        }
        Some((target, value)) => {
            fcm = std::iter::once(value.as_str()).collect();
            target
        }
        None => volley_fcm::Target::Token,
    };
    if apns.is_empty() && fcm.is_empty() && webpush.is_empty() {
        if let Some(first) = rejected.tokens.first() {
            return Err(ApiError::new(
                Code::InvalidToken,
                format!("{} (every token of the request is malformed)", first.reason),
            )
            .field(first.field.clone()));
        }
    }
    let max = state.inner.config.front.max_tokens_per_request;
    let total = apns.len() + fcm.len() + webpush.len();
    if total > max {
        return Err(ApiError::new(
            Code::TooManyTokens,
            format!(
                "the request has {total} tokens, above the limit of {max} (front.max_tokens_per_request)"
            ),
        )
        .field("targets"));
    }
    let spec = Spec {
        title: request.title,
        subtitle: request.subtitle,
        body: request.body,
        badge: request.badge,
        sound: request.sound.map(Value::String),
        data: request.data,
        priority: request.priority,
        collapse_id: request.collapse_id,
        expiration: request.expiration,
        ttl: request.ttl,
        push_type: request.push_type,
        content_available: request.content_available,
        mutable_content: request.mutable_content,
        category: request.category,
        thread_id: request.thread_id,
        image: request.image,
        apns_raw: request.apns,
        fcm_raw: request.fcm,
        fcm_target,
        apns_topic: request.apns_topic,
        apns_id: request.apns_id,
        webpush_raw: request.webpush,
        ..Spec::default()
    };
    // A platform the request names is checked even when every token of it was malformed: a
    // field is refused or not whatever the tokens.
    let unchecked = Wanted {
        apns: apns_named && apns.is_empty(),
        fcm: fcm_named && fcm.is_empty(),
        webpush: webpush_named && webpush.is_empty(),
    };
    if unchecked.apns || unchecked.fcm || unchecked.webpush {
        render_job(state, app, &spec, unchecked, &NAMES)?;
    }
    let tokens = JobTokens { apns, fcm, webpush };
    let mut prepared = build_job(state, app, &spec, tokens, &NAMES, idempotency_key)?;
    prepared.job.rejected = rejected;
    Ok(prepared)
}

/// An FCM topic or condition given instead of tokens, checked: `/topics/` is taken off a
/// topic's name (FCM's HTTP v1 API wants it bare).
pub(crate) fn fcm_destination(
    topic: Option<String>,
    condition: Option<String>,
    topic_field: &str,
    condition_field: &str,
) -> Result<Option<(volley_fcm::Target, String)>, ApiError> {
    let (target, value, field) = match (topic, condition) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                Code::InvalidArgument,
                "give an fcm topic or a condition, not both",
            )
            .field(condition_field.to_owned()))
        }
        (Some(topic), None) => (
            volley_fcm::Target::Topic,
            volley_fcm::topic_name(&topic).to_owned(),
            topic_field,
        ),
        (None, Some(condition)) => (volley_fcm::Target::Condition, condition, condition_field),
    };
    target.validate(&value).map_err(|error| {
        let rule = match target {
            volley_fcm::Target::Condition => {
                "a condition is 'topic' in topics terms joined by && and ||, with ! and parentheses, \
                 naming at most 5 topics"
            }
            _ => "a topic name is 1 to 900 of [a-zA-Z0-9-_.~%], optionally after /topics/",
        };
        ApiError::new(Code::InvalidArgument, format!("{error}; {rule}")).field(field.to_owned())
    })?;
    Ok(Some((target, value)))
}

/// The `Idempotency-Key` header, when present: given once, 1 to 255 visible ASCII characters
/// (0x21 to 0x7E), taken verbatim.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let key = value.as_bytes();
    let visible = |byte: &u8| (0x21..=0x7e).contains(byte);
    if values.next().is_some()
        || key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY
        || !key.iter().all(visible)
    {
        return Err(ApiError::new(
            Code::InvalidArgument,
            format!(
                "Idempotency-Key must be given once, as 1 to {MAX_IDEMPOTENCY_KEY} visible ascii \
                 characters (0x21 to 0x7e: no spaces)"
            ),
        )
        .field("Idempotency-Key"));
    }
    Ok(Some(String::from_utf8_lossy(key).into_owned()))
}

/// What a native submission asks for, as one digest: SHA-256 over the endpoint, the app and
/// the body bytes as sent. A retry resends the same bytes; a rendering would not do, since
/// it holds times computed at each request (`apns-expiration` from `ttl`, FCM's `ttl` from
/// `expiration`). One pass over the body, nothing allocated per token.
fn fingerprint(app: &str, body: &[u8]) -> Fingerprint {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    digest.update(b"POST /v1/apps/{app}/notifications\0");
    digest.update(app.as_bytes());
    digest.update(b"\0");
    digest.update(body);
    let mut bytes = [0; 32];
    bytes.copy_from_slice(digest.finish().as_ref());
    Fingerprint(bytes)
}

/// Counts and logs a job the controller accepted.
pub(crate) fn record_accepted(state: &FrontState, app: usize, job: &str, counts: [usize; 3]) {
    let [apns, fcm, webpush] = counts;
    for (platform, count) in Platform::ALL.into_iter().zip(counts) {
        state.inner.metrics.accepted(app, platform, count);
    }
    let app = &state.inner.apps[app].name;
    if apns + fcm + webpush >= volley_contracts::LOG_JOBS_FROM {
        tracing::info!(%app, job, apns, fcm, webpush, "job accepted");
    } else {
        tracing::debug!(%app, job, apns, fcm, webpush, "job accepted");
    }
}

/// `POST /v1/apps/{app}/notifications`: validates, renders once and queues a job. A repeat
/// of an earlier request with its `Idempotency-Key` is answered as the first was, with
/// `Idempotent-Replayed: true`.
#[utoipa::path(
    post,
    path = "/v1/apps/{app}/notifications",
    operation_id = "submit",
    tag = "notifications",
    params(
        ("app" = String, Path, description = "The app to send for; the API key must be one of its keys"),
        ("Idempotency-Key" = Option<crate::openapi::IdempotencyKey>, Header,
            description = "Repeating a submission with the same key answers with the first job"),
    ),
    request_body(content = NativeRequest, content_type = "application/json"),
    responses((status = 202, description = "The job is queued: every accepted notification \
        will reach a final outcome", body = Accepted,
        headers(("Idempotent-Replayed" = String,
            description = "`true` when this answers a repeat of an earlier request with its \
                `Idempotency-Key`")))),
    security(("api_key" = []))
)]
pub async fn submit(
    State(state): State<FrontState>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, HeaderMap, Json<Accepted>), ApiError> {
    let key_app = state.authenticate(&headers)?;
    if state.inner.apps[key_app].name != app {
        return Err(ApiError::new(
            Code::Forbidden,
            format!("this api key does not grant access to app {app:?}"),
        ));
    }
    let idempotency_key = idempotency_key(&headers)?;
    let bytes = state.read_body(body).await?;
    let prepared = {
        let state = state.clone();
        // Boxed: the job is large, and the handler's future holds what `cpu` returns.
        cpu(bytes.len(), move || {
            native_job(&state, key_app, bytes, idempotency_key).map(Box::new)
        })
        .await??
    };
    let counts = [prepared.apns, prepared.fcm, prepared.webpush];
    let rejected = prepared.job.rejected.clone();
    let accepted = state
        .submit(prepared.job)
        .await
        .map_err(|error| match error.code {
            Code::IdempotencyKeyReused | Code::IdempotencyKeyInUse => {
                error.field("Idempotency-Key")
            }
            _ => error,
        })?;
    let id = accepted.id.to_string();
    let mut answer_headers = HeaderMap::new();
    if accepted.replayed {
        // The same bytes as the first time: the same `rejected` list, and the job's count.
        answer_headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
        tracing::debug!(app = %app, job = %id, "repeated request answered with its job");
    } else {
        record_accepted(&state, key_app, &id, counts);
    }
    Ok((
        StatusCode::ACCEPTED,
        answer_headers,
        Json(Accepted {
            id,
            accepted: accepted.accepted,
            rejected: rejected.count,
            rejected_tokens: rejected.tokens.iter().map(RejectedView::from).collect(),
        }),
    ))
}

/// A job's status as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    #[schema(format = Uuid)]
    id: String,
    app: String,
    /// `queued`, `running`, `done` (every notification has a final outcome), `cancelling`
    /// (chunks already out with agents finishing) or `cancelled`.
    #[schema(value_type = crate::openapi::JobState)]
    state: &'static str,
    /// Notifications in the job.
    accepted: u64,
    /// Accepted by the provider.
    delivered: u64,
    /// Failed for good after retries, other than invalid tokens; grouped in `failures`.
    failed: u64,
    /// Tokens the provider called invalid; listed in `invalid_tokens`.
    invalid: u64,
    /// Not sent because the job was cancelled.
    cancelled: u64,
    /// Not final yet.
    pending: u64,
    /// Notifications resent after an agent or connection was lost at a moment when the
    /// provider may already have had them.
    possible_duplicates: u64,
    /// The first `invalid_limit` invalid tokens.
    invalid_tokens: Vec<InvalidTokenView>,
    /// Failures grouped by platform, class and reason.
    failures: Vec<FailureView>,
    /// When the job was accepted, ms since the epoch.
    created_ms: u64,
    /// When its last notification became final, ms since the epoch.
    finished_ms: Option<u64>,
    /// Why the job is not moving, while that lasts (e.g. no agent serves its app).
    #[serde(skip_serializing_if = "Option::is_none")]
    waiting: Option<String>,
    /// Tokens of the request refused as malformed, not counted in `accepted`.
    rejected: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    rejected_tokens: Vec<RejectedView>,
}

/// A token the provider called invalid.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvalidTokenView {
    #[schema(value_type = crate::openapi::PlatformName)]
    platform: &'static str,
    token: String,
    /// The provider's reason, verbatim (`Unregistered`, `BadDeviceToken`, `UNREGISTERED`...).
    reason: String,
    /// APNs 410: when the token stopped being valid, ms since the epoch.
    timestamp: Option<u64>,
}

impl From<InvalidToken> for InvalidTokenView {
    fn from(t: InvalidToken) -> Self {
        InvalidTokenView {
            platform: t.platform.as_str(),
            token: t.token,
            reason: t.reason,
            timestamp: t.timestamp_ms,
        }
    }
}

/// Notifications that failed for one platform, class and reason.
#[derive(Debug, Serialize, ToSchema)]
pub struct FailureView {
    #[schema(value_type = crate::openapi::PlatformName)]
    platform: &'static str,
    /// `transient` (retries exhausted), `credential` (the app's key or certificate is
    /// refused), `bad_request` or `internal`.
    class: String,
    /// The provider's reason, verbatim.
    reason: String,
    count: u64,
}

impl From<JobStatus> for JobView {
    fn from(status: JobStatus) -> Self {
        JobView {
            id: status.id.to_string(),
            app: status.app,
            state: status.state.as_str(),
            accepted: status.accepted,
            delivered: status.delivered,
            failed: status.failed,
            invalid: status.invalid,
            cancelled: status.cancelled,
            pending: status.pending,
            possible_duplicates: status.possible_duplicates,
            invalid_tokens: status
                .invalid_tokens
                .into_iter()
                .map(InvalidTokenView::from)
                .collect(),
            failures: status
                .failures
                .into_iter()
                .map(|f: FailureCount| FailureView {
                    platform: f.platform.as_str(),
                    class: f.class,
                    reason: f.reason,
                    count: f.count,
                })
                .collect(),
            created_ms: status.created_ms,
            finished_ms: status.finished_ms,
            waiting: status.waiting,
            rejected: status.rejected.count,
            rejected_tokens: status
                .rejected
                .tokens
                .iter()
                .map(RejectedView::from)
                .collect(),
        }
    }
}

fn parse_job_id(id: &str) -> Result<JobId, ApiError> {
    id.parse::<JobId>()
        .map_err(|_| ApiError::new(Code::BadRequest, "job id is not a uuid").field("id"))
}

/// The value of `name` in a raw query string.
fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

fn invalid_limit(query: Option<&str>) -> Result<u32, ApiError> {
    let value = query_value(query, "invalid_limit");
    match value {
        None => Ok(DEFAULT_INVALID_LIMIT),
        Some(text) => text.parse::<u32>().map_err(|_| {
            ApiError::new(
                Code::BadRequest,
                "invalid_limit must be a non-negative integer",
            )
            .field("invalid_limit")
        }),
    }
}

/// A job's status, or 404 when it does not exist or belongs to another app.
async fn owned_status(
    state: &FrontState,
    key_app: usize,
    id: JobId,
    limit: u32,
) -> Result<JobStatus, ApiError> {
    let status = match state
        .controller()
        .status(FrontState::query_context(), id, limit)
        .await
    {
        Ok(Ok(status)) => status,
        Ok(Err(wire)) => return Err(state.wire_failed(wire)),
        Err(rpc) => return Err(state.rpc_failed(&rpc)),
    };
    // Another app's job answers exactly like a missing one, so ids reveal nothing.
    if status.app != state.inner.apps[key_app].name {
        return Err(ApiError::new(Code::NotFound, "no job with that id"));
    }
    Ok(status)
}

/// `GET /v1/jobs/{id}?invalid_limit=N`: the job's progress.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    operation_id = "job_status",
    tag = "jobs",
    params(
        ("id" = uuid::Uuid, Path, description = "The job's id"),
        ("invalid_limit" = Option<u32>, Query,
            description = "Most invalid tokens listed (default 1000); the counts are always complete"),
    ),
    responses((status = 200, description = "The job's progress", body = JobView)),
    security(("api_key" = []))
)]
pub async fn job_status(
    State(state): State<FrontState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<JobView>, ApiError> {
    let key_app = state.authenticate(&headers)?;
    let id = parse_job_id(&id)?;
    let limit = invalid_limit(query.as_deref())?;
    let status = owned_status(&state, key_app, id, limit).await?;
    Ok(Json(status.into()))
}

/// One page of a job's invalid tokens.
#[derive(Debug, Serialize, ToSchema)]
pub struct InvalidTokensView {
    #[schema(format = Uuid)]
    job: String,
    /// Invalid tokens so far; final once the job is `done`.
    total: u64,
    tokens: Vec<InvalidTokenView>,
    /// Pass as `cursor` for the next page; `null` at the end of the list so far.
    next_cursor: Option<String>,
}

/// `page_size` (1 to 10000) and `cursor` (an offset given by a previous page).
fn page_params(query: Option<&str>) -> Result<(u32, u64), ApiError> {
    let page_size = match query_value(query, "page_size") {
        None => DEFAULT_PAGE_SIZE,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
            .ok_or_else(|| {
                ApiError::new(
                    Code::BadRequest,
                    format!("page_size must be an integer from 1 to {MAX_PAGE_SIZE}"),
                )
                .field("page_size")
            })?,
    };
    // A cursor is what `next_cursor` gave: digits (19 at most, so any fits a u64).
    let cursor = match query_value(query, "cursor") {
        None | Some("") => 0,
        Some(text) => Some(text)
            .filter(|text| text.len() <= 19 && text.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|text| text.parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::new(
                    Code::BadRequest,
                    "cursor must be a next_cursor value from a previous page",
                )
                .field("cursor")
            })?,
    };
    Ok((page_size, cursor))
}

/// `GET /v1/jobs/{id}/invalid-tokens?page_size=N&cursor=C`: the job's invalid tokens, paged
/// in the order their reports arrived (new ones are appended, so pages stay stable while the
/// job runs).
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}/invalid-tokens",
    operation_id = "invalid_tokens",
    tag = "jobs",
    params(
        ("id" = uuid::Uuid, Path, description = "The job's id"),
        ("page_size" = Option<u32>, Query, minimum = 1, maximum = 10000,
            description = "Tokens per page (default 1000)"),
        ("cursor" = Option<String>, Query, pattern = "^[0-9]{0,19}$",
            description = "The `next_cursor` of the previous page; empty or absent: the start"),
    ),
    responses((status = 200, description = "One page of the job's invalid tokens", body = InvalidTokensView)),
    security(("api_key" = []))
)]
pub async fn invalid_tokens(
    State(state): State<FrontState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Json<InvalidTokensView>, ApiError> {
    let key_app = state.authenticate(&headers)?;
    let id = parse_job_id(&id)?;
    let (page_size, cursor) = page_params(query.as_deref())?;
    let page = match state
        .controller()
        .invalid_tokens(FrontState::query_context(), id, cursor, page_size)
        .await
    {
        Ok(Ok(page)) => page,
        Ok(Err(wire)) => return Err(state.wire_failed(wire)),
        Err(rpc) => return Err(state.rpc_failed(&rpc)),
    };
    // Another app's job answers exactly like a missing one, so ids reveal nothing.
    if page.app != state.inner.apps[key_app].name {
        return Err(ApiError::new(Code::NotFound, "no job with that id"));
    }
    Ok(Json(InvalidTokensView {
        job: id.to_string(),
        total: page.total,
        tokens: page
            .tokens
            .into_iter()
            .map(InvalidTokenView::from)
            .collect(),
        next_cursor: page.next.map(|next| next.to_string()),
    }))
}

/// `DELETE /v1/jobs/{id}`: cancels the job; answers its status, `cancelled` once every
/// notification is final, `cancelling` while chunks already out with agents finish.
#[utoipa::path(
    delete,
    path = "/v1/jobs/{id}",
    operation_id = "job_cancel",
    tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The job's id")),
    responses((status = 200, description = "The job's status after the cancel (`state: cancelled`); \
        what was sent stays sent", body = JobView)),
    security(("api_key" = []))
)]
pub async fn job_cancel(
    State(state): State<FrontState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<JobView>, ApiError> {
    let key_app = state.authenticate(&headers)?;
    let id = parse_job_id(&id)?;
    owned_status(&state, key_app, id, 0).await?;
    let status = match state
        .controller()
        .cancel(FrontState::query_context(), id)
        .await
    {
        Ok(Ok(status)) => status,
        Ok(Err(wire)) => return Err(state.wire_failed(wire)),
        Err(rpc) => return Err(state.rpc_failed(&rpc)),
    };
    tracing::info!(app = %status.app, job = %id, state = status.state.as_str(), "job cancelled");
    Ok(Json(status.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Measures parsing, validation and rendering of a million-token body:
    /// `cargo test --release -p volley-front --lib -- --ignored --nocapture measure`.
    /// A front's state for app `shop`, its controller link going nowhere; call inside a
    /// runtime.
    fn shop_state() -> FrontState {
        let (client_side, _server_side) = tarpc::transport::channel::unbounded();
        let controller =
            volley_contracts::ControllerClient::new(Default::default(), client_side).spawn();
        let config = volley_config::Config::from_toml(
            r#"
            [[apps]]
            name = "shop"
            [apps.apns]
            topic = "com.example.shop"
            key_file = "k.p8"
            "#,
        )
        .unwrap();
        FrontState::new(config, controller, volley_contracts::Links::Insecure).unwrap()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn an_idempotency_key_is_1_to_255_visible_ascii_characters_given_once() {
        let headers = |values: &[&[u8]]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(
                    "idempotency-key",
                    HeaderValue::from_bytes(value).expect("a header value"),
                );
            }
            headers
        };
        let longest = [b'k'; 255];
        for good in [&b"order-42"[..], b"!\"#~", &longest] {
            let key = idempotency_key(&headers(&[good])).unwrap();
            assert_eq!(key.as_deref().map(str::as_bytes), Some(good));
        }
        assert_eq!(idempotency_key(&HeaderMap::new()).unwrap(), None);
        let too_long = [b'k'; 256];
        let bad: [&[&[u8]]; 6] = [
            &[b"order 42"],
            &[b"order\t42"],
            &[b""],
            &[&too_long],
            &["caf\u{e9}".as_bytes()],
            &[b"order-1", b"order-2"],
        ];
        for values in bad {
            let error = idempotency_key(&headers(values)).unwrap_err();
            assert_eq!(error.code, Code::InvalidArgument, "{values:?}");
            assert_eq!(error.field.as_deref(), Some("Idempotency-Key"));
        }
    }

    #[test]
    fn a_fingerprint_is_the_same_for_the_same_app_and_bytes_only() {
        let body = br#"{"title":"hi","targets":{"apns":["ab"]}}"#;
        assert_eq!(fingerprint("shop", body), fingerprint("shop", body));
        assert_ne!(fingerprint("shop", body), fingerprint("news", body));
        assert_ne!(
            fingerprint("shop", body),
            fingerprint("shop", br#"{"title":"ho","targets":{"apns":["ab"]}}"#)
        );
    }

    /// axum boxes each request's handler future and the runtime moves it: with the submit
    /// calls inline it was 6.9 KB, and `memmove` was 17% of the front in an ingest profile
    /// (docs/performance.md, change 8). The submit calls are boxed; this keeps it so.
    #[test]
    fn the_notifications_handler_future_stays_small() {
        let runtime = runtime();
        let _guard = runtime.enter();
        let future = submit(
            State(shop_state()),
            Path("shop".into()),
            HeaderMap::new(),
            Body::empty(),
        );
        let size = std::mem::size_of_val(&future);
        assert!(size <= 2048, "the handler's future is {size} bytes");
    }

    #[test]
    fn a_requests_tokens_are_the_bodys_buffer_not_a_copy() {
        let runtime = runtime();
        let _guard = runtime.enter();
        let state = shop_state();
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let padding = " ".repeat(tokens::IN_PLACE_BYTES);
        let sent = format!(r#"{{"title":"hi","targets":{{"apns":["{a}","x","{b}"]}}}}{padding}"#);
        let body = BytesMut::from(sent.as_str());
        let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
        let prepared = native_job(&state, 0, body, Some("key-1".into())).unwrap();
        let tokens = &prepared.job.apns_tokens;
        assert_eq!(tokens.iter().collect::<Vec<_>>(), [a.as_str(), b.as_str()]);
        assert!(range.contains(&(tokens.raw_parts().0.as_ptr() as usize)));
        assert_eq!(prepared.job.rejected.count, 1);
        // The fingerprint is of the body as sent, before its tokens moved.
        let key = prepared.job.idempotency_key.unwrap();
        assert_eq!(
            key,
            IdempotencyKey::new("key-1", fingerprint("shop", sent.as_bytes()))
        );
    }

    #[test]
    #[ignore = "a measurement, not a check"]
    fn measure_a_million_token_request() {
        let runtime = runtime();
        let _guard = runtime.enter();
        let state = shop_state();
        const N: usize = 1_000_000;
        let mut body = String::with_capacity(N * 67 + 100);
        body.push_str(r#"{"title":"big","body":"hello","targets":{"apns":["#);
        for i in 0..N {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&format!("\"{i:064x}\""));
        }
        body.push_str("]}}");
        for _ in 0..3 {
            let start = std::time::Instant::now();
            let prepared = native_job(&state, 0, body.as_bytes().into(), None).unwrap();
            let elapsed = start.elapsed();
            assert_eq!(prepared.apns, N);
            println!(
                "{} MB body, {N} tokens: {:.1} ms ({:.0} ns per token)",
                body.len() / 1_000_000,
                elapsed.as_secs_f64() * 1e3,
                elapsed.as_secs_f64() * 1e9 / N as f64
            );
            let start = std::time::Instant::now();
            let plain: NativeRequest = serde_json::from_slice(body.as_bytes()).unwrap();
            println!(
                "plain serde_json: {:.1} ms",
                start.elapsed().as_secs_f64() * 1e3
            );
            assert_eq!(plain.targets.apns.list.len(), N);
            let start = std::time::Instant::now();
            let value: serde_json::Value = serde_json::from_slice(body.as_bytes()).unwrap();
            println!(
                "serde_json::Value: {:.1} ms",
                start.elapsed().as_secs_f64() * 1e3
            );
            drop(value);
        }
    }
}
