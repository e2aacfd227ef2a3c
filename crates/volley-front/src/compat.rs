//! Endpoints shaped like gorush (`POST /api/push`) and gaurun (`POST /push`), so that their
//! users can point existing clients at Volley.
//!
//! Both send to `front.default_app`, and require that app's API key unless
//! `front.compat_require_api_key` is off. Unlike gorush and gaurun, the answer comes after the
//! jobs are queued, and a bad entry refuses the whole request before anything is queued.
//! Each entry of `notifications` becomes one job; the answers add `job_ids` for
//! `GET /v1/jobs/{id}`.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use volley_contracts::{Platform, TokenList};
use volley_fcm::FcmMessage;

use crate::error::{ApiError, Code};
use crate::native::{build_job, record_accepted, Prepared};
use crate::render::{Names, PriorityInput, Spec};
use crate::tokens::{validate, NoRule, Tokens};
use crate::{cpu, parse_json, FrontState};

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

fn platform_of(platform: i64, index: usize) -> Result<Platform, ApiError> {
    match platform {
        IOS => Ok(Platform::Apns),
        ANDROID => Ok(Platform::Fcm),
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
    }
}

/// One entry of `notifications`, translated.
struct Entry {
    spec: Spec,
    tokens: TokenList,
    platform: Platform,
    names: Names,
}

/// Validates every entry and builds its job; nothing is submitted unless all are good.
fn build_jobs<N>(
    state: &FrontState,
    app: usize,
    entries: Vec<N>,
    tokens_field: &str,
    to_spec: impl Fn(N, usize) -> Result<Entry, ApiError>,
) -> Result<Vec<Prepared>, ApiError> {
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
            spec,
            tokens,
            platform,
            names,
        } = to_spec(entry, index)?;
        validate(&tokens, platform, &format!("{prefix}.{tokens_field}"))?;
        total += tokens.len();
        if total > max {
            return Err(ApiError::new(
                Code::TooManyTokens,
                format!("the request has more than {max} tokens (front.max_tokens_per_request)"),
            )
            .field(format!("{prefix}.{tokens_field}")));
        }
        let (apns, fcm) = match platform {
            Platform::Apns => (tokens, TokenList::default()),
            Platform::Fcm => (TokenList::default(), tokens),
        };
        let job =
            build_job(state, app, &spec, apns, fcm, &names, None).map_err(|e| e.within(&prefix))?;
        jobs.push(job);
    }
    Ok(jobs)
}

/// Submits the jobs in order; on a failure, the error lists the jobs already queued.
async fn submit_all(
    state: &FrontState,
    app: usize,
    jobs: Vec<Prepared>,
) -> Result<(u64, Vec<String>), ApiError> {
    let mut ids = Vec::with_capacity(jobs.len());
    let mut count = 0;
    for prepared in jobs {
        let (apns, fcm) = (prepared.apns, prepared.fcm);
        match state.submit(prepared.job).await {
            Ok(accepted) => {
                let id = accepted.id.to_string();
                record_accepted(state, app, (&id, apns, fcm));
                count += accepted.accepted;
                ids.push(id);
            }
            Err(error) => return Err(error.with_job_ids(ids)),
        }
    }
    Ok((count, ids))
}

// ---------------------------------------------------------------------------------------------
// gorush

#[derive(Deserialize)]
struct GorushRequest {
    notifications: Vec<GorushNotification>,
}

/// One gorush notification; fields gorush knows and Volley has no use for are ignored.
#[derive(Deserialize)]
struct GorushNotification {
    #[serde(default)]
    tokens: Tokens<NoRule>,
    /// A single token, appended to `tokens`.
    to: Option<String>,
    platform: i64,
    message: Option<String>,
    title: Option<String>,
    image: Option<String>,
    priority: Option<String>,
    #[serde(default)]
    content_available: bool,
    #[serde(default)]
    mutable_content: bool,
    sound: Option<Value>,
    data: Option<Map<String, Value>>,
    /// iOS: gorush's `apns-topic` (Volley sends with the app's configured topic).
    /// Android: an FCM topic, which Volley does not send to.
    topic: Option<String>,
    condition: Option<String>,
    // FCM message objects, passed through for Android.
    notification: Option<Value>,
    android: Option<Value>,
    webpush: Option<Value>,
    apns: Option<Value>,
    fcm_options: Option<Value>,
    collapse_key: Option<String>,
    time_to_live: Option<u64>,
    // iOS
    expiration: Option<u64>,
    collapse_id: Option<String>,
    push_type: Option<String>,
    badge: Option<u32>,
    category: Option<String>,
    #[serde(rename = "thread-id", alias = "thread_id")]
    thread_id: Option<String>,
    alert: Option<Map<String, Value>>,
    interruption_level: Option<String>,
}

/// gorush's answer, with the ids of the queued jobs.
#[derive(Debug, Serialize)]
pub struct GorushResponse {
    /// How many notifications were queued.
    pub counts: u64,
    /// Always empty: outcomes are reported by `GET /v1/jobs/{id}`.
    pub logs: Vec<Value>,
    /// `ok`.
    pub success: &'static str,
    /// One job per entry of `notifications`, in order.
    pub job_ids: Vec<String>,
}

fn gorush_spec(n: GorushNotification, index: usize) -> Result<Entry, ApiError> {
    let platform = platform_of(n.platform, index)?;
    let field = |name: &str| format!("notifications[{index}].{name}");
    let mut tokens = n.tokens.list;
    if let Some(to) = n.to {
        tokens = tokens.iter().chain(std::iter::once(to.as_str())).collect();
    }
    let mut collapse_key_given = false;
    let mut spec = Spec {
        title: n.title,
        body: n.message,
        sound: n.sound,
        data: n.data.unwrap_or_default(),
        priority: n.priority.map(PriorityInput::Text),
        content_available: n.content_available,
        mutable_content: n.mutable_content,
        ..Spec::default()
    };
    match platform {
        Platform::Apns => {
            spec.expiration = n.expiration;
            spec.collapse_id = n.collapse_id;
            spec.push_type = n.push_type;
            spec.badge = n.badge;
            spec.category = n.category;
            spec.thread_id = n.thread_id;
            spec.alert_raw = n.alert.filter(|alert| !alert.is_empty());
            if let Some(level) = n.interruption_level {
                spec.aps_extra
                    .insert("interruption-level".into(), Value::String(level));
            }
        }
        Platform::Fcm => {
            if n.topic.is_some() || n.condition.is_some() {
                let name = if n.topic.is_some() {
                    "topic"
                } else {
                    "condition"
                };
                return Err(ApiError::new(
                    Code::InvalidArgument,
                    "fcm topic and condition messages are not supported; send to tokens",
                )
                .field(field(name)));
            }
            spec.image = n.image;
            collapse_key_given = n.collapse_key.is_some();
            spec.collapse_id = n.collapse_key.or(n.collapse_id);
            spec.ttl = n.time_to_live;
            let mut raw = Map::new();
            for (key, value) in [
                ("notification", n.notification),
                ("android", n.android),
                ("webpush", n.webpush),
                ("apns", n.apns),
                ("fcm_options", n.fcm_options),
            ] {
                if let Some(value) = value.filter(|v| !v.is_null()) {
                    raw.insert(key.into(), value);
                }
            }
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
        Platform::Apns => names("tokens", "collapse_id", "expiration", "expiration"),
        Platform::Fcm if spec.collapse_id.is_some() && collapse_key_given => {
            names("tokens", "collapse_key", "time_to_live", "expiration")
        }
        Platform::Fcm => names("tokens", "collapse_id", "time_to_live", "expiration"),
    };
    Ok(Entry {
        spec,
        tokens,
        platform,
        names,
    })
}

/// What both compatible endpoints do: authenticate, read and parse the body off the reactor,
/// validate every entry, then submit the jobs; returns the count and the job ids.
async fn accept<R, N>(
    state: FrontState,
    headers: &HeaderMap,
    body: Body,
    tokens_field: &'static str,
    entries: fn(R) -> Vec<N>,
    to_spec: fn(N, usize) -> Result<Entry, ApiError>,
) -> Result<(u64, Vec<String>), ApiError>
where
    R: serde::de::DeserializeOwned + 'static,
    N: Send + 'static,
{
    let app = compat_app(&state, headers)?;
    let bytes = state.read_body(body).await?;
    let jobs = {
        let state = state.clone();
        cpu(bytes.len(), move || {
            let request: R = parse_json(&bytes)?;
            build_jobs(&state, app, entries(request), tokens_field, to_spec)
        })
        .await??
    };
    submit_all(&state, app, jobs).await
}

/// `POST /api/push`: gorush's request shape.
pub async fn gorush(
    State(state): State<FrontState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<GorushResponse>, ApiError> {
    async {
        let (counts, job_ids) = accept(
            state,
            &headers,
            body,
            "tokens",
            |request: GorushRequest| request.notifications,
            gorush_spec,
        )
        .await?;
        Ok(Json(GorushResponse {
            counts,
            logs: Vec::new(),
            success: "ok",
            job_ids,
        }))
    }
    .await
    .map_err(ApiError::compat)
}

// ---------------------------------------------------------------------------------------------
// gaurun

#[derive(Deserialize)]
struct GaurunRequest {
    notifications: Vec<GaurunNotification>,
}

/// One gaurun notification; `delay_while_idle`, `retry`, `identifier` and the like are ignored.
#[derive(Deserialize)]
struct GaurunNotification {
    #[serde(default)]
    token: Tokens<NoRule>,
    platform: i64,
    message: Option<String>,
    title: Option<String>,
    subtitle: Option<String>,
    badge: Option<u32>,
    category: Option<String>,
    sound: Option<String>,
    #[serde(default)]
    content_available: bool,
    #[serde(default)]
    mutable_content: bool,
    /// iOS: seconds from now until APNs stops trying.
    expiry: Option<u64>,
    collapse_key: Option<String>,
    time_to_live: Option<u64>,
    priority: Option<String>,
    #[serde(default)]
    extend: Vec<Extend>,
    push_type: Option<String>,
}

/// gaurun's `extend` entries: custom key/value pairs.
#[derive(Deserialize)]
struct Extend {
    key: String,
    #[serde(alias = "value")]
    val: String,
}

/// gaurun's answer, with the ids of the queued jobs.
#[derive(Debug, Serialize)]
pub struct GaurunResponse {
    /// `ok`.
    pub message: &'static str,
    /// One job per entry of `notifications`, in order.
    pub job_ids: Vec<String>,
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
        ..Spec::default()
    };
    match platform {
        Platform::Apns => {
            spec.title = n.title;
            spec.subtitle = n.subtitle;
            spec.badge = n.badge;
            spec.category = n.category;
            spec.sound = n.sound.map(Value::String);
            spec.content_available = n.content_available;
            spec.mutable_content = n.mutable_content;
            // gaurun treats 0 as "not set", not as APNs' "try once".
            spec.ttl = n.expiry.filter(|seconds| *seconds > 0);
        }
        Platform::Fcm => {
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
    })
}

/// `POST /push`: gaurun's request shape.
pub async fn gaurun(
    State(state): State<FrontState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<GaurunResponse>, ApiError> {
    async {
        let (_, job_ids) = accept(
            state,
            &headers,
            body,
            "token",
            |request: GaurunRequest| request.notifications,
            gaurun_spec,
        )
        .await?;
        Ok(Json(GaurunResponse {
            message: "ok",
            job_ids,
        }))
    }
    .await
    .map_err(ApiError::compat)
}
