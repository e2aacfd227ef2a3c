//! Web Push in the native API: `targets.webpush` subscriptions, read as browsers give them
//! (`PushSubscription.toJSON()`), and the notification rendered once for all of them (the
//! agent encrypts it per subscription).

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use volley_contracts::{TokenList, TokenListBuilder, WebPushRender};

use crate::error::{ApiError, Code};
use crate::render::{now_secs, PriorityInput, Spec, MAX_TTL_SECONDS};
use crate::tokens::Rejection;

/// The largest message one notification carries, before encryption: one `aes128gcm` record
/// of 4096 bytes, the most every push service must accept.
pub(crate) const MAX_PAYLOAD: usize = volley_webpush::ece::MAX_PLAINTEXT;

/// `TTL` when the request gives none: 28 days, as long as push services keep a message.
const DEFAULT_TTL: u64 = MAX_TTL_SECONDS;

/// The longest `Topic` (RFC 8030 section 5.4), in URL-safe base64 characters.
const MAX_TOPIC: usize = 32;

/// One subscription as `PushSubscription.toJSON()` gives it (its schema is the document's
/// `WebPushSubscription`, written out in `crate::openapi`). The strings borrow from the body
/// unless they hold escapes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SubscriptionJson<'a> {
    /// The push service's URL for this browser (https).
    #[serde(borrow)]
    endpoint: Cow<'a, str>,
    /// The browser's keys for this subscription.
    #[serde(borrow)]
    keys: KeysJson<'a>,
    /// When the browser says the subscription expires (ms since the epoch, or null); read
    /// and not used.
    #[serde(default)]
    #[allow(dead_code)]
    expiration_time: Option<f64>,
}

/// A subscription's keys (URL-safe base64).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysJson<'a> {
    /// The browser's P-256 public key: 65 bytes, uncompressed.
    #[serde(borrow)]
    p256dh: Cow<'a, str>,
    /// The authentication secret: 16 bytes.
    #[serde(borrow)]
    auth: Cow<'a, str>,
}

/// `targets.webpush`: the subscriptions that pass [`volley_webpush::subscription::encode`],
/// one token each, and the others by index with the reason (never the endpoint or a key).
/// An element that is not a subscription object is an error naming its index.
#[derive(Default)]
pub(crate) struct Subscriptions {
    pub list: TokenList,
    pub rejected: Vec<Rejection>,
    given: bool,
}

impl Subscriptions {
    /// Whether the array had any element, well-formed or not.
    pub fn given(&self) -> bool {
        self.given
    }
}

impl<'de> Deserialize<'de> for Subscriptions {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(SubscriptionsVisitor)
    }
}

struct SubscriptionsVisitor;

impl<'de> Visitor<'de> for SubscriptionsVisitor {
    type Value = Subscriptions;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "an array of web push subscriptions ({\"endpoint\": \"https://…\", \"keys\": \
             {\"p256dh\": \"…\", \"auth\": \"…\"}})",
        )
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Subscriptions, A::Error> {
        let mut builder = TokenListBuilder::default();
        let mut subscriptions = Subscriptions::default();
        let mut index = 0;
        // One buffer for every subscription's token, copied into the list's.
        let mut token = String::new();
        while let Some(given) = seq.next_element::<SubscriptionJson<'de>>()? {
            subscriptions.given = true;
            match volley_webpush::subscription::encode_into(
                &mut token,
                &given.endpoint,
                &given.keys.p256dh,
                &given.keys.auth,
            ) {
                Ok(()) => builder.push(&token),
                Err(error) => subscriptions.rejected.push((index, error.to_string())),
            }
            index += 1;
        }
        subscriptions.list = builder.finish();
        Ok(subscriptions)
    }
}

/// `webpush`: what only Web Push takes.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebPushOptions {
    /// What the browser's service worker receives (`event.data`): a JSON object that the
    /// typed fields are written over (`title`, `body`, `image`, `data`, and `collapse_id` as
    /// `tag`), or a string sent as it is. At most 3993 bytes.
    #[schema(value_type = Option<crate::openapi::WebPushPayload>)]
    payload: Option<Value>,
    /// `TTL`: seconds the push service keeps the message for an offline browser (default:
    /// the request's `ttl`, else until `expiration`, else 28 days; at most 28 days).
    #[serde(default, deserialize_with = "crate::whole::option")]
    #[schema(value_type = Option<crate::openapi::Ttl>)]
    ttl: Option<u64>,
    /// `Urgency`: `very-low`, `low`, `normal` or `high` (default: from `priority`).
    #[schema(value_type = Option<crate::openapi::WebPushUrgency>)]
    urgency: Option<String>,
    /// `Topic`: a later message with the same topic replaces this one while it waits; 1 to
    /// 32 characters of URL-safe base64 (default: `collapse_id` when it is such).
    #[schema(value_type = Option<crate::openapi::WebPushTopic>)]
    topic: Option<String>,
}

/// Checks the `webpush` options, whether or not the job has subscriptions: a field is refused
/// or not whatever the request's targets.
pub(crate) fn check(spec: &Spec) -> Result<(), ApiError> {
    let Some(options) = &spec.webpush_raw else {
        return Ok(());
    };
    if !matches!(
        options.payload,
        None | Some(Value::String(_) | Value::Object(_))
    ) {
        return Err(ApiError::new(
            Code::InvalidArgument,
            "webpush.payload must be a json object or a string",
        )
        .field("webpush.payload"));
    }
    if let Some(ttl) = options.ttl.filter(|ttl| *ttl > MAX_TTL_SECONDS) {
        return Err(ApiError::new(
            Code::InvalidArgument,
            format!("webpush.ttl is {ttl} s, above the 28-day maximum of {MAX_TTL_SECONDS} s"),
        )
        .field("webpush.ttl"));
    }
    if let Some(urgency) = &options.urgency {
        if !matches!(urgency.as_str(), "very-low" | "low" | "normal" | "high") {
            return Err(ApiError::new(
                Code::InvalidArgument,
                "webpush.urgency must be very-low, low, normal or high",
            )
            .field("webpush.urgency"));
        }
    }
    if options
        .topic
        .as_deref()
        .is_some_and(|topic| !is_topic(topic))
    {
        return Err(ApiError::new(
            Code::InvalidArgument,
            format!(
                "webpush.topic must be 1 to {MAX_TOPIC} characters of URL-safe base64 \
                 (A-Z, a-z, 0-9, - and _)"
            ),
        )
        .field("webpush.topic"));
    }
    Ok(())
}

/// Renders the notification for Web Push once: the message and its header values. The
/// options were checked with the other fields ([`check`], from `render::check_common`).
pub(crate) fn render(spec: &Spec) -> Result<WebPushRender, ApiError> {
    let options = spec.webpush_raw.as_ref();
    let default = WebPushOptions::default();
    let options = options.unwrap_or(&default);
    let payload = match &options.payload {
        Some(Value::String(text)) => Bytes::from(text.clone()),
        Some(Value::Object(map)) => message(spec, map.clone()),
        _ => message(spec, Map::new()),
    };
    if payload.len() > MAX_PAYLOAD {
        return Err(ApiError::new(
            Code::PayloadTooLarge,
            format!(
                "the web push message is {} bytes, above the {MAX_PAYLOAD}-byte limit (one \
                 4096-byte encrypted record)",
                payload.len()
            ),
        )
        .field("targets.webpush"));
    }
    let ttl = match (options.ttl, spec.ttl, spec.expiration) {
        (Some(ttl), _, _) | (None, Some(ttl), _) => ttl,
        (None, None, Some(at)) => at.saturating_sub(now_secs()).min(MAX_TTL_SECONDS),
        (None, None, None) => DEFAULT_TTL,
    };
    let urgency = match &options.urgency {
        Some(urgency) => Some(urgency.clone()),
        None => spec.priority.as_ref().map(|priority| {
            match priority {
                PriorityInput::Text(text) if text == "high" => "high",
                PriorityInput::Number(10) => "high",
                PriorityInput::Number(1) => "low",
                PriorityInput::Text(_) | PriorityInput::Number(_) => "normal",
            }
            .to_owned()
        }),
    };
    let topic = match &options.topic {
        Some(topic) => Some(topic.clone()),
        None => spec.collapse_id.clone().filter(|id| is_topic(id)),
    };
    Ok(WebPushRender {
        payload,
        ttl: ttl as u32,
        urgency,
        topic,
    })
}

/// The message as a JSON object: the caller's `webpush.payload` with the typed fields over it.
fn message(spec: &Spec, mut map: Map<String, Value>) -> Bytes {
    for (key, value) in [
        ("title", &spec.title),
        ("body", &spec.body),
        ("image", &spec.image),
        ("tag", &spec.collapse_id),
    ] {
        if let Some(value) = value {
            map.insert(key.to_owned(), Value::String(value.clone()));
        }
    }
    if !spec.data.is_empty() {
        map.insert("data".to_owned(), Value::Object(spec.data.clone()));
    }
    Bytes::from(serde_json::to_vec(&Value::Object(map)).expect("a json value always serialises"))
}

fn is_topic(topic: &str) -> bool {
    (1..=MAX_TOPIC).contains(&topic.len())
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            title: Some("Hi".into()),
            body: Some("there".into()),
            collapse_id: Some("news-1".into()),
            ..Spec::default()
        }
    }

    #[test]
    fn the_typed_fields_make_the_message() {
        let rendered = render(&spec()).unwrap();
        let message: Value = serde_json::from_slice(&rendered.payload).unwrap();
        assert_eq!(
            message,
            serde_json::json!({"title": "Hi", "body": "there", "tag": "news-1"})
        );
        assert_eq!(rendered.ttl as u64, DEFAULT_TTL);
        assert_eq!(rendered.topic.as_deref(), Some("news-1"));
        assert_eq!(rendered.urgency, None);
    }

    #[test]
    fn a_string_payload_is_sent_as_it_is_and_options_are_checked() {
        let mut spec = spec();
        spec.webpush_raw = Some(WebPushOptions {
            payload: Some(Value::String("raw bytes".into())),
            ttl: Some(60),
            urgency: Some("very-low".into()),
            topic: Some("t_1".into()),
        });
        let rendered = render(&spec).unwrap();
        assert_eq!(&rendered.payload[..], b"raw bytes");
        assert_eq!(
            (
                rendered.ttl,
                rendered.urgency.as_deref(),
                rendered.topic.as_deref()
            ),
            (60, Some("very-low"), Some("t_1"))
        );
        for (options, field) in [
            (
                WebPushOptions {
                    urgency: Some("urgent".into()),
                    ..WebPushOptions::default()
                },
                "webpush.urgency",
            ),
            (
                WebPushOptions {
                    topic: Some("has space".into()),
                    ..WebPushOptions::default()
                },
                "webpush.topic",
            ),
            (
                WebPushOptions {
                    payload: Some(Value::Bool(true)),
                    ..WebPushOptions::default()
                },
                "webpush.payload",
            ),
            (
                WebPushOptions {
                    ttl: Some(MAX_TTL_SECONDS + 1),
                    ..WebPushOptions::default()
                },
                "webpush.ttl",
            ),
        ] {
            let spec = Spec {
                webpush_raw: Some(options),
                ..Spec::default()
            };
            let error = check(&spec).unwrap_err();
            assert_eq!(error.field.as_deref(), Some(field), "{}", error.message);
        }
    }

    #[test]
    fn a_message_above_one_record_is_refused() {
        let spec = Spec {
            body: Some("x".repeat(MAX_PAYLOAD)),
            ..Spec::default()
        };
        let error = render(&spec).unwrap_err();
        assert_eq!(error.code, Code::PayloadTooLarge);
    }

    #[test]
    fn priority_gives_the_urgency() {
        for (priority, urgency) in [
            (PriorityInput::Text("high".into()), "high"),
            (PriorityInput::Text("normal".into()), "normal"),
            (PriorityInput::Number(10), "high"),
            (PriorityInput::Number(5), "normal"),
            (PriorityInput::Number(1), "low"),
        ] {
            let spec = Spec {
                priority: Some(priority),
                ..Spec::default()
            };
            assert_eq!(render(&spec).unwrap().urgency.as_deref(), Some(urgency));
        }
    }
}
