//! Endpoints shaped like gorush (`POST /api/push`) and gaurun (`POST /push`), so that their
//! users can point existing clients at Volley.
//!
//! Both send to `front.default_app`, and require that app's API key unless
//! `front.compat_require_api_key` is off. Unlike gorush and gaurun, the answer comes after the
//! jobs are queued. A malformed token is left out and reported in the answer (and in its
//! job), as gorush and gaurun report a failed token; a bad entry (an unknown field, a value
//! of the wrong type) refuses the whole request with a 422 naming the field before anything
//! is queued. Each entry of `notifications` becomes one job; the answers add `job_ids` for
//! `GET /v1/jobs/{id}`. docs/api.md has the field-by-field table.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::ToSchema;
use volley_contracts::{Platform, Rejected, RejectedToken, TokenList};
use volley_fcm::FcmMessage;

use crate::error::{ApiError, Code};
use crate::native::{
    build_job, fcm_destination, record_accepted, reject_all, render_job, JobTokens, Prepared,
    Wanted,
};
use crate::openapi::{not_background, not_high_priority};
use crate::render::{Names, PriorityInput, Spec};
use crate::tokens::{self, validate, InPlace, NoRule, Tokens};
use crate::{cpu, FrontState};

/// gorush and gaurun number platforms: 1 is iOS, 2 is Android.
const IOS: i64 = 1;
const ANDROID: i64 = 2;

/// The app the compatible endpoints serve, after checking the key if one is required.
fn compat_app(state: &FrontState, headers: &HeaderMap) -> Result<usize, ApiError> {
    let Some(app) = state.inner.default_app else {
        return Err(ApiError::new(
            Code::NotFound,
            "the compatible endpoints are off: set front.default_app to enable them",
        ));
    };
    if state.inner.config.front.compat_require_api_key {
        let key_app = state.authenticate(headers)?;
        if key_app != app {
            return Err(ApiError::new(
                Code::Forbidden,
                "this api key does not grant access to the default app",
            ));
        }
    }
    Ok(app)
}

/// The platforms gorush and gaurun know: 1 and 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Ios,
    Android,
}

impl Side {
    fn platform(self) -> Platform {
        match self {
            Side::Ios => Platform::Apns,
            Side::Android => Platform::Fcm,
        }
    }
}

fn platform_of(platform: i64, index: usize) -> Result<Side, ApiError> {
    match platform {
        IOS => Ok(Side::Ios),
        ANDROID => Ok(Side::Android),
        other => Err(ApiError::new(
            Code::UnknownPlatform,
            format!("unknown platform {other}; use 1 (ios, apns) or 2 (android, fcm)"),
        )
        .field(format!("notifications[{index}].platform"))),
    }
}

/// Names relative to one entry; errors get `notifications[i].` in front.
fn names(
    tokens: &'static str,
    collapse_id: &'static str,
    ttl: &'static str,
    expiration: &'static str,
) -> Names {
    Names {
        priority: "priority",
        collapse_id,
        expiration,
        ttl,
        push_type: "push_type",
        data: "data",
        apns_raw: "apns",
        fcm_raw: "android",
        apns_target: tokens,
        fcm_target: tokens,
        apns_topic: "topic",
        apns_id: "apns_id",
    }
}

/// One entry of `notifications`, translated.
struct Entry {
    spec: Spec,
    tokens: TokenList,
    platform: Side,
    names: Names,
    /// FCM: a topic or condition to send to instead of tokens.
    destination: Option<(volley_fcm::Target, String)>,
}

/// What one entry of `notifications` became: its job, unless every token was malformed, and
/// the tokens refused.
pub(crate) struct Built {
    job: Option<Prepared>,
    rejected: Rejected,
}

/// Validates every entry and builds its job; nothing is submitted unless all are good.
fn build_jobs<N>(
    state: &FrontState,
    app: usize,
    entries: Vec<N>,
    tokens_field: &str,
    to_spec: impl Fn(N, usize) -> Result<Entry, ApiError>,
) -> Result<Vec<Built>, ApiError> {
    if entries.is_empty() {
        return Err(
            ApiError::new(Code::NoTokens, "the request has no notification").field("notifications"),
        );
    }
    let max = state.inner.config.front.max_tokens_per_request;
    let mut total = 0usize;
    let mut jobs = Vec::with_capacity(entries.len());
    for (index, entry) in entries.into_iter().enumerate() {
        let prefix = format!("notifications[{index}]");
        let Entry {
            mut spec,
            tokens,
            platform,
            names,
            destination,
        } = to_spec(entry, index)?;
        let field = format!("{prefix}.{tokens_field}");
        let (mut tokens, rejections) = validate(tokens, platform.platform());
        let mut rejected = Rejected::default();
        reject_all(&mut rejected, platform.platform(), &field, &rejections);
        if let Some((target, value)) = destination {
            if !tokens.is_empty() || !rejected.is_empty() {
                return Err(ApiError::new(
                    Code::InvalidArgument,
                    "give tokens or an fcm topic or condition, not both",
                )
                .field(field));
            }
            tokens = std::iter::once(value.as_str()).collect();
            spec.fcm_target = target;
        }
        if tokens.is_empty() && !rejected.is_empty() {
            // Nothing to send, but its fields are checked like any entry's: a bad field
            // refuses the request whatever its tokens.
            let wanted = Wanted {
                apns: platform == Side::Ios,
                fcm: platform == Side::Android,
                webpush: false,
            };
            render_job(state, app, &spec, wanted, &names).map_err(|e| e.within(&prefix))?;
            jobs.push(Built {
                job: None,
                rejected,
            });
            continue;
        }
        total += tokens.len();
        if total > max {
            return Err(ApiError::new(
                Code::TooManyTokens,
                format!("the request has more than {max} tokens (front.max_tokens_per_request)"),
            )
            .field(format!("{prefix}.{tokens_field}")));
        }
        let tokens = match platform {
            Side::Ios => JobTokens {
                apns: tokens,
                ..JobTokens::default()
            },
            Side::Android => JobTokens {
                fcm: tokens,
                ..JobTokens::default()
            },
        };
        let mut job =
            build_job(state, app, &spec, tokens, &names, None).map_err(|e| e.within(&prefix))?;
        job.job.rejected = rejected.clone();
        jobs.push(Built {
            job: Some(job),
            rejected,
        });
    }
    Ok(jobs)
}

/// What the compatible endpoints answer with.
struct Submitted {
    count: u64,
    /// One per entry; `None` for an entry whose tokens were all malformed.
    ids: Vec<Option<String>>,
    rejected: Vec<RejectedToken>,
}

/// Submits the jobs in order; on a failure, the error lists the jobs already queued.
async fn submit_all(
    state: &FrontState,
    app: usize,
    jobs: Vec<Built>,
) -> Result<Submitted, ApiError> {
    let mut submitted = Submitted {
        count: 0,
        ids: Vec::with_capacity(jobs.len()),
        rejected: Vec::new(),
    };
    for built in jobs {
        submitted.rejected.extend(built.rejected.tokens);
        let Some(prepared) = built.job else {
            submitted.ids.push(None);
            continue;
        };
        let counts = [prepared.apns, prepared.fcm, prepared.webpush];
        match state.submit(prepared.job).await {
            Ok(accepted) => {
                let id = accepted.id.to_string();
                record_accepted(state, app, &id, counts);
                submitted.count += accepted.accepted;
                submitted.ids.push(Some(id));
            }
            Err(error) => {
                return Err(error.with_job_ids(submitted.ids.into_iter().flatten().collect()))
            }
        }
    }
    Ok(submitted)
}

// ---------------------------------------------------------------------------------------------
// gorush

/// gorush's `POST /api/push` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct GorushRequest {
    /// One job each.
    #[schema(min_items = 1)]
    notifications: Vec<GorushNotification>,
}

/// One gorush notification: every field gorush reads, under gorush's names. A field gorush
/// does not know is a 422 naming it, as is one Volley cannot do what gorush does with.
/// The document gives one shape per platform ([`document_requests`]).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct GorushNotification {
    /// gorush's own id, used only in gorush's logs and feedback webhook; Volley's jobs have
    /// their own ids (`job_ids`).
    #[serde(rename = "notif_id")]
    _notif_id: Option<String>,
    #[serde(default)]
    #[schema(value_type = crate::openapi::CompatTokens)]
    tokens: Tokens<NoRule>,
    /// One more token; for Android, `/topics/name` sends to that topic.
    to: Option<String>,
    /// 1 = iOS (APNs), 2 = Android (FCM).
    #[serde(deserialize_with = "crate::whole::exact")]
    platform: i64,
    /// The alert's body.
    message: Option<String>,
    title: Option<String>,
    /// Android: `notification.image`.
    image: Option<String>,
    #[schema(value_type = Option<crate::openapi::PriorityText>)]
    priority: Option<String>,
    #[serde(default)]
    content_available: bool,
    #[serde(default)]
    mutable_content: bool,
    /// iOS: `aps.sound` (a name or a critical-sound dictionary); Android: the notification's
    /// sound.
    sound: Option<Value>,
    #[schema(value_type = Option<Object>)]
    data: Option<Map<String, Value>>,
    /// gorush resends failed tokens this many times; Volley's retry policy retries transient
    /// failures itself, so it is accepted and needs nothing more.
    #[serde(rename = "retry")]
    #[serde(default, deserialize_with = "crate::whole::option")]
    _retry: Option<u32>,
    /// iOS: the `apns-topic`, verbatim. Android: an FCM topic.
    topic: Option<String>,
    // Android
    api_key: Option<String>,
    condition: Option<String>,
    #[schema(value_type = Option<crate::openapi::CollapseId>)]
    collapse_key: Option<String>,
    /// Legacy FCM only: gorush's FCM HTTP v1 path does not send it either.
    #[serde(rename = "delay_while_idle")]
    _delay_while_idle: Option<bool>,
    #[schema(value_type = Option<crate::openapi::Ttl>)]
    #[serde(default, deserialize_with = "crate::whole::option")]
    time_to_live: Option<u64>,
    restricted_package_name: Option<String>,
    #[serde(default)]
    dry_run: bool,
    // FCM message parts, passed through for Android.
    #[schema(value_type = Option<crate::openapi::FcmPart>)]
    notification: Option<Value>,
    #[schema(value_type = Option<crate::openapi::FcmPart>)]
    android: Option<Value>,
    #[schema(value_type = Option<crate::openapi::FcmPart>)]
    webpush: Option<Value>,
    #[schema(value_type = Option<Object>)]
    fcm_options: Option<Map<String, Value>>,
    /// iOS: raw APNs payload keys; Android: the FCM `apns` block.
    #[schema(value_type = Option<crate::openapi::FcmPart>)]
    apns: Option<Map<String, Value>>,
    // Huawei: not a provider Volley speaks.
    app_id: Option<Value>,
    huawei_notification: Option<Value>,
    huawei_data: Option<Value>,
    huawei_collapse_key: Option<Value>,
    huawei_ttl: Option<Value>,
    bi_tag: Option<Value>,
    fast_app_target: Option<Value>,
    // iOS
    #[serde(default, deserialize_with = "crate::whole::option")]
    expiration: Option<u64>,
    #[schema(format = Uuid)]
    apns_id: Option<String>,
    #[schema(value_type = Option<crate::openapi::CollapseId>)]
    collapse_id: Option<String>,
    #[schema(value_type = Option<crate::openapi::PushTypeName>)]
    push_type: Option<String>,
    #[serde(default)]
    development: bool,
    #[serde(default)]
    production: bool,
    #[serde(default, deserialize_with = "crate::whole::option")]
    badge: Option<u32>,
    category: Option<String>,
    #[serde(rename = "thread-id", alias = "thread_id")]
    thread_id: Option<String>,
    #[serde(rename = "url-args")]
    url_args: Option<Vec<String>>,
    #[schema(value_type = Option<Object>)]
    alert: Option<Map<String, Value>>,
    /// Critical-alert sound name and volume: `aps.sound = {critical: 1, name, volume}`.
    name: Option<String>,
    volume: Option<f64>,
    interruption_level: Option<String>,
    #[serde(rename = "relevance-score", alias = "relevance_score")]
    relevance_score: Option<Value>,
    // Live Activities.
    #[serde(rename = "content-state")]
    #[schema(value_type = Option<Object>)]
    content_state: Option<Map<String, Value>>,
    #[serde(rename = "stale-date")]
    #[serde(default, deserialize_with = "crate::whole::option")]
    stale_date: Option<i64>,
    #[serde(rename = "dismissal-date")]
    #[serde(default, deserialize_with = "crate::whole::option")]
    dismissal_date: Option<i64>,
    event: Option<String>,
    #[serde(default, deserialize_with = "crate::whole::option")]
    timestamp: Option<i64>,
    #[serde(rename = "attributes-type")]
    attributes_type: Option<String>,
    #[schema(value_type = Option<Object>)]
    attributes: Option<Map<String, Value>>,
}

/// gorush's answer, with the ids of the queued jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct GorushResponse {
    /// How many notifications were queued.
    pub counts: u64,
    /// One `failed-push` entry per malformed token (gorush's shape, with the token's place
    /// instead of the token); delivery outcomes are reported by `GET /v1/jobs/{id}`.
    pub logs: Vec<FailedPush>,
    /// `ok`.
    #[schema(value_type = String, pattern = "^ok$")]
    pub success: &'static str,
    /// One job per entry of `notifications`, in order (`null` for an entry whose tokens were
    /// all malformed).
    #[schema(value_type = Vec<Option<uuid::Uuid>>)]
    pub job_ids: Vec<Option<String>>,
}

/// A malformed token, left out: gorush's log entry, by place instead of the token.
#[derive(Debug, Serialize, ToSchema)]
pub struct FailedPush {
    /// `failed-push`.
    #[serde(rename = "type")]
    #[schema(value_type = String, pattern = "^failed-push$")]
    kind: &'static str,
    /// `ios` or `android`.
    #[schema(value_type = String, pattern = "^(ios|android)$")]
    platform: &'static str,
    /// Where it was: `notifications[0].tokens[3]`.
    field: String,
    /// Why it is not a token of its platform.
    error: String,
}

/// A 422 for a gorush field Volley cannot honour.
fn unsupported(index: usize, name: &str, why: &str) -> ApiError {
    ApiError::new(
        Code::InvalidArgument,
        format!("{name} is not supported: {why}"),
    )
    .field(format!("notifications[{index}].{name}"))
}

/// Refuses what Volley cannot do as gorush does.
fn gorush_refusals(n: &GorushNotification, index: usize) -> Result<(), ApiError> {
    if n.api_key.is_some() {
        return Err(unsupported(
            index,
            "api_key",
            "credentials live in each agent's configuration, never in a request",
        ));
    }
    if n.dry_run {
        return Err(unsupported(
            index,
            "dry_run",
            "Volley sends what it accepts; validate a request without sending by omitting tokens",
        ));
    }
    for (name, given) in [("development", n.development), ("production", n.production)] {
        if given {
            return Err(unsupported(
                index,
                name,
                "the apns environment is set per app in the agent's configuration",
            ));
        }
    }
    let huawei = [
        ("app_id", &n.app_id),
        ("huawei_notification", &n.huawei_notification),
        ("huawei_data", &n.huawei_data),
        ("huawei_collapse_key", &n.huawei_collapse_key),
        ("huawei_ttl", &n.huawei_ttl),
        ("bi_tag", &n.bi_tag),
        ("fast_app_target", &n.fast_app_target),
    ];
    if let Some((name, _)) = huawei.iter().find(|(_, value)| value.is_some()) {
        return Err(unsupported(
            index,
            name,
            "Volley does not send to Huawei push",
        ));
    }
    Ok(())
}

/// iOS fields that only mean something to APNs, by gorush name, when given to Android.
fn ios_only_fields(n: &GorushNotification) -> Option<&'static str> {
    [
        ("expiration", n.expiration.is_some()),
        ("apns_id", n.apns_id.is_some()),
        ("push_type", n.push_type.is_some()),
        ("badge", n.badge.is_some()),
        ("category", n.category.is_some()),
        ("thread-id", n.thread_id.is_some()),
        ("url-args", n.url_args.is_some()),
        ("alert", n.alert.is_some()),
        ("name", n.name.is_some()),
        ("volume", n.volume.is_some()),
        ("interruption_level", n.interruption_level.is_some()),
        ("relevance-score", n.relevance_score.is_some()),
        ("content-state", n.content_state.is_some()),
        ("stale-date", n.stale_date.is_some()),
        ("dismissal-date", n.dismissal_date.is_some()),
        ("event", n.event.is_some()),
        ("timestamp", n.timestamp.is_some()),
        ("attributes-type", n.attributes_type.is_some()),
        ("attributes", n.attributes.is_some()),
    ]
    .into_iter()
    .find_map(|(name, given)| given.then_some(name))
}

/// Android fields that only mean something to FCM, by gorush name, when given to iOS.
fn android_only_fields(n: &GorushNotification) -> Option<&'static str> {
    [
        ("condition", n.condition.is_some()),
        ("collapse_key", n.collapse_key.is_some()),
        ("time_to_live", n.time_to_live.is_some()),
        (
            "restricted_package_name",
            n.restricted_package_name.is_some(),
        ),
        ("notification", n.notification.is_some()),
        ("android", n.android.is_some()),
        ("webpush", n.webpush.is_some()),
        ("fcm_options", n.fcm_options.is_some()),
    ]
    .into_iter()
    .find_map(|(name, given)| given.then_some(name))
}

fn gorush_spec(n: GorushNotification, index: usize) -> Result<Entry, ApiError> {
    let platform = platform_of(n.platform, index)?;
    gorush_refusals(&n, index)?;
    let field = |name: &str| format!("notifications[{index}].{name}");
    let misplaced = match platform {
        Side::Ios => {
            android_only_fields(&n).map(|name| (name, "android (platform 2)", "ios (platform 1)"))
        }
        Side::Android => {
            ios_only_fields(&n).map(|name| (name, "ios (platform 1)", "android (platform 2)"))
        }
    };
    if let Some((name, for_platform, this)) = misplaced {
        return Err(ApiError::new(
            Code::InvalidArgument,
            format!("{name} is for {for_platform}; this entry is {this}"),
        )
        .field(field(name)));
    }
    let mut tokens = n.tokens.list;
    let mut to_topic = None;
    if let Some(to) = n.to {
        match (platform, to.strip_prefix("/topics/")) {
            (Side::Android, Some(_)) => to_topic = Some(to),
            _ => tokens = tokens.iter().chain(std::iter::once(to.as_str())).collect(),
        }
    }
    let mut spec = Spec {
        title: n.title,
        body: n.message,
        data: n.data.unwrap_or_default(),
        priority: n.priority.map(PriorityInput::Text),
        content_available: n.content_available,
        mutable_content: n.mutable_content,
        text_alert: true,
        ..Spec::default()
    };
    let mut collapse_key_given = false;
    let mut destination = None;
    match platform {
        Side::Ios => {
            if n.image.is_some() {
                return Err(ApiError::new(
                    Code::InvalidArgument,
                    "image is for android (platform 2); on ios put the url in data and fetch \
                     it in a notification service extension",
                )
                .field(field("image")));
            }
            spec.expiration = n.expiration.filter(|at| *at > 0);
            spec.collapse_id = n.collapse_id;
            spec.push_type = n.push_type;
            spec.badge = n.badge;
            spec.category = n.category;
            spec.thread_id = n.thread_id;
            spec.apns_topic = n.topic;
            spec.apns_id = n.apns_id;
            // gorush's `apns` adds keys to the payload; an `aps` inside it adds to `aps`.
            spec.apns_raw = n.apns;
            spec.alert_raw = n.alert.filter(|alert| !alert.is_empty());
            spec.sound = match (n.sound, n.name, n.volume) {
                (sound, None, None) => sound,
                (_, name, volume) => {
                    let mut critical = Map::new();
                    critical.insert("critical".into(), 1.into());
                    if let Some(name) = name {
                        critical.insert("name".into(), Value::String(name));
                    }
                    if let Some(volume) = volume {
                        critical.insert("volume".into(), volume.into());
                    }
                    Some(Value::Object(critical))
                }
            };
            let mut extra = Map::new();
            let mut put = |key: &str, value: Option<Value>| {
                if let Some(value) = value {
                    extra.insert(key.to_owned(), value);
                }
            };
            put(
                "interruption-level",
                n.interruption_level.map(Value::String),
            );
            put("relevance-score", n.relevance_score);
            put("url-args", n.url_args.map(|args| args.into()));
            put("content-state", n.content_state.map(Value::Object));
            put("timestamp", n.timestamp.map(Value::from));
            put("event", n.event.map(Value::String));
            put("stale-date", n.stale_date.map(Value::from));
            put("dismissal-date", n.dismissal_date.map(Value::from));
            put("attributes-type", n.attributes_type.map(Value::String));
            put("attributes", n.attributes.map(Value::Object));
            spec.aps_extra = extra;
        }
        Side::Android => {
            destination = match (n.topic.or(to_topic), n.condition) {
                (None, None) => None,
                (topic, condition) => {
                    fcm_destination(topic, condition, &field("topic"), &field("condition"))?
                }
            };
            spec.image = n.image;
            collapse_key_given = n.collapse_key.is_some();
            spec.collapse_id = n.collapse_key.or(n.collapse_id);
            spec.ttl = n.time_to_live;
            let mut raw = Map::new();
            for (key, value) in [
                ("notification", n.notification),
                ("android", n.android),
                ("webpush", n.webpush),
                ("apns", n.apns.map(Value::Object)),
                ("fcm_options", n.fcm_options.map(Value::Object)),
            ] {
                if let Some(value) = value.filter(|v| !v.is_null()) {
                    raw.insert(key.into(), value);
                }
            }
            if let Some(package) = n.restricted_package_name {
                let android = raw
                    .entry("android")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(android) = android {
                    android
                        .entry("restricted_package_name")
                        .or_insert(Value::String(package));
                }
            }
            ios_over_fcm(
                &mut raw,
                n.sound.as_ref(),
                n.content_available,
                n.mutable_content,
            );
            spec.sound = n.sound.filter(Value::is_string);
            if !raw.is_empty() {
                let message: FcmMessage =
                    serde_json::from_value(Value::Object(raw)).map_err(|e| {
                        ApiError::new(
                            Code::InvalidArgument,
                            format!(
                                "not a valid fcm message part: {}",
                                crate::error::scrub_strings(&e.to_string())
                            ),
                        )
                        .field(field("android"))
                    })?;
                spec.fcm_raw = Some(message);
            }
        }
    }
    let names = match platform {
        Side::Ios => names("tokens", "collapse_id", "expiration", "expiration"),
        Side::Android if spec.collapse_id.is_some() && collapse_key_given => {
            names("tokens", "collapse_key", "time_to_live", "expiration")
        }
        Side::Android => names("tokens", "collapse_id", "time_to_live", "expiration"),
    };
    Ok(Entry {
        spec,
        tokens,
        platform,
        names,
        destination,
    })
}

/// The `apns` block gorush builds into an FCM message for iOS devices registered with FCM:
/// `sound`, `content-available` (with `apns-priority: 5`, which Apple requires for it) and
/// `mutable-content`. Keys the caller's own `apns` block sets win.
fn ios_over_fcm(
    raw: &mut Map<String, Value>,
    sound: Option<&Value>,
    content_available: bool,
    mutable_content: bool,
) {
    if sound.is_none() && !content_available && !mutable_content {
        return;
    }
    let Value::Object(apns) = raw
        .entry("apns")
        .or_insert_with(|| Value::Object(Map::new()))
    else {
        return;
    };
    if content_available {
        if let Value::Object(headers) = apns
            .entry("headers")
            .or_insert_with(|| Value::Object(Map::new()))
        {
            headers
                .entry("apns-priority")
                .or_insert_with(|| Value::String("5".into()));
        }
    }
    let Value::Object(payload) = apns
        .entry("payload")
        .or_insert_with(|| Value::Object(Map::new()))
    else {
        return;
    };
    let Value::Object(aps) = payload
        .entry("aps")
        .or_insert_with(|| Value::Object(Map::new()))
    else {
        return;
    };
    if let Some(sound) = sound {
        aps.entry("sound").or_insert_with(|| sound.clone());
    }
    if content_available {
        aps.entry("content-available").or_insert(1.into());
    }
    if mutable_content {
        aps.entry("mutable-content").or_insert(1.into());
    }
}

/// What both compatible endpoints do: authenticate, read and parse the body off the reactor,
/// validate every entry, then submit the jobs.
async fn accept<R, N>(
    state: FrontState,
    headers: &HeaderMap,
    body: Body,
    tokens_field: &'static str,
    entries: fn(R) -> Vec<N>,
    arrays: tokens::Arrays<R>,
    to_spec: fn(N, usize) -> Result<Entry, ApiError>,
) -> Result<Submitted, ApiError>
where
    R: serde::de::DeserializeOwned + 'static,
    N: Send + 'static,
{
    let app = compat_app(&state, headers)?;
    let bytes = state.read_body(body).await?;
    let jobs = {
        let state = state.clone();
        cpu(bytes.len(), move || {
            // A large body's token arrays become its own buffer (`tokens::parse_body`).
            let request: R = tokens::parse_body(bytes, arrays)?;
            build_jobs(&state, app, entries(request), tokens_field, to_spec)
        })
        .await??
    };
    submit_all(&state, app, jobs).await
}

/// The answers' entry for a malformed token, in gorush's log shape.
fn failed_push(token: &RejectedToken) -> FailedPush {
    FailedPush {
        kind: "failed-push",
        platform: match token.platform {
            Platform::Apns => "ios",
            Platform::Fcm => "android",
            Platform::WebPush => "webpush",
        },
        field: token.field.clone(),
        error: token.reason.clone(),
    }
}

/// `POST /api/push`: gorush's request shape.
#[utoipa::path(
    post,
    path = "/api/push",
    operation_id = "gorush",
    tag = "compatible",
    request_body(content = GorushRequest, content_type = "application/json"),
    responses((status = 200, description = "The jobs are queued, one per entry", body = GorushResponse)),
    security(("api_key" = []))
)]
pub async fn gorush(
    State(state): State<FrontState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<GorushResponse>, ApiError> {
    async {
        let submitted = accept(
            state,
            &headers,
            body,
            "tokens",
            |request: GorushRequest| request.notifications,
            |request| {
                let arrays = request.notifications.iter_mut();
                arrays.map(|n| &mut n.tokens as &mut dyn InPlace).collect()
            },
            gorush_spec,
        )
        .await?;
        Ok(Json(GorushResponse {
            counts: submitted.count,
            logs: submitted.rejected.iter().map(failed_push).collect(),
            success: "ok",
            job_ids: submitted.ids,
        }))
    }
    .await
    .map_err(ApiError::compat)
}

// ---------------------------------------------------------------------------------------------
// gaurun

/// gaurun's `POST /push` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct GaurunRequest {
    /// One job each.
    #[schema(min_items = 1)]
    notifications: Vec<GaurunNotification>,
}

/// One gaurun notification, under gaurun's names; an unknown field is a 422 naming it.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct GaurunNotification {
    #[serde(default)]
    #[schema(value_type = crate::openapi::CompatTokens)]
    token: Tokens<NoRule>,
    /// 1 = iOS (APNs), 2 = Android (FCM).
    #[serde(deserialize_with = "crate::whole::exact")]
    platform: i64,
    message: Option<String>,
    title: Option<String>,
    subtitle: Option<String>,
    #[serde(default, deserialize_with = "crate::whole::option")]
    badge: Option<u32>,
    category: Option<String>,
    sound: Option<String>,
    #[serde(default)]
    content_available: bool,
    #[serde(default)]
    mutable_content: bool,
    /// iOS: seconds from now until APNs stops trying (0: not set).
    #[schema(value_type = Option<crate::openapi::Ttl>)]
    #[serde(default, deserialize_with = "crate::whole::option")]
    expiry: Option<u64>,
    /// Android: `android.collapse_key`.
    collapse_key: Option<String>,
    /// Legacy GCM only; gaurun's FCM HTTP v1 path has no equivalent either.
    #[serde(rename = "delay_while_idle")]
    _delay_while_idle: Option<bool>,
    /// Android: `android.ttl` (0: not set).
    #[schema(value_type = Option<crate::openapi::Ttl>)]
    #[serde(default, deserialize_with = "crate::whole::option")]
    time_to_live: Option<u64>,
    #[schema(value_type = Option<crate::openapi::PriorityText>)]
    priority: Option<String>,
    /// gaurun resends a failed push this many times; Volley's retry policy does that.
    #[serde(rename = "retry")]
    #[serde(default, deserialize_with = "crate::whole::option")]
    _retry: Option<u32>,
    /// gaurun's sequence ids, used only in its own logs.
    #[serde(rename = "seq_id")]
    _seq_id: Option<Value>,
    /// iOS: keys beside `aps`; Android: `data` entries.
    #[serde(default)]
    extend: Vec<Extend>,
    #[schema(value_type = Option<crate::openapi::PushTypeName>)]
    push_type: Option<String>,
}

/// gaurun's `extend` entries: custom key/value pairs.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct Extend {
    key: String,
    #[serde(alias = "value")]
    val: String,
}

/// gaurun's answer, with the ids of the queued jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct GaurunResponse {
    /// `ok`.
    #[schema(value_type = String, pattern = "^ok$")]
    pub message: &'static str,
    /// One job per entry of `notifications`, in order (`null` for an entry whose tokens were
    /// all malformed).
    #[schema(value_type = Vec<Option<uuid::Uuid>>)]
    pub job_ids: Vec<Option<String>>,
    /// The malformed tokens, left out, by place and reason.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rejected_tokens: Vec<FailedPush>,
}

fn gaurun_spec(n: GaurunNotification, index: usize) -> Result<Entry, ApiError> {
    let platform = platform_of(n.platform, index)?;
    let data: Map<String, Value> = n
        .extend
        .into_iter()
        .map(|e| (e.key, Value::String(e.val)))
        .collect();
    let mut spec = Spec {
        body: n.message,
        data,
        priority: n.priority.map(PriorityInput::Text),
        push_type: n.push_type,
        text_alert: true,
        ..Spec::default()
    };
    match platform {
        Side::Ios => {
            spec.title = n.title;
            spec.subtitle = n.subtitle;
            // gaurun always writes the badge, 0 when none is given (which clears the icon's).
            spec.badge = Some(n.badge.unwrap_or(0));
            spec.category = n.category;
            spec.sound = n.sound.map(Value::String);
            spec.content_available = n.content_available;
            spec.mutable_content = n.mutable_content;
            // gaurun treats 0 as "not set", not as APNs' "try once".
            spec.ttl = n.expiry.filter(|seconds| *seconds > 0);
        }
        Side::Android => {
            // gaurun sends Android pushes as data messages: `message` and `extend` in `data`.
            spec.fcm_data_only = true;
            spec.collapse_id = n.collapse_key;
            spec.ttl = n.time_to_live.filter(|seconds| *seconds > 0);
        }
    }
    Ok(Entry {
        spec,
        tokens: n.token.list,
        platform,
        names: names("token", "collapse_key", "time_to_live", "expiry"),
        destination: None,
    })
}

/// `POST /push`: gaurun's request shape.
#[utoipa::path(
    post,
    path = "/push",
    operation_id = "gaurun",
    tag = "compatible",
    request_body(content = GaurunRequest, content_type = "application/json"),
    responses((status = 200, description = "The jobs are queued, one per entry", body = GaurunResponse)),
    security(("api_key" = []))
)]
pub async fn gaurun(
    State(state): State<FrontState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<GaurunResponse>, ApiError> {
    async {
        let submitted = accept(
            state,
            &headers,
            body,
            "token",
            |request: GaurunRequest| request.notifications,
            |request| {
                let arrays = request.notifications.iter_mut();
                arrays.map(|n| &mut n.token as &mut dyn InPlace).collect()
            },
            gaurun_spec,
        )
        .await?;
        Ok(Json(GaurunResponse {
            message: "ok",
            job_ids: submitted.ids,
            rejected_tokens: submitted.rejected.iter().map(failed_push).collect(),
        }))
    }
    .await
    .map_err(ApiError::compat)
}

// ---------------------------------------------------------------------------------------------
// The document

/// gorush fields only iOS entries take ([`ios_only_fields`]), by their JSON names.
const GORUSH_IOS_ONLY: &[&str] = &[
    "expiration",
    "apns_id",
    "push_type",
    "badge",
    "category",
    "thread-id",
    "url-args",
    "alert",
    "name",
    "volume",
    "interruption_level",
    "relevance-score",
    "content-state",
    "stale-date",
    "dismissal-date",
    "event",
    "timestamp",
    "attributes-type",
    "attributes",
];

/// gorush fields only Android entries take ([`android_only_fields`], and `image`).
const GORUSH_ANDROID_ONLY: &[&str] = &[
    "condition",
    "collapse_key",
    "time_to_live",
    "restricted_package_name",
    "notification",
    "android",
    "webpush",
    "fcm_options",
    "image",
];

/// gorush fields every entry refuses unless null or false ([`gorush_refusals`]): left out of
/// the document.
const GORUSH_REFUSED: &[&str] = &[
    "api_key",
    "dry_run",
    "development",
    "production",
    "app_id",
    "huawei_notification",
    "huawei_data",
    "huawei_collapse_key",
    "huawei_ttl",
    "bi_tag",
    "fast_app_target",
];

/// A reference to component `name`, or null (an absent field).
fn nullable(name: &str) -> Value {
    json!({"oneOf": [{"type": "null"}, {"$ref": format!("#/components/schemas/{name}")}]})
}

/// FCM's reserved `data` keys, as a schema that matches them.
fn fcm_reserved_key() -> Value {
    json!({"anyOf": [{"enum": ["from", "message_type"]}, {"pattern": "^(google|gcm)"}]})
}

/// The gorush and gaurun request schemas: one entry shape per platform, as the endpoints
/// refuse the other platform's fields (gorush) and check tokens and keys by platform.
pub(crate) fn document_requests(schemas: &mut Map<String, Value>) {
    let fcm_message = schemas["FcmMessage"]["properties"].clone();
    let part = |name: &str| {
        let mut schema = fcm_message.get(name).cloned().unwrap_or_else(|| json!({}));
        if let Value::Object(map) = &mut schema {
            map.insert("type".into(), json!(["object", "null"]));
        }
        schema
    };
    let apns_token = json!({"$ref": "#/components/schemas/ApnsToken"});
    let fcm_token = json!({"$ref": "#/components/schemas/FcmToken"});
    let tokens_of = |token: &Value| {
        json!({"type": "array", "items": {"anyOf": [token, {"type": "string"}]},
            "description": "Device tokens of the entry's platform; a malformed one is left out and reported in the answer"})
    };
    let present =
        |field: &str| json!({"required": [field], "properties": {field: {"type": "string"}}});
    let some_tokens =
        |field: &str| json!({"required": [field], "properties": {field: {"minItems": 1}}});
    let to_topic = json!({"required": ["to"], "properties": {"to": {"type": "string", "pattern": "^/topics/"}}});
    let to_device = json!({"required": ["to"], "properties": {"to": {"type": "string", "not": {"pattern": "^/topics/"}}}});

    // gorush
    let base = schemas["GorushNotification"]["properties"]
        .as_object()
        .cloned()
        .expect("gorush's properties");
    let variant = |platform: i64, leave_out: &[&str]| {
        let mut properties: Map<String, Value> = base
            .iter()
            .filter(|(name, _)| !leave_out.contains(&name.as_str()))
            .filter(|(name, _)| !GORUSH_REFUSED.contains(&name.as_str()))
            .map(|(name, schema)| (name.clone(), schema.clone()))
            .collect();
        properties.insert(
            "platform".into(),
            json!({"type": "integer", "const": platform}),
        );
        properties
    };
    let mut ios = variant(IOS, GORUSH_ANDROID_ONLY);
    ios.insert("tokens".into(), tokens_of(&apns_token));
    ios.insert("topic".into(), nullable("ApnsTopic"));
    ios.insert(
        "apns".into(),
        json!({"type": ["object", "null"],
        "properties": {"aps": {"type": "object"}},
        "description": "Raw payload keys beside `aps`; an `aps` inside adds to `aps`"}),
    );
    ios.insert(
        "data".into(),
        json!({"type": ["object", "null"],
        "propertyNames": {"not": {"const": "aps"}},
        "description": "Keys beside `aps`"}),
    );
    let mut android = variant(ANDROID, GORUSH_IOS_ONLY);
    android.insert("tokens".into(), tokens_of(&fcm_token));
    android.insert("topic".into(), nullable("FcmTopic"));
    android.insert("condition".into(), nullable("FcmCondition"));
    android.insert(
        "to".into(),
        json!({"type": ["string", "null"], "anyOf": [
        {"type": "null"},
        {"type": "string", "not": {"pattern": "^/topics/"}},
        {"$ref": "#/components/schemas/FcmTopic"},
    ], "description": "One more token, or `/topics/<name>` for a topic"}),
    );
    android.insert(
        "data".into(),
        json!({"type": ["object", "null"],
        "propertyNames": {"not": fcm_reserved_key()},
        "description": "FCM `data` (non-strings JSON-encoded); not a key FCM reserves"}),
    );
    for name in ["notification", "android", "webpush", "apns"] {
        android.insert(name.into(), part(name));
    }
    android.insert("fcm_options".into(), json!({"type": ["object", "null"]}));
    let entry = |properties: Map<String, Value>, title: &str, rules: Value| {
        let mut schema = json!({
            "type": "object",
            "title": title,
            "required": ["platform"],
            "additionalProperties": false,
            "properties": properties,
        });
        schema["allOf"] = rules;
        schema
    };
    let gorush_ios = entry(
        ios,
        "iOS",
        json!([
            {"anyOf": [some_tokens("tokens"), present("to")]},
            {"anyOf": [
                not_background(&["title", "message", "alert", "badge", "sound", "name", "volume"]),
                not_high_priority(),
            ]},
        ]),
    );
    let target = json!({"anyOf": [present("topic"), present("condition"), to_topic]});
    let gorush_android = entry(
        android,
        "Android",
        json!([
            {"anyOf": [some_tokens("tokens"), present("to"), present("topic"), present("condition")]},
            {"not": {"allOf": [{"anyOf": [present("topic"), to_topic]}, present("condition")]}},
            {"not": {"allOf": [target, {"anyOf": [some_tokens("tokens"), to_device]}]}},
        ]),
    );
    let description = schemas["GorushNotification"]["description"].clone();
    schemas.insert(
        "GorushNotification".into(),
        json!({"description": description, "oneOf": [gorush_ios, gorush_android]}),
    );

    // gaurun
    let base = schemas["GaurunNotification"]["properties"]
        .as_object()
        .cloned()
        .expect("gaurun's properties");
    let extend = |key: Value| {
        json!({"type": "array", "items": {
            "type": "object", "required": ["key", "val"], "additionalProperties": false,
            "properties": {"key": key, "val": {"type": "string"}}}})
    };
    // Each platform ignores the other's fields, so only its own are checked.
    let ignored = json!({"type": ["integer", "null"], "minimum": 0, "maximum": u64::MAX});
    let gaurun_entry = |platform: i64, token: &Value, key: Value, title: &str| {
        let mut properties = base.clone();
        if platform == IOS {
            properties.insert("time_to_live".into(), ignored.clone());
            properties.insert("collapse_key".into(), json!({"type": ["string", "null"]}));
        } else {
            properties.insert("expiry".into(), ignored.clone());
            properties.insert("collapse_key".into(), nullable("CollapseId"));
        }
        properties.insert(
            "platform".into(),
            json!({"type": "integer", "const": platform}),
        );
        properties.insert("token".into(), tokens_of(token));
        properties.insert("extend".into(), extend(key));
        let mut rules = vec![json!({"anyOf": [some_tokens("token")]})];
        if platform == IOS {
            // gaurun always sends a badge, so only `push_type: background` is a background push.
            let not_background =
                json!({"properties": {"push_type": {"not": {"const": "background"}}}});
            rules.push(json!({"anyOf": [not_background, not_high_priority()]}));
        }
        json!({
            "type": "object",
            "title": title,
            "required": ["platform"],
            "additionalProperties": false,
            "properties": properties,
            "allOf": rules,
        })
    };
    let gaurun_ios = gaurun_entry(
        IOS,
        &apns_token,
        json!({"type": "string", "not": {"const": "aps"}}),
        "iOS",
    );
    let gaurun_android = gaurun_entry(
        ANDROID,
        &fcm_token,
        json!({"type": "string", "not": fcm_reserved_key()}),
        "Android",
    );
    let description = schemas["GaurunNotification"]["description"].clone();
    schemas.insert(
        "GaurunNotification".into(),
        json!({"description": description, "oneOf": [gaurun_ios, gaurun_android]}),
    );
    schemas.remove("Extend");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lists the document is split by name fields `GorushNotification` has (a renamed
    /// field would otherwise silently stay in both platforms' shapes).
    #[test]
    fn the_platform_lists_name_gorush_fields() {
        let schema =
            serde_json::to_value(<GorushNotification as utoipa::PartialSchema>::schema()).unwrap();
        for name in GORUSH_IOS_ONLY
            .iter()
            .chain(GORUSH_ANDROID_ONLY)
            .chain(GORUSH_REFUSED)
        {
            assert!(
                schema["properties"].get(*name).is_some(),
                "{name} is not a gorush field"
            );
        }
    }

    /// Each iOS-only field is refused on Android and each Android-only field on iOS, as the
    /// document's two shapes say.
    #[test]
    fn the_platform_lists_match_the_refusals() {
        for (platform, names) in [(ANDROID, GORUSH_IOS_ONLY), (IOS, GORUSH_ANDROID_ONLY)] {
            for name in names {
                let value = match *name {
                    "url-args" => json!(["a"]),
                    "alert" | "content-state" | "attributes" | "notification" | "android"
                    | "webpush" | "fcm_options" => json!({}),
                    "volume" => json!(1.0),
                    "expiration" | "badge" | "stale-date" | "dismissal-date" | "timestamp"
                    | "time_to_live" => json!(1),
                    _ => json!("x"),
                };
                let entry = json!({"platform": platform, "tokens": ["t"], *name: value});
                let entry: GorushNotification = serde_json::from_value(entry).unwrap();
                let error = gorush_spec(entry, 0)
                    .err()
                    .unwrap_or_else(|| panic!("{name} on platform {platform} is accepted"));
                assert_eq!(
                    error.field.as_deref(),
                    Some(format!("notifications[0].{name}").as_str()),
                    "{name} on platform {platform}: {}",
                    error.message
                );
            }
        }
    }
}
