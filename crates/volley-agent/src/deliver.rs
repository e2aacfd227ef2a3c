//! Delivering one chunk: many concurrent sends, retries with back-off, one report.

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use rand::Rng;
use volley_contracts::{
    ApnsRender, ChunkFailure, ChunkReport, ErrorCode, FcmRender, TokenList, WireError,
};
use volley_provider::Outcome;

/// How transient failures are retried within a chunk.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per notification, the first included.
    pub max_attempts: u32,
    /// The first back-off; it doubles with each attempt.
    pub base_delay: Duration,
    /// The longest wait between attempts, `Retry-After` included.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// The wait before attempt `attempt + 1`: the provider's `Retry-After` when given, else
    /// exponential back-off with full jitter.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(retry_after) = retry_after {
            return retry_after.min(self.max_delay);
        }
        let ceiling = self
            .base_delay
            .saturating_mul(1 << attempt.saturating_sub(1).min(16))
            .min(self.max_delay);
        rand::thread_rng().gen_range(Duration::ZERO..=ceiling)
    }
}

/// The chunk's APNs rendering as the client's prepared notification.
pub(crate) fn prepare_apns(
    topic: &str,
    render: &ApnsRender,
    default_collapse_id: Option<&str>,
) -> Result<volley_apns::PreparedNotification, WireError> {
    let invalid = |error: String| WireError::new(ErrorCode::InvalidArgument, error);
    let notification = volley_apns::Notification {
        topic: topic.to_owned(),
        push_type: render
            .push_type
            .parse()
            .map_err(|error: volley_apns::PayloadError| invalid(error.to_string()))?,
        priority: Some(
            volley_apns::Priority::from_u8(render.priority).map_err(|e| invalid(e.to_string()))?,
        ),
        expiration: render.expiration,
        collapse_id: render
            .collapse_id
            .clone()
            .or_else(|| default_collapse_id.map(str::to_owned)),
        ..volley_apns::Notification::default()
    };
    notification
        .prepare_with_payload(render.payload.clone())
        .map_err(|error| invalid(error.to_string()))
}

/// The chunk's FCM rendering as the client's prepared message.
///
/// With a default collapse id and no `android.collapse_key` of its own, the message is
/// re-rendered once for the chunk with the collapse key set.
pub(crate) fn prepare_fcm(
    render: &FcmRender,
    default_collapse_id: Option<&str>,
) -> Result<volley_fcm::PreparedMessage, WireError> {
    let invalid = |error: String| WireError::new(ErrorCode::InvalidArgument, error);
    let prepared = volley_fcm::PreparedMessage::from_parts(&render.prefix, render.suffix.clone())
        .map_err(|error| invalid(error.to_string()))?;
    let Some(collapse_id) = default_collapse_id else {
        return Ok(prepared);
    };
    let mut body = render.prefix.to_vec();
    body.extend_from_slice(&render.suffix);
    let mut root: serde_json::Value =
        serde_json::from_slice(&body).map_err(|error| invalid(error.to_string()))?;
    let Some(message) = root.get_mut("message").and_then(|m| m.as_object_mut()) else {
        return Ok(prepared);
    };
    message.remove("token");
    let android = message
        .entry("android")
        .or_insert_with(|| serde_json::json!({}));
    match android.as_object_mut() {
        Some(android) if !android.contains_key("collapse_key") => {
            android.insert("collapse_key".into(), collapse_id.into());
        }
        _ => return Ok(prepared),
    }
    volley_fcm::PreparedMessage::raw(root["message"].take())
        .map_err(|error| invalid(error.to_string()))
}

/// Sends one notification per token, `concurrency` at a time, and reports the outcomes.
pub(crate) async fn deliver_all<'a, F, Fut>(
    tokens: &'a TokenList,
    concurrency: usize,
    retry: RetryPolicy,
    send: F,
) -> ChunkReport
where
    F: Fn(&'a str) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let send = &send;
    // Indices, not `(index, &str)` items: a borrowed item type defeats the `Send` proof of
    // the tarpc handler future (higher-ranked lifetime inference).
    let mut outcomes = futures::stream::iter(0..tokens.len())
        .map(|index| {
            let token = tokens.get(index).unwrap_or_default();
            async move {
                let mut duplicates = 0;
                let mut attempt = 1;
                loop {
                    let outcome = send(token).await;
                    match outcome {
                        Outcome::Transient {
                            retry_after,
                            maybe_delivered,
                            ..
                        } if attempt < retry.max_attempts => {
                            duplicates += u32::from(maybe_delivered);
                            // Waiting here holds no stream: the request is already answered.
                            tokio::time::sleep(retry.delay(attempt, retry_after)).await;
                            attempt += 1;
                        }
                        outcome => return (index as u32, outcome, duplicates),
                    }
                }
            }
        })
        .buffer_unordered(concurrency);
    let mut report = ChunkReport::default();
    while let Some((index, outcome, duplicates)) = outcomes.next().await {
        report.possible_duplicates += duplicates;
        match outcome {
            Outcome::Delivered => report.delivered += 1,
            Outcome::InvalidToken {
                reason,
                timestamp_ms,
            } => report
                .invalid
                .push((index, reason.to_string(), timestamp_ms)),
            failed => report.failed.push(ChunkFailure {
                index,
                class: failed.class().to_owned(),
                reason: failed.reason().map(ToString::to_string).unwrap_or_default(),
            }),
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_collapse_id_fills_in_only_when_the_notification_has_none() {
        let message = volley_fcm::FcmMessage {
            data: [("k".to_owned(), "v".to_owned())].into(),
            ..volley_fcm::FcmMessage::default()
        };
        let prepared = volley_fcm::PreparedMessage::new(&message).unwrap();
        let (prefix, suffix) = prepared.parts();
        let render = FcmRender {
            prefix: bytes::Bytes::from_static(prefix),
            suffix: suffix.clone(),
        };
        let body = prepare_fcm(&render, Some("job-1")).unwrap().body_for("tok");
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["message"]["token"], "tok");
        assert_eq!(json["message"]["android"]["collapse_key"], "job-1");
        assert_eq!(json["message"]["data"]["k"], "v");

        let own = prepare_fcm(&render, None).unwrap().body_for("tok");
        assert_eq!(own, prepared.body_for("tok"));

        let apns = ApnsRender {
            payload: bytes::Bytes::from_static(b"{\"aps\":{}}"),
            push_type: "alert".into(),
            priority: 10,
            expiration: None,
            collapse_id: Some("mine".into()),
        };
        assert!(prepare_apns("com.example", &apns, Some("job-1")).is_ok());
    }
    use std::sync::atomic::{AtomicU32, Ordering};
    use volley_provider::Reason;

    #[test]
    fn retry_after_wins_and_back_off_is_capped() {
        let policy = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        };
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(60))),
            Duration::from_secs(2)
        );
        for attempt in 1..20 {
            assert!(policy.delay(attempt, None) <= Duration::from_secs(2));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_and_permanent_ones_are_not() {
        let tokens: TokenList = ["ok", "flaky", "dead", "down"].into_iter().collect();
        let calls = AtomicU32::new(0);
        let flaky_calls = AtomicU32::new(0);
        let policy = RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_secs(1),
        };
        let report = deliver_all(&tokens, 8, policy, |token| {
            calls.fetch_add(1, Ordering::Relaxed);
            let flaky = if token == "flaky" {
                flaky_calls.fetch_add(1, Ordering::Relaxed)
            } else {
                0
            };
            async move {
                match token {
                    "ok" => Outcome::Delivered,
                    "flaky" if flaky == 0 => Outcome::Transient {
                        reason: Reason::known("ServiceUnavailable"),
                        retry_after: None,
                        maybe_delivered: true,
                    },
                    "flaky" => Outcome::Delivered,
                    "dead" => Outcome::InvalidToken {
                        reason: Reason::known("Unregistered"),
                        timestamp_ms: Some(7),
                    },
                    _ => Outcome::Transient {
                        reason: Reason::known("ServiceUnavailable"),
                        retry_after: Some(Duration::from_secs(1)),
                        maybe_delivered: false,
                    },
                }
            }
        })
        .await;
        assert_eq!(report.delivered, 2);
        assert_eq!(
            report.invalid,
            vec![(2, "Unregistered".to_owned(), Some(7))]
        );
        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.failed[0].index, 3);
        assert_eq!(report.failed[0].class, "transient");
        assert_eq!(report.possible_duplicates, 1);
        // ok 1 + flaky 2 + dead 1 + down 3
        assert_eq!(calls.load(Ordering::Relaxed), 7);
    }
}
