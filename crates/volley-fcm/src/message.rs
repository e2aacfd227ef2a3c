//! FCM messages, serialised once and stamped with each token.
//!
//! A broadcast sends the same message to many tokens, one request each (FCM HTTP v1 has no
//! multicast). [`PreparedMessage`] serialises the message once; every request body is then
//! `{"message":{"token":"` + token + the serialised rest, copied into one buffer of exact
//! size: one allocation per request and no JSON work.

use std::collections::BTreeMap;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// The largest message FCM accepts, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 4096;

/// The longest time FCM stores an Android message, in seconds (28 days).
pub const MAX_TTL_SECONDS: u64 = 28 * 24 * 3600;

/// The longest registration token [`validate_token`] accepts, in bytes.
pub const MAX_TOKEN_LEN: usize = 4096;

/// What every request body starts with; the token follows.
const PREFIX: &[u8] = br#"{"message":{"token":""#;

/// A message to send to FCM, without its target (the token is given per request).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FcmMessage {
    /// The notification every platform displays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification: Option<Notification>,
    /// Custom key/value data handed to the app.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    /// Android options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub android: Option<AndroidConfig>,
    /// Options passed to APNs for iOS devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apns: Option<ApnsConfig>,
    /// Web push options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webpush: Option<WebpushConfig>,
    /// Escape hatch: further `message` fields, sent as given (e.g. `fcm_options`).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The cross-platform notification.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Body text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// URL of an image to show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// Android delivery priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AndroidPriority {
    /// May be delayed to save battery.
    Normal,
    /// Delivered at once, may wake the device.
    High,
}

/// Android options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AndroidConfig {
    /// Delivery priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<AndroidPriority>,
    /// How long FCM keeps the message for an offline device, in seconds (at most 28 days).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "ttl::serialize",
        deserialize_with = "ttl::deserialize"
    )]
    pub ttl: Option<u64>,
    /// Messages with the same key replace each other while the device is offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collapse_key: Option<String>,
    /// Android-specific notification fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notification: Option<AndroidNotification>,
}

/// Android-specific notification fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AndroidNotification {
    /// Title, overriding the common one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Body, overriding the common one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Drawable resource name of the icon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    /// Icon colour, `#rrggbb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<String>,
    /// Sound to play.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sound: Option<String>,
    /// Notifications with the same tag replace each other in the drawer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Activity to open on tap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub click_action: Option<String>,
    /// Notification channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<String>,
    /// URL of an image to show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// Options passed to APNs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApnsConfig {
    /// APNs request headers (`apns-priority`, `apns-collapse-id`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The APNs payload (with its `aps` dictionary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

/// Web push options.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebpushConfig {
    /// Web push headers (`TTL`, `Urgency`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Key/value data, overriding the common data.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
}

/// FCM's `ttl` is a protobuf Duration, written as a string of seconds with an `s` suffix.
mod ttl {
    use super::*;

    pub(super) fn serialize<S: Serializer>(ttl: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match ttl {
            Some(secs) => s.collect_str(&format_args!("{secs}s")),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Ttl {
            Seconds(u64),
            Text(String),
        }
        match Option::<Ttl>::deserialize(d)? {
            None => Ok(None),
            Some(Ttl::Seconds(secs)) => Ok(Some(secs)),
            Some(Ttl::Text(text)) => text
                .strip_suffix('s')
                .unwrap_or(&text)
                .parse()
                .map(Some)
                .map_err(|_| {
                    serde::de::Error::custom("ttl must be whole seconds, as 60 or \"60s\"")
                }),
        }
    }
}

/// Why a message cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// `android.ttl` is above 28 days.
    #[error("android.ttl is {seconds} s, above the 28-day maximum of {MAX_TTL_SECONDS} s")]
    TtlTooLong {
        /// The ttl given.
        seconds: u64,
    },
    /// A data key FCM reserves.
    #[error("data key {0:?} is reserved (from, message_type, google*, gcm*)")]
    ReservedDataKey(String),
    /// The serialised message is too large.
    #[error("message is {size} bytes without the token, above the {MAX_PAYLOAD_BYTES}-byte limit")]
    TooLarge {
        /// Its size as measured by [`PreparedMessage::size_without_token`].
        size: usize,
    },
    /// The message names its own target; the token is given per request.
    #[error("message must not contain `{0}`: the token is given per request")]
    HasTarget(&'static str),
    /// A raw message that is not a JSON object.
    #[error("raw message must be a json object")]
    NotAnObject,
}

impl FcmMessage {
    /// Checks what FCM would refuse for every token alike, before anything is sent.
    pub fn validate(&self) -> Result<(), MessageError> {
        if let Some(seconds) = self.android.as_ref().and_then(|a| a.ttl) {
            if seconds > MAX_TTL_SECONDS {
                return Err(MessageError::TtlTooLong { seconds });
            }
        }
        let webpush_data = self.webpush.iter().flat_map(|w| w.data.keys());
        for key in self.data.keys().chain(webpush_data) {
            if is_reserved_data_key(key) {
                return Err(MessageError::ReservedDataKey(key.clone()));
            }
        }
        Ok(())
    }
}

/// FCM refuses data keys `from`, `message_type`, and any starting with `google` or `gcm`.
fn is_reserved_data_key(key: &str) -> bool {
    key == "from" || key == "message_type" || key.starts_with("google") || key.starts_with("gcm")
}

/// A message serialised once, ready to be stamped with tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct PreparedMessage {
    /// Everything after the token: `"}}` or `",<fields>}}`.
    suffix: Bytes,
}

impl PreparedMessage {
    /// Validates and serialises a message.
    pub fn new(message: &FcmMessage) -> Result<PreparedMessage, MessageError> {
        message.validate()?;
        let value = serde_json::to_value(message).map_err(|_| MessageError::NotAnObject)?;
        PreparedMessage::from_json(value)
    }

    /// The escape hatch: a `message` object written by hand (everything but the token),
    /// sent as given after checking it is an object without a target, its size and its ttl.
    pub fn raw(message: Value) -> Result<PreparedMessage, MessageError> {
        if let Some(seconds) = message
            .pointer("/android/ttl")
            .and_then(|ttl| ttl.as_str())
            .and_then(|ttl| ttl.strip_suffix('s'))
            .and_then(|ttl| ttl.parse::<f64>().ok())
        {
            if seconds > MAX_TTL_SECONDS as f64 {
                return Err(MessageError::TtlTooLong {
                    seconds: seconds as u64,
                });
            }
        }
        PreparedMessage::from_json(message)
    }

    fn from_json(message: Value) -> Result<PreparedMessage, MessageError> {
        let Value::Object(fields) = message else {
            return Err(MessageError::NotAnObject);
        };
        for target in ["token", "topic", "condition"] {
            if fields.contains_key(target) {
                return Err(MessageError::HasTarget(target));
            }
        }
        let object = Value::Object(fields).to_string();
        // `object` is `{}` or `{"k":...}`: its tail after `{` becomes the rest of the message.
        let rest = &object[1..];
        let mut suffix = Vec::with_capacity(rest.len() + 3);
        suffix.push(b'"');
        if rest != "}" {
            suffix.push(b',');
        }
        suffix.extend_from_slice(rest.as_bytes());
        suffix.push(b'}');
        let prepared = PreparedMessage {
            suffix: Bytes::from(suffix),
        };
        let size = prepared.size_without_token();
        if size > MAX_PAYLOAD_BYTES {
            return Err(MessageError::TooLarge { size });
        }
        Ok(prepared)
    }

    /// The request body for one token.
    ///
    /// The token is copied in verbatim: callers check it with [`validate_token`] first, whose
    /// character set needs no JSON escaping (the client does).
    pub fn body_for(&self, token: &str) -> Bytes {
        let mut body = BytesMut::with_capacity(PREFIX.len() + token.len() + self.suffix.len());
        body.put_slice(PREFIX);
        body.put_slice(token.as_bytes());
        body.put_slice(&self.suffix);
        body.freeze()
    }

    /// The size checked against [`MAX_PAYLOAD_BYTES`]: the whole request body with an empty
    /// token, i.e. the JSON envelope `{"message":{"token":"",...}}` included.
    ///
    /// This counts more than FCM does (FCM counts the message's content, not the envelope or
    /// the token), so a message accepted here is never refused by FCM for its size.
    pub fn size_without_token(&self) -> usize {
        PREFIX.len() + self.suffix.len()
    }
}

impl PreparedMessage {
    /// The body around the token, for carrying a prepared message between nodes: every
    /// request body is `prefix + token + suffix`.
    pub fn parts(&self) -> (&'static [u8], &Bytes) {
        (PREFIX, &self.suffix)
    }

    /// Rebuilds a message from [`PreparedMessage::parts`], checking the prefix and the size.
    pub fn from_parts(prefix: &[u8], suffix: Bytes) -> Result<PreparedMessage, MessageError> {
        if prefix != PREFIX || !suffix.starts_with(b"\"") || !suffix.ends_with(b"}}") {
            return Err(MessageError::NotAnObject);
        }
        let prepared = PreparedMessage { suffix };
        let size = prepared.size_without_token();
        if size > MAX_PAYLOAD_BYTES {
            return Err(MessageError::TooLarge { size });
        }
        Ok(prepared)
    }
}

impl fmt::Debug for PreparedMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The payload may be personal data: show its size only.
        f.debug_struct("PreparedMessage")
            .field("size_without_token", &self.size_without_token())
            .finish()
    }
}

/// Why a string is not an FCM registration token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is empty.
    #[error("token is empty")]
    Empty,
    /// The token is longer than [`MAX_TOKEN_LEN`].
    #[error("token is {0} bytes, above {MAX_TOKEN_LEN}")]
    TooLong(usize),
    /// The token holds a character outside `[A-Za-z0-9_:.-]`.
    #[error("token has a forbidden character at byte {0}")]
    BadCharacter(usize),
}

/// Checks that `token` looks like an FCM registration token.
///
/// The rule: 1 to [`MAX_TOKEN_LEN`] bytes, each in `[A-Za-z0-9_:.-]`. Real tokens are about
/// 150–180 characters of base64url with a `:` (e.g. `<instance id>:APA91b...`); FCM does not
/// publish a grammar, so this is deliberately loose about length and strict about
/// characters. The character set is what makes [`PreparedMessage::body_for`] safe: no
/// character in it needs escaping in a JSON string, so a token cannot change the message.
pub fn validate_token(token: &str) -> Result<(), TokenError> {
    if token.is_empty() {
        return Err(TokenError::Empty);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong(token.len()));
    }
    match token
        .bytes()
        .position(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'-' | b'.')))
    {
        Some(position) => Err(TokenError::BadCharacter(position)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn full_message() -> FcmMessage {
        FcmMessage {
            notification: Some(Notification {
                title: Some("Hi \"there\"".into()),
                body: Some("line\nbreak é".into()),
                image: None,
            }),
            data: BTreeMap::from([("k".into(), "v".into())]),
            android: Some(AndroidConfig {
                priority: Some(AndroidPriority::High),
                ttl: Some(3600),
                collapse_key: Some("c".into()),
                notification: Some(AndroidNotification {
                    channel_id: Some("news".into()),
                    ..Default::default()
                }),
            }),
            apns: Some(ApnsConfig {
                headers: BTreeMap::from([("apns-priority".into(), "10".into())]),
                payload: Some(json!({"aps": {"badge": 1}})),
            }),
            webpush: Some(WebpushConfig {
                headers: BTreeMap::from([("Urgency".into(), "high".into())]),
                data: BTreeMap::new(),
            }),
            extra: Map::from_iter([("fcm_options".into(), json!({"analytics_label": "l"}))]),
        }
    }

    #[test]
    fn the_body_is_the_message_with_the_token_spliced_in() {
        let message = full_message();
        let prepared = PreparedMessage::new(&message).unwrap();
        let body = prepared.body_for("tok:en-1_2.3");
        let parsed: Value = serde_json::from_slice(&body).unwrap();
        let mut expected = serde_json::to_value(&message).unwrap();
        expected["token"] = json!("tok:en-1_2.3");
        assert_eq!(parsed, json!({ "message": expected }));
        assert_eq!(parsed["message"]["android"]["ttl"], json!("3600s"));
        assert_eq!(parsed["message"]["android"]["priority"], json!("HIGH"));
        assert_eq!(
            body.len(),
            prepared.size_without_token() + "tok:en-1_2.3".len()
        );
    }

    #[test]
    fn an_empty_message_still_makes_valid_json() {
        let prepared = PreparedMessage::new(&FcmMessage::default()).unwrap();
        assert_eq!(&prepared.body_for("t")[..], br#"{"message":{"token":"t"}}"#);
    }

    #[test]
    fn messages_deserialise_with_either_ttl_form() {
        for ttl in [json!(60), json!("60s")] {
            let m: FcmMessage = serde_json::from_value(json!({"android": {"ttl": ttl}})).unwrap();
            assert_eq!(m.android.unwrap().ttl, Some(60));
        }
        let m: FcmMessage =
            serde_json::from_value(json!({"data": {"a": "b"}, "fcm_options": {}})).unwrap();
        assert!(m.extra.contains_key("fcm_options"));
    }

    #[test]
    fn validation_refuses_what_fcm_would() {
        let ttl = |secs| FcmMessage {
            android: Some(AndroidConfig {
                ttl: Some(secs),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(PreparedMessage::new(&ttl(MAX_TTL_SECONDS)).is_ok());
        assert_eq!(
            PreparedMessage::new(&ttl(MAX_TTL_SECONDS + 1)),
            Err(MessageError::TtlTooLong {
                seconds: MAX_TTL_SECONDS + 1
            })
        );
        for key in ["from", "message_type", "google.x", "gcm_y"] {
            let m = FcmMessage {
                data: BTreeMap::from([(key.into(), "v".into())]),
                ..Default::default()
            };
            assert!(matches!(
                PreparedMessage::new(&m),
                Err(MessageError::ReservedDataKey(_))
            ));
        }
        for target in ["token", "topic", "condition"] {
            let m = FcmMessage {
                extra: Map::from_iter([(target.into(), json!("x"))]),
                ..Default::default()
            };
            assert_eq!(
                PreparedMessage::new(&m),
                Err(MessageError::HasTarget(target))
            );
        }
        assert_eq!(
            PreparedMessage::raw(json!([1])),
            Err(MessageError::NotAnObject)
        );
        assert!(matches!(
            PreparedMessage::raw(json!({"android": {"ttl": "2419201s"}})),
            Err(MessageError::TtlTooLong { .. })
        ));
    }

    #[test]
    fn the_size_limit_counts_the_envelope_without_the_token() {
        // Fill `data` so that the body without a token is exactly the limit, then one more.
        let base = PreparedMessage::new(&FcmMessage {
            data: BTreeMap::from([("k".into(), String::new())]),
            ..Default::default()
        })
        .unwrap()
        .size_without_token();
        let with_value = |len: usize| FcmMessage {
            data: BTreeMap::from([("k".into(), "x".repeat(len))]),
            ..Default::default()
        };
        let fits = PreparedMessage::new(&with_value(MAX_PAYLOAD_BYTES - base)).unwrap();
        assert_eq!(fits.size_without_token(), MAX_PAYLOAD_BYTES);
        assert_eq!(
            PreparedMessage::new(&with_value(MAX_PAYLOAD_BYTES - base + 1)),
            Err(MessageError::TooLarge {
                size: MAX_PAYLOAD_BYTES + 1
            })
        );
    }

    #[test]
    fn debug_does_not_show_the_payload() {
        let prepared = PreparedMessage::new(&full_message()).unwrap();
        assert!(!format!("{prepared:?}").contains("there"));
    }

    #[test]
    fn token_rule_table() {
        let long = "a".repeat(MAX_TOKEN_LEN);
        let too_long = "a".repeat(MAX_TOKEN_LEN + 1);
        let cases: &[(&str, Result<(), TokenError>)] = &[
            ("", Err(TokenError::Empty)),
            ("abc", Ok(())),
            ("dXk1:APA91bH-x_y.z", Ok(())),
            (&long, Ok(())),
            (&too_long, Err(TokenError::TooLong(MAX_TOKEN_LEN + 1))),
            ("ab\"c", Err(TokenError::BadCharacter(2))),
            ("a b", Err(TokenError::BadCharacter(1))),
            ("a\\", Err(TokenError::BadCharacter(1))),
            ("é", Err(TokenError::BadCharacter(0))),
            ("a/b", Err(TokenError::BadCharacter(1))),
        ];
        for (token, expected) in cases {
            assert_eq!(validate_token(token), *expected, "{token:?}");
        }
    }

    proptest! {
        #[test]
        fn any_valid_token_yields_json_naming_exactly_that_token(
            token in "[A-Za-z0-9_:.-]{1,300}",
            title in ".{0,50}",
            key in "[a-f]{1,8}",
            value in ".{0,50}",
        ) {
            prop_assert!(validate_token(&token).is_ok());
            let message = FcmMessage {
                notification: Some(Notification { title: Some(title), ..Default::default() }),
                data: BTreeMap::from([(key, value)]),
                ..Default::default()
            };
            let body = PreparedMessage::new(&message).unwrap().body_for(&token);
            let parsed: Value = serde_json::from_slice(&body).unwrap();
            prop_assert_eq!(&parsed["message"]["token"], &json!(token));
            prop_assert_eq!(parsed["message"].as_object().unwrap().len(), 3);
        }

        #[test]
        fn tokens_that_pass_need_no_json_escaping(token in "\\PC{0,40}") {
            if validate_token(&token).is_ok() {
                prop_assert_eq!(serde_json::to_string(&token).unwrap(), format!("\"{token}\""));
            }
        }
    }
}
