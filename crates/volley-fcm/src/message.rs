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

/// What a request body to a device starts with; the token follows.
const PREFIX: &[u8] = br#"{"message":{"token":""#;
/// What a request body to a topic starts with; the topic's name follows.
const TOPIC_PREFIX: &[u8] = br#"{"message":{"topic":""#;
/// What a request body to a condition starts with; the condition follows.
const CONDITION_PREFIX: &[u8] = br#"{"message":{"condition":""#;

/// The longest topic name [`Target::validate`] accepts, in bytes.
pub const MAX_TOPIC_LEN: usize = 900;
/// The most topics a condition may name (FCM's limit).
pub const MAX_CONDITION_TOPICS: usize = 5;

/// What the value stamped into each request names: a device, a topic or a condition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Target {
    /// A registration token (`message.token`).
    #[default]
    Token,
    /// A topic's name, without `/topics/` (`message.topic`).
    Topic,
    /// A condition over topics, as `'a' in topics && !('b' in topics)` (`message.condition`).
    Condition,
}

impl Target {
    /// The `message` field the value goes in.
    pub const fn field(self) -> &'static str {
        match self {
            Target::Token => "token",
            Target::Topic => "topic",
            Target::Condition => "condition",
        }
    }

    const fn prefix(self) -> &'static [u8] {
        match self {
            Target::Token => PREFIX,
            Target::Topic => TOPIC_PREFIX,
            Target::Condition => CONDITION_PREFIX,
        }
    }

    /// Checks a value for this target. Whatever passes needs no escaping in a JSON string.
    pub fn validate(self, value: &str) -> Result<(), TokenError> {
        match self {
            Target::Token => validate_token(value),
            Target::Topic => validate_topic(value),
            Target::Condition => validate_condition(value),
        }
    }
}

/// A topic name as FCM's HTTP v1 API wants it: `/topics/news` (the legacy spelling gorush
/// and the Admin SDKs accept) becomes `news`.
pub fn topic_name(raw: &str) -> &str {
    raw.strip_prefix("/topics/").unwrap_or(raw)
}

fn is_topic_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'%')
}

/// Checks a topic name (without `/topics/`): 1 to [`MAX_TOPIC_LEN`] bytes of
/// `[a-zA-Z0-9-_.~%]`, FCM's rule.
pub fn validate_topic(topic: &str) -> Result<(), TokenError> {
    if topic.is_empty() {
        return Err(TokenError::Empty);
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(TokenError::TooLong(topic.len()));
    }
    match topic.bytes().position(|b| !is_topic_byte(b)) {
        Some(position) => Err(TokenError::BadCharacter(position)),
        None => Ok(()),
    }
}

/// Checks a condition: `'name' in topics` terms joined by `&&` and `||`, negated by `!` and
/// grouped by parentheses, naming at most [`MAX_CONDITION_TOPICS`] topics.
pub fn validate_condition(condition: &str) -> Result<(), TokenError> {
    if condition.is_empty() {
        return Err(TokenError::Empty);
    }
    if condition.len() > MAX_TOPIC_LEN * MAX_CONDITION_TOPICS {
        return Err(TokenError::TooLong(condition.len()));
    }
    let mut parser = ConditionParser {
        text: condition.as_bytes(),
        at: 0,
        topics: 0,
    };
    parser.expression(0)?;
    parser.skip_spaces();
    if parser.at != parser.text.len() {
        return Err(TokenError::BadCondition(
            "unexpected text after the condition",
        ));
    }
    if parser.topics > MAX_CONDITION_TOPICS {
        return Err(TokenError::BadCondition(
            "a condition names at most 5 topics",
        ));
    }
    Ok(())
}

/// A recursive-descent reader of FCM conditions; only checks, builds nothing.
struct ConditionParser<'a> {
    text: &'a [u8],
    at: usize,
    topics: usize,
}

impl ConditionParser<'_> {
    fn skip_spaces(&mut self) {
        while self.text.get(self.at) == Some(&b' ') {
            self.at += 1;
        }
    }

    fn eat(&mut self, word: &[u8]) -> bool {
        self.skip_spaces();
        if self.text[self.at..].starts_with(word) {
            self.at += word.len();
            true
        } else {
            false
        }
    }

    fn expression(&mut self, depth: usize) -> Result<(), TokenError> {
        self.term(depth)?;
        while self.eat(b"&&") || self.eat(b"||") {
            self.term(depth)?;
        }
        Ok(())
    }

    fn term(&mut self, depth: usize) -> Result<(), TokenError> {
        if depth > 16 {
            return Err(TokenError::BadCondition("parentheses nest too deeply"));
        }
        if self.eat(b"!") {
            return self.term(depth + 1);
        }
        if self.eat(b"(") {
            self.expression(depth + 1)?;
            return if self.eat(b")") {
                Ok(())
            } else {
                Err(TokenError::BadCondition("a parenthesis is not closed"))
            };
        }
        if !self.eat(b"'") {
            return Err(TokenError::BadCondition(
                "expected 'topic' in topics, !, or a parenthesis",
            ));
        }
        let start = self.at;
        while self.text.get(self.at).copied().is_some_and(is_topic_byte) {
            self.at += 1;
        }
        if self.at == start || self.text.get(self.at) != Some(&b'\'') {
            return Err(TokenError::BadCondition(
                "a topic name in quotes is 1 or more of [a-zA-Z0-9-_.~%]",
            ));
        }
        self.at += 1;
        self.topics += 1;
        if !(self.eat(b"in ") && self.eat(b"topics")) {
            return Err(TokenError::BadCondition(
                "expected `in topics` after a topic",
            ));
        }
        Ok(())
    }
}

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
    /// Fields not modelled here, sent to FCM as given (FCM checks them).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Android delivery priority, sent in the spelling it was given: FCM's (`NORMAL`, `HIGH`) or
/// the Firebase Admin SDKs' and gorush's (`normal`, `high`), which FCM takes alike. Keeping
/// the spelling keeps a caller's `android` block byte for byte what they sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AndroidPriority {
    /// May be delayed to save battery.
    #[serde(rename = "NORMAL")]
    Normal,
    /// Delivered at once, may wake the device.
    #[serde(rename = "HIGH")]
    High,
    /// [`AndroidPriority::Normal`], spelled `normal`.
    #[serde(rename = "normal")]
    NormalLowercase,
    /// [`AndroidPriority::High`], spelled `high`.
    #[serde(rename = "high")]
    HighLowercase,
}

impl AndroidPriority {
    /// Whether this is high priority, however spelled.
    pub fn is_high(self) -> bool {
        matches!(self, AndroidPriority::High | AndroidPriority::HighLowercase)
    }
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
    /// Fields not modelled here, sent to FCM as given (FCM checks them).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
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
    /// Fields not modelled here, sent to FCM as given (FCM checks them).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
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
    /// Fields not modelled here, sent to FCM as given (FCM checks them).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
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
    /// Fields not modelled here, sent to FCM as given (FCM checks them).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
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
            // JSON does not tell 60 from 60.0; clients that keep numbers as floats send the
            // second.
            Float(f64),
            Text(String),
        }
        let whole = || {
            <D::Error as serde::de::Error>::custom("ttl must be whole seconds, as 60 or \"60s\"")
        };
        match Option::<Ttl>::deserialize(d)? {
            None => Ok(None),
            Some(Ttl::Seconds(secs)) => Ok(Some(secs)),
            Some(Ttl::Float(secs)) if secs.fract() == 0.0 && (0.0..1.8e19).contains(&secs) => {
                Ok(Some(secs as u64))
            }
            Some(Ttl::Float(_)) => Err(whole()),
            Some(Ttl::Text(text)) => text
                .strip_suffix('s')
                .unwrap_or(&text)
                .parse()
                .map(Some)
                .map_err(|_| whole()),
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
    /// What the value stamped into each request names; its prefix starts the body.
    target: Target,
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
            target: Target::Token,
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
        let prefix = self.target.prefix();
        let mut body = BytesMut::with_capacity(prefix.len() + token.len() + self.suffix.len());
        body.put_slice(prefix);
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
        self.target.prefix().len() + self.suffix.len()
    }

    /// The same message sent to a topic or a condition instead of tokens: each request then
    /// stamps in the target's value ([`Target::validate`] it first).
    pub fn to(self, target: Target) -> Result<PreparedMessage, MessageError> {
        let prepared = PreparedMessage {
            target,
            suffix: self.suffix,
        };
        let size = prepared.size_without_token();
        if size > MAX_PAYLOAD_BYTES {
            return Err(MessageError::TooLarge { size });
        }
        Ok(prepared)
    }

    /// What the value stamped into each request names.
    pub fn target(&self) -> Target {
        self.target
    }
}

impl PreparedMessage {
    /// The body around the token, for carrying a prepared message between nodes: every
    /// request body is `prefix + token + suffix`.
    pub fn parts(&self) -> (&'static [u8], &Bytes) {
        (self.target.prefix(), &self.suffix)
    }

    /// Rebuilds a message from [`PreparedMessage::parts`], checking the prefix and the size.
    pub fn from_parts(prefix: &[u8], suffix: Bytes) -> Result<PreparedMessage, MessageError> {
        let target = [Target::Token, Target::Topic, Target::Condition]
            .into_iter()
            .find(|target| target.prefix() == prefix);
        let Some(target) = target else {
            return Err(MessageError::NotAnObject);
        };
        if !suffix.starts_with(b"\"") || !suffix.ends_with(b"}}") {
            return Err(MessageError::NotAnObject);
        }
        let prepared = PreparedMessage { target, suffix };
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
    /// The token holds a character outside `[A-Za-z0-9_:.-]` (a topic: `[a-zA-Z0-9-_.~%]`).
    #[error("forbidden character at byte {0}")]
    BadCharacter(usize),
    /// A condition that does not parse.
    #[error("not a condition: {0}")]
    BadCondition(&'static str),
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
                ..Default::default()
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
                ..Default::default()
            }),
            apns: Some(ApnsConfig {
                headers: BTreeMap::from([("apns-priority".into(), "10".into())]),
                payload: Some(json!({"aps": {"badge": 1}})),
                ..Default::default()
            }),
            webpush: Some(WebpushConfig {
                headers: BTreeMap::from([("Urgency".into(), "high".into())]),
                data: BTreeMap::new(),
                ..Default::default()
            }),
            extra: Map::from_iter([("fcm_options".into(), json!({"analytics_label": "l"}))]),
        }
    }

    #[test]
    fn fields_not_modelled_reach_fcm_unchanged() {
        let given = json!({
            "notification": {"title": "t", "future_field": 1},
            "android": {
                "priority": "high",
                "direct_boot_ok": true,
                "restricted_package_name": "com.example",
                "data": {"a": "b"},
                "fcm_options": {"analytics_label": "x"},
                "notification": {"visibility": "PRIVATE", "notification_count": 3, "sound": "s"}
            },
            "apns": {"headers": {"apns-priority": "5"}, "payload": {"aps": {}}, "fcm_options": {"image": "i"}, "live_activity_token": "lat"},
            "webpush": {"headers": {"TTL": "60"}, "notification": {"title": "w", "actions": []}, "fcm_options": {"link": "https://example.com"}},
            "fcm_options": {"analytics_label": "l"}
        });
        let message: FcmMessage = serde_json::from_value(given.clone()).unwrap();
        let prepared = PreparedMessage::new(&message).unwrap();
        let body: Value = serde_json::from_slice(&prepared.body_for("t:1")).unwrap();
        let mut expected = given;
        expected["token"] = json!("t:1");
        assert_eq!(body["message"], expected);
    }

    #[test]
    fn topics_and_conditions_are_stamped_into_their_own_field() {
        let message = FcmMessage {
            data: BTreeMap::from([("k".into(), "v".into())]),
            ..FcmMessage::default()
        };
        let prepared = PreparedMessage::new(&message).unwrap();
        assert_eq!(prepared.target(), Target::Token);
        let topic = prepared.clone().to(Target::Topic).unwrap();
        assert_eq!(topic.target(), Target::Topic);
        let body: Value = serde_json::from_slice(&topic.body_for("news")).unwrap();
        assert_eq!(
            body,
            json!({"message": {"topic": "news", "data": {"k": "v"}}})
        );
        let condition = prepared.to(Target::Condition).unwrap();
        let (prefix, suffix) = condition.parts();
        let rebuilt = PreparedMessage::from_parts(prefix, suffix.clone()).unwrap();
        assert_eq!(rebuilt, condition);
        let body: Value =
            serde_json::from_slice(&rebuilt.body_for("'a' in topics && !('b' in topics)")).unwrap();
        assert_eq!(
            body["message"]["condition"],
            "'a' in topics && !('b' in topics)"
        );
    }

    #[test]
    fn topic_and_condition_rules() {
        assert_eq!(topic_name("/topics/news"), "news");
        assert_eq!(topic_name("news"), "news");
        assert!(validate_topic("news-1_a.b~c%20").is_ok());
        assert!(validate_topic("").is_err());
        assert!(validate_topic("a/b").is_err());
        assert!(validate_topic("a\"b").is_err());
        for good in [
            "'a' in topics",
            "'a' in topics && 'b' in topics",
            "!('a' in topics || 'b' in topics) && 'c' in topics",
            "('a' in topics)||('b' in topics)",
        ] {
            assert_eq!(validate_condition(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "a in topics",
            "'a' in topics &&",
            "('a' in topics",
            "'a' in topics 'b' in topics",
            "'a\"' in topics",
            "'a' in topics || 'b' in topics || 'c' in topics || 'd' in topics || 'e' in topics || 'f' in topics",
        ] {
            assert!(validate_condition(bad).is_err(), "{bad}");
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
