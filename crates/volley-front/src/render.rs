//! One notification, described once by any of the APIs, rendered once per provider.
//!
//! Every API (native, gorush, gaurun) fills a [`Spec`]; [`render_apns`] and [`render_fcm`] turn
//! it into the [`ApnsRender`] and [`FcmRender`] a whole job shares. Errors name fields through a
//! [`Names`] table, because each API calls the same thing differently (`ttl`, `time_to_live`).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};
use volley_apns::{Alert, Notification, PayloadError, PushType};
use volley_contracts::{ApnsRender, FcmRender};
pub(crate) use volley_fcm::message::MAX_TTL_SECONDS;
use volley_fcm::{
    AndroidConfig, AndroidNotification, AndroidPriority, FcmMessage, PreparedMessage, Target,
};

use crate::error::{ApiError, Code};

/// The longest collapse id (APNs) or collapse key (FCM) accepted, in bytes.
pub const MAX_COLLAPSE_ID: usize = volley_apns::payload::MAX_COLLAPSE_ID;

/// A priority as callers write it: `"high"`/`"normal"` or APNs' 10/5/1.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub(crate) enum PriorityInput {
    /// `high` or `normal`.
    Text(String),
    /// 10, 5 or 1.
    Number(#[serde(deserialize_with = "crate::whole::exact")] u8),
}

/// What a notification says and how it should be delivered, before rendering.
#[derive(Debug, Default)]
pub(crate) struct Spec {
    pub title: Option<String>,
    pub subtitle: Option<String>,
    pub body: Option<String>,
    pub badge: Option<u32>,
    /// A sound name, or (gorush) an APNs critical-alert sound dictionary.
    pub sound: Option<Value>,
    /// App data: top-level keys beside `aps` for APNs; `data` (strings) for FCM.
    pub data: Map<String, Value>,
    pub priority: Option<PriorityInput>,
    pub collapse_id: Option<String>,
    /// `apns-expiration`, epoch seconds.
    pub expiration: Option<u64>,
    /// Seconds a provider may keep the notification for an offline device.
    pub ttl: Option<u64>,
    pub push_type: Option<String>,
    pub content_available: bool,
    pub mutable_content: bool,
    pub category: Option<String>,
    pub thread_id: Option<String>,
    pub image: Option<String>,
    /// Raw APNs payload to start from: its `aps` under the typed fields, the rest beside it.
    pub apns_raw: Option<Map<String, Value>>,
    /// Raw `aps.alert` dictionary (gorush `alert`): title/body fill in what it lacks.
    pub alert_raw: Option<Map<String, Value>>,
    /// Extra `aps` keys (gorush `interruption_level`).
    pub aps_extra: Map<String, Value>,
    /// Raw FCM message fields to start from (`android`, `webpush`, `apns`, `fcm_options`...).
    pub fcm_raw: Option<FcmMessage>,
    /// FCM: send a data-only message (gaurun): no `notification` block, `message` in `data`.
    pub fcm_data_only: bool,
    /// FCM: what the FCM "tokens" of the job name: devices, or one topic or condition.
    pub fcm_target: Target,
    /// APNs: the `apns-topic` the caller named, sent verbatim instead of the app's bundle id
    /// with the push type's suffix.
    pub apns_topic: Option<String>,
    /// APNs: the `apns-id` the caller chose (a UUID).
    pub apns_id: Option<String>,
    /// Web Push: the request's `webpush` options (payload, TTL, urgency, topic).
    pub webpush_raw: Option<crate::webpush::WebPushOptions>,
    /// APNs: write an alert that has only a body as a string (`"alert": "Hi"`), as gorush's
    /// and gaurun's libraries do; a dictionary otherwise. Apple shows both alike.
    pub text_alert: bool,
}

/// What each logical field is called in one API, for error messages.
pub(crate) struct Names {
    pub priority: &'static str,
    pub collapse_id: &'static str,
    pub expiration: &'static str,
    pub ttl: &'static str,
    pub push_type: &'static str,
    pub data: &'static str,
    pub apns_raw: &'static str,
    pub fcm_raw: &'static str,
    pub apns_target: &'static str,
    pub fcm_target: &'static str,
    pub apns_topic: &'static str,
    pub apns_id: &'static str,
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks every field whose rule does not depend on the job's platforms, so that a value is
/// refused alike whether or not the job has a target it matters for (done before any token
/// is looked at twice).
pub(crate) fn check_common(spec: &Spec, names: &Names) -> Result<(), ApiError> {
    if let Some(id) = &spec.collapse_id {
        if id.len() > MAX_COLLAPSE_ID {
            return Err(ApiError::new(
                Code::InvalidArgument,
                format!(
                    "collapse id is {} bytes, above the {MAX_COLLAPSE_ID}-byte limit",
                    id.len()
                ),
            )
            .field(names.collapse_id));
        }
        // APNs sends it as a header value; one rule for both providers.
        if !id.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) {
            return Err(ApiError::new(
                Code::InvalidArgument,
                "collapse id must be visible ascii characters",
            )
            .field(names.collapse_id));
        }
    }
    if let Some(priority) = &spec.priority {
        let ok = match priority {
            PriorityInput::Text(text) => matches!(text.as_str(), "high" | "normal"),
            PriorityInput::Number(n) => matches!(n, 10 | 5 | 1),
        };
        if !ok {
            return Err(ApiError::new(
                Code::InvalidArgument,
                "priority must be \"high\", \"normal\", 10, 5 or 1",
            )
            .field(names.priority));
        }
    }
    if let Some(ttl) = spec.ttl {
        if ttl > MAX_TTL_SECONDS {
            return Err(ApiError::new(
                Code::InvalidArgument,
                format!("ttl is {ttl} s, above the 28-day maximum of {MAX_TTL_SECONDS} s"),
            )
            .field(names.ttl));
        }
    }
    if let Some(name) = &spec.push_type {
        if name.parse::<PushType>().is_err() {
            return Err(unknown_push_type(names));
        }
    }
    if let Some(topic) = &spec.apns_topic {
        let visible = |b: u8| b.is_ascii_graphic();
        if topic.is_empty() || topic.len() > 255 || !topic.bytes().all(visible) {
            return Err(ApiError::new(
                Code::InvalidArgument,
                "the apns topic must be 1 to 255 visible ascii characters (a bundle id, with \
                 the push type's suffix when it needs one)",
            )
            .field(names.apns_topic));
        }
    }
    if let Some(id) = &spec.apns_id {
        if id.parse::<uuid::Uuid>().is_err() {
            return Err(ApiError::new(
                Code::InvalidArgument,
                "apns_id must be a uuid (8-4-4-4-12 hex digits)",
            )
            .field(names.apns_id));
        }
    }
    if let Some(aps) = spec.apns_raw.as_ref().and_then(|raw| raw.get("aps")) {
        if !aps.is_object() {
            return Err(
                ApiError::new(Code::InvalidArgument, "aps must be a json object")
                    .field(format!("{}.aps", names.apns_raw)),
            );
        }
    }
    crate::webpush::check(spec)?;
    if let Some(message) = &spec.fcm_raw {
        let target = ["token", "topic", "condition"]
            .into_iter()
            .find(|key| message.extra.contains_key(*key));
        let checked = match target {
            Some(key) => Err(volley_fcm::MessageError::HasTarget(key)),
            None => message.validate(),
        };
        checked.map_err(|error| {
            ApiError::new(Code::InvalidArgument, format!("fcm: {error}")).field(names.fcm_raw)
        })?;
    }
    Ok(())
}

fn unknown_push_type(names: &Names) -> ApiError {
    ApiError::new(
        Code::InvalidArgument,
        "push_type must be one of alert, background, voip, liveactivity, complication, \
         fileprovider, mdm, location, pushtotalk, controls, widgets",
    )
    .field(names.push_type)
}

fn apns_priority(spec: &Spec, push_type: PushType) -> u8 {
    match &spec.priority {
        Some(PriorityInput::Text(text)) if text == "high" => 10,
        Some(PriorityInput::Text(_)) => 5,
        Some(PriorityInput::Number(n)) => *n,
        // Apple requires 5 for background pushes; 10 is APNs' own default otherwise.
        None if push_type == PushType::Background => 5,
        None => 10,
    }
}

/// Renders the APNs payload and headers once.
pub(crate) fn render_apns(spec: &Spec, topic: &str, names: &Names) -> Result<ApnsRender, ApiError> {
    let has_visible = spec.title.is_some()
        || spec.subtitle.is_some()
        || spec.body.is_some()
        || spec.alert_raw.is_some()
        || spec.badge.is_some()
        || spec.sound.is_some();
    let push_type = match &spec.push_type {
        Some(name) => name
            .parse::<PushType>()
            .map_err(|_| unknown_push_type(names))?,
        // A silent content-available push is a background push; Apple drops it as an alert.
        None if spec.content_available && !has_visible => PushType::Background,
        None => PushType::Alert,
    };

    let mut aps_raw = Map::new();
    let mut custom = Map::new();
    if let Some(raw) = &spec.apns_raw {
        for (key, value) in raw {
            if key == "aps" {
                match value {
                    Value::Object(aps) => aps_raw.extend(aps.clone()),
                    _ => {
                        return Err(ApiError::new(
                            Code::InvalidArgument,
                            "aps must be a json object",
                        )
                        .field(format!("{}.aps", names.apns_raw)))
                    }
                }
            } else {
                custom.insert(key.clone(), value.clone());
            }
        }
    }
    aps_raw.extend(spec.aps_extra.clone());
    let mut alert = None;
    if let Some(raw_alert) = &spec.alert_raw {
        let mut merged = raw_alert.clone();
        for (key, value) in [
            ("title", &spec.title),
            ("subtitle", &spec.subtitle),
            ("body", &spec.body),
        ] {
            if let Some(value) = value {
                merged
                    .entry(key)
                    .or_insert_with(|| Value::String(value.clone()));
            }
        }
        aps_raw.insert("alert".into(), Value::Object(merged));
    } else if let (true, None, None, Some(body)) =
        (spec.text_alert, &spec.title, &spec.subtitle, &spec.body)
    {
        aps_raw.insert("alert".into(), Value::String(body.clone()));
    } else if spec.title.is_some() || spec.subtitle.is_some() || spec.body.is_some() {
        alert = Some(Alert {
            title: spec.title.clone(),
            subtitle: spec.subtitle.clone(),
            body: spec.body.clone(),
        });
    }
    let sound = match &spec.sound {
        Some(Value::String(name)) => Some(name.clone()),
        Some(other) => {
            aps_raw.insert("sound".into(), other.clone());
            None
        }
        None => None,
    };
    if spec.data.contains_key("aps") {
        return Err(ApiError::new(
            Code::InvalidArgument,
            "data must not use the key \"aps\", which belongs to apns",
        )
        .field(names.data));
    }
    custom.extend(spec.data.clone());

    let expiration = match (spec.expiration, spec.ttl) {
        (Some(at), _) => Some(at),
        (None, Some(0)) => Some(0),
        (None, Some(ttl)) => Some(now_secs().saturating_add(ttl)),
        (None, None) => None,
    };
    let priority = apns_priority(spec, push_type);
    if push_type == PushType::Background && priority == 10 {
        // APNs refuses priority 10 for background pushes; say so before a million requests fail.
        return Err(ApiError::new(
            Code::InvalidArgument,
            "background pushes (content_available without an alert, badge or sound) must use              priority \"normal\" (5) or 1",
        )
        .field(names.priority));
    }
    let notification = Notification {
        topic: topic.to_owned(),
        push_type,
        priority: Some(volley_apns::Priority::from_u8(priority).map_err(|e| {
            ApiError::new(Code::InvalidArgument, e.to_string()).field(names.priority)
        })?),
        expiration,
        collapse_id: spec.collapse_id.clone(),
        alert,
        badge: spec.badge,
        sound,
        category: spec.category.clone(),
        thread_id: spec.thread_id.clone(),
        content_available: spec.content_available,
        mutable_content: spec.mutable_content,
        aps_raw: (!aps_raw.is_empty()).then_some(aps_raw),
        custom,
    };
    let prepared = notification.prepare().map_err(|error| {
        let (code, field) = match &error {
            PayloadError::TooLarge { .. } => (Code::PayloadTooLarge, names.apns_target),
            PayloadError::CollapseIdTooLong(_) | PayloadError::BadCollapseId => {
                (Code::InvalidArgument, names.collapse_id)
            }
            PayloadError::BadPriority(_) => (Code::InvalidArgument, names.priority),
            PayloadError::UnknownPushType(_) => (Code::InvalidArgument, names.push_type),
            PayloadError::CustomAps => (Code::InvalidArgument, names.data),
            PayloadError::NotAnApsObject => (Code::InvalidArgument, names.apns_raw),
            PayloadError::BadTopic | PayloadError::Json(_) => (Code::Internal, names.apns_target),
        };
        ApiError::new(code, format!("apns: {error}")).field(field)
    })?;
    Ok(ApnsRender {
        payload: prepared.body().clone(),
        push_type: push_type.as_str().to_owned(),
        priority,
        expiration,
        collapse_id: spec.collapse_id.clone(),
        topic: spec.apns_topic.clone(),
        apns_id: spec.apns_id.clone(),
    })
}

/// The FCM body around the token, as `volley_fcm` prepared it.
fn fcm_parts(prepared: &PreparedMessage) -> FcmRender {
    let (prefix, suffix) = prepared.parts();
    FcmRender {
        prefix: Bytes::from_static(prefix),
        suffix: suffix.clone(),
    }
}

/// FCM `data` is string to string: strings stay, other JSON values are sent JSON-encoded.
fn fcm_data(data: &Map<String, Value>) -> BTreeMap<String, String> {
    data.iter()
        .map(|(key, value)| {
            let value = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            (key.clone(), value)
        })
        .collect()
}

/// Renders the FCM message once, as the body around the token.
pub(crate) fn render_fcm(spec: &Spec, names: &Names) -> Result<FcmRender, ApiError> {
    let mut message = spec.fcm_raw.clone().unwrap_or_default();
    if spec.fcm_data_only {
        if let Some(body) = &spec.body {
            message.data.insert("message".into(), body.clone());
        }
    } else if spec.title.is_some() || spec.body.is_some() || spec.image.is_some() {
        let notification = message.notification.get_or_insert_with(Default::default);
        for (slot, value) in [
            (&mut notification.title, &spec.title),
            (&mut notification.body, &spec.body),
            (&mut notification.image, &spec.image),
        ] {
            if value.is_some() {
                slot.clone_from(value);
            }
        }
    }
    message.data.extend(fcm_data(&spec.data));

    // Spelled as the caller spelled it: `high` stays `high`, as gorush and the Firebase Admin
    // SDKs send it.
    let priority = spec.priority.as_ref().map(|p| match p {
        PriorityInput::Text(text) if text == "high" => AndroidPriority::HighLowercase,
        PriorityInput::Text(_) => AndroidPriority::NormalLowercase,
        PriorityInput::Number(10) => AndroidPriority::High,
        PriorityInput::Number(_) => AndroidPriority::Normal,
    });
    let ttl = match (spec.ttl, spec.expiration) {
        (Some(ttl), _) => Some(ttl),
        // FCM keeps a message 28 days at most: a later expiration means "as long as it can".
        (None, Some(at)) => Some(at.saturating_sub(now_secs()).min(MAX_TTL_SECONDS)),
        (None, None) => None,
    };
    let sound = match (&spec.sound, spec.fcm_data_only) {
        (Some(Value::String(name)), false) => Some(name.clone()),
        _ => None,
    };
    // The caller's own `android` block wins over the common fields, as in gorush.
    if priority.is_some() || ttl.is_some() || spec.collapse_id.is_some() || sound.is_some() {
        let android = message.android.get_or_insert_with(AndroidConfig::default);
        android.priority = android.priority.or(priority);
        android.ttl = android.ttl.or(ttl);
        if android.collapse_key.is_none() {
            android.collapse_key.clone_from(&spec.collapse_id);
        }
        if sound.is_some() {
            let notification = android
                .notification
                .get_or_insert_with(AndroidNotification::default);
            if notification.sound.is_none() {
                notification.sound = sound;
            }
        }
    }

    let prepared = PreparedMessage::new(&message)
        .and_then(|prepared| prepared.to(spec.fcm_target))
        .map_err(|error| {
            use volley_fcm::MessageError as E;
            let (code, field) = match &error {
                E::TtlTooLong { .. } => (
                    Code::InvalidArgument,
                    if spec.ttl.is_some() {
                        names.ttl
                    } else {
                        names.expiration
                    },
                ),
                E::ReservedDataKey(_) => (Code::InvalidArgument, names.data),
                E::TooLarge { .. } => (Code::PayloadTooLarge, names.fcm_target),
                E::HasTarget(_) => (Code::InvalidArgument, names.fcm_raw),
                E::NotAnObject => (Code::Internal, names.fcm_target),
            };
            ApiError::new(code, format!("fcm: {error}")).field(field)
        })?;
    Ok(fcm_parts(&prepared))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    fn spec() -> Spec {
        Spec {
            title: Some("Hi".into()),
            body: Some("Hello \"you\"".into()),
            data: Map::from_iter([("n".into(), json!(5)), ("s".into(), json!("x"))]),
            ..Spec::default()
        }
    }

    #[test]
    fn apns_payload_has_the_alert_and_data() {
        let render = render_apns(&spec(), "com.example", &NAMES).unwrap();
        let payload: Value = serde_json::from_slice(&render.payload).unwrap();
        assert_eq!(
            payload,
            json!({"aps": {"alert": {"title": "Hi", "body": "Hello \"you\""}}, "n": 5, "s": "x"})
        );
        assert_eq!(render.push_type, "alert");
        assert_eq!(render.priority, 10);
    }

    #[test]
    fn silent_pushes_become_background_with_priority_5() {
        let spec = Spec {
            content_available: true,
            ..Spec::default()
        };
        let render = render_apns(&spec, "com.example", &NAMES).unwrap();
        assert_eq!(render.push_type, "background");
        assert_eq!(render.priority, 5);
        let urgent = Spec {
            content_available: true,
            priority: Some(PriorityInput::Text("high".into())),
            ..Spec::default()
        };
        let error = render_apns(&urgent, "com.example", &NAMES).unwrap_err();
        assert_eq!(error.field.as_deref(), Some("priority"));
    }

    #[test]
    fn fcm_prefix_and_suffix_wrap_a_token_into_valid_json() {
        let render = render_fcm(&spec(), &NAMES).unwrap();
        let mut body = render.prefix.to_vec();
        body.extend_from_slice(b"tok:1");
        body.extend_from_slice(&render.suffix);
        let parsed: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["message"]["token"], "tok:1");
        assert_eq!(parsed["message"]["notification"]["title"], "Hi");
        assert_eq!(parsed["message"]["data"], json!({"n": "5", "s": "x"}));
    }

    #[test]
    fn errors_name_their_fields() {
        let long = Spec {
            collapse_id: Some("c".repeat(65)),
            ..Spec::default()
        };
        assert_eq!(
            check_common(&long, &NAMES).unwrap_err().field.as_deref(),
            Some("collapse_id")
        );
        let big = Spec {
            body: Some("x".repeat(5000)),
            ..Spec::default()
        };
        let error = render_apns(&big, "t", &NAMES).unwrap_err();
        assert_eq!(error.code, Code::PayloadTooLarge);
        assert!(error.message.contains("4096"), "{}", error.message);
        let error = render_fcm(&big, &NAMES).unwrap_err();
        assert_eq!(error.code, Code::PayloadTooLarge);
        assert_eq!(error.field.as_deref(), Some("targets.fcm"));
        let reserved = Spec {
            data: Map::from_iter([("from".into(), json!("x"))]),
            ..Spec::default()
        };
        assert_eq!(
            render_fcm(&reserved, &NAMES).unwrap_err().field.as_deref(),
            Some("data")
        );
        let ttl = Spec {
            ttl: Some(40 * 24 * 3600),
            ..Spec::default()
        };
        assert_eq!(
            render_fcm(&ttl, &NAMES).unwrap_err().field.as_deref(),
            Some("ttl")
        );
    }
}
