//! Notifications, prepared once and sent to many devices.
//!
//! A [`Notification`] is serialised a single time into a [`PreparedNotification`]: the JSON body
//! as `Bytes` and every APNs header as a `HeaderValue`, so that sending it to a million tokens
//! clones reference counts instead of re-encoding anything.
//!
//! This module does not use the `a2` crate's payload types: they build a payload per device
//! with borrowed strings and serialise per request, while Volley needs one owned, pre-encoded
//! body for a whole broadcast; the few `aps` fields below are less code than adapting them.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use http::HeaderValue;
use serde_json::{Map, Value};

/// The largest payload APNs accepts, in bytes, except for VoIP.
pub const MAX_PAYLOAD: usize = 4096;
/// The largest VoIP payload APNs accepts, in bytes.
pub const MAX_VOIP_PAYLOAD: usize = 5120;
/// The longest `apns-collapse-id` APNs accepts, in bytes.
pub const MAX_COLLAPSE_ID: usize = 64;

/// The `apns-push-type` header: what kind of notification this is. It must match the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PushType {
    /// Shows an alert, plays a sound or badges the icon.
    #[default]
    Alert,
    /// Wakes the app in the background (`content-available`, priority 5).
    Background,
    /// A VoIP call (topic `<bundle>.voip`); up to 5120 bytes.
    Voip,
    /// Updates a Live Activity (topic `<bundle>.push-type.liveactivity`).
    LiveActivity,
    /// Updates a watchOS complication (topic `<bundle>.complication`).
    Complication,
    /// Signals a File Provider extension (topic `<bundle>.pushkit.fileprovider`).
    FileProvider,
    /// Asks an MDM-managed device to contact its server.
    Mdm,
    /// Asks a Location Push Service extension for the location (topic `<bundle>.location-query`).
    Location,
    /// A Push to Talk update (topic `<bundle>.voip-ptt`).
    PushToTalk,
    /// Reloads Control Center controls (topic `<bundle>.push-type.controls`).
    Controls,
    /// Reloads widgets (topic `<bundle>.push-type.widgets`).
    Widgets,
}

impl PushType {
    /// Every push type, in the order of the enum.
    pub const ALL: [PushType; 11] = [
        PushType::Alert,
        PushType::Background,
        PushType::Voip,
        PushType::LiveActivity,
        PushType::Complication,
        PushType::FileProvider,
        PushType::Mdm,
        PushType::Location,
        PushType::PushToTalk,
        PushType::Controls,
        PushType::Widgets,
    ];

    /// The header value, as APNs spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            PushType::Alert => "alert",
            PushType::Background => "background",
            PushType::Voip => "voip",
            PushType::LiveActivity => "liveactivity",
            PushType::Complication => "complication",
            PushType::FileProvider => "fileprovider",
            PushType::Mdm => "mdm",
            PushType::Location => "location",
            PushType::PushToTalk => "pushtotalk",
            PushType::Controls => "controls",
            PushType::Widgets => "widgets",
        }
    }

    /// What Apple requires after the bundle id in `apns-topic` for this push type (empty for
    /// alert, background and mdm).
    pub const fn topic_suffix(self) -> &'static str {
        match self {
            PushType::Voip => ".voip",
            PushType::Complication => ".complication",
            PushType::FileProvider => ".pushkit.fileprovider",
            PushType::LiveActivity => ".push-type.liveactivity",
            PushType::Location => ".location-query",
            PushType::PushToTalk => ".voip-ptt",
            PushType::Controls => ".push-type.controls",
            PushType::Widgets => ".push-type.widgets",
            PushType::Alert | PushType::Background | PushType::Mdm => "",
        }
    }

    /// The `apns-topic` for this push type from the app's bundle id: the bundle id with
    /// [`PushType::topic_suffix`] appended, unless it already ends with it.
    pub fn topic_for(self, bundle_id: &str) -> std::borrow::Cow<'_, str> {
        let suffix = self.topic_suffix();
        if suffix.is_empty() || bundle_id.ends_with(suffix) {
            std::borrow::Cow::Borrowed(bundle_id)
        } else {
            std::borrow::Cow::Owned(format!("{bundle_id}{suffix}"))
        }
    }

    /// The largest payload APNs accepts for this push type, in bytes.
    pub const fn payload_limit(self) -> usize {
        match self {
            PushType::Voip => MAX_VOIP_PAYLOAD,
            _ => MAX_PAYLOAD,
        }
    }
}

impl fmt::Display for PushType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PushType {
    type Err = PayloadError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PushType::ALL
            .into_iter()
            .find(|push_type| push_type.as_str() == s)
            .ok_or_else(|| PayloadError::UnknownPushType(s.to_owned()))
    }
}

/// The `apns-priority` header. Without one APNs uses 10.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Priority {
    /// 10: deliver immediately (alerts, sounds, badges).
    Immediate,
    /// 5: deliver at a time that saves the device's power (required for background pushes).
    PowerConsiderate,
    /// 1: prioritise the device's power over everything, no wake.
    PowerSaving,
}

impl Priority {
    /// The header's numeric value.
    pub const fn as_u8(self) -> u8 {
        match self {
            Priority::Immediate => 10,
            Priority::PowerConsiderate => 5,
            Priority::PowerSaving => 1,
        }
    }

    /// The priority for a numeric value APNs accepts (10, 5 or 1).
    pub fn from_u8(value: u8) -> Result<Self, PayloadError> {
        match value {
            10 => Ok(Priority::Immediate),
            5 => Ok(Priority::PowerConsiderate),
            1 => Ok(Priority::PowerSaving),
            other => Err(PayloadError::BadPriority(other)),
        }
    }

    const fn header(self) -> HeaderValue {
        match self {
            Priority::Immediate => HeaderValue::from_static("10"),
            Priority::PowerConsiderate => HeaderValue::from_static("5"),
            Priority::PowerSaving => HeaderValue::from_static("1"),
        }
    }
}

/// The visible part of an alert.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Alert {
    /// The title.
    pub title: Option<String>,
    /// A line below the title.
    pub subtitle: Option<String>,
    /// The message.
    pub body: Option<String>,
}

/// A notification as the caller describes it; [`Notification::prepare`] encodes it once.
///
/// Fields left at their default are omitted from the payload and headers.
#[derive(Clone, Default)]
pub struct Notification {
    /// `apns-topic`: the app's bundle id, with the push type's suffix where Apple wants one.
    pub topic: String,
    /// `apns-push-type`.
    pub push_type: PushType,
    /// `apns-priority`; APNs uses 10 when absent.
    pub priority: Option<Priority>,
    /// `apns-expiration`: seconds since the epoch after which APNs stops trying; 0 = try once.
    pub expiration: Option<u64>,
    /// `apns-collapse-id`: notifications with the same id replace each other (≤ 64 bytes).
    pub collapse_id: Option<String>,
    /// `aps.alert`.
    pub alert: Option<Alert>,
    /// `aps.badge`: the number on the app icon (0 clears it).
    pub badge: Option<u32>,
    /// `aps.sound`: a sound file name, or `default`.
    pub sound: Option<String>,
    /// `aps.category`: the notification's actions.
    pub category: Option<String>,
    /// `aps.thread-id`: groups notifications.
    pub thread_id: Option<String>,
    /// `aps.content-available: 1`: wakes the app in the background.
    pub content_available: bool,
    /// `aps.mutable-content: 1`: lets a service extension change the notification.
    pub mutable_content: bool,
    /// Escape hatch: an `aps` dictionary to start from (Live Activity `content-state`,
    /// `interruption-level`, localised alerts...). The typed fields above are written over it.
    pub aps_raw: Option<Map<String, Value>>,
    /// App data, merged at the top level of the payload beside `aps`.
    pub custom: Map<String, Value>,
}

impl fmt::Debug for Notification {
    /// The payload stays out of logs; only routing headers are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notification")
            .field("topic", &self.topic)
            .field("push_type", &self.push_type)
            .field("priority", &self.priority)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

/// Why a notification cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The encoded payload is above APNs' limit for its push type.
    #[error("payload is {size} bytes, above the {limit}-byte limit for push type {push_type}")]
    TooLarge {
        /// Encoded size, in bytes.
        size: usize,
        /// The limit for the push type.
        limit: usize,
        /// The push type.
        push_type: PushType,
    },
    /// The collapse id is longer than 64 bytes.
    #[error("collapse id is {0} bytes, above the 64-byte limit")]
    CollapseIdTooLong(usize),
    /// The topic is empty or not a valid header value.
    #[error("topic must be a non-empty bundle id of visible ascii characters")]
    BadTopic,
    /// The collapse id is not a valid header value.
    #[error("collapse id must be visible ascii characters")]
    BadCollapseId,
    /// The priority is not 10, 5 or 1.
    #[error("priority {0} is not one of 10, 5, 1")]
    BadPriority(u8),
    /// The push type is not one APNs knows.
    #[error("unknown push type {0:?}")]
    UnknownPushType(String),
    /// Custom data used the key `aps`, which belongs to APNs.
    #[error("custom data must not use the key \"aps\"; set aps_raw instead")]
    CustomAps,
    /// A raw payload is not a JSON object with an `aps` dictionary.
    #[error("payload must be a json object with an \"aps\" object")]
    NotAnApsObject,
    /// The payload could not be encoded.
    #[error("payload cannot be encoded as json: {0}")]
    Json(String),
}

/// A notification encoded once: the body and headers every request for it shares.
#[derive(Clone)]
pub struct PreparedNotification {
    pub(crate) body: Bytes,
    pub(crate) push_type: PushType,
    pub(crate) push_type_header: HeaderValue,
    pub(crate) topic: HeaderValue,
    pub(crate) priority: Option<HeaderValue>,
    pub(crate) expiration: Option<HeaderValue>,
    pub(crate) collapse_id: Option<HeaderValue>,
}

impl fmt::Debug for PreparedNotification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedNotification")
            .field("topic", &self.topic)
            .field("push_type", &self.push_type)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl PreparedNotification {
    /// The encoded JSON payload.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The push type.
    pub fn push_type(&self) -> PushType {
        self.push_type
    }

    /// The `apns-topic` it is sent with.
    pub fn topic(&self) -> &str {
        self.topic.to_str().unwrap_or_default()
    }

    /// The `apns-collapse-id` it is sent with, if any.
    pub fn collapse_id(&self) -> Option<&str> {
        self.collapse_id.as_ref().and_then(|id| id.to_str().ok())
    }
}

impl Notification {
    /// Encodes the payload and headers once, checking APNs' limits.
    pub fn prepare(&self) -> Result<PreparedNotification, PayloadError> {
        let mut aps = self.aps_raw.clone().unwrap_or_default();
        if let Some(alert) = &self.alert {
            let mut fields = Map::new();
            let mut put = |key: &str, value: &Option<String>| {
                if let Some(value) = value {
                    fields.insert(key.to_owned(), Value::String(value.clone()));
                }
            };
            put("title", &alert.title);
            put("subtitle", &alert.subtitle);
            put("body", &alert.body);
            aps.insert("alert".to_owned(), Value::Object(fields));
        }
        if let Some(badge) = self.badge {
            aps.insert("badge".to_owned(), badge.into());
        }
        let strings = [
            ("sound", &self.sound),
            ("category", &self.category),
            ("thread-id", &self.thread_id),
        ];
        for (key, value) in strings {
            if let Some(value) = value {
                aps.insert(key.to_owned(), Value::String(value.clone()));
            }
        }
        if self.content_available {
            aps.insert("content-available".to_owned(), 1.into());
        }
        if self.mutable_content {
            aps.insert("mutable-content".to_owned(), 1.into());
        }
        if self.custom.contains_key("aps") {
            return Err(PayloadError::CustomAps);
        }
        let mut root = self.custom.clone();
        root.insert("aps".to_owned(), Value::Object(aps));
        let body = serde_json::to_vec(&root).map_err(|e| PayloadError::Json(e.to_string()))?;
        self.prepare_headers(Bytes::from(body))
    }

    /// Uses `payload` verbatim as the body (already-encoded JSON, e.g. as a user sent it) with
    /// this notification's headers; the payload fields of `self` are ignored.
    pub fn prepare_with_payload(
        &self,
        payload: Bytes,
    ) -> Result<PreparedNotification, PayloadError> {
        if !has_aps_object(&payload) {
            return Err(PayloadError::NotAnApsObject);
        }
        self.prepare_headers(payload)
    }

    fn prepare_headers(&self, body: Bytes) -> Result<PreparedNotification, PayloadError> {
        let limit = self.push_type.payload_limit();
        if body.len() > limit {
            return Err(PayloadError::TooLarge {
                size: body.len(),
                limit,
                push_type: self.push_type,
            });
        }
        if self.topic.is_empty() {
            return Err(PayloadError::BadTopic);
        }
        let topic = shared_header(&self.topic).ok_or(PayloadError::BadTopic)?;
        let collapse_id = match &self.collapse_id {
            None => None,
            Some(id) if id.len() > MAX_COLLAPSE_ID => {
                return Err(PayloadError::CollapseIdTooLong(id.len()))
            }
            Some(id) => Some(shared_header(id).ok_or(PayloadError::BadCollapseId)?),
        };
        Ok(PreparedNotification {
            body,
            push_type: self.push_type,
            push_type_header: HeaderValue::from_static(self.push_type.as_str()),
            topic,
            priority: self.priority.map(Priority::header),
            expiration: self.expiration.map(HeaderValue::from),
            collapse_id,
        })
    }
}

/// Whether `payload` is a JSON object whose `aps` member is an object.
///
/// It reads the whole document (so malformed JSON is refused) without building it: agents
/// check every chunk's rendering, and a `Map<String, Value>` would allocate every key and
/// value of it.
fn has_aps_object(payload: &[u8]) -> bool {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

    /// The root: true once an `aps` member that is an object was seen.
    struct Root;
    /// `aps`: any object.
    struct ApsObject;

    impl<'de> Visitor<'de> for Root {
        type Value = bool;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a json object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            let mut aps = false;
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key == "aps" {
                    aps = map.next_value_seed(ApsObject)?;
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(aps)
        }
    }

    impl<'de> serde::de::DeserializeSeed<'de> for ApsObject {
        type Value = bool;

        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for ApsObject {
        type Value = bool;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any json value")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(true)
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(false)
        }

        fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
            Ok(false)
        }

        fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
            Ok(false)
        }

        fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
            Ok(false)
        }

        fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
            Ok(false)
        }

        fn visit_str<E>(self, _: &str) -> Result<bool, E> {
            Ok(false)
        }

        fn visit_unit<E>(self) -> Result<bool, E> {
            Ok(false)
        }
    }

    let mut deserializer = serde_json::Deserializer::from_slice(payload);
    let aps = deserializer.deserialize_map(Root).unwrap_or(false);
    aps && deserializer.end().is_ok()
}

/// A header value backed by `Bytes`, so that cloning it per request is a reference count.
fn shared_header(text: &str) -> Option<HeaderValue> {
    let value = HeaderValue::from_maybe_shared(Bytes::copy_from_slice(text.as_bytes())).ok()?;
    // Visible ASCII only: APNs rejects anything else, and it keeps headers printable.
    value.to_str().ok()?;
    Some(value)
}

/// The shortest device token accepted, in hex characters (32 bytes, today's tokens).
pub const MIN_TOKEN_LEN: usize = 64;
/// The longest device token accepted, in hex characters (100 bytes).
pub const MAX_TOKEN_LEN: usize = 200;

/// Why a string is not an APNs device token. The token itself is never included.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Too short or too long.
    #[error("device token is {0} characters long; expected 64 to 200 hex characters")]
    Length(usize),
    /// An odd number of hex digits cannot encode whole bytes.
    #[error("device token has an odd number of hex characters ({0})")]
    OddLength(usize),
    /// A character that is not a hex digit.
    #[error("device token has a non-hex character at position {0}")]
    NotHex(usize),
}

/// Checks that `token` looks like an APNs device token.
///
/// The rule: hex digits only (either case), an even count (whole bytes), 64 to 200 characters.
/// Device tokens are 32 bytes (64 hex characters) today; Apple warns they may grow, so up to
/// 100 bytes is accepted. This catches FCM tokens, base64 and truncated copies before they
/// cost a request; whether a well-formed token is alive only APNs can tell.
pub fn validate_token(token: &str) -> Result<(), TokenError> {
    let len = token.len();
    if !(MIN_TOKEN_LEN..=MAX_TOKEN_LEN).contains(&len) {
        return Err(TokenError::Length(len));
    }
    if let Some(position) = token.bytes().position(|b| !b.is_ascii_hexdigit()) {
        return Err(TokenError::NotHex(position));
    }
    if !len.is_multiple_of(2) {
        return Err(TokenError::OddLength(len));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn push_types_get_the_topic_suffix_apple_requires() {
        let expected = [
            (PushType::Alert, "com.example"),
            (PushType::Background, "com.example"),
            (PushType::Mdm, "com.example"),
            (PushType::Voip, "com.example.voip"),
            (PushType::LiveActivity, "com.example.push-type.liveactivity"),
            (PushType::Complication, "com.example.complication"),
            (PushType::FileProvider, "com.example.pushkit.fileprovider"),
            (PushType::Location, "com.example.location-query"),
            (PushType::PushToTalk, "com.example.voip-ptt"),
            (PushType::Controls, "com.example.push-type.controls"),
            (PushType::Widgets, "com.example.push-type.widgets"),
        ];
        assert_eq!(expected.len(), PushType::ALL.len());
        for (push_type, topic) in expected {
            assert_eq!(push_type.topic_for("com.example"), topic, "{push_type}");
            // A bundle id configured with the suffix already does not get it twice.
            assert_eq!(push_type.topic_for(topic), topic, "{push_type}");
        }
    }

    fn decode(prepared: &PreparedNotification) -> Value {
        serde_json::from_slice(prepared.body()).unwrap()
    }

    #[test]
    fn every_field_lands_where_apns_expects_it() {
        let mut custom = Map::new();
        custom.insert("order".into(), json!({"id": 42}));
        let mut aps_raw = Map::new();
        aps_raw.insert("interruption-level".into(), json!("time-sensitive"));
        let notification = Notification {
            topic: "com.example.app".into(),
            priority: Some(Priority::PowerConsiderate),
            expiration: Some(1_700_000_000),
            collapse_id: Some("score".into()),
            alert: Some(Alert {
                title: Some("Goal".into()),
                subtitle: Some("2-1".into()),
                body: Some("Late winner".into()),
            }),
            badge: Some(3),
            sound: Some("default".into()),
            category: Some("MATCH".into()),
            thread_id: Some("match-7".into()),
            content_available: true,
            mutable_content: true,
            aps_raw: Some(aps_raw),
            custom,
            ..Notification::default()
        };
        let prepared = notification.prepare().unwrap();
        assert_eq!(
            decode(&prepared),
            json!({
                "aps": {
                    "alert": {"title": "Goal", "subtitle": "2-1", "body": "Late winner"},
                    "badge": 3,
                    "sound": "default",
                    "category": "MATCH",
                    "thread-id": "match-7",
                    "content-available": 1,
                    "mutable-content": 1,
                    "interruption-level": "time-sensitive",
                },
                "order": {"id": 42},
            })
        );
        assert_eq!(prepared.topic, "com.example.app");
        assert_eq!(prepared.push_type_header, "alert");
        assert_eq!(prepared.priority.as_ref().unwrap(), "5");
        assert_eq!(prepared.expiration.as_ref().unwrap(), "1700000000");
        assert_eq!(prepared.collapse_id.as_ref().unwrap(), "score");
    }

    #[test]
    fn defaults_give_a_minimal_payload_and_no_optional_headers() {
        let prepared = Notification {
            topic: "com.example.app".into(),
            ..Notification::default()
        }
        .prepare()
        .unwrap();
        assert_eq!(prepared.body().as_ref(), br#"{"aps":{}}"#);
        assert!(prepared.priority.is_none());
        assert!(prepared.expiration.is_none());
        assert!(prepared.collapse_id.is_none());
    }

    fn with_body_of(
        push_type: PushType,
        body_len: usize,
    ) -> Result<PreparedNotification, PayloadError> {
        // `{"aps":{},"x":""}` is 17 bytes before the string.
        let mut custom = Map::new();
        custom.insert("x".into(), Value::String("a".repeat(body_len - 17)));
        let prepared = Notification {
            topic: "com.example.app".into(),
            push_type,
            custom,
            ..Notification::default()
        }
        .prepare();
        if let Ok(prepared) = &prepared {
            assert_eq!(prepared.body().len(), body_len);
        }
        prepared
    }

    #[test]
    fn size_limits_are_4096_and_5120_for_voip() {
        assert!(with_body_of(PushType::Alert, 4096).is_ok());
        let err = with_body_of(PushType::Alert, 4097).unwrap_err();
        assert_eq!(
            err.to_string(),
            "payload is 4097 bytes, above the 4096-byte limit for push type alert"
        );
        assert!(with_body_of(PushType::Voip, 5120).is_ok());
        let err = with_body_of(PushType::Voip, 5121).unwrap_err();
        assert_eq!(
            err,
            PayloadError::TooLarge {
                size: 5121,
                limit: 5120,
                push_type: PushType::Voip
            }
        );
        assert!(with_body_of(PushType::Background, 4097).is_err());
    }

    #[test]
    fn header_checks() {
        let base = Notification {
            topic: "com.example.app".into(),
            ..Notification::default()
        };
        let collapse = |id: &str| {
            Notification {
                collapse_id: Some(id.into()),
                ..base.clone()
            }
            .prepare()
        };
        assert!(collapse(&"c".repeat(64)).is_ok());
        assert_eq!(
            collapse(&"c".repeat(65)).unwrap_err(),
            PayloadError::CollapseIdTooLong(65)
        );
        assert_eq!(
            collapse("line\nbreak").unwrap_err(),
            PayloadError::BadCollapseId
        );
        let topic = |topic: &str| {
            Notification {
                topic: topic.into(),
                ..base.clone()
            }
            .prepare()
        };
        assert_eq!(topic("").unwrap_err(), PayloadError::BadTopic);
        assert_eq!(
            topic("bad\ttopic\u{7f}").unwrap_err(),
            PayloadError::BadTopic
        );
        let mut custom = Map::new();
        custom.insert("aps".into(), json!({}));
        assert_eq!(
            Notification {
                custom,
                ..base.clone()
            }
            .prepare()
            .unwrap_err(),
            PayloadError::CustomAps
        );
    }

    #[test]
    fn push_types_and_priorities_round_trip() {
        let names: Vec<_> = PushType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(
            names,
            [
                "alert",
                "background",
                "voip",
                "liveactivity",
                "complication",
                "fileprovider",
                "mdm",
                "location",
                "pushtotalk",
                "controls",
                "widgets"
            ]
        );
        for push_type in PushType::ALL {
            assert_eq!(push_type.as_str().parse::<PushType>(), Ok(push_type));
        }
        assert!("sms".parse::<PushType>().is_err());
        for (value, priority) in [
            (10, Priority::Immediate),
            (5, Priority::PowerConsiderate),
            (1, Priority::PowerSaving),
        ] {
            assert_eq!(Priority::from_u8(value), Ok(priority));
            assert_eq!(priority.header(), value.to_string().as_str());
        }
        assert_eq!(Priority::from_u8(7), Err(PayloadError::BadPriority(7)));
    }

    #[test]
    fn raw_payloads_must_carry_an_aps_object() {
        let base = Notification {
            topic: "com.example.app".into(),
            ..Notification::default()
        };
        let raw = Bytes::from_static(br#"{"aps":{"alert":"hi"},"k":1}"#);
        assert_eq!(base.prepare_with_payload(raw.clone()).unwrap().body(), &raw);
        let nested = Bytes::from_static(
            br#"{"k":{"aps":1},"aps":{"alert":{"body":"\u00e9"}},"l":[1,{"m":null}]}"#,
        );
        assert!(base.prepare_with_payload(nested).is_ok());
        for bad in [
            &b"[]"[..],
            b"{\"aps\":1}",
            b"{\"aps\":[]}",
            b"{\"aps\":\"x\"}",
            b"{\"k\":{\"aps\":{}}}",
            b"{\"aps\":{}} trailing",
            b"{\"aps\":{},}",
            b"not json",
            b"",
        ] {
            assert_eq!(
                base.prepare_with_payload(Bytes::copy_from_slice(bad))
                    .unwrap_err(),
                PayloadError::NotAnApsObject
            );
        }
    }

    #[test]
    fn debug_output_leaves_the_payload_out() {
        let notification = Notification {
            topic: "com.example.app".into(),
            alert: Some(Alert {
                body: Some("secret message".into()),
                ..Alert::default()
            }),
            ..Notification::default()
        };
        assert!(!format!("{notification:?}").contains("secret"));
        assert!(!format!("{:?}", notification.prepare().unwrap()).contains("secret"));
    }

    #[test]
    fn token_rule() {
        let hex64 = "0123456789abcdefABCDEF".repeat(3)[..64].to_owned();
        assert_eq!(validate_token(&hex64), Ok(()));
        assert_eq!(validate_token(&"a".repeat(200)), Ok(()));
        assert_eq!(validate_token(&"a".repeat(62)), Err(TokenError::Length(62)));
        assert_eq!(
            validate_token(&"a".repeat(202)),
            Err(TokenError::Length(202))
        );
        assert_eq!(validate_token(""), Err(TokenError::Length(0)));
        assert_eq!(
            validate_token(&"a".repeat(65)),
            Err(TokenError::OddLength(65))
        );
        let mut not_hex = "a".repeat(64);
        not_hex.replace_range(10..11, "g");
        assert_eq!(validate_token(&not_hex), Err(TokenError::NotHex(10)));
        // Error text never repeats the token.
        assert!(!TokenError::NotHex(10).to_string().contains('g'));
    }
}
